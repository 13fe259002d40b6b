"""What every DeFI node shares: typed parameters, the model, PolicyStatus + diagnostics, errors.

Each DeFI node is an rclpy lifecycle node (rclpy.lifecycle exists from Humble on):
configure = load the checkpoint (or take the policy object shared by defi_bringup) and warm up,
activate = start processing. Status and diagnostics publishers are plain (not lifecycle-managed),
so a node whose configure failed (e.g. a checkpoint that does not exist) still reports why.
"""
from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import ClockChange, JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle.publisher import LifecyclePublisher
from rclpy.publisher import Publisher
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from visualization_msgs.msg import Marker

from defi_core.runtime.status import StatusCounters
from defi_core.runtime.timing import clock_mismatch, future_s, is_wall_clock
from defi_msgs.msg import PolicyStatus

from . import qos
from .params import declare_params, param, read_params, warn_unknown_parameters

if TYPE_CHECKING:   # annotations only: importing a node must not load torch and the model code
    from defi_core.policy import DefiPolicy
    from defi_core.runtime.worker import LatestWorker

__all__ = ['CommonParams', 'ModelParams', 'DefiNode', 'load_checkpoint_policy', 'run_node', 'init_ros',
           'shutdown_nodes', 'model_call', 'warm_up_features']

# One model call at a time per process. The stages of one observation run one after the other
# anyway; letting the worker threads of several nodes call torch concurrently in one process made
# single calls stall for up to 1.2 s (base preset, 2 cores: p95 of decode 219 ms -> 28 ms with
# this lock, dropped frames 15 -> 0 in 20 s at 10 Hz).
MODEL_LOCK = threading.RLock()


@contextlib.contextmanager
def model_call():
    """Serialise model inference in this process and run it without autograd."""
    import torch
    with MODEL_LOCK, torch.inference_mode():
        yield


