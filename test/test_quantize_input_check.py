"""The input check inside `lidar-ptq quantize` (commands/quantize.py check_calibration_input): problems of the
calibration frames are printed with their fixes and calibration goes on; frames the model cannot take stop it
before any calibration with one error (exit code 2); sim-like frames give no line at all."""

from __future__ import annotations

import numpy as np
import pytest

from lidar_ptq_core.cli import main
from lidar_ptq_core.commands.check import read_model_config
from lidar_ptq_core.commands.quantize import check_calibration_input
from lidar_ptq_core.pointcloud import PointCloud, write_points
from lidar_ptq_core.sim import SimDataset, load_sim_config

FRAMES = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    dataset = SimDataset("val", FRAMES, load_sim_config("default"))
    dataset.prepare(num_workers=1, progress=False)
    root = tmp_path_factory.mktemp("quantize_check")
    made = {}
    for name, fields, change in (("matched", ("x", "y", "z", "intensity"), None),
                                 ("z_up", ("x", "y", "z", "intensity"), 1.5),
                                 ("xyz", ("x", "y", "z"), None),
                                 ("no_z", ("x", "y", "intensity"), None)):
        folder = root / name
        folder.mkdir()
        for i in range(FRAMES):
            points = dataset[i].points.copy()
            if change:
                points[:, 2] += change
            columns = [("x", "y", "z", "intensity").index(f) for f in fields]
            write_points(folder / f"{i:06d}.pcd", PointCloud(np.ascontiguousarray(points[:, columns]), fields))
        made[name] = str(folder)
    return made


def test_problems_are_printed_with_their_fixes_and_calibration_goes_on(folders):
    config = read_model_config("sim_pillar")
    lines = []
    assert check_calibration_input(folders["matched"], config, 256, log=lines.append) == [] and lines == []
    problems = check_calibration_input(folders["z_up"], config, 256, log=lines.append)
    assert [p.kind for p in problems] == ["ground"]
    assert "use --z-offset -1.50" in lines[0] and "calibrating anyway" in lines[-1]
    lines.clear()
    problems = check_calibration_input(folders["xyz"], config, 256, log=lines.append)
    assert [p.kind for p in problems] == ["fields"] and "filled with zeros" in lines[0]
    lines.clear()  # the setting the check suggests silences it
    assert check_calibration_input(folders["z_up"], config, 256, z_offset=-1.5, log=lines.append) == []


def test_frames_the_model_cannot_take_stop_quantize_before_calibrating(folders, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"input check: .* lacks \['z'\]"):
        check_calibration_input(folders["no_z"], read_model_config("sim_pillar"), 256)
    out = tmp_path / "q.safetensors"
    assert main(["quantize", "--checkpoint", "sim_pillar", "--calib", folders["no_z"], "--frames", "2", "--method",
                 "max", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lidar-ptq quantize: error: input check: ")
    assert not out.exists()
    # --no-input-check: no check; calibration's own reading refuses the same frames (the one point-feature rule).
    assert main(["quantize", "--checkpoint", "sim_pillar", "--calib", folders["no_z"], "--frames", "2", "--method",
                 "max", "--out", str(out), "--quiet", "--no-input-check"]) == 2
    err = capsys.readouterr().err
    assert "input check" not in err and "lacks ['z']" in err
