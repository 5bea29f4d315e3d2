"""`lidar-ptq check`: sim frames of the training sensor pass; synthetic variants of known mismatch (intensity x 255,
z shifted by 1.5 m, x y z only, the 32-beam sensor) are each named with their fix; real KITTI and Argoverse frames
(../shared/data, skipped when absent) get what they really differ in; bad input is one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lidar_ptq_core.cli import main
from lidar_ptq_core.commands.check import read_model_config, run_check
from lidar_ptq_core.pointcloud import PointCloud, write_points
from lidar_ptq_core.pointcloud.input_check import ground_height, reference_statistics
from lidar_ptq_core.sim import SimDataset, load_sim_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
KITTI = SHARED / "kitti_frames"
ARGOVERSE = SHARED / "argoverse_frames" / "velodyne"
FRAMES = 4


@pytest.fixture(scope="module")
def sim_points():
    return [SimDataset("val", FRAMES, load_sim_config("default"))[i].points for i in range(FRAMES)]


def folder(root: Path, name: str, clouds, fields=("x", "y", "z", "intensity"), suffix=".bin") -> str:
    out = root / name
    out.mkdir()
    for i, points in enumerate(clouds):
        write_points(out / f"{i:06d}{suffix}", PointCloud(points[:, : len(fields)], fields))
    return str(out)


@pytest.fixture(scope="module")
def variants(tmp_path_factory, sim_points):
    root = tmp_path_factory.mktemp("check")

    def changed(scale=1.0, dz=0.0):
        out = []
        for p in sim_points:
            p = p.copy()
            p[:, 3] = np.round(p[:, 3] * scale) if scale != 1.0 else p[:, 3]
            p[:, 2] += dz
            out.append(p)
        return out

    vlp32 = [SimDataset("val", FRAMES, load_sim_config("vlp32"))[i].points for i in range(FRAMES)]
    return {
        "matched": folder(root, "matched", sim_points),
        "x255": folder(root, "x255", changed(scale=255.0)),
        "z_up": folder(root, "z_up", changed(dz=1.5)),
        "xyz": folder(root, "xyz", sim_points, ("x", "y", "z"), ".pcd"),
        "vlp32": folder(root, "vlp32", vlp32),
    }


@pytest.fixture(scope="module")
def sim_pillar():
    return read_model_config("sim_pillar")


def kinds(result) -> dict[str, str]:
    return {p.kind: p.line() for p in result["problems"]}


def test_matched_frames_pass_silently(variants, sim_pillar, capsys):
    result = run_check(variants["matched"], sim_pillar)
    assert result["ok"] and result["problems"] == [], [p.line() for p in result["problems"]]
    assert main(["check", variants["matched"], "--model", "sim_pillar"]) == 0
    out = capsys.readouterr().out
    assert "problem" not in out and "ok: the frames look like the model's training data" in out


def test_intensity_on_the_0_255_scale_is_named_with_its_scale(variants, sim_pillar, capsys):
    problems = kinds(run_check(variants["x255"], sim_pillar))
    assert set(problems) == {"intensity"}
    assert "looks 0..255" in problems["intensity"] and "--intensity-scale 0.00392" in problems["intensity"]
    assert main(["check", variants["x255"], "--model", "sim_pillar"]) == 1
    assert "use --intensity-scale 0.00392" in capsys.readouterr().out
    # The fix it names makes the same frames pass.
    assert run_check(variants["x255"], sim_pillar, intensity_scale=0.00392)["ok"]


def test_a_sensor_1_5_m_higher_is_named_with_its_z_offset(variants, sim_pillar):
    result = run_check(variants["z_up"], sim_pillar)
    problems = kinds(result)
    assert set(problems) == {"ground"}
    ground = result["stats"].ground_z
    assert ground == pytest.approx(reference_statistics(sim_pillar.name).ground_z + 1.5, abs=0.15)
    assert "--z-offset -1.50" in problems["ground"]
    assert run_check(variants["z_up"], sim_pillar, z_offset=-1.5)["ok"]


def test_xyz_only_frames_are_filled_with_zeros_as_the_config_says(variants, sim_pillar):
    problems = kinds(run_check(variants["xyz"], sim_pillar))
    assert set(problems) == {"fields"}, problems
    assert "no intensity field" in problems["fields"] and "filled with zeros (the model config says so)" in \
        problems["fields"]


def test_the_32_beam_sensor_is_named_for_its_sparser_sweeps(variants, sim_pillar):
    problems = kinds(run_check(variants["vlp32"], sim_pillar))
    assert set(problems) == {"points"}, problems
    assert "points per frame" in problems["points"] and "calibrate on this sensor's own frames" in problems["points"]


def test_json_output_and_exit_code(variants, capsys):
    assert main(["check", variants["z_up"], "--model", "sim_voxel", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "sim_centerpoint_voxel" and data["ok"] is False
    assert [p["kind"] for p in data["problems"]] == ["ground"] and data["problems"][0]["fix"] == "use --z-offset -1.50"
    assert data["stats"]["frames"] == FRAMES and data["reference"]["frames"] == 64


def test_full_size_models_use_their_documented_values(variants):
    """nuScenes keeps intensity 0..255: sim's 0..1 intensity is named; the Waymo config's elongation is missing."""
    nuscenes = kinds(run_check(variants["matched"], read_model_config("nuscenes_centerpoint_voxel0075_res3d")))
    assert "--intensity-scale 255" in nuscenes["intensity"] and "no time_lag field" in nuscenes["fields"]
    assert "ground" not in nuscenes, "sim's ground (-1.75 m) is within the tolerance of nuScenes' -1.8 m"
    waymo = kinds(run_check(variants["matched"], read_model_config("waymo_centerpoint_pillar_1x")))
    assert set(waymo) == {"fields", "ground"} and "no elongation field" in waymo["fields"]
    assert "use --z-offset 1.75" in waymo["ground"], "Waymo's vehicle frame has the ground at z = 0"


@pytest.mark.skipif(not KITTI.is_dir(), reason=f"real KITTI frames not found at {KITTI}")
def test_real_kitti_frames(sim_pillar):
    """HDL-64E at 1.73 m, reflectance 0..1: intensity and ground match the sim sensor; these frames are cropped to
    the camera's field of view (17k-21k points), which check names."""
    result = run_check(str(KITTI), sim_pillar)
    problems = kinds(result)
    assert set(problems) == {"points"}, problems
    assert -1.9 < result["stats"].ground_z < -1.5