def warm_up_features(policy):
    """(features, lang) of one black frame per camera and a dummy instruction: the first stage's
    warm-up and the input of the later stages' warm-up. Call it inside model_call()."""
    import torch
    cfg = policy.cfg
    images = torch.zeros(1, len(cfg.cameras), 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    lang = policy.encode_instruction(['warm up'])
    return policy.forward_features(images, lang), lang


@dataclass
class CommonParams:
    """Parameters of every DeFI node."""
    status_topic: str = param('defi/status', 'topic of the PolicyStatus messages (best effort)')
    status_rate_hz: float = param(2.0, 'PolicyStatus, /diagnostics and status marker rate (Hz)',
                                  min=0.0, max=100.0)
    status_marker_frame: str = param('base_link', "frame of the RViz text marker on "
                                     "defi/status_marker; '' = no marker")
    max_future_s: float = param(0.5, 'inputs stamped further than this ahead of the clock are refused; '
                                'a clock jump back by more than this resets the buffers (s, >= 0)')
    autostart: bool = param(True, 'configure and activate on start when run as an executable')


@dataclass
class ModelParams(CommonParams):
    """Parameters of the nodes that load a model (forward predictor, latent-action encoder,
    action decoder; in defi_bringup the model is loaded once and shared)."""
    checkpoint: str = param('', 'checkpoint directory (config.json + model.safetensors)')
    device: str = param('cpu', 'torch device of the model (cpu, cuda, cuda:1, ...)')
    # 0 = auto (defi_core.threads): the CPUs this process may use less one, at most 4, so the
    # message threads and the work beside the model keep a core (more intra-op threads than free
    # cores were 20x slower per chunk on a loaded 2-core machine)
    torch_threads: int = param(0, 'torch intra-op threads of this process; 0 = auto: the CPUs this '
                               'process may use (affinity) less one, at most 4; OMP_NUM_THREADS wins',
                               min=0, max=1024)


def load_checkpoint_policy(path: str, device: str = 'cpu', torch_threads: int = 0):
    """Load a DefiPolicy from a checkpoint directory; errors name the 'checkpoint' parameter."""
    if not path:
        raise ValueError("parameter 'checkpoint' is empty: set it to a checkpoint directory")
    ckpt = Path(path).expanduser()
    if not ckpt.exists():
        raise FileNotFoundError(f"parameter 'checkpoint': {ckpt} does not exist")
    from defi_core.threads import set_torch_threads
    set_torch_threads(int(torch_threads))
    from defi_core.checkpoint import load_policy
    policy = load_policy(str(ckpt), device=device)
    policy.eval()
    return policy


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
        msg = self.status_message()
        self._status_pub.publish(msg)
        level = DiagnosticStatus.OK
        if msg.state == PolicyStatus.STATE_ERROR:
            level = DiagnosticStatus.ERROR
        elif msg.errors_total or msg.state == PolicyStatus.STATE_STOPPED:
            level = DiagnosticStatus.WARN
        diag = DiagnosticStatus(level=level, name=f'defi: {msg.node_name}',
                                hardware_id='defi', message=msg.last_error or 'ok')
        diag.values = [KeyValue(key=k, value=str(getattr(msg, k))) for k in (
            'state', 'features_ms', 'latent_ms', 'decode_ms', 'chunk_ms', 'queue_depth',
            'dropped_frames', 'stale_steps_dropped', 'stops_commanded', 'malformed_inputs',
            'non_finite_outputs', 'stale_observations', 'errors_total')]
        snap = self.counters.snapshot()
        diag.values += [KeyValue(key=k, value=str(snap[k])) for k in ('future_stamps', 'clock_jumps')]
        arr = DiagnosticArray()
        arr.header.stamp = msg.header.stamp
        arr.status = [diag]
        self._diag_pub.publish(arr)
        if self._marker_pub is not None:
            self._marker_pub.publish(self._status_marker(msg))

    _STATE_NAMES = {0: 'unconfigured', 1: 'idle', 2: 'running', 3: 'STOPPED', 4: 'ERROR'}

    def _status_marker(self, msg: PolicyStatus) -> Marker:
        m = Marker(type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, ns='defi_status',
                   id=self.status_row)
        m.header.frame_id = self.params.status_marker_frame
        m.header.stamp = msg.header.stamp
        m.pose.position.z = 1.0 + 0.07 * (5 - self.status_row)
        m.pose.orientation.w = 1.0
        m.scale.z = 0.05
        bad = msg.state == PolicyStatus.STATE_ERROR or msg.errors_total > 0
        m.color.r, m.color.g, m.color.b, m.color.a = (1.0, 0.3, 0.3, 1.0) if bad else (0.9, 0.9, 0.9, 1.0)
        m.text = (f'{msg.node_name}: {self._STATE_NAMES.get(msg.state, msg.state)}  '
                  f'feat {msg.features_ms:.0f} dec {msg.decode_ms:.0f} chunk {msg.chunk_ms:.0f} ms  '
                  f'err {msg.errors_total}' + (f'  ({msg.last_error[:60]})' if msg.last_error else ''))
        m.lifetime.sec = 3
        return m


def init_ros(args=None) -> None:
    """rclpy.init without rclpy's signal handlers: Ctrl-C / SIGTERM raise KeyboardInterrupt in
    the main thread while the context is still valid, so the executor can still publish its stop
    command on the way out (with rclpy's handler the context is already shut down by then)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    # inference threads hold the GIL for long stretches; hand it over more often so that message
    # callbacks are not starved behind them (GIL convoy: seconds of backlog at the default 5 ms)
    sys.setswitchinterval(float(os.environ.get('DEFI_GIL_SWITCH_S', '0.0005')))

    def _terminate(signum, frame):
        # Shutdown must never hang a robot's process: if the teardown has not finished in
        # DEFI_SHUTDOWN_TIMEOUT_S, dump every thread's stack (to find the culprit) and exit(1).
        faulthandler.dump_traceback_later(float(os.environ.get('DEFI_SHUTDOWN_TIMEOUT_S', '10')),
                                          exit=True)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)


def shutdown_nodes(executors, nodes) -> None:
    """Tear the nodes down (the executor commands its stop), give DDS a moment to deliver the
    stop, then shut the executors down (None entries skipped) and destroy everything."""
    for node in nodes:
        try:
            node._teardown_once() if isinstance(node, DefiNode) else None
        except Exception as exc:  # noqa: BLE001
            node.get_logger().error(f'teardown: {exc}')
    time.sleep(0.3)
    for ex in executors:
        if ex is not None:
            ex.shutdown()
    for node in nodes:
        node.destroy_node()
    rclpy.try_shutdown()


def run_node(node_cls, args=None, num_threads: int = 1) -> None:
    """main() of a single-node executable: start (if autostart) and spin. One thread (callbacks
    are short; inference runs on worker threads), unless a callback blocks (the goal loop)."""
    init_ros(args)
    try:
        node = node_cls()
    except ValueError as exc:   # a wrong-typed parameter value: one line naming it, exit 2
        rclpy.logging.get_logger(node_cls.__name__).fatal(str(exc))
        rclpy.try_shutdown()
        raise SystemExit(2) from None
    warn_unknown_parameters(node)
    executor = (SingleThreadedExecutor() if num_threads == 1
                else MultiThreadedExecutor(num_threads=num_threads))
    executor.add_node(node)
    try:
        if node.params.autostart and not node.start():
            node.get_logger().error('not started: see defi/status last_error; '
                                    'fix the parameters and configure again via lifecycle services')
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        shutdown_nodes([executor], [node])
