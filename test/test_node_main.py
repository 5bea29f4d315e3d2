"""lidar_ptq_ros/node_main.py: SIGINT / SIGTERM become a stop request the spin loop reads in the main thread (the
nodes' own signal exits are tested end to end in test_recorder_player and test_detector_node)."""

import signal
import subprocess
import sys
import textwrap

import pytest

node_main = pytest.importorskip("lidar_ptq_ros.node_main", reason="needs rclpy (the ROS layer)")


def run_script(script: str) -> subprocess.CompletedProcess:
    """Signals go to a child process: sent to pytest itself they would meet whatever handlers the other tests'
    rclpy left installed in this process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_is_a_stop_request_and_the_handlers_come_back(sig):
    done = run_script(f"""
        import os, signal
        from lidar_ptq_ros.node_main import StopRequest
        before = signal.getsignal({int(sig)})
        stop = StopRequest()
        stop.install()
        print(stop.requested, flush=True)
        os.kill(os.getpid(), {int(sig)})  # the handler runs before the next bytecode of the main thread
        print(stop.requested, stop.signal, flush=True)
        stop.restore()
        print(signal.getsignal({int(sig)}) is before, flush=True)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", str(int(sig)), "True"]


def test_a_second_signal_ends_the_process_at_once():
    done = run_script("""
        import os, signal, time
        from lidar_ptq_ros.node_main import StopRequest
        stop = StopRequest()
        stop.install()
        os.kill(os.getpid(), signal.SIGINT)
        print("first", stop.signal, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        print("still alive", flush=True)
    """)
    assert done.returncode == -signal.SIGINT, done.stderr
    assert done.stdout.split() == ["first", str(int(signal.SIGINT))]


class CountingExecutor:
    def __init__(self, on_spin):
        self.spins, self.on_spin = 0, on_spin

    def spin_once(self, timeout_sec=None):
        assert timeout_sec == node_main.SPIN_TICK_S, "the loop must wake up to look at the stop request"
        self.spins += 1
        self.on_spin(self.spins)


class Done:
    def __init__(self):
        self.is_done = False

    def done(self):
        return self.is_done


def test_spin_loop_ends_on_a_stop_request_or_when_the_node_is_finished(monkeypatch):
    monkeypatch.setattr(node_main.rclpy, "ok", lambda: True)
    stop = node_main.StopRequest()
    executor = CountingExecutor(lambda n: setattr(stop, "signal", signal.SIGTERM) if n == 3 else None)
    node_main.spin_until_stopped(executor, stop)
    assert executor.spins == 3

    finished = Done()
    executor = CountingExecutor(lambda n: setattr(finished, "is_done", n == 2))
    node_main.spin_until_stopped(executor, node_main.StopRequest(), finished)
    assert executor.spins == 2


def test_spin_loop_ends_when_the_context_is_shut_down_elsewhere(monkeypatch):
    alive = iter([True, True, False])
    monkeypatch.setattr(node_main.rclpy, "ok", lambda: next(alive))
    executor = CountingExecutor(lambda n: None)
    node_main.spin_until_stopped(executor, node_main.StopRequest())
    assert executor.spins == 2
