"""defi_sim_node through real rclpy: image size and rate, commands move the arm, lockstep, reset, TF."""
import time
import xml.etree.ElementTree as ET

import mujoco
import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from defi_msgs.msg import ActionChunk, TaskState  # noqa: E402
from defi_sim.sim_node import SimNode  # noqa: E402

RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)


def ns(stamp):
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class Probe:
    """A test node that records what the sim publishes and sends it commands."""

    def __init__(self, context, cameras=('front',)):
        self.node = rclpy.create_node('sim_probe', context=context)
        self.images = {c: [] for c in cameras}
        self.image_times = {c: [] for c in cameras}
        for cam in cameras:
            # best effort, like a sensor-data subscriber on a robot: must work with the sim's QoS
            self.node.create_subscription(
                Image, f'camera/{cam}/image_raw',
                lambda m, cam=cam: (self.images[cam].append(m), self.image_times[cam].append(time.monotonic())),
                BEST_EFFORT)
        self.poses, self.joints, self.states, self.success, self.clock, self.instructions = [], [], [], [], [], []
        self.node.create_subscription(PoseStamped, 'sim/ee_pose', self.poses.append, RELIABLE)
        self.node.create_subscription(JointState, 'joint_states', self.joints.append, RELIABLE)
        self.node.create_subscription(TaskState, 'sim/task_state', self.states.append, RELIABLE)
        self.node.create_subscription(Bool, 'sim/success', self.success.append, RELIABLE)
        self.node.create_subscription(Clock, '/clock', self.clock.append, RELIABLE)
        self.node.create_subscription(String, 'instruction', self.instructions.append, LATCHED)
        self.chunk_pub = self.node.create_publisher(ActionChunk, 'defi/action_command', RELIABLE)
        self.twist_pub = self.node.create_publisher(TwistStamped, 'servo_node/delta_twist_cmds', RELIABLE)
        self.reset_client = self.node.create_client(Trigger, 'sim/reset')

    def send_chunk(self, action, stamp_ns):
        msg = ActionChunk()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        msg.horizon, msg.action_dim, msg.dt = 1, 4, 0.025
        msg.data = [float(a) for a in action]
        self.chunk_pub.publish(msg)


