"""INT8 vs FP32 box agreement: how closely one detector's boxes follow another's on the same frames. Used by
`lidar-ptq bench` and by the demo's node chain (lidar_ptq_ros/chain_report.py)."""

from __future__ import annotations

import numpy as np

AGREEMENT_MIN_SCORE = 0.3  # reference boxes at or above this score are what the other detector should reproduce
AGREEMENT_DISTANCE_M = 1.0  # a box agrees with a reference box of its class whose BEV centre is this close


def count_agreeing(reference, other, max_distance: float = AGREEMENT_DISTANCE_M) -> int:
    """Greedy one-to-one matches of `other`'s boxes (by descending score) to the closest free `reference` box of the
    same class with its BEV centre within max_distance."""
    matched = 0
    for label in np.intersect1d(reference.labels, other.labels):
        centres = reference.boxes[reference.labels == label, :2]
        mine = other.select(other.labels == label)
        free = np.ones(len(centres), bool)
        for centre in mine.boxes[np.argsort(-mine.scores, kind="stable"), :2]:
            distance = np.where(free, np.linalg.norm(centres - centre, axis=1), np.inf)
            best = int(np.argmin(distance))
            if distance[best] <= max_distance:
                free[best] = False
                matched += 1
    return matched


def detection_agreement(reference: list, other: list, class_names,
                        min_score: float = AGREEMENT_MIN_SCORE) -> dict:
    """How closely `other` follows `reference` frame by frame: the share of reference boxes (score >= min_score)
    that `other` reproduces (same class, centre within 1 m), the share of `other`'s boxes with such a reference box,
    and `other`'s centre-distance mAP (%) with the reference's confident boxes as ground truth."""
    from .detections import GroundTruth
    from .evaluate import evaluate

    confident = [(r.select(r.scores >= min_score), o.select(o.scores >= min_score)) for r, o in zip(reference, other)]
    result = {"frames": len(confident), "min_score": min_score,
              "reference_boxes": sum(len(r) for r, _ in confident), "other_boxes": sum(len(o) for _, o in confident)}
    result["matched"] = sum(count_agreeing(r, o) for r, o in confident)
    nan = float("nan")
    result["reference_recall"] = result["matched"] / result["reference_boxes"] if result["reference_boxes"] else nan
    result["other_precision"] = result["matched"] / result["other_boxes"] if result["other_boxes"] else nan
    result["map_vs_reference"] = nan
    if result["reference_boxes"]:
        pseudo = [GroundTruth(r.boxes, r.labels, r.class_names) for r, _ in confident]
        result["map_vs_reference"] = 100 * evaluate(list(other), pseudo, list(class_names)).distance_map["all"]
    return result
