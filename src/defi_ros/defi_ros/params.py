"""Declare a node's parameters from a dataclass and read them once into a typed instance, through
defi_core.config_io (the help text becomes the parameter description; values are converted by the
rules every config follows); warn about given parameters that no node declares (rclpy ignores them
without a word). `CommonParams`: the parameters of every DeFI node (ModelParams, in model.py, adds
the model's)."""
from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any, ClassVar, Iterable, List, Optional, Protocol, Type, TypeVar

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from defi_core import config_io


class _Dataclass(Protocol):     # what dataclasses.fields() accepts: any dataclass
    __dataclass_fields__: ClassVar[dict[str, Any]]


P = TypeVar('P', bound=_Dataclass)

__all__ = ['param', 'descriptor', 'declare_params', 'read_params', 'params_files',
           'warn_unknown_parameters', 'CommonParams']


param = config_io.setting      # a field that is a ROS parameter: default, description, [min, max]


def descriptor(f: dataclasses.Field, hint: Any, help: str = '') -> ParameterDescriptor:  # noqa: A002
    """The ParameterDescriptor of a dataclass field: its help text (config_io.field_help) as the
    description, and its range from param()."""
    # dynamic typing: ROS would reject `max_age_s: 1` (an integer for a double) with an
    # exception that does not say which file; _coerce converts it, or names the parameter
    desc = ParameterDescriptor(description=help or str(f.metadata.get('help', '')), dynamic_typing=True)
    lo_hi = f.metadata.get('range')
    if lo_hi is not None:
        lo, hi = lo_hi
        if hint is float:
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        elif hint is int:
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        desc.additional_constraints = f'{lo} <= value <= {hi}'
    return desc


def _default(f: dataclasses.Field) -> Any:
    default = config_io.field_default(f)
    if default is dataclasses.MISSING:
        raise TypeError(f'parameter {f.name} needs a default')
    return default


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """A parameter value as its field's type (the one config layer's rules), or a ValueError
    naming the parameter."""
    if typing.get_origin(hint) in (list, tuple) and value is None:
        value = []          # an empty list given in YAML reads back as no value
    try:
        return config_io.coerce(value, hint, name)
    except config_io.ConfigError as err:
        raise ValueError(f'parameter {name!r}: cannot read {value!r}: {err.problem}') from None


def declare_params(node, cls: Type[P]) -> P:
    """Declare every field of dataclass `cls` as a parameter (default = the field default), then
    read the values once (overrides from YAML / CLI / launch apply) into a `cls` instance."""
    hints, helps = typing.get_type_hints(cls), config_io.field_help(cls)
    values = {}
    for f in dataclasses.fields(cls):
        default = _default(f)
        hint = hints[f.name]
        if typing.get_origin(hint) in (list, tuple):
            default = list(default)
        declared = node.declare_parameter(f.name, default, descriptor(f, hint, helps.get(f.name, '')))
        values[f.name] = _coerce(f.name, declared.value, hint)
    return cls(**values)


def read_params(node, cls: Type[P]) -> P:
    """Read the already declared parameters of `cls` again (a lifecycle node re-reads them on
    configure, so `ros2 param set` + configure applies new values)."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _coerce(f.name, node.get_parameter(f.name).value, hints[f.name])
                  for f in dataclasses.fields(cls)})


def params_files(argv: Optional[List[str]] = None) -> List[str]:
    """The --params-file paths among the ROS arguments (default: sys.argv)."""
    argv = list(sys.argv if argv is None else argv)
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == '--params-file']


def _flatten(prefix: str, value, out: set) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f'{prefix}.{k}' if prefix else str(k), v, out)
    else:
        out.add(prefix)


def _sections(path: str, node_name: str):
    """(names in sections for `node_name` itself, names in wildcard sections) of one params file."""
    import yaml
    own: set[str] = set()
    wild: set[str] = set()
    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return own, wild          # rcl reports an unreadable file itself
    for key, body in (doc.items() if isinstance(doc, dict) else []):
        params = body.get('ros__parameters') if isinstance(body, dict) else None
        if not isinstance(params, dict):
            continue
        last = str(key).rstrip('/').split('/')[-1]
        target = own if last == node_name else wild if last in ('**', '*') else None
        if target is not None:
            _flatten('', params, target)
    return own, wild


def warn_unknown_parameters(node, known_elsewhere: Iterable[str] = (), argv: Optional[List[str]] = None,
                            process: str = '', warned: Optional[set] = None) -> List[str]:
    """Log one warning per given parameter that `node` does not declare, naming the params file
    (or the command line); returns the lines. In a process of several nodes (`process` = its
    name), a name from a wildcard section or -p is fine when another node declares it
    (`known_elsewhere`), and is reported once (`warned`, shared by the calls) when none does."""
    overrides = getattr(node, '_parameter_overrides', None) or {}
    known_elsewhere = set(known_elsewhere)
    warned = set() if warned is None else warned
    files = [(path, *_sections(path, node.get_name())) for path in params_files(argv)]
    lines = []
    for name in sorted(overrides):
        if node.has_parameter(name):
            continue
        own = [path for path, o, _ in files if name in o]
        if not own and (name in known_elsewhere or name in warned):
            continue
        where = own or [path for path, _, w in files if name in w]
        source = ', '.join(where) if where else 'the command line or a launch file'
        owner = (f"any node of {process}" if process and not own
                 else f"node '{node.get_name()}'")
        warned.add(name)
        line = f"parameter '{name}' (from {source}) is not a parameter of {owner}: ignored"
        lines.append(line)
        node.get_logger().warning(line)
    return lines


@dataclasses.dataclass
class CommonParams:
    """Parameters of every DeFI node."""
    status_topic: str = param('defi/status', 'topic of the PolicyStatus messages (best effort)')
    status_rate_hz: float = param(2.0, 'PolicyStatus, /diagnostics and status marker rate (Hz)',
                                  min=0.0, max=100.0)
    status_marker_frame: str = param('base_link', "frame of the RViz text marker on "
                                     "defi/status_marker; '' = no marker")
    max_future_s: float = param(0.5, 'inputs stamped further than this ahead of the clock are refused; '
                                'a clock jump back by more than this resets the buffers (s, >= 0)')
    autostart: bool = param(True, 'configure and activate on start when run as an executable')
