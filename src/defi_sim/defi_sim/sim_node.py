"""defi_sim_node: a Meta-World task in MuJoCo speaking the robot's ROS 2 topics.

Publishes (names relative to the node's namespace):
  camera/<name>/image_raw  sensor_msgs/Image rgb8, one per configured camera, header.frame_id
                           <name>_camera_optical_frame
  joint_states             sensor_msgs/JointState (arm joints + the two finger joints)
  sim/ee_pose              geometry_msgs/PoseStamped (hand, frame `frame_id`)
  sim/success              std_msgs/Bool (task success after the last step)
  sim/task_state           defi_msgs/TaskState: the 39-D Meta-World observation (privileged
                           object/goal state, names from metaworld_env.observation_names()) and the
                           task; read by the scripted expert, never by the learned policy
  /clock                   rosgraph_msgs/Clock
  instruction              std_msgs/String, reliable + transient local
  robot_description        std_msgs/String, URDF of the Sawyer from the MuJoCo model, reliable +
                           transient local (as robot_state_publisher)
  /tf_static, /tf          tf2_msgs/TFMessage: world -> base_link, the arm's links, the cameras
                           (defi_sim.description); /tf_static transient local, /tf every observation
Subscribes:
  defi/action_command        defi_msgs/ActionChunk [horizon, 4] rows [dx, dy, dz, gripper] in [-1, 1];
                             row i is due at header.stamp + i * dt: the sim applies the latest row
                             due (on sim time in lockstep), held until a newer command
  servo_node/delta_twist_cmds geometry_msgs/TwistStamped; linear m/s -> dx, dy, dz; gripper kept
Service:
  sim/reset  std_srvs/Trigger: next episode with the next seed, or with the `task` / `seed`
             parameters when they were set since the last reset.

Command watchdog: when no command has arrived for `command_timeout_s` (wall time; 0 = off), the
sim stops the arm (dx = dy = dz = 0, the gripper command kept so nothing held is dropped) and says
so once; the next command resumes. A robot must do the same on its side: a commander that dies
must not leave the arm executing its last command.

Modes: `realtime` steps the physics on a wall-clock timer at the env's control rate with the latest
command held (zero-order hold); stamps are wall-clock time. `lockstep` runs on sim time as fast as the
loop allows: publish an observation, wait for a command stamped at or after it (or
`lockstep_timeout_s`), then step. Stamps and /clock are then sim time, so a closed loop through ROS is
deterministic.
"""
from __future__ import annotations

import array
import math
import time
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TransformStamped, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from defi_core import config_io
from defi_msgs.msg import ActionChunk, TaskState
from defi_ros.params import declare_params, param
from defi_sim.description import SceneFrames, camera_frame
from defi_sim.metaworld_env import MetaWorldSim, observation_names
from defi_sim.ros_main import spin_node
from defi_sim.tasks import canonical_task_name

MODES = ('realtime', 'lockstep')


@dataclass
class SimNodeConfig:
    task: str = param('drawer-open-v3', 'Meta-World v3 task (a new value applies at the next sim/reset)')
    seed: int = param(0, 'episode seed (training < 1000, evaluation from 1000; applies at the next sim/reset)')
    instruction: str = param('', "instruction published on `instruction`; '' = the task's own")
    cameras: list = param(['front=corner'], "'<ROS name>=<MuJoCo camera>': topic camera/<name>/image_raw")
    image_width: int = param(96, 'camera image width (px)')
    image_height: int = param(96, 'camera image height (px)')
    mode: str = param('realtime', 'realtime (wall clock) | lockstep (sim time, as fast as possible)')
    steps_per_observation: int = param(2, 'control steps (12.5 ms each) between observations')
    max_episode_steps: int = param(500, 'control steps per episode, then it holds still until sim/reset; '
                                   '0 = endless')
    lockstep_timeout_s: float = param(1.0, 'lockstep: step with the held command after this long (wall s)')
    command_timeout_s: float = param(0.5, 'no command for this long (wall s): the arm stops; 0 = off')
    twist_linear_scale: float = param(0.0, 'action per m/s of TwistStamped.linear; 0 = physical '
                                      '(dt / action scale)')
    frame_id: str = param('world', 'frame of sim/ee_pose and sim/task_state: the root of the TF tree '
                          '(the MuJoCo world)')
    publish_tf: bool = param(True, 'publish robot_description, /tf and /tf_static (world, base_link, '
                             'the arm links, the cameras)')

    def validate(self) -> 'SimNodeConfig':
        canonical_task_name(self.task)
        if self.mode not in MODES:
            raise ValueError(f'parameter mode={self.mode!r}: expected one of {MODES}')
        for name in ('steps_per_observation', 'image_width', 'image_height'):
            if getattr(self, name) < 1:
                raise ValueError(f'parameter {name}={getattr(self, name)} must be >= 1')
        if self.lockstep_timeout_s <= 0:
            raise ValueError(f'parameter lockstep_timeout_s={self.lockstep_timeout_s} must be > 0')
        if not self.command_timeout_s >= 0:
            raise ValueError(f'parameter command_timeout_s={self.command_timeout_s} must be >= 0 (0 = off)')
        if not self.cameras:
            raise ValueError('parameter cameras is empty: name at least one camera')
        if not self.frame_id:
            raise ValueError("parameter frame_id is empty: name the world frame (e.g. 'world')")
        return self


