"""Declare a node's parameters from a dataclass and read them once into a typed instance."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Type, TypeVar

from rcl_interfaces.msg import ParameterDescriptor

P = TypeVar('P')

__all__ = ['declare_params', 'read_params']


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise TypeError(f'parameter {f.name} needs a default')


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    try:
        if origin in (list, tuple):
            item = (typing.get_args(hint) or (str,))[0]   # List[X] and Tuple[X, ...]
            return [_coerce(name, v, item) for v in (value or [])]
        if hint is bool:
            if isinstance(value, str):
                return value.strip().lower() in ('1', 'true', 'yes', 'on')
            return bool(value)
        if hint is float:
            return float(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f'{value} is not an integer')
            return int(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'parameter {name!r}: cannot read {value!r} as {hint}: {exc}') from None
    return value


def declare_params(node, cls: Type[P]) -> P:
    """Declare every field of dataclass `cls` as a parameter (default = the field default), then
    read the values once (overrides from YAML / CLI / launch apply) into a `cls` instance."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        default = _default(f)
        hint = hints[f.name]
        # dynamic typing: ROS would reject `max_age_s: 1` (an integer for a double) with an
        # exception that does not say which file; _coerce converts it, or names the parameter
        desc = ParameterDescriptor(description=str(f.metadata.get('help', '')), dynamic_typing=True)
        if typing.get_origin(hint) in (list, tuple):
            default = list(default)
        param = node.declare_parameter(f.name, default, desc)
        values[f.name] = _coerce(f.name, param.value, hint)
    return cls(**values)


def read_params(node, cls: Type[P]) -> P:
    """Read the already declared parameters of `cls` again (a lifecycle node re-reads them on
    configure, so `ros2 param set` + configure applies new values)."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _coerce(f.name, node.get_parameter(f.name).value, hints[f.name])
                  for f in dataclasses.fields(cls)})
