"""Box geometry on (N, 7) boxes (x, y, z, l, w, h, yaw), see lidar_ptq_core.detections for the convention.

Bird's-eye-view (BEV) helpers work on the (x, y) footprint: a rectangle of length l along the heading and width w,
rotated by yaw counter-clockwise about +z. Rotated IoU is exact: the intersection of two rectangles is a convex
polygon, found by clipping one rectangle against the four edges of the other (Sutherland-Hodgman), vectorised over
all candidate pairs at once.
"""

from __future__ import annotations

import numpy as np

from .detections import BOX_DIM

# Unit-box corners in the box frame, counter-clockwise seen from above (front-right first). Clipping relies on
# the counter-clockwise order: "inside" an edge is its left side.
_UNIT_CORNERS = np.array([[0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5]])

# Bound on the pairs clipped in one batch, so the temporary arrays stay a few MB whatever the input size.
_PAIR_CHUNK = 65536
# Bound on point-box pairs tested in one batch by points_in_boxes.
_POINT_BOX_CHUNK = 1 << 22


def _as_box_array(boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, BOX_DIM))
    if arr.ndim != 2 or arr.shape[1] != BOX_DIM:
        raise ValueError(f"boxes must have shape (N, {BOX_DIM}) as x, y, z, l, w, h, yaw; got {arr.shape}")
    return arr


def bev_corners(boxes) -> np.ndarray:
    """(N, 4, 2) BEV corners of each box, counter-clockwise from the front-right corner."""
    boxes = _as_box_array(boxes)
    cos, sin = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    local_x = _UNIT_CORNERS[None, :, 0] * boxes[:, 3:4]  # along the heading
    local_y = _UNIT_CORNERS[None, :, 1] * boxes[:, 4:5]  # to the left of the heading
    x = boxes[:, 0:1] + local_x * cos[:, None] - local_y * sin[:, None]
    y = boxes[:, 1:2] + local_x * sin[:, None] + local_y * cos[:, None]
    return np.stack([x, y], axis=-1)


def bev_iou_matrix(boxes_a, boxes_b) -> np.ndarray:
    """(N, M) rotated BEV IoU between every box of `boxes_a` (N, 7) and every box of `boxes_b` (M, 7).

    Pairs whose axis-aligned BEV bounds do not overlap are 0 without clipping. Boxes with zero or negative
    length or width have no area and IoU 0 with everything.
    """
    boxes_a, boxes_b = _as_box_array(boxes_a), _as_box_array(boxes_b)
    iou = np.zeros((len(boxes_a), len(boxes_b)))
    if iou.size == 0:
        return iou
    corners_a, corners_b = bev_corners(boxes_a), bev_corners(boxes_b)
    area_a = boxes_a[:, 3] * boxes_a[:, 4]
    area_b = boxes_b[:, 3] * boxes_b[:, 4]
    lo_a, hi_a = corners_a.min(axis=1), corners_a.max(axis=1)
    lo_b, hi_b = corners_b.min(axis=1), corners_b.max(axis=1)
    # Inclusive bound check: boxes touching along an edge have zero intersection area anyway.
    may_overlap = np.all((lo_a[:, None, :] <= hi_b[None, :, :]) & (lo_b[None, :, :] <= hi_a[:, None, :]), axis=-1)
    may_overlap &= (area_a[:, None] > 0) & (area_b[None, :] > 0)
    ia, ib = np.nonzero(may_overlap)
    for start in range(0, len(ia), _PAIR_CHUNK):
        pa, pb = ia[start : start + _PAIR_CHUNK], ib[start : start + _PAIR_CHUNK]
        inter = convex_intersection_area(corners_a[pa], corners_b[pb])
        union = area_a[pa] + area_b[pb] - inter
        iou[pa, pb] = np.clip(inter / np.maximum(union, 1e-12), 0.0, 1.0)
    return iou


