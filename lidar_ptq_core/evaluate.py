"""Per-class average precision (AP) of 3D detections over many frames, with two matching criteria and a range breakdown.

Matching criteria (both greedy and per frame; a prediction only ever matches a ground-truth box (GT) of its own
class in its own frame, and each GT is matched at most once):

* Centre distance (nuScenes style): the BEV (x, y) distance between box centres must be <= the threshold;
  thresholds 0.5, 1, 2 and 4 m by default. Predictions are taken in descending score order and each is matched to
  the closest still-unmatched GT within the threshold. A class's distance AP is the mean of its APs over the
  thresholds.
* BEV rotated IoU (KITTI / Waymo style): the IoU of the rotated BEV footprints must be >= the class threshold
  (0.7 for Car and Truck, 0.5 for Pedestrian and Cyclist by default; classes not in the dict use 0.5).
  Predictions are taken in descending score order and each is matched to the still-unmatched GT with the highest
  IoU at or above the threshold.

Ties: predictions with equal scores keep their input order (frame order, then order within the frame); GT with
equal distance / IoU go to the lower GT index.

Outcome of each prediction:
  TP      matched to a GT that is not ignored;
  dropped matched to a GT with `ignore=True`: it is neither TP nor FP (the ignored GT is neither rewarded nor
          punished; like any GT it absorbs one prediction, a second prediction on it is an FP like any duplicate);
  FP      not matched.
Ignored GT are not counted in the recall denominator.

AP definition (all-point interpolation, as in PASCAL VOC 2010 and later): sort the counted predictions (TP and FP)
of a class over the whole data set by descending score; after the k-th prediction, precision_k = TP_k / k and
recall_k = TP_k / num_GT, with num_GT the number of non-ignored GT. The precision envelope p*(r) is the highest
precision reached at any recall >= r (so it is non-increasing), and 0 beyond the largest recall reached.
AP = the area under p*(r) for r in [0, 1] = sum_k (recall_k - recall_{k-1}) * max_{j >= k} precision_j.
A class with GT but no predictions has AP 0. A class with no (non-ignored) GT in the evaluated set has no AP:
it is NaN in memory and null in JSON, and it is left out of the mean AP (mAP), which is the plain mean over the
classes that have GT.

Range breakdown: the range of a box is the BEV distance of its centre from the sensor origin, sqrt(x^2 + y^2).
Bins are half-open [lo, hi) from `range_edges` (default 0-30 m, 30-50 m, 50 m and beyond; the last bin is
open-ended). Matching is done once on all boxes; then, for a bin:
  num_GT = non-ignored GT whose centre is in the bin,
  TP     = TP whose matched GT is in the bin (wherever the prediction lies),
  FP     = FP whose prediction centre is in the bin.
A TP whose GT lies in another bin does not count in this bin at all (neither TP nor FP). The "all" range uses
every box. A class with no GT in a bin has no AP in that bin and is left out of that bin's mAP.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .boxfile import read_detections, read_ground_truth
from .detections import Detections, GroundTruth
from .geometry import bev_iou_matrix
from .io_utils import json_ready

DISTANCE_THRESHOLDS = (0.5, 1.0, 2.0, 4.0)
DEFAULT_IOU_THRESHOLDS = {"Car": 0.7, "Truck": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
FALLBACK_IOU_THRESHOLD = 0.5
DEFAULT_RANGE_EDGES = (0.0, 30.0, 50.0)
ALL_RANGES = "all"

# Per-prediction outcome codes.
_FP, _TP, _DROPPED = 0, 1, 2


@dataclass
class ClassEval:
    """Results for one class. Dicts keyed by range ("all", then one key per bin) hold NaN where there is no AP."""

    name: str
    num_gt: dict[str, int]  # non-ignored GT per range
    num_ignored_gt: int
    num_predictions: dict[str, int]  # predictions per range, by prediction centre
    distance_ap: dict[str, float]  # mean over distance thresholds
    distance_ap_by_threshold: dict[str, dict[str, float]]  # range -> threshold ("0.5", "1", ...) -> AP
    iou_threshold: float
    iou_ap: dict[str, float]


@dataclass
class EvalResult:
    num_frames: int
    class_names: list[str]
    ranges: list[str]  # "all" first, then the bin labels
    range_edges: list[float]
    distance_thresholds: list[float]
    classes: dict[str, ClassEval]
    distance_map: dict[str, float]  # range -> mean over classes with GT of the distance AP
    distance_map_by_threshold: dict[str, dict[str, float]]  # range -> threshold -> mAP
    iou_map: dict[str, float]  # range -> mean over classes with GT of the IoU AP
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict: NaN (no AP) becomes None."""
        return json_ready(asdict(self))

    @classmethod
    def from_dict(cls, doc: Mapping) -> "EvalResult":
        doc = _none_to_nan(dict(doc))
        doc["classes"] = {name: ClassEval(**c) for name, c in doc["classes"].items()}
        return cls(**doc)

    def format_table(self) -> str:
        return format_table(self)


