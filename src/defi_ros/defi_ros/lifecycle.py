"""The lifecycle base of every DeFI node (`DefiNode`, an rclpy lifecycle node; rclpy.lifecycle exists
from Humble on): configure = read the parameters, load the checkpoint (or take the policy object
shared by defi_bringup), create the node's entities and warm up; activate = start processing;
cleanup = destroy what configure made. Status and diagnostics publishers are plain (not
lifecycle-managed), so a node whose configure failed (e.g. a checkpoint that does not exist) still
reports why. Beside it in defi_ros: params (CommonParams), model (ModelParams, checkpoint loading,
model_call), status (diagnostics, marker), qos, conversions and bootstrap (run_node).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import ClockChange, JumpThreshold
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle.publisher import LifecyclePublisher
from rclpy.publisher import Publisher
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from visualization_msgs.msg import Marker

from defi_core.runtime.status import StatusCounters
from defi_core.runtime.timing import clock_mismatch, future_s, is_wall_clock
from defi_msgs.msg import PolicyStatus

from . import qos
from .model import ModelParams, load_checkpoint_policy
from .params import declare_params, read_params
from .status import diagnostics, status_marker

if TYPE_CHECKING:   # annotations only: importing a node must not load torch and the model code
    from defi_core.policy import DefiPolicy
    from defi_core.runtime.worker import LatestWorker

__all__ = ['DefiNode']


class DefiNode(LifecycleNode):
    """Base of the DeFI lifecycle nodes. Subclasses implement setup() and warm_up().

    configure = read the parameters, load the model, setup() (publishers, subscriptions, timers,
    workers, made from the parameters just read), warm up; cleanup = teardown() and destroy what
    setup() made, so cleanup -> new parameters -> configure applies them. Data outputs are lifecycle
    publishers (create_lifecycle_publisher): they publish only while the node is active. The status
    topics exist from construction on, so a node that failed to configure still says why."""
    params_cls: Any = ModelParams
    needs_policy = True
    status_row = 0          # line of this node in the RViz status text
    worker: LatestWorker | None = None     # a model node's inference worker, made in setup()

    def __init__(self, node_name: str, *, policy=None, **kwargs):
        # a node whose __init__ failed (a bad parameter) is still destroyed by rclpy: nothing to
        # tear down until __init__ has finished
        self._torn_down = True
        super().__init__(node_name, **kwargs)
        self.params = declare_params(self, self.params_cls)
        self.counters = StatusCounters()
        self.policy: DefiPolicy | None = None      # set by configure (needs_policy), None after cleanup
        self.active = False
        self._shared_policy: DefiPolicy | None = policy
        self._configured = False
        self._setup_entities: list = []     # what setup() created, destroyed on cleanup
        self._state = PolicyStatus.STATE_UNCONFIGURED
        self._log_times: dict = {}
        self.callbacks = ReentrantCallbackGroup()       # message callbacks: short, never inference
        self.timer_group = MutuallyExclusiveCallbackGroup()
        self._status_pub = self.create_publisher(PolicyStatus, self.params.status_topic,
                                                 qos.BEST_EFFORT)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._marker_pub = (self.create_publisher(Marker, 'defi/status_marker', qos.BEST_EFFORT)
                            if self.params.status_marker_frame else None)
        period = 1.0 / max(self.params.status_rate_hz, 0.01)
        self._status_timer = self.create_timer(period, self.publish_status,
                                               callback_group=MutuallyExclusiveCallbackGroup())
        self._clock_warned: set = set()
        # rcl calls this when /clock (sim time) jumps back or sim time is switched on/off
        back = Duration(nanoseconds=-max(int(abs(self.params.max_future_s) * 1e9), 1_000_000))
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=back, on_clock_change=True),
            post_callback=self._on_clock_jump)
        self._torn_down = False

    # ---- hooks --------------------------------------------------------------------------------
    def setup(self) -> None:
        """Create publishers/subscriptions/timers/workers from self.params (at every configure;
        cleanup destroys them)."""

    def warm_up(self) -> None:
        """Run the model stage once so the first real message is not slow."""

    def teardown(self) -> None:
        """Stop workers; called on cleanup, shutdown and destroy. By default: closes self.worker."""
        if self.worker is not None:
            self.worker.close()

    def on_time_jump(self) -> None:
        """The clock went back (or switched between sim and wall time): drop what was buffered
        under the old time line. Called on the thread that noticed the jump."""

    def fill_status(self, msg: PolicyStatus) -> None:
        """Add node-specific fields to the status message. By default: self.worker's dropped
        items and whether it is busy."""
        if self.worker is not None:
            msg.dropped_frames = self.worker.dropped
            msg.queue_depth = int(self.worker.busy)

    # ---- lifecycle ----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.params = read_params(self, self.params_cls)
            if not self.params.max_future_s >= 0:
                raise ValueError(f"parameter 'max_future_s': must be >= 0, got {self.params.max_future_s}")
        except ValueError as exc:
            self.report_error('other', f'configure failed: {exc}')
            self._state = PolicyStatus.STATE_ERROR
            return TransitionCallbackReturn.FAILURE
        if self.needs_policy:
            try:
                self.policy = self._shared_policy
                if self.policy is None:
                    self.policy = load_checkpoint_policy(
                        self.params.checkpoint, self.params.device, self.params.torch_threads)
            except Exception as exc:  # noqa: BLE001 - a bad checkpoint must not kill the node
                self.report_error('other', f'configure failed: {exc}')
                self._state = PolicyStatus.STATE_ERROR
                return TransitionCallbackReturn.FAILURE
        try:
            self._release_setup()           # a failed configure may have left some behind
            before = self._entities()
            try:
                self.setup()
            finally:
                self._setup_entities = [e for e in self._entities() if e not in before]
                self._configured = True
            self.warm_up()
        except Exception as exc:  # noqa: BLE001
            self.report_error('other', f'configure failed: {type(exc).__name__}: {exc}')
            self._release_setup()
            self._state = PolicyStatus.STATE_ERROR
            return TransitionCallbackReturn.FAILURE
        self._state = PolicyStatus.STATE_IDLE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = True
        self._state = PolicyStatus.STATE_RUNNING
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._state = PolicyStatus.STATE_IDLE
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._release_setup()
        self.policy = None
        self._state = PolicyStatus.STATE_UNCONFIGURED
        return TransitionCallbackReturn.SUCCESS

    def _entities(self) -> list:
        return [*self.publishers, *self.subscriptions, *self.timers, *self.waitables]

    def _release_setup(self) -> None:
        """teardown(), then destroy the publishers, subscriptions, timers and action servers
        that setup() created."""
        if not self._configured:
            return
        try:
            self.teardown()
        except Exception as exc:  # noqa: BLE001 - e.g. after a setup() that failed half way
            self.get_logger().warning(f'teardown: {type(exc).__name__}: {exc}')
        finally:
            self._configured = False
            entities, self._setup_entities = self._setup_entities, []
            for entity in reversed(entities):
                if isinstance(entity, LifecyclePublisher):
                    self.destroy_lifecycle_publisher(entity)
                elif isinstance(entity, Publisher):
                    self.destroy_publisher(entity)
                elif isinstance(entity, Subscription):
                    self.destroy_subscription(entity)
                elif isinstance(entity, Timer):
                    self.destroy_timer(entity)
                elif hasattr(entity, 'destroy'):       # an ActionServer (teardown may have done it)
                    if entity in list(self.waitables):
                        entity.destroy()

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._teardown_once()
        return TransitionCallbackReturn.SUCCESS

    def _teardown_once(self) -> None:
        if not getattr(self, '_torn_down', False):
            self._torn_down = True
            self.teardown()

    def start(self) -> bool:
        """configure + activate; False (and the reason in the status) if configure failed."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def destroy_node(self):
        self.active = False
        try:
            self._teardown_once()
        finally:
            handle, self._jump_handle = getattr(self, '_jump_handle', None), None
            if handle is not None:
                handle.unregister()
            super().destroy_node()

    # ---- helpers ------------------------------------------------------------------------------
    def require_policy(self) -> DefiPolicy:
        """self.policy, for setup(), warm_up() and the model stages. configure sets it before
        setup(); it is None only before configure and after cleanup, when none of them runs."""
        policy = self.policy
        if policy is None:
            raise RuntimeError(f'{self.get_name()}: no policy loaded (the node is not configured)')
        return policy

    def now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def use_sim_time(self) -> bool:
        return bool(self.get_parameter('use_sim_time').value)

    def check_stamp(self, topic: str, stamp_ns: int, now_ns: int | None = None) -> bool:
        """False (counted and logged with the topic) when `stamp_ns` is more than max_future_s
        ahead of the node's clock. A stamp from the other kind of clock (wall vs sim time) is
        explained once per topic."""
        now_ns = self.now_ns() if now_ns is None else now_ns
        if topic not in self._clock_warned and is_wall_clock(now_ns) != is_wall_clock(stamp_ns):
            hint = clock_mismatch(topic, now_ns, stamp_ns, self.use_sim_time())
            if hint is not None:
                self._clock_warned.add(topic)
                self.get_logger().error(hint)
        ahead = future_s(now_ns, stamp_ns)
        if ahead > self.params.max_future_s:
            self.report_error('future_stamps', f'{topic}: stamp is {ahead:.3f} s in the future of '
                              f'this node\'s clock (max_future_s={self.params.max_future_s}); refused')
            return False
        return True

    def _on_clock_jump(self, jump) -> None:
        if jump.clock_change in (ClockChange.ROS_TIME_ACTIVATED, ClockChange.ROS_TIME_DEACTIVATED):
            why = f'the clock switched ({jump.clock_change.name})'
        elif jump.delta.nanoseconds < 0:
            why = f'the clock jumped back {-jump.delta.nanoseconds * 1e-9:.3f} s'
        else:
            return
        self.handle_time_jump(why)

    def handle_time_jump(self, why: str) -> None:
        """Count and log a clock jump, then let the node drop its buffers (on_time_jump)."""
        self.counters.error('clock_jumps', f'{why}; buffers reset')
        self.get_logger().warning(f'{why}: buffered messages and schedules reset')
        try:
            self.on_time_jump()
        except Exception as exc:  # noqa: BLE001 - a jump callback must never raise into rcl
            self.get_logger().error(f'clock jump handling failed: {type(exc).__name__}: {exc}')

    def report_error(self, kind: str, message: str, throttle_s: float = 2.0) -> None:
        """Count an error (PolicyStatus counter `kind`) and log it, throttled per message kind."""
        self.counters.error(kind, message)
        key = (kind, message[:40])
        now = time.monotonic()
        if now - self._log_times.get(key, -1e9) >= throttle_s:
            self._log_times[key] = now
            self.get_logger().error(message)

    def report_failure(self, what: str, exc: BaseException) -> None:
        """An exception in a model stage (a worker's on_error): counted as 'other'; the node keeps
        running and the next observation tries again."""
        self.report_error('other', f'{what} failed: {type(exc).__name__}: {exc}')

    def status_message(self) -> PolicyStatus:
        msg = PolicyStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.node_name = self.get_name()
        msg.state = self._state
        for name, value in self.counters.snapshot().items():
            if hasattr(msg, name):
                setattr(msg, name, value)
        self.fill_status(msg)
        return msg

    def publish_status(self) -> None:
        """PolicyStatus on status_topic, its /diagnostics entry and (with status_marker_frame) the
        RViz text marker (defi_ros.status)."""
        msg = self.status_message()
        self._status_pub.publish(msg)
        self._diag_pub.publish(diagnostics(msg, self.counters.snapshot()))
        if self._marker_pub is not None:
            self._marker_pub.publish(status_marker(msg, self.params.status_marker_frame, self.status_row))
