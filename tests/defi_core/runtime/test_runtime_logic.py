"""ROS-free executor logic: chunk timing, stale steps, clipping, stop latch, output mapping, worker."""
import threading
import time

import numpy as np
import pytest

from defi_core.runtime import (
    Chunk,
    ChunkSchedule,
    LatestWorker,
    SafetyLatch,
    StatusCounters,
    StopReason,
    all_finite,
    joint_positions,
    parse_limits,
    resolve_twist_axes,
    twist_components,
)

MS = 1_000_000


def make_chunk(stamp_ms, horizon=5, dim=2, dt=0.1):
    actions = np.arange(horizon * dim, dtype=float).reshape(horizon, dim)
    return Chunk(stamp_ms * MS, dt, actions, names=[f'a{i}' for i in range(dim)])


def test_steps_due_at_stamp_plus_i_dt_and_stale_steps_dropped():
    sched = ChunkSchedule()
    assert sched.offer(make_chunk(1000))
    assert sched.step(999 * MS) is None            # before the observation time: nothing due
    s = sched.step(1000 * MS)
    assert s.index == 0 and s.due_ns == 1000 * MS
    assert sched.step(1050 * MS) is None           # step 1 due at 1100 ms
    s = sched.step(1100 * MS)
    assert s.index == 1
    # the executor was late: steps 2 and 3 passed, only the latest due step (4) runs
    s = sched.step(1420 * MS)
    assert s.index == 4 and sched.stale_steps_dropped == 2
    assert sched.step(2000 * MS) is None and sched.exhausted()


def test_late_chunk_starts_in_the_middle_and_lead_absorbs_jitter():
    sched = ChunkSchedule()
    sched.offer(make_chunk(1000))
    s = sched.step(1260 * MS)
    assert s.index == 2 and sched.stale_steps_dropped == 2
    # step 3 is due at 1300 ms; a tick 5 ms early still takes it with a 50 ms lead
    assert sched.step(1295 * MS, lead_ns=50 * MS).index == 3


def test_current_chunk_runs_until_a_newer_chunk_replaces_it():
    sched = ChunkSchedule()
    sched.offer(make_chunk(1000))
    assert sched.step(1000 * MS).index == 0
    assert not sched.offer(make_chunk(900))        # older observation: rejected, current keeps running
    assert not sched.offer(make_chunk(1000))       # same observation: rejected
    assert sched.step(1100 * MS).index == 1 and sched.chunks_rejected == 2
    newer = make_chunk(1150)
    newer.actions += 100
    assert sched.offer(newer) and sched.chunks_replaced == 1
    s = sched.step(1160 * MS)
    assert s.index == 0 and s.action[0] == 100


def test_clipping_to_limits_and_non_finite_passes_through():
    low = parse_limits([-1.0], 2, 'action_min')
    high = parse_limits([1.0, 5.0], 2, 'action_max')
    sched = ChunkSchedule(low=low, high=high)
    chunk = Chunk(0, 0.1, np.array([[3.0, 3.0], [np.nan, -9.0]]))
    sched.offer(chunk)
    s = sched.step(0)
    assert s.action.tolist() == [1.0, 3.0] and s.clipped
    s = sched.step(100 * MS)
    assert np.isnan(s.action[0]) and s.action[1] == -1.0
    assert not all_finite(s.action)
    with pytest.raises(ValueError, match='action_max'):
        parse_limits([1, 2, 3], 2, 'action_max')


def test_chunk_from_flat_names_the_bad_field():
    c = Chunk.from_flat(5, 0.05, 2, 3, list(range(6)), names=['x', 'y', 'z'])
    assert c.actions.shape == (2, 3) and c.due_ns(2) == 5 + 100 * MS
    with pytest.raises(ValueError, match='data'):
        Chunk.from_flat(5, 0.05, 2, 3, list(range(5)))
    with pytest.raises(ValueError, match='names'):
        Chunk.from_flat(5, 0.05, 2, 3, list(range(6)), names=['x'])
    with pytest.raises(ValueError, match='dt'):
        Chunk.from_flat(5, 0.0, 2, 3, list(range(6)))


