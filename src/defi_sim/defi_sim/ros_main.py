"""main() of the simulator's plain (non-lifecycle) rclpy nodes."""
from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException

from defi_perception.params import warn_unknown_parameters


def spin_node(node_cls, args=None) -> None:
    """rclpy.init, spin one `node_cls()` until Ctrl-C or shutdown, then destroy it."""
    rclpy.init(args=args)
    node = None
    try:
        node = node_cls()
        warn_unknown_parameters(node)
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
