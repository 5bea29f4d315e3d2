"""process_cpu.CpuSampler: per-thread CPU seconds of watched processes over a window of wall time, from /proc."""

import os
import sys
import threading
import time

import pytest

from lidar_ptq_ros.process_cpu import MAIN_THREAD, CpuSampler, name_this_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _until_sampled_after(cpu: CpuSampler, moment: float) -> None:
    """Wait (on a loaded machine the sampler may run late) until two samples lie after `moment`."""
    deadline = time.time() + 30
    while cpu.window_seconds(moment, float("inf")) <= 0 and time.time() < deadline:
        time.sleep(0.01)


def test_window_gives_the_cpu_of_a_busy_thread_by_its_name_and_leaves_out_what_came_before():
    import mmap

    def busy():
        name_this_thread("cpu_test_busy")  # the name the sampler groups by
        _spin(0.05)  # before the window
        ready.set()
        go.wait()
        _spin(0.3)
        fresh = mmap.mmap(-1, 1024 * PAGE)
        for offset in range(0, len(fresh), PAGE):  # each page faulted in once
            fresh[offset] = 1
        fresh.close()
        spun.set()
        leave.wait()  # alive until sampled: an ended thread counts up to its last sample only

    ready, go, spun, leave = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    worker = threading.Thread(target=busy)
    with CpuSampler(period=0.02) as cpu:
        cpu.watch("test", os.getpid())
        worker.start()
        ready.wait()
        time.sleep(0.1)
        start = time.time()
        _until_sampled_after(cpu, start)  # the window's first sample is taken before the thread spins again
        go.set()
        spun.wait()
        _until_sampled_after(cpu, time.time())  # and its last one after the thread's work
        end = time.time()
        leave.set()
        worker.join()
    threads = cpu.window(start, end)["test"]
    # Clock ticks are 10 ms: the 0.3 s spun inside the window, within a few ticks; the 0.05 s before it left out.
    assert threads["cpu_test_busy"] == pytest.approx(0.3, abs=0.05)
    assert MAIN_THREAD in threads and threads[MAIN_THREAD] < 0.1  # the main thread slept
    assert cpu.window_seconds(start, end) == pytest.approx(end - start, abs=0.1)
    # the 1024 pages touched, and not many more (other threads of a test session may fault a little meanwhile)
    assert 1024 <= cpu.page_faults(start, end)["test"] < 4096
    assert cpu.window(end + 10, end + 20) == {} and cpu.window_seconds(end + 10, end + 20) == 0.0


def test_a_process_that_exited_is_left_out_of_later_samples():
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with CpuSampler(period=0.01) as cpu:
        cpu.watch("gone", child.pid)
        time.sleep(0.05)
    assert cpu.window(0, time.time() + 1) == {} and cpu.page_faults(0, time.time() + 1) == {}
