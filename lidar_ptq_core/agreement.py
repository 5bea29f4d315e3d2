"""INT8 vs FP32 box agreement: how closely one detector's boxes follow another's on the same frames, without labels.
Used by `lidar-ptq compare`, `lidar-ptq bench`, export's parity check and the demo's node chain
(lidar_ptq_ros/chain_report.py)."""

from __future__ import annotations

import numpy as np

AGREEMENT_MIN_SCORE = 0.3  # reference boxes at or above this score are what the other detector should reproduce
AGREEMENT_DISTANCE_M = 1.0  # a box agrees with a reference box of its class whose BEV centre is this close


def match_boxes(reference, other, max_distance: float = AGREEMENT_DISTANCE_M) -> tuple[np.ndarray, np.ndarray]:
    """(reference matched, other matched) boolean masks of greedy one-to-one matches: `other`'s boxes by descending
    score each take the closest free `reference` box of the same class with its BEV centre within max_distance."""
    reference_matched = np.zeros(len(reference), bool)
    other_matched = np.zeros(len(other), bool)
    for label in np.intersect1d(reference.labels, other.labels):
        reference_rows = np.flatnonzero(reference.labels == label)
        centres = reference.boxes[reference_rows, :2]
        other_rows = np.flatnonzero(other.labels == label)
        free = np.ones(len(centres), bool)
        for row in other_rows[np.argsort(-other.scores[other_rows], kind="stable")]:
            distance = np.where(free, np.linalg.norm(centres - other.boxes[row, :2], axis=1), np.inf)
            best = int(np.argmin(distance))
            if distance[best] <= max_distance:
                free[best] = False
                reference_matched[reference_rows[best]] = True
                other_matched[row] = True
    return reference_matched, other_matched


def count_agreeing(reference, other, max_distance: float = AGREEMENT_DISTANCE_M) -> int:
    """How many of `other`'s boxes match a `reference` box (match_boxes: one to one, same class, centres within
    max_distance)."""
    return int(match_boxes(reference, other, max_distance)[0].sum())


def _share(part: int, whole: int) -> float:
    return part / whole if whole else float("nan")


def detection_agreement(reference: list, other: list, class_names,
                        min_score: float = AGREEMENT_MIN_SCORE, range_edges=None, breakdown: bool = False) -> dict:
    """How closely `other` follows `reference` frame by frame: the share of reference boxes (score >= min_score)
    that `other` reproduces (same class, centre within 1 m), the share of `other`'s boxes with such a reference box,
    and `other`'s centre-distance mAP (%) with the reference's confident boxes as ground truth.

    With `breakdown`, also `per_frame` (counts of each frame), `by_class` and `by_range` (range bins of evaluate.py
    by BEV distance of the box centre: a reference box counts in the bin of its centre, an `other` box in its own; AP
    from the same evaluation)."""
    from .detections import GroundTruth
    from .evaluate import ALL_RANGES, DEFAULT_RANGE_EDGES, _check_range_edges, _range_bin, _range_labels, evaluate

    edges = _check_range_edges(DEFAULT_RANGE_EDGES if range_edges is None else range_edges)
    range_labels = _range_labels(edges)
    class_names = list(class_names)
    confident = [(r.select(r.scores >= min_score), o.select(o.scores >= min_score)) for r, o in zip(reference, other)]
    result = {"frames": len(confident), "min_score": min_score, "max_distance_m": AGREEMENT_DISTANCE_M,
              "reference_boxes": sum(len(r) for r, _ in confident), "other_boxes": sum(len(o) for _, o in confident)}
    tallies = {"class": {}, "range": {}}

    def tally(kind, key, side, boxes_matched):
        entry = tallies[kind].setdefault(key, {"reference_boxes": 0, "reference_matched": 0, "other_boxes": 0,
                                               "other_matched": 0})
        entry[f"{side}_boxes"] += len(boxes_matched)
        entry[f"{side}_matched"] += int(np.sum(boxes_matched))

    per_frame = []
    for r, o in confident:
        r_matched, o_matched = match_boxes(r, o)
        per_frame.append({"reference_boxes": len(r), "other_boxes": len(o), "matched": int(r_matched.sum()),
                          "missed": int(len(r) - r_matched.sum()), "extra": int(len(o) - o_matched.sum())})
        for side, boxes, matched in (("reference", r, r_matched), ("other", o, o_matched)):
            names = [boxes.class_names[label] if boxes.class_names else class_names[label] for label in boxes.labels]
            for name in set(names):
                tally("class", name, side, matched[np.array([n == name for n in names])])
            bins = _range_bin(boxes.boxes, edges) if len(boxes) else np.zeros(0, np.int64)
            for index, label in enumerate(range_labels):
                tally("range", label, side, matched[bins == index])
    result["matched"] = sum(f["matched"] for f in per_frame)
    result["reference_recall"] = _share(result["matched"], result["reference_boxes"])
    result["other_precision"] = _share(result["matched"], result["other_boxes"])
    result["map_vs_reference"] = float("nan")
    evaluation = None
    if result["reference_boxes"]:
        pseudo = [GroundTruth(r.boxes, r.labels, r.class_names) for r, _ in confident]
        evaluation = evaluate(list(other), pseudo, class_names, range_edges=edges)
        result["map_vs_reference"] = 100 * evaluation.distance_map[ALL_RANGES]
    if not breakdown:
        return result
    for f in per_frame:
        f["reference_recall"] = _share(f["matched"], f["reference_boxes"])
    result["per_frame"] = per_frame

    def finish(entry, ap):
        return {**entry, "reference_recall": _share(entry["reference_matched"], entry["reference_boxes"]),
                "other_precision": _share(entry["other_matched"], entry["other_boxes"]), "ap_vs_reference": ap}

    nan = float("nan")
    result["by_class"] = {
        name: finish(tallies["class"][name], 100 * evaluation.classes[name].distance_ap[ALL_RANGES]
                     if evaluation is not None and name in evaluation.classes else nan)
        for name in class_names if name in tallies["class"]}
    result["by_range"] = {
        label: finish(tallies["range"].get(label, {"reference_boxes": 0, "reference_matched": 0, "other_boxes": 0,
                                                   "other_matched": 0}),
                      100 * evaluation.distance_map[label] if evaluation is not None else nan)
        for label in range_labels}
    return result
