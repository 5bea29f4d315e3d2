"""The one `main()` of every node of this package: start, spin until done or stopped, shut down.

rclpy.init installs rclpy's handlers for SIGINT and SIGTERM: either shuts the context down, which ends the spin
(KeyboardInterrupt or ExternalShutdownException) and is a clean stop, exit status 0. An error raised by a callback that
was running at that moment (a publish on the dead context) is the stop too, not a failure. A node that finishes on its
own (the recorder once its bag is full, the player at the end of its frames) has a `finished` Future whose result is
the exit status; other nodes spin until stopped.
"""

from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from .node_parameters import StartupError


def shut_down_by_signal() -> bool:
    """True once rclpy's signal handler (SIGINT / SIGTERM) has shut the default context down."""
    return not rclpy.ok()


def start_node(factory: Callable[[], object], node_name: str):
    """The node, or None after logging why it cannot start (the caller exits with status 1)."""
    try:
        return factory()
    except StartupError as exc:
        rclpy.logging.get_logger(node_name).error(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return None


def run_node_main(factory: Callable[[], object], node_name: str, args=None) -> int:
    """Init rclpy with `args`, build the node with `factory()` and spin it on a single-threaded executor until its
    `finished` Future completes (if it has one) or a signal stops it; the node is destroyed on every way out.
    Returns the exit status: 1 when the node cannot start, the Future's result, else 0."""
    rclpy.init(args=args)
    node = start_node(factory, node_name)
    if node is None:
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    finished = getattr(node, "finished", None)
    status = 0
    try:
        if finished is None:
            executor.spin()
        else:
            executor.spin_until_future_complete(finished)
            if finished.done():
                status = finished.result()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C / SIGTERM: a clean stop
    except Exception:
        if not shut_down_by_signal():
            raise
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return status
