"""As-of time alignment: the latest sample at or before a time, never one from the future.

One rule shared by the data pipeline (resampling recorded streams to a fixed rate) and the ROS
runtime (pairing the latest camera frames): a query at time t takes the newest sample with
stamp <= t; if that sample is older than max_age it counts as missing (a gap).
"""
from __future__ import annotations

import bisect
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ['asof_indices', 'fixed_rate_times', 'find_gaps', 'AsofBuffer']

T = TypeVar('T')


def asof_indices(sample_times_ns: np.ndarray, query_times_ns: np.ndarray, max_age_ns: int) -> np.ndarray:
    """For each query time, the index of the latest sample at or before it; -1 where there is none
    or where it is older than max_age_ns. sample_times_ns must be sorted ascending (ties: the last
    of equal stamps wins, i.e. the most recently received)."""
    samples = np.asarray(sample_times_ns, dtype=np.int64)
    queries = np.asarray(query_times_ns, dtype=np.int64)
    if samples.ndim != 1 or queries.ndim != 1:
        raise ValueError('sample_times_ns and query_times_ns must be 1-D')
    if samples.size > 1 and np.any(np.diff(samples) < 0):
        raise ValueError('sample_times_ns must be sorted ascending')
    if samples.size == 0:
        return np.full(queries.shape, -1, dtype=np.int64)
    idx = np.searchsorted(samples, queries, side='right').astype(np.int64) - 1
    valid = idx >= 0
    age = np.where(valid, queries - samples[np.clip(idx, 0, None)], 0)
    if max_age_ns is not None:
        valid &= age <= int(max_age_ns)
    return np.where(valid, idx, -1).astype(np.int64)


def fixed_rate_times(start_ns: int, end_ns: int, fps: float) -> np.ndarray:
    """Query times start, start + 1/fps, ... up to and including end (int64 ns)."""
    if fps <= 0:
        raise ValueError(f'fps must be positive, got {fps}')
    period = 1e9 / float(fps)
    if end_ns < start_ns:
        return np.zeros(0, dtype=np.int64)
    n = int(np.floor((end_ns - start_ns) / period + 1e-9)) + 1
    return (int(start_ns) + np.round(np.arange(n) * period)).astype(np.int64)


def find_gaps(times_ns: np.ndarray, max_gap_ns: int) -> list[tuple[int, int]]:
    """(start_ns, end_ns) of every interval between consecutive stamps longer than max_gap_ns."""
    t = np.asarray(times_ns, dtype=np.int64)
    if t.size < 2:
        return []
    d = np.diff(t)
    where = np.nonzero(d > int(max_gap_ns))[0]
    return [(int(t[i]), int(t[i + 1])) for i in where]


class AsofBuffer(Generic[T]):
    """A bounded, time-ordered buffer of (stamp_ns, value) with as-of lookup (for live streams).

    Out-of-order arrivals are inserted at their place; the oldest entries drop beyond `capacity`.
    """

    def __init__(self, capacity: int = 64):
        if capacity < 1:
            raise ValueError('capacity must be >= 1')
        self.capacity = int(capacity)
        # plain lists: bisect works on them directly (capacity is small, trimming the front is cheap)
        self._times: list[int] = []
        self._values: list[Any] = []

    def __len__(self) -> int:
        return len(self._times)

    def push(self, stamp_ns: int, value: T) -> None:
        stamp_ns = int(stamp_ns)
        if not self._times or stamp_ns >= self._times[-1]:
            self._times.append(stamp_ns)
            self._values.append(value)
        else:
            pos = bisect.bisect_right(self._times, stamp_ns)
            self._times.insert(pos, stamp_ns)
            self._values.insert(pos, value)
        excess = len(self._times) - self.capacity
        if excess > 0:
            del self._times[:excess], self._values[:excess]

    def latest(self) -> tuple[int, T] | None:
        if not self._times:
            return None
        return self._times[-1], self._values[-1]

    def asof(self, query_ns: int, max_age_ns: int | None = None) -> tuple[int, T] | None:
        """(stamp_ns, value) of the newest entry with stamp <= query_ns, or None if there is none or
        it is older than max_age_ns."""
        if not self._times:
            return None
        pos = bisect.bisect_right(self._times, int(query_ns)) - 1
        if pos < 0:
            return None
        if max_age_ns is not None and int(query_ns) - self._times[pos] > int(max_age_ns):
            return None
        return self._times[pos], self._values[pos]

    def clear(self) -> None:
        self._times.clear()
        self._values.clear()