def restrict_to_region(
    predictions: Sequence[Detections], ground_truths: Sequence[GroundTruth], region: Sequence[float]
) -> tuple[list[Detections], list[GroundTruth]]:
    """Ground truth centred outside `region` (x_min, y_min, x_max, y_max) is marked ignored, predictions centred
    outside it are dropped."""
    x_min, y_min, x_max, y_max = (float(v) for v in region)

    def inside(boxes):
        return (boxes[:, 0] >= x_min) & (boxes[:, 0] < x_max) & (boxes[:, 1] >= y_min) & (boxes[:, 1] < y_max)

    kept = [det.select(inside(det.boxes)) for det in predictions]
    marked = [
        GroundTruth(gt.boxes, gt.labels, gt.class_names, gt.num_points, gt.ignore | ~inside(gt.boxes))
        for gt in ground_truths
    ]
    return kept, marked


def average_precision(scores, is_tp, num_gt: int) -> float:
    """All-point interpolated AP (see the module docstring) of counted predictions against `num_gt` GT.

    `scores` and `is_tp` describe the counted predictions (TP or FP; dropped ones left out). Equal scores keep
    their given order. Returns NaN when num_gt is 0.
    """
    if num_gt <= 0:
        return math.nan
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    if len(scores) != len(is_tp):
        raise ValueError(f"scores and is_tp differ in length: {len(scores)}, {len(is_tp)}")
    if len(is_tp) == 0:
        return 0.0
    is_tp = is_tp[np.argsort(-scores, kind="stable")]
    tp_cum = np.cumsum(is_tp)
    precision = tp_cum / np.arange(1, len(is_tp) + 1)
    recall = tp_cum / num_gt
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * envelope))


def evaluate(
    predictions: Sequence[Detections],
    ground_truths: Sequence[GroundTruth],
    class_names: Sequence[str] | None = None,
    *,
    distance_thresholds: Sequence[float] = DISTANCE_THRESHOLDS,
    iou_thresholds: Mapping[str, float] | None = None,
    range_edges: Sequence[float] = DEFAULT_RANGE_EDGES,
    region: Sequence[float] | None = None,
) -> EvalResult:
    """Evaluate `predictions[i]` against `ground_truths[i]` for every frame i.

    `region` (x_min, y_min, x_max, y_max) restricts the evaluation to the area a detector can see, e.g. its point
    cloud range: ground truth centred outside it becomes ignored and predictions centred outside it are dropped.

    Classes are matched by name. `class_names` lists the classes to evaluate (default: the GT class names in
    order of first appearance, then any further prediction class names); boxes of other classes are left out.
    A box set with an empty `class_names` tuple has labels that index `class_names` directly.
    `iou_thresholds` overrides DEFAULT_IOU_THRESHOLDS per class name.
    """
    matching = _match_all(predictions, ground_truths, class_names, distance_thresholds, iou_thresholds, range_edges,
                          region)
    return _result_of(matching, len(ground_truths))


def evaluate_and_match(
    predictions: Sequence[Detections],
    ground_truths: Sequence[GroundTruth],
    class_names: Sequence[str] | None = None,
    *,
    distance_thresholds: Sequence[float] = DISTANCE_THRESHOLDS,
    iou_thresholds: Mapping[str, float] | None = None,
    range_edges: Sequence[float] = DEFAULT_RANGE_EDGES,
    region: Sequence[float] | None = None,
) -> tuple[EvalResult, "MatchedFrames"]:
    """`evaluate` and `match_frames` (same arguments) from one matching pass."""
    matching = _match_all(predictions, ground_truths, class_names, distance_thresholds, iou_thresholds, range_edges,
                          region)
    return _result_of(matching, len(ground_truths)), _matched_frames_of(matching, ground_truths)


