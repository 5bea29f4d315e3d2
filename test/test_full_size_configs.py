"""The full-size configs from a bag into the node (issue 18): the Waymo pillar and nuScenes voxel networks (random
weights) quantize from a bag of 4-field clouds and run in detector_node on 4-field clouds, the nuScenes one on
accumulated sweeps with their time lags; and the node's sweep accumulation on a tiny multi-sweep model.

The detector node runs in-process (test_detector_node's Harness); the clouds reaching the voxelizer are recorded by
wrapping runtime/detector.py's voxelize_clouds, so the time-lag column is checked where the network gets it.
"""

import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by ./dev; run the suite through ./dev test")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs is built into the venv by ./dev")

import torch  # noqa: E402

from lidar_ptq_core.calibration_data import calibration_clouds  # noqa: E402
from lidar_ptq_core.config_files import resolve_config  # noqa: E402
from lidar_ptq_core.models.centerpoint import build_centerpoint  # noqa: E402
from lidar_ptq_core.models.checkpoint import save_checkpoint  # noqa: E402
from lidar_ptq_core.models.config import CenterPointConfig  # noqa: E402
from lidar_ptq_core.pointcloud import PointCloud, write_bag_frames  # noqa: E402
from lidar_ptq_core.sim import generate_frame, load_sim_config  # noqa: E402
from lidar_ptq_core.sweeps import SweepConfig  # noqa: E402
from lidar_ptq_ros.conversions import msg_to_detections  # noqa: E402
from lidar_ptq_ros.detector_node import StartupError  # noqa: E402

from test_detector_node import FRAME_ID, Harness, sample_points, wait_for, xyzi_cloud  # noqa: E402
from test_sweeps import VoxelizerInputs, multi_sweep_config  # noqa: E402
from test_train import tiny_pillar_config  # noqa: E402

XYZI = ("x", "y", "z", "intensity")
STAMP0_S = 1_700_000_000
SWEEP_PERIOD_NS = 100_000_000  # 10 Hz
NODE_WAIT_S = 900.0  # a full-size frame takes seconds to a minute on the shared 2-core machine


def publish_sweep(harness: Harness, points: np.ndarray, index: int, timeout: float = NODE_WAIT_S):
    """Publish a 4-field cloud stamped STAMP0_S + index sweep periods; return the Detection3DArray answering it.
    Published again only until the node has received it, so that no sweep reaches the accumulator twice."""
    msg = xyzi_cloud(points)
    msg.header.frame_id = FRAME_ID
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(STAMP0_S * 10**9 + index * SWEEP_PERIOD_NS, 10**9)
    received, answered = harness.stats().frames_received, len(harness.detections)
    last = -np.inf

    def arrived():
        nonlocal last
        if harness.stats().frames_received > received:
            return True
        if time.monotonic() - last > 2.0:
            harness.publisher.publish(msg)
            last = time.monotonic()
        return False

    wait_for(arrived, f"the node receiving sweep {index}")
    stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
    return wait_for(lambda: next((m for m in harness.detections[answered:]
                                  if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp), None),
                    f"detections for sweep {index}", timeout)


def accumulated(clouds: list[np.ndarray], newest: int, count: int) -> np.ndarray:
    """What the voxelizer must get for sweep `newest`: it and up to count - 1 before it, newest first, each with
    x, y, z, intensity as published and its time lag (seconds) in the 5th column."""
    parts = []
    for k in range(newest, max(-1, newest - count), -1):
        lag = (newest - k) * SWEEP_PERIOD_NS * 1e-9
        parts.append(np.concatenate([clouds[k], np.full((len(clouds[k]), 1), lag, np.float32)], axis=1))
    return np.concatenate(parts)


# -- the full-size configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, node_sweeps", [("waymo_centerpoint_pillar_1x", 1),
                                               ("nuscenes_centerpoint_voxel0075_res3d", 2)],
                         ids=["waymo_pillar", "nuscenes_voxel"])
