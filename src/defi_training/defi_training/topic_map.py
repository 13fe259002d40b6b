"""The data config: which recorded streams become which features, at what rate and size.

Loaded from a YAML file in config/ (e.g. config/data_metaworld.yaml) and overridable from the
command line with dotted `key=value` words (`fps=5 action.topic=cmd`), through defi_core.config_io.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defi_core import config_io

__all__ = ['StateSpec', 'ActionSpec', 'TaskSpec', 'EpisodeSpec', 'TopicMap', 'load_topic_map']


def _norm_topic(topic: str | None) -> str | None:
    """Bags store '/camera/x' or 'camera/x' depending on the recorder; compare without the slash."""
    if topic is None:
        return None
    topic = str(topic).strip()
    return topic.lstrip('/') or None


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
    fps: float = 10.0                         # rate the streams are resampled to (frames per second)
    max_age_s: float = 0.3                    # a stream with no sample this recent at a frame time is a gap
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
        # Python callers may give the sections as plain dicts (files go through from_dict)
        for name, section in (('state', StateSpec), ('action', ActionSpec), ('task', TaskSpec),
                              ('episode', EpisodeSpec)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, config_io.from_dict(section, getattr(self, name), prefix=f'{name}.'))
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
        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TopicMap:
        """From a mapping (a data config file); wrong keys and types raise ConfigError naming them."""
        return config_io.from_dict(cls, _sections_from_null(dict(d or {})))

    def save(self, path: str | Path) -> None:
        config_io.save(self, path)


def _sections_from_null(d: dict[str, Any]) -> dict[str, Any]:
    """`action: null` means action-free data; `state: null` etc. mean no such topic."""
    for key in ('state', 'action', 'task', 'episode'):
        if key in d and d[key] is None:
            d[key] = {'topic': None, 'source': 'none'} if key == 'action' else {'topic': None}
    return d


def load_topic_map(path: str | Path | None = None, overrides: list[str] | None = None) -> TopicMap:
    """TopicMap from a YAML file (None: the defaults) plus `key=value` overrides."""
    given: dict[str, bool] = {}

    def prepare(data: dict[str, Any]) -> dict[str, Any]:
        given['fps'] = 'fps' in data        # the file or an override set it
        return _sections_from_null(data)
    tm = config_io.load(TopicMap, path, overrides or [], what='data config', prepare=prepare)
    tm.fps_explicit = given['fps']
    return tm
