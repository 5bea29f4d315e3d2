"""Calibration frames from where users have them: the sim calib split, a folder of point cloud files, or a rosbag2
bag. Sources holding more frames than asked are sampled evenly over the whole recording (consecutive sweeps are
nearly identical, so a spread-out set covers more scenes), deterministically.

Every frame goes through the model config's point-feature rule (pointcloud/features.py): a missing intensity is
filled as the config says (zeros, reported once) or refused with one error, the same as in detect and the node;
`input_settings` (intensity scale, z offset) correct a sensor unlike the training data.

A multi-sweep model (its config's `sweeps` section, lidar_ptq_core/sweeps.py) is calibrated on accumulated sweeps:
from a bag (or a folder whose file names carry nuScenes-style stamps), each picked frame with the frames just before
it and their time lags, as the node and detect see them (sweeps.py's windows; no poses here: no motion compensation,
said once); the sim split and other folders have no stamps, so their frames stay single sweeps (time lag 0), which
is said too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

POINT_FILE_SUFFIXES = (".bin", ".pcd")


def spread_indices(available: int, wanted: int) -> np.ndarray:
    """`wanted` indices spread evenly over range(available), first and last included (all when fewer exist)."""
    if available <= 0:
        return np.zeros(0, np.int64)
    if wanted >= available:
        return np.arange(available)
    return np.unique(np.round(np.linspace(0, available - 1, wanted)).astype(np.int64))


def sample_clouds(source: str, frames: int = 256, topic: str | None = None, sim_config: str = "default",
                  sim_split: str = "calib", progress: bool = True, sim_start: int = 0):
    """([(where, PointCloud)], description): up to `frames` clouds spread over `source`: 'sim' (frames sim_start,
    sim_start + 1, ... of split `sim_split` of the simulator with config `sim_config`: another calibration window
    for sim_start > 0), a folder of .bin / .pcd files, one such file, or a rosbag2 bag. Every field of every cloud is
    kept."""
    from .pointcloud import PointCloud, is_bag_path, iter_bag_frames, pointcloud2_topics, read_points

    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    if sim_start < 0:
        raise ValueError(f"--sim-start must be >= 0, got {sim_start}")
    if source == "sim":
        from .sim import SimDataset, load_sim_config

        dataset = SimDataset(sim_split, frames, load_sim_config(sim_config), start=sim_start)
        dataset.prepare(num_workers=1, progress=progress)
        clouds = [(f"sim {sim_split} frame {sim_start + i}", PointCloud(dataset[i].points,
                                                                          ("x", "y", "z", "intensity")))
                  for i in range(len(dataset))]
        window = f" from frame {sim_start}" if sim_start else ""
        return clouds, f"{frames} frames of the sim {sim_split} split{window} ({sim_config} sensor)"
    if sim_start:
        raise ValueError(f"--sim-start is for the sim source only, not {source!r}")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"point cloud source {source!r} is neither 'sim' nor an existing folder, file or bag")
    if is_bag_path(path):
        topics = pointcloud2_topics(path)
        if not topics:
            raise ValueError(f"{path}: the bag holds no sensor_msgs/msg/PointCloud2 topic")
        # Two passes: count, then decode only the chosen messages' clouds.
        total = sum(1 for _ in iter_bag_frames(path, topic))
        chosen = set(spread_indices(total, frames).tolist())
        clouds = [(f"{path} message {i}", f.cloud) for i, f in enumerate(iter_bag_frames(path, topic))
                  if i in chosen]
        if not clouds:
            raise ValueError(f"{path}: no point cloud messages on {topic or topics}")
        return clouds, f"{len(clouds)} of {total} messages of bag {path} spread over the recording"
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(POINT_FILE_SUFFIXES))
        if not files:
            raise ValueError(f"{path}: no .bin or .pcd point cloud files")
        picked = [files[i] for i in spread_indices(len(files), frames)]
        return [(str(f), read_points(f)) for f in picked], f"{len(picked)} of {len(files)} files in {path}"
    return [(str(path), read_points(path))], f"the single file {path}"


def calibration_clouds(source: str, frames: int = 256, topic: str | None = None, sim_config: str = "default",
                       progress: bool = True, *, model_config=None, intensity_scale: float = 1.0,
                       z_offset: float = 0.0, sim_start: int = 0,
                       sweep_period: float | None = None) -> tuple[list[np.ndarray], str]:
    """(clouds (N, F) float32 in the model's point-feature order, description). `source`: 'sim', a folder of .bin /
    .pcd files, or a rosbag2 bag (folder or file). `model_config` (a CenterPointConfig) names the point features and
    how a missing one is filled (default: x, y, z, intensity, zeros for a missing intensity). The model's recorded
    input settings and then intensity_scale / z_offset are applied. `sweep_period`: seconds between the files of a
    folder of sequential frames, so that a multi-sweep model calibrates on accumulated sweeps (sweeps.py)."""
    from .pointcloud.features import PointPreparer, default_point_features

    features = model_config.point_features if model_config is not None else default_point_features(4)
    settings = model_input_settings(model_config, intensity_scale, z_offset)
    prepare = PointPreparer(features, settings, notify=lambda text: print(f"note: {text}", file=sys.stderr))
    sweeps = getattr(model_config, "sweeps", None)
    if sweep_period is not None and (sweeps is None or not sweeps.accumulates):
        raise ValueError("--sweep-period is for models that take accumulated sweeps; this one takes single sweeps")
    sequence = _stamped_sequence(source, topic, sweep_period) if sweeps is not None and sweeps.accumulates else None
    if sequence is not None:
        clouds, described = _accumulated_clouds(sequence, source, frames, topic, model_config, prepare, settings)
    else:
        sampled, described = sample_clouds(source, frames, topic, sim_config, progress=progress,
                                           sim_start=sim_start)
        clouds = [prepare(cloud, where) for where, cloud in sampled]
        if sweeps is not None and sweeps.accumulates:
            prepare.notify(f"the model takes {sweeps.count} accumulated sweeps but {source} has no sweep stamps: "
                           "calibrating on single sweeps (time lag 0); a bag, or a folder whose file names carry "
                           "nuScenes-style stamps, gives accumulated sweeps")
    if not settings.is_identity:
        described += f"; input corrected: {settings.describe()}"
    return clouds, described


def _stamped_sequence(source: str, topic: str | None, sweep_period: float | None = None):
    """The frames of a bag, of a folder whose file names carry stamps, or of a folder with `sweep_period`
    (sweeps.frame_sequence): frames that accumulate; None for a source without stamps."""
    from .sweeps import frame_sequence

    if source == "sim" or not Path(source).exists():
        return None
    sequence = frame_sequence(source, topic, sweep_period)
    return sequence if sequence.stamps is not None else None


def _accumulated_clouds(sequence, source: str, frames: int, topic: str | None, model_config, prepare, settings):
    """Each of `frames` frames spread over the source accumulated with the frames before it, as the node and detect
    accumulate them (sweeps.py: the same windows and WindowPreparer); only the frames a window needs are decoded."""
    from .pointcloud import is_bag_path
    from .sweeps import WindowPreparer, iter_sweep_windows

    count = model_config.sweeps.count
    total = len(sequence)
    accumulate = WindowPreparer(model_config, prepare, z_offset=settings.z_offset, notify=prepare.notify)
    clouds, window_sizes = [], []
    for _, window in iter_sweep_windows(sequence, count, spread_indices(total, frames).tolist()):
        clouds.append(accumulate(window))
        window_sizes.append(accumulate.last_sweep_count)
    if not clouds:
        raise ValueError(f"{source}: no point cloud messages on {topic or 'its PointCloud2 topic'}")
    unit, what = ("messages", f"of bag {source}") if is_bag_path(source) else \
        ("files", f"in {source} (stamps: {sequence.stamps})")
    return clouds, (f"{len(clouds)} of {total} {unit} {what} spread over the recording, each with up to "
                    f"{count - 1} {unit} before it as accumulated sweeps ({min(window_sizes)}-{max(window_sizes)} "
                    f"sweeps per sample: those within {model_config.sweeps.max_time_lag:g} s)")


def model_input_settings(model_config, intensity_scale: float = 1.0, z_offset: float = 0.0):
    """The settings a model's points get: those its checkpoint recorded at calibration, then the given ones."""
    from .pointcloud.features import InputSettings

    given = InputSettings(intensity_scale, z_offset)
    recorded = getattr(model_config, "input_settings", None) or InputSettings()
    return recorded.then(given)


def record_input_settings(model, intensity_scale: float = 1.0, z_offset: float = 0.0) -> None:
    """Store the settings calibration used in the model's config, so that the INT8 checkpoint and bundle written
    from it carry them (their embedded config) and detect / check / the node apply them by default."""
    from dataclasses import replace

    model.config = replace(model.config, input_settings=model_input_settings(model.config, intensity_scale, z_offset))