def _result_of(matching: "_Matching", num_frames: int) -> EvalResult:
    class_names, distance_thresholds = matching.class_names, matching.distance_thresholds
    range_keys, edges = matching.range_keys, matching.edges
    classes = {}
    for name, acc in zip(class_names, matching.accumulators):
        classes[name] = acc.result(name, range_keys, distance_thresholds, matching.iou_by_class[name])
    threshold_keys = [_threshold_key(t) for t in distance_thresholds]
    return EvalResult(
        num_frames=num_frames,
        class_names=class_names,
        ranges=range_keys,
        range_edges=edges,
        distance_thresholds=distance_thresholds,
        classes=classes,
        distance_map={r: _nanmean(c.distance_ap[r] for c in classes.values()) for r in range_keys},
        distance_map_by_threshold={
            r: {t: _nanmean(c.distance_ap_by_threshold[r][t] for c in classes.values()) for t in threshold_keys}
            for r in range_keys
        },
        iou_map={r: _nanmean(c.iou_ap[r] for c in classes.values()) for r in range_keys},
    )


@dataclass
class ClassOutcomes:
    """One class's matching outcomes over a data set, kept per frame so that AP can be recomputed on any multiset
    of the frames (a bootstrap resample) without matching boxes again.

    Predictions are in dataset-wide greedy order (descending score, ties in input order), as `evaluate` counts
    them. Criteria are the distance thresholds in order, then the IoU criterion; ranges are "all", then the bins.
    """

    frame: np.ndarray  # (P,) frame index of each prediction
    score: np.ndarray  # (P,)
    pred_bin: np.ndarray  # (P,) range bin of the prediction centre (-1 below the first edge)
    status: np.ndarray  # (criteria, P) outcome per criterion: 0 FP, 1 TP, 2 dropped (matched an ignored GT)
    matched_bin: np.ndarray  # (criteria, P) range bin of the matched GT, -1 if unmatched
    gt_per_frame: np.ndarray  # (ranges, F) non-ignored GT per range and frame

    def counted(self, criterion: int, range_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(frame index, is TP) of the predictions that the AP of this criterion and range counts, in order."""
        keep = _counted(self.status[criterion], self.matched_bin[criterion], self.pred_bin, range_index)
        return self.frame[keep], self.status[criterion][keep] == _TP


@dataclass
class MatchedFrames:
    """Every class's matching outcomes on a set of frames (see `match_frames`)."""

    num_frames: int
    class_names: list[str]
    ranges: list[str]  # "all" first, then the bin labels
    distance_thresholds: list[float]
    classes: dict[str, ClassOutcomes]
    # One digest per frame of its ground truth (boxes, labels, ignore flags): two matchings are of the same frames,
    # in the same order, only if these agree (a paired comparison checks it)
    frame_digests: tuple[str, ...] = ()

    @property
    def iou_criterion(self) -> int:
        return len(self.distance_thresholds)


def match_frames(
    predictions: Sequence[Detections],
    ground_truths: Sequence[GroundTruth],
    class_names: Sequence[str] | None = None,
    *,
    distance_thresholds: Sequence[float] = DISTANCE_THRESHOLDS,
    iou_thresholds: Mapping[str, float] | None = None,
    range_edges: Sequence[float] = DEFAULT_RANGE_EDGES,
    region: Sequence[float] | None = None,
) -> MatchedFrames:
    """The per-frame matching that `evaluate` does (same arguments), returned per prediction instead of as APs."""
    matching = _match_all(predictions, ground_truths, class_names, distance_thresholds, iou_thresholds, range_edges,
                          region)
    return _matched_frames_of(matching, ground_truths)


def ground_truth_digest(gt: GroundTruth) -> str:
    """A short digest of one frame's ground truth: boxes, labels and ignore flags."""
    import hashlib

    digest = hashlib.sha1()
    for array in (gt.boxes.astype(np.float32), gt.labels.astype(np.int64), gt.ignore.astype(bool)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _matched_frames_of(matching: "_Matching", ground_truths: Sequence[GroundTruth]) -> MatchedFrames:
    num_frames = len(ground_truths)
    return MatchedFrames(
        frame_digests=tuple(ground_truth_digest(gt) for gt in ground_truths),
        num_frames=num_frames,
        class_names=matching.class_names,
        ranges=matching.range_keys,
        distance_thresholds=matching.distance_thresholds,
        classes={name: acc.outcomes(num_frames, len(matching.range_keys))
                 for name, acc in zip(matching.class_names, matching.accumulators)},
    )


@dataclass
class _Matching:
    class_names: list[str]
    distance_thresholds: list[float]
    iou_by_class: dict[str, float]
    edges: list[float]
    range_keys: list[str]
    accumulators: list["_ClassAccumulator"]


def _match_all(predictions, ground_truths, class_names, distance_thresholds, iou_thresholds, range_edges,
               region) -> _Matching:
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction frames but {len(ground_truths)} ground-truth frames")
    if region is not None:
        predictions, ground_truths = restrict_to_region(predictions, ground_truths, region)
    distance_thresholds = [float(t) for t in distance_thresholds]
    if not distance_thresholds or not all(math.isfinite(t) and t > 0 for t in distance_thresholds):
        raise ValueError(f"distance thresholds must be positive numbers, got {distance_thresholds}")
    edges = _check_range_edges(range_edges)
    if class_names is None:
        class_names = _class_names_in(list(ground_truths) + list(predictions))
    class_names = list(dict.fromkeys(class_names))
    iou_by_class = _iou_thresholds_for(class_names, iou_thresholds)
    range_keys = [ALL_RANGES] + _range_labels(edges)

    accumulators = [_ClassAccumulator(len(distance_thresholds)) for _ in class_names]
    for frame, (det, gt) in enumerate(zip(predictions, ground_truths)):
        det_class = _class_ids(det.labels, det.class_names, class_names, f"predictions of frame {frame}")
        gt_class = _class_ids(gt.labels, gt.class_names, class_names, f"ground truth of frame {frame}")
        for c, acc in enumerate(accumulators):
            pred_idx = np.flatnonzero(det_class == c)
            pred_idx = pred_idx[np.argsort(-det.scores[pred_idx], kind="stable")]  # greedy order
            gt_idx = np.flatnonzero(gt_class == c)
            acc.add_frame(
                frame,
                det.boxes[pred_idx],
                det.scores[pred_idx],
                gt.boxes[gt_idx],
                gt.ignore[gt_idx],
                distance_thresholds,
                iou_by_class[class_names[c]],
                edges,
            )
    return _Matching(class_names, distance_thresholds, iou_by_class, edges, range_keys, accumulators)


def evaluate_dirs(pred_dir, gt_dir, class_names: Sequence[str] | None = None, **kwargs) -> EvalResult:
    """Evaluate the `<frame_id>.json` box files of `pred_dir` against those of `gt_dir`, paired by file name.

    A GT frame without a prediction file counts as a frame with no predictions (one warning lists them, and the
    result's `warnings` records it); a prediction file without a GT file is an error. Keyword arguments go to
    `evaluate`.
    """
    predictions, ground_truths, notes = read_box_dirs(pred_dir, gt_dir)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    result = evaluate(predictions, ground_truths, class_names, **kwargs)
    result.warnings = notes
    return result


def read_box_dirs(pred_dir, gt_dir) -> tuple[list[Detections], list[GroundTruth], list[str]]:
    """(predictions, ground truths, notes) of the box files of two directories, in GT file name order: what
    `evaluate_dirs` evaluates (see there). The notes say what did not pair up cleanly."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} directory not found: {d}")
    gt_files = {p.stem: p for p in sorted(gt_dir.glob("*.json"))}
    pred_files = {p.stem: p for p in sorted(pred_dir.glob("*.json"))}
    if not gt_files:
        raise ValueError(f"no ground-truth files (*.json) in {gt_dir}")
    orphans = sorted(set(pred_files) - set(gt_files))
    if orphans:
        raise ValueError(f"{len(orphans)} prediction file(s) have no ground truth in {gt_dir}: {_preview(orphans)}")

    notes = []
    missing = [frame for frame in gt_files if frame not in pred_files]
    if missing:
        notes.append(
            f"{len(missing)} of {len(gt_files)} ground-truth frames have no prediction file in {pred_dir} "
            f"and count as frames without detections: {_preview(missing)}"
        )
    ground_truths, predictions = [], []
    for frame, gt_path in gt_files.items():
        gt_frame_id, gt = read_ground_truth(gt_path)
        ground_truths.append(gt)
        if frame in pred_files:
            pred_frame_id, det = read_detections(pred_files[frame])
            if pred_frame_id != gt_frame_id:
                notes.append(
                    f"{frame}.json: frame_id {pred_frame_id!r} in predictions vs {gt_frame_id!r} in ground truth"
                )
            predictions.append(det)
        else:
            predictions.append(Detections.empty(gt.class_names))
    return predictions, ground_truths, notes


def format_table(result: EvalResult) -> str:
    """Readable text tables: distance AP and IoU AP per class and range, then mAP rows."""
    ranges = result.ranges
    thresholds = [_threshold_key(t) for t in result.distance_thresholds]
    name_width = max([len("class"), len("mAP")] + [len(n) for n in result.class_names])

    def cells(values, width=7):
        return "".join(f"{_fmt_ap(v):>{width}}" for v in values)

    def header(extra):
        return f"{'class':<{name_width}} {'GT':>6} {'pred':>6}" + "".join(f"{h:>7}" for h in extra)

    lines = [f"{result.num_frames} frames, {len(result.class_names)} classes; AP in %, '-' = no ground truth"]
    lines.append("")
    lines.append(
        f"Centre-distance AP (BEV centre distance <= {', '.join(thresholds)} m; class AP = mean over thresholds)"
    )
    lines.append(header(ranges + [f"@{t}m" for t in thresholds]))
    for name in result.class_names:
        c = result.classes[name]
        lines.append(
            f"{name:<{name_width}} {c.num_gt[ALL_RANGES]:>6} {c.num_predictions[ALL_RANGES]:>6}"
            + cells(c.distance_ap[r] for r in ranges)
            + cells(c.distance_ap_by_threshold[ALL_RANGES][t] for t in thresholds)
        )
    lines.append(
        f"{'mAP':<{name_width}} {'':>6} {'':>6}"
        + cells(result.distance_map[r] for r in ranges)
        + cells(result.distance_map_by_threshold[ALL_RANGES][t] for t in thresholds)
    )
    lines.append("")
    lines.append("BEV rotated-IoU AP (IoU >= the class threshold)")
    lines.append(header(["IoU>="] + ranges))
    for name in result.class_names:
        c = result.classes[name]
        lines.append(
            f"{name:<{name_width}} {c.num_gt[ALL_RANGES]:>6} {c.num_predictions[ALL_RANGES]:>6}"
            + f"{c.iou_threshold:>7.2f}"
            + cells(c.iou_ap[r] for r in ranges)
        )
    lines.append(f"{'mAP':<{name_width}} {'':>6} {'':>6} {'':>6}" + cells(result.iou_map[r] for r in ranges))
    return "\n".join(lines)


class _ClassAccumulator:
    """Matching outcomes of one class, gathered frame by frame (predictions of a frame in greedy order)."""

    def __init__(self, num_distance_thresholds: int):
        self.scores: list[np.ndarray] = []
        self.pred_bin: list[np.ndarray] = []
        # Per criterion (distance thresholds..., then IoU): matched GT index into this class's GT of all frames, or -1.
        self.matches: list[list[np.ndarray]] = [[] for _ in range(num_distance_thresholds + 1)]
        self.gt_ignore: list[np.ndarray] = []
        self.gt_bin: list[np.ndarray] = []
        self.pred_frame: list[np.ndarray] = []
        self.gt_frame: list[np.ndarray] = []
        self.num_gt_so_far = 0

    def add_frame(self, frame, pred_boxes, pred_scores, gt_boxes, gt_ignore, distance_thresholds, iou_threshold,
                  edges):
        num_pred, num_gt = len(pred_boxes), len(gt_boxes)
        self.pred_frame.append(np.full(num_pred, frame, np.int64))
        self.gt_frame.append(np.full(num_gt, frame, np.int64))
        self.scores.append(np.asarray(pred_scores, np.float64))
        self.pred_bin.append(_range_bin(pred_boxes, edges))
        self.gt_ignore.append(np.asarray(gt_ignore, bool))
        self.gt_bin.append(_range_bin(gt_boxes, edges))
        if num_pred and num_gt:
            pred_xy, gt_xy = pred_boxes[:, :2].astype(np.float64), gt_boxes[:, :2].astype(np.float64)
            distance = np.linalg.norm(pred_xy[:, None, :] - gt_xy[None, :, :], axis=-1)
            iou = bev_iou_matrix(pred_boxes, gt_boxes)
            criteria = [(-distance, distance <= t) for t in distance_thresholds]
            criteria.append((iou, iou >= iou_threshold))
        else:
            criteria = [(None, None)] * len(self.matches)
        for outcome, (quality, eligible) in zip(self.matches, criteria):
            matched = np.full(num_pred, -1, np.int64)
            if quality is not None:
                local = _greedy_match(quality, eligible)
                matched = np.where(local >= 0, local + self.num_gt_so_far, -1)
            outcome.append(matched)
        self.num_gt_so_far += num_gt

    def result(self, name, range_keys, distance_thresholds, iou_threshold) -> ClassEval:
        scores = _concat(self.scores, np.float64)
        pred_bin = _concat(self.pred_bin, np.int64)
        gt_ignore = _concat(self.gt_ignore, bool)
        gt_bin = _concat(self.gt_bin, np.int64)
        order = np.argsort(-scores, kind="stable")  # dataset-wide score order, ties in input order

        def in_range(bins, r):
            return np.ones(len(bins), bool) if r == 0 else bins == r - 1

        num_gt = {key: int(np.sum(~gt_ignore & in_range(gt_bin, r))) for r, key in enumerate(range_keys)}
        num_pred = {key: int(np.sum(in_range(pred_bin, r))) for r, key in enumerate(range_keys)}

        bins_in_order = pred_bin[order]

        def ap_per_range(matched_parts) -> dict[str, float]:
            status, matched_bin = _outcome_of(_concat(matched_parts, np.int64)[order], gt_ignore, gt_bin)
            aps = {}
            for r, key in enumerate(range_keys):
                counted = _counted(status, matched_bin, bins_in_order, r)
                aps[key] = average_precision(scores[order][counted], status[counted] == _TP, num_gt[key])
            return aps

        by_threshold = [ap_per_range(parts) for parts in self.matches[:-1]]
        threshold_keys = [_threshold_key(t) for t in distance_thresholds]
        return ClassEval(
            name=name,
            num_gt=num_gt,
            num_ignored_gt=int(gt_ignore.sum()),
            num_predictions=num_pred,
            distance_ap={key: _nanmean(aps[key] for aps in by_threshold) for key in range_keys},
            distance_ap_by_threshold={
                key: {t: aps[key] for t, aps in zip(threshold_keys, by_threshold)} for key in range_keys
            },
            iou_threshold=float(iou_threshold),
            iou_ap=ap_per_range(self.matches[-1]),
        )


    def outcomes(self, num_frames: int, num_ranges: int) -> ClassOutcomes:
        scores = _concat(self.scores, np.float64)
        order = np.argsort(-scores, kind="stable")  # the order `result` counts predictions in
        gt_ignore, gt_bin = _concat(self.gt_ignore, bool), _concat(self.gt_bin, np.int64)
        gt_frame = _concat(self.gt_frame, np.int64)
        per_criterion = [_outcome_of(_concat(parts, np.int64)[order], gt_ignore, gt_bin) for parts in self.matches]
        gt_per_frame = np.zeros((num_ranges, num_frames), np.int64)
        for r in range(num_ranges):
            in_range = ~gt_ignore if r == 0 else ~gt_ignore & (gt_bin == r - 1)
            gt_per_frame[r] = np.bincount(gt_frame[in_range], minlength=num_frames)
        return ClassOutcomes(
            frame=_concat(self.pred_frame, np.int64)[order],
            score=scores[order],
            pred_bin=_concat(self.pred_bin, np.int64)[order],
            status=np.array([status for status, _ in per_criterion]).reshape(len(self.matches), len(order)),
            matched_bin=np.array([bins for _, bins in per_criterion]).reshape(len(self.matches), len(order)),
            gt_per_frame=gt_per_frame,
        )


def _outcome_of(matched: np.ndarray, gt_ignore: np.ndarray, gt_bin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(status, range bin of the matched GT or -1) of predictions from their matched GT index (-1: none)."""
    status = np.full(len(matched), _FP)
    hit = matched >= 0
    status[hit] = np.where(gt_ignore[matched[hit]], _DROPPED, _TP)
    matched_bin = np.full(len(matched), -1)
    matched_bin[hit] = gt_bin[matched[hit]]
    return status, matched_bin


def _counted(status: np.ndarray, matched_bin: np.ndarray, pred_bin: np.ndarray, range_index: int) -> np.ndarray:
    """Predictions a range's AP counts (module docstring): range 0 ("all") every TP and FP; a bin its TPs whose GT
    lies in it and its FPs centred in it."""
    if range_index == 0:
        return status != _DROPPED
    in_bin = range_index - 1
    return ((status == _TP) & (matched_bin == in_bin)) | ((status == _FP) & (pred_bin == in_bin))


def _greedy_match(quality: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Match rows (predictions, already in greedy order) to columns (GT): each row takes the free eligible column
    with the highest quality; ties go to the lowest column. Returns (P,) column index or -1."""
    matched = np.full(quality.shape[0], -1, np.int64)
    free = np.ones(quality.shape[1], bool)
    for p in np.flatnonzero(eligible.any(axis=1)):  # rows with no eligible GT stay unmatched; skip them
        candidates = eligible[p] & free
        if candidates.any():
            g = int(np.argmax(np.where(candidates, quality[p], -np.inf)))
            matched[p] = g
            free[g] = False
    return matched


def _range_bin(boxes: np.ndarray, edges: list[float]) -> np.ndarray:
    """Index of the range bin of each box centre, -1 if below the first edge."""
    dist = np.hypot(boxes[:, 0].astype(np.float64), boxes[:, 1].astype(np.float64))
    return np.searchsorted(np.asarray(edges), dist, side="right") - 1


def _check_range_edges(range_edges) -> list[float]:
    edges = [float(e) for e in range_edges]
    increasing = all(b > a for a, b in zip(edges, edges[1:]))
    if not edges or not increasing or not all(math.isfinite(e) and e >= 0 for e in edges):
        raise ValueError(f"range edges must be increasing non-negative finite numbers, got {list(range_edges)}")
    return edges


def _range_labels(edges: list[float]) -> list[str]:
    labels = [f"{lo:g}-{hi:g}m" for lo, hi in zip(edges, edges[1:])]
    return labels + [f"{edges[-1]:g}m+"]


def _threshold_key(t: float) -> str:
    return f"{t:g}"


def _iou_thresholds_for(class_names, overrides) -> dict[str, float]:
    table = {**DEFAULT_IOU_THRESHOLDS, **(overrides or {})}
    thresholds = {name: float(table.get(name, FALLBACK_IOU_THRESHOLD)) for name in class_names}
    for name, t in thresholds.items():
        if not 0 < t <= 1:
            raise ValueError(f"IoU threshold for {name!r} must be in (0, 1], got {t}")
    return thresholds


def _class_names_in(box_sets) -> list[str]:
    names = dict.fromkeys(name for s in box_sets for name in s.class_names)
    if not names and any(len(s) for s in box_sets):
        raise ValueError("boxes carry no class names; pass class_names")
    return list(names)


def _class_ids(labels, set_class_names, class_names, what) -> np.ndarray:
    """Map a box set's labels to indices into `class_names` by name; -1 for classes not evaluated."""
    labels = np.asarray(labels, np.int64)
    if not set_class_names:
        if len(labels) and labels.max() >= len(class_names):
            raise ValueError(f"{what}: label {labels.max()} has no class name (box set has no class_names)")
        return labels
    index = {name: i for i, name in enumerate(class_names)}
    lookup = np.array([index.get(name, -1) for name in set_class_names], np.int64)
    return lookup[labels] if len(labels) else labels


def _concat(parts, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def _nanmean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _fmt_ap(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:.1f}"


def _preview(items, limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _none_to_nan(obj):
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: _none_to_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_none_to_nan(v) for v in obj]
    return obj
