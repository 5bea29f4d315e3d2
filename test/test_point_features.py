"""One rule for missing point features (pointcloud/features.py), read from the model config, in every entry point:
the library's Detector, `lidar-ptq detect`, calibration from a folder, and the node's PointCloud2 conversion give the
same (N, F) points for an x y z-only cloud; input settings; configs old and new."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from lidar_ptq_core.boxfile import read_detections
from lidar_ptq_core.calibration_data import calibration_clouds, model_input_settings, record_input_settings
from lidar_ptq_core.cli import main
from lidar_ptq_core.models.config import CenterPointConfig, load_model_config
from lidar_ptq_core.pointcloud import MissingFieldError, PointCloud, read_points, write_points
from lidar_ptq_core.pointcloud.features import (
    InputSettings,
    PointPreparer,
    default_point_features,
    parse_point_features,
    prepare_points,
)
from lidar_ptq_core.sim import SimDataset, load_sim_config

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "models"
KITTI = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti_frames"


@pytest.fixture(scope="module")
def sim_frame():
    return SimDataset("val", 1, load_sim_config("default"))[0].points


def features(*entries):
    return parse_point_features(list(entries), len(entries))


def test_missing_intensity_is_filled_with_zeros_and_reported_once(sim_frame):
    cloud = PointCloud(sim_frame[:, :3], ("x", "y", "z"))
    notes = []
    prepare = PointPreparer(default_point_features(4), notify=notes.append)
    first, second = prepare(cloud, "a.pcd"), prepare(cloud, "b.pcd")
    assert first.shape == (len(sim_frame), 4) and np.array_equal(first[:, :3], sim_frame[:, :3])
    assert not first[:, 3].any() and np.array_equal(first, second)
    assert notes == ["a.pcd has no intensity field: filled with zeros (the model config says so; reported once)"]


def test_fill_rules_constant_and_error():
    cloud = PointCloud(np.arange(12, dtype=np.float32).reshape(4, 3), ("x", "y", "z"))
    points, filled = prepare_points(cloud, features("x", "y", "z", {"name": "intensity", "fill": 0.5}))
    assert np.all(points[:, 3] == 0.5) and [f.name for f in filled] == ["intensity"]
    with pytest.raises(MissingFieldError, match=r"frame 7 lacks \['intensity'\] .* with an error"):
        prepare_points(cloud, features("x", "y", "z", {"name": "intensity", "fill": "error"}), where="frame 7")
    with pytest.raises(MissingFieldError, match=r"lacks \['z'\]"):
        prepare_points(PointCloud(np.zeros((2, 2)), ("x", "y")), default_point_features(4))


def test_fields_are_found_by_name_and_alias_and_settings_apply_to_their_column():
    data = np.array([[1, 2, 3, 100, 7]], np.float32)
    cloud = PointCloud(data, ("reflectance", "z", "x", "ring", "y"))  # any order, an intensity alias
    points, filled = prepare_points(cloud, default_point_features(4), InputSettings(0.01, -1.5))
    assert np.allclose(points, [[3, 7, 2 - 1.5, 0.01]]) and filled == []


def test_arrays_are_read_positionally():
    four = np.array([[1, 2, 3, 0.5]], np.float32)
    waymo = load_model_config(CONFIGS / "waymo_centerpoint_pillar_1x.yaml").point_features
    points, filled = prepare_points(four, waymo)
    assert points.tolist() == [[1, 2, 3, 0.5, 0]] and [f.name for f in filled] == ["elongation"]
    assert prepare_points(np.ones((3, 6)), default_point_features(4))[0].shape == (3, 4), "extra columns dropped"
    with pytest.raises(ValueError, match=r"\(N, >= 3\)"):
        prepare_points(np.ones((3, 2)), default_point_features(4))


def test_a_five_column_pcd_bin_keeps_its_ring_and_the_nuscenes_time_lag_is_zeros(tmp_path):
    data = np.array([[1, 2, 3, 40, 17]], np.float32)
    write_points(tmp_path / "a.pcd.bin", PointCloud(data, ("x", "y", "z", "intensity", "ring")))
    cloud = read_points(tmp_path / "a.pcd.bin")
    assert cloud.fields == ("x", "y", "z", "intensity", "ring") and cloud.points.tolist() == data.tolist()
    nuscenes = load_model_config(CONFIGS / "nuscenes_centerpoint_voxel0075_res3d.yaml").point_features
    points, filled = prepare_points(cloud, nuscenes)
    assert points.tolist() == [[1, 2, 3, 40, 0]] and [f.name for f in filled] == ["time_lag"], "ring is no time lag"


@pytest.mark.parametrize("entries, message", [
    (["x", "y", "intensity"], "must start with x, y, z"),
    (["x", "y", "z", {"name": "intensity", "fill": "zeros"}], "'zero', 'error' or a number"),
    (["x", "y", {"name": "z", "fill": "zero"}], "cannot be filled"),
    (["x", "y", "z", "intensity", "intensity"], "unique"),
    (["x", "y", "z", {"name": "intensity", "default": 0}], "needs 'name' and optionally 'fill'"),
])
def test_bad_point_feature_lists_are_refused(entries, message):
    with pytest.raises(ValueError, match=message):
        parse_point_features(entries, len(entries))
    with pytest.raises(ValueError, match="lists 4 features but num_point_features is 5"):
        parse_point_features(["x", "y", "z", "intensity"], 5)
    with pytest.raises(ValueError, match="intensity_scale must be > 0"):
        InputSettings(0.0)


def test_configs_old_and_new():
    sim = load_model_config(CONFIGS / "sim_pillar.yaml")
    old = sim.to_dict()
    del old["point_features"]  # an old checkpoint's embedded config
    assert CenterPointConfig.from_dict(old) == sim and sim.input_settings.is_identity
    assert "input_settings" not in sim.to_dict(), "configs without corrections look as before"
    assert [f.name for f in load_model_config(CONFIGS / "waymo_centerpoint_pillar_1x.yaml").point_features] == \
        ["x", "y", "z", "intensity", "elongation"]
    model = SimpleNamespace(config=sim)
    record_input_settings(model, 0.5, -1.5)
    record_input_settings(model, 2.0, 0.25)  # a second correction composes with the first
    assert model.config.input_settings == InputSettings(1.0, -1.25)
    back = CenterPointConfig.from_dict(yaml.safe_load(model.config.to_yaml()))
    assert back == model.config and back.input_settings == InputSettings(1.0, -1.25)
    assert model_input_settings(back, 0.5, 1.25) == InputSettings(0.5, 0.0)


@pytest.fixture(scope="module")
def xyz_folder(tmp_path_factory, sim_frame):
    folder = tmp_path_factory.mktemp("xyz")
    write_points(folder / "000000.pcd", PointCloud(sim_frame[:, :3], ("x", "y", "z")))
    return folder


def test_every_entry_point_treats_xyz_only_clouds_the_same(xyz_folder, sim_frame, tmp_path, capsys):
    """Detector (library), lidar-ptq detect, calibration from a folder and the node's conversion path."""
    from lidar_ptq_core.runtime import Detector

    zeros = sim_frame.copy()
    zeros[:, 3] = 0.0
    detector = Detector.load("sim_pillar", device="cpu")
    with pytest.warns(UserWarning, match="no intensity field: filled with zeros"):
        library = detector.detect(sim_frame[:, :3])
    expected = detector.detect(zeros)
    assert np.array_equal(library.boxes, expected.boxes) and np.array_equal(library.scores, expected.scores)

    clouds, _ = calibration_clouds(str(xyz_folder), 4, model_config=detector.config)
    assert len(clouds) == 1 and np.array_equal(clouds[0], zeros)
    assert "has no intensity field: filled with zeros" in capsys.readouterr().err

    out = tmp_path / "boxes.json"
    assert main(["detect", str(xyz_folder / "000000.pcd"), "--checkpoint", "sim_pillar", "--device", "cpu",
                 "--out", str(out), "--quiet"]) == 0
    assert "has no intensity field: filled with zeros" in capsys.readouterr().err
    _, written = read_detections(out)
    assert np.allclose(written.boxes, expected.boxes, atol=1e-4) and np.allclose(written.scores, expected.scores,
                                                                                 atol=1e-4)

    pytest.importorskip("sensor_msgs.msg", reason="ROS 2 message packages not importable")
    from sensor_msgs.msg import PointCloud2, PointField

    from lidar_ptq_core.pointcloud import pointcloud2_message_fields
    from lidar_ptq_ros.conversions import msg_to_detector_input

    fields = pointcloud2_message_fields(PointCloud(sim_frame[:, :3], ("x", "y", "z")))
    fields["fields"] = [PointField(**spec._asdict()) for spec in fields["fields"]]
    converted = msg_to_detector_input(PointCloud2(**fields), point_features=detector.config.point_features)
    assert not converted.has_intensity and converted.filled == ("intensity",)
    assert np.array_equal(converted.points, zeros)


