"""Box sets shared by every stage downstream of the network: decoded detections and ground truth.

Boxes are (x, y, z, l, w, h, yaw) in the lidar frame: x forward, y left, z up, metres; (x, y, z) is the box centre,
l runs along the heading, yaw is the heading angle about z in radians (counter-clockwise from +x).
Labels are indices into a class-name list that travels with the set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BOX_DIM = 7


def _as_boxes(boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        return np.zeros((0, BOX_DIM), np.float32)
    if arr.ndim != 2 or arr.shape[1] != BOX_DIM:
        raise ValueError(f"boxes must have shape (N, {BOX_DIM}) as x, y, z, l, w, h, yaw; got {arr.shape}")
    return arr


@dataclass
class Detections:
    """Detector output for one frame."""

    boxes: np.ndarray  # (N, 7) float32
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64, index into class_names
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.boxes = _as_boxes(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.class_names = tuple(self.class_names)
        if not (len(self.boxes) == len(self.scores) == len(self.labels)):
            raise ValueError(
                f"boxes, scores and labels differ in length: {len(self.boxes)}, {len(self.scores)}, {len(self.labels)}"
            )
        _check_labels(self.labels, self.class_names)

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, class_names=()) -> "Detections":
        return cls(np.zeros((0, BOX_DIM), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), class_names)

    def select(self, mask) -> "Detections":
        return Detections(self.boxes[mask], self.scores[mask], self.labels[mask], self.class_names)


@dataclass
class GroundTruth:
    """Annotated boxes for one frame. `ignore` marks boxes evaluation must neither reward nor punish
    (too few lidar points to be detectable)."""

    boxes: np.ndarray  # (N, 7) float32
    labels: np.ndarray  # (N,) int64, index into class_names
    class_names: tuple[str, ...] = ()
    num_points: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) lidar points inside each box
    ignore: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (N,)

    def __post_init__(self) -> None:
        self.boxes = _as_boxes(self.boxes)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.class_names = tuple(self.class_names)
        self.num_points = np.asarray(self.num_points, dtype=np.int64).reshape(-1)
        self.ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        if len(self.num_points) == 0 and n:
            self.num_points = np.full(n, -1, np.int64)  # unknown
        if len(self.ignore) == 0 and n:
            self.ignore = np.zeros(n, bool)
        if not (n == len(self.labels) == len(self.num_points) == len(self.ignore)):
            raise ValueError("boxes, labels, num_points and ignore differ in length")
        _check_labels(self.labels, self.class_names)

    def __len__(self) -> int:
        return len(self.boxes)


def _check_labels(labels: np.ndarray, class_names: tuple[str, ...]) -> None:
    if len(labels) and class_names and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"label index out of range for {len(class_names)} classes: {labels.min()}..{labels.max()}")
