"""detector_node through real rclpy / Fast DDS (discovery on loopback, the shipped Fast DDS profile: see conftest).

A tiny untrained CenterPoint written to tmp stands in for a real model: the node's output must equal what
Detector.detect gives on the same points, whatever the PointCloud2 layout. The bundled sim_pillar runs once on one
simulated frame. Each harness uses topics under its own namespace so parallel runs on one machine do not mix.
"""

import itertools
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by ./dev; run the suite through ./dev test")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs is built into the venv by ./dev")
pytest.importorskip("diagnostic_msgs.msg", reason="diagnostic_msgs is installed by ./dev (requirements.txt)")

import torch  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from vision_msgs.msg import Detection3DArray  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from lidar_ptq_core.models.centerpoint import build_centerpoint  # noqa: E402
from lidar_ptq_core.models.checkpoint import save_checkpoint  # noqa: E402
from lidar_ptq_core.runtime import Detector  # noqa: E402
from lidar_ptq_core.runtime.backends import tensorrt_unavailable  # noqa: E402
from lidar_ptq_ros.conversions import msg_to_detections, msg_to_detector_input, quaternion_to_yaw  # noqa: E402
from lidar_ptq_ros.detector_node import POINTS_QOS, DetectorNode, StartupError, validate_settings  # noqa: E402

from test_train import tiny_pillar_config  # noqa: E402

HAVE_TENSORRT_AND_GPU = tensorrt_unavailable() is None

REPO = Path(__file__).resolve().parents[1]
FRAME_ID = "lidar_test"
WAIT_S = 60.0  # a deadline for things that normally take well under a second; never asserted as a duration
_stamps = itertools.count(1)
_namespaces = itertools.count(1)

NUMPY_TO_POINTFIELD = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8}