def convex_intersection_area(polygons_a: np.ndarray, polygons_b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas (K,) of convex polygons (K, V, 2) and counter-clockwise convex polygons (K, U, 2).

    Clips each polygon of `polygons_a` against every edge of its partner in `polygons_b`, then takes the shoelace
    area of what remains.
    """
    subject = np.asarray(polygons_a, dtype=np.float64)
    clip = np.asarray(polygons_b, dtype=np.float64)
    count = np.full(len(subject), subject.shape[1], dtype=np.int64)
    num_edges = clip.shape[1]
    for e in range(num_edges):
        subject, count = _clip_by_edge(subject, count, clip[:, e], clip[:, (e + 1) % num_edges])
    return _polygon_area(subject, count)


def _next_vertex_index(count: np.ndarray, width: int) -> np.ndarray:
    """(K, width) index of the vertex after each vertex, wrapping at each polygon's own vertex count."""
    idx = np.arange(width)[None, :]
    return np.where(idx + 1 < count[:, None], idx + 1, 0)


def _clip_by_edge(subject: np.ndarray, count: np.ndarray, edge_start: np.ndarray, edge_end: np.ndarray):
    """One Sutherland-Hodgman step: keep the part of each polygon left of the directed line edge_start->edge_end.

    `subject` (K, V, 2) holds `count` (K,) valid vertices per row, padded after them. Returns the clipped
    polygons in the same padded layout.
    """
    k, width, _ = subject.shape
    if width == 0:
        return subject, count
    following = np.take_along_axis(subject, _next_vertex_index(count, width)[..., None], axis=1)
    edge = edge_end - edge_start

    def left_of_edge(points):  # cross(edge, point - start): >= 0 on or left of the line
        rel = points - edge_start[:, None, :]
        return edge[:, None, 0] * rel[..., 1] - edge[:, None, 1] * rel[..., 0]

    side_cur, side_next = left_of_edge(subject), left_of_edge(following)
    valid = np.arange(width)[None, :] < count[:, None]
    inside_cur, inside_next = side_cur >= 0, side_next >= 0
    keep_vertex = valid & inside_cur
    crosses = valid & (inside_cur != inside_next)
    # The signs differ wherever `crosses` holds, so the denominator is non-zero there.
    t = side_cur / np.where(crosses, side_cur - side_next, 1.0)
    crossing_point = subject + t[..., None] * (following - subject)
    # Each input edge emits up to two output vertices, in order: its start (if inside), then its crossing.
    candidates = np.stack([subject, crossing_point], axis=2).reshape(k, 2 * width, 2)
    emitted = np.stack([keep_vertex, crosses], axis=2).reshape(k, 2 * width)
    new_count = emitted.sum(axis=1)
    new_width = int(new_count.max())
    compact_order = np.argsort(~emitted, axis=1, kind="stable")[:, :new_width]  # emitted vertices first, in order
    return np.take_along_axis(candidates, compact_order[..., None], axis=1), new_count


def _polygon_area(polygons: np.ndarray, count: np.ndarray) -> np.ndarray:
    k, width, _ = polygons.shape
    if width == 0:
        return np.zeros(k)
    following = np.take_along_axis(polygons, _next_vertex_index(count, width)[..., None], axis=1)
    cross = polygons[..., 0] * following[..., 1] - following[..., 0] * polygons[..., 1]
    cross = np.where(np.arange(width)[None, :] < count[:, None], cross, 0.0)
    return 0.5 * np.abs(cross.sum(axis=1))


def points_in_boxes(points, boxes) -> np.ndarray:
    """(P, N) bool: whether point p lies inside 3D box n (boundary included).

    `points` is (P, >=3) with x, y, z first (extra columns such as intensity are ignored); a box spans
    z - h/2 .. z + h/2 vertically and its rotated l x w rectangle in BEV.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        pts = np.zeros((0, 3))
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must have shape (P, >=3) with x, y, z first; got {pts.shape}")
    boxes = _as_box_array(boxes)
    inside = np.zeros((len(pts), len(boxes)), dtype=bool)
    if inside.size == 0:
        return inside
    cos, sin = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    half_l, half_w, half_h = boxes[:, 3] / 2, boxes[:, 4] / 2, boxes[:, 5] / 2
    rows = max(1, _POINT_BOX_CHUNK // len(boxes))
    for start in range(0, len(pts), rows):
        chunk = pts[start : start + rows, :3]
        dx = chunk[:, 0:1] - boxes[None, :, 0]
        dy = chunk[:, 1:2] - boxes[None, :, 1]
        dz = chunk[:, 2:3] - boxes[None, :, 2]
        # Rotate the offset into the box frame (by -yaw): along = heading axis, across = left axis.
        along = dx * cos + dy * sin
        across = -dx * sin + dy * cos
        inside[start : start + rows] = (np.abs(along) <= half_l) & (np.abs(across) <= half_w) & (np.abs(dz) <= half_h)
    return inside


def count_points_in_boxes(points, boxes) -> np.ndarray:
    """(N,) number of points inside each box (a point inside two overlapping boxes counts for both)."""
    return points_in_boxes(points, boxes).sum(axis=0).astype(np.int64)
