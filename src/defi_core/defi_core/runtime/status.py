"""Thread-safe counters of one node, mirrored into defi_msgs/PolicyStatus (the fields it has; the
others, e.g. future_stamps, go to /diagnostics only)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields

__all__ = ['StatusCounters']

# PolicyStatus error counters an error kind may increment
ERROR_KINDS = ('malformed_inputs', 'non_finite_outputs', 'stale_observations', 'future_stamps',
               'clock_jumps')


@dataclass
class StatusCounters:
    features_ms: float = 0.0
    latent_ms: float = 0.0
    decode_ms: float = 0.0
    chunk_ms: float = 0.0
    queue_depth: int = 0
    dropped_frames: int = 0
    stale_steps_dropped: int = 0
    stops_commanded: int = 0
    malformed_inputs: int = 0
    non_finite_outputs: int = 0
    stale_observations: int = 0
    future_stamps: int = 0           # stamps more than max_future_s ahead of the node's clock
    clock_jumps: int = 0             # the node's clock went back
    errors_total: int = 0
    last_error: str = ''
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def error(self, kind: str, message: str) -> None:
        """Count one error of `kind` (a PolicyStatus counter name, or 'other') and remember it."""
        with self._lock:
            if kind in ERROR_KINDS:
                setattr(self, kind, getattr(self, kind) + 1)
            elif kind != 'other':
                raise ValueError(f'unknown error kind {kind!r}')
            self.errors_total += 1
            self.last_error = message[:500]

    def set(self, **values) -> None:
        with self._lock:
            for k, v in values.items():
                if not hasattr(self, k) or k.startswith('_'):
                    raise AttributeError(k)
                setattr(self, k, v)

    def snapshot(self) -> dict:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith('_')}
