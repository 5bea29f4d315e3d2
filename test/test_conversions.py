"""lidar_ptq_ros.conversions without a running node: Detections -> Detection3DArray field by field, and the
non-finite and thinning bookkeeping of msg_to_detector_input on dense and non-dense clouds."""

import math

import numpy as np
import pytest

pytestmark = pytest.mark.ros

pytest.importorskip("rclpy", reason="rclpy is installed by ./dev; run the suite through ./dev test")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs is built into the venv by ./dev")

from std_msgs.msg import Header  # noqa: E402

from lidar_ptq_core.detections import Detections  # noqa: E402
from lidar_ptq_core.pointcloud import KITTI_FIELDS, PointCloud  # noqa: E402
from lidar_ptq_ros.conversions import (  # noqa: E402
    detections_to_cdr,
    detections_to_msg,
    msg_to_detections,
    msg_to_detector_input,
    pointcloud_to_msg,
    serialized_with_stamp,
)

CLASSES = ("car", "truck", "pedestrian", "cyclist")


def random_detections(n=7, seed=0, class_names=CLASSES) -> Detections:
    rng = np.random.default_rng(seed)
    boxes = np.concatenate([rng.uniform(-40, 40, (n, 3)), rng.uniform(0.5, 5, (n, 3)), rng.uniform(-7, 7, (n, 1))], 1)
    return Detections(boxes, rng.random(n), rng.integers(0, 4, n), class_names)


def header(stamp=12) -> Header:
    out = Header(frame_id="lidar_top")
    out.stamp.sec, out.stamp.nanosec = stamp, 34
    return out


def test_every_detection_carries_its_box_class_score_and_header():
    detections = random_detections()
    msg = detections_to_msg(detections, header())
    assert msg.header.frame_id == "lidar_top" and msg.header.stamp.sec == 12
    assert len(msg.detections) == len(detections)
    for i, det in enumerate(msg.detections):
        x, y, z, length, width, height, yaw = (float(v) for v in detections.boxes[i])
        assert det.id == str(i) and det.header.frame_id == "lidar_top" and det.header.stamp.nanosec == 34
        c, s = det.bbox.center, det.bbox.size
        assert (c.position.x, c.position.y, c.position.z) == (x, y, z)  # float32 values, exactly
        assert (s.x, s.y, s.z) == (length, width, height)
        q = c.orientation
        assert (q.x, q.y) == (0.0, 0.0)
        assert q.z == pytest.approx(math.sin(yaw / 2), abs=1e-12) and q.w == pytest.approx(math.cos(yaw / 2), abs=1e-12)
        assert len(det.results) == 1
        hypothesis = det.results[0]
        assert hypothesis.hypothesis.class_id == CLASSES[int(detections.labels[i])]
        assert hypothesis.hypothesis.score == float(detections.scores[i])
        assert hypothesis.pose.pose.position.x == x and hypothesis.pose.pose.orientation.w == q.w
    back = msg_to_detections(msg, CLASSES)
    np.testing.assert_allclose(back.boxes[:, :6], detections.boxes[:, :6])
    np.testing.assert_allclose(np.angle(np.exp(1j * (back.boxes[:, 6] - detections.boxes[:, 6]))), 0.0, atol=1e-6)
    assert back.labels.tolist() == detections.labels.tolist()


def test_labels_without_class_names_and_an_empty_set():
    msg = detections_to_msg(random_detections(n=3, class_names=()), header())
    assert [d.results[0].hypothesis.class_id for d in msg.detections] == [
        str(v) for v in random_detections(n=3, class_names=()).labels]
    empty = detections_to_msg(Detections.empty(CLASSES), header(stamp=5))
    assert empty.detections == [] and empty.header.stamp.sec == 5


def cloud_msg(points: np.ndarray):
    return pointcloud_to_msg(PointCloud(points.astype(np.float32), KITTI_FIELDS), header())


def test_dense_cloud_passes_unchanged():
    points = np.random.default_rng(1).uniform(-50, 50, (1000, 4)).astype(np.float32)
    out = msg_to_detector_input(cloud_msg(points))
    assert (out.received, out.non_finite, out.thinned) == (1000, 0, 0)
    assert out.points.dtype == np.float32 and out.points.flags.c_contiguous
    np.testing.assert_array_equal(out.points, points)


