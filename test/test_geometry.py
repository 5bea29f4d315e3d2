import math

import numpy as np
import pytest

from lidar_ptq_core.geometry import (
    bev_corners,
    bev_iou_matrix,
    convex_intersection_area,
    count_points_in_boxes,
    points_in_boxes,
)


def box(x=0.0, y=0.0, z=0.0, l=2.0, w=2.0, h=1.0, yaw=0.0):
    return [x, y, z, l, w, h, yaw]


def iou(a, b):
    return bev_iou_matrix([a], [b])[0, 0]


def test_corners_follow_yaw_convention():
    # l = 4 along the heading; yaw = +90 deg turns the heading from +x to +y (counter-clockwise).
    corners = bev_corners([box(x=10, y=5, l=4, w=2, yaw=math.pi / 2)])[0]
    np.testing.assert_allclose(corners.min(axis=0), [9, 3], atol=1e-12)
    np.testing.assert_allclose(corners.max(axis=0), [11, 7], atol=1e-12)
    # First corner is front-right: heading +y, so front is y = 7 and right is x = 11.
    np.testing.assert_allclose(corners[0], [11, 7], atol=1e-12)
    # Counter-clockwise: positive signed (shoelace) area l * w = 8.
    x, y = corners[:, 0], corners[:, 1]
    assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) == pytest.approx(8.0)


def test_identical_boxes_iou_one():
    b = box(x=3, y=-2, l=4.2, w=1.8, yaw=0.3)
    assert iou(b, b) == pytest.approx(1.0)


def test_square_rotated_90_degrees_is_the_same_footprint():
    assert iou(box(), box(yaw=math.pi / 2)) == pytest.approx(1.0)
    assert iou(box(), box(yaw=math.pi)) == pytest.approx(1.0)


def test_half_overlap_shift():
    # 2x2 squares shifted by 1 m: intersection 1 x 2 = 2, union 4 + 4 - 2 = 6.
    assert iou(box(), box(x=1)) == pytest.approx(1 / 3)
    assert iou(box(), box(y=-1)) == pytest.approx(1 / 3)


def test_rectangle_crossed_with_itself_rotated():
    # 4x2 vs the same rotated 90 deg: intersection 2 x 2 = 4, union 8 + 8 - 4 = 12.
    assert iou(box(l=4, w=2), box(l=4, w=2, yaw=math.pi / 2)) == pytest.approx(1 / 3)
    # 2x2 square inside the 4x2 rotated 90 deg: intersection 4, union 4 + 8 - 4 = 8.
    assert iou(box(), box(l=4, w=2, yaw=math.pi / 2)) == pytest.approx(0.5)


def test_disjoint_and_touching_boxes():
    assert iou(box(), box(x=5)) == 0.0
    assert iou(box(), box(x=2)) == pytest.approx(0.0, abs=1e-12)  # sharing an edge: zero area
    # Diagonal boxes whose axis-aligned bounds overlap but which do not intersect.
    assert iou(box(l=4, w=0.5, yaw=math.pi / 4), box(x=1.5, y=-1.5, l=4, w=0.5, yaw=math.pi / 4)) == pytest.approx(0.0)


def test_square_vs_45_degree_square():
    # Square |x|,|y| <= 1 vs the same square turned 45 deg, i.e. |x| + |y| <= sqrt(2). The intersection is the
    # square minus 4 corner triangles with legs 2 - sqrt(2): area 4 - 2 (2 - sqrt(2))^2 = 8 sqrt(2) - 8.
    # IoU = (8 sqrt(2) - 8) / (8 - (8 sqrt(2) - 8)) = 1 / sqrt(2).
    corners_a = bev_corners([box()])
    corners_b = bev_corners([box(yaw=math.pi / 4)])
    assert convex_intersection_area(corners_a, corners_b)[0] == pytest.approx(8 * math.sqrt(2) - 8)
    assert iou(box(), box(yaw=math.pi / 4)) == pytest.approx(1 / math.sqrt(2))


def test_height_and_z_do_not_matter_in_bev():
    assert iou(box(z=0, h=1), box(z=10, h=3)) == pytest.approx(1.0)


def test_degenerate_and_empty_inputs():
    assert iou(box(l=0), box(l=0)) == 0.0
    assert bev_iou_matrix(np.zeros((0, 7)), [box()]).shape == (0, 1)
    assert bev_iou_matrix([box()], []).shape == (1, 0)
    with pytest.raises(ValueError):
        bev_iou_matrix(np.zeros((2, 5)), [box()])


def test_iou_matrix_matches_monte_carlo_and_is_symmetric():
    rng = np.random.default_rng(7)
    n = 12
    boxes = np.column_stack(
        [
            rng.uniform(-2, 2, (n, 2)),
            np.zeros(n),
            rng.uniform(0.5, 4, (n, 2)),
            np.ones(n),
            rng.uniform(-math.pi, math.pi, n),
        ]
    )
    m = bev_iou_matrix(boxes, boxes)
    np.testing.assert_allclose(m, m.T, atol=1e-9)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
    # Independent estimate: sample the plane and count points inside both footprints (points_in_boxes at z = 0).
    samples = np.column_stack([rng.uniform(-5, 5, (200_000, 2)), np.zeros(200_000)])
    inside = points_in_boxes(samples, boxes)
    inter = inside.T.astype(np.float64) @ inside.astype(np.float64)
    counts = inside.sum(axis=0)
    estimate = inter / (counts[:, None] + counts[None, :] - inter)
    np.testing.assert_allclose(m, estimate, atol=0.02)


def test_iou_matrix_100_by_100_is_fast():
    import time

    rng = np.random.default_rng(0)
    n = 100
    boxes = np.column_stack(
        [rng.uniform(-5, 5, (n, 2)), np.zeros(n), rng.uniform(1, 5, (n, 3)), rng.uniform(-3, 3, n)]
    )
    start = time.perf_counter()
    m = bev_iou_matrix(boxes, boxes)
    assert time.perf_counter() - start < 1.0
    assert m.shape == (n, n) and (m > 0).sum() > n


def test_points_in_box_rotated():
    # 4 m long, 2 m wide, 2 m tall, heading +y: spans |x| <= 1, |y| <= 2, |z - 1| <= 1.
    b = [box(z=1, l=4, w=2, h=2, yaw=math.pi / 2)]
    points = np.array(
        [
            [0, 1.5, 1],  # inside along the heading
            [1.5, 0, 1],  # outside: beyond the half width
            [0, 0, 2.5],  # outside: above the box
            [0, 0, 0],  # on the bottom face: boundary counts as inside
            [0.9, -1.9, 0.1],  # inside near a corner
        ]
    )
    np.testing.assert_array_equal(points_in_boxes(points, b)[:, 0], [True, False, False, True, True])


def test_points_in_boxes_shapes_and_counts():
    boxes = [box(), box(x=1), box(x=10)]
    points = np.array([[0.5, 0, 0, 0.3], [-0.5, 0, 0, 0.1], [10, 0, 0, 0.0]])  # extra intensity column ignored
    mask = points_in_boxes(points, boxes)
    assert mask.shape == (3, 3)
    np.testing.assert_array_equal(count_points_in_boxes(points, boxes), [2, 1, 1])
    assert points_in_boxes(np.zeros((0, 3)), boxes).shape == (0, 3)
    assert points_in_boxes(points, np.zeros((0, 7))).shape == (3, 0)
    with pytest.raises(ValueError):
        points_in_boxes(np.zeros((4, 2)), boxes)
