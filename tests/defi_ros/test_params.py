"""Parameters declared from a dataclass on a real rclpy node: YAML-style overrides of the wrong
scalar type are converted or rejected with the parameter's name."""
from dataclasses import dataclass, field
from typing import List

import pytest


@dataclass
class ExampleParams:
    max_age_s: float = 0.5          # inputs older than this are dropped (s)
    horizon: int = 10
    dry_run: bool = False
    topics: List[str] = field(default_factory=list)


def declared(ros_context, with_node=None, **overrides):
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from defi_ros.params import declare_params
    node = Node('params_probe', context=ros_context,
                parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    try:
        params = declare_params(node, ExampleParams)
        if with_node:
            with_node(node)
        return params
    finally:
        node.destroy_node()


def test_defaults_and_overrides_of_the_declared_type(ros_context):
    assert declared(ros_context) == ExampleParams()
    p = declared(ros_context, max_age_s=0.25, horizon=4, dry_run=True, topics=['a', 'b'])
    assert p == ExampleParams(0.25, 4, True, ['a', 'b'])


def test_an_integer_for_a_float_and_an_integral_float_for_an_int_are_converted(ros_context):
    p = declared(ros_context, max_age_s=1, horizon=8.0)
    assert p.max_age_s == 1.0 and isinstance(p.max_age_s, float)
    assert p.horizon == 8 and isinstance(p.horizon, int)


@pytest.mark.parametrize('name,value', [('max_age_s', 'soon'), ('horizon', 2.5)])
def test_a_value_that_cannot_be_converted_names_the_parameter(ros_context, name, value):
    with pytest.raises(ValueError, match=f"parameter '{name}'"):
        declared(ros_context, **{name: value})


def test_the_help_text_is_the_parameter_description(ros_context):
    """A field's comment (config_io.field_help) is what `ros2 param describe` shows."""
    seen = {}
    declared(ros_context, with_node=lambda node: seen.update(
        {name: node.describe_parameter(name).description for name in ('max_age_s', 'horizon')}))
    assert seen == {'max_age_s': 'inputs older than this are dropped (s)', 'horizon': ''}


@pytest.mark.parametrize('name,value', [('dry_run', 'maybe'), ('topics', 'a')])
def test_the_one_config_layers_rules_apply(ros_context, name, value):
    with pytest.raises(ValueError, match=f"parameter '{name}': cannot read"):
        declared(ros_context, **{name: value})
