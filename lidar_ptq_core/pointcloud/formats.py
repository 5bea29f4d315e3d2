"""`read_points` / `write_points`: pick the reader or writer from the file name (or an explicit `fmt`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .bag import is_bag_path, read_bag_frame
from .binfile import read_kitti_bin, read_nuscenes_bin, write_kitti_bin, write_nuscenes_bin
from .cloud import PointCloud
from .pcd import read_pcd, write_pcd

FORMATS = ("kitti", "nuscenes", "pcd", "bag")
_ALIASES = {"bin": "kitti", "pcd.bin": "nuscenes", "rosbag": "bag", "rosbag2": "bag", "mcap": "bag", "db3": "bag"}


def detect_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """One of FORMATS: `fmt` if given, else from the name (.pcd.bin nuscenes, .bin kitti, .pcd, bag dir/.db3/.mcap)."""
    if fmt is not None:
        key = _ALIASES.get(fmt.lower(), fmt.lower())
        if key not in FORMATS:
            raise ValueError(f"unknown point cloud format {fmt!r}; expected one of {', '.join(FORMATS)}")
        return key
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".pcd.bin"):
        return "nuscenes"
    if name.endswith(".bin"):
        return "kitti"
    if name.endswith(".pcd"):
        return "pcd"
    if is_bag_path(path):
        return "bag"
    if path.is_dir():
        raise ValueError(f"{path}: a directory but not a rosbag2 bag (no metadata.yaml)")
    raise ValueError(
        f"{path}: cannot tell the point cloud format from the name; use .bin (KITTI), .pcd.bin (nuScenes), "
        f".pcd, a rosbag2 directory, .db3 or .mcap, or pass fmt= one of {', '.join(FORMATS)}"
    )


def read_points(
    path: str | os.PathLike,
    fmt: str | None = None,
    *,
    field_names: Iterable[str] | None = None,
    topic: str | None = None,
    frame_index: int = 0,
) -> PointCloud:
    """Read one point cloud. For a bag: frame `frame_index` of `topic` (see `iter_bag_frames` for all frames).

    field_names, if given, selects and orders the channels (intensity aliases resolve).
    """
    kind = detect_format(path, fmt)
    if kind == "bag":
        return read_bag_frame(path, topic, frame_index, field_names=field_names).cloud
    reader = {"kitti": read_kitti_bin, "nuscenes": read_nuscenes_bin, "pcd": read_pcd}[kind]
    cloud = reader(path)
    return cloud if field_names is None else cloud.select_fields(field_names)


def write_points(path: str | os.PathLike, cloud: PointCloud, fmt: str | None = None, *,
                 pcd_data: str = "binary") -> None:
    """Write one point cloud file atomically: KITTI .bin, nuScenes .pcd.bin or PCD (pcd_data ascii, binary or
    binary_compressed).

    Bags hold frame sequences: use `write_bag_frames` for those.
    """
    kind = detect_format(path, fmt)
    if kind == "kitti":
        write_kitti_bin(path, cloud)
    elif kind == "nuscenes":
        write_nuscenes_bin(path, cloud)
    elif kind == "pcd":
        write_pcd(path, cloud, pcd_data)
    else:
        raise ValueError(f"{path}: write_points writes single-cloud files; use write_bag_frames for a bag")
