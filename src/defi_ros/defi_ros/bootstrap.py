"""Process bootstrap of the DeFI executables: rclpy without its own signal handlers (Ctrl-C and
SIGTERM reach the nodes' teardown while the context is still valid; a shutdown that hangs dumps every
thread's stack and exits), a short GIL switch interval, the executor, and the orderly shutdown."""
from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from .lifecycle import DefiNode
from .params import warn_unknown_parameters

__all__ = ['init_ros', 'shutdown_nodes', 'run_node']


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
