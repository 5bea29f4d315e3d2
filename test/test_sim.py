"""The synthetic lidar benchmark: determinism, splits, sensor geometry, ground truth, occlusion, cache, CLI, render."""

import argparse
import dataclasses
import math
import os

import numpy as np
import pytest
import yaml

from lidar_ptq_core import boxfile
from lidar_ptq_core.commands import sim as sim_command
from lidar_ptq_core.config_files import resolve_config
from lidar_ptq_core.detections import Detections
from lidar_ptq_core.geometry import bev_iou_matrix
from lidar_ptq_core.sim import (
    CLASS_NAMES,
    FRAMES_PER_SPLIT,
    SPLIT_SEED_OFFSETS,
    SPLITS,
    LidarConfig,
    Scene,
    SimConfig,
    SimDataset,
    Terrain,
    generate_frame,
    ground_truth,
    load_sim_config,
    render_bev,
    scan,
    sim_config_from_dict,
    simulate,
    split_frame_id,
    split_seed,
)
from lidar_ptq_core.sim.config import beam_elevations_deg
from lidar_ptq_core.sim.scene import CAR, PEDESTRIAN, TRUCK

# 16 beams at 0.5 deg keep most tests around 20 ms a frame; the full 64-beam config is used where density matters.
SMALL_LIDAR = LidarConfig(name="test16", beam_blocks=((2.0, -24.9, 16),), azimuth_resolution_deg=0.5)
SMALL = SimConfig(lidar=SMALL_LIDAR)
MEDIUM_LIDAR = LidarConfig(
    name="test32", beam_blocks=((2.0, -8.33, 16), (-8.83, -24.9, 16)), azimuth_resolution_deg=0.25
)


