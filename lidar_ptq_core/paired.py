"""Paired bootstrap intervals for the difference between two detectors' metrics on the same frames.

Two prediction sets A (the reference, e.g. FP32) and B (e.g. INT8) on the same frames and ground truth. The point
difference is metric(B) - metric(A) on all frames. Its interval comes from a paired bootstrap over frames: each
resample draws F frame indices with replacement (the same indices for A and B, which is what makes it paired:
the scene-to-scene variation both sets share cancels), recomputes both metrics on the resampled frames and keeps
their difference; the interval is the (1 - confidence) / 2 and (1 + confidence) / 2 percentiles of those
differences. The seed is fixed, so a rerun gives the same interval.

Metrics (AP as `lidar_ptq_core.evaluate` defines it): "mAP" (centre distance, all ranges), "BEV IoU mAP" and the
centre-distance mAP of the last range bin ("50m+ mAP" with the default edges).

Speed: boxes are matched once per frame (`match_frames`). A resample is a count per frame (how many times it was
drawn), and the AP of the resampled set is that of the predictions each repeated as often as its frame:

* after sorting by score the copies of a prediction sit next to each other, so within a run of copies of a TP the
  precision only rises; the precision envelope at each copy is the one at the run's end;
* the envelope over all predictions is reached at TPs (an FP only lowers precision), so only the precision at the
  TPs is needed: with the cumulative weighted counts there, AP = sum over TPs of weight * envelope / weighted GT;
* the counted predictions between two TPs only add to the running count, a sparse (TPs x frames) matrix product.

So one resample costs O(TPs) per class and criterion after an O(predictions) product, vectorised over resamples.
With counts of 1 everywhere this is exactly `evaluate`'s AP (a test checks it), and with integer counts it equals
`evaluate` on the list of frames repeated that often when scores do not tie.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse

from .evaluate import ALL_RANGES, ClassOutcomes, MatchedFrames

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
_CELLS_PER_CHUNK = 4_000_000  # resamples x TPs per vectorised step: about 32 MB per float64 array


@dataclass(frozen=True)
class MetricSpec:
    """A mean AP over classes: centre distance (mean over the distance thresholds) or BEV IoU, in one range."""

    name: str
    criterion: str  # "distance" or "iou"
    range_key: str


@dataclass
class PairedDifference:
    """metric(candidate) - metric(reference) on all frames, with its paired bootstrap interval. APs as fractions."""

    metric: str
    reference: float
    candidate: float
    difference: float
    low: float
    high: float
    confidence: float
    num_resamples: int
    seed: int

    def format(self, candidate_label: str, reference_label: str) -> str:
        """One line, AP points: 'INT8 - FP32: -0.42 mAP [95 % CI -0.71, -0.15]'."""
        return (f"{candidate_label} - {reference_label}: {_points(self.difference)} {self.metric} "
                f"[{100 * self.confidence:g} % CI {_points(self.low)}, {_points(self.high)}]")

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def default_metrics(matched: MatchedFrames) -> list[MetricSpec]:
    """mAP, BEV IoU mAP and the centre-distance mAP of the farthest range bin (e.g. '50m+ mAP')."""
    metrics = [MetricSpec("mAP", "distance", ALL_RANGES), MetricSpec("BEV IoU mAP", "iou", ALL_RANGES)]
    if len(matched.ranges) > 1:
        far = matched.ranges[-1]
        metrics.append(MetricSpec(f"{far} mAP", "distance", far))
    return metrics


def resample_counts(num_frames: int, num_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(resamples, frames) int: how often each frame is drawn in each resample of `num_frames` draws with
    replacement."""
    if num_frames < 1:
        raise ValueError("the bootstrap needs at least one frame")
    if num_resamples < 1:
        raise ValueError(f"number of resamples must be at least 1, got {num_resamples}")
    draws = np.random.default_rng(seed).integers(0, num_frames, size=(num_resamples, num_frames))
    flat = draws + num_frames * np.arange(num_resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=num_resamples * num_frames).reshape(num_resamples, num_frames)


