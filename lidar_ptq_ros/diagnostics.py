"""The detector node's counters and their diagnostic_msgs/DiagnosticArray form (topic /diagnostics)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field, fields

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

RECENT_FRAMES = 50  # processing time statistics cover this many frames


@dataclass
class FrameCounters:
    """A snapshot of what the node has seen since it started."""

    frames_received: int = 0  # messages taken from the subscription
    frames_processed: int = 0  # messages that produced a Detection3DArray (empty clouds included)
    frames_dropped: int = 0  # messages replaced by a newer one while a frame was being processed
    malformed_messages: int = 0  # messages rejected by the PointCloud2 decoder
    detector_failures: int = 0  # frames whose detection raised
    non_finite_points: int = 0  # points dropped for NaN/inf values, all frames
    thinned_points: int = 0  # points left out to respect max_points, all frames
    clouds_without_intensity: int = 0
    last_points: int = 0  # points given to the detector in the last processed frame
    last_detections: int = 0
    last_processing_ms: float = 0.0  # conversion + detection + publishing of the last processed frame
    mean_processing_ms: float = 0.0  # over the last RECENT_FRAMES frames
    max_processing_ms: float = 0.0  # over the last RECENT_FRAMES frames
    last_problem: str = ""  # the latest malformed message or detector failure, as logged


@dataclass
class FrameStats:
    """Thread-safe counters shared by the subscription callback and the processing thread."""

    counters: FrameCounters = field(default_factory=FrameCounters)
    _recent_ms: deque = field(default_factory=lambda: deque(maxlen=RECENT_FRAMES))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reported: FrameCounters = field(default_factory=FrameCounters)

    def add(self, **increments) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self.counters, name, getattr(self.counters, name) + value)

    def set(self, **values) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self.counters, name, value)

    def frame_done(self, processing_ms: float, points: int, detections: int) -> None:
        with self._lock:
            self._recent_ms.append(processing_ms)
            c = self.counters
            c.frames_processed += 1
            c.last_points, c.last_detections, c.last_processing_ms = points, detections, processing_ms
            c.mean_processing_ms = sum(self._recent_ms) / len(self._recent_ms)
            c.max_processing_ms = max(self._recent_ms)

    def snapshot(self) -> FrameCounters:
        with self._lock:
            return FrameCounters(**{f.name: getattr(self.counters, f.name) for f in fields(FrameCounters)})

    def since_last_report(self) -> tuple[FrameCounters, FrameCounters]:
        """(now, at the previous call): for a status level that reflects the last period, not the whole run."""
        now = self.snapshot()
        with self._lock:
            before, self._reported = self._reported, now
        return now, before


def diagnostic_status(now: FrameCounters, before: FrameCounters, name: str, hardware_id: str) -> DiagnosticStatus:
    """OK; WARN when frames were dropped or messages rejected since the last report; ERROR when detection failed."""
    dropped = now.frames_dropped - before.frames_dropped
    malformed = now.malformed_messages - before.malformed_messages
    failed = now.detector_failures - before.detector_failures
    if failed:
        level, message = DiagnosticStatus.ERROR, f"{failed} frame(s) failed in the detector: {now.last_problem}"
    elif malformed or dropped:
        parts = [f"{dropped} frame(s) dropped while busy"] if dropped else []
        parts += [f"{malformed} malformed message(s): {now.last_problem}"] if malformed else []
        level, message = DiagnosticStatus.WARN, "; ".join(parts)
    elif now.frames_processed == 0:
        level, message = DiagnosticStatus.OK, "waiting for point clouds"
    else:
        level, message = DiagnosticStatus.OK, f"{now.last_processing_ms:.1f} ms per frame"
    values = [KeyValue(key=f.name, value=_format(getattr(now, f.name))) for f in fields(FrameCounters)]
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id, values=values)


def diagnostic_array(status: DiagnosticStatus, stamp) -> DiagnosticArray:
    out = DiagnosticArray(status=[status])
    out.header.stamp = stamp
    return out


def _format(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
