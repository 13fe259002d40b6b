"""Every parameter of every DeFI node has a description (`ros2 param describe`), rates and ages
carry a range that rclpy enforces, and the model parameters exist only on nodes that load a model."""
import dataclasses

import pytest
from rclpy.parameter import Parameter

MODEL_PARAMS = {'checkpoint', 'device', 'torch_threads'}


def node_classes():
    from defi_perception.forward_predictor_node import ForwardPredictorNode
    from defi_policy.action_decoder_node import ActionDecoderNode
    from defi_policy.chunk_executor_node import ChunkExecutorNode
    from defi_policy.execute_instruction_server import ExecuteInstructionServer
    from defi_policy.latent_action_encoder_node import LatentActionEncoderNode
    return {ForwardPredictorNode: True, LatentActionEncoderNode: True, ActionDecoderNode: True,
            ChunkExecutorNode: False, ExecuteInstructionServer: False}


def test_every_parameter_dataclass_field_has_help():
    from defi_policy.bringup import BringupParams
    from defi_recorder.recorder import RecorderConfig
    from defi_sim.sim_node import SimNodeConfig
    classes = [cls.params_cls for cls in node_classes()] + [RecorderConfig, BringupParams, SimNodeConfig]
    missing = [f'{cls.__name__}.{f.name}' for cls in classes for f in dataclasses.fields(cls)
               if not str(f.metadata.get('help', '')).strip()]
    assert missing == []


def test_nodes_describe_their_parameters_and_only_model_nodes_take_a_checkpoint(ros_context):
    for cls, loads_model in node_classes().items():
        node = cls(context=ros_context)
        try:
            names = [f.name for f in dataclasses.fields(cls.params_cls)]
            assert (MODEL_PARAMS <= set(names)) == loads_model, cls.__name__
            if not loads_model:
                assert not MODEL_PARAMS & set(names), cls.__name__
            for desc in node.describe_parameters(names):
                assert desc.description.strip(), f'{node.get_name()}.{desc.name} has no description'
        finally:
            node.destroy_node()


def test_ranges_are_enforced(ros_context):
    from defi_policy.chunk_executor_node import ChunkExecutorNode
    node = ChunkExecutorNode(context=ros_context)
    try:
        (desc,) = node.describe_parameters(['control_rate_hz'])
        assert desc.floating_point_range and desc.floating_point_range[0].from_value > 0
        bad = node.set_parameters([Parameter('control_rate_hz', value=-5.0)])[0]
        assert not bad.successful and 'control_rate_hz' in bad.reason
        assert node.set_parameters([Parameter('control_rate_hz', value=25.0)])[0].successful
        (desc,) = node.describe_parameters(['action_dim'])
        assert desc.integer_range[0].from_value == 0
        assert not node.set_parameters([Parameter('action_dim', value=-1)])[0].successful
    finally:
        node.destroy_node()


def test_an_out_of_range_value_from_a_params_file_names_the_parameter(tmp_path):
    import rclpy
    from rclpy.exceptions import InvalidParameterValueException

    from defi_policy.chunk_executor_node import ChunkExecutorNode
    path = tmp_path / 'p.yaml'
    path.write_text('chunk_executor:\n  ros__parameters:\n    control_rate_hz: -1.0\n')
    ctx = rclpy.Context()
    rclpy.init(args=['--ros-args', '--params-file', str(path)], context=ctx)
    try:
        with pytest.raises(InvalidParameterValueException, match='control_rate_hz'):
            ChunkExecutorNode(context=ctx)
    finally:
        rclpy.shutdown(context=ctx)
