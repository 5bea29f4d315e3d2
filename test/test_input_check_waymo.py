"""`lidar-ptq check` against the Waymo pillar config's ground height: Waymo's vehicle frame has the road at z = 0,
a KITTI-like lidar frame near -1.7 m. Frames from a sensor's own frame are named with the z offset that lifts their
ground to the model's; frames already in a vehicle frame pass. Synthetic frames (the sim sensor at 1.75 m) always,
the real KITTI frames of ../shared/data when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lidar_ptq_core.cli import main
from lidar_ptq_core.commands.check import read_model_config, run_check
from lidar_ptq_core.pointcloud import PointCloud, write_points
from lidar_ptq_core.pointcloud.input_check import reference_statistics
from lidar_ptq_core.sim import SimDataset, load_sim_config

KITTI = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti_frames"
WAYMO = "waymo_centerpoint_pillar_1x"
FRAMES = 3


@pytest.fixture(scope="module")
def waymo():
    return read_model_config(WAYMO)


@pytest.fixture(scope="module")
def sim_folders(tmp_path_factory):
    """The sim sensor's frames as recorded (lidar 1.75 m above the road) and lifted into a vehicle-like frame."""
    root = tmp_path_factory.mktemp("waymo_check")
    clouds = [SimDataset("val", FRAMES, load_sim_config("default"))[i].points for i in range(FRAMES)]
    folders = {}
    for name, dz in (("lidar_frame", 0.0), ("vehicle_frame", 1.75)):
        folders[name] = root / name
        folders[name].mkdir()
        for i, points in enumerate(clouds):
            shifted = points[:, :4].copy()
            shifted[:, 2] += dz
            write_points(folders[name] / f"{i:06d}.bin", PointCloud(shifted, ("x", "y", "z", "intensity")))
    return {name: str(path) for name, path in folders.items()}


def kinds(result) -> dict[str, str]:
    return {p.kind: p.line() for p in result["problems"]}


def offset_of(problem_line: str) -> float:
    return float(problem_line.split("--z-offset ")[1])


def test_the_waymo_config_expects_the_ground_at_zero(waymo):
    reference = reference_statistics(waymo.name)
    assert reference is not None and reference.ground_z == 0.0


def test_lidar_frames_are_named_with_the_offset_to_the_vehicle_frame(waymo, sim_folders, capsys):
    result = run_check(sim_folders["lidar_frame"], waymo)
    problems = kinds(result)
    assert set(problems) == {"fields", "ground"}, problems  # fields: the sim sensor has no elongation
    assert -1.9 < result["stats"].ground_z < -1.6
    assert "the model expects 0.00 m" in problems["ground"]
    assert 1.6 <= offset_of(problems["ground"]) <= 1.9
    # the fix check printed clears the problem
    fixed = kinds(run_check(sim_folders["lidar_frame"], waymo, z_offset=offset_of(problems["ground"])))
    assert set(fixed) == {"fields"}, fixed
    # the CLI says it and exits 1
    assert main(["check", sim_folders["lidar_frame"], "--model", WAYMO]) == 1
    assert "problem: ground at z=" in capsys.readouterr().out


def test_frames_in_a_vehicle_frame_pass_the_ground_check(waymo, sim_folders):
    result = run_check(sim_folders["vehicle_frame"], waymo)
    assert "ground" not in kinds(result)
    assert abs(result["stats"].ground_z) < 0.2


@pytest.mark.skipif(not KITTI.is_dir(), reason=f"real KITTI frames not found at {KITTI}")
def test_real_kitti_frames_meet_the_waymo_model(waymo):
    """HDL-64E 1.73 m above the road: check names about +1.7 m; with it, the ground matches."""
    result = run_check(str(KITTI), waymo, frames=4)
    problems = kinds(result)
    assert "ground" in problems, problems
    offset = offset_of(problems["ground"])
    assert 1.5 <= offset <= 1.9
    lifted = run_check(str(KITTI), waymo, frames=4, z_offset=offset)
    assert "ground" not in kinds(lifted)
    assert np.isclose(lifted["stats"].ground_z, 0.0, atol=0.15)
