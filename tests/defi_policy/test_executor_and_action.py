"""Chunk executor output modes and the ExecuteInstruction action server (real rclpy)."""
import threading
import time

import numpy as np
import pytest

from defi_ros_testkit import Probe, make_executor, params, shutdown

pytestmark = pytest.mark.timeout(60)


def chunk_msg(probe, actions, names, dt=0.1, age_s=0.0):
    from defi_ros.conversions import chunk_to_msg
    stamp = probe.node.get_clock().now().nanoseconds - int(age_s * 1e9)
    return chunk_to_msg(np.asarray(actions, np.float32), stamp, dt, names, 'task')


def run_executor(ros_context, spin, mode, listen, extra=None, send=None, wait=None):
    from defi_msgs.msg import ActionChunk
    from defi_policy.chunk_executor_node import ChunkExecutorNode
    from defi_ros import qos
    node = ChunkExecutorNode(context=ros_context, parameter_overrides=params(
        output_mode=mode, control_rate_hz=20.0, max_age_s=2.0, **(extra or {})))
    probe = Probe(ros_context)
    for t, topic in listen:
        probe.listen(t, topic, qos.RELIABLE)
    pub = probe.publisher(ActionChunk, 'defi/action_chunk', qos.RELIABLE)
    assert node.start()
    ex = make_executor(ros_context, [node, probe.node])
    try:
        spin(ex, lambda: pub.get_subscription_count() > 0, timeout_s=3)
        pub.publish(send(probe))
        spin(ex, wait(probe, node), timeout_s=3)
        # shutting the executor node down commands a stop: let the probe receive it
        counts = {t: len(probe.msgs(t)) for _, t in listen}
        ex.remove_node(node)
        node.destroy_node()
        spin(ex, lambda: all(len(probe.msgs(t)) > n for t, n in counts.items()), timeout_s=1.0)
        return probe, node
    finally:
        shutdown(ex, [node, probe.node])


def test_twist_mode_maps_named_components_and_clips(ros_context, spin):
    from geometry_msgs.msg import TwistStamped
    topic = 'servo_node/delta_twist_cmds'
    probe, node = run_executor(
        ros_context, spin, 'twist', [(TwistStamped, topic)],
        extra={'twist_axes': ['x', 'y', 'z', '', '', 'yaw'], 'linear_scale': 2.0,
               'action_max': [0.3]},
        send=lambda p: chunk_msg(p, [[0.1, 0.2, 0.9, 0.05]] * 10, ['x', 'y', 'z', 'yaw']),
        wait=lambda p, n: lambda: len(p.msgs(topic)) >= 2)
    msgs = probe.msgs(topic)
    first = msgs[0].twist
    assert (first.linear.x, first.linear.y) == pytest.approx((0.2, 0.4))
    assert first.linear.z == pytest.approx(0.6)          # 0.9 clipped to 0.3, then scaled
    assert first.angular.z == pytest.approx(0.05) and first.angular.x == 0.0
    assert msgs[0].header.frame_id == 'base_link'
    # shutdown commands a zero twist
    assert all(v == 0.0 for v in (msgs[-1].twist.linear.x, msgs[-1].twist.angular.z))


def test_joint_trajectory_mode_orders_joints_and_holds_on_stop(ros_context, spin):
    from trajectory_msgs.msg import JointTrajectory
    topic = 'arm_controller/joint_trajectory'
    probe, node = run_executor(
        ros_context, spin, 'joint_trajectory', [(JointTrajectory, topic)],
        extra={'trajectory_topic': topic, 'joint_names': ['j2', 'j1']},
        send=lambda p: chunk_msg(p, [[1.0, 2.0, 3.0]] * 10, ['j1', 'j2', 'j3']),
        wait=lambda p, n: lambda: len(p.msgs(topic)) >= 1)
    msgs = probe.msgs(topic)
    assert list(msgs[0].joint_names) == ['j2', 'j1']
    assert list(msgs[0].points[0].positions) == [2.0, 1.0]
    assert msgs[-1].points == []                          # stop on shutdown = hold position