# -- helpers ----------------------------------------------------------------------------------------------------
def sample_points(n=3000, seed=0) -> np.ndarray:
    """(n, 4) float32 x, y, z, intensity inside the tiny model's range."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-38.0, 38.0, (n, 2))
    z = rng.uniform(-2.0, 1.5, (n, 1))
    intensity = rng.uniform(0.0, 1.0, (n, 1))
    return np.concatenate([xy, z, intensity], axis=1).astype(np.float32)


def make_cloud(columns, point_step=None, big_endian=False, height=1, row_padding=0, offsets=None) -> PointCloud2:
    """A PointCloud2 of any layout: columns is a list of (name, numpy type like 'f4', values of length N)."""
    order = ">" if big_endian else "<"
    names = [name for name, _, _ in columns]
    formats = [np.dtype(order + kind) for _, kind, _ in columns]
    if offsets is None:
        offsets = list(itertools.accumulate([0] + [f.itemsize for f in formats[:-1]]))
    step = point_step or max(o + f.itemsize for o, f in zip(offsets, formats))
    n = len(columns[0][2])
    records = np.zeros(n, np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": step}))
    for name, _, values in columns:
        records[name] = values
    width = n // height
    rows = records.view(np.uint8).reshape(height, width * step)
    rows = np.concatenate([rows, np.zeros((height, row_padding), np.uint8)], axis=1)
    fields = [PointField(name=name, offset=off, datatype=NUMPY_TO_POINTFIELD[kind], count=1)
              for (name, kind, _), off in zip(columns, offsets)]
    return PointCloud2(height=height, width=width, fields=fields, is_bigendian=big_endian, point_step=step,
                       row_step=width * step + row_padding, data=rows.tobytes(), is_dense=False)


def xyzi_cloud(points: np.ndarray, **layout) -> PointCloud2:
    return make_cloud([(name, "f4", points[:, k]) for k, name in enumerate(("x", "y", "z", "intensity"))], **layout)


def wait_for(condition, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s")
        time.sleep(0.01)


def diag_values(array: DiagnosticArray) -> dict:
    return {kv.key: kv.value for kv in array.status[0].values}


def assert_same_detections(msg: Detection3DArray, expected, class_names):
    got = msg_to_detections(msg, class_names)
    assert len(got) == len(expected) > 0
    np.testing.assert_allclose(got.boxes[:, :6], expected.boxes[:, :6], atol=1e-4)
    yaw_error = np.angle(np.exp(1j * (got.boxes[:, 6] - expected.boxes[:, 6])))  # yaw compared on the circle
    np.testing.assert_allclose(yaw_error, 0.0, atol=1e-4)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)
    assert got.labels.tolist() == expected.labels.tolist()


class Harness:
    """The node under test and a client node in one context, spun by one executor in a background thread."""

    def __init__(self, detector=None, overrides=None, cli_args=()):
        self.ns = f"/lidar_ptq_test_{os.getpid()}_{next(_namespaces)}"
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        remaps = ["--ros-args", "-r", f"points:={self.ns}/points", "-r", f"detections:={self.ns}/detections",
                  "-r", f"detection_markers:={self.ns}/markers", "-r", f"/diagnostics:={self.ns}/diagnostics"]
        overrides = {"diagnostics_period": 0.2, **(overrides or {})}
        try:
            self.node = DetectorNode(
                detector=detector, context=self.context, cli_args=remaps + list(cli_args),
                parameter_overrides=[Parameter(name, value=value) for name, value in overrides.items()],
            )
        except BaseException:
            rclpy.shutdown(context=self.context)
            raise
        self.client = rclpy.create_node("lidar_ptq_test_client", context=self.context)
        self.publisher = self.client.create_publisher(PointCloud2, f"{self.ns}/points", POINTS_QOS)
        self.detections, self.markers, self.diagnostics = [], [], []
        subs = [self.client.create_subscription(Detection3DArray, f"{self.ns}/detections", self.detections.append, 10),
                self.client.create_subscription(MarkerArray, f"{self.ns}/markers", self.markers.append, 10),
                self.client.create_subscription(DiagnosticArray, f"{self.ns}/diagnostics", self.diagnostics.append,
                                                10)]
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        wait_for(lambda: self.publisher.get_subscription_count() > 0 and all(s.get_publisher_count() for s in subs),
                 "discovery of the node's topics")

    def close(self):
        self.executor.shutdown()
        self.thread.join(timeout=10)
        self.node.destroy_node()
        self.client.destroy_node()
        rclpy.shutdown(context=self.context)

    def stats(self):
        return self.node.stats.snapshot()

    def stamp(self, msg: PointCloud2) -> int:
        stamp = next(_stamps)
        msg.header.frame_id = FRAME_ID
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp, 7
        return stamp

    def _publish_until(self, msg, condition, what):
        """Best effort may lose a sample: publish again every 2 s until `condition` holds."""
        last = -math.inf

        def check():
            nonlocal last
            result = condition()
            if not result and time.monotonic() - last > 2.0:
                self.publisher.publish(msg)
                last = time.monotonic()
            return result

        return wait_for(check, what)

    def detect(self, msg: PointCloud2) -> tuple[Detection3DArray, MarkerArray]:
        """Publish a cloud; return the Detection3DArray and MarkerArray stamped like it."""
        stamp = self.stamp(msg)

        def answered(items):
            return next((m for m in items if _stamp_of(m) == stamp), None)

        detections = self._publish_until(msg, lambda: answered(self.detections), f"detections for stamp {stamp}")
        markers = wait_for(lambda: answered(self.markers), f"markers for stamp {stamp}")
        return detections, markers

    def reject(self, msg: PointCloud2) -> str:
        """Publish a malformed cloud; return the reason the node recorded."""
        self.stamp(msg)
        before = self.stats().malformed_messages
        self._publish_until(msg, lambda: self.stats().malformed_messages > before, "rejection")
        return self.stats().last_problem


def _stamp_of(msg):
    header = msg.header if hasattr(msg, "header") else msg.markers[0].header
    return header.stamp.sec


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_centerpoint(tiny_pillar_config()),
                           tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def reference(tiny_checkpoint) -> Detector:
    """A second Detector on the same checkpoint: what the node must publish."""
    return Detector.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def harness(tiny_checkpoint):
    h = Harness(overrides={"model": str(tiny_checkpoint), "score_threshold": 0.0, "max_points": 0})
    yield h
    h.close()


# -- the node's output ------------------------------------------------------------------------------------------
def test_detections_match_the_library_and_carry_the_header(harness, reference):
    points = sample_points()
    msg, _ = harness.detect(xyzi_cloud(points))
    assert msg.header.frame_id == FRAME_ID and msg.header.stamp.nanosec == 7
    expected = reference.detect(points)
    assert_same_detections(msg, expected, reference.class_names)
    first = msg.detections[0]
    assert first.header.frame_id == FRAME_ID
    assert [d.id for d in msg.detections] == [str(i) for i in range(len(msg.detections))]
    assert first.results[0].hypothesis.class_id == reference.class_names[expected.labels[0]]
    assert first.results[0].hypothesis.score == pytest.approx(float(expected.scores[0]), abs=1e-6)
    size, center = first.bbox.size, first.bbox.center
    assert (size.x, size.y, size.z) == pytest.approx(tuple(expected.boxes[0, 3:6]), abs=1e-4)
    assert center.orientation.x == 0.0 and center.orientation.y == 0.0
    assert quaternion_to_yaw(center.orientation) == pytest.approx(
        math.remainder(float(expected.boxes[0, 6]), 2 * math.pi), abs=1e-4)


def test_markers_draw_every_box_with_its_label(harness, reference):
    points = sample_points(seed=1)
    detections, markers = harness.detect(xyzi_cloud(points))
    boxes = msg_to_detections(detections, reference.class_names)
    first, rest = markers.markers[0], markers.markers[1:]
    assert first.action == Marker.DELETEALL, "stale boxes of the previous frame must go"
    lines = [m for m in rest if m.type == Marker.LINE_LIST]
    labels = [m for m in rest if m.type == Marker.TEXT_VIEW_FACING]
    assert len(lines) == len(labels) == len(boxes) > 0 and len(rest) == 2 * len(boxes)
    assert sorted(m.id for m in lines) == list(range(len(boxes)))
    for marker in lines:
        x, y, z, length, width, height, yaw = boxes.boxes[marker.id]
        assert marker.header.frame_id == FRAME_ID and marker.action == Marker.ADD
        assert len(marker.points) == 24, "12 edges, two points each"
        # corners written here independently: rotate (+-l/2, +-w/2) by yaw, bottom and top at z -+ h/2
        rotation = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
        local = np.array([[sx * length / 2, sy * width / 2] for sx in (1, -1) for sy in (1, -1)])
        bev = local @ rotation.T + [x, y]
        corners = {tuple(np.round([*c, z + dz * height / 2], 3)) for c in bev for dz in (-1, 1)}
        drawn = {tuple(np.round([p.x, p.y, p.z], 3)) for p in marker.points}
        assert drawn == corners
    for marker in labels:
        name = reference.class_names[boxes.labels[marker.id]]
        assert marker.text == f"{name} {boxes.scores[marker.id]:.2f}"
        assert marker.pose.position.z > boxes.boxes[marker.id, 2]


# -- PointCloud2 layouts that must decode like a plain x, y, z, intensity float32 cloud ----------------------------
def _reordered_padded(p):
    # intensity first, then z, x, y; 32-byte points with gaps and a trailing uint16 ring field
    columns = [("intensity", "f4", p[:, 3]), ("z", "f4", p[:, 2]), ("x", "f4", p[:, 0]), ("y", "f4", p[:, 1]),
               ("ring", "u2", np.arange(len(p)) % 64)]
    return make_cloud(columns, offsets=[0, 8, 12, 20, 28], point_step=32)


LAYOUTS = {
    "reordered_padded_fields": _reordered_padded,
    "float64_xyz": lambda p: make_cloud([("x", "f8", p[:, 0].astype(np.float64)),
                                         ("y", "f8", p[:, 1].astype(np.float64)),
                                         ("z", "f8", p[:, 2].astype(np.float64)), ("intensity", "f4", p[:, 3])]),
    "big_endian": lambda p: xyzi_cloud(p, big_endian=True),
    "organised_with_row_padding": lambda p: xyzi_cloud(p, height=4, row_padding=12),
    "intensity_alias_reflectance": lambda p: make_cloud([("x", "f4", p[:, 0]), ("y", "f4", p[:, 1]),
                                                         ("z", "f4", p[:, 2]), ("reflectance", "f4", p[:, 3])]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_any_pointcloud2_layout_gives_the_same_detections(harness, reference, layout):
    points = sample_points(seed=2)
    msg, _ = harness.detect(LAYOUTS[layout](points))
    assert_same_detections(msg, reference.detect(points), reference.class_names)


def test_cloud_without_intensity_is_detected_with_zeros(harness, reference):
    points = sample_points(seed=3)
    before = harness.stats().clouds_without_intensity
    msg, _ = harness.detect(make_cloud([(name, "f4", points[:, k]) for k, name in enumerate("xyz")]))
    zeros = points.copy()
    zeros[:, 3] = 0.0
    assert_same_detections(msg, reference.detect(zeros), reference.class_names)
    assert harness.stats().clouds_without_intensity == before + 1


def test_non_finite_points_are_dropped(harness, reference):
    points = sample_points(seed=4)
    bad = points.copy()
    bad[[3, 50, 700], 0] = np.nan
    bad[[10, 11], 2] = np.inf
    bad[[20], 3] = -np.inf
    before = harness.stats().non_finite_points
    msg, _ = harness.detect(xyzi_cloud(bad))
    keep = np.isfinite(bad).all(axis=1)
    assert_same_detections(msg, reference.detect(points[keep]), reference.class_names)
    assert harness.stats().non_finite_points == before + 6


@pytest.mark.parametrize("cloud", ["no_points", "only_nan_points"])
def test_empty_cloud_gives_an_empty_array_with_its_header(harness, cloud):
    points = np.zeros((0, 4), np.float32) if cloud == "no_points" else np.full((5, 4), np.nan, np.float32)
    msg, markers = harness.detect(xyzi_cloud(points))
    assert msg.header.frame_id == FRAME_ID and msg.header.stamp.nanosec == 7
    assert len(msg.detections) == 0
    assert [m.action for m in markers.markers] == [Marker.DELETEALL]


# -- malformed messages: rejected with a reason, counted, and the node keeps answering ------------------------------
def _short_data(p):
    msg = xyzi_cloud(p)
    msg.data = bytes(msg.data)[: msg.row_step - 5]
    return msg


def _field_changed(p, index=1, **change):
    msg = xyzi_cloud(p)
    field = msg.fields[index]
    for key, value in change.items():
        setattr(field, key, value)
    return msg


def _attribute_changed(p, **change):
    msg = xyzi_cloud(p)
    for key, value in change.items():
        setattr(msg, key, value)
    return msg


MALFORMED = {
    "missing_x": (lambda p: make_cloud([("y", "f4", p[:, 1]), ("z", "f4", p[:, 2]), ("intensity", "f4", p[:, 3])]),
                  "no field 'x'"),
    "data_shorter_than_width_x_point_step": (_short_data, "bytes, expected"),
    "unknown_datatype": (lambda p: _field_changed(p, datatype=42), "unknown datatype"),
    "field_beyond_point_step": (lambda p: _field_changed(p, offset=14), "does not fit"),
    "duplicate_field_name": (lambda p: _field_changed(p, index=3, name="x"), "two fields named"),
    "row_step_smaller_than_a_row": (lambda p: _attribute_changed(p, row_step=16), "row_step"),
    "x_with_two_values": (lambda p: _field_changed(p, index=0, count=2), "count 1"),
    "zero_point_step": (lambda p: _attribute_changed(p, point_step=0, row_step=0), "point_step"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_message_is_rejected_and_the_node_still_answers(harness, reference, case):
    make, reason = MALFORMED[case]
    points = sample_points(n=200, seed=5)
    assert reason in harness.reject(make(points))
    msg, _ = harness.detect(xyzi_cloud(points))
    assert_same_detections(msg, reference.detect(points), reference.class_names)


def test_diagnostics_report_malformed_messages_as_a_warning(harness):
    harness.detect(xyzi_cloud(sample_points(n=100)))
    before = harness.stats().malformed_messages
    reason = harness.reject(MALFORMED["missing_x"][0](sample_points(n=10)))
    report = wait_for(lambda: next((d for d in harness.diagnostics
                                    if int(diag_values(d)["malformed_messages"]) > before), None),
                      "a diagnostics report of the rejection")
    status = report.status[0]
    assert status.level == DiagnosticStatus.WARN and "malformed" in status.message and reason in status.message
    assert status.name == "lidar_ptq_detector: detector"
    values = diag_values(report)
    assert int(values["frames_processed"]) >= 1 and float(values["last_processing_ms"]) > 0.0


# -- a slow frame never builds a queue -----------------------------------------------------------------------------
class GatedDetector:
    """Holds the first detect() until the test opens the gate, standing in for a slow model."""

    def __init__(self, inner):
        self.inner, self.class_names = inner, inner.class_names
        self.entered, self.gate = threading.Event(), threading.Event()

    def detect(self, points):
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise RuntimeError("gate never opened")
        return self.inner.detect(points)


def test_frames_arriving_while_busy_are_dropped_and_counted(tiny_checkpoint, reference):
    gated = GatedDetector(reference)
    h = Harness(detector=gated, overrides={"model": str(tiny_checkpoint), "score_threshold": 0.0})
    try:
        points = sample_points(n=500, seed=6)

        def send(stamp_of_received):
            msg = xyzi_cloud(points)
            stamp = h.stamp(msg)
            received = h.stats().frames_received
            h._publish_until(msg, lambda: h.stats().frames_received > received, f"frame {stamp} at the node")
            stamp_of_received.append(stamp)

        stamps = []
        send(stamps)
        wait_for(gated.entered.is_set, "the first frame in the detector")
        for _ in range(3):  # the detector is busy: each of these lands in the one-slot mailbox
            send(stamps)
        assert h.stats().frames_processed == 0
        gated.gate.set()
        wait_for(lambda: h.stats().frames_processed == 2, "the first and the newest frame processed")
        stats = h.stats()
        assert stats.frames_received == len(stamps)
        assert stats.frames_dropped == len(stamps) - 2
        answered = [d.header.stamp.sec for d in wait_for(lambda: h.detections if len(h.detections) >= 2 else None,
                                                         "two Detection3DArrays")]
        assert answered == [stamps[0], stamps[-1]], "the oldest frame in progress, then only the newest"
        report = wait_for(lambda: next((d for d in h.diagnostics if int(diag_values(d)["frames_dropped"]) > 0), None),
                          "a diagnostics report of the drops")
        assert report.status[0].level == DiagnosticStatus.WARN and "dropped" in report.status[0].message
        final = wait_for(lambda: next((d for d in h.diagnostics if diag_values(d)["frames_processed"] == "2"), None),
                         "a diagnostics report after both frames")
        assert diag_values(final)["frames_dropped"] == str(len(stamps) - 2)
    finally:
        gated.gate.set()
        h.close()


# -- parameters -----------------------------------------------------------------------------------------------------
VALID = {"model": "sim_pillar", "backend": "torch", "score_threshold": 0.3, "max_points": 400000,
         "intensity_scale": 1.0, "publish_markers": True, "num_threads": 0, "diagnostics_period": 1.0,
         "z_offset": 0.0, "input_check_frames": 5, "odometry_topic": ""}


@pytest.mark.parametrize("name, value, message", [
    ("backend", "tensorrt", "cannot be installed on these CPU machines"),
    ("backend", "cuda", "allowed: auto, torch, onnxruntime"),
    ("backend", "onnxruntime", "not a .lptq bundle"),
    ("score_threshold", 1.5, "0 <= x <= 1"),
    ("score_threshold", "high", "must be a number"),
    ("max_points", -1, ">= 0"),
    ("intensity_scale", 0.0, "> 0"),
    ("intensity_scale", float("nan"), "finite"),
    ("model", "  ", "bundled checkpoint"),
    ("publish_markers", "yes", "true or false"),
    ("diagnostics_period", 0, "> 0"),
])
def test_invalid_parameter_values_are_refused_with_the_reason(name, value, message):
    with pytest.raises(ValueError, match=f"parameter '{name}'") as error:
        validate_settings({**VALID, name: value})
    assert message in str(error.value)
    assert validate_settings({**VALID, "score_threshold": 1}).score_threshold == 1.0, "integers pass as floats"


def test_shipped_parameter_file_and_the_bundled_model_on_a_sim_frame():
    """config/detector.yaml loads into the node: the bundled INT8 bundle on the fastest backend here (the CPU engine
    its export chose, without TensorRT); the node's boxes for one simulated frame are the library's, and they find
    cars. Parameters carry descriptions; runtime changes are validated."""
    from lidar_ptq_core.config_files import load_yaml
    from lidar_ptq_core.sim import generate_frame, load_sim_config

    shipped = load_yaml(REPO / "config" / "detector.yaml")["lidar_ptq_detector"]["ros__parameters"]
    assert set(shipped) == set(VALID)
    h = Harness(cli_args=["--params-file", str(REPO / "config" / "detector.yaml")])
    try:
        for name, value in shipped.items():
            if name != "diagnostics_period":  # the harness overrides it
                assert h.node.get_parameter(name).value == value
            assert h.node.describe_parameter(name).description
        assert not h.node.set_parameters([Parameter("score_threshold", value=2.0)])[0].successful
        assert h.node.set_parameters([Parameter("score_threshold", value=0.5)])[0].successful
        assert h.node.settings.score_threshold == 0.5
        assert not h.node.set_parameters([Parameter("backend", value="torch")])[0].successful, "read-only"

        assert shipped["model"] == "sim_pillar_int8.lptq" and shipped["backend"] == "auto", "INT8 by default"
        # Without TensorRT: the CPU engine export chose for this bundle (OpenVINO: its output layers are FP32, which
        # onnxruntime's integer graph can only run with the convs before them in FP32), where openvino imports.
        import importlib.util

        cpu = "OpenVinoBackend" if importlib.util.find_spec("openvino") else "OnnxRuntimeBackend"
        assert type(h.node.detector.backend).__name__ == ("TensorRTBackend" if HAVE_TENSORRT_AND_GPU else cpu)
        frame = generate_frame(load_sim_config("default"), 0)
        msg, _ = h.detect(xyzi_cloud(frame.points))
        expected = Detector.load("sim_pillar_int8.lptq", "auto").detect(frame.points)
        expected = expected.select(expected.scores >= 0.5)
        assert_same_detections(msg, expected, expected.class_names)
        assert "Car" in {d.results[0].hypothesis.class_id for d in msg.detections}
    finally:
        h.close()


def test_real_kitti_sweeps_get_the_library_detections(kitti_frames):
    """Real 64-beam sweeps (../shared/data) through the node with the bundled sim model: every field of the published
    boxes equals Detector.detect on the points the node decoded, with the cloud's header (the harness stamps it)."""
    from std_msgs.msg import Header

    from lidar_ptq_core.pointcloud import read_points
    from lidar_ptq_ros.conversions import pointcloud_to_msg

    h = Harness(overrides={"model": "sim_pillar", "score_threshold": 0.3, "max_points": 0})
    try:
        library = Detector.from_checkpoint("sim_pillar")
        for path in kitti_frames[:2]:
            header = Header(frame_id="velodyne")
            msg = pointcloud_to_msg(read_points(path), header)
            got, markers = h.detect(msg)
            assert got.header == msg.header and markers.markers[0].header.frame_id == msg.header.frame_id
            points = msg_to_detector_input(msg).points
            assert len(points) > 10_000, "a real sweep"
            expected = library.detect(points)
            expected = expected.select(expected.scores >= 0.3)
            assert_same_detections(got, expected, library.class_names)
    finally:
        h.close()


