"""Decoding CenterPoint head outputs: hand-made heatmaps with known peaks -> exact boxes, thresholds, NMS."""

import math

import numpy as np
import pytest
import torch

from lidar_ptq_core.decode import DecodeConfig, HeadGeometry, NMSConfig, decode_batch, decode_frame, nms_keep

# 20 m x 20 m at 0.5 m voxels, out_size_factor 2: 1 m cells, 20 x 20 map.
GEOM = HeadGeometry(
    point_cloud_range=(-10.0, -10.0, -3.0, 10.0, 10.0, 3.0),
    voxel_size=(0.5, 0.5, 6.0),
    out_size_factor=2,
    feature_map_size=(20, 20),
    task_class_names=(("Car", "Truck"), ("Pedestrian",)),
)
NO_NMS = DecodeConfig(nms=NMSConfig(type="none"), post_center_limit_range=(-20, -20, -5, 20, 20, 5))


def empty_outputs(batch=1, height=20, width=20):
    def task(classes):
        return {
            "hm": np.full((batch, classes, height, width), -10.0, np.float32),  # sigmoid ~ 4.5e-5
            "center": np.zeros((batch, 2, height, width), np.float32),
            "center_z": np.zeros((batch, 1, height, width), np.float32),
            "dim": np.zeros((batch, 3, height, width), np.float32),
            "rot": np.stack([np.ones((batch, height, width)), np.zeros((batch, height, width))], 1).astype(np.float32),
            "vel": np.zeros((batch, 2, height, width), np.float32),  # ignored by decoding
        }

    return [task(2), task(1)]


def put_peak(outputs, task, channel, row, col, logit, offset, z, dims, yaw, rot_order="cos_sin", frame=0):
    out = outputs[task]
    out["hm"][frame, channel, row, col] = logit
    out["center"][frame, :, row, col] = offset
    out["center_z"][frame, 0, row, col] = z
    out["dim"][frame, :, row, col] = np.log(dims)
    pair = (math.cos(yaw), math.sin(yaw)) if rot_order == "cos_sin" else (math.sin(yaw), math.cos(yaw))
    out["rot"][frame, :, row, col] = pair


@pytest.mark.parametrize("rot_order", ["cos_sin", "sin_cos"])
def test_peaks_decode_to_exact_boxes(rot_order):
    outputs = empty_outputs()
    put_peak(outputs, 0, 1, row=5, col=7, logit=2.0, offset=(0.25, 0.75), z=-0.5, dims=(8.0, 2.5, 3.0), yaw=2.5,
             rot_order=rot_order)
    put_peak(outputs, 0, 0, row=12, col=3, logit=3.0, offset=(0.5, 0.5), z=-1.0, dims=(4.0, 2.0, 1.5), yaw=-0.3,
             rot_order=rot_order)
    put_peak(outputs, 1, 0, row=0, col=19, logit=1.0, offset=(0.1, 0.2), z=-0.9, dims=(0.6, 0.5, 1.7), yaw=0.0,
             rot_order=rot_order)
    config = DecodeConfig(rot_order=rot_order, nms=NMSConfig(type="none"),
                          post_center_limit_range=(-20, -20, -5, 20, 20, 5))
    det = decode_frame(outputs, GEOM, config)
    assert det.class_names == ("Car", "Truck", "Pedestrian")
    assert det.labels.tolist() == [0, 1, 2]  # sorted by score; the second task's labels come after the first's
    np.testing.assert_allclose(det.scores, 1 / (1 + np.exp(-np.array([3.0, 2.0, 1.0]))), rtol=1e-6)
    expected = np.array([
        [-10 + 3.5, -10 + 12.5, -1.0, 4.0, 2.0, 1.5, -0.3],
        [-10 + 7.25, -10 + 5.75, -0.5, 8.0, 2.5, 3.0, 2.5],
        [-10 + 19.1, -10 + 0.2, -0.9, 0.6, 0.5, 1.7, 0.0],
    ])
    np.testing.assert_allclose(det.boxes, expected, atol=1e-5)


