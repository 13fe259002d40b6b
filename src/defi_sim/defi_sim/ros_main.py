"""main() of the simulator's plain (non-lifecycle) rclpy nodes."""
from __future__ import annotations

import rclpy
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import ExternalShutdownException

from defi_ros.params import warn_unknown_parameters


def spin_node(node_cls, args=None) -> None:
    """rclpy.init, spin one `node_cls()` until Ctrl-C or shutdown, then destroy it."""
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = node_cls()
        except (ValueError, InvalidParameterTypeException) as exc:
            # a bad parameter value: one line naming it, exit 2
            rclpy.logging.get_logger(node_cls.__name__).fatal(str(exc))
            raise SystemExit(2) from None
        warn_unknown_parameters(node)
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
