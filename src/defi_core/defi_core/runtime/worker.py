"""A worker thread that always processes the LATEST submitted item.

Model inference runs here, never on a ROS executor thread: callbacks only submit and return. If a
new item arrives while one is pending (not started yet), the pending one is replaced and counted as
dropped, so a slow model never builds a backlog of stale observations.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

__all__ = ['LatestWorker']


class LatestWorker:
    def __init__(self, fn: Callable[[Any], None], name: str = 'defi-worker',
                 on_error: Optional[Callable[[BaseException], None]] = None):
        self._fn = fn
        self._on_error = on_error
        self._cond = threading.Condition()
        self._pending: Any = None
        self._has_pending = False
        self._busy = False
        self._closed = False
        self.dropped = 0
        self.processed = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> bool:
        """Queue `item` (replacing any pending one). Returns False if one was replaced."""
        with self._cond:
            if self._closed:
                return False
            replaced = self._has_pending
            if replaced:
                self.dropped += 1
            self._pending = item
            self._has_pending = True
            self._cond.notify()
        return not replaced

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._busy or self._has_pending

    def wait_idle(self, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not (self._busy or self._has_pending), timeout)

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._has_pending = False
            self._pending = None
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._has_pending or self._closed)
                if self._closed:
                    return
                item, self._pending, self._has_pending = self._pending, None, False
                self._busy = True
            try:
                self._fn(item)
            except BaseException as exc:  # noqa: BLE001 - reported, the worker keeps running
                if self._on_error is not None:
                    try:
                        self._on_error(exc)
                    except Exception:
                        pass
            finally:
                with self._cond:
                    self._busy = False
                    self.processed += 1
                    self._cond.notify_all()
