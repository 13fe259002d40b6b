"""defi_expert_node: Meta-World's scripted expert as a ROS 2 node (for recording demonstrations).

Reads the privileged state on `sim/task_state` (defi_msgs/TaskState) and answers every observation with a
`defi/action_command` ActionChunk (horizon 1) stamped with the observation's stamp, so the sim in
lockstep steps on it. Optional Gaussian noise on dx, dy, dz (not on the gripper: flipping the grasp
would turn noise into failed demonstrations).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from defi_msgs.msg import ActionChunk, TaskState
from defi_ros.params import declare_params, param
from defi_sim.metaworld_env import ACTION_NAMES, scripted_expert
from defi_sim.ros_main import spin_node
from defi_sim.tasks import canonical_task_name, instruction_for

OBSERVATION_SIZE = 39

# metaworld's policies warn on every call that their gains saturate the [-1, 1] action range.
warnings.filterwarnings('ignore', message='Constant\\(s\\) may be too high')


@dataclass
class ExpertNodeConfig:
    task: str = param('drawer-open-v3', 'Meta-World v3 task whose scripted expert drives the arm')
    noise_std: float = param(0.0, 'std of Gaussian noise added to dx, dy, dz (action units, >= 0)')
    noise_seed: int = param(0, 'seed of that noise')
    dt: float = param(0.025, "seconds between chunk steps, written into the chunk (the sim's "
                      'observation period)')


class ExpertNode(Node):
    def __init__(self, *, context=None, parameter_overrides=None, **node_kwargs):
        super().__init__('defi_expert_node', context=context,
                         parameter_overrides=parameter_overrides, **node_kwargs)
        self.config = declare_params(self, ExpertNodeConfig)
        if self.config.noise_std < 0:
            raise ValueError(f'parameter noise_std={self.config.noise_std} must be >= 0')
        self.set_task(self.config.task)
        self.rng = np.random.default_rng(self.config.noise_seed)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.command_pub = self.create_publisher(ActionChunk, 'defi/action_command', reliable)
        self.create_subscription(TaskState, 'sim/task_state', self._on_state, reliable)
        self.commands_sent = 0

    def set_task(self, task: str) -> None:
        self.task = canonical_task_name(task)
        self.instruction = instruction_for(self.task)
        self.policy = scripted_expert(self.task)

    def _on_state(self, msg: TaskState) -> None:
        if len(msg.values) != OBSERVATION_SIZE:
            self.get_logger().error(
                f'sim/task_state: expected {OBSERVATION_SIZE} values, got {len(msg.values)}; ignored',
                throttle_duration_sec=5.0)
            return
        if msg.task and msg.task != self.task:
            self.set_task(msg.task)  # the sim switched tasks (sim/reset with a new `task`)
        action = np.asarray(self.policy.get_action(np.asarray(msg.values, dtype=np.float64)),
                            dtype=np.float64)
        if self.config.noise_std > 0:
            action[:3] += self.rng.normal(0.0, self.config.noise_std, size=3)
        action = np.clip(action, -1.0, 1.0)
        chunk = ActionChunk()
        chunk.header.stamp = msg.header.stamp
        chunk.dt = float(self.config.dt)
        chunk.horizon, chunk.action_dim = 1, 4
        chunk.names = list(ACTION_NAMES)
        chunk.data = action.astype(np.float32).tolist()
        chunk.instruction = self.instruction
        self.command_pub.publish(chunk)
        self.commands_sent += 1


def main(args=None):
    spin_node(ExpertNode, args)


if __name__ == '__main__':
    main()