def test_torch_tensors_and_batches_decode_like_numpy():
    outputs = empty_outputs(batch=2)
    put_peak(outputs, 0, 0, 4, 4, 2.0, (0.5, 0.5), 0.0, (4, 2, 1.5), 0.7, frame=0)
    put_peak(outputs, 1, 0, 9, 9, 2.0, (0.5, 0.5), 0.0, (0.6, 0.6, 1.7), 0.0, frame=1)
    as_torch = [{k: torch.from_numpy(v) for k, v in task.items()} for task in outputs]
    frames = decode_batch(as_torch, GEOM, NO_NMS)
    assert len(frames) == 2
    assert frames[0].labels.tolist() == [0] and frames[1].labels.tolist() == [2]
    np.testing.assert_allclose(frames[1].boxes[0, :2], [-0.5, -0.5], atol=1e-6)
    np.testing.assert_allclose(decode_frame(outputs, GEOM, NO_NMS, frame=0).boxes, frames[0].boxes)


def test_score_threshold_is_strict_and_drops_low_peaks():
    outputs = empty_outputs()
    put_peak(outputs, 0, 0, 2, 2, 0.0, (0.5, 0.5), 0.0, (4, 2, 1.5), 0.0)  # score exactly 0.5
    put_peak(outputs, 0, 0, 8, 8, -1.0, (0.5, 0.5), 0.0, (4, 2, 1.5), 0.0)  # 0.27
    put_peak(outputs, 0, 0, 14, 14, 1.0, (0.5, 0.5), 0.0, (4, 2, 1.5), 0.0)  # 0.73
    for threshold, count in [(0.1, 3), (0.3, 2), (0.5, 1), (0.8, 0)]:
        config = DecodeConfig(score_threshold=threshold, nms=NMSConfig(type="none"))
        assert len(decode_frame(outputs, GEOM, config)) == count, threshold


def test_post_center_limit_range_drops_boxes_outside():
    outputs = empty_outputs()
    put_peak(outputs, 0, 0, 10, 2, 2.0, (0.5, 0.5), 0.0, (4, 2, 1.5), 0.0)  # x = -7.5
    put_peak(outputs, 0, 0, 10, 12, 2.0, (0.5, 0.5), 0.0, (4, 2, 1.5), 0.0)  # x = 2.5
    put_peak(outputs, 0, 0, 15, 12, 2.0, (0.5, 0.5), 4.0, (4, 2, 1.5), 0.0)  # z = 4 (too high)
    config = DecodeConfig(post_center_limit_range=(-5, -10, -3, 10, 10, 3), nms=NMSConfig(type="none"))
    det = decode_frame(outputs, GEOM, config)
    np.testing.assert_allclose(det.boxes[:, :3], [[2.5, 0.5, 0.0]])


def test_top_k_and_max_boxes_cut_by_score():
    outputs = empty_outputs()
    for i in range(6):
        put_peak(outputs, 0, 0, 3 * i, 1, 1.0 + i, (0.5, 0.5), 0.0, (4, 2, 1.5), 0.0)
    det = decode_frame(outputs, GEOM, DecodeConfig(max_obj_per_sample=4, nms=NMSConfig(type="none")))
    np.testing.assert_allclose(det.boxes[:, 1], [-10 + 3 * i + 0.5 for i in (5, 4, 3, 2)])
    det = decode_frame(outputs, GEOM, DecodeConfig(max_boxes=2, nms=NMSConfig(type="none")))
    assert len(det) == 2 and det.scores[0] > det.scores[1]


