"""The `lidar-ptq` entry point as a user runs it: every subcommand parses, bad input gives a one-line error."""

import subprocess
import sys

import numpy as np
import pytest
import yaml

from lidar_ptq_core import cli


def test_every_subcommand_has_help(capsys):
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: lidar-ptq " + name in capsys.readouterr().out


def test_installed_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "lidar_ptq_core.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "sim" in out.stdout and "eval" in out.stdout


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["voxelize", str(tmp_path / "nope.bin")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "nope.bin" in err and "Traceback" not in err


def test_voxelize_command_reports_drops(tmp_path, capsys):
    pts = np.array([[1, 2, -1, 0.5], [200, 0, 0, 0.1], [np.nan, 0, 0, 0]], np.float32)
    path = tmp_path / "f.bin"
    pts.tofile(path)
    assert cli.main(["voxelize", str(path), "--config", "sim_pillar"]) == 0
    out = capsys.readouterr().out
    assert "3 points -> 1 voxels" in out and "1 non-finite" in out and "1 out of range" in out


def test_demo_runs_end_to_end_with_a_checkpoint(tmp_path, monkeypatch, capsys):
    """The README's main job as library calls (--no-ros, what runs where ROS 2 is missing) on one frame, with a tiny
    untrained checkpoint (the real one is exercised by ./dev demo)."""
    from lidar_ptq_core.models.centerpoint import build_centerpoint
    from lidar_ptq_core.models.checkpoint import save_checkpoint

    from test_train import tiny_pillar_config

    monkeypatch.setenv("LIDAR_PTQ_CACHE", str(tmp_path / "cache"))
    ckpt = save_checkpoint(build_centerpoint(tiny_pillar_config()), tmp_path / "tiny.safetensors")
    out = tmp_path / "demo"
    args = ["demo", "--no-ros", "--frames", "1", "--checkpoint", str(ckpt), "--out", str(out), "--calib-frames", "2"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "[6/6]" in text and "Car" in text and "INT8 vs FP32" in text
    assert "recorded 2 simulated sweeps into the calibration bag" in text and "every layer INT8" in text
    assert (out / "eval.json").is_file() and (out / "detections.png").stat().st_size > 10_000
    assert len(list((out / "fp32" / "gt").glob("*.json"))) == 1 and len(list((out / "int8" / "pred").glob("*"))) == 1
    # A second run replaces the demo's own bag instead of refusing.
    assert cli.main(args + ["--method", "max"]) == 0


def test_demo_without_ros_says_so_and_runs_as_library_calls(tmp_path, monkeypatch, capsys):
    """Where the ROS layer does not import, the demo says why and runs the steps offline (the core never needs ROS)."""
    from lidar_ptq_core.commands import demo
    from lidar_ptq_core.models.centerpoint import build_centerpoint
    from lidar_ptq_core.models.checkpoint import save_checkpoint

    from test_train import tiny_pillar_config

    monkeypatch.setenv("LIDAR_PTQ_CACHE", str(tmp_path / "cache"))
    from importlib.metadata import EntryPoint

    # A registered runner whose module does not import, as lidar_ptq_ros.demo_chain where rclpy is missing.
    missing = EntryPoint(demo.NODE_CHAIN_NAME, "lidar_ptq_no_such_ros_layer:run_demo", demo.NODE_CHAIN_GROUP)
    monkeypatch.setattr(demo, "node_chain_entry_point", lambda: missing)
    ckpt = save_checkpoint(build_centerpoint(tiny_pillar_config()), tmp_path / "tiny.safetensors")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--frames", "1", "--checkpoint", str(ckpt), "--out", str(out), "--no-quantize"]) == 0
    text = capsys.readouterr().out
    assert "ROS 2 is not importable here (No module named 'lidar_ptq_no_such_ros_layer')" in text
    assert "[4/4]" in text and (out / "eval.json").is_file() and not (out / "summary.json").exists()


def test_import_openpcdet_command_round_trip(tmp_path, capsys):
    """An OpenPCDet-style {'model_state': ...} .pth becomes a checkpoint that detects exactly like the source model."""
    import torch

    from lidar_ptq_core.models.centerpoint import build_centerpoint
    from lidar_ptq_core.runtime import Detector

    from test_train import tiny_pillar_config

    config = tiny_pillar_config()
    (tmp_path / "tiny.yaml").write_text(config.to_yaml())
    model = build_centerpoint(config).eval()
    torch.save({"model_state": model.state_dict(), "epoch": 3}, tmp_path / "openpcdet.pth")
    out = tmp_path / "imported.safetensors"
    argv = ["import-openpcdet", str(tmp_path / "openpcdet.pth"), "--config", str(tmp_path / "tiny.yaml")]
    assert cli.main(argv + ["--out", str(out)]) == 0
    assert "imported" in capsys.readouterr().out
    points = np.random.default_rng(0).uniform(-20, 20, (3000, 4)).astype(np.float32)
    points[:, 2] = np.abs(points[:, 2]) % 2 - 1.5
    np.testing.assert_array_equal(Detector(model).detect(points).boxes,
                                  Detector.from_checkpoint(out).detect(points).boxes)
    # A checkpoint of another architecture is refused with the reason, not loaded half-way.
    other = tiny_pillar_config().to_dict()
    other["vfe"]["num_filters"] = [16]
    other["map_to_bev"]["num_bev_features"] = 16
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert cli.main(["import-openpcdet", str(tmp_path / "openpcdet.pth"), "--config", str(tmp_path / "other.yaml"),
                     "--out", str(tmp_path / "bad.safetensors")]) == 2
    assert "vfe.pfn_layers.0" in capsys.readouterr().err and not (tmp_path / "bad.safetensors").exists()


def test_eval_takes_the_region_from_the_checkpoint_like_demo(tmp_path, monkeypatch, capsys):
    """Same box files, same table: eval --checkpoint uses the detector's range, as demo and the benchmarks do."""
    import json

    from lidar_ptq_core.models.centerpoint import build_centerpoint
    from lidar_ptq_core.models.checkpoint import save_checkpoint

    from test_train import tiny_pillar_config

    monkeypatch.setenv("LIDAR_PTQ_CACHE", str(tmp_path / "cache"))
    ckpt = save_checkpoint(build_centerpoint(tiny_pillar_config()), tmp_path / "tiny.safetensors")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--no-ros", "--frames", "2", "--checkpoint", str(ckpt), "--out", str(out),
                     "--no-quantize"]) == 0
    demo = json.loads((out / "eval.json").read_text())["FP32"]
    capsys.readouterr()
    assert cli.main(["eval", "--pred", str(out / "fp32" / "pred"), "--gt", str(out / "fp32" / "gt"),
                     "--checkpoint", str(ckpt), "--out", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "region: x -40.96..40.96 m, y -40.96..40.96 m" in text
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["distance_map"] == demo["distance_map"] and again["iou_map"] == demo["iou_map"]
    assert cli.main(["eval", "--pred", str(out / "fp32" / "pred"), "--gt", str(out / "fp32" / "gt")]) == 0
    assert "region: none" in capsys.readouterr().out


def test_quantize_a_folder_then_detect_a_folder_into_box_files(tmp_path, capsys):
    """The newcomer's path on their own frames: quantize from a folder, detect every frame with the INT8 model."""
    from lidar_ptq_core.models.centerpoint import build_centerpoint
    from lidar_ptq_core.models.checkpoint import save_checkpoint

    from test_train import tiny_pillar_config

    ckpt = save_checkpoint(build_centerpoint(tiny_pillar_config()), tmp_path / "tiny.safetensors")
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pts = np.concatenate([rng.uniform(-12, 12, (400, 2)), rng.uniform(-2, 2, (400, 1)),
                              rng.uniform(0, 1, (400, 1))], axis=1).astype(np.float32)
        pts.tofile(frames / f"{i:06d}.bin")
    int8 = tmp_path / "tiny_int8.safetensors"
    assert cli.main(["quantize", "--checkpoint", str(ckpt), "--calib", str(frames), "--frames", "2", "--method",
                     "sparse-grid", "--out", str(int8), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "calibration: 2 of 3 files" in text and "sparse-grid" in text
    assert int8.is_file() and int8.with_suffix(".report.txt").is_file()
    # What reproduces it is recorded: the FP32 file's hash, the calibration source, threads and device
    import json

    import torch

    from lidar_ptq_core.io_utils import file_sha256
    from lidar_ptq_core.models.checkpoint import read_checkpoint_metadata

    provenance = json.loads(read_checkpoint_metadata(int8)["report"])["provenance"]
    assert provenance["checkpoint"] == {"name": str(ckpt), "sha256": file_sha256(ckpt)}
    assert (provenance["calib"], provenance["frames"], provenance["threads"], provenance["device"]) == (
        str(frames), 2, torch.get_num_threads(), "cpu")
    assert f"{torch.get_num_threads()} threads, cpu" in int8.with_suffix(".report.txt").read_text()
    boxes = tmp_path / "boxes"
    assert cli.main(["detect", str(frames), "--checkpoint", str(int8), "--out", str(boxes), "--quiet"]) == 0
    assert sorted(p.name for p in boxes.iterdir()) == ["000000.json", "000001.json", "000002.json"]
    assert cli.main(["quantize", "--checkpoint", str(ckpt), "--calib", str(tmp_path / "none"), "--out",
                     str(int8)]) == 2
    assert "neither 'sim' nor an existing" in capsys.readouterr().err
    assert cli.main(["quantize", "--checkpoint", str(ckpt), "--calib", str(frames), "--sim-start", "4", "--out",
                     str(int8)]) == 2
    assert "--sim-start is for the sim source only" in capsys.readouterr().err


def test_newcomer_quantizes_an_openpcdet_pth_from_a_bag_in_one_command(tmp_path, monkeypatch, capsys):
    """README: own OpenPCDet weights + own recorded bag -> INT8 checkpoint, one command."""
    import torch

    from lidar_ptq_core.models.centerpoint import build_centerpoint
    from lidar_ptq_core.runtime import Detector

    from test_train import tiny_pillar_config

    monkeypatch.setenv("LIDAR_PTQ_CACHE", str(tmp_path / "cache"))
    config = tiny_pillar_config()
    (tmp_path / "tiny.yaml").write_text(config.to_yaml())
    torch.save({"model_state": build_centerpoint(config).state_dict()}, tmp_path / "openpcdet.pth")
    bag = tmp_path / "calib_bag"
    assert cli.main(["sim", "--split", "calib", "--frames", "3", "--bag", str(bag)]) == 0
    int8 = tmp_path / "mine_int8.safetensors"
    argv = ["quantize", "--checkpoint", str(tmp_path / "openpcdet.pth"), "--calib", str(bag), "--frames", "2",
            "--method", "sparse-max", "--out", str(int8), "--quiet"]
    assert cli.main(argv) == 2  # which network do these weights belong to?
    assert "needs --model-config" in capsys.readouterr().err
    assert cli.main(argv + ["--model-config", str(tmp_path / "tiny.yaml")]) == 0
    assert "calibration: 2 of 3 messages of bag" in capsys.readouterr().out
    detections = Detector.from_checkpoint(int8).detect(np.zeros((10, 4), np.float32))
    assert len(detections.boxes) <= config.post_processing.max_boxes