def test_passthrough_and_dry_run(ros_context, spin):
    from defi_msgs.msg import ActionChunk
    topic = 'defi/action_command'
    actions = np.arange(40, dtype=np.float32).reshape(10, 4) / 100
    probe, node = run_executor(
        ros_context, spin, 'passthrough', [(ActionChunk, topic)],
        send=lambda p: chunk_msg(p, actions, ['x', 'y', 'z', 'g']),
        wait=lambda p, n: lambda: len(p.msgs(topic)) >= 3)
    msgs = probe.msgs(topic)
    assert msgs[0].horizon == 1 and list(msgs[0].names) == ['x', 'y', 'z', 'g']
    assert list(msgs[0].data) == pytest.approx(actions[0].tolist())
    assert list(msgs[1].data) == pytest.approx(actions[1].tolist())   # due 50 ms... at step 1 time
    probe, node = run_executor(
        ros_context, spin, 'passthrough', [(ActionChunk, topic)], extra={'dry_run': True},
        send=lambda p: chunk_msg(p, actions, ['x', 'y', 'z', 'g']),
        wait=lambda p, n: lambda: n.schedule.steps_executed >= 3)
    assert probe.msgs(topic) == [] and node.schedule.steps_executed >= 3


def test_chunk_mode_forwards_each_chunk_once_clipped_with_its_own_stamp(ros_context, spin):
    """output_mode chunk (the lockstep sim): the whole chunk, once, as it arrives, stamped with its
    observation time, so only the chunk computed from an observation answers it; stop = zeros."""
    from defi_msgs.msg import ActionChunk
    topic = 'defi/action_command'
    actions = np.arange(40, dtype=np.float32).reshape(10, 4) / 20
    sent = []

    def send(p):
        sent.append(chunk_msg(p, actions, ['x', 'y', 'z', 'g'], dt=0.025))
        return sent[-1]
    probe, node = run_executor(
        ros_context, spin, 'chunk', [(ActionChunk, topic)], extra={'action_max': [1.0]},
        send=send, wait=lambda p, n: lambda: n.schedule.steps_executed >= 3)
    msgs = probe.msgs(topic)
    assert len(msgs) == 2, [m.horizon for m in msgs]          # the chunk once, then the stop
    first, stop = msgs
    assert first.header.stamp == sent[0].header.stamp and first.dt == pytest.approx(0.025)
    assert first.horizon == 10 and list(first.names) == ['x', 'y', 'z', 'g']
    assert list(first.data) == pytest.approx(np.minimum(actions, 1.0).ravel().tolist())
    assert stop.horizon == 1 and not any(stop.data)


def test_a_goal_starts_from_the_chunk_answered_while_disabled(ros_context, spin):
    """A lockstep sim's first observation of an episode is answered before the goal enables the
    executor: on enable that chunk runs at once, but only if computed for the instruction heard
    since the last disable."""
    from std_msgs.msg import Bool, String

    from defi_msgs.msg import ActionChunk
    from defi_policy.chunk_executor_node import ChunkExecutorNode
    from defi_ros import qos
    topic = 'defi/action_command'
    node = ChunkExecutorNode(context=ros_context, parameter_overrides=params(
        output_mode='chunk', control_rate_hz=20.0, max_age_s=2.0, start_enabled=False))
    probe = Probe(ros_context)
    probe.listen(ActionChunk, topic, qos.RELIABLE)
    chunks = probe.publisher(ActionChunk, 'defi/action_chunk', qos.RELIABLE)
    enable = probe.publisher(Bool, 'defi/enable', qos.ENABLE)
    instruction = probe.publisher(String, 'instruction', qos.INSTRUCTION)
    assert node.start()
    ex = make_executor(ros_context, [node, probe.node])
    try:
        spin(ex, lambda: chunks.get_subscription_count() > 0 and enable.get_subscription_count() > 0
             and instruction.get_subscription_count() > 0, timeout_s=3)
        instruction.publish(String(data='task'))
        assert spin(ex, lambda: node._instruction == 'task', timeout_s=3)
        first = chunk_msg(probe, np.full((10, 4), 0.25), ['x', 'y', 'z', 'g'], dt=0.025)
        chunks.publish(first)
        assert spin(ex, lambda: node._held is not None, timeout_s=3)
        assert probe.msgs(topic) == []                 # disabled: nothing commanded
        enable.publish(Bool(data=True))
        assert spin(ex, lambda: probe.msgs(topic), timeout_s=3)
        out = probe.msgs(topic)[0]
        assert out.header.stamp == first.header.stamp and out.horizon == 10

        # a new goal that says another task: the chunk answered for the old one never runs
        enable.publish(Bool(data=False))
        assert spin(ex, lambda: not node.enabled, timeout_s=3)
        n = len(probe.msgs(topic))                      # + the stop
        chunks.publish(chunk_msg(probe, np.full((10, 4), 0.5), ['x', 'y', 'z', 'g'], dt=0.025))
        assert spin(ex, lambda: node._held is not None, timeout_s=3)
        enable.publish(Bool(data=True))                 # before the goal's instruction arrives
        assert spin(ex, lambda: node.enabled, timeout_s=3)
        instruction.publish(String(data='other task'))
        assert spin(ex, lambda: node._instruction == 'other task', timeout_s=3)
        spin(ex, lambda: False, timeout_s=0.3)
        assert [m for m in probe.msgs(topic)[n:] if any(m.data)] == []
    finally:
        shutdown(ex, [node, probe.node])