def test_circle_nms_suppresses_close_centres_of_the_kept_class_radius():
    boxes = np.array([
        [0.0, 0.0, 0, 4, 2, 1.5, 0.0],  # Car, best
        [0.8, 0.0, 0, 4, 2, 1.5, 0.1],  # Car within 1 m of the best: suppressed
        [5.0, 0.0, 0, 4, 2, 1.5, 0.0],  # Car far away: kept
        [0.3, 0.3, 0, 0.6, 0.6, 1.7, 0.0],  # Pedestrian right beside the car
    ], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    labels = np.array([0, 0, 0, 2])
    names = ("Car", "Truck", "Pedestrian")
    per_class = NMSConfig(type="circle", radius={"Car": 1.0, "Truck": 2.0, "Pedestrian": 0.2}, scope="class")
    assert nms_keep(boxes, scores, labels, per_class, names).tolist() == [0, 2, 3]
    per_task = NMSConfig(type="circle", radius={"Car": 1.0, "Truck": 2.0, "Pedestrian": 0.2}, scope="task")
    assert nms_keep(boxes, scores, labels, per_task, names).tolist() == [0, 2]  # the car's radius covers it
    with pytest.raises(ValueError, match="radius for classes \\['Pedestrian'\\]"):
        nms_keep(boxes, scores, labels, NMSConfig(type="circle", radius={"Car": 1.0}), names)


def test_rotated_nms_suppresses_overlaps_and_keeps_distinct_boxes():
    boxes = np.array([
        [0.0, 0.0, 0, 4, 2, 1.5, 0.0],
        [0.2, 0.1, 0, 4, 2, 1.5, 0.05],  # near duplicate: IoU ~ 0.85
        [0.0, 0.0, 0, 4, 2, 1.5, math.pi / 2],  # same centre, crossed: IoU = 4 / 12 = 0.33
        [10.0, 0.0, 0, 4, 2, 1.5, 0.0],  # far away
    ], np.float32)
    scores = np.array([0.9, 0.95, 0.8, 0.5], np.float32)
    labels = np.zeros(4, np.int64)
    keep = nms_keep(boxes, scores, labels, NMSConfig(type="rotated", iou_threshold=0.5), ("Car",))
    assert keep.tolist() == [1, 2, 3]  # highest score first; the crossed box overlaps only 1/3
    keep = nms_keep(boxes, scores, labels, NMSConfig(type="rotated", iou_threshold=0.3), ("Car",))
    assert keep.tolist() == [1, 3]
    keep = nms_keep(boxes, scores, labels, NMSConfig(type="rotated", iou_threshold=0.5, post_max_size=2), ("Car",))
    assert keep.tolist() == [1, 2]


def test_nms_runs_per_task_in_decoding():
    outputs = empty_outputs()
    # A car peak and a pedestrian peak on the same cell: different tasks never suppress each other.
    put_peak(outputs, 0, 0, 10, 10, 2.0, (0.5, 0.5), 0.0, (4, 2, 1.5), 0.0)
    put_peak(outputs, 0, 1, 10, 11, 1.5, (0.2, 0.5), 0.0, (4, 2, 1.5), 0.0)  # truck 0.7 m away: same task
    put_peak(outputs, 1, 0, 10, 10, 1.0, (0.5, 0.5), 0.0, (0.6, 0.6, 1.7), 0.0)
    config = DecodeConfig(nms=NMSConfig(type="rotated", iou_threshold=0.5))
    assert decode_frame(outputs, GEOM, config).labels.tolist() == [0, 2]


def test_geometry_round_trip_and_trainer_fields():
    cols, rows = GEOM.metres_to_grid([-2.75, 9.9], [-4.25, -10.0])
    np.testing.assert_allclose(cols, [7.25, 19.9])
    np.testing.assert_allclose(rows, [5.75, 0.0])
    x, y = GEOM.grid_to_metres(cols, rows)
    np.testing.assert_allclose(x, [-2.75, 9.9])
    np.testing.assert_allclose(y, [-4.25, -10.0])
    assert (GEOM.x_min, GEOM.y_min, GEOM.cell_x, GEOM.cell_y, GEOM.width, GEOM.height) == (-10, -10, 1, 1, 20, 20)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown keys in post_processing"):
        DecodeConfig.from_dict({"score_thresh": 0.1})
    with pytest.raises(ValueError, match="rot_order"):
        DecodeConfig(rot_order="xy")
    with pytest.raises(ValueError, match="nms.type"):
        NMSConfig(type="soft")
    config = DecodeConfig.from_dict({"rot_order": "sin_cos", "nms": {"type": "circle", "radius": {"Car": 1}}})
    assert DecodeConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="3 channels"):
        bad = empty_outputs()
        bad[0]["hm"] = np.zeros((1, 3, 20, 20), np.float32)
        decode_frame(bad, GEOM, NO_NMS)
