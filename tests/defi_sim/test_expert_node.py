"""defi_expert_node through real rclpy: answers each defi_msgs/TaskState, follows its task."""
import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from defi_msgs.msg import ActionChunk, TaskState  # noqa: E402
from defi_sim.expert_node import ExpertNode  # noqa: E402
from defi_sim.metaworld_env import MetaWorldSim, observation_names  # noqa: E402

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def test_expert_answers_task_state_and_switches_task(ros_context, spin):
    expert = ExpertNode(context=ros_context, parameter_overrides=[Parameter('task', value='drawer-open')])
    probe = rclpy.create_node('expert_probe', context=ros_context)
    commands = []
    probe.create_subscription(ActionChunk, 'defi/action_command', commands.append, RELIABLE)
    state_pub = probe.create_publisher(TaskState, 'sim/task_state', RELIABLE)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(expert)
    executor.add_node(probe)
    sim = MetaWorldSim('reach-v3', seed=7, image_size=16)
    try:
        assert spin(executor, lambda: state_pub.get_subscription_count() >= 1
                    and expert.command_pub.get_subscription_count() >= 1, 10.0)
        msg = TaskState(task='reach-v3', names=observation_names(), values=sim.observation.tolist())
        msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = 3, 25_000_000, 'world'
        state_pub.publish(msg)
        assert spin(executor, lambda: commands, 5.0)
        assert expert.task == 'reach-v3'          # the state's task, not the start parameter
        chunk = commands[-1]
        assert (chunk.header.stamp.sec, chunk.header.stamp.nanosec) == (3, 25_000_000)
        assert chunk.instruction == 'reach the goal position'
        np.testing.assert_allclose(chunk.data, np.clip(sim.expert_action(), -1, 1), atol=1e-6)
        # a state of the wrong size is refused, not answered
        state_pub.publish(TaskState(task='reach-v3', values=[0.0] * 38))
        spin(executor, lambda: len(commands) > 1, 0.5)
        assert len(commands) == 1
    finally:
        sim.close()
        expert.destroy_node()
        probe.destroy_node()