def make(ros_context, **params):
    sim = SimNode(context=ros_context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    probe = Probe(ros_context, cameras=[c.split('=')[0] for c in sim.config.cameras])
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(sim)
    executor.add_node(probe.node)
    return sim, probe, executor


def test_realtime_images_rate_and_commands(ros_context, spin):
    sim, probe, executor = make(ros_context, task='reach-v3', seed=1, mode='realtime',
                                image_width=64, image_height=48, steps_per_observation=4,
                                cameras=['front=corner', 'wrist=gripperPOV'])
    try:
        assert spin(executor, lambda: len(probe.images['front']) >= 3 and probe.instructions, 10.0)
        assert probe.instructions[-1].data == 'reach the goal position'
        # rate: one observation per 4 control steps of 12.5 ms = 20 Hz
        n0, t0 = len(probe.images['front']), time.monotonic()
        spin(executor, lambda: time.monotonic() - t0 > 2.0, 3.0)
        rate = (len(probe.images['front']) - n0) / (time.monotonic() - t0)
        assert 10.0 <= rate <= 24.0, f'{rate:.1f} Hz, expected ~20 Hz'
        for cam in ('front', 'wrist'):
            img = probe.images[cam][-1]
            assert (img.height, img.width, img.encoding, img.step) == (48, 64, 'rgb8', 64 * 3)
            assert len(img.data) == 48 * 64 * 3 and img.header.frame_id == f'{cam}_camera_optical_frame'
        assert probe.joints[-1].name[:2] == ['right_j0', 'right_j1']
        state = probe.states[-1]
        assert len(state.values) == 39 and state.names[-1] == 'goal_z' and probe.clock
        assert (state.task, state.header.frame_id) == ('reach-v3', 'world')

        # TwistStamped +y at 0.2 m/s moves the hand along +y (zero-order hold between commands)
        y0 = probe.poses[-1].pose.position.y
        twist = TwistStamped()
        twist.twist.linear.y = 0.2
        probe.twist_pub.publish(twist)
        t0 = time.monotonic()
        spin(executor, lambda: time.monotonic() - t0 > 0.8, 2.0)
        dy = probe.poses[-1].pose.position.y - y0
        assert dy > 0.03, dy
        # ActionChunk row 0 = [dx, dy, dz, gripper]: -z moves it down
        z0 = probe.poses[-1].pose.position.z
        probe.send_chunk([0.0, 0.0, -1.0, 0.0], time.time_ns())
        t0 = time.monotonic()
        spin(executor, lambda: time.monotonic() - t0 > 0.6, 2.0)
        assert probe.poses[-1].pose.position.z - z0 < -0.03
    finally:
        sim.destroy_node()


def test_lockstep_steps_only_on_commands_and_is_deterministic(ros_context, spin):
    sim, probe, executor = make(ros_context, task='push-v3', seed=4, mode='lockstep',
                                image_width=32, image_height=32, steps_per_observation=2,
                                lockstep_timeout_s=1.0)
    try:
        assert spin(executor, lambda: probe.reset_client.service_is_ready()
                    and sim.state_pub.get_subscription_count() >= 1
                    and probe.chunk_pub.get_subscription_count() >= 1, 10.0)

        def episode(seed, commands):
            """Reset to `seed` through the service, then answer each observation with a command."""
            sim.set_parameters([Parameter('seed', value=seed)])
            future = probe.reset_client.call_async(Trigger.Request())
            assert spin(executor, future.done, 10.0) and future.result().success
            assert future.result().message == f'push-v3 seed {seed}'
            probe.states.clear()
            probe.poses.clear()
            assert spin(executor, lambda: probe.states, 5.0)
            stamps = [ns(probe.states[0].header.stamp)]
            timeouts = sim.lockstep_timeouts
            for i, action in enumerate(commands):
                probe.send_chunk(action, stamps[-1])
                assert spin(executor, lambda i=i: len(probe.states) > i + 1, 5.0)
                stamps.append(ns(probe.states[-1].header.stamp))
            assert sim.lockstep_timeouts == timeouts  # every step came from a command
            spin(executor, lambda: False, 0.1)
            return np.array([[p.pose.position.x, p.pose.position.y, p.pose.position.z]
                             for p in probe.poses]), np.array(stamps)

        rng = np.random.default_rng(0)
        commands = rng.uniform(-1, 1, size=(15, 4))
        poses_a, stamps_a = episode(11, commands)
        # sim time advances exactly steps_per_observation * 12.5 ms per command
        np.testing.assert_array_equal(np.diff(stamps_a), 25_000_000)
        poses_b, stamps_b = episode(11, commands)
        np.testing.assert_allclose(poses_a, poses_b, atol=1e-9)
        assert stamps_b[0] > stamps_a[-1]  # the sim clock never goes back across resets

        # an episode's first observation comes a whole observation period after the last one, as
        # from a camera (the forward predictor drops frames closer than 0.75 periods) ...
        last_ns = sim.obs_stamp_ns
        future = probe.reset_client.call_async(Trigger.Request())
        assert spin(executor, future.done, 10.0) and future.result().success
        assert sim.obs_stamp_ns - last_ns == 25_000_000
        # ... and a late chunk answering the previous episode is no command for this one
        before = sim.commands_before_episode
        probe.send_chunk([1, 1, 1, 1], stamps_b[-1])
        assert spin(executor, lambda: sim.commands_before_episode > before, 3.0)
        assert not np.any(sim.command)

        # a command stamped before the current observation does not step the sim ...
        n, timeouts = len(probe.states), sim.lockstep_timeouts
        probe.send_chunk([0, 0, 0, 0], ns(probe.states[-1].header.stamp) - 1)
        spin(executor, lambda: len(probe.states) > n, 0.3)
        assert len(probe.states) == n
        # ... but the watchdog steps with the held command after lockstep_timeout_s
        assert spin(executor, lambda: len(probe.states) > n, 3.0)
        assert sim.lockstep_timeouts == timeouts + 1

        # Trigger without new parameters: the next seed; a task parameter switches the task
        sim.set_parameters([Parameter('task', value='reach')])
        future = probe.reset_client.call_async(Trigger.Request())
        assert spin(executor, future.done, 10.0)
        assert future.result().message == 'reach-v3 seed 13'
        assert spin(executor, lambda: probe.instructions
                    and probe.instructions[-1].data == 'reach the goal position', 5.0)
        result = sim.set_parameters([Parameter('task', value='fly-away')])[0]
        assert not result.successful and 'unknown Meta-World' in result.reason
    finally:
        sim.destroy_node()


def test_bad_commands_are_rejected_and_chunks_play_in_time(ros_context, spin):
    sim, probe, executor = make(ros_context, task='reach-v3', mode='realtime', image_width=16,
                                image_height=16, steps_per_observation=4)
    try:
        assert spin(executor, lambda: probe.chunk_pub.get_subscription_count() >= 1, 10.0)
        msg = ActionChunk()
        msg.horizon, msg.action_dim, msg.data = 1, 3, [1.0, 1.0, 1.0]
        probe.chunk_pub.publish(msg)
        probe.send_chunk([float('nan'), 0, 0, 0], 0)
        spin(executor, lambda: False, 0.3)
        np.testing.assert_array_equal(sim.command, np.zeros(4))
        probe.send_chunk([2.0, -0.5, 0, 1], 0)
        assert spin(executor, lambda: sim.command[0] == 1.0, 2.0)  # clipped to [-1, 1]

        # a chunk plays its rows in time: row i is due at stamp + i * dt
        assert spin(executor, lambda: probe.poses, 5.0)
        chunk = ActionChunk(horizon=2, action_dim=4, dt=0.4, data=[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0])
        chunk.header.stamp.sec, chunk.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
        z0 = probe.poses[-1].pose.position.z
        probe.chunk_pub.publish(chunk)
        t0 = time.monotonic()
        spin(executor, lambda: time.monotonic() - t0 > 0.3, 1.0)
        z_up = probe.poses[-1].pose.position.z
        assert z_up - z0 > 0.02 and sim.command[2] == 1.0
        spin(executor, lambda: time.monotonic() - t0 > 0.8, 1.0)
        assert sim.command[2] == -1.0 and probe.poses[-1].pose.position.z < z_up - 0.02
    finally:
        sim.destroy_node()


def test_command_watchdog_stops_the_arm_when_the_commander_goes_quiet(ros_context, spin):
    """A commander that dies (no more commands) must not leave the arm running its last command."""
    sim, probe, executor = make(ros_context, task='reach-v3', mode='realtime', image_width=16,
                                image_height=16, steps_per_observation=4, command_timeout_s=0.3)
    try:
        assert spin(executor, lambda: probe.chunk_pub.get_subscription_count() >= 1 and probe.poses, 10.0)
        y0 = probe.poses[-1].pose.position.y
        t_last = None
        for _ in range(5):                       # a commander sending +y at 10 Hz ...
            probe.send_chunk([0.0, 0.5, 0.0, 0.7], time.time_ns())
            t_last = time.monotonic()
            spin(executor, lambda: False, 0.1)
        assert probe.poses[-1].pose.position.y - y0 > 0.01       # it moved
        # ... then dies: within command_timeout_s (+ one 12.5 ms step) the arm holds still
        assert spin(executor, lambda: not np.any(sim.command[:3]), 2.0), 'no watchdog stop'
        print(f'last command -> watchdog stop: {(time.monotonic() - t_last) * 1e3:.0f} ms '
              f'(command_timeout_s=0.3)')
        assert time.monotonic() - t_last >= 0.3
        assert sim.command[3] == pytest.approx(0.7)              # the gripper command is held
        # the hand holds where it was stopped (zero actions alone would let it catch up with its
        # mocap target, several cm further along the old command)
        y_stop, steps, n = sim.sim.ee_position()[1], sim.total_steps, len(probe.poses)
        assert spin(executor, lambda: sim.total_steps >= steps + 120, 5.0)
        ys = [p.pose.position.y for p in probe.poses[n:]]
        assert max(ys) - y_stop < 0.005, 'the arm kept moving along the last command'
        assert abs(sim.sim.ee_position()[1] - y_stop) < 0.01
        assert sim.command_timeouts == 1
        # a new command resumes
        probe.send_chunk([0.0, -0.5, 0.0, 0.0], time.time_ns())
        assert spin(executor, lambda: sim.command[1] == -0.5, 2.0)
    finally:
        sim.destroy_node()


# what tf2_ros's TransformListener subscribes with (rclpy tf2_ros/transform_listener.py)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


def world_poses(transforms):
    """{frame: (position, 3x3 rotation)} in the root frame, composed from TransformStamped lists."""
    by_child = {t.child_frame_id: t for t in transforms}
    poses = {}

    def pose(frame):
        if frame not in by_child:                      # the root
            return np.zeros(3), np.eye(3)
        if frame not in poses:
            t = by_child[frame]
            p_pos, p_rot = pose(t.header.frame_id)
            q = t.transform.rotation
            rot = np.zeros(9)
            mujoco.mju_quat2Mat(rot, np.array([q.w, q.x, q.y, q.z]))
            tr = t.transform.translation
            poses[frame] = (p_pos + p_rot @ [tr.x, tr.y, tr.z], p_rot @ rot.reshape(3, 3))
        return poses[frame]
    for child in by_child:
        pose(child)
    return poses


def test_tf_frames_and_robot_description_are_published(ros_context, spin):
    """The sim publishes its URDF (latched), world -> base_link -> ... -> hand and the camera frames
    on /tf_static + /tf the way tf2_ros does; images name their camera frame; the composed hand
    frame is where sim/ee_pose says the hand is, also after the arm moved."""
    sim, probe, executor = make(ros_context, task='reach-v3', seed=2, mode='lockstep',
                                image_width=16, image_height=16, steps_per_observation=2,
                                cameras=['front=corner', 'wrist=gripperPOV'])
    try:
        # a listener that joins after the sim started still gets the static frames and the URDF
        assert spin(executor, lambda: probe.states, 10.0)
        listener = rclpy.create_node('tf_listener', context=ros_context)
        static, dynamic, descriptions = [], [], []
        listener.create_subscription(TFMessage, '/tf_static', static.append, TF_STATIC_QOS)
        listener.create_subscription(TFMessage, '/tf', dynamic.append, TF_QOS)
        listener.create_subscription(String, 'robot_description', descriptions.append, LATCHED)
        executor.add_node(listener)
        assert spin(executor, lambda: static and descriptions
                    and probe.chunk_pub.get_subscription_count() >= 1, 10.0), 'no latched TF / URDF'
        for topic in ('/tf_static', '/robot_description'):
            (info,) = listener.get_publishers_info_by_topic(topic)
            assert info.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL, topic

        urdf = ET.fromstring(descriptions[-1].data)
        links = {e.get('name') for e in urdf.findall('link')}
        movable = {e.get('name') for e in urdf.findall('joint') if e.get('type') != 'fixed'}
        assert {'base_link', 'right_l0', 'right_l6', 'hand'} <= links
        assert set(sim.sim.joint_names) <= movable          # joint_states drives the same joints

        static_tf = static[-1].transforms
        assert ('world', 'base_link') in {(t.header.frame_id, t.child_frame_id) for t in static_tf}

        def step(action):
            """One lockstep observation answered with `action`; returns its /tf, pose and images."""
            n_tf, n_pose = len(dynamic), len(probe.poses)
            probe.send_chunk(action, ns(probe.states[-1].header.stamp))
            assert spin(executor, lambda: len(probe.poses) > n_pose and len(dynamic) > n_tf
                        and dynamic[-1].transforms[0].header.stamp == probe.poses[-1].header.stamp, 5.0)
            return dynamic[-1], probe.poses[-1]

        first = None
        for _ in range(25):
            tf, pose = step([0.0, 1.0, 0.5, 0.0])     # +y, +z: every arm joint moves
            first = first or (tf, pose)
            frames = world_poses(list(static_tf) + list(tf.transforms))
            # /tf comes before the images of the same observation, stamped like them
            for cam in ('front', 'wrist'):
                assert probe.images[cam][-1].header.frame_id in frames
            p = pose.pose.position
            np.testing.assert_allclose(frames['hand'][0], [p.x, p.y, p.z], atol=1e-6)
            assert {t.header.stamp.sec * 10 ** 9 + t.header.stamp.nanosec for t in tf.transforms} == {
                ns(pose.header.stamp)}
        # the arm moved, and the TF tree moved with it
        moved = np.linalg.norm(world_poses(list(static_tf) + list(first[0].transforms))['hand'][0]
                               - frames['hand'][0])
        assert moved > 0.02, moved
        # every frame hangs from world through one tree: the links of the URDF and both cameras
        assert links | {'front_camera_optical_frame', 'wrist_camera_optical_frame'} <= set(frames)
        # the wrist camera (gripperPOV tracks the hand) moves, the corner camera does not
        cam = sim.sim.model.camera('gripperPOV').id
        np.testing.assert_allclose(frames['wrist_camera_optical_frame'][0], sim.sim.data.cam_xpos[cam],
                                   atol=1e-9)
        assert 'wrist_camera_optical_frame' in {t.child_frame_id for t in tf.transforms}
        assert 'front_camera_optical_frame' in {t.child_frame_id for t in static_tf}
        # optical convention: z forward = MuJoCo's -z camera axis
        corner = sim.sim.model.camera('corner').id
        np.testing.assert_allclose(frames['front_camera_optical_frame'][1][:, 2],
                                   -sim.sim.data.cam_xmat[corner].reshape(3, 3)[:, 2], atol=1e-9)
        executor.remove_node(listener)
        listener.destroy_node()
    finally:
        sim.destroy_node()


def test_publish_tf_off_publishes_no_tf(ros_context, spin):
    sim, probe, executor = make(ros_context, task='reach-v3', mode='lockstep', image_width=16,
                                image_height=16, publish_tf=False)
    try:
        assert spin(executor, lambda: probe.states, 10.0)
        assert sim.count_publishers('/tf') == sim.count_publishers('/tf_static') == 0
        assert sim.count_publishers('robot_description') == 0
        assert probe.images['front'][-1].header.frame_id == 'front_camera_optical_frame'
    finally:
        sim.destroy_node()
