import numpy as np
import torch

from lidar_ptq_core.decode import HeadGeometry
from lidar_ptq_core.training.augment import AugmentConfig, augment_scene
from lidar_ptq_core.training.losses import gather_at_index, heatmap_focal_loss, regression_l1_loss
from lidar_ptq_core.training.targets import build_task_targets, draw_gaussian, gaussian_radius

# 40 x 40 cells of 0.5 m from (-10, -10): 0.25 m voxels, out_size_factor 2.
GEOM = HeadGeometry((-10.0, -10.0, -3.0, 10.0, 10.0, 3.0), (0.25, 0.25, 6.0), 2, (40, 40),
                    (("Car", "Truck", "Pedestrian"),))


def test_gaussian_radius_grows_with_size_and_shrinks_with_overlap():
    assert gaussian_radius(8, 4, 0.1) > gaussian_radius(4, 2, 0.1) > 0
    assert gaussian_radius(8, 4, 0.7) < gaussian_radius(8, 4, 0.1)


def test_draw_gaussian_peak_and_clipping_at_border():
    hm = np.zeros((10, 10), np.float32)
    draw_gaussian(hm, 0, 9, 2)  # corner: only the in-bounds quarter is drawn
    assert hm[9, 0] == 1.0 and hm.max() == 1.0
    assert hm[9, 1] == hm[8, 0] < 1.0
    assert (hm[:7] == 0).all() and (hm[:, 3:] == 0).all()


def test_targets_encode_centre_cell_offset_and_box():
    boxes = np.array([[1.3, -2.2, -0.9, 4.0, 2.0, 1.5, 0.5], [3.0, 3.0, -1.0, 0.8, 0.6, 1.7, -1.0]], np.float32)
    labels = np.array([0, 2])
    t = build_task_targets(boxes, labels, [0, 1], GEOM, max_objects=8, rot_order="cos_sin")
    assert t["mask"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]  # class 2 is not in this task
    fx, fy = (1.3 + 10) / 0.5, (-2.2 + 10) / 0.5  # 22.6, 15.6
    assert t["index"][0] == 15 * 40 + 22
    assert t["heatmap"][0, 15, 22] == 1.0 and t["heatmap"][1].max() == 0
    np.testing.assert_allclose(
        t["reg"][0], [fx - 22, fy - 15, -0.9, np.log(4), np.log(2), np.log(1.5), np.cos(0.5), np.sin(0.5)], rtol=1e-5
    )
    t2 = build_task_targets(boxes, labels, [2], GEOM, rot_order="sin_cos")
    np.testing.assert_allclose(t2["reg"][0, 6:], [np.sin(-1.0), np.cos(-1.0)], rtol=1e-6)


def test_box_outside_feature_map_is_skipped():
    t = build_task_targets(np.array([[50.0, 0, 0, 4, 2, 1.5, 0]], np.float32), np.array([0]), [0], GEOM)
    assert t["mask"].sum() == 0 and t["heatmap"].max() == 0


def test_focal_loss_prefers_correct_heatmap():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 3, 4] = 1.0
    good = torch.full((1, 1, 8, 8), -8.0)
    good[0, 0, 3, 4] = 8.0
    bad = -good
    assert heatmap_focal_loss(good, target) < 0.01 < heatmap_focal_loss(bad, target)


def test_regression_loss_gathers_centre_cells():
    feat = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    index = torch.tensor([[7, 0], [19, 2]])
    got = gather_at_index(feat, index)
    assert got.shape == (2, 2, 3)
    assert got[0, 0].tolist() == [7, 27, 47] and got[1, 0].tolist() == [60 + 19, 80 + 19, 100 + 19]
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = regression_l1_loss(got, got + 1.0, mask, torch.ones(3))
    assert torch.isclose(loss, torch.tensor(3.0))  # 3 dims off by one, mean over the 2 masked-in objects


def test_augmentation_keeps_points_in_their_boxes():
    from lidar_ptq_core.geometry import points_in_boxes

    rng = np.random.default_rng(1)
    boxes = np.array([[10.0, 5.0, -1.0, 4.0, 2.0, 1.5, 0.3], [-20.0, -8.0, -1.0, 0.8, 0.6, 1.7, 2.0]], np.float32)
    local = rng.uniform(-0.45, 0.45, (200, 3)).astype(np.float32)
    pts = []
    for b in boxes:
        c, s = np.cos(b[6]), np.sin(b[6])
        p = local * b[3:6]
        pts.append(np.stack([b[0] + c * p[:, 0] - s * p[:, 1], b[1] + s * p[:, 0] + c * p[:, 1], b[2] + p[:, 2]], 1))
    pts = np.concatenate([np.concatenate(pts), np.ones((400, 1), np.float32)], axis=1)
    for seed in range(5):
        p2, b2 = augment_scene(pts, boxes, AugmentConfig(), np.random.default_rng(seed))
        inside = points_in_boxes(p2[:, :3], b2)
        assert inside[:200, 0].all() and inside[200:, 1].all()
        assert (np.abs(b2[:, 6]) <= np.pi).all()


def test_targets_decode_back_to_the_boxes():
    """Encoding (training) and decoding (inference) must agree on every convention: cells, offsets, dims, yaw."""
    from lidar_ptq_core.decode import DecodeConfig, decode_frame

    geometry = HeadGeometry((-10.0, -10.0, -3.0, 10.0, 10.0, 3.0), (0.25, 0.25, 6.0), 2, (40, 40), (("Car", "Ped"),))
    boxes = np.array([[1.3, -2.2, -0.9, 4.0, 2.0, 1.5, 0.5], [-6.1, 7.7, -1.2, 0.8, 0.6, 1.7, -2.8]], np.float32)
    labels = np.array([0, 1])
    for rot_order in ("cos_sin", "sin_cos"):
        t = build_task_targets(boxes, labels, [0, 1], geometry, max_objects=4, rot_order=rot_order)
        head = {"hm": np.full((1, 2, 40, 40), -20.0, np.float32)}
        maps = np.zeros((8, 40 * 40), np.float32)
        for k in range(2):
            maps[:, t["index"][k]] = t["reg"][k]
            head["hm"][0, labels[k]].reshape(-1)[t["index"][k]] = 20.0
        maps = maps.reshape(1, 8, 40, 40)
        head.update(center=maps[:, 0:2], center_z=maps[:, 2:3], dim=maps[:, 3:6], rot=maps[:, 6:8])
        config = DecodeConfig(rot_order=rot_order, nms={"type": "none"})
        det = decode_frame([head], geometry, config)
        order = np.argsort(det.labels)
        np.testing.assert_allclose(det.boxes[order], boxes, atol=1e-4)
        assert det.labels[order].tolist() == [0, 1]
