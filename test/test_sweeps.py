"""Sweep accumulation for multi-sweep models (lidar_ptq_core/sweeps.py): the last sweeps with their time lags, motion
compensated when poses are given, in the library (SweepDetector) and in calibration from a bag."""

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

from lidar_ptq_core.calibration_data import calibration_clouds
from lidar_ptq_core.models.config import CenterPointConfig
from lidar_ptq_core.pointcloud import PointCloud, write_bag_frames
from lidar_ptq_core.sweeps import (
    SweepAccumulator,
    SweepConfig,
    SweepDetector,
    pose_from_position_quaternion,
    pose_matrix,
)

from test_train import tiny_pillar_config

FEATURES = ("x", "y", "z", "intensity", "time_lag")


def sweep(seed: int, n: int = 50) -> np.ndarray:
    """(n, 5) x, y, z, intensity, time_lag (garbage the accumulator must overwrite)."""
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.uniform(-20, 20, (n, 2)), rng.uniform(-2, 1, (n, 1)), rng.uniform(0, 1, (n, 1)),
                             np.full((n, 1), 7.0)], axis=1)
    return points.astype(np.float32)


def yaw_pose(x: float, y: float, yaw: float, z: float = 0.0, pitch: float = 0.0) -> np.ndarray:
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    pose = np.eye(4)
    pose[:3, :3] = rz @ ry
    pose[:3, 3] = (x, y, z)
    return pose


