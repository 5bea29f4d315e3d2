"""Headerless float32 record files: KITTI Velodyne `.bin` (x, y, z, intensity) and nuScenes `.pcd.bin` (+ ring)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io_utils import write_bytes_atomic
from .cloud import PointCloud

KITTI_FIELDS = ("x", "y", "z", "intensity")
NUSCENES_FIELDS = ("x", "y", "z", "intensity", "ring")


def read_float32_records(path: str | os.PathLike, fields: Sequence[str]) -> PointCloud:
    """Read a file of little-endian float32 records of len(fields) values each."""
    path = Path(path)
    fields = tuple(fields)
    record_size = 4 * len(fields)
    size = path.stat().st_size  # FileNotFoundError names the path
    if size % record_size:
        raise ValueError(
            f"{path}: {size} bytes is not a multiple of the {record_size}-byte record "
            f"({len(fields)} float32: {', '.join(fields)}); the file is truncated or not this format"
        )
    raw = np.fromfile(path, dtype="<f4")
    if raw.size * 4 != size:  # the file changed under us
        raise ValueError(f"{path}: read {raw.size * 4} bytes, expected {size}")
    return PointCloud(raw.reshape(-1, len(fields)).astype(np.float32, copy=False), fields)


def write_float32_records(path: str | os.PathLike, cloud: PointCloud, fields: Sequence[str]) -> None:
    """Write `fields` of `cloud` (any intensity alias serves as intensity) as little-endian float32 records."""
    data = cloud.select_fields(fields).points.astype("<f4", copy=False)
    write_bytes_atomic(path, data.tobytes())


def read_kitti_bin(path: str | os.PathLike) -> PointCloud:
    return read_float32_records(path, KITTI_FIELDS)


def write_kitti_bin(path: str | os.PathLike, cloud: PointCloud) -> None:
    write_float32_records(path, cloud, KITTI_FIELDS)


def read_nuscenes_bin(path: str | os.PathLike) -> PointCloud:
    return read_float32_records(path, NUSCENES_FIELDS)


def write_nuscenes_bin(path: str | os.PathLike, cloud: PointCloud) -> None:
    write_float32_records(path, cloud, NUSCENES_FIELDS)
