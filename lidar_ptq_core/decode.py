"""CenterPoint head outputs -> boxes, shared by every backend (PyTorch float, fake-quant, ONNX Runtime, ...).

Input is the plain head output of each task: a mapping name -> (B, C, H, W) array or tensor with `hm` (class logits),
`center` (2: offset of the centre inside its feature-map cell, x then y), `center_z` (1: metres), `dim` (3: log l, w,
h) and `rot` (2: cos/sin of yaw in the configured order); extra heads such as `vel` are ignored. Everything here is
numpy so a backend needs no torch; torch tensors are accepted and copied to host.

Steps per task and frame: top-K (class, cell) pairs on the logits (sigmoid is monotonic, so only K values go through
it) -> boxes in metres -> score threshold and centre range limit -> NMS within the task -> at most
`nms.post_max_size` boxes. The tasks of a frame are then merged and cut to `max_boxes` by score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .config_files import build_config
from .detections import BOX_DIM, Detections

ROT_ORDERS = ("cos_sin", "sin_cos")  # OpenPCDet stores (cos, sin); det3d / mmdet3d store (sin, cos)
NMS_TYPES = ("rotated", "circle", "none")
NMS_SCOPES = ("task", "class")


@dataclass(frozen=True)
class NMSConfig:
    """Non-maximum suppression inside each head task.

    type: "rotated" (BEV IoU above `iou_threshold` suppresses), "circle" (a centre closer than the radius of the kept
    box's class suppresses; `radius` maps class name -> metres, a true distance, whereas det3d's `min_radius` values
    are squared distances), or "none". scope: "task" suppresses across the classes of a task (OpenPCDet's
    class-agnostic NMS per head), "class" only among boxes of the same class.
    """

    type: str = "rotated"
    iou_threshold: float = 0.7
    radius: Mapping[str, float] = field(default_factory=dict)
    scope: str = "task"
    pre_max_size: int = 4096  # highest-scoring candidates entering NMS, per task
    post_max_size: int = 500  # boxes kept after NMS, per task

    def __post_init__(self) -> None:
        if self.type not in NMS_TYPES:
            raise ValueError(f"nms.type must be one of {NMS_TYPES}, got {self.type!r}")
        if self.scope not in NMS_SCOPES:
            raise ValueError(f"nms.scope must be one of {NMS_SCOPES}, got {self.scope!r}")
        if not 0.0 <= float(self.iou_threshold) <= 1.0:
            raise ValueError(f"nms.iou_threshold must be in [0, 1], got {self.iou_threshold}")
        if int(self.pre_max_size) < 1 or int(self.post_max_size) < 1:
            raise ValueError("nms.pre_max_size and nms.post_max_size must be >= 1")
        radius = {str(k): float(v) for k, v in dict(self.radius).items()}
        if any(v < 0 for v in radius.values()):
            raise ValueError(f"nms.radius values must be >= 0 metres, got {radius}")
        object.__setattr__(self, "radius", radius)
        object.__setattr__(self, "iou_threshold", float(self.iou_threshold))
        object.__setattr__(self, "pre_max_size", int(self.pre_max_size))
        object.__setattr__(self, "post_max_size", int(self.post_max_size))

    @classmethod
    def from_dict(cls, data: Mapping) -> "NMSConfig":
        return build_config(cls, data, "post_processing.nms")

    def to_dict(self) -> dict:
        return {
            "type": self.type,
            "iou_threshold": self.iou_threshold,
            "radius": dict(self.radius),
            "scope": self.scope,
            "pre_max_size": self.pre_max_size,
            "post_max_size": self.post_max_size,
        }


@dataclass(frozen=True)
class DecodeConfig:
    """The `post_processing` section of a model config."""

    score_threshold: float = 0.1  # strictly greater than keeps a box (OpenPCDet)
    post_center_limit_range: tuple[float, ...] = (-80.0, -80.0, -10.0, 80.0, 80.0, 10.0)  # x,y,z min then max
    max_obj_per_sample: int = 500  # top-K per task and frame
    rot_order: str = "cos_sin"
    nms: NMSConfig = field(default_factory=NMSConfig)
    max_boxes: int = 500  # per frame, after merging the tasks

    def __post_init__(self) -> None:
        limit = tuple(float(v) for v in self.post_center_limit_range)
        if len(limit) != 6 or not all(limit[i] <= limit[i + 3] for i in range(3)):
            raise ValueError(f"post_center_limit_range must be 6 numbers, min <= max per axis; got {limit}")
        if self.rot_order not in ROT_ORDERS:
            raise ValueError(f"rot_order must be one of {ROT_ORDERS}, got {self.rot_order!r}")
        if int(self.max_obj_per_sample) < 1 or int(self.max_boxes) < 1:
            raise ValueError("max_obj_per_sample and max_boxes must be >= 1")
        nms = self.nms if isinstance(self.nms, NMSConfig) else NMSConfig.from_dict(self.nms)
        object.__setattr__(self, "post_center_limit_range", limit)
        object.__setattr__(self, "score_threshold", float(self.score_threshold))
        object.__setattr__(self, "max_obj_per_sample", int(self.max_obj_per_sample))
        object.__setattr__(self, "max_boxes", int(self.max_boxes))
        object.__setattr__(self, "nms", nms)

    @classmethod
    def from_dict(cls, data: Mapping) -> "DecodeConfig":
        return build_config(cls, data, "post_processing")

    def to_dict(self) -> dict:
        return {
            "score_threshold": self.score_threshold,
            "post_center_limit_range": list(self.post_center_limit_range),
            "max_obj_per_sample": self.max_obj_per_sample,
            "rot_order": self.rot_order,
            "nms": self.nms.to_dict(),
            "max_boxes": self.max_boxes,
        }


@dataclass(frozen=True)
class HeadGeometry:
    """Where the head's feature-map cells lie in the lidar frame, and which classes each task predicts.

    Cell (row j, column i) covers x in [x_min + i * cell_x, x_min + (i + 1) * cell_x), likewise y with rows; a box
    centre decodes as x = x_min + (i + center_x) * cell_x. The attribute names x_min, y_min, cell_x, cell_y, width,
    height are the ones the training target encoder reads.
    """

    point_cloud_range: tuple[float, float, float, float, float, float]
    voxel_size: tuple[float, float, float]
    out_size_factor: int  # feature-map cell = out_size_factor voxels along x and y
    feature_map_size: tuple[int, int]  # (height = rows along y, width = columns along x)
    task_class_names: tuple[tuple[str, ...], ...]  # heatmap channel order of each task

    def __post_init__(self) -> None:
        object.__setattr__(self, "point_cloud_range", tuple(float(v) for v in self.point_cloud_range))
        object.__setattr__(self, "voxel_size", tuple(float(v) for v in self.voxel_size))
        object.__setattr__(self, "feature_map_size", tuple(int(v) for v in self.feature_map_size))
        object.__setattr__(self, "task_class_names", tuple(tuple(t) for t in self.task_class_names))
        object.__setattr__(self, "out_size_factor", int(self.out_size_factor))

    @property
    def class_names(self) -> tuple[str, ...]:
        """Global class list: the tasks' classes in task order (labels of decoded boxes index this)."""
        return tuple(name for task in self.task_class_names for name in task)

    @property
    def x_min(self) -> float:
        return self.point_cloud_range[0]

    @property
    def y_min(self) -> float:
        return self.point_cloud_range[1]

    @property
    def cell_x(self) -> float:
        return self.voxel_size[0] * self.out_size_factor

    @property
    def cell_y(self) -> float:
        return self.voxel_size[1] * self.out_size_factor

    @property
    def height(self) -> int:
        return self.feature_map_size[0]

    @property
    def width(self) -> int:
        return self.feature_map_size[1]

    def grid_to_metres(self, cols, rows) -> tuple[np.ndarray, np.ndarray]:
        """Continuous feature-map coordinates (column + offset, row + offset) -> (x, y) metres."""
        x = np.asarray(cols, np.float64) * self.cell_x + self.x_min
        y = np.asarray(rows, np.float64) * self.cell_y + self.y_min
        return x, y

    def metres_to_grid(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) metres -> continuous (column, row); floor gives the cell, the remainder the centre offset."""
        cols = (np.asarray(x, np.float64) - self.x_min) / self.cell_x
        rows = (np.asarray(y, np.float64) - self.y_min) / self.cell_y
        return cols, rows


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor: avoid importing torch here
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def decode_task(
    task_output: Mapping[str, object], frame: int, geometry: HeadGeometry, task: int, config: DecodeConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (N, 7), scores (N,), global labels (N,) of one task in one frame, before NMS."""
    heatmap = _to_numpy(task_output["hm"])[frame]  # (C, H, W) logits
    num_classes, height, width = heatmap.shape
    if num_classes != len(geometry.task_class_names[task]):
        raise ValueError(
            f"task {task} heatmap has {num_classes} channels but the geometry lists classes "
            f"{geometry.task_class_names[task]}"
        )
    flat = heatmap.reshape(-1)
    k = min(config.max_obj_per_sample, flat.size)
    candidates = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    # Sort by logit, ties by index, so the output never depends on argpartition's internal order.
    candidates = candidates[np.lexsort((candidates, -flat[candidates]))]
    scores = _sigmoid(flat[candidates])
    channel, cell = np.divmod(candidates, height * width)
    rows, cols = np.divmod(cell, width)

    def gather(name: str) -> np.ndarray:  # (N, C) values of head `name` at the candidate cells
        values = _to_numpy(task_output[name])[frame]
        return values[:, rows, cols].T

    center, center_z, dim, rot = gather("center"), gather("center_z"), gather("dim"), gather("rot")
    x, y = geometry.grid_to_metres(cols + center[:, 0], rows + center[:, 1])
    cos, sin = (rot[:, 0], rot[:, 1]) if config.rot_order == "cos_sin" else (rot[:, 1], rot[:, 0])
    boxes = np.stack([x, y, center_z[:, 0], *np.exp(dim.astype(np.float64)).T, np.arctan2(sin, cos)], axis=1)

    limit = np.asarray(config.post_center_limit_range)
    keep = scores > config.score_threshold
    keep &= np.all((boxes[:, :3] >= limit[:3]) & (boxes[:, :3] <= limit[3:]), axis=1)
    first_label = sum(len(t) for t in geometry.task_class_names[:task])
    return boxes[keep].astype(np.float32), scores[keep], (channel[keep] + first_label).astype(np.int64)


