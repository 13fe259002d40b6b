"""Type checks of DefiConfig field values before a DefiConfig is built from outside data (a
checkpoint's config.json, `model.<field>=...` overrides), so that a wrong-typed value names its
field ('horizon: expected an integer, got 'ten'') instead of failing inside DefiConfig.validate()
with "'<=' not supported between instances of 'str' and 'int'"."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from .config import DefiConfig

__all__ = ['field_type_error', 'check_field_types']


def _expected(annotation: str) -> tuple[str, bool]:
    """(base type name, None allowed) from a field annotation such as 'float | None'."""
    parts = [p.strip() for p in str(annotation).split('|')]
    nullable = 'None' in parts
    base = [p for p in parts if p != 'None']
    return (base[0] if len(base) == 1 else ''), nullable


_WORDS = {'int': 'an integer', 'float': 'a number', 'bool': 'true or false', 'str': 'a string',
          'tuple': 'a list of strings'}


def _fits(base: str, value: Any) -> bool:
    if base == 'int':
        return isinstance(value, int) and not isinstance(value, bool)
    if base == 'float':
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base == 'bool':
        return isinstance(value, bool)
    if base == 'str':
        return isinstance(value, str)
    if base == 'tuple':         # cameras
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    return True                 # a type this check does not know: DefiConfig.validate decides


_TYPES = {f.name: _expected(f.type) for f in fields(DefiConfig)}


def field_type_error(name: str, value: Any) -> str | None:
    """'expected <kind>, got <value>' when `value` does not fit DefiConfig field `name`, else None
    (also None for names that are not fields: the caller reports those)."""
    if name not in _TYPES:
        return None
    base, nullable = _TYPES[name]
    if (value is None and nullable) or _fits(base, value):
        return None
    null = ' or null' if nullable else ''
    return f'expected {_WORDS.get(base, base)}{null}, got {value!r}'


def check_field_types(data: dict, prefix: str = '') -> None:
    """Raise ValueError '<prefix><field>: expected ..., got ...' for the first wrong-typed field."""
    for name, value in data.items():
        problem = field_type_error(name, value)
        if problem:
            raise ValueError(f'{prefix}{name}: {problem}')