def test_stale_and_malformed_chunks_are_rejected(ros_context, spin):
    from defi_msgs.msg import ActionChunk
    topic = 'defi/action_command'

    def send(p):
        bad = chunk_msg(p, np.zeros((10, 4)), ['a', 'b', 'c', 'd'])
        bad.data = bad.data[:7]                               # truncated
        p.pubs['defi/action_chunk'].publish(bad)
        return chunk_msg(p, np.ones((10, 4)), ['a', 'b', 'c', 'd'], age_s=5.0)   # too old
    probe, node = run_executor(ros_context, spin, 'passthrough', [(ActionChunk, topic)],
                               send=send, wait=lambda p, n: lambda: n.counters.stale_observations >= 1)
    snap = node.counters.snapshot()
    assert snap['malformed_inputs'] == 1 and snap['stale_observations'] == 1
    assert 'data' in snap['last_error'] or 'old' in snap['last_error']
    assert probe.msgs(topic) == []


def test_action_goal_accepted_feedback_and_cancel_stops(ros_context, spin):
    from rclpy.action import ActionClient
    from std_msgs.msg import Bool, String

    from defi_msgs.action import ExecuteInstruction
    from defi_msgs.msg import ActionChunk
    from defi_policy.chunk_executor_node import ChunkExecutorNode
    from defi_policy.execute_instruction_server import ExecuteInstructionServer
    from defi_ros import qos

    server = ExecuteInstructionServer(context=ros_context,
                                      parameter_overrides=params(feedback_rate_hz=10.0))
    execu = ChunkExecutorNode(context=ros_context, parameter_overrides=params(
        control_rate_hz=20.0, start_enabled=False))
    probe = Probe(ros_context)
    probe.listen(String, 'instruction', qos.INSTRUCTION)
    probe.listen(ActionChunk, 'defi/action_command', qos.RELIABLE)
    chunks = probe.publisher(ActionChunk, 'defi/action_chunk', qos.RELIABLE)
    success = probe.publisher(Bool, 'sim/success', 10)
    assert server.start() and execu.start()
    client = ActionClient(probe.node, ExecuteInstruction, 'execute_instruction')
    ex = make_executor(ros_context, [server, execu, probe.node])
    feedback = []
    try:
        assert spin(ex, lambda: client.server_is_ready(), timeout_s=5)
        # an empty instruction is rejected and counted
        fut = client.send_goal_async(ExecuteInstruction.Goal(instruction=' '))
        spin(ex, fut.done, timeout_s=5)
        assert not fut.result().accepted and server.counters.malformed_inputs == 1

        fut = client.send_goal_async(ExecuteInstruction.Goal(instruction='close the drawer', timeout=30.0),
                                     feedback_callback=lambda f: feedback.append(f.feedback))
        spin(ex, fut.done, timeout_s=5)
        handle = fut.result()
        assert handle.accepted
        assert spin(ex, lambda: probe.msgs('instruction') and execu.enabled, timeout_s=5)
        assert probe.msgs('instruction')[-1].data == 'close the drawer'
        # the policy runs: chunks flow, the executor commands, feedback counts them
        for _ in range(3):
            chunks.publish(chunk_msg(probe, np.full((10, 4), 0.5), ['a', 'b', 'c', 'd']))
            spin(ex, lambda: False, timeout_s=0.15)
        assert spin(ex, lambda: feedback and feedback[-1].chunks_executed >= 3, timeout_s=5)
        assert feedback[-1].elapsed > 0 and feedback[-1].last_latency_ms >= 0
        n_cmd = len(probe.msgs('defi/action_command'))
        assert n_cmd >= 1
        cancel = handle.cancel_goal_async()
        spin(ex, cancel.done, timeout_s=5)
        res = handle.get_result_async()
        spin(ex, res.done, timeout_s=5)
        assert res.result().result.error_code == ExecuteInstruction.Result.ERROR_CANCELED
        # cancel disabled the executor, which commanded a zero action
        assert spin(ex, lambda: any(all(v == 0.0 for v in m.data)
                                    for m in probe.msgs('defi/action_command')[n_cmd:]), timeout_s=3)
        assert not execu.enabled

        # a second goal succeeds on the success topic
        fut = client.send_goal_async(ExecuteInstruction.Goal(instruction='open the window'))
        spin(ex, fut.done, timeout_s=5)
        handle = fut.result()
        spin(ex, lambda: execu.enabled, timeout_s=3)
        success.publish(Bool(data=True))
        res = handle.get_result_async()
        spin(ex, res.done, timeout_s=5)
        assert res.result().result.success and res.result().result.error_code == 0
    finally:
        client.destroy()
        shutdown(ex, [server, execu, probe.node])


