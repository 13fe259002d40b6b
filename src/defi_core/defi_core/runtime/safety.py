"""Stop conditions of the chunk executor.

The executor commands a stop (zero twist, hold position, or a zero passthrough action) when the
observation behind the running chunk is older than max_age_s or more than max_future_s in the
future of the node's clock, when the clock jumps back, when an output is not finite, when the goal
is cancelled / the executor is disabled, and on shutdown. A stop is commanded once per
transition into the stopped state; a fresh, finite chunk from a newer observation resumes.
"""
from __future__ import annotations

from enum import Enum
from typing import Optional

import numpy as np

__all__ = ['StopReason', 'all_finite', 'observation_age_s', 'SafetyLatch']


class StopReason(str, Enum):
    STALE_OBSERVATION = 'stale_observation'
    NON_FINITE = 'non_finite_output'
    CANCELED = 'canceled'
    DISABLED = 'disabled'
    SHUTDOWN = 'shutdown'
    CHUNK_EXHAUSTED = 'chunk_exhausted'
    MALFORMED = 'malformed_chunk'
    FUTURE_STAMP = 'future_stamp'
    NOT_DUE = 'chunk_not_due_yet'       # the newest chunk's first step lies ahead of the clock
    CLOCK_JUMP = 'clock_jump'           # went back, or switched between sim and wall time


def all_finite(values) -> bool:
    arr = np.asarray(values, dtype=np.float64)
    return bool(np.all(np.isfinite(arr)))


def observation_age_s(now_ns: int, stamp_ns: int) -> float:
    return (int(now_ns) - int(stamp_ns)) * 1e-9


class SafetyLatch:
    """Running / stopped state with the reason of the last stop.

    stop() returns True exactly when the caller must publish a stop command now (a transition into
    the stopped state, or a stop of a different kind that must be reported).
    """

    def __init__(self, max_age_s: float, max_future_s: float = 0.5):
        if not max_age_s > 0:
            raise ValueError(f'max_age_s: must be > 0, got {max_age_s}')
        if not max_future_s >= 0:
            raise ValueError(f'max_future_s: must be >= 0, got {max_future_s}')
        self.max_age_s = float(max_age_s)
        self.max_future_s = float(max_future_s)
        self.running = False
        self.reason: Optional[StopReason] = None
        self.stops_commanded = 0

    def is_stale(self, now_ns: int, observation_stamp_ns: int) -> bool:
        return observation_age_s(now_ns, observation_stamp_ns) > self.max_age_s

    def is_future(self, now_ns: int, observation_stamp_ns: int) -> bool:
        return -observation_age_s(now_ns, observation_stamp_ns) > self.max_future_s

    def check(self, now_ns: int, observation_stamp_ns: int) -> Optional[StopReason]:
        """Why an observation stamp cannot be acted on now (too old, or from the future), or None."""
        if self.is_stale(now_ns, observation_stamp_ns):
            return StopReason.STALE_OBSERVATION
        if self.is_future(now_ns, observation_stamp_ns):
            return StopReason.FUTURE_STAMP
        return None

    def reset(self) -> None:
        """Forget the state (after the clock jumped): the next stop() always commands."""
        self.running = False
        self.reason = None

    def stop(self, reason: StopReason, force: bool = False) -> bool:
        """Enter the stopped state. Returns True when a stop command must be published."""
        newly = self.running or force or self.reason is None
        self.running = False
        self.reason = reason
        if newly:
            self.stops_commanded += 1
        return newly

    def run(self) -> None:
        self.running = True
        self.reason = None