def _stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def _stamp_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class SimNode(Node):
    def __init__(self, *, context=None, parameter_overrides=None, **node_kwargs):
        super().__init__('defi_sim_node', context=context,
                         parameter_overrides=parameter_overrides, **node_kwargs)
        self.config = declare_params(self, SimNodeConfig).validate()
        cfg = self.config

        self.sim = self._make_sim(cfg.task, cfg.seed)
        self.dt_ns = int(round(self.sim.dt * 1e9))
        self.twist_scale = cfg.twist_linear_scale or self.sim.dt / self.sim.env.action_scale
        self._pending_task: str | None = None
        self._pending_seed: int | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # Reliable publishers: compatible with best-effort (sensor data) subscribers too, and a
        # reliable recorder then misses nothing.
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.image_pubs = {cam.name: self.create_publisher(Image, f'camera/{cam.name}/image_raw', reliable)
                           for cam in self.sim.cameras}
        self.joint_pub = self.create_publisher(JointState, 'joint_states', reliable)
        self.pose_pub = self.create_publisher(PoseStamped, 'sim/ee_pose', reliable)
        self.success_pub = self.create_publisher(Bool, 'sim/success', reliable)
        self.state_pub = self.create_publisher(TaskState, 'sim/task_state', reliable)
        self.clock_pub = self.create_publisher(ClockMsg, '/clock', reliable)
        self.instruction_pub = self.create_publisher(String, 'instruction', latched)
        # TF as tf2_ros's broadcasters send it: /tf reliable depth 100, /tf_static reliable transient
        # local holding one message with every static transform (a late RViz gets them all);
        # robot_description latched, as robot_state_publisher publishes it.
        if cfg.publish_tf:
            self.tf_pub = self.create_publisher(TFMessage, '/tf', QoSProfile(
                depth=100, reliability=ReliabilityPolicy.RELIABLE))
            self.tf_static_pub = self.create_publisher(TFMessage, '/tf_static', latched)
            self.description_pub = self.create_publisher(String, 'robot_description', latched)
        self.frames: SceneFrames | None = None
        self.robot_description = ''
        self.create_subscription(ActionChunk, 'defi/action_command', self._on_action_chunk, reliable)
        self.create_subscription(TwistStamped, 'servo_node/delta_twist_cmds', self._on_twist, reliable)
        self.create_service(Trigger, 'sim/reset', self._on_reset)

        self._obs_names = observation_names()
        self.command = np.zeros(4)
        self.command_stamp_ns = -1
        self._chunk_rows = np.zeros((1, 4))  # the latest command; rows follow each other in time
        self._chunk_dt_ns = 0
        self.total_steps = 0          # control steps since start: the sim clock never goes back
        self.observations_published = 0
        self.published_counts: dict[str, int] = {}
        self.lockstep_timeouts = 0
        self.command_timeouts = 0     # watchdog stops: no command within command_timeout_s
        self._last_command_wall = None
        self._command_timed_out = False
        self.paused = False           # an orchestrator (recording) can freeze the episode
        self.camera_frames = {c.name: camera_frame(c.name) for c in self.sim.cameras}
        self.obs_stamp_ns = 0
        self.episode_start_ns = 0      # stamp of this episode's first observation
        self.commands_before_episode = 0
        self._awaiting_command = False
        self._awaiting_since = 0.0
        self._steps_since_obs = 0
        self._rt_origin = None        # (wall, steps) to measure the real-time factor

        steady = Clock(clock_type=ClockType.STEADY_TIME)  # timers follow the wall, never sim time
        if cfg.mode == 'lockstep':
            self.create_timer(0.005, self._lockstep_watchdog, clock=steady)
        else:
            self.create_timer(self.sim.dt, self._realtime_tick, clock=steady)
        self._publish_instruction()
        self._publish_description()
        self._publish_observation()
        self.get_logger().info(
            f'{self.sim.task} seed {self.sim.seed} mode {cfg.mode}: cameras '
            f'{[c.name + "=" + c.mujoco_camera for c in self.sim.cameras]} at '
            f'{cfg.image_width}x{cfg.image_height}, observation every '
            f'{cfg.steps_per_observation * self.sim.dt * 1e3:.1f} ms')

    def _make_sim(self, task: str, seed: int) -> MetaWorldSim:
        cfg = self.config
        return MetaWorldSim(task, seed=seed, cameras=cfg.cameras, image_size=(cfg.image_height, cfg.image_width),
                            max_episode_steps=cfg.max_episode_steps)

    def _warn(self, message: str, **kwargs) -> None:
        logger = self.get_logger()
        # `warning` on newer rclpy (where `warn` is deprecated), `warn` on Humble
        (getattr(logger, 'warning', None) or logger.warn)(message, **kwargs)

    # ------------------------------------------------------------------ parameters / reset
    def _on_set_parameters(self, params) -> SetParametersResult:
        for p in params:
            if p.name == 'task':
                try:
                    self._pending_task = canonical_task_name(str(p.value))
                except ValueError as err:
                    return SetParametersResult(successful=False, reason=str(err))
            elif p.name == 'seed':
                try:        # parameters are dynamically typed: `ros2 param set seed abc` is refused here
                    self._pending_seed = config_io.coerce(p.value, int, 'seed')
                except config_io.ConfigError as err:
                    return SetParametersResult(successful=False, reason=f'parameter {err}')
            elif p.name == 'instruction':
                self.config.instruction = str(p.value)
            elif p.name in vars(self.config):
                return SetParametersResult(
                    successful=False, reason=f'parameter {p.name} is read once at start')
        return SetParametersResult(successful=True)

    def instruction(self) -> str:
        return self.config.instruction or self.sim.instruction

    def reset_episode(self, task: str | None = None, seed: int | None = None) -> str:
        """Start a new episode: `task` (default: unchanged), `seed` (default: the next seed)."""
        task = canonical_task_name(task) if task else self.sim.task
        seed = self.sim.seed + 1 if seed is None else int(seed)
        if task != self.sim.task:
            old = self.sim
            self.sim = self._make_sim(task, seed)
            old.close()
            self._publish_description()   # a new MjModel: the same arm, maybe other static frames
        else:
            self.sim.reset(seed)
        self.command = np.zeros(4)
        self._chunk_rows, self._chunk_dt_ns = np.zeros((1, 4)), 0
        self.paused = False
        self._steps_since_obs = 0
        # A fresh stamp for the new episode's first observation, so a late command answering the
        # previous episode's last observation cannot step the new one. In lockstep it comes one
        # observation period after the last observation, as from a camera: a consumer that keeps
        # to the camera rate (the forward predictor drops frames < 0.75 periods apart) takes it.
        self.total_steps += self.config.steps_per_observation if self.config.mode == 'lockstep' else 1
        self.episode_start_ns = self._now_ns()
        self._publish_instruction()
        self._publish_observation()
        return f'{self.sim.task} seed {self.sim.seed}'

    def _on_reset(self, request, response):
        try:
            response.message = self.reset_episode(self._pending_task, self._pending_seed)
            response.success = True
        except Exception as err:  # a bad task name must not kill the node
            response.success, response.message = False, f'reset failed: {err}'
        self._pending_task = self._pending_seed = None
        return response

    # ------------------------------------------------------------------ commands
    def _on_action_chunk(self, msg: ActionChunk) -> None:
        n = int(msg.horizon) * int(msg.action_dim)
        if msg.action_dim != 4 or msg.horizon < 1 or len(msg.data) != n:
            self.get_logger().error(
                f'defi/action_command: expected action_dim 4 and data of horizon*action_dim values, got '
                f'action_dim={msg.action_dim} horizon={msg.horizon} len(data)={len(msg.data)}; ignored',
                throttle_duration_sec=5.0)
            return
        rows = np.asarray(msg.data, dtype=np.float64).reshape(int(msg.horizon), 4)
        dt_ns = int(msg.dt * 1e9) if math.isfinite(msg.dt) and msg.dt > 0 else 0
        self._accept_command(rows, _stamp_ns(msg.header.stamp), 'defi/action_command', dt_ns)

    def _on_twist(self, msg: TwistStamped) -> None:
        lin = msg.twist.linear
        action = np.array([lin.x, lin.y, lin.z, 0.0]) * self.twist_scale
        action[3] = self.command[3]  # a twist says nothing about the gripper
        self._accept_command(action[None], _stamp_ns(msg.header.stamp), 'servo_node/delta_twist_cmds', 0)

    def _accept_command(self, rows: np.ndarray, stamp_ns: int, topic: str, dt_ns: int) -> None:
        if 0 < stamp_ns < self.episode_start_ns:
            # it answers an observation of the previous episode: never a command for this one
            self.commands_before_episode += 1
            return
        if not np.all(np.isfinite(rows)):
            self.get_logger().error(f'{topic}: non-finite command {rows.tolist()}; ignored',
                                    throttle_duration_sec=5.0)
            return
        self._chunk_rows, self._chunk_dt_ns = np.clip(rows, -1.0, 1.0), dt_ns
        self.command_stamp_ns = stamp_ns
        # a timed chunk is a plan: the watchdog counts from its last row (receipt + (H-1) dt)
        self._last_command_wall = time.monotonic() + (len(rows) - 1) * dt_ns * 1e-9
        if self._command_timed_out:
            self._command_timed_out = False
            self.get_logger().info(f'{topic}: commands again; moving')
        self._update_command(self._now_ns())
        if self.config.mode == 'lockstep' and self._awaiting_command and stamp_ns >= self.obs_stamp_ns:
            self._advance()

    def _update_command(self, now_ns: int) -> None:
        """Zero-order hold of the latest command's row due at `now_ns` (row 0 before its stamp)."""
        row = 0
        if self._chunk_dt_ns > 0 and now_ns > self.command_stamp_ns:
            row = min(len(self._chunk_rows) - 1, (now_ns - self.command_stamp_ns) // self._chunk_dt_ns)
        self.command = self._chunk_rows[int(row)]

    def _check_command_timeout(self) -> None:
        """Stop the arm when the commander has gone quiet for command_timeout_s (wall time)."""
        timeout = self.config.command_timeout_s
        if (timeout <= 0 or self._command_timed_out or self._last_command_wall is None
                or time.monotonic() - self._last_command_wall <= timeout):
            return
        self._command_timed_out = True
        self.command_timeouts += 1
        # motion zeroed, the gripper command kept: a stopped arm must not drop what it holds
        gripper = float(self.command[3])
        self._chunk_rows, self._chunk_dt_ns = np.array([[0.0, 0.0, 0.0, gripper]]), 0
        self.command = self._chunk_rows[0]
        self.sim.hold_position()
        logger = self.get_logger()    # own call site: rclpy ties throttle settings to the caller
        (getattr(logger, 'warning', None) or logger.warn)(
            f'no command on defi/action_command or servo_node/delta_twist_cmds for '
            f'{time.monotonic() - self._last_command_wall:.3f} s (command_timeout_s={timeout}): '
            'arm stopped, gripper held; the next command resumes')

    # ------------------------------------------------------------------ stepping
    def episode_over(self) -> bool:
        return self.paused or (self.sim.max_episode_steps > 0 and self.sim.steps >= self.sim.max_episode_steps)

    def _advance(self) -> None:
        """Lockstep: apply the held command for one observation period, then observe."""
        self._awaiting_command = False
        if self.episode_over():
            return
        for _ in range(self.config.steps_per_observation):
            self._update_command(self._now_ns())
            self.sim.step(self.command)
            self.total_steps += 1
            if self.episode_over():
                break
        self._publish_observation()

    def _lockstep_watchdog(self) -> None:
        if (self._awaiting_command and not self.episode_over()
                and time.monotonic() - self._awaiting_since > self.config.lockstep_timeout_s):
            self.lockstep_timeouts += 1
            self._check_command_timeout()
            self._warn(
                f'lockstep: no command stamped >= {self.obs_stamp_ns} ns within '
                f'{self.config.lockstep_timeout_s} s; stepping with the held command',
                throttle_duration_sec=5.0)
            self._advance()

    def _realtime_tick(self) -> None:
        if self.episode_over():
            self._rt_origin = None
            return
        now = time.monotonic()
        if self._rt_origin is None:
            self._rt_origin = (now, self.total_steps)
        start, steps0 = self._rt_origin
        if now - start > 2.0:
            factor = (self.total_steps - steps0) * self.sim.dt / (now - start)
            if factor < 0.9:
                self._warn(
                    f'running at {factor:.2f} x real time ({factor / self.sim.dt:.0f} of '
                    f'{1 / self.sim.dt:.0f} control steps/s): fewer or smaller cameras, or a larger '
                    f'steps_per_observation, would keep up', throttle_duration_sec=10.0)
            self._rt_origin = (now, self.total_steps)
        self._check_command_timeout()
        self._update_command(self._now_ns())
        self.sim.step(self.command)
        self.total_steps += 1
        self._steps_since_obs += 1
        if self._steps_since_obs >= self.config.steps_per_observation:
            self._steps_since_obs = 0
            self._publish_observation()

    # ------------------------------------------------------------------ publishing
    def _now_ns(self) -> int:
        if self.config.mode == 'lockstep':
            return self.total_steps * self.dt_ns
        return time.time_ns()

    def _count(self, topic: str) -> None:
        self.published_counts[topic] = self.published_counts.get(topic, 0) + 1

    def _publish_instruction(self) -> None:
        self.instruction_pub.publish(String(data=self.instruction()))
        self._count('instruction')

    def _transforms(self, transforms, stamp: Time) -> TFMessage:
        msg = TFMessage()
        for t in transforms:
            ts = TransformStamped()
            ts.header.stamp, ts.header.frame_id, ts.child_frame_id = stamp, t.parent, t.child
            tr, rot = ts.transform.translation, ts.transform.rotation
            tr.x, tr.y, tr.z = (float(v) for v in t.translation)
            rot.w, rot.x, rot.y, rot.z = (float(v) for v in t.rotation)
            msg.transforms.append(ts)
        return msg

    def _publish_description(self) -> None:
        """robot_description and /tf_static of the current MjModel (at start and after a task switch)."""
        if not self.config.publish_tf:
            return
        self.frames = SceneFrames(self.sim.model, self.sim.data, self.sim.cameras,
                                  world_frame=self.config.frame_id)
        urdf = self.frames.urdf()
        if urdf != self.robot_description:
            self.robot_description = urdf
            self.description_pub.publish(String(data=urdf))
            self._count('robot_description')
        # stamped with the node's clock (time 0 in lockstep before the first step): static
        # transforms hold at any time, tf2 ignores their stamps
        self.tf_static_pub.publish(self._transforms(self.frames.static_transforms(), _stamp(self._now_ns())))
        self._count('/tf_static')

    def _publish_observation(self) -> None:
        stamp_ns = self._now_ns()
        stamp = _stamp(stamp_ns)
        self.clock_pub.publish(ClockMsg(clock=stamp))
        frame_id = self.config.frame_id
        if self.frames is not None:
            # before the images: a subscriber that looks up an image's frame finds it at its stamp
            self.tf_pub.publish(self._transforms(self.frames.dynamic_transforms(self.sim.data), stamp))
            self._count('/tf')
        for name, frame in self.sim.render().items():
            msg = Image()
            msg.header.stamp, msg.header.frame_id = stamp, self.camera_frames[name]
            msg.height, msg.width = frame.shape[0], frame.shape[1]
            msg.encoding, msg.is_bigendian, msg.step = 'rgb8', 0, frame.shape[1] * 3
            msg.data = array.array('B', frame.tobytes())
            self.image_pubs[name].publish(msg)
            self._count(f'camera/{name}/image_raw')

        joints = JointState()
        joints.header.stamp = stamp
        joints.name = self.sim.joint_names
        joints.position = self.sim.joint_positions().tolist()
        joints.velocity = self.sim.joint_velocities().tolist()
        self.joint_pub.publish(joints)
        self._count('joint_states')

        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, frame_id
        p, q = self.sim.ee_position(), self.sim.ee_quaternion()
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = map(float, p)
        pose.pose.orientation.w, pose.pose.orientation.x = float(q[0]), float(q[1])
        pose.pose.orientation.y, pose.pose.orientation.z = float(q[2]), float(q[3])
        self.pose_pub.publish(pose)
        self._count('sim/ee_pose')

        state = TaskState()
        state.header.stamp, state.header.frame_id = stamp, frame_id
        state.task = self.sim.task
        state.names = self._obs_names
        state.values = [float(v) if math.isfinite(v) else 0.0 for v in self.sim.observation]
        self.state_pub.publish(state)
        self._count('sim/task_state')

        self.success_pub.publish(Bool(data=self.sim.success))
        self._count('sim/success')

        self.obs_stamp_ns = stamp_ns
        self.observations_published += 1
        if self.config.mode == 'lockstep':
            self._awaiting_command = True
            self._awaiting_since = time.monotonic()

    def destroy_node(self):
        if getattr(self, 'sim', None) is not None:    # None when __init__ failed (bad parameter)
            self.sim.close()
        super().destroy_node()


def main(args=None):
    spin_node(SimNode, args)


if __name__ == '__main__':
    main()
