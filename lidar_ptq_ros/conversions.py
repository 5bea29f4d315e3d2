"""Messages <-> library types. The only place that knows both; nodes call these and the library, nothing else."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import Quaternion
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

from lidar_ptq_core.detections import Detections
from lidar_ptq_core.pointcloud import (
    MissingFieldError,
    PointCloud,
    pointcloud2_message_fields,
    pointcloud2_to_array,
)
from lidar_ptq_core.pointcloud.features import InputSettings, default_point_features, missing_features, prepare_points


def pointcloud_to_msg(cloud: PointCloud, header: Header) -> PointCloud2:
    """An unorganised (height 1), little-endian float32 PointCloud2 with one field per cloud column."""
    message = pointcloud2_message_fields(cloud)
    data = message.pop("data")
    message["fields"] = [PointField(**spec._asdict()) for spec in message["fields"]]
    out = PointCloud2(header=header, **message)
    # Set after construction: data passed to the constructor is copied into an array twice, which measured 3.5 ms of
    # CPU per 122k-point cloud in cloud_player against 0.25 ms this way (it shares the detector node's cores).
    out.data = data
    return out


def serialized_with_stamp(data: bytes, stamp) -> bytes:
    """A serialized message that starts with a std_msgs/Header (CDR: 4-byte encapsulation header, then stamp.sec
    int32 and stamp.nanosec uint32 in the encapsulation's byte order) with its stamp replaced: a cloud serialized once
    is sent again with the time of each publish, one copy of its bytes instead of building and serializing it."""
    if len(data) < 12 or data[0] != 0 or data[1] not in (0, 1):
        raise ValueError("not a plain CDR message (encapsulation CDR_BE or CDR_LE) with a header first")
    stamp_bytes = struct.pack("<iI" if data[1] == 1 else ">iI", int(stamp.sec), int(stamp.nanosec))
    return b"".join((data[:4], stamp_bytes, memoryview(data)[12:]))


def msg_to_pointcloud(msg: PointCloud2, field_names=None) -> PointCloud:
    """Any PointCloud2 layout (padding, row padding, big endian, integer fields) -> float32 PointCloud."""
    return pointcloud2_to_array(msg, field_names)


DETECTOR_FIELDS = ("x", "y", "z", "intensity")


@dataclass
class DetectorInput:
    """What a PointCloud2 gives the detector, and what was left out on the way."""

    points: np.ndarray  # (N, F) float32 in the model's point-feature order; every value finite
    received: int  # width * height points in the message
    non_finite: int  # points dropped for a NaN/inf coordinate or feature
    thinned: int  # finite points left out to stay within max_points
    has_intensity: bool  # False: the message had no intensity field (filled as the model config says)
    filled: tuple[str, ...] = ()  # the model's features the message lacked, filled by the config's rule
    cloud: PointCloud | None = None  # the decoded fields the model uses, before the fill and the settings


def msg_to_detector_input(msg: PointCloud2, intensity_scale: float = 1.0, max_points: int = 0,
                          point_features=None, z_offset: float = 0.0) -> DetectorInput:
    """PointCloud2 -> (N, F) float32 in the model's point-feature order, vectorised.

    Any field order, padding inside points and rows, float64 or integer fields, big endian and organised clouds are
    read by lidar_ptq_core's decoder; only the fields the model uses are decoded. A missing feature is filled by the
    model config's rule (pointcloud/features.py, the same as detect and calibration; default x, y, z, intensity with
    zeros for a missing intensity). Points with a non-finite value are dropped; intensity is multiplied by
    `intensity_scale` and `z_offset` added to z. With max_points > 0, a larger cloud is thinned to max_points points
    spread evenly over the message order. Raises ValueError (MissingFieldError for missing x, y or z or a feature
    the config refuses to fill) on a malformed message.
    """
    features = tuple(point_features) if point_features is not None else default_point_features(4)
    names = [str(field.name) for field in msg.fields]
    missing = [axis for axis in DETECTOR_FIELDS[:3] if axis not in names]
    if missing:
        raise MissingFieldError(f"PointCloud2 has no field {missing[0]!r}; it has {names}")
    absent = {f.name for f in missing_features(names, features)}
    wanted = [f.name for f in features if f.name not in absent]
    cloud = pointcloud2_to_array(msg, wanted)
    if len(cloud.fields) != len(wanted):
        raise ValueError(f"PointCloud2 fields {list(wanted)} must hold one value each (count 1); got {cloud.fields}")
    points, filled = prepare_points(cloud, features, InputSettings(intensity_scale, z_offset), "PointCloud2")
    received = len(points)
    non_finite = 0
    # One pass over the whole array first: a per-row test costs 2-3 ms on 120k points, and clouds are mostly dense.
    if not np.isfinite(points).all():
        finite = np.isfinite(points).all(axis=1)
        non_finite = int(received - finite.sum())
        points = points[finite]
    thinned = 0
    if max_points and len(points) > max_points:
        keep = np.linspace(0, len(points) - 1, int(max_points)).round().astype(np.int64)
        thinned = len(points) - len(keep)
        points = points[keep]
    return DetectorInput(np.ascontiguousarray(points, np.float32), received, non_finite, thinned,
                         "intensity" not in absent, tuple(f.name for f in filled), cloud)


def yaw_to_quaternion(yaw: float) -> Quaternion:
    half = 0.5 * float(yaw)
    return Quaternion(x=0.0, y=0.0, z=math.sin(half), w=math.cos(half))


def quaternion_to_yaw(q: Quaternion) -> float:
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def detections_to_msg(detections: Detections, header: Header) -> Detection3DArray:
    """One Detection3D per box: bbox centre/size/orientation, one hypothesis (class name + score) with the same pose."""
    # Plain Python floats from numpy in one call each (float() per element costs more than building the messages).
    boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 7)
    half_yaw = 0.5 * boxes[:, 6]
    rows = zip(boxes[:, :6].tolist(), np.sin(half_yaw).tolist(), np.cos(half_yaw).tolist(),
               np.asarray(detections.scores, np.float64).tolist(), _class_names(detections))
    out = Detection3DArray(header=header)
    for i, ((x, y, z, length, width, height), qz, qw, score, class_id) in enumerate(rows):
        # Filled in place: rclpy's constructors build every default sub-message even when one is passed, so each
        # message made and replaced would be built for nothing (half the time of this function).
        detection = Detection3D()
        detection.header = header
        detection.id = str(i)
        pose = detection.bbox.center
        pose.position.x, pose.position.y, pose.position.z = x, y, z
        pose.orientation.z, pose.orientation.w = qz, qw
        size = detection.bbox.size
        size.x, size.y, size.z = length, width, height
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = class_id
        hypothesis.hypothesis.score = score
        hypothesis.pose.pose = pose
        detection.results.append(hypothesis)
        out.detections.append(detection)
    return out


_COVARIANCE_ZEROS = bytes(36 * 8)  # PoseWithCovariance.covariance, all zero as detections_to_msg leaves it


def detections_to_cdr(detections: Detections, header: Header) -> bytes:
    """detections_to_msg(detections, header) serialized (CDR little endian, what rclpy's serialize_message gives for
    it, padding zeroed), written straight from the arrays: the node publishes these bytes instead of building one
    Python message per box and having rclpy convert and serialize them (1.0 + 0.6 ms for 70 boxes on a loaded
    machine). test_conversions checks it against serialize_message field by field."""
    boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 7)
    half_yaw = 0.5 * boxes[:, 6]
    scores = np.asarray(detections.scores, np.float64).reshape(-1)
    out = bytearray(b"\x00\x01\x00\x00")  # encapsulation: CDR, little endian; alignment counts from after it

    def align(size: int) -> None:
        out.extend(bytes(-(len(out) - 4) % size))

    def string(text: str) -> None:
        data = text.encode() + b"\x00"
        align(4)
        out.extend(struct.pack("<I", len(data)))
        out.extend(data)

    stamp = struct.pack("<iI", int(header.stamp.sec), int(header.stamp.nanosec))
    frame_id = str(header.frame_id)

    def write_header() -> None:
        align(4)
        out.extend(stamp)
        string(frame_id)

    write_header()
    align(4)
    out.extend(struct.pack("<I", len(boxes)))
    class_ids = _class_names(detections)
    poses = np.zeros((len(boxes), 7))  # position x y z, orientation x y z w
    poses[:, :3] = boxes[:, :3]
    poses[:, 5], poses[:, 6] = np.sin(half_yaw), np.cos(half_yaw)
    pose_bytes = [row.tobytes() for row in poses.astype("<f8")]
    size_bytes = [row.tobytes() for row in boxes[:, 3:6].astype("<f8")]
    for i in range(len(boxes)):
        write_header()  # Detection3D.header
        align(4)
        out.extend(b"\x01\x00\x00\x00")  # results: one hypothesis
        string(class_ids[i])
        align(8)
        out.extend(struct.pack("<d", scores[i]))
        out.extend(pose_bytes[i])  # hypothesis pose (8-aligned after the score)
        out.extend(_COVARIANCE_ZEROS)
        out.extend(pose_bytes[i])  # bbox.center
        out.extend(size_bytes[i])  # bbox.size
        string(str(i))  # id
    return bytes(out)


def msg_to_detections(msg: Detection3DArray, class_names: tuple[str, ...]) -> Detections:
    """Inverse of detections_to_msg (first hypothesis of each detection); class ids must be in class_names."""
    index = {name: i for i, name in enumerate(class_names)}
    boxes, scores, labels = [], [], []
    for det in msg.detections:
        c, s = det.bbox.center, det.bbox.size
        boxes.append([c.position.x, c.position.y, c.position.z, s.x, s.y, s.z, quaternion_to_yaw(c.orientation)])
        hyp = det.results[0].hypothesis if det.results else None
        if hyp is None or hyp.class_id not in index:
            raise ValueError(f"detection {det.id!r} has class {getattr(hyp, 'class_id', None)!r}, not in {class_names}")
        scores.append(hyp.score)
        labels.append(index[hyp.class_id])
    return Detections(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(labels), class_names)


def _class_names(detections: Detections) -> list[str]:
    labels = np.asarray(detections.labels).reshape(-1).tolist()
    if detections.class_names:
        return [detections.class_names[int(label)] for label in labels]
    return [str(int(label)) for label in labels]
