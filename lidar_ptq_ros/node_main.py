"""The one `main()` of every node of this package: start, spin until done or stopped, shut down.

SIGINT and SIGTERM are handled here, in the main thread, not by rclpy's handlers: those shut the context down
asynchronously, while the executor and the node may still be using it. The recorder once segfaulted on SIGINT in CI
(never reproduced in 90 reruns); whether or not that race was the cause, the order of a stop is now fixed and
single-threaded. A signal only records a stop request; the spin loop wakes at least every SPIN_TICK_S to look at it,
then the executor, the node (the recorder closes its bag) and the context are shut down in that order, by the main
thread: a clean stop, exit status 0. A second signal while that runs ends the process at once, with the signal's
default action. A node that finishes on its own (the recorder once its bag is full, the player at the end of its
frames) has a `finished` Future whose result is the exit status; other nodes spin until stopped.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from .node_parameters import StartupError

SPIN_TICK_S = 0.1  # how long a stop request can wait for the executor to look at it
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """SIGINT / SIGTERM as a flag the spin loop reads. The first signal asks for a clean stop; a second one, while
    that stop is running, restores the default action and re-sends itself (Ctrl-C twice kills a stuck node)."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None


def start_node(factory: Callable[[], object], node_name: str):
    """The node, or None after logging why it cannot start (the caller exits with status 1)."""
    try:
        return factory()
    except StartupError as exc:
        rclpy.logging.get_logger(node_name).error(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return None


def spin_until_stopped(executor, stop: StopRequest, finished=None) -> None:
    """Spin until a stop is requested, the context is shut down elsewhere, or `finished` (a Future) is done."""
    while not stop.requested and rclpy.ok() and not (finished is not None and finished.done()):
        executor.spin_once(timeout_sec=SPIN_TICK_S)


def run_node_main(factory: Callable[[], object], node_name: str, args=None) -> int:
    """Init rclpy with `args` (without its signal handlers), build the node with `factory()` and spin it on a
    single-threaded executor until its `finished` Future completes (if it has one) or SIGINT / SIGTERM asks it to
    stop; the node is destroyed on every way out. Returns the exit status: 1 when the node cannot start, the Future's
    result, else 0."""
    stop = StopRequest()
    stop.install()
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        node = start_node(factory, node_name)
        if node is None:
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        finished = getattr(node, "finished", None)
        status = 0
        try:
            spin_until_stopped(executor, stop, finished)
            if finished is not None and finished.done():
                status = finished.result()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass  # a stop from outside this loop: clean too
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
        return status
    finally:
        stop.restore()