def test_safety_latch_commands_one_stop_per_transition():
    latch = SafetyLatch(max_age_s=0.5)
    assert latch.is_stale(2_000 * MS, 1_400 * MS) and not latch.is_stale(2_000 * MS, 1_600 * MS)
    latch.run()
    assert latch.stop(StopReason.STALE_OBSERVATION)
    assert not latch.stop(StopReason.STALE_OBSERVATION)     # already stopped: no repeat command
    assert latch.stop(StopReason.SHUTDOWN, force=True)      # shutdown always commands
    latch.run()
    assert latch.stop(StopReason.NON_FINITE) and latch.stops_commanded == 3
    with pytest.raises(ValueError, match='max_age_s'):
        SafetyLatch(0)


def test_twist_and_joint_mapping():
    names = ['x', 'y', 'z', 'gripper']
    axes = resolve_twist_axes(names, ['x', 'y', 'z', '', '', '3'], 4)
    assert axes.indices == (0, 1, 2, -1, -1, 3)
    assert twist_components([0.1, 0.2, 0.3, 1.0], axes, 2.0, 0.5) == pytest.approx(
        [0.2, 0.4, 0.6, 0.0, 0.0, 0.5])
    with pytest.raises(ValueError, match='twist_axes'):
        resolve_twist_axes(names, ['q'] * 6, 4)
    assert joint_positions([1, 2, 3], ['j1', 'j2', 'j3'], ['j3', 'j1']) == [3.0, 1.0]
    with pytest.raises(ValueError, match='joint_names'):
        joint_positions([1, 2, 3], ['j1', 'j2', 'j3'], ['j9'])


def test_status_counters():
    c = StatusCounters()
    c.error('malformed_inputs', 'camera/image_raw: bad')
    c.error('other', 'x')
    snap = c.snapshot()
    assert snap['malformed_inputs'] == 1 and snap['errors_total'] == 2 and snap['last_error'] == 'x'
    with pytest.raises(ValueError):
        c.error('nonsense', 'y')


def test_latest_worker_keeps_only_the_newest_pending_item():
    gate = threading.Event()
    seen = []

    def work(item):
        gate.wait(5)
        seen.append(item)

    w = LatestWorker(work)
    try:
        w.submit(1)
        time.sleep(0.05)         # 1 is running (blocked on the gate)
        w.submit(2)
        assert not w.submit(3)   # 2 was pending: replaced
        gate.set()
        assert w.wait_idle(5)
        assert seen == [1, 3] and w.dropped == 1
        errors = []
        w2 = LatestWorker(lambda i: 1 / 0, on_error=errors.append)
        w2.submit(0)
        assert w2.wait_idle(5) and isinstance(errors[0], ZeroDivisionError)
        w2.submit(0)             # still alive after an exception
        assert w2.wait_idle(5) and len(errors) == 2
        w2.close()
    finally:
        w.close()


def test_camera_sync_takes_latest_frame_at_or_before_reference_within_tolerance():
    from defi_core.runtime.camera_sync import CameraSync
    sync = CameraSync(['front', 'wrist'], tolerance_s=0.1)
    sync.push('front', 1000 * MS, 'F1000')
    assert sync.observation() is None and sync.last_missing == 'wrist'
    sync.push('wrist', 980 * MS, 'W980')
    sync.push('wrist', 1010 * MS, 'W1010')          # from the future of the reference: not used
    t, frames = sync.observation()
    assert t == 1000 * MS and frames == ['F1000', 'W980']
    sync.push('front', 1100 * MS, 'F1100')
    t, frames = sync.observation()
    assert frames == ['F1100', 'W1010']
    sync.push('front', 1200 * MS, 'F1200')           # wrist's newest is 190 ms old: too old
    assert sync.observation() is None and sync.misses == 2
