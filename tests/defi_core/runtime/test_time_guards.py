"""ROS-free time guards: future stamps, clock jumps back, sim vs wall clock, schedule reset."""
import numpy as np

from defi_core.runtime import BackJumpDetector, Chunk, ChunkSchedule, SafetyLatch, StopReason
from defi_core.runtime.timing import clock_mismatch

MS = 1_000_000
WALL = 1_764_518_400 * 10**9     # 2025-11-30


def test_latch_refuses_stamps_from_the_future_beyond_the_tolerance():
    latch = SafetyLatch(max_age_s=1.0, max_future_s=0.5)
    assert latch.check(10_000 * MS, 10_400 * MS) is None             # 0.4 s ahead: clock skew
    assert latch.check(10_000 * MS, 30_000 * MS) == StopReason.FUTURE_STAMP
    assert latch.check(10_000 * MS, 8_000 * MS) == StopReason.STALE_OBSERVATION
    latch.run()
    latch.reset()
    assert not latch.running and latch.stop(StopReason.CLOCK_JUMP)   # a reset latch always commands


def test_schedule_reset_forgets_a_stamp_from_the_old_time_line():
    sched = ChunkSchedule()
    assert sched.offer(Chunk(60_000 * MS, 0.1, np.zeros((5, 2))))
    fresh = Chunk(1_000 * MS, 0.1, np.ones((5, 2)))
    assert not sched.offer(fresh) and sched.last_stamp_ns == 60_000 * MS
    sched.reset()
    assert sched.chunk is None and sched.last_stamp_ns == -1
    assert sched.offer(fresh) and sched.step(1_000 * MS).action.tolist() == [1.0, 1.0]


def test_back_jump_detector():
    d = BackJumpDetector(0.5)
    assert d.update(10_000 * MS) is None and d.update(10_050 * MS) is None
    assert d.update(9_800 * MS) is None                 # 0.25 s back: within the threshold
    assert d.update(0) == -9_800 * MS                    # 9.8 s back
    d.reset()
    assert d.update(5 * MS) is None


def test_clock_mismatch_says_which_clock_and_what_to_set():
    hint = clock_mismatch('camera/image_raw', 12 * 10**9, WALL, use_sim_time=True)
    assert 'camera/image_raw' in hint and 'wall-clock' in hint and 'use_sim_time' in hint
    hint = clock_mismatch('joint_states', WALL, 12 * 10**9, use_sim_time=False)
    assert 'simulation time' in hint and 'use_sim_time:=true' in hint
    assert clock_mismatch('t', WALL, WALL + 10**9, False) is None
    assert clock_mismatch('t', 5 * 10**9, 7 * 10**9, True) is None
    assert clock_mismatch('t', 0, 10**9, True) is None                 # no /clock yet, sim stamp
    assert 'no /clock' in clock_mismatch('t', 0, WALL, True)
