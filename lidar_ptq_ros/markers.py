"""Detections -> visualization_msgs/MarkerArray for RViz: box edges (LINE_LIST) and a class/score label per box."""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point, Pose
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from lidar_ptq_core.detections import Detections
from lidar_ptq_core.geometry import bev_corners

BOX_NAMESPACE = "boxes"
LABEL_NAMESPACE = "labels"
LINE_WIDTH_M = 0.08
TEXT_HEIGHT_M = 0.6
# One colour per class index (cycled): car, truck, pedestrian, cyclist in the bundled models' order.
PALETTE = ((0.10, 0.60, 1.00), (1.00, 0.55, 0.10), (0.95, 0.20, 0.30), (0.30, 0.85, 0.30), (0.80, 0.40, 0.95),
           (0.95, 0.90, 0.20))
# The 12 edges of a box as corner index pairs: corners 0-3 bottom, 4-7 top, in bev_corners' order.
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def box_corners_3d(boxes) -> np.ndarray:
    """(N, 8, 3) corners of (x, y, z, l, w, h, yaw) boxes: the 4 bottom corners, then the 4 top ones above them."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    bev = bev_corners(boxes)  # (N, 4, 2)
    bottom = (boxes[:, 2] - boxes[:, 5] / 2)[:, None, None] * np.ones((1, 4, 1))
    top = bottom + boxes[:, 5][:, None, None]
    return np.concatenate([np.concatenate([bev, bottom], axis=2), np.concatenate([bev, top], axis=2)], axis=1)


def class_color(label: int, alpha: float = 1.0) -> ColorRGBA:
    r, g, b = PALETTE[int(label) % len(PALETTE)]
    return ColorRGBA(r=r, g=g, b=b, a=alpha)


def detections_to_markers(detections: Detections, header: Header) -> MarkerArray:
    """A DELETEALL marker first (removes the boxes of the previous frame), then per box i a LINE_LIST (namespace
    "boxes", id i) with its 12 edges and a TEXT_VIEW_FACING label "<class> <score>" (namespace "labels", id i) above
    it; all in the header's frame."""
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    corners = box_corners_3d(detections.boxes)
    for i in range(len(detections)):
        label = int(detections.labels[i])
        color = class_color(label)
        box = Marker(header=header, ns=BOX_NAMESPACE, id=i, type=Marker.LINE_LIST, action=Marker.ADD)
        box.pose.orientation.w = 1.0
        box.scale.x = LINE_WIDTH_M
        box.color = color
        box.points = [Point(x=float(c[0]), y=float(c[1]), z=float(c[2]))
                      for a, b in BOX_EDGES for c in (corners[i, a], corners[i, b])]
        markers.append(box)

        x, y, z, _, _, height, _ = (float(v) for v in detections.boxes[i])
        name = detections.class_names[label] if detections.class_names else str(label)
        text = Marker(header=header, ns=LABEL_NAMESPACE, id=i, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                      text=f"{name} {float(detections.scores[i]):.2f}")
        text.pose = Pose()
        text.pose.position = Point(x=x, y=y, z=z + height / 2 + TEXT_HEIGHT_M)
        text.pose.orientation.w = 1.0
        text.scale.z = TEXT_HEIGHT_M
        text.color = color
        markers.append(text)
    return MarkerArray(markers=markers)