def recount(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Points inside each box, computed independently of the simulator (float64, boundary included)."""
    pts = points[:, :3].astype(np.float64)
    counts = []
    for x, y, z, l, w, h, yaw in boxes.astype(np.float64):
        dx, dy = pts[:, 0] - x, pts[:, 1] - y
        along = dx * math.cos(yaw) + dy * math.sin(yaw)
        across = -dx * math.sin(yaw) + dy * math.cos(yaw)
        inside = (np.abs(along) <= l / 2) & (np.abs(across) <= w / 2) & (np.abs(pts[:, 2] - z) <= h / 2)
        counts.append(int(inside.sum()))
    return np.array(counts, np.int64)


# --- determinism and splits ------------------------------------------------------------------------------------


def test_same_seed_same_frame_and_different_seed_differs():
    a, b, c = generate_frame(SMALL, 5), generate_frame(SMALL, 5), generate_frame(SMALL, 6)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.gt.boxes, b.gt.boxes)
    np.testing.assert_array_equal(a.gt.labels, b.gt.labels)
    np.testing.assert_array_equal(a.gt.num_points, b.gt.num_points)
    assert a.points.shape != c.points.shape or not np.array_equal(a.points, c.points)
    assert a.gt.boxes.shape != c.gt.boxes.shape or not np.array_equal(a.gt.boxes, c.gt.boxes)


def test_splits_use_disjoint_seed_ranges():
    indices = (0, 1, 2, 999, FRAMES_PER_SPLIT - 1)
    train, val, calib = ({split_seed(split, i) for i in indices} for split in ("train", "val", "calib"))
    assert not train & val and not train & calib and not val & calib
    assert split_seed("val", 3) == 1_000_003 and split_seed("calib", 0) == 2_000_000
    with pytest.raises(ValueError):
        split_seed("val", FRAMES_PER_SPLIT)
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        split_seed("holdout", 0)
    assert split_frame_id("train", 7) == "train_000007" != split_frame_id("val", 7)
    train_set, val_set = SimDataset("train", 3, SMALL, cache=False), SimDataset("val", 3, SMALL, cache=False)
    assert {train_set.seed(i) for i in range(3)}.isdisjoint({val_set.seed(i) for i in range(3)})


def test_test_split_seed_range_overlaps_no_other_split():
    # Whole ranges, from their end points: [first, last] of every split, pairwise disjoint.
    ranges = {split: (split_seed(split, 0), split_seed(split, FRAMES_PER_SPLIT - 1)) for split in SPLITS}
    assert "test" in ranges and set(SPLIT_SEED_OFFSETS) == set(SPLITS)
    first, last = ranges["test"]
    assert last - first == FRAMES_PER_SPLIT - 1  # contiguous: seed = offset + index
    for split, (other_first, other_last) in ranges.items():
        if split != "test":
            assert last < other_first or first > other_last, f"test seeds overlap {split}'s"
    # Every pair, not only test: no seed is drawn by two splits.
    bounds = sorted(ranges.values())
    assert all(prev_last < next_first for (_, prev_last), (next_first, _) in zip(bounds, bounds[1:]))
    with pytest.raises(ValueError):
        split_seed("test", FRAMES_PER_SPLIT)
    assert split_frame_id("test", 7) == "test_000007"


def test_test_split_frames_differ_from_val():
    test_set, val_set = SimDataset("test", 3, SMALL, cache=False), SimDataset("val", 3, SMALL, cache=False)
    for i in range(3):
        test_frame, val_frame = test_set[i], val_set[i]
        assert test_frame.frame_id == f"test_{i:06d}" and test_set.seed(i) != val_set.seed(i)
        assert test_frame.points.shape != val_frame.points.shape or not np.array_equal(test_frame.points,
                                                                                       val_frame.points)
        assert test_frame.gt.boxes.shape != val_frame.gt.boxes.shape or not np.array_equal(test_frame.gt.boxes,
                                                                                           val_frame.gt.boxes)


# --- sensor geometry -------------------------------------------------------------------------------------------


def test_points_are_kitti_layout_within_range():
    frame = generate_frame(SMALL, 11)
    pts = frame.points
    assert pts.dtype == np.float32 and pts.ndim == 2 and pts.shape[1] == 4 and len(pts) > 1000
    assert np.isfinite(pts).all()
    assert pts[:, 3].min() >= 0.0 and pts[:, 3].max() <= 1.0
    dist = np.linalg.norm(pts[:, :3], axis=1)
    noise = 6 * SMALL_LIDAR.range_noise_m
    assert dist.max() <= SMALL_LIDAR.max_range_m + noise
    assert dist.min() >= SMALL_LIDAR.min_range_m - noise
    # Sensor frame: the ground near the sensor is about one sensor height below the origin.
    near = np.hypot(pts[:, 0], pts[:, 1]) < 8
    assert abs(np.median(pts[near, 2]) + SMALL_LIDAR.sensor_height_m) < 0.15


def test_beam_tables():
    default, vlp32 = load_sim_config("default"), load_sim_config("vlp32")
    e64, e32 = beam_elevations_deg(default.lidar), beam_elevations_deg(vlp32.lidar)
    assert len(e64) == 64 and e64[0] == pytest.approx(2.0) and e64[-1] == pytest.approx(-24.9)
    assert len(e32) == 32 and e32[0] == pytest.approx(10.67) and e32[-1] == pytest.approx(-30.67)
    assert default.lidar.max_range_m >= 100 and vlp32.lidar.max_range_m >= 100


def _flat_scene() -> Scene:
    return Scene(Terrain.flat(SMALL_LIDAR.sensor_height_m))


def test_ray_casting_lands_on_the_surfaces():
    quiet = dataclasses.replace(SMALL_LIDAR, range_noise_m=0.0, dropout=0.0)
    scene = _flat_scene()
    scene.add_box((20.5, 0.0, 0.0), (1.0, 10.0, 6.0), 0.0, 0.5)  # a wall whose near face is x = 20
    scene.add_cylinder(0.0, 10.0, -1.0, 2.0, 1.0, 0.5)  # a raised post, axis at (0, 10)
    scene.add_ellipsoid((-10.0, 0.0, 0.0), 2.0, 1.0, 0.5)  # a flattened ball
    sweep = scan(scene, quiet, np.random.default_rng(0))
    pts = sweep.points.astype(np.float64)
    wall = (np.abs(pts[:, 1]) < 4) & (pts[:, 0] > 15) & (pts[:, 2] > -1.7)
    assert wall.sum() > 20 and np.allclose(pts[wall, 0], 20.0, atol=1e-3)
    post = (np.hypot(pts[:, 0], pts[:, 1] - 10.0) < 1.5) & (pts[:, 2] > -1.7)
    assert post.sum() > 10 and np.allclose(np.hypot(pts[post, 0], pts[post, 1] - 10.0), 1.0, atol=1e-3)
    ball = (np.hypot(pts[:, 0] + 10.0, pts[:, 1]) < 2.5) & (pts[:, 2] > -1.7)
    radius = np.sqrt(((pts[ball, 0] + 10) / 2) ** 2 + (pts[ball, 1] / 2) ** 2 + pts[ball, 2] ** 2)
    assert ball.sum() > 10 and np.allclose(radius, 1.0, atol=1e-3)
    ground = pts[:, 2] < -1.7
    assert np.allclose(pts[ground, 2], -SMALL_LIDAR.sensor_height_m, atol=1e-3)
    wall_edges = (pts[:, 0] > 15) & ~ground  # the wall's full width, not just its middle
    assert np.allclose(pts[wall_edges, 0], 20.0, atol=1e-3)
    assert (ground | wall_edges | post | ball).all()


# --- ground truth ----------------------------------------------------------------------------------------------


def test_ground_truth_counts_the_points_inside_each_box():
    for seed in (1, 2):
        frame = generate_frame(SMALL, seed)
        gt = frame.gt
        assert len(gt) > 5 and gt.class_names == CLASS_NAMES
        np.testing.assert_array_equal(gt.num_points, recount(frame.points, gt.boxes))
        assert gt.ignore[gt.num_points < SMALL.min_points].all()


def test_objects_stand_on_the_ground_and_do_not_overlap():
    scene, _ = simulate(SMALL, 3)
    boxes, labels = scene.object_array()
    assert set(labels.tolist()) >= {CAR, PEDESTRIAN}
    bottom = boxes[:, 2] - boxes[:, 5] / 2
    np.testing.assert_allclose(bottom, scene.terrain.height(boxes[:, 0], boxes[:, 1]), atol=1e-3)
    iou = bev_iou_matrix(boxes, boxes)
    np.fill_diagonal(iou, 0.0)
    assert iou.max() == 0.0
    prims, _, _ = scene.primitive_arrays()
    buildings = prims[(prims[:, 3] > 5) & (prims[:, 4] > 5) & (prims[:, 5] > 3)][:, :7]
    assert len(buildings) and bev_iou_matrix(boxes, buildings).max() == 0.0
    # Every primitive of an object lies inside its annotated box (checked through its centre).
    owned = prims[prims[:, 9] >= 0]
    counts = recount(owned[:, :3].astype(np.float32), boxes)
    assert counts.sum() == len(owned)


def test_far_objects_exist_and_are_sparser():
    # Density matters here, so the real 64-beam sensor.
    config = load_sim_config("default")
    near, far, far_visible_classes = [], [], set()
    for seed in (21, 22):
        gt = generate_frame(config, seed).gt
        dist = np.hypot(gt.boxes[:, 0], gt.boxes[:, 1])
        near += gt.num_points[dist < 25].tolist()
        far += gt.num_points[dist > 50].tolist()
        far_visible_classes |= set(gt.labels[(dist > 50) & ~gt.ignore].tolist())
    assert len(far) >= 10 and len(near) >= 5
    assert np.mean(far) < np.mean(near) / 4
    assert CAR in far_visible_classes


def test_occlusion_removes_points_behind_an_object():
    rng = np.random.default_rng(0)
    target = (20.0, 0.0, -1.8 + 0.775, 4.5, 1.85, 1.55, 0.0)

    def points_on_target(with_blocker: bool):
        scene = _flat_scene()
        scene.add_object(CAR, target, rng)
        if with_blocker:
            scene.add_object(TRUCK, (12.0, 0.3, -1.8 + 1.4, 6.0, 2.4, 2.8, 0.0), rng)
        sweep = scan(scene, MEDIUM_LIDAR, np.random.default_rng(1))
        return ground_truth(scene, sweep, 5)

    alone, hidden = points_on_target(False), points_on_target(True)
    assert alone.num_points[0] > 50 and not alone.ignore[0]
    assert hidden.num_points[0] < alone.num_points[0] / 3

    # A pedestrian right behind a wall is fully occluded, hence ignored.
    scene = _flat_scene()
    scene.add_box((10.0, 0.0, 0.0), (0.5, 8.0, 4.0), 0.0, 0.4)
    scene.add_object(PEDESTRIAN, (13.0, 0.0, -1.8 + 0.875, 0.7, 0.65, 1.75, 0.0), rng)
    gt = ground_truth(scene, scan(scene, MEDIUM_LIDAR, np.random.default_rng(2)), 5)
    assert gt.num_points[0] == 0 and gt.ignore[0]


# --- config ----------------------------------------------------------------------------------------------------


def test_config_files_load_and_unknown_keys_are_rejected(tmp_path):
    assert load_sim_config("default") == SimConfig()  # default.yaml spells out the dataclass defaults
    assert load_sim_config(resolve_config("vlp32", "sim")).lidar.name == "hdl32e"
    with pytest.raises(ValueError, match="beams_blocks"):
        sim_config_from_dict({"lidar": {"beams_blocks": [[1, -1, 4]]}})
    with pytest.raises(ValueError, match="max_range_m"):
        sim_config_from_dict({"lidar": {"max_range_m": "far"}})
    with pytest.raises(ValueError, match="unknown"):
        sim_config_from_dict({"scene": {"sizes": {"bus": {}}}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("lidar:\n  azimuth_resolution_deg: 0.2\ncolour: red\n")
    with pytest.raises(ValueError, match="colour"):
        load_sim_config(bad)
    with pytest.raises(FileNotFoundError):
        load_sim_config("no_such_sensor")


# --- dataset cache ---------------------------------------------------------------------------------------------


def test_cache_is_reused_and_keyed_by_config(tmp_path):
    first = SimDataset("val", 2, SMALL, cache_dir=tmp_path)
    frame = first[0]
    assert first.generated == 1 and len(first) == 2
    path = first.frame_path(0)
    stamp = path.stat().st_mtime_ns

    again = SimDataset("val", 2, SMALL, cache_dir=tmp_path)
    cached = again[0]
    assert again.generated == 0 and path.stat().st_mtime_ns == stamp
    assert cached.frame_id == frame.frame_id == "val_000000"
    np.testing.assert_array_equal(cached.points, frame.points)
    np.testing.assert_array_equal(cached.gt.boxes, frame.gt.boxes)
    np.testing.assert_array_equal(cached.gt.ignore, frame.gt.ignore)

    changed = SimDataset("val", 2, dataclasses.replace(SMALL, min_points=7), cache_dir=tmp_path)
    assert changed.fingerprint != first.fingerprint and changed.frame_path(0) != path
    changed[0]
    assert changed.generated == 1

    assert again.prepare(progress=False) == 1 and again.prepare(progress=False) == 0  # only frame 1 was missing
    path.write_bytes(b"half a file")  # a damaged cache entry is made again, not trusted
    np.testing.assert_array_equal(SimDataset("val", 2, SMALL, cache_dir=tmp_path)[0].points, frame.points)
    assert [f.frame_id for f in again] == ["val_000000", "val_000001"]
    with pytest.raises(IndexError):
        again[2]


def test_prepare_with_workers_matches_in_process(tmp_path):
    parallel = SimDataset("calib", 2, SMALL, cache_dir=tmp_path / "a")
    assert parallel.prepare(num_workers=2, progress=False) == 2
    serial = SimDataset("calib", 2, SMALL, cache=False)
    for i in range(2):
        np.testing.assert_array_equal(parallel[i].points, serial[i].points)
    assert parallel.generated == 2


def test_cache_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LIDAR_PTQ_CACHE", str(tmp_path))
    ds = SimDataset("train", 1, SMALL)
    assert str(ds.frame_path(0)).startswith(str(tmp_path))


# --- command line and render -----------------------------------------------------------------------------------


def _run_sim_command(argv) -> int:
    parser = argparse.ArgumentParser()
    sim_command.add_arguments(parser)
    return sim_command.run(parser.parse_args(argv))


def test_cli_writes_frames_that_boxfile_reads_back(tmp_path, monkeypatch):
    monkeypatch.setenv("LIDAR_PTQ_CACHE", str(tmp_path / "cache"))
    config_file = tmp_path / "small.yaml"
    small = {"name": "test16", "beam_blocks": [[2.0, -24.9, 16]], "azimuth_resolution_deg": 0.5}
    config_file.write_text(yaml.safe_dump({"lidar": small}))
    out = tmp_path / "out"
    assert _run_sim_command(["--config", str(config_file), "--split", "val", "--frames", "2", "--out", str(out)]) == 0
    for i in range(2):
        expected = SimDataset("val", 2, load_sim_config(config_file), cache=False)[i]
        frame_id = expected.frame_id
        points = np.fromfile(out / "points" / f"{frame_id}.bin", dtype="<f4").reshape(-1, 4)
        np.testing.assert_array_equal(points, expected.points)
        read_id, gt = boxfile.read_ground_truth(out / "labels" / f"{frame_id}.json")
        assert read_id == frame_id and gt.class_names == CLASS_NAMES
        np.testing.assert_allclose(gt.boxes, expected.gt.boxes, atol=1e-4)
        np.testing.assert_array_equal(gt.labels, expected.gt.labels)
        np.testing.assert_array_equal(gt.num_points, expected.gt.num_points)
        np.testing.assert_array_equal(gt.ignore, expected.gt.ignore)
    with pytest.raises(ValueError, match="nothing to do"):
        _run_sim_command(["--seed", "3"])
    test_out = tmp_path / "test_out"
    assert _run_sim_command(["--config", str(config_file), "--split", "test", "--frames", "1", "--out",
                             str(test_out)]) == 0
    assert [p.name for p in (test_out / "labels").iterdir()] == ["test_000000.json"]


def test_render_writes_a_png(tmp_path):
    frame = generate_frame(SMALL, 4)
    det = Detections(frame.gt.boxes[:3] + 0.3, np.array([0.9, 0.5, 0.2]), frame.gt.labels[:3], CLASS_NAMES)
    path = tmp_path / "bev.png"
    render_bev(path, frame.points, frame.gt, det, xy_range=60, title="t", color_by="intensity", size_inches=4, dpi=60)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["bev.png"]  # no temporary left behind
    render_bev(tmp_path / "points_only.png", frame.points[:, :3], size_inches=3, dpi=50)
    assert (tmp_path / "points_only.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError):
        render_bev(tmp_path / "x.png", frame.points[:, :3], color_by="intensity")


def test_cli_renders_one_seed(tmp_path):
    png = tmp_path / "scene.png"
    assert _run_sim_command(["--seed", "7", "--config", "vlp32", "--render", str(png), "--no-cache"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 10000


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_cli_writes_a_rosbag2_calibration_bag(tmp_path, monkeypatch, storage):
    from lidar_ptq_core.pointcloud import iter_bag_frames

    monkeypatch.setenv("LIDAR_PTQ_CACHE", str(tmp_path / "cache"))
    config_file = tmp_path / "small.yaml"
    config_file.write_text(yaml.safe_dump({"lidar": {"name": "test8", "beam_blocks": [[2.0, -24.9, 8]],
                                                      "azimuth_resolution_deg": 1.0}}))
    bag = tmp_path / "calib_bag"
    argv = ["--config", str(config_file), "--split", "calib", "--frames", "3", "--bag", str(bag),
            "--bag-storage", storage, "--topic", "/lidar/points", "--rate", "5"]
    assert _run_sim_command(argv) == 0
    expected = SimDataset("calib", 3, load_sim_config(config_file), cache=False)
    frames = list(iter_bag_frames(bag))
    assert len(frames) == 3
    assert frames[1].timestamp_ns - frames[0].timestamp_ns == 200_000_000  # 5 Hz
    for k, frame in enumerate(frames):
        assert frame.frame_id == "lidar" and frame.cloud.fields == ("x", "y", "z", "intensity")
        np.testing.assert_array_equal(frame.cloud.points, expected[k].points)
    with pytest.raises(FileExistsError):  # bags are never overwritten
        _run_sim_command(argv)
