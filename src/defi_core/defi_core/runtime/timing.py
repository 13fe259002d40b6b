"""Checks of message stamps against the node's clock, and detection of a clock that jumps back.

A stamp far in the future is as unusable as a stale one: a chunk stamped +20 s is not due for 20 s
(the executor would wait with the robot still moving) and, once accepted, makes every later chunk
look older. So stamps more than max_future_s ahead of the node's clock are refused. A clock that
jumps back (a restarted /clock, a bag looped, a wall clock set back) leaves every buffered stamp in
the future: the nodes reset their buffers and the executor stops until fresh data arrives.
"""
from __future__ import annotations

import datetime
from typing import Optional

__all__ = ['WALL_CLOCK_MIN_NS', 'future_s', 'is_wall_clock', 'clock_mismatch', 'BackJumpDetector',
           'DEFAULT_MAX_FUTURE_S']

DEFAULT_MAX_FUTURE_S = 0.5
# 2001-09-09 in ns since the epoch: a stamp above this comes from a wall clock, one below from a
# simulation clock (which starts at 0). Sim time would need 31 years of running to get there.
WALL_CLOCK_MIN_NS = 10 ** 18


def future_s(now_ns: int, stamp_ns: int) -> float:
    """How far `stamp_ns` lies ahead of `now_ns`, in seconds (negative: in the past)."""
    return (int(stamp_ns) - int(now_ns)) * 1e-9


def is_wall_clock(t_ns: int) -> bool:
    return int(t_ns) >= WALL_CLOCK_MIN_NS


def _describe(t_ns: int) -> str:
    if is_wall_clock(t_ns):
        when = datetime.datetime.fromtimestamp(int(t_ns) * 1e-9, datetime.timezone.utc)
        return f'wall-clock time ({when:%Y-%m-%d %H:%M:%S} UTC)'
    return f'simulation time ({int(t_ns) * 1e-9:.3f} s)'


def clock_mismatch(topic: str, now_ns: int, stamp_ns: int, use_sim_time: bool) -> Optional[str]:
    """One line explaining a sim-time / wall-clock mismatch between a stamp and the node's clock,
    or None when both come from the same kind of clock (or the stamp is unset)."""
    if stamp_ns <= 0 or is_wall_clock(now_ns) == is_wall_clock(stamp_ns):
        return None
    if use_sim_time and now_ns == 0 and not is_wall_clock(stamp_ns):
        return None
    if is_wall_clock(stamp_ns):
        clock = ('sim time (use_sim_time is true' +
                 (', and no /clock message has arrived yet)' if now_ns == 0 else ')'))
        fix = 'publish sim-time stamps, or set use_sim_time:=false'
    else:
        clock = 'wall-clock time (use_sim_time is false)'
        fix = 'set use_sim_time:=true (and publish /clock), or stamp with the wall clock'
    return (f'{topic}: stamps are {_describe(stamp_ns)} but this node runs on {clock}, now '
            f'{_describe(now_ns)}: every message on it is refused; {fix}')


class BackJumpDetector:
    """Notices a clock read that went back by more than threshold_s since the last read.

    rclpy's jump callbacks fire only for ROS time set from /clock; a wall clock set back is seen
    only by comparing successive reads, which is what this does (fed by a periodic timer).
    """

    def __init__(self, threshold_s: float):
        self.threshold_ns = max(1, int(round(float(threshold_s) * 1e9)))
        self.last_ns: Optional[int] = None

    def update(self, now_ns: int) -> Optional[int]:
        """Record `now_ns`; returns the (negative) jump in ns when the clock went back, else None."""
        last, self.last_ns = self.last_ns, int(now_ns)
        if last is not None and now_ns < last - self.threshold_ns:
            return int(now_ns) - last
        return None

    def reset(self) -> None:
        self.last_ns = None
