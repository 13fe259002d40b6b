"""Timing of an action chunk: step i of a chunk is due at observation stamp + i * dt.

The executor ticks at its control rate and asks for the step due now. Steps whose time has passed
while a later step is also due are dropped (counted as stale): a late chunk starts in the middle, it
never replays the past. The current chunk keeps running until a chunk computed from a NEWER
observation replaces it, so the robot keeps moving while the next chunk is being computed.
"Newer" is relative to the last accepted stamp; reset() forgets it (when the clock jumped back, a
remembered stamp would otherwise refuse every later chunk).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

__all__ = ['Chunk', 'Step', 'ChunkSchedule', 'parse_limits']


@dataclass
class Chunk:
    """A chunk of actions [horizon, action_dim] in robot units, stamped at its observation time."""
    stamp_ns: int
    dt_s: float
    actions: np.ndarray
    names: tuple = ()
    instruction: str = ''

    def __post_init__(self):
        self.actions = np.asarray(self.actions, dtype=np.float64)
        if self.actions.ndim != 2 or self.actions.shape[0] < 1 or self.actions.shape[1] < 1:
            raise ValueError(f'actions: expected a non-empty [horizon, action_dim] array, '
                             f'got shape {self.actions.shape}')
        if not (self.dt_s > 0 and np.isfinite(self.dt_s)):
            raise ValueError(f'dt: must be a positive number of seconds, got {self.dt_s}')
        self.names = tuple(self.names)
        if self.names and len(self.names) != self.actions.shape[1]:
            raise ValueError(f'names: {len(self.names)} names for action_dim {self.actions.shape[1]}')

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    def due_ns(self, index: int) -> int:
        return int(self.stamp_ns + round(index * self.dt_s * 1e9))

    @classmethod
    def from_flat(cls, stamp_ns: int, dt_s: float, horizon: int, action_dim: int, data,
                  names: Sequence[str] = (), instruction: str = '') -> 'Chunk':
        """Build from the flat row-major fields of a defi_msgs/ActionChunk; errors name the field."""
        flat = np.asarray(data, dtype=np.float64).reshape(-1)
        if horizon < 1 or action_dim < 1:
            raise ValueError(f'horizon/action_dim: must be >= 1, got {horizon} x {action_dim}')
        if flat.size != horizon * action_dim:
            raise ValueError(f'data: {flat.size} values, expected horizon*action_dim = '
                             f'{horizon}*{action_dim} = {horizon * action_dim}')
        if names and len(names) != action_dim:
            raise ValueError(f'names: {len(names)} names for action_dim {action_dim}')
        return cls(int(stamp_ns), float(dt_s), flat.reshape(horizon, action_dim), tuple(names),
                   instruction)


@dataclass
class Step:
    """One action to command now."""
    index: int
    due_ns: int
    action: np.ndarray
    clipped: bool = False


def parse_limits(values: Sequence[float], action_dim: int, name: str) -> Optional[np.ndarray]:
    """A limits parameter -> array [action_dim] (one value = all dims, empty = no limit)."""
    if values is None or len(values) == 0:
        return None
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 1:
        return np.full(action_dim, arr[0])
    if arr.size != action_dim:
        raise ValueError(f'{name}: {arr.size} values, expected 1 or action_dim = {action_dim}')
    return arr


@dataclass
class ChunkSchedule:
    """Which step of which chunk is due; counts stale steps; clips to [low, high]."""
    low: Optional[np.ndarray] = None
    high: Optional[np.ndarray] = None
    chunk: Optional[Chunk] = None
    next_index: int = 0
    stale_steps_dropped: int = 0
    chunks_replaced: int = 0
    chunks_rejected: int = 0
    steps_executed: int = 0
    _last_stamp_ns: int = field(default=-1, repr=False)

    def offer(self, chunk: Chunk) -> bool:
        """Replace the current chunk if `chunk` comes from a newer observation; else reject it."""
        if chunk.stamp_ns <= self._last_stamp_ns:
            self.chunks_rejected += 1
            return False
        if self.chunk is not None and self.next_index < self.chunk.horizon:
            self.chunks_replaced += 1
        self.chunk = chunk
        self.next_index = 0
        self._last_stamp_ns = chunk.stamp_ns
        return True

    def clear(self) -> None:
        """Drop the current chunk (after a stop); a later chunk must still be newer to run."""
        self.chunk = None
        self.next_index = 0

    def reset(self) -> None:
        """Drop the current chunk and forget the last accepted stamp (the clock jumped back)."""
        self.clear()
        self._last_stamp_ns = -1

    @property
    def last_stamp_ns(self) -> int:
        """Stamp of the last accepted chunk (-1: none since the last reset)."""
        return self._last_stamp_ns

    def queue_depth(self) -> int:
        if self.chunk is None:
            return 0
        return max(0, self.chunk.horizon - self.next_index)

    def exhausted(self) -> bool:
        return self.chunk is not None and self.next_index >= self.chunk.horizon

    def step(self, now_ns: int, lead_ns: int = 0) -> Optional[Step]:
        """The step to command at now_ns: the latest not-yet-executed step due by now + lead_ns.

        Earlier unexecuted steps are dropped as stale. None if nothing is due yet or the chunk is
        used up. lead_ns (e.g. half a control period) absorbs timer jitter.
        """
        chunk = self.chunk
        if chunk is None or self.next_index >= chunk.horizon:
            return None
        horizon_time = now_ns + lead_ns - chunk.stamp_ns
        if horizon_time < 0:
            return None
        latest_due = min(chunk.horizon - 1, int(np.floor(horizon_time / (chunk.dt_s * 1e9) + 1e-9)))
        if latest_due < self.next_index:
            return None
        self.stale_steps_dropped += latest_due - self.next_index
        self.next_index = latest_due + 1
        self.steps_executed += 1
        action, clipped = self.clip(chunk.actions[latest_due])
        return Step(latest_due, chunk.due_ns(latest_due), action, clipped)

    def clip(self, action: np.ndarray):
        out = np.asarray(action, dtype=np.float64).copy()
        if self.low is not None:
            out = np.maximum(out, self.low)
        if self.high is not None:
            out = np.minimum(out, self.high)
        # NaN survives maximum/minimum: the safety check sees it
        clipped = bool(np.any(np.abs(out - action) > 0)) if np.all(np.isfinite(action)) else False
        return out, clipped
