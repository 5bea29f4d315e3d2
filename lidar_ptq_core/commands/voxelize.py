"""`lidar-ptq voxelize FILE`: voxelize one point cloud file and report what was kept and dropped."""

from __future__ import annotations

import json

from ..config_files import load_yaml, resolve_config
from ..pointcloud import read_points
from ..voxelize import VoxelConfig, voxelize


def add_arguments(parser) -> None:
    parser.add_argument("file", help="point cloud: KITTI .bin, nuScenes .pcd.bin, .pcd, or a rosbag2 bag (first frame)")
    parser.add_argument(
        "--config",
        default="sim_pillar",
        help="model config name (config/models/NAME.yaml) or a YAML file with a `voxelization:` section "
        "(default: sim_pillar)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def voxel_config_from(name_or_path: str) -> VoxelConfig:
    data = load_yaml(resolve_config(name_or_path, "models"))
    section = data.get("voxelization", data)
    return VoxelConfig.from_dict(section)


def run(args) -> int:
    config = voxel_config_from(args.config)
    cloud = read_points(args.file)
    voxels = voxelize(cloud.points, config)
    report = voxels.report
    if args.json:
        print(json.dumps({**report.__dict__, "grid_size": list(voxels.grid_size), "fields": list(cloud.fields)}))
    else:
        nx, ny, nz = voxels.grid_size
        print(f"{args.file}: fields {', '.join(cloud.fields)}; grid {nx} x {ny} x {nz}")
        print(report.summary())
    return 0