def metric_samples(matched: MatchedFrames, counts: np.ndarray,
                   metrics: list[MetricSpec] | None = None) -> dict[str, np.ndarray]:
    """Each metric (a fraction, NaN where no class has GT) on each resample, from frame counts (resamples, frames).

    A row of ones gives the metric on all frames, as `evaluate` computes it.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != matched.num_frames:
        raise ValueError(f"frame counts must be (resamples, {matched.num_frames}), got {counts.shape}")
    metrics = default_metrics(matched) if metrics is None else metrics
    samples = {}
    for metric in metrics:
        if metric.range_key not in matched.ranges:
            raise ValueError(f"unknown range {metric.range_key!r}; known: {', '.join(matched.ranges)}")
        range_index = matched.ranges.index(metric.range_key)
        criteria = (range(len(matched.distance_thresholds)) if metric.criterion == "distance"
                    else [matched.iou_criterion])
        per_class = []
        for outcomes in matched.classes.values():
            # A class's distance AP is the mean over thresholds; all share the class's GT count, so NaN together.
            aps = [_weighted_ap(outcomes, criterion, range_index, counts) for criterion in criteria]
            per_class.append(np.mean(aps, axis=0))
        samples[metric.name] = _nanmean_rows(np.array(per_class).reshape(len(per_class), len(counts)))
    return samples


def paired_bootstrap(reference: MatchedFrames, candidate: MatchedFrames, *, num_resamples: int = DEFAULT_RESAMPLES,
                     seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE,
                     metrics: list[MetricSpec] | None = None) -> list[PairedDifference]:
    """candidate - reference for each metric, with its paired bootstrap interval (module docstring)."""
    _check_same_frames(reference, candidate)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    metrics = default_metrics(reference) if metrics is None else metrics
    everything = np.ones((1, reference.num_frames), np.int64)
    reference_full = metric_samples(reference, everything, metrics)
    candidate_full = metric_samples(candidate, everything, metrics)
    counts = resample_counts(reference.num_frames, num_resamples, seed)
    reference_resampled = metric_samples(reference, counts, metrics)
    candidate_resampled = metric_samples(candidate, counts, metrics)
    tail = 100 * (1 - confidence) / 2
    results = []
    for metric in metrics:
        differences = candidate_resampled[metric.name] - reference_resampled[metric.name]
        finite = differences[np.isfinite(differences)]
        low, high = np.percentile(finite, [tail, 100 - tail]) if len(finite) else (math.nan, math.nan)
        ref, cand = float(reference_full[metric.name][0]), float(candidate_full[metric.name][0])
        results.append(PairedDifference(metric.name, ref, cand, cand - ref, float(low), float(high), confidence,
                                        num_resamples, seed))
    return results


def _weighted_ap(outcomes: ClassOutcomes, criterion: int, range_index: int, counts: np.ndarray) -> np.ndarray:
    """(resamples,) AP of one class, criterion and range with each frame's predictions and GT repeated as often
    as `counts` says; NaN where the resample holds no GT of the class in the range."""
    frame, is_tp = outcomes.counted(criterion, range_index)
    num_gt = counts @ outcomes.gt_per_frame[range_index]
    ap = np.where(num_gt > 0, 0.0, math.nan)
    if not is_tp.any():
        return ap
    # FPs after the last TP lower no envelope value that a TP uses: leave them out.
    last = int(np.flatnonzero(is_tp)[-1]) + 1
    frame, is_tp = frame[:last], is_tp[:last]
    tp_frame = frame[is_tp]
    # Each counted prediction joins the segment that ends at the next TP (its own, for a TP).
    segment = np.cumsum(is_tp) - is_tp
    segment_frames = sparse.csr_matrix((np.ones(len(frame)), (segment, frame)),
                                       shape=(len(tp_frame), outcomes.gt_per_frame.shape[1]))
    # Layout (TPs, resamples): the running sums go down rows, each a contiguous vector over resamples.
    counts_by_frame = np.ascontiguousarray(counts.T, dtype=np.float64)
    chunk = max(1, _CELLS_PER_CHUNK // len(tp_frame))
    for start in range(0, len(counts), chunk):
        weights = counts_by_frame[:, start:start + chunk]
        predictions_so_far = np.asarray(segment_frames @ weights)  # counted predictions per segment
        np.cumsum(predictions_so_far, axis=0, out=predictions_so_far)
        np.maximum(predictions_so_far, 1.0, out=predictions_so_far)  # 0 only where the TP weight is 0 too
        tp_weight = weights[tp_frame]
        precision = np.cumsum(tp_weight, axis=0)
        precision /= predictions_so_far
        envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
        rows = slice(start, start + weights.shape[1])
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[rows] = np.einsum("tb,tb->b", tp_weight, envelope) / num_gt[rows]
    return ap


def _nanmean_rows(per_class: np.ndarray) -> np.ndarray:
    """Mean over classes (axis 0) of the finite values; NaN where no class has one."""
    finite = np.isfinite(per_class)
    total = np.where(finite, per_class, 0.0).sum(axis=0)
    present = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present > 0, total / np.maximum(present, 1), math.nan)


def _check_same_frames(reference: MatchedFrames, candidate: MatchedFrames) -> None:
    if reference.num_frames != candidate.num_frames:
        raise ValueError(f"the two prediction sets cover {reference.num_frames} and {candidate.num_frames} frames; "
                         "a paired comparison needs the same frames")
    same = (reference.class_names == candidate.class_names and reference.ranges == candidate.ranges
            and reference.distance_thresholds == candidate.distance_thresholds)
    if not same:
        raise ValueError("the two prediction sets were matched with different classes, ranges or thresholds")
    for name in reference.class_names:
        if not np.array_equal(reference.classes[name].gt_per_frame, candidate.classes[name].gt_per_frame):
            raise ValueError(f"the two prediction sets were matched against different ground truth ({name})")
    if reference.frame_digests and candidate.frame_digests:
        differ = [i for i, (a, b) in enumerate(zip(reference.frame_digests, candidate.frame_digests)) if a != b]
        if differ:
            raise ValueError(f"the two prediction sets were matched against different ground truth: {len(differ)} "
                             f"frame(s) differ, the first at index {differ[0]} (other frames, or another order)")


def _points(fraction: float) -> str:
    return "nan" if math.isnan(fraction) else f"{100 * fraction:+.2f}"
