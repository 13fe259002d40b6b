"""Every defi_msgs interface goes through real rclpy nodes over FastDDS with its fields intact."""
import subprocess
import sys
import textwrap
import time

import pytest
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

from sample_messages import make_samples, to_plain

MSG_NAMES = ['ForwardFeatures', 'LatentActions', 'ActionChunk', 'PolicyStatus', 'TaskState']


@pytest.mark.parametrize('name', MSG_NAMES)
def test_message_between_two_nodes(ros_context, spin, name):
    import defi_msgs.msg as msgs
    msg_type = getattr(msgs, name)
    sent = make_samples()[name]
    talker = Node('talker', context=ros_context)
    listener = Node('listener', context=ros_context)
    received = []
    listener.create_subscription(msg_type, 'defi/test', received.append, 10)
    pub = talker.create_publisher(msg_type, 'defi/test', 10)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(talker)
    ex.add_node(listener)

    def published_and_received():
        pub.publish(sent)
        return bool(received)

    assert spin(ex, published_and_received, timeout_s=10.0), f'{name} never arrived'
    assert to_plain(received[0]) == to_plain(sent)
    ex.shutdown()


def test_message_between_two_processes(ros_context, spin):
    """An ActionChunk published by another process (its own DDS participant) arrives intact."""
    from defi_msgs.msg import ActionChunk
    expected = make_samples()['ActionChunk']
    script = textwrap.dedent(f'''
        import sys, time, rclpy
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from defi_msgs.msg import ActionChunk
        from sample_messages import make_samples
        rclpy.init()
        node = rclpy.create_node('remote_talker')
        pub = node.create_publisher(ActionChunk, 'defi/remote', 10)
        msg = make_samples()['ActionChunk']
        end = time.time() + 20
        while time.time() < end:
            pub.publish(msg)
            time.sleep(0.05)
    ''')
    proc = subprocess.Popen([sys.executable, '-c', script])
    try:
        listener = Node('listener', context=ros_context)
        received = []
        listener.create_subscription(ActionChunk, 'defi/remote', received.append, 10)
        ex = SingleThreadedExecutor(context=ros_context)
        ex.add_node(listener)
        assert spin(ex, lambda: bool(received), timeout_s=15.0), 'nothing from the other process'
        assert to_plain(received[0]) == to_plain(expected)
        ex.shutdown()
    finally:
        proc.kill()
        proc.wait()


def test_execute_instruction_action(ros_context, spin):
    """Goal in, feedback out, result with error code back; a second goal is cancelled."""
    from rclpy.action import ActionClient, ActionServer, CancelResponse, GoalResponse

    from defi_msgs.action import ExecuteInstruction

    server_node = Node('action_server', context=ros_context)
    client_node = Node('action_client', context=ros_context)

    def execute(goal_handle):
        for i in range(100):
            if goal_handle.is_cancel_requested:
                goal_handle.canceled()
                return ExecuteInstruction.Result(
                    success=False, error_code=ExecuteInstruction.Result.ERROR_CANCELED,
                    message='canceled')
            fb = ExecuteInstruction.Feedback(elapsed=0.01 * i, chunks_executed=i,
                                             last_latency_ms=12.5)
            goal_handle.publish_feedback(fb)
            if i == 3 and goal_handle.request.instruction == 'open the drawer':
                goal_handle.succeed()
                return ExecuteInstruction.Result(success=True, error_code=0,
                                                 message=goal_handle.request.instruction)
            time.sleep(0.02)
        goal_handle.abort()
        return ExecuteInstruction.Result(success=False,
                                         error_code=ExecuteInstruction.Result.ERROR_TIMEOUT)

    ActionServer(server_node, ExecuteInstruction, 'execute_instruction', execute,
                 goal_callback=lambda req: GoalResponse.ACCEPT,
                 cancel_callback=lambda handle: CancelResponse.ACCEPT)
    client = ActionClient(client_node, ExecuteInstruction, 'execute_instruction')
    ex = MultiThreadedExecutor(context=ros_context)
    ex.add_node(server_node)
    ex.add_node(client_node)
    assert spin(ex, lambda: client.server_is_ready(), timeout_s=10.0)

    feedback = []
    goal = ExecuteInstruction.Goal(instruction='open the drawer', timeout=5.0)
    send = client.send_goal_async(goal, feedback_callback=lambda fb: feedback.append(fb.feedback))
    assert spin(ex, send.done, timeout_s=10.0)
    handle = send.result()
    assert handle.accepted
    result_future = handle.get_result_async()
    assert spin(ex, result_future.done, timeout_s=10.0)
    result = result_future.result().result
    assert result.success and result.error_code == 0 and result.message == 'open the drawer'
    assert feedback and feedback[-1].chunks_executed >= 1
    assert feedback[-1].last_latency_ms == pytest.approx(12.5)

    send = client.send_goal_async(ExecuteInstruction.Goal(instruction='wave', timeout=5.0))
    assert spin(ex, send.done, timeout_s=10.0)
    handle = send.result()
    cancel = handle.cancel_goal_async()
    assert spin(ex, cancel.done, timeout_s=10.0)
    result_future = handle.get_result_async()
    assert spin(ex, result_future.done, timeout_s=10.0)
    assert result_future.result().result.error_code == ExecuteInstruction.Result.ERROR_CANCELED
    ex.shutdown()