def test_a_bundle_runs_on_onnxruntime_like_the_library(tiny_checkpoint, tmp_path):
    """model:=<.lptq bundle> backend:=onnxruntime: the node publishes what Detector.from_bundle gives on the same
    points (the bundle's dense part as its ONNX graph)."""
    from lidar_ptq_core.export.export_bundle import export_bundle

    bundle = export_bundle(tiny_checkpoint, tmp_path / "tiny.lptq")
    assert validate_settings({**VALID, "model": str(bundle), "backend": "onnxruntime"}).backend == "onnxruntime"
    h = Harness(overrides={"model": str(bundle), "backend": "onnxruntime", "score_threshold": 0.0, "max_points": 0,
                           "num_threads": 1})
    try:
        assert type(h.node.detector.backend).__name__ == "OnnxRuntimeBackend"
        points = sample_points(seed=11)
        msg, _ = h.detect(xyzi_cloud(points))
        expected = Detector.from_bundle(bundle, "onnxruntime", threads=1)
        assert_same_detections(msg, expected.detect(points), expected.class_names)
    finally:
        h.close()


def test_unloadable_model_refuses_to_start(tmp_path):
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(StartupError, match="parameter 'model'.*cannot load"):
            DetectorNode(context=context,
                         parameter_overrides=[Parameter("model", value=str(tmp_path / "no.safetensors"))])
    finally:
        rclpy.shutdown(context=context)


