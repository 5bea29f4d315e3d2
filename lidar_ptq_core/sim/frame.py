"""One simulated frame: scene + sweep + ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..detections import GroundTruth
from .config import SimConfig
from .lidar import Scan, scan
from .scene import CLASS_NAMES, Scene, build_scene


@dataclass
class SimFrame:
    frame_id: str
    points: np.ndarray  # (N, 4) float32 x, y, z, intensity in the sensor frame
    gt: GroundTruth


def ground_truth(scene: Scene, sweep: Scan, min_points: int) -> GroundTruth:
    """Boxes of every annotated object; num_points counts all returns inside the box (as nuScenes/Waymo do);
    ignore marks boxes with fewer than min_points, and objects no ray reached at all (fully occluded)."""
    boxes, labels = scene.object_array()
    num_points = sweep.count_in_boxes(boxes)  # float32 boxes, exactly as stored in the GroundTruth
    visible = sweep.hits_per_object(len(boxes))
    ignore = (num_points < min_points) | (visible == 0)
    return GroundTruth(boxes, labels, CLASS_NAMES, num_points, ignore)


def simulate(config: SimConfig, seed: int) -> tuple[Scene, Scan]:
    """The scene and sweep of one seed (for callers that want more than points and boxes)."""
    rng = np.random.default_rng(seed)
    scene = build_scene(config.scene, config.lidar.sensor_height_m, rng)
    return scene, scan(scene, config.lidar, rng)


def generate_frame(config: SimConfig, seed: int, frame_id: str | None = None) -> SimFrame:
    """A deterministic frame: the same config and seed always give identical points and boxes."""
    scene, sweep = simulate(config, seed)
    frame_id = frame_id if frame_id is not None else f"seed_{seed}"
    return SimFrame(frame_id, sweep.points, ground_truth(scene, sweep, config.min_points))
