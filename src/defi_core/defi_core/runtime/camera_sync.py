"""As-of synchronisation of several live cameras (ROS-free).

The first camera is the reference: when it delivers a frame stamped t, every other camera
contributes its latest frame stamped at or before t and no older than tolerance (the same as-of rule
the data pipeline uses, never a frame from the future). A missing camera means no observation.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from defi_core.timesync import AsofBuffer

__all__ = ['CameraSync']


class CameraSync:
    def __init__(self, cameras: Sequence[str], tolerance_s: float, capacity: int = 16):
        if not cameras:
            raise ValueError('cameras: at least one camera is needed')
        self.cameras = tuple(cameras)
        self.tolerance_ns = int(round(float(tolerance_s) * 1e9))
        self._buffers: dict[str, AsofBuffer[np.ndarray]] = {name: AsofBuffer(capacity) for name in self.cameras}
        self.misses = 0
        self.last_missing: Optional[str] = None

    @property
    def reference(self) -> str:
        return self.cameras[0]

    def push(self, camera: str, stamp_ns: int, frame: np.ndarray) -> None:
        self._buffers[camera].push(stamp_ns, frame)

    def observation(self, stamp_ns: Optional[int] = None):
        """(stamp_ns, [frame per camera]) at the reference frame stamped stamp_ns (default: the
        latest reference frame), or None when some camera has no frame within tolerance."""
        ref = self._buffers[self.reference]
        item = ref.latest() if stamp_ns is None else ref.asof(stamp_ns, 0)
        if item is None:
            return None
        t, ref_frame = item
        frames = [ref_frame]
        for name in self.cameras[1:]:
            other = self._buffers[name].asof(t, self.tolerance_ns)
            if other is None:
                self.misses += 1
                self.last_missing = name
                return None
            frames.append(other[1])
        return t, frames

    def clear(self) -> None:
        for b in self._buffers.values():
            b.clear()