def nms_keep(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, config: NMSConfig, class_names: Sequence[str]
) -> np.ndarray:
    """Indices of the boxes NMS keeps, highest score first. Boxes are (N, 7); labels index class_names."""
    order = np.argsort(-scores, kind="stable")[: config.pre_max_size]
    if config.type == "none" or len(order) == 0:
        return order[: config.post_max_size]
    boxes, labels = np.asarray(boxes, np.float64)[order], np.asarray(labels)[order]
    same_group = (
        labels[:, None] == labels[None, :] if config.scope == "class" else np.ones((len(order),) * 2, dtype=bool)
    )
    if config.type == "circle":
        missing = {class_names[i] for i in np.unique(labels)} - set(config.radius)
        if missing:
            raise ValueError(f"circle NMS needs nms.radius for classes {sorted(missing)}")
        radius = np.array([config.radius[class_names[i]] for i in labels])
        dist2 = ((boxes[:, None, :2] - boxes[None, :, :2]) ** 2).sum(-1)
        suppresses = dist2 <= (radius**2)[:, None]  # row i (kept) suppresses column j within i's radius
    else:
        from .geometry import bev_iou_matrix

        suppresses = bev_iou_matrix(boxes, boxes) > config.iou_threshold
    suppresses &= same_group

    kept, removed = [], np.zeros(len(order), dtype=bool)
    for i in range(len(order)):  # greedy in score order; rows are precomputed so this loop is cheap
        if removed[i]:
            continue
        kept.append(i)
        if len(kept) == config.post_max_size:
            break
        removed |= suppresses[i]
    return order[np.asarray(kept, dtype=np.int64)]


