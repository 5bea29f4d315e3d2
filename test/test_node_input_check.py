"""The detector node checks its first frames like `lidar-ptq check` (one log line, a WARN on /diagnostics) and
applies the input settings an INT8 checkpoint recorded at calibration by itself. Frames go straight to the node's
frame handler (no DDS): what is tested is the node's logic, test_detector_node covers the transport."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by ./dev; run the suite through ./dev test")
pytest.importorskip("diagnostic_msgs.msg", reason="diagnostic_msgs is installed by ./dev (requirements.txt)")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402

from lidar_ptq_core.pointcloud import PointCloud, pointcloud2_message_fields  # noqa: E402
from lidar_ptq_core.pointcloud.features import InputSettings  # noqa: E402
from lidar_ptq_core.runtime import Detector  # noqa: E402
from lidar_ptq_core.sim import SimDataset, load_sim_config  # noqa: E402
from lidar_ptq_ros.detector_node import DetectorNode  # noqa: E402

CHECK_FRAMES = 2


@pytest.fixture(scope="module")
def frames():
    return [SimDataset("val", CHECK_FRAMES, load_sim_config("default"))[i].points for i in range(CHECK_FRAMES)]


@pytest.fixture(scope="module")
def detector():
    return Detector.load("sim_pillar", device="cpu")


def message(points: np.ndarray) -> PointCloud2:
    fields = pointcloud2_message_fields(PointCloud(points, ("x", "y", "z", "intensity")))
    fields["fields"] = [PointField(**spec._asdict()) for spec in fields["fields"]]
    return PointCloud2(**fields)


def run_node(detector, clouds):
    """(input problems, the /diagnostics status after the clouds, lines the node logged as warnings)."""
    context = rclpy.Context()
    rclpy.init(context=context)
    node = None
    try:
        node = DetectorNode(detector=detector, context=context,
                            cli_args=["--ros-args", "-r", f"/diagnostics:=/lidar_ptq_input_check_{os.getpid()}"],
                            parameter_overrides=[Parameter("input_check_frames", value=CHECK_FRAMES),
                                                 Parameter("backend", value="torch")])
        warnings, published = [], []
        node.get_logger().warning = lambda text, **kw: warnings.append(text)
        node._diagnostics_pub.publish = published.append
        for points in clouds:
            node._process(message(points))
        node._publish_diagnostics()
        return node._input_problems, published[-1].status[0], warnings
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=context)


def test_matched_frames_leave_diagnostics_ok(detector, frames):
    problems, status, warnings = run_node(detector, frames)
    assert problems == "" and status.level == DiagnosticStatus.OK and warnings == []
    assert {v.key: v.value for v in status.values}["input_check"] == "ok"


def test_a_higher_sensor_is_one_log_line_and_a_diagnostics_warn(detector, frames):
    shifted = [p + np.array([0, 0, 1.5, 0], np.float32) for p in frames]
    problems, status, warnings = run_node(detector, shifted)
    assert "use --z-offset -1.50" in problems
    assert status.level == DiagnosticStatus.WARN and "input unlike the model's training data" in status.message
    assert len(warnings) == 1 and f"input check on the first {CHECK_FRAMES} frames" in warnings[0]


def test_the_node_applies_the_settings_recorded_at_calibration(detector, frames):
    """A checkpoint calibrated with --z-offset -1.5 on the higher sensor: the node applies it by itself."""
    shifted = [p + np.array([0, 0, 1.5, 0], np.float32) for p in frames]
    recorded = Detector(detector.model, detector.backend)
    recorded.config = replace(detector.config, input_settings=InputSettings(1.0, -1.5))
    problems, status, _ = run_node(recorded, shifted)
    assert problems == "" and status.level == DiagnosticStatus.OK