def test_missing_checkpoint_is_reported_and_the_node_keeps_running(ros_context, spin, tiny_checkpoint):
    from defi_msgs.msg import PolicyStatus
    from defi_policy.action_decoder_node import ActionDecoderNode
    from defi_ros import qos
    node = ActionDecoderNode(context=ros_context, parameter_overrides=params(
        checkpoint='/nonexistent/ckpt', status_rate_hz=20.0))
    probe = Probe(ros_context)
    probe.listen(PolicyStatus, 'defi/status', qos.BEST_EFFORT)
    ex = make_executor(ros_context, [node, probe.node])
    try:
        assert not node.start()
        assert spin(ex, lambda: len(probe.msgs('defi/status')) >= 3, timeout_s=5)   # still alive
        st = probe.status_of('action_decoder')
        assert st.state == PolicyStatus.STATE_ERROR and st.errors_total >= 1
        assert 'checkpoint' in st.last_error and '/nonexistent/ckpt' in st.last_error
        # fixing the parameter and configuring again works (checkpoint loaded from disk)
        from rclpy.parameter import Parameter
        node.set_parameters([Parameter('checkpoint', value=tiny_checkpoint)])
        assert node.start()
        assert node.policy is not None and node.policy.cfg.action_dim == 4
    finally:
        shutdown(ex, [node, probe.node])


def test_cancel_is_immediate_and_shutdown_ends_a_running_goal(ros_context, spin):
    """A slow feedback rate (one per 2 s) must delay neither a cancel nor the shutdown."""
    from rclpy.action import ActionClient

    from defi_msgs.action import ExecuteInstruction
    from defi_policy.execute_instruction_server import ExecuteInstructionServer

    server = ExecuteInstructionServer(context=ros_context,
                                      parameter_overrides=params(feedback_rate_hz=0.5))
    probe = Probe(ros_context)
    assert server.start()
    client = ActionClient(probe.node, ExecuteInstruction, 'execute_instruction')
    ex = make_executor(ros_context, [server, probe.node])

    def run_goal():
        fut = client.send_goal_async(ExecuteInstruction.Goal(instruction='open the door', timeout=30.0))
        spin(ex, fut.done, timeout_s=5)
        handle = fut.result()
        assert handle.accepted
        spin(ex, lambda: False, timeout_s=0.3)       # the goal loop is now waiting
        return handle
    try:
        assert spin(ex, lambda: client.server_is_ready(), timeout_s=5)
        handle = run_goal()
        t0 = time.monotonic()
        cancel = handle.cancel_goal_async()
        res = handle.get_result_async()
        assert spin(ex, res.done, timeout_s=5)
        assert res.result().result.error_code == ExecuteInstruction.Result.ERROR_CANCELED
        assert time.monotonic() - t0 < 1.0, 'cancel waited for the feedback period'
        assert cancel.done()

        handle = run_goal()
        res = handle.get_result_async()
        # as in shutdown_nodes, the executor no longer serves the server being torn down (taking
        # a request from a destroyed action server raises in the executor)
        ex.remove_node(server)
        t0 = time.monotonic()
        done = threading.Thread(target=server._teardown_once)
        done.start()
        assert spin(ex, lambda: not done.is_alive(), timeout_s=5)
        assert time.monotonic() - t0 < 1.5
        assert not server.active and server.server is None
        spin(ex, res.done, timeout_s=2)
        if res.done():       # the server may be gone before the result reaches the client
            assert res.result().result.message == 'the server is shutting down'
    finally:
        client.destroy()
        shutdown(ex, [server, probe.node])
