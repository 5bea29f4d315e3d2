"""Sweep accumulation in `lidar-ptq detect`, `check` and `compare` (issue 18): frames of a folder (stamps from
nuScenes-style file names or --sweep-period) or a bag reach a multi-sweep model's voxelizer accumulated with the
frames before them and their time lags, as the node and calibration give them (lidar_ptq_core/sweeps.py). A tiny
3-sweep model here; the nuScenes voxel config at full size with random weights in the slow test at the end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lidar_ptq_core.cli import main
from lidar_ptq_core.commands.check import read_model_config, run_check
from lidar_ptq_core.commands.compare import run_compare
from lidar_ptq_core.models.centerpoint import build_centerpoint
from lidar_ptq_core.models.checkpoint import save_checkpoint
from lidar_ptq_core.pointcloud import PointCloud, write_bag_frames, write_points
from lidar_ptq_core.sweeps import (
    SweepWindow,
    WindowPreparer,
    file_name_stamps,
    frame_sequence,
    iter_sweep_windows,
)

from test_sweeps import VoxelizerInputs, multi_sweep_config

XYZI = ("x", "y", "z", "intensity")
NUSCENES_STAMP0_US = 1532402927647951


def frame(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(-30, 30, (n, 2)), rng.uniform(-2, 1, (n, 1)), rng.uniform(0, 1, (n, 1))],
                          axis=1).astype(np.float32)


CLOUDS = [frame(i, 600 + 50 * i) for i in range(5)]


def nuscenes_name(k: int, period_s: float = 0.05) -> str:
    return f"n015-2018-07-24-11-22-45+0800__LIDAR_TOP__{NUSCENES_STAMP0_US + int(round(k * period_s * 1e6))}"


def nuscenes_cloud(points: np.ndarray) -> PointCloud:
    """A nuScenes .pcd.bin record: x y z intensity ring."""
    return PointCloud(np.concatenate([points, np.zeros((len(points), 1), np.float32)], axis=1), XYZI + ("ring",))


def expected_window(newest: int, count: int, period: float, clouds=CLOUDS, intensity_scale: float = 1.0):
    """What the voxelizer must get: the frame and up to count - 1 before it, newest first, with their lags."""
    parts = []
    for k in range(newest, max(-1, newest - count), -1):
        points = clouds[k].copy()
        points[:, 3] *= intensity_scale
        parts.append(np.concatenate([points, np.full((len(points), 1), (newest - k) * period, np.float32)], axis=1))
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def three_sweep_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_centerpoint(multi_sweep_config(count=3, max_time_lag=0.5)),
                           tmp_path_factory.mktemp("model") / "three_sweeps.safetensors")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_sources")
    named, plain = root / "nuscenes_named", root / "plain"
    named.mkdir()
    plain.mkdir()
    for k, points in enumerate(CLOUDS):
        write_points(named / f"{nuscenes_name(k)}.pcd.bin", nuscenes_cloud(points))
        write_points(plain / f"{k:06d}.bin", PointCloud(points, XYZI))
    bag = root / "bag"
    write_bag_frames(bag, [(1_700_000_000_000_000_000 + k * 100_000_000, "lidar", PointCloud(c, XYZI))
                           for k, c in enumerate(CLOUDS)])
    return {"named": str(named), "plain": str(plain), "bag": str(bag)}


# -- the library parts ----------------------------------------------------------------------------------------------
def test_stamps_of_a_folder_come_from_nuscenes_names_or_the_sweep_period(sources):
    named = frame_sequence(sources["named"])
    assert named.stamps == "stamps in the file names" and len(named) == 5
    stamps = [f.stamp for f in named]
    np.testing.assert_allclose(np.diff(stamps), 0.05, atol=1e-6)
    assert frame_sequence(sources["plain"]).stamps is None
    periodic = frame_sequence(sources["plain"], sweep_period=0.1)
    assert [f.stamp for f in periodic] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    bag = frame_sequence(sources["bag"])
    assert bag.stamps == "bag message stamps" and np.diff([f.stamp for f in bag]) == pytest.approx([0.1] * 4, abs=1e-6)
    with pytest.raises(ValueError, match="--sweep-period must be a number of seconds > 0"):
        file_name_stamps(["a.bin"], sweep_period=0.0)
    with pytest.raises(ValueError, match="bag .* has its own message stamps"):
        frame_sequence(sources["bag"], sweep_period=0.1)


def test_windows_hold_the_frames_before_each_pick_and_load_nothing_else(sources, monkeypatch):
    sequence = frame_sequence(sources["plain"], sweep_period=0.1)
    loaded = []
    real_iter = sequence._frames

    def counting():
        for f in real_iter():
            yield f.__class__(f.index, f.frame_id, f.where, f.stamp, lambda f=f: loaded.append(f.index) or f.load())

    monkeypatch.setattr(sequence, "_frames", counting)
    windows = list(iter_sweep_windows(sequence, 2, picks=[0, 4]))
    assert [f.index for f, _ in windows] == [0, 4]
    assert [len(w.sweeps) for _, w in windows] == [1, 2], "frame 0 has nothing before it; frame 4 has frame 3"
    assert sorted(loaded) == [0, 3, 4], "frames 1 and 2 belong to no window"
    np.testing.assert_array_equal(windows[1][1].sweeps[0].cloud.points, CLOUDS[3])
    # without stamps every window is the frame alone
    assert [len(w.sweeps) for _, w in iter_sweep_windows(frame_sequence(sources["plain"]), 3)] == [1] * 5


def test_window_preparer_accumulates_like_the_node(sources):
    from lidar_ptq_core.pointcloud.features import PointPreparer

    config = multi_sweep_config(count=3, max_time_lag=0.5)
    notes = []
    preparer = PointPreparer(config.point_features, notify=notes.append)
    prepare = WindowPreparer(config, preparer, notify=notes.append)
    windows = [w for _, w in iter_sweep_windows(frame_sequence(sources["named"]), 3)]
    got = [prepare(w) for w in windows]
    for k in range(5):
        np.testing.assert_allclose(got[k], expected_window(k, 3, 0.05), atol=1e-5)
    assert [n for n in notes if "time_lag" in n] == [], "the accumulation writes the time lag: no 'filled' note"
    assert sum("not motion compensated" in n for n in notes) == 1, "the missing poses said once per run"
    # a single cloud (not a window) is one sweep with time lag 0
    single = prepare(PointCloud(CLOUDS[0], XYZI), "one file")
    assert isinstance(windows[0], SweepWindow) and single.shape == (len(CLOUDS[0]), 5) and not single[:, 4].any()


# -- detect, compare, check ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("source, extra, period", [("named", [], 0.05), ("plain", ["--sweep-period", "0.1"], 0.1),
                                                   ("bag", [], 0.1)])
def test_detect_accumulates_sequential_frames(three_sweep_checkpoint, sources, monkeypatch, capsys, source, extra,
                                              period):
    seen = VoxelizerInputs(monkeypatch)
    assert main(["detect", sources[source], "--checkpoint", str(three_sweep_checkpoint), "--quiet", *extra]) == 0
    assert len(seen.clouds) == 5
    for k in range(5):
        np.testing.assert_allclose(seen.clouds[k], expected_window(k, 3, period), atol=1e-5)
    captured = capsys.readouterr()
    assert "accumulating up to 3 sweeps within 0.5 s per frame" in captured.out
    assert "no time_lag field" not in captured.err


def test_detect_without_stamps_says_so_and_detects_single_sweeps(three_sweep_checkpoint, sources, monkeypatch,
                                                                 capsys):
    seen = VoxelizerInputs(monkeypatch)
    assert main(["detect", sources["plain"], "--checkpoint", str(three_sweep_checkpoint), "--quiet"]) == 0
    assert [len(c) for c in seen.clouds] == [len(c) for c in CLOUDS]
    assert all(not c[:, 4].any() for c in seen.clouds)
    assert capsys.readouterr().err.count("has no sweep stamps: single sweeps (time lag 0)") == 1


def test_compare_accumulates_the_held_out_frames(three_sweep_checkpoint, sources, monkeypatch):
    seen = VoxelizerInputs(monkeypatch)
    result = run_compare(sources["bag"], str(three_sweep_checkpoint), str(three_sweep_checkpoint), frames=2,
                         skip_first=1, min_score=0.0)
    # held out: 2 spread over messages 1..4 -> 1 and 4, each with the 2 messages before it
    assert [e["frame_id"] for e in result["agreement"]["per_frame"]] == ["bag_000001", "bag_000004"]
    assert "each with up to 2 frames before it within 0.5 s as accumulated sweeps" in result["source"]
    assert len(seen.clouds) == 4, "reference and candidate, two frames"
    for got, newest in zip(seen.clouds, (1, 1, 4, 4)):
        np.testing.assert_allclose(got, expected_window(newest, 3, 0.1), atol=1e-5)
    assert result["agreement"]["reference_recall"] == 1.0 and result["passed"]
    assert any("not motion compensated" in n for n in result["notes"])


def test_compare_sweep_period_is_for_folders(three_sweep_checkpoint, sources, capsys):
    assert main(["compare", sources["bag"], "--reference", str(three_sweep_checkpoint), "--candidate",
                 str(three_sweep_checkpoint), "--sweep-period", "0.1"]) == 2
    assert "has its own message stamps" in capsys.readouterr().err


def test_check_sees_accumulated_sweeps_with_their_time_lag(sources, capsys):
    nuscenes = read_model_config("nuscenes_centerpoint_voxel0075_res3d")
    result = run_check(sources["named"], nuscenes, frames=2)
    kinds = {p.kind: p.line() for p in result["problems"]}
    assert "fields" not in kinds, "the accumulation gives the time lag"
    assert "--intensity-scale 255" in kinds["intensity"]
    assert "accumulated sweeps (stamps in the file names" in result["source"] and "1-5 sweeps per frame" in \
        result["source"]
    # 2 spread over 5: frames 0 and 4, the second with 4 sweeps before it (nuScenes takes 10 within 0.5 s)
    assert result["stats"].points_per_frame == pytest.approx(np.median([len(CLOUDS[0]),
                                                                        sum(len(c) for c in CLOUDS)]), rel=1e-3)
    # a folder without stamps: single sweeps, said in a note; the CLI prints it
    plain = run_check(sources["plain"], nuscenes, frames=2)
    assert any("no sweep stamps" in n for n in plain["notes"])
    assert "no time_lag field" in {p.kind: p.line() for p in plain["problems"]}["fields"]
    assert plain["stats"].points_per_frame == pytest.approx(np.median([len(CLOUDS[0]), len(CLOUDS[4])]), rel=1e-3)
    main(["check", sources["plain"], "--model", "nuscenes_centerpoint_voxel0075_res3d", "--frames", "2"])
    assert "note: the model takes 10 accumulated sweeps but files in" in capsys.readouterr().out
    # a single-sweep model is checked as before
    assert "notes" in run_check(sources["named"], read_model_config("sim_pillar"), frames=2)


@pytest.mark.slow
def test_nuscenes_voxel_config_detects_on_accumulated_sweeps(sources, tmp_path, monkeypatch, capsys):
    """The full-size nuScenes voxel config (random weights) on 3 nuScenes-named frames: each reaches the voxelizer
    with the frames before it and lags 0.05 s apart, x y z intensity as recorded (0..1 here, the config takes the
    raw 0..255, so check would name the scale)."""
    from lidar_ptq_core.config_files import resolve_config
    from lidar_ptq_core.models.config import load_model_config

    config = load_model_config(resolve_config("nuscenes_centerpoint_voxel0075_res3d", "models"))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_centerpoint(config), tmp_path / "nuscenes_random.safetensors")
    folder = tmp_path / "frames"
    folder.mkdir()
    clouds = [frame(10 + k, 3000) for k in range(3)]
    for k, points in enumerate(clouds):
        write_points(folder / f"{nuscenes_name(k)}.pcd.bin", nuscenes_cloud(points))
    seen = VoxelizerInputs(monkeypatch)
    assert main(["detect", str(folder), "--checkpoint", str(checkpoint), "--quiet", "--out", str(tmp_path / "out")]) \
        == 0
    assert [len(c) for c in seen.clouds] == [3000, 6000, 9000]
    for k in range(3):
        np.testing.assert_allclose(seen.clouds[k], expected_window(k, 10, 0.05, clouds), atol=1e-5)
    assert len(list((tmp_path / "out").glob("*.json"))) == 3


def test_calibration_accumulates_a_folder_with_stamped_names(sources, capsys):
    """quantize's loader takes the same windows: 2 picks of the nuScenes-named folder (frames 0 and 4) for the
    3-sweep model; a folder without stamps stays single sweeps, said once."""
    from lidar_ptq_core.calibration_data import calibration_clouds

    config = multi_sweep_config(count=3, max_time_lag=0.5)
    samples, described = calibration_clouds(sources["named"], 2, model_config=config, intensity_scale=0.5)
    assert "2 of 5 files in" in described and "each with up to 2 files before it" in described
    assert "1-3 sweeps per sample" in described
    np.testing.assert_allclose(samples[0], expected_window(0, 3, 0.05, intensity_scale=0.5), atol=1e-5)
    np.testing.assert_allclose(samples[1], expected_window(4, 3, 0.05, intensity_scale=0.5), atol=1e-5)
    samples, _ = calibration_clouds(sources["plain"], 2, model_config=config)
    assert [len(s) for s in samples] == [len(CLOUDS[0]), len(CLOUDS[4])]
    assert capsys.readouterr().err.count("no sweep stamps: calibrating on single sweeps") == 1


def test_calibration_accumulates_a_plain_folder_with_a_sweep_period(sources):
    """quantize --sweep-period: the folder without stamped names accumulates as if its files were 0.05 s apart
    (the same windows as the stamped folder), and a single-sweep model refuses the option."""
    from lidar_ptq_core.calibration_data import calibration_clouds

    config = multi_sweep_config(count=3, max_time_lag=0.5)
    samples, described = calibration_clouds(sources["plain"], 2, model_config=config, sweep_period=0.05)
    assert "(stamps: --sweep-period 0.05 s)" in described and "1-3 sweeps per sample" in described
    np.testing.assert_allclose(samples[0], expected_window(0, 3, 0.05), atol=1e-5)
    np.testing.assert_allclose(samples[1], expected_window(4, 3, 0.05), atol=1e-5)
    with pytest.raises(ValueError, match="--sweep-period is for models that take accumulated sweeps"):
        calibration_clouds(sources["plain"], 2, sweep_period=0.05)
