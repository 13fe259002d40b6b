"""The data config: which recorded streams become which features, at what rate and size.

Loaded from a YAML file in config/ (e.g. config/data_metaworld.yaml) and overridable from the
command line with dotted `key=value` pairs (`--set fps=5 --set action.topic=cmd`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ['StateSpec', 'ActionSpec', 'TaskSpec', 'EpisodeSpec', 'TopicMap', 'load_topic_map',
           'apply_overrides']


def _norm_topic(topic: str | None) -> str | None:
    """Bags store '/camera/x' or 'camera/x' depending on the recorder; compare without the slash."""
    if topic is None:
        return None
    topic = str(topic).strip()
    return topic.lstrip('/') or None


# the scalar fields' types, checked before any comparison so that a wrong-typed value names its
# field ('fps: expected a number, got 'ten'') instead of failing inside validate()
_NUMBER, _INT, _TEXT = 'a number', 'an integer', 'a string'
_FIELD_TYPES = {'fps': _NUMBER, 'max_age_s': _NUMBER, 'image_size': _INT, 'min_episode_frames': _INT,
                'gap_policy': _TEXT, 'clock': _TEXT, 'success_topic': _TEXT,
                'state.topic': _TEXT, 'action.source': _TEXT, 'action.topic': _TEXT,
                'task.topic': _TEXT, 'task.default': _TEXT, 'episode.split': _TEXT,
                'episode.topic': _TEXT}
_NULLABLE = {'image_size', 'success_topic', 'state.topic', 'action.topic', 'task.topic', 'episode.topic'}


def _check_field_types(tm) -> None:
    for name, kind in _FIELD_TYPES.items():
        obj, attr = (tm, name) if '.' not in name else (getattr(tm, name.split('.')[0]), name.split('.')[1])
        value = getattr(obj, attr)
        if value is None and name in _NULLABLE:
            continue
        ok = {_NUMBER: isinstance(value, (int, float)) and not isinstance(value, bool),
              _INT: isinstance(value, int) and not isinstance(value, bool),
              _TEXT: isinstance(value, str)}[kind]
        if not ok:
            null = ' or null' if name in _NULLABLE else ''
            raise ValueError(f'{name}: expected {kind}{null}, got {value!r}')


@dataclass
class StateSpec:
    topic: str | None = 'joint_states'
    # JointState fields concatenated in this order (position / velocity / effort);
    # Float32/64MultiArray topics use their `data` and ignore this.
    fields: tuple[str, ...] = ('position',)


@dataclass
class ActionSpec:
    # 'command': read the command topic (ActionChunk row 0, TwistStamped, JointTrajectory point 0,
    #            Float32/64MultiArray); 'next_state': action[t] = state[t+1];
    # 'state_delta': action[t] = state[t+1] - state[t]; 'none': action-free data.
    source: str = 'command'
    topic: str | None = 'defi/action_command'


@dataclass
class TaskSpec:
    topic: str | None = 'instruction'       # std_msgs/String; None: use `default` / bag metadata
    default: str = ''                         # used when no instruction message precedes the episode


@dataclass
class EpisodeSpec:
    # 'bag': one episode per bag; 'topic': a new episode starts at each message on `topic`
    # (e.g. the instruction topic, or a std_msgs/Bool/Int32 episode marker).
    split: str = 'bag'
    topic: str | None = None


@dataclass
class TopicMap:
    fps: float = 10.0
    max_age_s: float = 0.3
    # what happens to frames where a required stream has no sample within max_age_s:
    # 'split' ends the episode and starts a new one after the gap; 'drop' drops those frames and
    # joins the rest (time then jumps across the gap).
    gap_policy: str = 'split'
    image_size: int | None = 64               # square training size; None keeps the native size
    # 'auto': header.stamp where the message has a (non-zero) header, else the bag receive time;
    # 'header' requires stamps; 'receive' always uses the receive time.
    clock: str = 'auto'
    # camera name -> image topic (None where only the name matters, e.g. for video files)
    cameras: dict[str, str | None] = field(default_factory=lambda: {'front': 'camera/front/image_raw'})
    state: StateSpec = field(default_factory=StateSpec)
    action: ActionSpec = field(default_factory=ActionSpec)
    task: TaskSpec = field(default_factory=TaskSpec)
    episode: EpisodeSpec = field(default_factory=EpisodeSpec)
    success_topic: str | None = None          # std_msgs/Bool; per-episode success goes into the meta
    min_episode_frames: int = 2               # shorter episodes/segments are skipped and reported

    # False when neither the data config nor an override set fps (load_topic_map): a LeRobot
    # dataset's own rate is then used instead of the default (not a field: never saved)
    fps_explicit = True

    def __post_init__(self):
        # nested sections may be given as plain dicts (YAML, tests)
        for name, typ in (('state', StateSpec), ('action', ActionSpec), ('task', TaskSpec), ('episode', EpisodeSpec)):
            val = getattr(self, name)
            if isinstance(val, dict):
                if 'fields' in val and val['fields'] is not None:
                    val = dict(val, fields=tuple(val['fields']))
                setattr(self, name, typ(**val))
        _check_field_types(self)
        self.validate()

    def validate(self) -> None:
        if not self.fps or self.fps <= 0:
            raise ValueError(f'fps: must be positive, got {self.fps}')
        if self.max_age_s <= 0:
            raise ValueError(f'max_age_s: must be positive, got {self.max_age_s}')
        if self.gap_policy not in ('split', 'drop'):
            raise ValueError(f"gap_policy: must be 'split' or 'drop', got {self.gap_policy!r}")
        if self.clock not in ('auto', 'header', 'receive'):
            raise ValueError(f"clock: must be 'auto', 'header' or 'receive', got {self.clock!r}")
        if self.image_size is not None and int(self.image_size) < 8:
            raise ValueError(f'image_size: must be >= 8 or null, got {self.image_size}')
        if self.action.source not in ('command', 'next_state', 'state_delta', 'none'):
            raise ValueError("action.source: must be 'command', 'next_state', 'state_delta' or 'none', "
                             f'got {self.action.source!r}')
        if self.action.source == 'command' and not self.action.topic:
            raise ValueError("action.topic: required when action.source is 'command'")
        if self.action.source in ('next_state', 'state_delta') and not self.state.topic:
            raise ValueError(f'action.source={self.action.source!r} needs state.topic')
        if self.episode.split not in ('bag', 'topic'):
            raise ValueError(f"episode.split: must be 'bag' or 'topic', got {self.episode.split!r}")
        if self.episode.split == 'topic' and not self.episode.topic:
            raise ValueError("episode.topic: required when episode.split is 'topic'")
        if not self.cameras:
            raise ValueError('cameras: at least one camera topic is needed')
        for f in self.state.fields:
            if f not in ('position', 'velocity', 'effort'):
                raise ValueError(f'state.fields: unknown JointState field {f!r}')
        self.cameras = {str(k): _norm_topic(v) for k, v in self.cameras.items()}
        self.state.topic = _norm_topic(self.state.topic)
        self.state.fields = tuple(self.state.fields)
        self.action.topic = _norm_topic(self.action.topic)
        self.task.topic = _norm_topic(self.task.topic)
        self.episode.topic = _norm_topic(self.episode.topic)
        self.success_topic = _norm_topic(self.success_topic)

    @property
    def has_actions(self) -> bool:
        return self.action.source != 'none'

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['state']['fields'] = list(self.state.fields)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TopicMap:
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f'unknown data config key(s): {sorted(unknown)} (known: {sorted(known)})')
        sub = {'state': StateSpec, 'action': ActionSpec, 'task': TaskSpec, 'episode': EpisodeSpec}
        for key, typ in sub.items():
            if key in d:
                val = d[key]
                if val is None:
                    val = {'topic': None, 'source': 'none'} if key == 'action' else {'topic': None}
                if not isinstance(val, dict):
                    raise ValueError(f'{key}: expected a mapping, got {val!r}')
                names = {f.name for f in dataclasses.fields(typ)}
                bad = set(val) - names
                if bad:
                    raise ValueError(f'{key}: unknown key(s) {sorted(bad)} (known: {sorted(names)})')
                d[key] = val                # __post_init__ builds the section from the dict
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != '' else ''


def apply_overrides(d: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `a.b=value` strings (value parsed as YAML) to a nested dict, in place."""
    for item in overrides or []:
        if '=' not in item:
            raise ValueError(f'override {item!r}: expected key=value')
        key, value = item.split('=', 1)
        parts = key.strip().split('.')
        node = d
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ValueError(f'override {item!r}: {p!r} is not a mapping')
        node[parts[-1]] = _parse_value(value)
    return d


def load_topic_map(path: str | Path | None = None, overrides: list[str] | None = None) -> TopicMap:
    """TopicMap from a YAML file (None: the defaults) plus `key=value` overrides."""
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f'data config {p} does not exist')
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f'data config {p}: invalid YAML: {exc}') from exc
        if not isinstance(d, dict):
            raise ValueError(f'data config {p}: expected a mapping at the top level')
    apply_overrides(d, overrides)
    try:
        tm = TopicMap.from_dict(d)
    except (TypeError, ValueError) as exc:
        where = f'data config {path}: ' if path else 'data config: '
        raise ValueError(where + str(exc)) from exc
    tm.fps_explicit = 'fps' in d
    return tm