def test_full_size_config_quantizes_from_a_bag_and_runs_in_the_node(name, node_sweeps, tmp_path, monkeypatch):
    """Random weights, a bag of 3 simulated 4-field sweeps at 10 Hz, `max` calibration on every message (the
    library path `lidar-ptq quantize` takes: calibration_clouds with the model's config, voxelize, quantize), then
    the INT8 checkpoint in the node on 4-field clouds (elongation / time_lag filled with zeros, nuScenes' time_lag
    then set per accumulated sweep). Calibration checks 3 accumulated sweeps, the node 2: a full-size frame costs
    about a minute on the shared 2-core machine."""
    from lidar_ptq_core.quant import method_config
    from lidar_ptq_core.recipes.centerpoint import load_any_checkpoint, quantize_centerpoint, save_quantized_checkpoint
    from lidar_ptq_core.voxelize import voxelize_clouds

    torch.manual_seed(0)
    model = build_centerpoint(resolve_config(name, "models")).eval()
    config = model.config
    count = config.sweeps.count
    sim = load_sim_config("default")
    clouds = [generate_frame(sim, seed).points.astype(np.float32) for seed in range(3)]
    assert all(c.shape[1] == 4 for c in clouds)
    write_bag_frames(tmp_path / "bag", [(STAMP0_S * 10**9 + k * SWEEP_PERIOD_NS, FRAME_ID, PointCloud(c, XYZI))
                                        for k, c in enumerate(clouds)])

    samples, described = calibration_clouds(str(tmp_path / "bag"), 3, progress=False, model_config=config)
    assert len(samples) == 3 and all(s.shape[1] == 5 for s in samples)
    for k, sample in enumerate(samples):  # every message picked, each with the sweeps before it (nuScenes)
        np.testing.assert_allclose(sample, accumulated(clouds, k, count), atol=1e-6)
    batches = [voxelize_clouds([s], config.voxelization, config.num_point_features)[0] for s in samples]
    qmodel, report = quantize_centerpoint(model, batches, "max", method_config("max", sensitivity_frames=0),
                                          progress=False)
    assert report.layout["kept_float"] == [] and len(report.layout["quantized"]) > 30
    int8 = save_quantized_checkpoint(qmodel, report, tmp_path / "int8.safetensors")
    assert load_any_checkpoint(int8).config.sweeps == config.sweeps, "the INT8 checkpoint says how many sweeps"

    seen = VoxelizerInputs(monkeypatch)
    harness = Harness(overrides={"model": str(int8), "score_threshold": 0.0, "max_points": 0,
                                 "input_check_frames": 0})
    try:
        for k in range(node_sweeps):
            answer = publish_sweep(harness, clouds[k], k)
    finally:
        harness.close()
    assert len(seen.clouds) == node_sweeps
    for k, cloud in enumerate(seen.clouds):
        np.testing.assert_allclose(cloud, accumulated(clouds, k, count), atol=1e-6)
    if count > 1:
        lags = np.unique(seen.clouds[-1][:, 4])
        assert lags.tolist() == pytest.approx([0.0, 0.1], abs=1e-6), "both sweeps reach the voxelizer with their lags"
    detections = msg_to_detections(answer, config.class_names)
    assert len(detections) > 0 and np.isfinite(detections.boxes).all()


# -- the node's sweep accumulation, on a tiny model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_multi_sweep_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_centerpoint(multi_sweep_config(count=3, max_time_lag=0.25)),
                           tmp_path_factory.mktemp("model") / "tiny_sweeps.safetensors")


def test_node_accumulates_sweeps_within_the_time_limit(tiny_multi_sweep_checkpoint, monkeypatch):
    """3 sweeps within 0.25 s: the fourth sweep (0.3 s after the first) leaves the first out; a sweep stamped before
    the newest (a replay restarting) starts again from one sweep."""
    from lidar_ptq_core.runtime import Detector

    clouds = [sample_points(2000 + 100 * k, seed=k) for k in range(4)]
    seen = VoxelizerInputs(monkeypatch)
    harness = Harness(overrides={"model": str(tiny_multi_sweep_checkpoint), "score_threshold": 0.0,
                                 "max_points": 0, "input_check_frames": 0})
    try:
        answers = [publish_sweep(harness, cloud, k, timeout=60.0) for k, cloud in enumerate(clouds)]
        publish_sweep(harness, clouds[0], 0, timeout=60.0)
    finally:
        harness.close()
    assert [len(c) for c in seen.clouds] == [2000, 4100, 6300, 2300 + 2200 + 2100, 2000]
    for k in range(4):
        np.testing.assert_allclose(seen.clouds[k], accumulated(clouds, k, 3), atol=1e-6)
    np.testing.assert_allclose(seen.clouds[4], accumulated(clouds, 0, 1), atol=1e-6)
    # what the node published is the library's detection on the accumulated cloud
    expected = Detector.from_checkpoint(tiny_multi_sweep_checkpoint).detect(accumulated(clouds, 3, 3))
    got = msg_to_detections(answers[3], expected.class_names)
    assert len(got) == len(expected) > 0
    np.testing.assert_allclose(got.boxes[:, :6], expected.boxes[:, :6], atol=1e-4)


def test_odometry_topic_needs_nav_msgs_and_a_multi_sweep_model(tiny_multi_sweep_checkpoint, tiny_checkpoint):
    """./dev installs nav_msgs (requirements.txt: ros-kilted-nav-msgs), so odometry_topic subscribes; where it is
    not importable, asking for odometry stops the node with one line saying what to install. A single-sweep model
    ignores the parameter (test_odometry_node checks the compensation itself)."""
    try:
        import nav_msgs.msg  # noqa: F401
    except ImportError:
        with pytest.raises(StartupError, match="nav_msgs is not importable here; install ros-kilted-nav-msgs"):
            Harness(overrides={"model": str(tiny_multi_sweep_checkpoint), "odometry_topic": "/odom"})
    else:
        harness = Harness(overrides={"model": str(tiny_multi_sweep_checkpoint), "odometry_topic": "/odom"})
        try:
            assert harness.node._odometry_subscription.topic_name == "/odom"
        finally:
            harness.close()
    harness = Harness(overrides={"model": str(tiny_checkpoint), "odometry_topic": "/odom"})
    try:
        assert harness.node._sweeps is None and harness.node._odometry_subscription is None
    finally:
        harness.close()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_centerpoint(tiny_pillar_config()),
                           tmp_path_factory.mktemp("model") / "tiny.safetensors")


def test_single_sweep_configs_have_no_sweeps_section():
    assert CenterPointConfig.from_dict(tiny_pillar_config().to_dict()).sweeps == SweepConfig()


def test_odometry_topic_must_be_a_name():
    from lidar_ptq_ros.detector_node import PARAMETERS, validate_settings

    values = {spec.name: spec.default for spec in PARAMETERS}
    assert validate_settings({**values, "odometry_topic": " /odom "}).odometry_topic == "/odom"
    with pytest.raises(ValueError, match="parameter 'odometry_topic' is 5; it must be a topic name or empty"):
        validate_settings({**values, "odometry_topic": 5})