def test_node_conversion_applies_the_settings_and_the_error_rule(sim_frame):
    pytest.importorskip("sensor_msgs.msg", reason="ROS 2 message packages not importable")
    from sensor_msgs.msg import PointCloud2, PointField

    from lidar_ptq_core.pointcloud import pointcloud2_message_fields
    from lidar_ptq_ros.conversions import msg_to_detector_input

    def message(cloud):
        fields = pointcloud2_message_fields(cloud)
        fields["fields"] = [PointField(**spec._asdict()) for spec in fields["fields"]]
        return PointCloud2(**fields)

    cloud = PointCloud(sim_frame[:100], ("x", "y", "z", "intensity"))
    got = msg_to_detector_input(message(cloud), intensity_scale=2.0, z_offset=-1.5)
    assert np.allclose(got.points[:, 3], 2 * sim_frame[:100, 3]) and np.allclose(got.points[:, 2],
                                                                                  sim_frame[:100, 2] - 1.5)
    strict = features("x", "y", "z", {"name": "intensity", "fill": "error"})
    with pytest.raises(MissingFieldError, match=r"PointCloud2 lacks \['intensity'\]"):
        msg_to_detector_input(message(PointCloud(sim_frame[:10, :3], ("x", "y", "z"))), point_features=strict)


@pytest.mark.skipif(not KITTI.is_dir(), reason=f"real KITTI frames not found at {KITTI}")
def test_a_kitti_frame_into_the_full_size_waymo_model_gets_elongation_zeros():
    waymo = load_model_config(CONFIGS / "waymo_centerpoint_pillar_1x.yaml")
    clouds, _ = calibration_clouds(str(KITTI), 2, model_config=waymo)
    assert len(clouds) == 2 and all(c.shape[1] == 5 and not c[:, 4].any() for c in clouds)
