"""Time that is not monotonic (real rclpy): future stamps refused, a clock jump back stops the robot
and fresh data resumes, a future-stamped camera frame does not block good frames."""
import time

import numpy as np
import pytest

from defi_ros_testkit import Probe, image_msg, make_executor, params, shutdown

pytestmark = pytest.mark.timeout(60)
NAMES = ['x', 'y', 'z', 'g']


def chunk(stamp_ns, value=0.5, horizon=40, dt=0.025):
    from defi_ros.conversions import chunk_to_msg
    return chunk_to_msg(np.full((horizon, 4), value, np.float32), stamp_ns, dt, NAMES, 'task')


def is_stop(msg):
    return all(v == 0.0 for v in msg.data)


def executor_and_probe(ros_context, **extra):
    from defi_msgs.msg import ActionChunk
    from defi_policy.chunk_executor_node import ChunkExecutorNode
    from defi_ros import qos
    node = ChunkExecutorNode(context=ros_context, parameter_overrides=params(
        output_mode='passthrough', control_rate_hz=40.0, max_age_s=1.0, **extra))
    probe = Probe(ros_context)
    probe.listen(ActionChunk, 'defi/action_command', qos.RELIABLE)
    pub = probe.publisher(ActionChunk, 'defi/action_chunk', qos.RELIABLE)
    assert node.start()
    return node, probe, pub


def test_chunk_stamped_in_the_future_is_refused_and_later_chunks_still_run(ros_context, spin):
    node, probe, pub = executor_and_probe(ros_context)
    ex = make_executor(ros_context, [node, probe.node])
    try:
        assert spin(ex, lambda: pub.get_subscription_count() > 0, timeout_s=3)
        now = probe.node.get_clock().now().nanoseconds
        pub.publish(chunk(now + 60 * 10**9, value=0.9))            # +60 s
        spin(ex, lambda: False, timeout_s=0.3)
        pub.publish(chunk(probe.node.get_clock().now().nanoseconds, value=0.5))
        assert spin(ex, lambda: any(list(m.data) == [0.5] * 4 for m in probe.msgs('defi/action_command')),
                    timeout_s=3), 'a fresh chunk after a future-stamped one must run'
        assert not any(0.9 in list(m.data) for m in probe.msgs('defi/action_command'))
        assert node.counters.future_stamps == 1
        assert 'defi/action_chunk' in node.counters.last_error and 'future' in node.counters.last_error
    finally:
        shutdown(ex, [node, probe.node])


