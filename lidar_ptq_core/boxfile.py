"""The box file format shared by the simulator, the detector and `lidar-ptq eval`.

One JSON file per frame, named `<frame_id>.json`:

    {
      "format": "lidar-ptq-boxes/1",
      "kind": "ground_truth" | "detections",
      "frame_id": "000042",
      "class_names": ["Car", "Truck", "Pedestrian", "Cyclist"],
      "objects": [
        {"box": [x, y, z, l, w, h, yaw], "label": "Car",
         "score": 0.93,                      # detections only
         "num_points": 120, "ignore": false}  # ground truth only
      ]
    }

Boxes are in the lidar frame (metres, radians), see lidar_ptq_core.detections. Files are validated on read:
a file from elsewhere is untrusted input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .detections import BOX_DIM, Detections, GroundTruth
from .io_utils import write_json_atomic

FORMAT = "lidar-ptq-boxes/1"


def write_ground_truth(path, frame_id: str, gt: GroundTruth) -> None:
    objects = [
        {
            "box": _round_box(gt.boxes[i]),
            "label": gt.class_names[gt.labels[i]],
            "num_points": int(gt.num_points[i]),
            "ignore": bool(gt.ignore[i]),
        }
        for i in range(len(gt))
    ]
    _write(path, "ground_truth", frame_id, gt.class_names, objects)


def write_detections(path, frame_id: str, det: Detections) -> None:
    objects = [
        {"box": _round_box(det.boxes[i]), "label": det.class_names[det.labels[i]],
         "score": round(float(det.scores[i]), 6)}
        for i in range(len(det))
    ]
    _write(path, "detections", frame_id, det.class_names, objects)


def read_ground_truth(path) -> tuple[str, GroundTruth]:
    frame_id, class_names, objects = _read(path, "ground_truth")
    boxes, labels = _boxes_and_labels(path, objects, class_names)
    num_points = [int(o.get("num_points", -1)) for o in objects]
    ignore = [bool(o.get("ignore", False)) for o in objects]
    return frame_id, GroundTruth(boxes, labels, class_names, np.array(num_points, np.int64), np.array(ignore, bool))


def read_detections(path) -> tuple[str, Detections]:
    frame_id, class_names, objects = _read(path, "detections")
    boxes, labels = _boxes_and_labels(path, objects, class_names)
    scores = []
    for i, o in enumerate(objects):
        score = o.get("score")
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"{path}: object {i} has no finite 'score'")
        scores.append(float(score))
    return frame_id, Detections(boxes, np.array(scores, np.float32), labels, class_names)


def _round_box(box) -> list[float]:
    return [round(float(v), 5) for v in box]


def _write(path, kind, frame_id, class_names, objects) -> None:
    write_json_atomic(
        path,
        {"format": FORMAT, "kind": kind, "frame_id": str(frame_id), "class_names": list(class_names),
         "objects": objects},
        indent=None,
    )


def _read(path, kind: str):
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    if doc.get("kind") != kind:
        raise ValueError(f"{path}: holds {doc.get('kind')!r}, expected {kind!r}")
    class_names = doc.get("class_names")
    objects = doc.get("objects")
    if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
        raise ValueError(f"{path}: 'class_names' must be a list of strings")
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        raise ValueError(f"{path}: 'objects' must be a list of objects")
    return str(doc.get("frame_id", path.stem)), tuple(class_names), objects


def _boxes_and_labels(path, objects, class_names):
    index = {name: i for i, name in enumerate(class_names)}
    boxes, labels = [], []
    for i, o in enumerate(objects):
        box = o.get("box")
        if (
            not isinstance(box, list)
            or len(box) != BOX_DIM
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
        ):
            raise ValueError(f"{path}: object {i}: 'box' must be {BOX_DIM} finite numbers (x, y, z, l, w, h, yaw)")
        if o.get("label") not in index:
            raise ValueError(f"{path}: object {i}: label {o.get('label')!r} is not one of {list(class_names)}")
        boxes.append(box)
        labels.append(index[o["label"]])
    return np.array(boxes, np.float32).reshape(-1, BOX_DIM), np.array(labels, np.int64)
