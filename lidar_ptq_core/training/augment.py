"""Global scene augmentation applied identically to points and boxes (flip, rotation, scaling)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    flip_y: bool = True  # mirror across the x axis (y -> -y): driving scenes are left/right symmetric
    rotation: float = 0.785  # uniform global yaw in [-rotation, rotation] radians
    scale: tuple[float, float] = (0.95, 1.05)


def augment_scene(
    points: np.ndarray, boxes: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return augmented copies of points (N, C>=3) and boxes (M, 7)."""
    points, boxes = points.copy(), boxes.copy()
    if config.flip_y and rng.random() < 0.5:
        points[:, 1] *= -1
        boxes[:, 1] *= -1
        boxes[:, 6] *= -1
    if config.rotation > 0:
        angle = rng.uniform(-config.rotation, config.rotation)
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -s], [s, c]], np.float32)
        points[:, :2] = points[:, :2] @ rot.T
        boxes[:, :2] = boxes[:, :2] @ rot.T
        boxes[:, 6] += angle
    lo, hi = config.scale
    if hi > lo:
        factor = rng.uniform(lo, hi)
        points[:, :3] *= factor
        boxes[:, :6] *= factor
    boxes[:, 6] = (boxes[:, 6] + np.pi) % (2 * np.pi) - np.pi
    return points, boxes