def test_sim_clock_jumping_back_commands_a_stop_and_fresh_chunks_resume(ros_context, spin):
    from rosgraph_msgs.msg import Clock

    from defi_ros.conversions import ns_to_stamp
    node, probe, pub = executor_and_probe(ros_context, use_sim_time=True)
    clock_pub = probe.publisher(Clock, '/clock', 10)
    ex = make_executor(ros_context, [node, probe.node])
    sim = {'t': 100 * 10**9}

    def run_clock(seconds, until=None):
        """Advance sim time in step with the wall clock while spinning."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sim['t'] += 10_000_000
            clock_pub.publish(Clock(clock=ns_to_stamp(sim['t'])))
            spin(ex, lambda: False, timeout_s=0.01)
            if until is not None and until():
                return True
        return until is None or until()
    try:
        assert spin(ex, lambda: pub.get_subscription_count() > 0 and clock_pub.get_subscription_count() > 0,
                    timeout_s=3)
        run_clock(0.2)
        pub.publish(chunk(sim['t'], horizon=200))                  # a 5 s chunk: moving
        assert run_clock(2.0, lambda: len(probe.msgs('defi/action_command')) >= 3)
        assert not is_stop(probe.msgs('defi/action_command')[-1])
        n = len(probe.msgs('defi/action_command'))
        sim['t'] -= 10 * 10**9                                     # /clock jumps back 10 s
        t_jump = time.monotonic()
        clock_pub.publish(Clock(clock=ns_to_stamp(sim['t'])))
        assert spin(ex, lambda: any(is_stop(m) for m in probe.msgs('defi/action_command')[n:]),
                    timeout_s=2), 'no stop after the clock jumped back'
        stop_i = n + next(i for i, m in enumerate(probe.msgs('defi/action_command')[n:]) if is_stop(m))
        delay_ms = (probe.times['defi/action_command'][stop_i] - t_jump) * 1e3
        print(f'clock jump back -> stop command: {delay_ms:.1f} ms')
        assert delay_ms < 500
        assert node.counters.clock_jumps >= 1
        # the stop holds (no moving command) until fresh data arrives ...
        run_clock(0.3)
        assert all(is_stop(m) for m in probe.msgs('defi/action_command')[stop_i:])
        # ... and a chunk stamped on the new time line runs (the old schedule was forgotten)
        pub.publish(chunk(sim['t'], value=0.25, horizon=200))
        assert run_clock(2.0, lambda: any(list(m.data) == [0.25] * 4
                                          for m in probe.msgs('defi/action_command')[stop_i:]))
    finally:
        shutdown(ex, [node, probe.node])


def test_wall_stamps_on_a_sim_time_node_are_explained_once(ros_context, spin):
    node, probe, pub = executor_and_probe(ros_context, use_sim_time=True)
    said = []

    class Logger:
        def __getattr__(self, level):
            return lambda text, **kw: said.append((level, text))
    node.get_logger = Logger
    ex = make_executor(ros_context, [node, probe.node])
    try:
        assert spin(ex, lambda: pub.get_subscription_count() > 0, timeout_s=3)
        for _ in range(3):
            pub.publish(chunk(time.time_ns()))
        spin(ex, lambda: len(said) >= 3, timeout_s=3)
        hints = [t for level, t in said if 'wall-clock' in t and 'use_sim_time' in t]
        assert len(hints) == 1 and hints[0].startswith('defi/action_chunk:'), said
    finally:
        shutdown(ex, [node, probe.node])


def test_camera_frame_stamped_in_the_future_does_not_block_good_frames(ros_context, spin, tiny_policy):
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from defi_msgs.msg import ForwardFeatures
    from defi_perception.forward_predictor_node import ForwardPredictorNode
    from defi_ros import qos
    node = ForwardPredictorNode(policy=tiny_policy, context=ros_context, parameter_overrides=params(
        preview_rate_hz=0.0, max_age_s=2.0))
    probe = Probe(ros_context)
    probe.listen(ForwardFeatures, 'defi/forward_features', qos.FEATURES)
    cam = probe.publisher(Image, 'camera/image_raw', qos.SENSOR)
    instr = probe.publisher(String, 'instruction', qos.INSTRUCTION)
    assert node.start()
    ex = make_executor(ros_context, [node, probe.node])

    def stamp(offset_s=0.0):
        t = probe.node.get_clock().now().nanoseconds + int(offset_s * 1e9)
        return Time(sec=t // 10**9, nanosec=t % 10**9)
    try:
        assert spin(ex, lambda: cam.get_subscription_count() > 0, timeout_s=3)
        instr.publish(String(data='open the drawer'))
        assert spin(ex, lambda: node.instruction, timeout_s=3)
        cam.publish(image_msg(stamp(20.0)))                         # +20 s
        spin(ex, lambda: False, timeout_s=0.5)
        for k in range(5):
            cam.publish(image_msg(stamp(), seed=k))
            spin(ex, lambda: False, timeout_s=0.15)
        now = probe.node.get_clock().now().nanoseconds
        assert spin(ex, lambda: any(f.header.stamp.sec * 10**9 + f.header.stamp.nanosec <= now
                                    for f in probe.msgs('defi/forward_features')), timeout_s=5), \
            'good frames after a future-stamped one must be processed'
        assert all(f.header.stamp.sec * 10**9 + f.header.stamp.nanosec <= now
                   for f in probe.msgs('defi/forward_features'))
        assert node.counters.future_stamps == 1 and 'camera/image_raw' in node.counters.last_error
    finally:
        shutdown(ex, [node, probe.node])


def test_negative_max_future_s_fails_configure_with_the_parameter_name(ros_context):
    from defi_policy.chunk_executor_node import ChunkExecutorNode
    node = ChunkExecutorNode(context=ros_context, parameter_overrides=params(max_future_s=-1.0))
    try:
        assert not node.start() and "'max_future_s'" in node.counters.last_error
    finally:
        node.destroy_node()


def test_a_chunk_not_due_yet_stops_the_robot_until_its_first_step(ros_context, spin):
    """A newer chunk stamped ahead of the clock (within max_future_s) replaces the running one:
    until its first step is due there is nothing valid to run, so the executor commands a stop."""
    node, probe, pub = executor_and_probe(ros_context)
    ex = make_executor(ros_context, [node, probe.node])
    now = lambda: probe.node.get_clock().now().nanoseconds  # noqa: E731
    topic = 'defi/action_command'
    try:
        assert spin(ex, lambda: pub.get_subscription_count() > 0, timeout_s=3)
        pub.publish(chunk(now(), value=0.5, horizon=200))
        assert spin(ex, lambda: len(probe.msgs(topic)) >= 3, timeout_s=3)
        n = len(probe.msgs(topic))
        t0 = time.monotonic()
        pub.publish(chunk(now() + 400_000_000, value=0.25, horizon=200))     # due in 0.4 s
        assert spin(ex, lambda: any(is_stop(m) for m in probe.msgs(topic)[n:]), timeout_s=0.35), \
            'the robot kept its last command while the new chunk was not due'
        stop_i = n + next(i for i, m in enumerate(probe.msgs(topic)[n:]) if is_stop(m))
        print(f'chunk not due -> stop command: {(probe.times[topic][stop_i] - t0) * 1e3:.1f} ms')
        assert not any(list(m.data) == [0.5] * 4 for m in probe.msgs(topic)[stop_i:])
        assert spin(ex, lambda: any(list(m.data) == [0.25] * 4 for m in probe.msgs(topic)[stop_i:]),
                    timeout_s=2)
        first = stop_i + next(i for i, m in enumerate(probe.msgs(topic)[stop_i:]) if list(m.data) == [0.25] * 4)
        assert probe.times[topic][first] - t0 >= 0.35               # not before it was due
    finally:
        shutdown(ex, [node, probe.node])
