"""Synthetic lidar benchmark: procedural street scenes, a ray-cast spinning lidar and exact ground truth.

    from lidar_ptq_core.sim import SimDataset, load_sim_config, generate_frame
    frame = generate_frame(load_sim_config("default"), seed=7)     # SimFrame(frame_id, points (N, 4), gt)
    train = SimDataset("train", 2000, load_sim_config("default"))  # cached on disk, train[i] -> SimFrame

Points are float32 (x, y, z, intensity) in the sensor frame (x forward, y left, z up, the ground at about
z = -sensor height), the KITTI .bin layout. Ground truth boxes are (x, y, z, l, w, h, yaw) with labels into
CLASS_NAMES; see lidar_ptq_core.detections.
"""

from ..render import render_bev
from .config import LidarConfig, ObjectSizes, SceneConfig, SimConfig, SizePrior, load_sim_config, sim_config_from_dict
from .dataset import (
    FRAMES_PER_SPLIT,
    SPLIT_SEED_OFFSETS,
    SimDataset,
    default_cache_root,
    generation_time,
    load_frame,
    save_frame,
    split_frame_id,
    split_seed,
)
from .frame import SimFrame, generate_frame, ground_truth, simulate
from .lidar import Scan, scan
from .scene import CLASS_NAMES, Scene, Terrain, build_scene

SPLITS = tuple(SPLIT_SEED_OFFSETS)

__all__ = [
    "CLASS_NAMES", "FRAMES_PER_SPLIT", "SPLITS", "SPLIT_SEED_OFFSETS", "LidarConfig", "ObjectSizes", "Scan", "Scene",
    "SceneConfig", "SimConfig", "SimDataset", "SimFrame", "SizePrior", "Terrain", "build_scene", "default_cache_root",
    "generate_frame", "generation_time", "ground_truth", "load_frame", "load_sim_config", "render_bev", "save_frame",
    "scan", "sim_config_from_dict", "simulate", "split_frame_id", "split_seed",
]
