"""`lidar-ptq compare`: a model against itself reproduces every box and passes; a deliberately broken candidate (its
heatmap bias lowered, so that confident boxes fall under the score cut) fails; files, folders and bags work, the
held-out selection leaves out exactly the frames calibration took; compare.json and the worst-frames png are
written; the agreement breakdown by class and range counts what it should; bad input is exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lidar_ptq_core.agreement import detection_agreement, match_boxes
from lidar_ptq_core.calibration_data import spread_indices
from lidar_ptq_core.cli import main
from lidar_ptq_core.commands.compare import held_out_indices, input_settings_pair, run_compare
from lidar_ptq_core.detections import Detections
from lidar_ptq_core.pointcloud import KITTI_FIELDS, PointCloud, write_bag_frames, write_points
from lidar_ptq_core.sim import SimDataset, load_sim_config

FRAMES = 3
CLASSES = ("Car", "Pedestrian")


@pytest.fixture(scope="module")
def sim_frames():
    dataset = SimDataset("val", FRAMES, load_sim_config("default"))
    dataset.prepare(num_workers=1, progress=False)
    return [dataset[i].points for i in range(FRAMES)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, sim_frames):
    root = tmp_path_factory.mktemp("compare")
    folder = root / "frames"
    folder.mkdir()
    for i, points in enumerate(sim_frames):
        write_points(folder / f"{i:06d}.bin", PointCloud(points, KITTI_FIELDS))
    bag = root / "bag"
    # Four messages: calibration with --frames 2 takes the first and the last (spread_indices), compare the others.
    clouds = [*sim_frames, sim_frames[0]]
    write_bag_frames(bag, ((1_000_000_000 + i * 100_000_000, "lidar", PointCloud(p, KITTI_FIELDS))
                           for i, p in enumerate(clouds)), storage="mcap")
    return {"folder": folder, "file": folder / "000001.bin", "bag": bag, "root": root}


@pytest.fixture(scope="module")
def broken_checkpoint(tmp_path_factory):
    """sim_pillar with every heatmap logit lowered by 2: most confident boxes drop under 0.3, the rest stay put."""
    import torch

    from lidar_ptq_core.models.checkpoint import load_checkpoint, save_checkpoint
    from lidar_ptq_core.runtime import bundled_checkpoint

    model = load_checkpoint(bundled_checkpoint("sim_pillar"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("hm.1.bias"):
                parameter -= 2.0
    return save_checkpoint(model, tmp_path_factory.mktemp("broken") / "broken.safetensors")


def test_a_model_against_itself_reproduces_every_box_and_passes(sources, tmp_path, capsys):
    out = tmp_path / "same"
    assert main(["compare", str(sources["folder"]), "--reference", "sim_pillar", "--candidate", "sim_pillar",
                 "--out", str(out), "--worst", "2"]) == 0
    text = capsys.readouterr().out
    assert "PASS: the candidate reproduces 100.0 %" in text
    result = json.loads((out / "compare.json").read_text())
    agreement = result["agreement"]
    assert result["passed"] and agreement["frames"] == FRAMES and agreement["reference_boxes"] > 20
    assert agreement["matched"] == agreement["reference_boxes"] == agreement["other_boxes"]
    assert agreement["map_vs_reference"] == pytest.approx(100.0)
    assert [f["frame_id"] for f in agreement["per_frame"]] == ["000000", "000001", "000002"]
    assert all(f["missed"] == f["extra"] == 0 for f in agreement["per_frame"])
    assert set(agreement["by_range"]) == {"0-30m", "30-50m", "50m+"}
    assert sum(r["reference_boxes"] for r in agreement["by_range"].values()) == agreement["reference_boxes"]
    assert sum(c["reference_boxes"] for c in agreement["by_class"].values()) == agreement["reference_boxes"]
    assert len(result["worst_frames"]) == 2
    picture = out / "worst_frames.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 20_000


def test_a_broken_candidate_fails_with_its_worst_frames_drawn(sources, broken_checkpoint, tmp_path, capsys):
    out = tmp_path / "broken"
    assert main(["compare", str(sources["folder"]), "--reference", "sim_pillar", "--candidate",
                 str(broken_checkpoint), "--out", str(out), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    agreement = result["agreement"]
    assert not result["passed"] and result["verdict"].startswith("FAIL: ") and "below the 95 % threshold" in \
        result["verdict"]
    assert agreement["reference_recall"] < 0.8 and agreement["other_boxes"] < agreement["reference_boxes"]
    # The worst frame is the one with the most missed + extra boxes.
    per_frame = {f["frame_id"]: f["missed"] + f["extra"] for f in agreement["per_frame"]}
    assert per_frame[result["worst_frames"][0]] == max(per_frame.values())
    assert (out / "worst_frames.png").stat().st_size > 20_000
    assert json.loads((out / "compare.json").read_text())["verdict"] == result["verdict"]


def test_a_bag_compares_on_the_frames_calibration_did_not_take(sources, capsys):
    calibrated = set(spread_indices(4, 2).tolist())
    assert calibrated == {0, 3}
    assert main(["compare", str(sources["bag"]), "--reference", "sim_pillar", "--candidate", "sim_pillar",
                 "--exclude-calibration", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [f["frame_id"] for f in result["agreement"]["per_frame"]] == ["bag_000001", "bag_000002"]
    assert "2 of 4 messages of bag" in result["source"] and "the 2 calibration picks" in result["source"]


def test_a_single_file(sources, capsys):
    assert main(["compare", str(sources["file"]), "--reference", "sim_pillar", "--candidate", "sim_pillar",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["agreement"]["frames"] == 1 and result["agreement"]["per_frame"][0]["frame_id"] == "000001"


def test_held_out_indices_leave_out_the_calibration_picks_and_the_first_frames():
    for total, calibration in ((40, 32), (288, 256), (10, 3)):
        held = held_out_indices(total, 1000, calibration_frames=calibration)
        assert set(held) == set(range(total)) - set(spread_indices(total, calibration).tolist())
        assert len(held) == total - calibration
    assert held_out_indices(10, 2, skip_first=4) == [4, 9]
    assert held_out_indices(10, 100, skip_first=4, calibration_frames=2) == [4, 5, 6, 7, 8]  # 0 and 9 calibrated
    with pytest.raises(ValueError, match="no frames left to compare"):
        held_out_indices(32, 8, calibration_frames=32)


def boxes(*rows):
    """(x, y, label, score) rows -> Detections of 4 x 2 x 1.5 m boxes."""
    rows = np.array(rows, np.float64).reshape(-1, 4)
    b = np.zeros((len(rows), 7), np.float32)
    b[:, 0], b[:, 1], b[:, 3:6] = rows[:, 0], rows[:, 1], (4.0, 2.0, 1.5)
    return Detections(b, rows[:, 3].astype(np.float32), rows[:, 2].astype(np.int64), CLASSES)


def test_agreement_by_class_and_range():
    reference = [boxes((10, 0, 0, 0.9), (40, 0, 0, 0.9), (60, 0, 1, 0.8), (5, 5, 1, 0.2)),
                 boxes((0, 10, 0, 0.9))]
    other = [boxes((10.5, 0, 0, 0.8), (60, 0, 0, 0.7), (45, 0, 0, 0.9)), boxes((0, 10, 0, 0.95))]
    r_matched, o_matched = match_boxes(reference[0], other[0])
    assert r_matched.tolist() == [True, False, False, False] and o_matched.tolist() == [True, False, False]
    assert "by_class" not in detection_agreement(reference, other, CLASSES), "bench and parity keep their keys"
    a = detection_agreement(reference, other, CLASSES, breakdown=True)
    assert (a["reference_boxes"], a["other_boxes"], a["matched"]) == (4, 4, 2)  # the 0.2 box is under the cut
    assert [(f["missed"], f["extra"]) for f in a["per_frame"]] == [(2, 2), (0, 0)]
    car, pedestrian = a["by_class"]["Car"], a["by_class"]["Pedestrian"]
    assert (car["reference_boxes"], car["reference_matched"], car["other_boxes"]) == (3, 2, 4)
    assert (pedestrian["reference_boxes"], pedestrian["reference_matched"]) == (1, 0)
    assert pedestrian["other_boxes"] == 0 and np.isnan(pedestrian["other_precision"])
    near, middle, far = (a["by_range"][k] for k in ("0-30m", "30-50m", "50m+"))
    assert (near["reference_boxes"], near["reference_matched"], near["other_boxes"]) == (2, 2, 2)
    assert (middle["reference_boxes"], middle["reference_matched"], middle["other_boxes"]) == (1, 0, 1)
    assert (far["reference_boxes"], far["reference_matched"], far["other_boxes"]) == (1, 0, 1)
    assert 0 < a["map_vs_reference"] < 100 and a["by_class"]["Pedestrian"]["ap_vs_reference"] == 0.0


def test_an_fp32_reference_gets_the_input_settings_its_int8_version_recorded():
    from dataclasses import replace

    from lidar_ptq_core.commands.check import read_model_config
    from lidar_ptq_core.pointcloud.features import InputSettings

    fp32 = read_model_config("sim_pillar")
    int8 = replace(fp32, input_settings=InputSettings(0.5, -1.4))
    reference, candidate, note = input_settings_pair(fp32, int8, z_offset=0.1)
    assert reference == candidate and note == ""
    assert (reference.intensity_scale, reference.z_offset) == (0.5, pytest.approx(-1.3))
    other = replace(fp32, input_settings=InputSettings(2.0, 0.0))
    reference, candidate, note = input_settings_pair(other, int8)
    assert reference != candidate and "different input settings" in note


@pytest.mark.parametrize("args, message", [
    (["missing_folder"], "neither 'sim' nor an existing"),
    (["{file}", "--skip-first", "1"], "single frame"),
    (["{folder}", "--threshold", "1.5"], "--threshold must be in (0, 1]"),
    (["{folder}", "--exclude-calibration", "3"], "no frames left to compare"),
    (["{folder}", "--frames", "0"], "--frames must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_code_2(sources, capsys, args, message):
    args = [a.format(file=sources["file"], folder=sources["folder"]) for a in args]
    assert main(["compare", *args, "--reference", "sim_pillar", "--candidate", "sim_pillar"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lidar-ptq compare: error: ") and message in err[0]


def test_run_compare_reuses_loaded_detectors(sources):
    from lidar_ptq_core.runtime import Detector

    detector = Detector.load("sim_pillar")
    result = run_compare(str(sources["file"]), "sim_pillar", "sim_pillar", detectors=(detector, detector))
    assert result["passed"] and result["agreement"]["reference_recall"] == 1.0
    assert Path(result["reference"].split(" ")[0]).name == "sim_pillar"


def test_frames_without_reference_boxes_give_no_pass(tmp_path):
    """Nothing detected by the reference shows nothing about the candidate: FAIL, saying so."""
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(-3, 3, (200, 2)), np.full((200, 1), -1.7), rng.uniform(0, 1, (200, 1))],
                            axis=1).astype(np.float32)
    write_points(tmp_path / "ground.bin", PointCloud(points, KITTI_FIELDS))
    result = run_compare(str(tmp_path / "ground.bin"), "sim_pillar", "sim_pillar")
    assert result["agreement"]["reference_boxes"] == 0 and not result["passed"]
    assert result["verdict"].startswith("FAIL: the reference has no box with score >= 0.3 on the 1 frame compared")
