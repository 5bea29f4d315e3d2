"""PointCloud2 and Detection3DArray through real rclpy / Fast DDS, discovery on loopback only (see conftest)."""

import os
import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by ./dev; run the suite through ./dev test")
vision_msgs = pytest.importorskip("vision_msgs.msg", reason="vision_msgs is built into the venv by ./dev")

from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from vision_msgs.msg import Detection3DArray  # noqa: E402

from lidar_ptq_core.detections import Detections  # noqa: E402
from lidar_ptq_core.pointcloud import PointCloud  # noqa: E402
from lidar_ptq_ros.conversions import (  # noqa: E402
    detections_to_msg,
    msg_to_detections,
    msg_to_pointcloud,
    pointcloud_to_msg,
)

CLASSES = ("Car", "Truck", "Pedestrian", "Cyclist")


def test_discovery_is_loopback_only():
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert os.environ["ROS_DOMAIN_ID"].isdigit()


@pytest.fixture
def ros_context():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def _exchange(context, msg_type, topic, message, timeout=20.0):
    """Publish `message` from one node and return what a second node receives."""
    from rclpy.executors import SingleThreadedExecutor

    sender = rclpy.create_node("lidar_ptq_test_sender", context=context)
    receiver = rclpy.create_node("lidar_ptq_test_receiver", context=context)
    received = []
    receiver.create_subscription(msg_type, topic, received.append, 10)
    publisher = sender.create_publisher(msg_type, topic, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(sender)
    executor.add_node(receiver)
    try:
        deadline = time.monotonic() + timeout
        while publisher.get_subscription_count() == 0:  # discovery, not a fixed sleep
            assert time.monotonic() < deadline, "subscriber not discovered on loopback"
            executor.spin_once(timeout_sec=0.05)
        while not received:
            assert time.monotonic() < deadline, f"nothing received on {topic}"
            publisher.publish(message)
            executor.spin_once(timeout_sec=0.1)
        return received[0]
    finally:
        executor.shutdown()
        sender.destroy_node()
        receiver.destroy_node()


def test_pointcloud2_round_trip_through_dds(ros_context, kitti_frames):
    from lidar_ptq_core.pointcloud import read_points

    cloud = read_points(kitti_frames[0])
    header = Header(frame_id="velodyne")
    header.stamp.sec, header.stamp.nanosec = 1700000000, 5
    got = _exchange(ros_context, PointCloud2, "/lidar_ptq_test/points", pointcloud_to_msg(cloud, header))
    assert got.header.frame_id == "velodyne" and got.header.stamp.nanosec == 5
    assert got.width == len(cloud) and got.height == 1
    back = msg_to_pointcloud(got)
    assert back.fields == cloud.fields
    np.testing.assert_array_equal(back.points, cloud.points)


def test_synthetic_pointcloud2_round_trip_with_nan(ros_context):
    pts = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    pts[7, 0] = np.nan
    msg = pointcloud_to_msg(PointCloud(pts, ("x", "y", "z", "intensity")), Header(frame_id="lidar"))
    assert msg.is_dense is False
    got = _exchange(ros_context, PointCloud2, "/lidar_ptq_test/points_nan", msg)
    np.testing.assert_array_equal(msg_to_pointcloud(got).points, pts)


def test_detection3darray_round_trip_through_dds(ros_context):
    det = Detections(
        boxes=np.array([[12.5, -3.0, -0.8, 4.6, 1.9, 1.6, 0.4], [55.0, 20.0, -1.0, 0.7, 0.6, 1.8, -2.9]], np.float32),
        scores=np.array([0.91, 0.33], np.float32),
        labels=np.array([0, 2]),
        class_names=CLASSES,
    )
    msg = detections_to_msg(det, Header(frame_id="velodyne"))
    got = _exchange(ros_context, Detection3DArray, "/lidar_ptq_test/detections", msg)
    assert type(got).__module__.startswith("vision_msgs.msg")
    assert [d.results[0].hypothesis.class_id for d in got.detections] == ["Car", "Pedestrian"]
    assert got.detections[0].bbox.size.x == pytest.approx(4.6, abs=1e-6)
    back = msg_to_detections(got, CLASSES)
    np.testing.assert_allclose(back.boxes, det.boxes, atol=1e-5)
    np.testing.assert_allclose(back.scores, det.scores, atol=1e-6)
    assert back.labels.tolist() == [0, 2]
