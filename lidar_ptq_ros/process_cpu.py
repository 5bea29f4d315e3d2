"""CPU time of the chain's processes and their threads over a stretch of a run, from /proc (Linux).

What shares the cores with the detector node (issue 19): the player building and sending each cloud, the node's
executor taking it in, its worker, onnxruntime's pool, the middleware's threads, the collector. `CpuSampler` reads
utime + stime of every thread of the named processes every `period` s in a thread of its own; `window(start, end)`
gives the CPU seconds each (process, thread name) spent between two wall times (time.time(); the player's stamps use
the same clock), so a run's steady state can be told from the start-up of its processes.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from bisect import bisect_left, bisect_right
from collections import defaultdict

MAIN_THREAD = "main"  # the process's first thread (the rclpy executor in the nodes)


def _thread_times(pid: int, tick: float) -> dict[int, tuple[str, float, int]]:
    """{tid: (thread name, CPU s, minor page faults)} of one process; empty once it has exited."""
    threads = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return threads
    for tid_text in tids:
        try:
            with open(f"/proc/{pid}/task/{tid_text}/stat", "rb") as stat:
                text = stat.read().decode(errors="replace")
        except OSError:  # the thread ended between listing and reading
            continue
        close = text.rindex(")")
        fields = text[close + 2:].split()  # from field 3 (state): minflt is field 10, utime 14, stime 15
        tid = int(tid_text)
        name = MAIN_THREAD if tid == pid else text[text.index("(") + 1: close]
        threads[tid] = (name, (int(fields[11]) + int(fields[12])) * tick, int(fields[7]))
    return threads


def name_this_thread(name: str) -> None:
    """Give the calling thread an OS name (Linux, 15 characters kept), so that /proc, top and CpuSampler tell it
    from the other threads of its process (Python 3.11 names none of them)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


class CpuSampler:
    """`with CpuSampler(period) as cpu: cpu.watch("detector_node", pid) ...`; after the block, `cpu.window(t0, t1)`.
    Samples are kept in memory (a few dozen threads at 10 Hz: small for a minute's run)."""

    def __init__(self, period: float = 0.1):
        self.period = period
        self._tick = 1.0 / os.sysconf("SC_CLK_TCK")
        self._pids: dict[str, int] = {}
        self._times: list[float] = []
        self._samples: list[dict[tuple[str, int], tuple[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lidar_ptq_cpu_sampler", daemon=True)
        self._lock = threading.Lock()

    def watch(self, label: str, pid: int) -> None:
        with self._lock:
            self._pids[label] = pid

    def start(self) -> "CpuSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
        return False

    def _sample(self) -> None:
        with self._lock:
            pids = dict(self._pids)
        sample = {}
        for label, pid in pids.items():
            for tid, values in _thread_times(pid, self._tick).items():
                sample[(label, tid)] = values
        self._times.append(time.time())
        self._samples.append(sample)

    def _run(self) -> None:
        name_this_thread("cpu_sampler")  # its own reading of /proc shows apart from the caller's threads
        self._sample()
        while not self._stop.wait(self.period):
            self._sample()
        self._sample()

    def _span(self, start: float, end: float) -> tuple[int, int]:
        return bisect_left(self._times, start), bisect_right(self._times, end) - 1

    def _deltas(self, start: float, end: float, value: int) -> dict[str, dict[str, float]]:
        first, last = self._span(start, end)
        if first >= last:
            return {}
        before, latest = self._samples[first], {}
        for sample in self._samples[first + 1: last + 1]:  # a thread that ended in the window: its last sample
            latest.update(sample)
        out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for key, values in latest.items():
            out[key[0]][values[0]] += values[value] - (before[key][value] if key in before else 0)
        return {label: dict(threads) for label, threads in out.items()}

    def window(self, start: float, end: float) -> dict[str, dict[str, float]]:
        """{process label: {thread name: CPU s}} between the first sample at or after `start` and the last at or
        before `end`; threads of one name are summed (onnxruntime's pool), a thread born in between counts from 0, one
        that ended in between up to its last sample. Empty when no two samples lie in the window."""
        return self._deltas(start, end, 1)

    def page_faults(self, start: float, end: float) -> dict[str, int]:
        """{process label: minor page faults} over the same window as `window` (memory the kernel handed the process
        afresh: zero-filled pages of a new allocation)."""
        return {label: int(sum(threads.values())) for label, threads in self._deltas(start, end, 2).items()}

    def window_seconds(self, start: float, end: float) -> float:
        """The wall time the window of `window(start, end)` covers."""
        first, last = self._span(start, end)
        return self._times[last] - self._times[first] if first < last else 0.0
