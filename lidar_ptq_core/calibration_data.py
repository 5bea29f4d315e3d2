"""Calibration frames from where users have them: the sim calib split, a folder of point cloud files, or a rosbag2
bag. Sources holding more frames than asked are sampled evenly over the whole recording (consecutive sweeps are
nearly identical, so a spread-out set covers more scenes), deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

POINT_FILE_SUFFIXES = (".bin", ".pcd")
FIELDS = ("x", "y", "z", "intensity")


def spread_indices(available: int, wanted: int) -> np.ndarray:
    """`wanted` indices spread evenly over range(available), first and last included (all when fewer exist)."""
    if available <= 0:
        return np.zeros(0, np.int64)
    if wanted >= available:
        return np.arange(available)
    return np.unique(np.round(np.linspace(0, available - 1, wanted)).astype(np.int64))


def _points_of(cloud, where: str) -> np.ndarray:
    missing = [f for f in FIELDS if not cloud.has_field(f)]
    if missing:
        raise ValueError(f"{where} lacks fields {missing}; calibration needs x, y, z, intensity")
    return cloud.select_fields(FIELDS).points.astype(np.float32)


def calibration_clouds(source: str, frames: int = 256, topic: str | None = None, sim_config: str = "default",
                       progress: bool = True) -> tuple[list[np.ndarray], str]:
    """(clouds, description). `source`: 'sim', a folder of .bin / .pcd files, or a rosbag2 bag (folder or file)."""
    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    if source == "sim":
        from .sim import SimDataset, load_sim_config

        dataset = SimDataset("calib", frames, load_sim_config(sim_config))
        dataset.prepare(num_workers=1, progress=progress)
        return [dataset[i].points for i in range(len(dataset))], f"{frames} frames of the sim calib split"
    from .pointcloud import is_bag_path, iter_bag_frames, pointcloud2_topics, read_points

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"calibration source {source!r} is neither 'sim' nor an existing folder, file or bag")
    if is_bag_path(path):
        topics = pointcloud2_topics(path)
        if not topics:
            raise ValueError(f"{path}: the bag holds no sensor_msgs/msg/PointCloud2 topic")
        # Two passes: count, then decode only the chosen messages' clouds.
        total = sum(1 for _ in iter_bag_frames(path, topic))
        chosen = set(spread_indices(total, frames).tolist())
        clouds = [_points_of(f.cloud, f"{path} message {i}") for i, f in
                  enumerate(iter_bag_frames(path, topic)) if i in chosen]
        if not clouds:
            raise ValueError(f"{path}: no point cloud messages on {topic or topics}")
        return clouds, f"{len(clouds)} of {total} messages of bag {path} spread over the recording"
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(POINT_FILE_SUFFIXES))
        if not files:
            raise ValueError(f"{path}: no .bin or .pcd point cloud files")
        picked = [files[i] for i in spread_indices(len(files), frames)]
        return [_points_of(read_points(f), str(f)) for f in picked], f"{len(picked)} of {len(files)} files in {path}"
    return [_points_of(read_points(path), str(path))], f"the single file {path}"
