"""Where the detector node's time per frame goes: perf_counter spans per stage, medians over the recent frames.

The node times each stage of a frame (message conversion, detection, building and publishing each output) and the
process CPU time the frame took (all threads: onnxruntime's pool, the executor, the middleware). Its /diagnostics
carry the medians, so a benchmark compares the node's stages with the library pipeline's on the same frames
(benchmarks/node_latency.py). Wall time well above CPU time / threads means the frame waited for a core.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

RECENT_FRAMES = 50  # as diagnostics.RECENT_FRAMES: the medians cover this many frames
TOTAL = "total"  # the whole frame, wall time
CPU = "process_cpu"  # process CPU time during the frame, every thread


class FrameTimer:
    """Spans of one frame: `with timer.span("convert"): ...`; a stage timed twice in a frame adds up."""

    def __init__(self):
        self.spans: dict[str, float] = {}
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def span(self, stage: str) -> "_Span":
        return _Span(self, stage)

    def finish(self) -> dict[str, float]:
        """The frame's spans in ms, with its wall time (TOTAL) and process CPU time (CPU)."""
        self.spans[TOTAL] = 1000.0 * (time.perf_counter() - self._start)
        self.spans[CPU] = 1000.0 * (time.process_time() - self._cpu_start)
        return dict(self.spans)


class _Span:
    def __init__(self, timer: FrameTimer, stage: str):
        self.timer, self.stage = timer, stage

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        spans = self.timer.spans
        spans[self.stage] = spans.get(self.stage, 0.0) + 1000.0 * (time.perf_counter() - self.start)
        return False


class FrameProfile:
    """The spans of the last `recent` frames (thread safe): medians and maxima per stage. A stage a frame skipped
    (markers nobody subscribes to, the input check after its frames) counts as 0 ms in that frame, so the stage
    medians add up to about the total's."""

    def __init__(self, recent: int = RECENT_FRAMES):
        self._frames: deque[dict[str, float]] = deque(maxlen=recent)
        self._lock = threading.Lock()

    def add(self, spans: dict[str, float]) -> None:
        with self._lock:
            self._frames.append(dict(spans))

    def last(self) -> dict[str, float]:
        with self._lock:
            return dict(self._frames[-1]) if self._frames else {}

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {"median": ms, "max": ms}} over the recent frames, stages in first-seen order."""
        with self._lock:
            frames = list(self._frames)
        stages = list(dict.fromkeys(stage for frame in frames for stage in frame))
        out = {}
        for stage in stages:
            values = np.array([frame.get(stage, 0.0) for frame in frames])
            out[stage] = {"median": float(np.median(values)), "max": float(values.max())}
        return out

    def key_values(self) -> list[tuple[str, str]]:
        """(key, value) pairs for /diagnostics: '<stage>_ms_median' and '<stage>_ms_max', values like '12.345'."""
        pairs = []
        for stage, stats in self.summary().items():
            pairs += [(f"{stage}_ms_median", f"{stats['median']:.3f}"), (f"{stage}_ms_max", f"{stats['max']:.3f}")]
        return pairs