def decode_frame(
    head_outputs: Sequence[Mapping[str, object]], geometry: HeadGeometry, config: DecodeConfig, frame: int = 0
) -> Detections:
    """Detections of one frame of a batch of head outputs (one mapping per task)."""
    if len(head_outputs) != len(geometry.task_class_names):
        raise ValueError(f"got {len(head_outputs)} task outputs, geometry has {len(geometry.task_class_names)} tasks")
    class_names = geometry.class_names
    all_boxes, all_scores, all_labels = [], [], []
    for task, task_output in enumerate(head_outputs):
        boxes, scores, labels = decode_task(task_output, frame, geometry, task, config)
        keep = nms_keep(boxes, scores, labels, config.nms, class_names)
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
        all_labels.append(labels[keep])
    boxes = np.concatenate(all_boxes).reshape(-1, BOX_DIM)
    scores, labels = np.concatenate(all_scores), np.concatenate(all_labels)
    best = np.argsort(-scores, kind="stable")[: config.max_boxes]
    return Detections(boxes[best], scores[best], labels[best], class_names)


def decode_batch(
    head_outputs: Sequence[Mapping[str, object]], geometry: HeadGeometry, config: DecodeConfig
) -> list[Detections]:
    """Detections of every frame; the batch size is read from the first task's heatmap."""
    batch_size = _to_numpy(head_outputs[0]["hm"]).shape[0]
    host = [{name: _to_numpy(value) for name, value in task.items()} for task in head_outputs]  # copy to host once
    return [decode_frame(host, geometry, config, frame) for frame in range(batch_size)]
