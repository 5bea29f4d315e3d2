"""Messages <-> library types. The only place that knows both; nodes call these and the library, nothing else."""

from __future__ import annotations

import math

import numpy as np
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header
from vision_msgs.msg import BoundingBox3D, Detection3D, Detection3DArray, ObjectHypothesisWithPose

from lidar_ptq_core.detections import Detections
from lidar_ptq_core.pointcloud import PointCloud, pointcloud2_message_fields, pointcloud2_to_array


def pointcloud_to_msg(cloud: PointCloud, header: Header) -> PointCloud2:
    """An unorganised (height 1), little-endian float32 PointCloud2 with one field per cloud column."""
    message = pointcloud2_message_fields(cloud)
    message["fields"] = [PointField(**spec._asdict()) for spec in message["fields"]]
    return PointCloud2(header=header, **message)


def msg_to_pointcloud(msg: PointCloud2, field_names=None) -> PointCloud:
    """Any PointCloud2 layout (padding, row padding, big endian, integer fields) -> float32 PointCloud."""
    return pointcloud2_to_array(msg, field_names)


def yaw_to_quaternion(yaw: float) -> Quaternion:
    half = 0.5 * float(yaw)
    return Quaternion(x=0.0, y=0.0, z=math.sin(half), w=math.cos(half))


def quaternion_to_yaw(q: Quaternion) -> float:
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def detections_to_msg(detections: Detections, header: Header) -> Detection3DArray:
    """One Detection3D per box: bbox centre/size/orientation, one hypothesis (class name + score) with the same pose."""
    out = Detection3DArray(header=header)
    for i in range(len(detections)):
        x, y, z, length, width, height, yaw = (float(v) for v in detections.boxes[i])
        pose = Pose(position=Point(x=x, y=y, z=z), orientation=yaw_to_quaternion(yaw))
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = _class_name(detections, i)
        hypothesis.hypothesis.score = float(detections.scores[i])
        hypothesis.pose.pose = pose
        out.detections.append(
            Detection3D(
                header=header,
                results=[hypothesis],
                bbox=BoundingBox3D(center=pose, size=Vector3(x=length, y=width, z=height)),
                id=str(i),
            )
        )
    return out


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


def _class_name(detections: Detections, i: int) -> str:
    label = int(detections.labels[i])
    return detections.class_names[label] if detections.class_names else str(label)
