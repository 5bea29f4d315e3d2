"""Point cloud I/O: one `PointCloud` type, readers/writers for KITTI .bin, nuScenes .pcd.bin, PCD and rosbag2
PointCloud2 bags, and ROS-free PointCloud2 <-> numpy conversion."""

from .bag import (
    BagFrame,
    is_bag_path,
    iter_bag_frames,
    make_pointcloud2_message,
    pointcloud2_topics,
    read_bag_frame,
    write_bag_frames,
)
from .binfile import (
    KITTI_FIELDS,
    NUSCENES_FIELDS,
    read_float32_records,
    read_kitti_bin,
    read_nuscenes_bin,
    write_float32_records,
    write_kitti_bin,
    write_nuscenes_bin,
)
from .cloud import INTENSITY_ALIASES, MissingFieldError, PointCloud, canonical_field_names
from .formats import FORMATS, detect_format, read_points, write_points
from .pcd import encode_pcd, parse_pcd_header, read_pcd, write_pcd
from .pointcloud2 import (
    PointFieldSpec,
    array_to_pointcloud2_fields,
    pointcloud2_dtype,
    pointcloud2_message_fields,
    pointcloud2_to_array,
)

__all__ = [
    "BagFrame", "FORMATS", "INTENSITY_ALIASES", "KITTI_FIELDS", "MissingFieldError", "NUSCENES_FIELDS", "PointCloud",
    "PointFieldSpec", "array_to_pointcloud2_fields", "pointcloud2_message_fields", "canonical_field_names",
    "detect_format", "encode_pcd",
    "is_bag_path", "iter_bag_frames", "make_pointcloud2_message", "parse_pcd_header", "pointcloud2_dtype",
    "pointcloud2_to_array", "pointcloud2_topics", "read_bag_frame", "read_float32_records", "read_kitti_bin",
    "read_nuscenes_bin", "read_pcd", "read_points", "write_bag_frames", "write_float32_records",
    "write_kitti_bin", "write_nuscenes_bin", "write_pcd", "write_points",
]