def test_rows_with_a_non_finite_value_are_dropped_and_counted_before_thinning():
    points = np.random.default_rng(2).uniform(-50, 50, (1000, 4)).astype(np.float32)
    bad = [3, 10, 11, 500, 999]
    points[3, 0], points[10, 3], points[11, 2], points[500, 1], points[999, 3] = np.nan, np.inf, -np.inf, np.nan, np.nan
    out = msg_to_detector_input(cloud_msg(points))
    assert (out.received, out.non_finite, out.thinned) == (1000, len(bad), 0)
    np.testing.assert_array_equal(out.points, np.delete(points, bad, axis=0))
    thinned = msg_to_detector_input(cloud_msg(points), max_points=100)
    assert (thinned.non_finite, thinned.thinned, len(thinned.points)) == (len(bad), 1000 - len(bad) - 100, 100)
    assert np.isfinite(thinned.points).all()


def test_pointcloud_to_msg_layout_and_bytes():
    points = np.random.default_rng(3).uniform(-50, 50, (321, 4)).astype(np.float32)
    msg = cloud_msg(points)
    assert (msg.height, msg.width, msg.point_step, msg.row_step, msg.is_bigendian) == (1, 321, 16, 321 * 16, False)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        (name, 4 * k, 7, 1) for k, name in enumerate(KITTI_FIELDS)]
    assert msg.is_dense and msg.header.frame_id == "lidar_top"
    assert bytes(msg.data) == points.astype("<f4").tobytes()
    points[5, 2] = np.nan
    assert not cloud_msg(points).is_dense


def test_serialized_with_stamp_rewrites_only_the_stamp_of_a_serialized_cloud():
    from builtin_interfaces.msg import Time
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2

    points = np.random.default_rng(4).uniform(-50, 50, (257, 4)).astype(np.float32)
    original = serialize_message(cloud_msg(points))
    restamped = serialized_with_stamp(original, Time(sec=1_700_000_123, nanosec=999_999_999))
    assert isinstance(restamped, bytes) and len(restamped) == len(original)  # what Publisher.publish sends as is
    back = deserialize_message(restamped, PointCloud2)
    assert (back.header.stamp.sec, back.header.stamp.nanosec) == (1_700_000_123, 999_999_999)
    assert back.header.frame_id == "lidar_top" and bytes(back.data) == points.astype("<f4").tobytes()
    assert restamped[12:] == original[12:] and restamped[:4] == original[:4]
    # A big-endian encapsulation keeps its byte order; anything else is refused.
    big_endian = b"\x00\x00\x00\x00" + bytes(8) + b"rest"
    assert serialized_with_stamp(big_endian, Time(sec=1, nanosec=2))[4:12] == bytes([0, 0, 0, 1, 0, 0, 0, 2])
    with pytest.raises(ValueError, match="not a plain CDR message"):
        serialized_with_stamp(b"\x00\x07" + bytes(20), Time(sec=1, nanosec=2))


@pytest.mark.parametrize("n", [0, 1, 7, 70])
def test_detections_to_cdr_is_the_serialized_detections_message(n):
    from rclpy.serialization import deserialize_message, serialize_message
    from vision_msgs.msg import Detection3DArray

    for class_names in (CLASSES, ()):  # class names, or label numbers as class ids
        detections = random_detections(n=n, seed=n, class_names=class_names)
        expected = detections_to_msg(detections, header(stamp=1_700_000_001))
        written = detections_to_cdr(detections, header(stamp=1_700_000_001))
        reference = serialize_message(expected)
        # rclpy's serializer leaves alignment padding uninitialised; every other byte is the same
        assert isinstance(written, bytes) and len(written) == len(reference)
        assert deserialize_message(written, Detection3DArray) == expected
        differing = [i for i, (a, b) in enumerate(zip(written, reference)) if a != b]
        assert all(written[i] == 0 for i in differing), "only padding may differ, and it is zero here"