def to_sensor(world_xyz: np.ndarray, pose: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(pose)
    return world_xyz @ inverse[:3, :3].T + inverse[:3, 3]


class VoxelizerInputs:
    """Records every cloud runtime/detector.py hands to voxelize_clouds (what the network gets); shared by the sweep
    tests of the commands, the node and the full-size configs."""

    def __init__(self, monkeypatch):
        import lidar_ptq_core.runtime.detector as detector_module

        self.clouds = []
        real = detector_module.voxelize_clouds

        def recording(clouds, *args, **kwargs):
            self.clouds.extend(np.array(c, copy=True) for c in clouds)
            return real(clouds, *args, **kwargs)

        monkeypatch.setattr(detector_module, "voxelize_clouds", recording)


def multi_sweep_config(count: int = 3, max_time_lag: float = 0.5) -> CenterPointConfig:
    data = tiny_pillar_config().to_dict()
    data.update(num_point_features=5, point_features=list(FEATURES),
                sweeps={"count": count, "max_time_lag": max_time_lag})
    return CenterPointConfig.from_dict(data)


# -- the accumulator ----------------------------------------------------------------------------------------------
def test_last_sweeps_newest_first_with_their_time_lags():
    accumulator = SweepAccumulator(3, 0.5, time_lag_column=4)
    sweeps = [sweep(i, 10 + i) for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no poses: the one-time note is tested below
        outputs = [accumulator.add(s, 100.0 + 0.1 * i) for i, s in enumerate(sweeps)]
    # the first sweep alone, with time lag 0 instead of the garbage 7
    np.testing.assert_array_equal(outputs[0][:, :4], sweeps[0][:, :4])
    assert (outputs[0][:, 4] == 0).all()
    # the fourth: sweeps 3, 2, 1 (count 3 drops sweep 0), each with its lag; other columns untouched
    last = outputs[3]
    sizes = [len(sweeps[i]) for i in (3, 2, 1)]
    assert len(last) == sum(sizes) and accumulator.last_sweep_count == 3 and len(accumulator) == 2
    bounds = np.cumsum([0] + sizes)
    for k, (i, lag) in enumerate(zip((3, 2, 1), (0.0, 0.1, 0.2))):
        part = last[bounds[k]:bounds[k + 1]]
        np.testing.assert_array_equal(part[:, :4], sweeps[i][:, :4])
        np.testing.assert_allclose(part[:, 4], lag, atol=1e-6)
    assert last.dtype == np.float32


def test_sweeps_older_than_the_limit_are_left_out_and_a_replay_restart_empties_the_history():
    accumulator = SweepAccumulator(10, 0.25, time_lag_column=4, notify=lambda text: None)
    for i in range(6):
        out = accumulator.add(sweep(i), 0.1 * i)
    assert accumulator.last_sweep_count == 3, "lags 0, 0.1, 0.2 are kept; 0.3 and older are not"
    assert sorted(set(np.round(out[:, 4], 4))) == [0.0, 0.1, 0.2]
    again = accumulator.add(sweep(5), 0.5)  # the last message delivered twice: no sweep twice
    assert accumulator.last_sweep_count == 3 and len(again) == len(out)
    np.testing.assert_array_equal(again, out)
    out = accumulator.add(sweep(9), 0.05)  # the bag started again
    assert len(out) == len(sweep(9)) and (out[:, 4] == 0).all() and len(accumulator) == 1


def test_poses_move_past_sweeps_into_the_current_frame():
    """A static world seen from a moving, turning, pitched sensor (with a z offset on the points): every sweep's points
    land where the current sweep sees the same world points."""
    rng = np.random.default_rng(3)
    world = rng.uniform(-30, 30, (200, 3))
    z_offset = 1.5
    accumulator = SweepAccumulator(4, 0.5, time_lag_column=4, z_offset=z_offset,
                                   notify=lambda text: pytest.fail(f"no note expected with poses: {text}"))
    poses = [yaw_pose(10.0 * t, 0.5 * t, 0.3 * t, z=1.8, pitch=0.02 * t) for t in (0.0, 0.1, 0.2, 0.3)]
    for k, pose in enumerate(poses):
        points = np.zeros((len(world), 5), np.float32)
        points[:, :3] = to_sensor(world, pose)
        points[:, 2] += z_offset
        points[:, 3] = np.arange(len(world)) / len(world)  # identifies the world point
        out = accumulator.add(points, 0.1 * k, pose)
    expected = to_sensor(world, poses[-1])
    expected[:, 2] += z_offset
    for k in range(4):
        part = out[k * len(world):(k + 1) * len(world)]
        np.testing.assert_allclose(part[:, :3], expected, atol=2e-3)
        np.testing.assert_allclose(part[:, 4], 0.1 * k, atol=1e-6)
    # without poses the same sweeps stay where they were seen: 10 m/s x 0.3 s = 3 m off and more
    plain = SweepAccumulator(4, 0.5, time_lag_column=4)
    with pytest.warns(UserWarning, match="without poses.*10 m/s a point 0.5 s old is 5 m off") as caught:
        for k, pose in enumerate(poses):
            points = np.zeros((len(world), 5), np.float32)
            points[:, :3] = to_sensor(world, pose)
            uncompensated = plain.add(points, 0.1 * k)
    assert len(caught) == 1, "reported once"
    oldest = uncompensated[3 * len(world):, :3]
    np.testing.assert_allclose(oldest, to_sensor(world, poses[0]), atol=1e-4)  # where the sensor saw them
    assert np.linalg.norm(oldest - to_sensor(world, poses[-1]), axis=1).mean() > 2.5


def test_a_world_point_seen_from_two_poses_lands_in_one_place():
    """Known answer by hand: a post at world (10, 0, 0). The sensor first sits at the origin facing +x (sees it at
    (10, 0, 0)), then 2 m further along x, turned 90 degrees left (sees it 8 m to its right: (0, -8, 0)). After
    compensation the older sighting lands on the newer one."""
    first = np.eye(4)
    second = pose_from_position_quaternion((2, 0, 0), (0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)))
    accumulator = SweepAccumulator(2, 0.5, time_lag_column=4, notify=lambda text: pytest.fail(text))
    accumulator.add(np.array([[10, 0, 0, 0.5, 0]], np.float32), 0.0, first)
    out = accumulator.add(np.array([[0, -8, 0, 0.5, 0]], np.float32), 0.1, second)
    np.testing.assert_allclose(out[:, :3], [[0, -8, 0], [0, -8, 0]], atol=1e-5)
    np.testing.assert_allclose(out[:, 4], [0.0, 0.1], atol=1e-6)


def test_pose_from_an_odometry_quaternion():
    half = math.pi / 4  # 90 degrees about z
    pose = pose_from_position_quaternion((1, 2, 3), (0, 0, math.sin(half), math.cos(half)))
    np.testing.assert_allclose(pose @ [1, 0, 0, 1], [1, 3, 3, 1], atol=1e-12)
    np.testing.assert_allclose(pose_from_position_quaternion((0, 0, 0), (0, 0, 0, 2.0)), np.eye(4))
    with pytest.raises(ValueError, match="not a usable quaternion"):
        pose_from_position_quaternion((0, 0, 0), (0, 0, 0, 0))


def test_bad_inputs_give_one_line_errors():
    accumulator = SweepAccumulator(3, 0.5, time_lag_column=4)
    with pytest.raises(ValueError, match="4x4"):
        accumulator.add(sweep(0), 0.0, np.eye(3))
    with pytest.raises(ValueError, match="rigid"):
        pose_matrix(np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ValueError, match="finite number of seconds"):
        accumulator.add(sweep(0), float("nan"))
    with pytest.raises(ValueError, match="needs column 4"):
        accumulator.add(sweep(0)[:, :4], 0.0)
    with pytest.raises(ValueError, match=r"\(N, >= 3\)"):
        accumulator.add(np.zeros((5, 2)), 0.0)
    with pytest.raises(ValueError, match="sweeps.count must be an integer >= 1"):
        SweepAccumulator(0, 0.5)
    with pytest.raises(ValueError, match="max_time_lag must be a number of seconds > 0"):
        SweepConfig(3, -1.0)
    with pytest.raises(ValueError, match="after x, y, z"):
        SweepAccumulator(3, 0.5, time_lag_column=2)


def test_model_configs_say_how_many_sweeps():
    from lidar_ptq_core.config_files import resolve_config
    from lidar_ptq_core.models.config import load_model_config

    nuscenes = load_model_config(resolve_config("nuscenes_centerpoint_voxel0075_res3d", "models"))
    assert nuscenes.sweeps == SweepConfig(10, 0.5)
    accumulator = SweepAccumulator.for_model(nuscenes)
    assert (accumulator.num_sweeps, accumulator.max_time_lag_s, accumulator.time_lag_column) == (10, 0.5, 4)
    assert CenterPointConfig.from_dict(nuscenes.to_dict()) == nuscenes
    for name in ("waymo_centerpoint_pillar_1x", "sim_pillar"):
        single = load_model_config(resolve_config(name, "models"))
        assert single.sweeps.count == 1 and "sweeps" not in single.to_dict()
        assert SweepAccumulator.for_model(single) is None
    with pytest.raises(ValueError, match="unknown keys in sweeps"):
        CenterPointConfig.from_dict({**nuscenes.to_dict(), "sweeps": {"number": 10}})


# -- the library and calibration ----------------------------------------------------------------------------------
def test_sweep_detector_detects_on_the_accumulated_cloud():
    import torch

    from lidar_ptq_core.models.centerpoint import build_centerpoint
    from lidar_ptq_core.runtime import Detector

    torch.manual_seed(0)
    detector = Detector(build_centerpoint(multi_sweep_config(count=3)))
    sweeping = SweepDetector(detector, notify=lambda text: None)
    xyz_only = [sweep(i, 3000)[:, :3] for i in range(3)]  # a sensor without intensity: zeros, as everywhere
    for k, points in enumerate(xyz_only):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = sweeping.detect(points, 5.0 + 0.1 * k)
    expected_points = np.concatenate([np.concatenate([p, np.zeros((len(p), 1)), np.full((len(p), 1), lag)], axis=1)
                                      for p, lag in zip(xyz_only[::-1], (0.0, 0.1, 0.2))]).astype(np.float32)
    np.testing.assert_allclose(sweeping.last_points, expected_points, atol=1e-6)
    expected = detector.detect(expected_points)
    assert len(got) == len(expected) > 0
    np.testing.assert_array_equal(got.boxes, expected.boxes)
    # a single-sweep model passes through
    single = SweepDetector(Detector(build_centerpoint(tiny_pillar_config())))
    assert single.accumulator is None
    points = sweep(0)[:, :4]
    np.testing.assert_array_equal(single.detect(points, 1.0).boxes, single.detector.detect(points).boxes)


def test_calibration_from_a_bag_accumulates_the_messages_before_each_pick(tmp_path, capsys):
    """8 messages at 10 Hz, x y z intensity only; 3 picks spread over them (messages 0, 4 and 7) for a 3-sweep model:
    the first alone, the others with the two messages before them and their lags; the intensity scale applies to
    every sweep."""
    clouds = [sweep(i, 20 + i)[:, :4] for i in range(8)]
    stamps_ns = [1_700_000_000_000_000_000 + i * 100_000_000 for i in range(8)]
    write_bag_frames(tmp_path / "bag", [(t, "lidar", PointCloud(c, ("x", "y", "z", "intensity")))
                                        for t, c in zip(stamps_ns, clouds)])
    config = multi_sweep_config(count=3)
    samples, described = calibration_clouds(str(tmp_path / "bag"), 3, model_config=config, intensity_scale=0.5)
    assert len(samples) == 3 and "each with up to 2 messages before it" in described and "1-3 sweeps" in described
    np.testing.assert_allclose(samples[0][:, :3], clouds[0][:, :3])
    assert (samples[0][:, 4] == 0).all()
    for sample, pick in zip(samples[1:], (4, 7)):
        expected = np.concatenate([np.concatenate([clouds[i][:, :3], 0.5 * clouds[i][:, 3:4],
                                                   np.full((len(clouds[i]), 1), lag)], axis=1)
                                   for i, lag in ((pick, 0.0), (pick - 1, 0.1), (pick - 2, 0.2))])
        np.testing.assert_allclose(sample, expected, atol=1e-5)
    assert capsys.readouterr().err.count("not motion compensated") == 1, "said once per calibration"
    # a folder has no stamps: single sweeps, and it says so
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(2):
        clouds[i].astype(np.float32).tofile(folder / f"{i:06d}.bin")
    samples, _ = calibration_clouds(str(folder), 2, model_config=config)
    assert [len(s) for s in samples] == [len(clouds[0]), len(clouds[1])] and all((s[:, 4] == 0).all() for s in samples)
    assert "no sweep stamps: calibrating on single sweeps" in capsys.readouterr().err


def test_a_model_without_sweeps_calibrates_from_a_bag_as_before(tmp_path):
    clouds = [sweep(i, 20)[:, :4] for i in range(4)]
    write_bag_frames(tmp_path / "bag", [(i * 100_000_000, "lidar", PointCloud(c, ("x", "y", "z", "intensity")))
                                        for i, c in enumerate(clouds)])
    config = replace(multi_sweep_config(), sweeps=SweepConfig())
    samples, _ = calibration_clouds(str(tmp_path / "bag"), 2, model_config=config)
    assert [len(s) for s in samples] == [20, 20]
    np.testing.assert_allclose(samples[1][:, :4], clouds[3])