def test_console_script_exits_non_zero_with_one_message_on_an_invalid_parameter():
    result = subprocess.run(
        [sys.executable, "-m", "lidar_ptq_ros.detector_node", "--ros-args", "-p", "backend:=tensorrt"],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(), cwd=REPO,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1, output
    assert "Traceback" not in output
    lines = output.splitlines()
    assert len(lines) == 1 and "[lidar_ptq_detector]" in lines[0] and "parameter 'backend'" in lines[0], output


# -- conversions the node relies on ---------------------------------------------------------------------------------
def test_intensity_scale_and_thinning():
    points = sample_points(n=1000, seed=7)
    raw = points.copy()
    raw[:, 3] *= 255.0
    got = msg_to_detector_input(xyzi_cloud(raw), intensity_scale=1 / 255.0, max_points=300)
    assert got.points.shape == (300, 4) and got.thinned == 700 and got.received == 1000
    thinned = np.linspace(0, 999, 300).round().astype(int)
    np.testing.assert_allclose(got.points, points[thinned], rtol=1e-6, atol=1e-6)
    assert msg_to_detector_input(xyzi_cloud(points), max_points=0).thinned == 0


# -- a ~10 MB cloud from another process ----------------------------------------------------------------------------
PUBLISHER = """
import sys, time
import numpy as np
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2, PointField

topic, points_file, frame_id = sys.argv[1:4]
points = np.load(points_file)  # allow_pickle stays False
rclpy.init()
node = rclpy.create_node("lidar_ptq_test_big_cloud_publisher")
qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
publisher = node.create_publisher(PointCloud2, topic, qos)
msg = PointCloud2(height=1, width=len(points), is_bigendian=False, point_step=16, row_step=16 * len(points),
                  is_dense=True, data=points.astype("<f4").tobytes(),
                  fields=[PointField(name=n, offset=4 * k, datatype=PointField.FLOAT32, count=1)
                          for k, n in enumerate(("x", "y", "z", "intensity"))])
msg.header.frame_id = frame_id
deadline = time.monotonic() + 150
while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.05)
print(f"subscriber found; publishing {len(msg.data)} bytes", flush=True)
sent = 0
while rclpy.ok() and time.monotonic() < deadline:  # until the test's SIGTERM (rclpy's handler shuts down)
    msg.header.stamp.sec = sent
    publisher.publish(msg)
    sent += 1
    time.sleep(0.5)
node.destroy_node()  # a clean exit also removes this participant's shared-memory segment from /dev/shm
rclpy.try_shutdown()
"""


def test_ten_megabyte_cloud_from_another_process(harness, reference, tmp_path):
    """Best effort, as lidar drivers publish: with Fast DDS defaults such a cloud never arrives in another process;
    the shipped profile (conftest sets FASTDDS_DEFAULT_PROFILES_FILE, inherited here) carries it."""
    assert os.environ["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("config/dds/fastdds_loopback_shm.xml")
    points = sample_points(n=640_000, seed=8)  # 16 bytes a point: 10.24 MB of data
    np.save(tmp_path / "points.npy", points)
    (tmp_path / "publisher.py").write_text(PUBLISHER)
    frame_id = f"big_cloud_{os.getpid()}"
    log = open(tmp_path / "publisher.log", "w+")
    process = subprocess.Popen(
        [sys.executable, str(tmp_path / "publisher.py"), f"{harness.ns}/points", str(tmp_path / "points.npy"),
         frame_id],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), cwd=tmp_path,
    )
    try:
        def arrived():
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"publisher exited with {process.returncode}: {log.read()}")
            return next((d for d in harness.detections if d.header.frame_id == frame_id), None)

        msg = wait_for(arrived, "detections of the 10 MB cloud published by another process", timeout=150)
    finally:
        process.terminate()  # SIGTERM: rclpy's handler shuts the context down and the script exits cleanly
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    assert_same_detections(msg, reference.detect(points), reference.class_names)


def test_the_node_accepts_every_backend_the_library_offers():
    """One list of backends: the node's parameter check allows what Detector.from_bundle runs (openvino included)."""
    from lidar_ptq_core.runtime.backends import BACKENDS as LIBRARY_BACKENDS
    from lidar_ptq_ros.detector_node import BACKENDS as NODE_BACKENDS

    assert set(NODE_BACKENDS) == set(LIBRARY_BACKENDS)