@pytest.mark.skipif(not ARGOVERSE.is_dir(), reason=f"real Argoverse frames not found at {ARGOVERSE}")
def test_real_argoverse_frames_are_flagged_for_z_and_constant_intensity(sim_pillar):
    result = run_check(str(ARGOVERSE), sim_pillar)
    problems = kinds(result)
    assert {"ground", "intensity"} <= set(problems), problems
    assert -0.6 < result["stats"].ground_z < -0.1, "the ground of the vehicle frame (origin at the rear axle)"
    assert "intensity is the constant 1" in problems["intensity"]
    offset = float(problems["ground"].split("--z-offset ")[1])
    assert -1.7 < offset < -1.2
    assert "ground" not in kinds(run_check(str(ARGOVERSE), sim_pillar, z_offset=offset))


def test_ground_height_of_a_plane_under_walls():
    rng = np.random.default_rng(0)
    road = np.column_stack([rng.uniform(-15, 15, (4000, 2)), rng.normal(-1.2, 0.02, 4000)])
    wall = np.column_stack([rng.uniform(-15, 15, 6000), np.full(6000, 8.0), rng.uniform(-1.0, 3.0, 6000)])
    roofs = np.column_stack([rng.uniform(-15, 15, (6000, 2)), rng.normal(0.3, 0.03, 6000)])  # denser than the road
    noise = np.column_stack([rng.uniform(-15, 15, (40, 2)), rng.uniform(-4, -2, 40)])
    assert ground_height(np.vstack([road, wall, roofs, noise])) == pytest.approx(-1.2, abs=0.1)
    assert ground_height(np.zeros((10, 3))) is None, "too few points near the sensor"


@pytest.mark.parametrize("args, message", [
    (["/no/such/folder"], "neither 'sim' nor an existing folder"),
    (["{matched}", "--frames", "0"], "--frames must be >= 1"),
    (["{matched}", "--model", "no_such_model"], "no models config named 'no_such_model'"),
    (["{bad}"], "not a multiple of the 16-byte record"),
])
def test_bad_input_is_one_line_and_exit_code_2(variants, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 10)
    args = [a.format(matched=variants["matched"], bad=bad) for a in args]
    if "--model" not in args:
        args += ["--model", "sim_pillar"]
    assert main(["check", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lidar-ptq check: error:") and message in err
