"""The one configuration layer: dataclass <-> YAML <-> `key=value`.

Every DeFI configuration is a dataclass: the model (`DefiConfig`), a training run (`TrainConfig`),
a data topic map (`TopicMap`), an evaluation (`EvalConfig`), expert data (`ExpertDataConfig`) and
each ROS node's parameters. This module is how all of them are read:

- `from_dict(cls, data)` builds one from a mapping (a YAML file, a checkpoint's config.json, ROS
  parameter values), converting each value to its field's annotated type; a wrong or unknown key
  raises `ConfigError` naming it ('fps: expected a number, got 'ten'').
- `load(cls, path, overrides)` reads a YAML file, applies command-line overrides and builds it.
- overrides are `key=value` words with dotted keys (`optim.lr=3e-4`, `action.topic=cmd`), values
  parsed as YAML (`tasks=[reach-v3,push-v3]`, `image_size=null`); every `defi-*` tool takes them.
- a field's help text is `setting(default, help)`'s, or else the comment beside or above the
  field in the source; `describe(cls)` lists the keys for `--help`, and ROS nodes use the text as
  the parameter description.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

__all__ = ['ConfigError', 'setting', 'field_help', 'coerce', 'from_dict', 'check_fields', 'to_dict',
           'parse_override', 'is_override', 'format_override', 'apply_overrides', 'read_yaml', 'load',
           'save', 'describe', 'field_default']


class ConfigError(ValueError):
    """A config file, field or override is wrong; the message names it. `key` (dotted) and
    `problem` let a tool word it its own way ("config key 'optim.lr': ...")."""

    def __init__(self, problem: str, key: str = ''):
        super().__init__(f'{key}: {problem}' if key else problem)
        self.key, self.problem = key, problem


def setting(default: Any, help: str, *, min: Any = None, max: Any = None):  # noqa: A002
    """A dataclass field with its help text and, where natural, its range [min, max] (both given)."""
    meta: dict[str, Any] = {'help': help}
    if (min is None) != (max is None):
        raise ValueError('setting(): give both min and max, or neither')
    if min is not None:
        meta['range'] = (min, max)
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=functools.partial(type(default), tuple(default)),
                                 metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# help text


_FIELD_LINE = re.compile(r'^(\s*)(\w+)\s*:[^#]*?(?:#\s?(.*))?$')
_COMMENT_LINE = re.compile(r'^(\s*)#\s?(.*)$')


@functools.lru_cache(maxsize=None)
def field_help(cls: type) -> dict[str, str]:
    """Help text per field: `setting()`'s, else the comment after the field (and the comment lines
    continuing it) or the comment block right above it."""
    helps = {f.name: str(f.metadata['help']) for f in dataclasses.fields(cls) if 'help' in f.metadata}
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return helps
    names = {f.name for f in dataclasses.fields(cls)}
    above: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        comment = _COMMENT_LINE.match(line)
        match = None if comment else _FIELD_LINE.match(line)
        if comment:
            text = comment.group(2).strip()
            above = [] if text.startswith('---') else above + [text]
        elif match and match.group(2) in names and match.group(2) not in helps:
            parts = []
            if match.group(3):
                column = line.index('#')
                parts.append(match.group(3).strip())
                while i + 1 < len(lines) and _COMMENT_LINE.match(lines[i + 1]) \
                        and lines[i + 1].index('#') == column:
                    i += 1
                    parts.append(_COMMENT_LINE.match(lines[i]).group(2).strip())  # type: ignore[union-attr]
            helps[match.group(2)] = ' '.join(parts or above)
            above = []
        else:
            above = []
        i += 1
    return helps


# ---------------------------------------------------------------------------------------------
# values


def _is_section(hint: Any) -> bool:
    """A field typed as a dataclass: a nested section of keys."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _union_args(hint: Any) -> tuple | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return None


def _kind(hint: Any) -> str:
    """How a type reads in an error message."""
    args = _union_args(hint)
    if args is not None:
        return ' or '.join('null' if a is type(None) else _kind(a) for a in args)
    origin = typing.get_origin(hint) or hint
    if origin in (list, tuple):
        item = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return {int: 'a list of integers', float: 'a list of numbers'}.get(item[0] if item else str,
                                                                           'a list of strings')
    if origin is dict:
        return 'a mapping'
    return {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}.get(
        hint, getattr(hint, '__name__', str(hint)))


_TRUE, _FALSE = ('true', 'yes', 'on', '1'), ('false', 'no', 'off', '0')


def coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` as type `hint` (bool, int, float, str, X | None, list/tuple[X, ...], dict[str, X], a
    dataclass): integral floats and numeric strings are accepted for numbers, 'true'/'false' for
    booleans. Raises ConfigError('<key>: expected <kind>, got <value>')."""
    def wrong() -> ConfigError:
        return ConfigError(f'expected {_kind(hint)}, got {value!r}', key)

    args = _union_args(hint)
    if args is not None:
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError:
                pass
        raise wrong()
    if _is_section(hint):
        return from_dict(hint, value, prefix=f'{key}.')
    origin = typing.get_origin(hint) or hint
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise wrong()
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise wrong()
        try:
            number = float(value)
        except ValueError:
            raise wrong() from None
        if hint is float:
            return number
        if not number.is_integer():
            raise wrong()
        return int(number)
    if hint is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong()
        item = ([a for a in typing.get_args(hint) if a is not Ellipsis] or [str])[0]
        try:
            items = [coerce(v, item, key) for v in value]
        except ConfigError:
            raise wrong() from None
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise wrong()
        _, item = (typing.get_args(hint) or (str, Any))
        return {str(k): coerce(v, item, f'{key}.{k}') for k, v in value.items()}
    return value


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (a fresh one from its factory); dataclasses.MISSING if it has none."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def check_fields(cls: type, data: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    """`data`'s values converted to `cls`'s field types, without building `cls` (a partial config,
    e.g. the `model.*` keys of a training run). Unknown keys raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(f'{prefix.rstrip(".") or "config"}: expected a mapping, got {data!r}')
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f'unknown key (known: {", ".join(names)})', f'{prefix}{key}')
        out[key] = coerce(value, hints[key], f'{prefix}{key}')
    return out


def from_dict(cls: type, data: Mapping[str, Any] | None, prefix: str = ''):
    """A `cls` instance from a (partial) mapping; missing fields keep their defaults. Errors from
    the dataclass's own checks (__post_init__) come through as ConfigError."""
    values = check_fields(cls, data or {}, prefix)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:      # the dataclass's own checks (__post_init__)
        raise ConfigError(f'{prefix}{err}') from None


def to_dict(obj) -> dict[str, Any]:
    """A YAML-safe dict of a config dataclass (nested sections as dicts, tuples as lists)."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}


# ---------------------------------------------------------------------------------------------
# key=value overrides

_OVERRIDE = re.compile(r'^[A-Za-z_][\w]*(\.[\w-]+)*=')


def is_override(word: str) -> bool:
    """True for a `key=value` word (a dotted identifier before the first '=')."""
    return bool(_OVERRIDE.match(word))


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=3e-4' -> ('optim.lr', 0.0003); the value is parsed as YAML ('' stays '')."""
    if '=' not in text:
        raise ConfigError(f'override {text!r}: expected key=value')
    key, raw = text.split('=', 1)
    key = key.strip()
    if not key:
        raise ConfigError(f'override {text!r}: empty key')
    try:
        value = yaml.safe_load(raw) if raw.strip() else ''
    except yaml.YAMLError:
        value = raw
    return key, value


def format_override(key: str, value: Any) -> str:
    """The `key=value` word that sets `key` to `value` (for flags that are shortcuts for a key)."""
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return f'{key}={text.removesuffix("...").strip()}'


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], cls: type,
                    open_sections: Iterable[str] = ()) -> dict[str, Any]:
    """Apply `key=value` words to `data` (the mapping `cls` will be built from), in place. A key
    must name a field of `cls` or of one of its dataclass sections; a field typed as a mapping
    takes one more level (`cameras.front=topic`, `model.horizon=8`). `open_sections`: mapping
    fields whose keys are checked later by their owner (e.g. TrainConfig.model)."""
    hints0 = _hints(cls)
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split('.')
        node, hints, owner = data, hints0, cls
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if part not in hints:
                known = ', '.join(sorted(hints))
                where = '.'.join(parts[:depth]) or owner.__name__
                raise ConfigError(f'unknown key ({part!r} is not in {where}; known: {known})', key)
            hint = hints[part]
            if _is_section(hint):
                if last:
                    raise ConfigError(f'is a section; set one of its keys, e.g. {key}.<key>=...', key)
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node, hints, owner = node[part], _hints(hint), hint
                continue
            if last:
                node[part] = value
            elif (typing.get_origin(hint) or hint) is dict and depth == len(parts) - 2:
                if not isinstance(node.get(part), dict):     # not given yet: one more key on the default
                    default = field_default({f.name: f for f in dataclasses.fields(owner)}[part])
                    node[part] = dict(default) if isinstance(default, dict) else {}
                _, item = typing.get_args(hint) or (str, Any)
                node[part][parts[-1]] = value if part in open_sections else coerce(value, item, key)
            else:
                raise ConfigError(f'unknown key ({".".join(parts[:depth + 1])!r} is not a section)', key)
            break
    return data


# ---------------------------------------------------------------------------------------------
# files


def read_yaml(path: str | Path, what: str = 'config file') -> dict[str, Any]:
    """The top-level mapping of a YAML file; ConfigError names the file when it is missing, not
    YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'{what} {path}: not found')
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f'{what} {path}: cannot read it: {err}') from None
    except yaml.YAMLError as err:
        raise ConfigError(f'{what} {path}: not valid YAML: {err}') from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'{what} {path}: expected a mapping of keys at the top level')
    return data


def load(cls: type, path: str | Path | None = None, overrides: Iterable[str] = (), *,
         what: str = 'config file', prepare: Callable[[dict], dict] | None = None):
    """`cls` from an optional YAML file plus `key=value` overrides. `prepare`: a hook that turns
    the merged mapping into `cls`'s fields (e.g. TopicMap's `action: null`)."""
    data = read_yaml(path, what) if path else {}
    apply_overrides(data, overrides, cls)
    if prepare is not None:
        data = prepare(data)
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f'{what} {path}: {err}' if path else str(err)) from None


def save(obj, path: str | Path) -> None:
    """Write a config dataclass as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
    tmp.replace(path)


def describe(cls: type, prefix: str = '', skip: Iterable[str] = ()) -> list[str]:
    """One line per key, 'key=default  help', sections expanded with dotted keys (for --help)."""
    hints, helps = _hints(cls), field_help(cls)
    lines: list[str] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if f.name in skip:
            continue
        if _is_section(hint):
            lines += describe(hint, f'{prefix}{f.name}.')
            continue
        default = field_default(f)
        if default is dataclasses.MISSING:
            default = '(required)'
        if isinstance(default, tuple):
            default = list(default)
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()
        text = helps.get(f.name, '')
        lines.append(f'  {prefix}{f.name}={shown}' + (f'   {text}' if text else ''))
    return lines
