"""Chunk executor node: ActionChunk -> robot commands at the control rate, with the stop rules.

output_mode:
- 'twist': geometry_msgs/TwistStamped on servo_node/delta_twist_cmds (MoveIt Servo);
- 'joint_trajectory': trajectory_msgs/JointTrajectory (one point per step) on
  <controller>/joint_trajectory (ros2_control); stop = an empty trajectory (hold position);
- 'passthrough': each due step as a horizon-1 defi_msgs/ActionChunk on defi/action_command (the
  simulator); stop = a zero action.
- 'chunk': each accepted chunk once, clipped, with its own observation stamp and dt, on
  defi/action_command, as soon as it arrives; the receiver (the simulator) plays its rows by due
  time; stop = a zero action. A lockstep sim waits for a command stamped at or after the
  observation it published, so only the chunk computed from that observation advances it (a
  passthrough row of the previous chunk is stamped with its due time and would advance it a step
  early: the policy then always acts one observation late).
Timing and stop logic live in defi_core.runtime (ChunkSchedule, SafetyLatch). The observation age
is the age of the newest chunk's stamp (= its camera stamp): if the camera stops, no newer chunk
comes and the executor stops within max_age_s + one control period. A chunk stamped more than
max_future_s ahead of the node's clock is refused (it would not be due for that long and would
make every later chunk look older); a clock that jumps back resets the schedule and commands a
stop until a fresh chunk arrives. A chunk the output cannot take (action_dim, action_names,
joint_names, twist_axes) is refused on arrival. dry_run computes everything and publishes nothing
to the robot. No inference here: the timer never waits for the model.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import List

from builtin_interfaces.msg import Duration
from geometry_msgs.msg import TwistStamped
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from defi_core.runtime.chunk_schedule import Chunk, ChunkSchedule, parse_limits
from defi_core.runtime.outputs import joint_positions, resolve_twist_axes, twist_components, zero_action
from defi_core.runtime.safety import SafetyLatch, StopReason, all_finite
from defi_core.runtime.timing import BackJumpDetector
from defi_msgs.msg import ActionChunk, PolicyStatus
from defi_ros import qos
from defi_ros.bootstrap import run_node
from defi_ros.conversions import chunk_from_msg, chunk_to_msg
from defi_ros.lifecycle import DefiNode
from defi_ros.params import CommonParams, param

OUTPUT_MODES = ('twist', 'joint_trajectory', 'passthrough', 'chunk')


@dataclass
class ChunkExecutorParams(CommonParams):
    chunk_topic: str = param('defi/action_chunk', 'ActionChunk in')
    output_mode: str = param('passthrough', 'twist (MoveIt Servo) | joint_trajectory (ros2_control) | '
                             'passthrough (ActionChunk, horizon 1, on command_topic) | chunk (each '
                             'whole chunk on command_topic, for a receiver that times the rows)')
    twist_topic: str = param('servo_node/delta_twist_cmds', 'TwistStamped out (output_mode twist)')
    trajectory_topic: str = param('joint_trajectory_controller/joint_trajectory',
                                  'JointTrajectory out (output_mode joint_trajectory)')
    command_topic: str = param('defi/action_command', 'ActionChunk out (output_mode passthrough, chunk)')
    enable_topic: str = param('defi/enable', 'std_msgs/Bool: false stops and holds, true resumes')
    instruction_topic: str = param('instruction', 'std_msgs/String: the current instruction; on enable, the '
                                   'newest chunk computed for it while disabled runs at once (if fresh)')
    twist_frame_id: str = param('base_link', 'header.frame_id of the twists')
    twist_axes: List[str] = param(['x', 'y', 'z', 'roll', 'pitch', 'yaw'],
                                  "action component (name or index; '' = zero) for linear x, y, z and "
                                  "angular x, y, z")
    linear_scale: float = param(1.0, 'twist linear = action * linear_scale (m/s per unit)')
    angular_scale: float = param(1.0, 'twist angular = action * angular_scale (rad/s per unit)')
    joint_names: List[str] = param([], "joints of the trajectory (joint_trajectory); [] = the chunk's names")
    action_dim: int = param(0, 'what the robot side takes: chunks of another dimension are refused; 0 = any',
                            min=0, max=10000)
    action_names: List[str] = param([], 'chunks with other action names are refused; [] = any')
    action_min: List[float] = param([], 'lower clip, one value or one per action; [] = none')
    action_max: List[float] = param([], 'upper clip, one value or one per action; [] = none')
    control_rate_hz: float = param(10.0, 'commands per second (Hz)', min=0.01, max=10000.0)
    max_age_s: float = param(1.0, 'chunks of an observation older than this are not executed; without '
                             'fresh chunks the robot stops after this long (s, > 0)', min=0.0, max=3600.0)
    dry_run: bool = param(False, 'compute everything, command nothing')
    stop_when_exhausted: bool = param(True, 'command a stop when the chunk runs out')
    start_enabled: bool = param(True, 'execute chunks from the start (false: wait for enable_topic or a goal)')


class ChunkExecutorNode(DefiNode):
    params_cls = ChunkExecutorParams
    status_row = 3
    needs_policy = False

    def __init__(self, node_name: str = 'chunk_executor', **kwargs):
        super().__init__(node_name, **kwargs)
        self._lock = threading.RLock()
        self.schedule = ChunkSchedule()
        self.latch = SafetyLatch(max(self.params.max_age_s, 1e-3), abs(self.params.max_future_s))
        self._jumps = BackJumpDetector(max(abs(self.params.max_future_s), 1e-3))
        self.enabled = bool(self.params.start_enabled)
        self.commands_published = 0
        self.chunks_received = 0
        self.last_latency_ms = 0.0
        self._limits_dim: int | None = None
        self._last_dim = 0
        self._last_names: tuple = ()
        self._twist_axes = None
        self._forwarded: Chunk | None = None      # output_mode chunk: the chunk last sent whole
        # the newest valid chunk received while disabled, and the instruction last heard: a goal's
        # first observation was usually answered before the goal enabled this node
        self._held: Chunk | None = None
        self._instruction: str | None = None

    def setup(self) -> None:
        p = self.params
        if p.output_mode not in OUTPUT_MODES:
            raise ValueError(f"parameter 'output_mode': {p.output_mode!r} is not one of {OUTPUT_MODES}")
        if not p.control_rate_hz > 0:
            raise ValueError(f"parameter 'control_rate_hz': must be > 0, got {p.control_rate_hz}")
        if not p.max_age_s > 0:
            raise ValueError(f"parameter 'max_age_s': must be > 0, got {p.max_age_s}")
        if p.action_names and p.action_dim and len(p.action_names) != p.action_dim:
            raise ValueError(f"parameter 'action_names': {len(p.action_names)} names for "
                             f'action_dim {p.action_dim}')
        # a lifecycle publisher: commands only while active (the stop on deactivate goes out first)
        if p.output_mode == 'twist':
            self.cmd_pub = self.create_lifecycle_publisher(TwistStamped, p.twist_topic, qos.RELIABLE)
        elif p.output_mode == 'joint_trajectory':
            self.cmd_pub = self.create_lifecycle_publisher(JointTrajectory, p.trajectory_topic, qos.RELIABLE)
        else:
            self.cmd_pub = self.create_lifecycle_publisher(ActionChunk, p.command_topic, qos.RELIABLE)
        self.create_subscription(ActionChunk, p.chunk_topic, self.on_chunk, qos.RELIABLE,
                                 callback_group=self.callbacks)
        self.create_subscription(Bool, p.enable_topic, self.on_enable, qos.ENABLE,
                                 callback_group=self.callbacks)
        self.create_subscription(String, p.instruction_topic, self.on_instruction, qos.INSTRUCTION,
                                 callback_group=self.callbacks)
        self.create_timer(1.0 / p.control_rate_hz, self.tick, callback_group=self.timer_group)

    def warm_up(self) -> None:
        # parameters are re-read at every configure: refresh what was derived from them
        self.latch.max_age_s = self.params.max_age_s
        self.latch.max_future_s = self.params.max_future_s
        self._jumps = BackJumpDetector(max(self.params.max_future_s, 1e-3))
        self.period_ns = int(1e9 / self.params.control_rate_hz)
        self._limits_dim = None

    def on_deactivate(self, state):
        self.stop(StopReason.DISABLED, force=True)
        return super().on_deactivate(state)

    def teardown(self) -> None:
        # shutdown or destroy while active: command a stop (after a deactivate it went out already)
        if self._configured and self._state in (PolicyStatus.STATE_RUNNING, PolicyStatus.STATE_STOPPED):
            self.stop(StopReason.SHUTDOWN, force=True)

    def fill_status(self, msg: PolicyStatus) -> None:
        with self._lock:
            msg.queue_depth = self.schedule.queue_depth()
            msg.stale_steps_dropped = self.schedule.stale_steps_dropped
            msg.stops_commanded = self.latch.stops_commanded
            msg.chunk_ms = self.last_latency_ms
            if self._state == PolicyStatus.STATE_RUNNING and not self.latch.running and \
                    self.latch.reason is not None:
                msg.state = PolicyStatus.STATE_STOPPED

    def on_time_jump(self) -> None:
        # every stamp held refers to the old time line: forget it and stop until a fresh chunk
        if not self._configured:
            return
        with self._lock:
            self.schedule.reset()
            self.latch.reset()
            self._jumps.reset()
            self._held = None
            if self.active:
                self.stop(StopReason.CLOCK_JUMP, force=True)

    # ---- inputs -------------------------------------------------------------------------------
    def on_enable(self, msg: Bool) -> None:
        with self._lock:
            was_enabled, self.enabled = self.enabled, bool(msg.data)
            if not self.enabled:
                # what was heard belongs to the goal that ended: the next one must say its own
                self._held, self._instruction = None, None
                self.stop(StopReason.CANCELED, force=True)
            elif not was_enabled:
                self._start_from_held()

    def on_instruction(self, msg: String) -> None:
        with self._lock:
            self._instruction = msg.data.strip()
            if self.enabled:
                self._start_from_held()

    def _start_from_held(self) -> None:
        """Run the newest chunk received while disabled, once enabled, if it was computed for the
        instruction heard since (a goal's first observation is usually answered before the goal
        enables this node: a lockstep sim would step it with a stale command, a robot would wait a
        camera period) and is still fresh; else wait for the next chunk, as always."""
        held = self._held
        if held is None or self._instruction is None or held.instruction != self._instruction:
            return
        self._held = None
        now = self.now_ns()
        if (not self.active or self.schedule.chunk is not None or self.latch.is_stale(now, held.stamp_ns)
                or held.stamp_ns - now > self.params.max_future_s * 1e9):
            return
        if self.schedule.offer(held):
            self._took(held, now)

    def on_chunk(self, msg: ActionChunk) -> None:
        if not self.active:
            return
        topic = self.params.chunk_topic
        try:
            chunk = chunk_from_msg(msg)
            self._check_output(chunk)
            self._check_limits(chunk.action_dim)
        except ValueError as exc:
            self.report_error('malformed_inputs', f'{topic}: {exc}')
            return
        now = self.now_ns()
        if not self.check_stamp(topic, chunk.stamp_ns, now):
            with self._lock:
                if self.enabled and self.schedule.chunk is None:
                    self.stop(StopReason.FUTURE_STAMP)    # nothing valid to run
            return
        with self._lock:
            if not self.enabled:
                if all_finite(chunk.actions) and not self.latch.is_stale(now, chunk.stamp_ns):
                    self._held = chunk
                return
            if not all_finite(chunk.actions):
                self.report_error('non_finite_outputs', f'{topic}: chunk has non-finite values; stop')
                self._last_dim, self._last_names = chunk.action_dim, chunk.names
                self.stop(StopReason.NON_FINITE, force=True)
                return
            if self.latch.is_stale(now, chunk.stamp_ns):
                self.report_error('stale_observations', f'{topic}: chunk observation is '
                                  f'{(now - chunk.stamp_ns) * 1e-9:.3f} s old '
                                  f'(max_age_s={self.params.max_age_s}); ignored')
                return
            accepted = self.schedule.offer(chunk)
            if not accepted and self.schedule.last_stamp_ns - now > self.params.max_future_s * 1e9:
                # the last accepted stamp lies in the future: the clock went back unnoticed
                self.handle_time_jump(f'{topic}: the last accepted chunk is stamped '
                                      f'{(self.schedule.last_stamp_ns - now) * 1e-9:.3f} s ahead '
                                      'of the clock (it went back)')
                accepted = self.schedule.offer(chunk)
            if accepted:
                self._took(chunk, now)

    def _took(self, chunk: Chunk, now: int) -> None:
        """Bookkeeping for a chunk the schedule accepted; output_mode chunk forwards it now."""
        self._held = None
        self.chunks_received += 1
        self.last_latency_ms = (now - chunk.stamp_ns) * 1e-6
        self._last_dim, self._last_names = chunk.action_dim, chunk.names
        if self.params.output_mode == 'chunk':
            self._run_step(now)      # forwarded now: the receiver may be waiting for it

    def _check_output(self, chunk) -> None:
        """Refuse a chunk the configured output cannot take (ValueError naming field and parameter)."""
        p = self.params
        dim = p.action_dim or len(p.action_names)
        if dim and chunk.action_dim != dim:
            raise ValueError(f'action_dim: {chunk.action_dim}, the output takes {dim} (parameter '
                             f"{'action_dim' if p.action_dim else 'action_names'}); refused")
        if p.action_names and list(chunk.names) != list(p.action_names):
            raise ValueError(f'names: {list(chunk.names)}, the output takes {list(p.action_names)} '
                             '(parameter action_names); refused')
        if p.output_mode == 'joint_trajectory':
            joint_positions(chunk.actions[0], chunk.names, p.joint_names)   # names every joint
        elif p.output_mode == 'twist':
            resolve_twist_axes(chunk.names, p.twist_axes, chunk.action_dim)

    def _check_limits(self, action_dim: int) -> None:
        if self._limits_dim == action_dim:
            return
        p = self.params
        low = parse_limits(p.action_min, action_dim, 'action_min')
        high = parse_limits(p.action_max, action_dim, 'action_max')
        with self._lock:
            self.schedule.low, self.schedule.high = low, high
            self._limits_dim = action_dim

    # ---- control loop -------------------------------------------------------------------------
    def tick(self) -> None:
        if not self.active:
            return
        now = self.now_ns()
        back = self._jumps.update(now)
        if back is not None:     # a wall clock set back: rcl's jump callbacks see only /clock
            self.handle_time_jump(f'the clock jumped back {-back * 1e-9:.3f} s')
        self._run_step(now)

    def _run_step(self, now: int) -> None:
        """The stop rules, then the command of the step due at `now` (if any)."""
        with self._lock:
            chunk = self.schedule.chunk
            if not self.enabled or chunk is None:
                return
            reason = self.latch.check(now, chunk.stamp_ns)
            if reason == StopReason.STALE_OBSERVATION:
                self.report_error('stale_observations', f'{self.params.chunk_topic}: newest observation '
                                  f'is {(now - chunk.stamp_ns) * 1e-9:.3f} s old '
                                  f'(max_age_s={self.params.max_age_s}); stop')
                self.stop(StopReason.STALE_OBSERVATION)
                return
            if reason == StopReason.FUTURE_STAMP:
                # arrivals are checked, so the clock went back: nothing valid to run
                self.report_error('future_stamps', f'{self.params.chunk_topic}: running chunk is '
                                  f'stamped {(chunk.stamp_ns - now) * 1e-9:.3f} s ahead of the clock '
                                  f'(max_future_s={self.params.max_future_s}); stop')
                self.schedule.reset()
                self.stop(StopReason.FUTURE_STAMP)
                return
            step = self.schedule.step(now, lead_ns=self.period_ns // 2)
            if step is None:
                if self.schedule.exhausted() and self.params.stop_when_exhausted:
                    self.stop(StopReason.CHUNK_EXHAUSTED)
                elif self.schedule.next_index == 0 and self.latch.running:
                    # a newer chunk replaced the running one but is stamped ahead of this clock:
                    # nothing is valid to run until its first step is due, so stop and keep it
                    self.stop(StopReason.NOT_DUE, keep_chunk=True)
                return
            if not all_finite(step.action):
                self.report_error('non_finite_outputs', 'action step is not finite; stop')
                self.stop(StopReason.NON_FINITE, force=True)
                return
            if self.params.output_mode == 'chunk':
                resumed = not self.latch.running
                self.latch.run()
                if chunk is not self._forwarded or resumed:     # once per chunk, again after a stop
                    self._forwarded = chunk
                    self._publish(chunk_to_msg(self.schedule.clip(chunk.actions)[0], chunk.stamp_ns,
                                               chunk.dt_s, chunk.names))
                return
            try:
                command = self._command(step.action, chunk.names, chunk.dt_s, step.due_ns)
            except ValueError as exc:
                self.report_error('malformed_inputs', f'{self.params.chunk_topic}: {exc}')
                self.stop(StopReason.MALFORMED)
                return
            self.latch.run()
            self._publish(command)

    def stop(self, reason: StopReason, force: bool = False, keep_chunk: bool = False) -> None:
        """Command a stop (once per transition) and drop the current chunk (unless keep_chunk)."""
        with self._lock:
            if not keep_chunk:
                self.schedule.clear()
            if not self.latch.stop(reason, force=force):
                return
            self.get_logger().info(f'stop commanded: {reason.value}')
            command = self._stop_command()
            if command is not None:
                self._publish(command)

    def _publish(self, command) -> None:
        if self.params.dry_run:
            return
        try:
            self.cmd_pub.publish(command)
            self.commands_published += 1
        except Exception as exc:  # noqa: BLE001 - e.g. publishing after the context shut down
            self.get_logger().warning(f'command not published: {exc}')

    # ---- message building ---------------------------------------------------------------------
    def _twist(self, values) -> TwistStamped:
        msg = TwistStamped()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.params.twist_frame_id
        (msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z,
         msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z) = [float(v) for v in values]
        return msg

    def _command(self, action, names, dt_s, due_ns):
        p = self.params
        if p.output_mode == 'twist':
            if self._twist_axes is None or self._twist_axes[0] != tuple(names):
                self._twist_axes = (tuple(names), resolve_twist_axes(names, p.twist_axes, len(action)))
            return self._twist(twist_components(action, self._twist_axes[1], p.linear_scale,
                                                p.angular_scale))
        if p.output_mode == 'joint_trajectory':
            msg = JointTrajectory()
            msg.joint_names = list(p.joint_names or names)
            point = JointTrajectoryPoint()
            point.positions = joint_positions(action, names, p.joint_names)
            period = 1.0 / p.control_rate_hz
            point.time_from_start = Duration(sec=int(period), nanosec=int((period % 1) * 1e9))
            msg.points = [point]
            return msg
        return chunk_to_msg(action[None], due_ns, dt_s, names)

    def _stop_command(self):
        p = self.params
        if p.output_mode == 'twist':
            return self._twist([0.0] * 6)
        if p.output_mode == 'joint_trajectory':
            msg = JointTrajectory()      # no points: the controller holds its position
            msg.joint_names = list(p.joint_names or self._last_names)
            return msg
        if self._last_dim == 0:
            return None                  # nothing was ever commanded: nothing to stop
        names = self._last_names or tuple(f'a{i}' for i in range(self._last_dim))
        return chunk_to_msg(zero_action(self._last_dim)[None], self.now_ns(),
                            1.0 / p.control_rate_hz, names)


def main(args=None) -> None:
    run_node(ChunkExecutorNode, args)


if __name__ == '__main__':
    main()
