"""detector_node's odometry_topic: a fake nav_msgs/Odometry publisher gives the sensor's pose while a tiny 3-sweep model
gets clouds of a static world from a moving, turning sensor. Past sweeps must reach the voxelizer moved into the
newest sweep's frame (where the newest sweep sees the same world points), each with its time lag; the pose used for
a sweep is the odometry message nearest its stamp."""

import itertools
import math
import os

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by ./dev; run the suite through ./dev test")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs is built into the venv by ./dev")
pytest.importorskip("nav_msgs.msg", reason="nav_msgs is installed by ./dev (requirements.txt: ros-kilted-nav-msgs)")

import torch  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402

from lidar_ptq_core.models.centerpoint import build_centerpoint  # noqa: E402
from lidar_ptq_core.models.checkpoint import save_checkpoint  # noqa: E402
from lidar_ptq_ros.detector_node import OUTPUT_QOS  # noqa: E402

from test_detector_node import Harness, wait_for  # noqa: E402
from test_full_size_configs import STAMP0_S, SWEEP_PERIOD_NS, publish_sweep  # noqa: E402
from test_sweeps import VoxelizerInputs, multi_sweep_config, to_sensor, yaw_pose  # noqa: E402

_topics = itertools.count(1)


@pytest.fixture(scope="module")
def three_sweep_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_centerpoint(multi_sweep_config(count=3, max_time_lag=0.25)),
                           tmp_path_factory.mktemp("model") / "three_sweeps.safetensors")


def odometry(stamp_ns: int, pose: np.ndarray) -> Odometry:
    """A nav_msgs/Odometry carrying `pose` (4x4, yaw about z only) at `stamp_ns`."""
    msg = Odometry()
    msg.header.frame_id, msg.child_frame_id = "odom", "lidar_test"
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.pose.pose.position.x, msg.pose.pose.position.y, msg.pose.pose.position.z = (float(v) for v in pose[:3, 3])
    yaw = math.atan2(pose[1, 0], pose[0, 0])
    msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = math.sin(yaw / 2), math.cos(yaw / 2)
    return msg


def test_past_sweeps_are_moved_into_the_newest_sweeps_frame(three_sweep_checkpoint, monkeypatch):
    rng = np.random.default_rng(5)
    world = np.concatenate([rng.uniform(-25, 25, (1500, 2)), rng.uniform(-1.8, 1.0, (1500, 1))], axis=1)
    identity = np.linspace(0.0, 1.0, len(world))[:, None]  # intensity names the world point
    # 8 m/s forward with a left turn of 0.4 rad/s: 0.8 m and 0.04 rad between sweeps
    sensor_poses = [yaw_pose(8.0 * t, 0.3 * t, 0.4 * t, z=1.7) for t in (0.0, 0.1, 0.2)]
    clouds = [np.concatenate([to_sensor(world, pose), identity], axis=1).astype(np.float32) for pose in sensor_poses]
    topic = f"/lidar_ptq_test_odom_{os.getpid()}_{next(_topics)}"
    seen = VoxelizerInputs(monkeypatch)
    harness = Harness(overrides={"model": str(three_sweep_checkpoint), "score_threshold": 0.0, "max_points": 0,
                                 "input_check_frames": 0, "odometry_topic": topic})
    try:
        publisher = harness.client.create_publisher(Odometry, topic, OUTPUT_QOS)
        wait_for(lambda: publisher.get_subscription_count() > 0, "discovery of the odometry subscription")
        # Odometry at 100 Hz around each sweep: the message nearest the sweep's stamp carries the true pose, its
        # neighbours 10 ms away a pose 1 m off, which must not be used.
        published = 0
        for k, pose in enumerate(sensor_poses):
            stamp_ns = STAMP0_S * 10**9 + k * SWEEP_PERIOD_NS
            wrong = pose.copy()
            wrong[0, 3] += 1.0
            for offset_ns, sent in ((-10_000_000, wrong), (0, pose), (10_000_000, wrong)):
                publisher.publish(odometry(stamp_ns + offset_ns, sent))
                published += 1
        wait_for(lambda: len(harness.node._poses) >= published, "the node receiving every odometry message")
        for k, cloud in enumerate(clouds):
            publish_sweep(harness, cloud, k, timeout=60.0)
    finally:
        harness.close()

    assert [len(c) for c in seen.clouds] == [len(world), 2 * len(world), 3 * len(world)]
    newest = seen.clouds[2]
    expected_xyz = to_sensor(world, sensor_poses[2])
    for k, lag in enumerate((0.0, 0.1, 0.2)):
        part = newest[k * len(world):(k + 1) * len(world)]
        np.testing.assert_allclose(part[:, 3], identity[:, 0], atol=1e-6)  # same points, same order
        np.testing.assert_allclose(part[:, :3], expected_xyz, atol=2e-3)
        np.testing.assert_allclose(part[:, 4], lag, atol=1e-6)
    # without compensation the oldest sweep would sit metres away from where the newest sees it (1.6 m of travel,
    # 0.08 rad of turn)
    assert np.median(np.linalg.norm(clouds[0][:, :3] - expected_xyz, axis=1)) > 1.5


def test_without_odometry_one_warning_at_start_names_the_smear(three_sweep_checkpoint, capfd):
    """No odometry_topic: the node warns once when it starts (the static-world limit with its size), and
    accumulating sweeps adds no second warning."""
    harness = Harness(overrides={"model": str(three_sweep_checkpoint), "score_threshold": 0.0, "max_points": 0,
                                 "input_check_frames": 0})
    try:
        assert harness.node._odometry_subscription is None
        for k in range(2):
            publish_sweep(harness, sample_cloud(k), k, timeout=60.0)
    finally:
        harness.close()
    err = capfd.readouterr().err
    assert err.count("not motion compensated") == 1, err
    assert "no odometry_topic" in err and "at 10 m/s 2.5 m over 0.25 s" in err


def sample_cloud(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(-30, 30, (800, 2)), rng.uniform(-2, 1, (800, 1)), rng.uniform(0, 1, (800, 1))],
                          axis=1).astype(np.float32)
