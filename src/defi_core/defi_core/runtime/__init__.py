"""ROS-free runtime logic shared by the DeFI ROS 2 nodes (timing, safety, output mapping, workers).

Nothing here imports rclpy: the nodes stay thin wrappers around these plain classes, which are
tested without ROS.
"""
from .camera_sync import CameraSync
from .chunk_schedule import Chunk, ChunkSchedule, Step, parse_limits
from .outputs import TwistAxes, joint_positions, resolve_twist_axes, twist_components, zero_action
from .safety import SafetyLatch, StopReason, all_finite, observation_age_s
from .status import StatusCounters
from .timing import BackJumpDetector, clock_mismatch, future_s, is_wall_clock
from .worker import LatestWorker

__all__ = [
    'Chunk', 'ChunkSchedule', 'Step', 'parse_limits',
    'TwistAxes', 'joint_positions', 'resolve_twist_axes',
    'twist_components', 'zero_action',
    'SafetyLatch', 'StopReason', 'all_finite', 'observation_age_s',
    'StatusCounters', 'LatestWorker', 'CameraSync',
    'BackJumpDetector', 'clock_mismatch', 'future_s', 'is_wall_clock',
]
