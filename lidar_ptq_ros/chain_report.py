"""What the demo chain and the node latency benchmark say about a detector node's run: per-frame results, latency
percentiles, dropped frames, mAP against the simulator's ground truth and INT8 vs FP32 agreement.

Plain data and numpy, no ROS import: demo_chain.py fills a NodeRun from what a collector node received.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from lidar_ptq_core.agreement import detection_agreement
from lidar_ptq_core.detections import Detections

PERCENTILES = (50, 90, 99)
SHOWN_MIN_SCORE = 0.3  # per-frame lines, the picture and the agreement count boxes at or above this score


@dataclass
class FrameResult:
    index: int  # position in the played sequence (frame `index` of the played split)
    stamp_ns: int  # header stamp the player gave the cloud
    detections: Detections | None  # what the node published for the cloud; None: no answer (dropped)
    latency_ms: float | None  # arrival of the detections at the collector minus the cloud's stamp


@dataclass
class NodeRun:
    """One detector node run on a played sequence: one FrameResult per published cloud, in publishing order."""

    label: str  # "FP32", "INT8"
    model: str
    backend: str
    rate_hz: float
    frames: list[FrameResult]
    counters: dict[str, str] = field(default_factory=dict)  # the node's last /diagnostics key-values
    unmatched_answers: int = 0  # Detection3DArrays whose stamp is no published cloud's (never expected)
    # CPU ms per cloud period while the clouds were played: {process: {thread name: ms}} (process_cpu.py)
    cpu_ms_per_cloud: dict[str, dict[str, float]] = field(default_factory=dict)
    page_faults_per_cloud: dict[str, float] = field(default_factory=dict)  # {process: minor faults}, same window

    @property
    def published(self) -> int:
        return len(self.frames)

    @property
    def answered(self) -> list[FrameResult]:
        return [f for f in self.frames if f.detections is not None]

    @property
    def dropped(self) -> int:
        """Published clouds the node published no detections for: replaced while it was busy, or never received."""
        return self.published - len(self.answered)

    def counter(self, name: str, default: float = float("nan")) -> float:
        value = self.counters.get(name)
        return float(value) if value not in (None, "") else default

    def latencies_ms(self) -> np.ndarray:
        return np.array([f.latency_ms for f in self.answered], np.float64)


def percentiles(values, qs=PERCENTILES) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return {f"p{q}": float("nan") for q in qs}
    return {f"p{q}": float(np.percentile(values, q)) for q in qs}


def latency_summary(run: NodeRun) -> dict:
    """End-to-end latency (cloud stamp -> detections received) percentiles, the node's own processing time, counts."""
    latencies = run.latencies_ms()
    received = int(run.counter("frames_received", 0))
    return {
        "published": run.published,
        "answered": len(run.answered),
        "dropped": run.dropped,
        "dropped_while_busy": int(run.counter("frames_dropped", 0)),  # the node replaced a parked cloud
        "never_received": run.published - received,  # lost between the player and the node (best effort)
        "latency_ms": {**percentiles(latencies), "max": float(latencies.max()) if latencies.size else float("nan")},
        "processing_ms_mean": run.counter("mean_processing_ms"),  # the node's, over its last 50 frames
        "processing_ms_max": run.counter("max_processing_ms"),
        "keeps_up": run.dropped == 0,
    }


def agreement(reference: NodeRun, other: NodeRun, class_names, min_score: float = SHOWN_MIN_SCORE) -> dict:
    """How closely `other`'s published boxes follow `reference`'s on the frames both answered
    (lidar_ptq_core.agreement.detection_agreement; map_vs_reference in %)."""
    ours = {f.index: f.detections for f in other.answered}
    pairs = [(f.detections, ours[f.index]) for f in reference.answered if f.index in ours]
    return detection_agreement([r for r, _ in pairs], [o for _, o in pairs], class_names, min_score)


def accuracy(run: NodeRun, ground_truths, class_names, region, indices=None):
    """EvalResult of the run's answered frames (or of `indices` among them) against the ground truth; None if none."""
    from lidar_ptq_core.evaluate import evaluate

    frames = [f for f in run.answered if indices is None or f.index in indices]
    if not frames:
        return None
    return evaluate([f.detections for f in frames], [ground_truths[f.index] for f in frames], list(class_names),
                    region=region)


def box_counts(detections: Detections, min_score: float = SHOWN_MIN_SCORE) -> str:
    shown = detections.select(detections.scores >= min_score)
    counts = Counter(shown.class_names[int(label)] if shown.class_names else str(int(label)) for label in shown.labels)
    return ", ".join(f"{n} {name}" for name, n in counts.most_common()) or "nothing"


def frame_line(frame_id: str, runs: list[NodeRun], index: int) -> str:
    """One line per played frame: each run's boxes (score >= 0.3, by class) and latency, or 'dropped'."""
    parts = []
    for run in runs:
        frame = run.frames[index]
        if frame.detections is None:
            parts.append(f"{run.label}: dropped")
        else:
            parts.append(f"{run.label}: {box_counts(frame.detections)} ({frame.latency_ms:.0f} ms)")
    return f"  {frame_id}  " + " | ".join(parts)


def format_latency_table(runs: list[NodeRun]) -> str:
    """Published / answered / dropped and latency percentiles, one row per run."""
    header = (f"  {'run':<6} {'model':<28} {'backend':<12} {'published':>9} {'answered':>8} {'dropped':>7} "
              f"{'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'node ms':>8}")
    rows = [header]
    for run in runs:
        s = latency_summary(run)
        lat = s["latency_ms"]
        model = run.model.replace("\\", "/").rsplit("/", 1)[-1]  # a path shows as its file name
        model = model if len(model) <= 28 else "..." + model[-25:]
        rows.append(f"  {run.label:<6} {model:<28} {run.backend:<12} {s['published']:>9} {s['answered']:>8} "
                    f"{s['dropped']:>7} {lat['p50']:>7.0f} {lat['p90']:>7.0f} {lat['p99']:>7.0f} "
                    f"{s['processing_ms_mean']:>8.0f}")
    return "\n".join(rows)


def keep_up_sentence(run: NodeRun) -> str:
    """How far the run is from keeping up with its input rate."""
    s = latency_summary(run)
    period = 1000.0 / run.rate_hz
    node_ms = s["processing_ms_mean"]
    if not (node_ms > 0):  # no diagnostics report (NaN) or nothing processed
        return f"{run.label} answered {len(run.answered)} of {run.published} clouds at {run.rate_hz:g} Hz"
    if s["dropped"] == 0:
        return (f"{run.label} keeps up at {run.rate_hz:g} Hz: {node_ms:.0f} ms per frame in the node, "
                f"{period:.0f} ms budget")
    answered_hz = run.rate_hz * len(run.answered) / max(run.published, 1)
    if node_ms <= period:  # fast enough on average; the drops come from frames slower than the period
        return (f"{run.label} keeps up on average at {run.rate_hz:g} Hz: {node_ms:.0f} ms per frame in the node "
                f"against a {period:.0f} ms budget ({node_ms / period:.2f}x), but {s['dropped']} of {run.published} "
                f"clouds were dropped while a slower frame was processed, so it answered {len(run.answered)} "
                f"(about {answered_hz:.1f} Hz)")
    return (f"{run.label} does not keep up at {run.rate_hz:g} Hz: {node_ms:.0f} ms per frame in the node against a "
            f"{period:.0f} ms budget ({node_ms / period:.1f}x), so it answered {len(run.answered)} of "
            f"{run.published} clouds (about {answered_hz:.1f} Hz)")
