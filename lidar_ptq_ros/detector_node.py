"""`detector_node`: sensor_msgs/PointCloud2 in, vision_msgs/Detection3DArray and an RViz MarkerArray out.

Node `lidar_ptq_detector`. Topics (relative, so remappable): subscribes `points` (best effort, depth 1, the sensor-data
profile lidar drivers publish with), publishes `detections`, `detection_markers` and `/diagnostics`. Parameters are
declared below with descriptions; config/detector.yaml holds them in the standard ros__parameters form:

    detector_node --ros-args --params-file config/detector.yaml -r points:=/lidar/points

A slow frame never builds a queue: the subscription callback only parks the newest message in a one-slot mailbox;
a processing thread takes it from there. A message that arrives while the slot is still full replaces the one in it,
which is counted as dropped. Counters and processing times go to /diagnostics, with the median and maximum time of
each stage of a frame over the last 50 (frame_profile.py: convert, detect, detections_msg, markers_msg, publish,
total, process_cpu).

A multi-sweep model (its config's `sweeps` section, e.g. nuScenes CenterPoint: 10 sweeps within 0.5 s) gets each cloud
accumulated with the clouds before it and their time lags (lidar_ptq_core/sweeps.py). With `odometry_topic` set
(nav_msgs/Odometry, needs the nav_msgs package: ros-kilted-nav-msgs), past sweeps are motion compensated with the pose
nearest each cloud's stamp (within ODOMETRY_MAX_GAP_S), taken as the lidar's pose: the extrinsic between the
odometry's child frame and the lidar is not applied, which costs its lever arm times the rotation between sweeps.
Without it past sweeps are not compensated (at 10 m/s a point 0.5 s old is 5 m off; warned once).

The node converts messages and calls lidar_ptq_core's Detector, nothing more.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import threading
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from lidar_ptq_core.detections import Detections
from lidar_ptq_core.pointcloud.features import InputSettings
from lidar_ptq_core.runtime.heap import keep_freed_memory
from lidar_ptq_core.sweeps import SweepAccumulator, pose_from_position_quaternion

from .conversions import detections_to_cdr, msg_to_detector_input
from .diagnostics import FrameStats, diagnostic_array, diagnostic_status
from .frame_profile import TOTAL, FrameProfile, FrameTimer
from .markers import detections_to_markers
from .node_main import run_node_main
from .node_parameters import ParameterSpec, StartupError, declare_parameters
from .process_cpu import name_this_thread

NODE_NAME = "lidar_ptq_detector"
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt", "openvino")  # runtime/backends.py BACKENDS
DEFAULT_MODEL = "sim_pillar_int8.lptq"  # the product is INT8: the bundled INT8 model as a bundle; FP32 is a choice
BUNDLE_SUFFIX = ".lptq"
# What lidar drivers publish with; depth 1 so the middleware never queues old sweeps either.
POINTS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
LOG_THROTTLE_S = 5.0
ODOMETRY_MAX_GAP_S = 0.1  # a pose further than this from a cloud's stamp is not used for it
ODOMETRY_BUFFER = 400  # poses kept: 4 s of 100 Hz odometry, more than a 10-sweep window needs


PARAMETERS = (
    ParameterSpec("model", DEFAULT_MODEL,
                  "A .lptq bundle (from `lidar-ptq export`; default: the bundled INT8 sim pillar model), or a "
                  "checkpoint: a bundled name (checkpoints/<name>.safetensors, e.g. sim_pillar for FP32), a path "
                  "to a .safetensors file, FP32 or INT8 fake-quant (from `lidar-ptq quantize`).", read_only=True,
                  constraints="non-empty"),
    ParameterSpec("backend", "auto",
                  "Inference backend: 'auto' (a bundle on the fastest backend here: tensorrt where it imports and a "
                  "CUDA GPU exists, else the CPU engine the bundle's export chose: onnxruntime, or openvino for a "
                  "bundle whose INT8 convs feed FP32 layers; a checkpoint in torch), 'torch' (FP32, or INT8 as "
                  "fake-quant, on CPU; a bundle runs its checkpoint part), 'onnxruntime' (a .lptq bundle only: the "
                  "dense part in onnxruntime, an INT8 one as its integer graph), 'openvino' (a .lptq bundle's QDQ "
                  "graph on OpenVINO's CPU plugin) or 'tensorrt' (a .lptq bundle on a GPU with TensorRT 10: written, "
                  "unverified; not installable on these CPU machines).", read_only=True,
                  constraints="one of: " + ", ".join(BACKENDS)),
    ParameterSpec("score_threshold", 0.3,
                  "Boxes scoring below this are not published (the checkpoint's own decode threshold applies first).",
                  constraints="0 <= x <= 1"),
    ParameterSpec("max_points", 400000,
                  "A cloud with more finite points is thinned evenly (every k-th point in message order) to this many "
                  "before detection; 0 means no limit.", constraints=">= 0"),
    ParameterSpec("intensity_scale", 1.0,
                  "Multiplies the intensity field before detection: the bundled models expect 0..1, so a driver "
                  "publishing 0..255 needs 0.00392 (`lidar-ptq check` tells). Applied after the scale an INT8 "
                  "checkpoint recorded at calibration (`lidar-ptq quantize --intensity-scale`), which the node "
                  "applies by itself.", constraints="finite, > 0"),
    ParameterSpec("z_offset", 0.0,
                  "Metres added to z before detection, for a sensor mounted at another height than the training "
                  "data's (`lidar-ptq check` tells). Applied after the offset an INT8 checkpoint recorded at "
                  "calibration, which the node applies by itself.", constraints="finite"),
    ParameterSpec("input_check_frames", 5,
                  "After this many frames, compare them with the model's reference input statistics (as `lidar-ptq "
                  "check`): one log line and a WARN on /diagnostics per problem found; 0 turns the check off.",
                  read_only=True, constraints=">= 0"),
    ParameterSpec("odometry_topic", "",
                  "nav_msgs/Odometry topic giving the sensor's pose, for a multi-sweep model (its config's sweeps "
                  "section): past sweeps are moved into the current sweep's frame. Empty: no motion compensation "
                  "(at 10 m/s a point 0.5 s old is 5 m off). Needs the nav_msgs package; ignored by single-sweep "
                  "models.", read_only=True),
    ParameterSpec("publish_markers", True, "Publish detection_markers (visualization_msgs/MarkerArray) for RViz; "
                  "built only while something subscribes to it."),
    ParameterSpec("num_threads", 0, "CPU threads for inference (torch, and onnxruntime's intra-op threads); 0 keeps "
                  "the libraries' defaults.", read_only=True,
                  constraints=">= 0"),
    ParameterSpec("diagnostics_period", 1.0, "Seconds between two /diagnostics messages.", read_only=True,
                  constraints="finite, > 0"),
)


def _resolved_backend(detector, asked: str) -> str:
    """' (onnxruntime)' when 'auto' chose a backend, else ''."""
    name = getattr(getattr(detector, "backend", None), "name", None)
    return f" ({name})" if name and name != asked else ""


@dataclass(frozen=True)
class Settings:
    model: str
    backend: str
    score_threshold: float
    max_points: int
    intensity_scale: float
    publish_markers: bool
    num_threads: int
    diagnostics_period: float
    z_offset: float = 0.0
    input_check_frames: int = 0
    odometry_topic: str = ""


def validate_settings(values: Mapping[str, object]) -> Settings:
    """Parameter values -> Settings; ValueError naming the parameter, its value and what it must be."""

    def number(name, low=None, high=None, low_open=False):
        value = values[name]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
        if not ok:
            raise ValueError(f"parameter '{name}' is {value!r}; it must be a number, {_constraints(name)}")
        return float(value)

    def integer(name):
        value = values[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"parameter '{name}' is {value!r}; it must be an integer, {_constraints(name)}")
        return int(value)

    model = values["model"]
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"parameter 'model' is {model!r}; it must name a bundled checkpoint or a .safetensors path")
    backend = values["backend"]
    if backend == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
        raise ValueError("parameter 'backend' is 'tensorrt' but the tensorrt package is not importable here (it cannot "
                         "be installed on these CPU machines); on a GPU machine with TensorRT 10 it runs a .lptq "
                         "bundle's engine (`lidar-ptq build-engine`, unverified)")
    if backend not in BACKENDS:
        raise ValueError(f"parameter 'backend' is {backend!r}; allowed: {', '.join(BACKENDS)}")
    bundle_only = backend in ("onnxruntime", "tensorrt", "openvino")
    if bundle_only and isinstance(model, str) and not model.strip().endswith(BUNDLE_SUFFIX):
        raise ValueError(f"parameter 'backend' is {backend!r} but 'model' {model!r} is not a {BUNDLE_SUFFIX} bundle; "
                         f"{backend} runs the ONNX part of a bundle (`lidar-ptq export`), a checkpoint runs in torch")
    odometry_topic = values.get("odometry_topic", "")
    if not isinstance(odometry_topic, str):
        raise ValueError(f"parameter 'odometry_topic' is {odometry_topic!r}; it must be a topic name or empty")
    publish_markers = values["publish_markers"]
    if not isinstance(publish_markers, bool):
        raise ValueError(f"parameter 'publish_markers' is {publish_markers!r}; it must be true or false")
    return Settings(
        model=model.strip(),
        backend=backend,
        score_threshold=number("score_threshold", 0.0, 1.0),
        max_points=integer("max_points"),
        intensity_scale=number("intensity_scale", 0.0, low_open=True),
        z_offset=number("z_offset") if "z_offset" in values else 0.0,
        input_check_frames=integer("input_check_frames") if "input_check_frames" in values else 0,
        odometry_topic=odometry_topic.strip(),
        publish_markers=publish_markers,
        num_threads=integer("num_threads"),
        diagnostics_period=number("diagnostics_period", 0.0, low_open=True),
    )


def _constraints(name: str) -> str:
    return next(spec.constraints for spec in PARAMETERS if spec.name == name)


class DetectorNode(Node):
    """The detector node. `detector` replaces the one `model` would load (tests pass a wrapped one); other keyword
    arguments go to rclpy's Node (context, cli_args, parameter_overrides, ...)."""

    def __init__(self, *, detector=None, **node_options):
        super().__init__(NODE_NAME, **node_options)
        self._worker = None
        try:
            self.settings = declare_parameters(self, PARAMETERS, validate_settings)
            self.detector = detector if detector is not None else self._load_detector()
        except StartupError:
            super().destroy_node()
            raise
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.stats = FrameStats()
        self.profile = FrameProfile()  # per-stage times of the recent frames, on /diagnostics
        self._mailbox = None  # the newest message not yet taken by the processing thread
        self._cond = threading.Condition()
        self._stopping = False
        # The model's point features and the input settings its checkpoint recorded at calibration (none for a
        # stand-in detector without a config): the node applies them before its own parameters.
        config = getattr(self.detector, "config", None)
        self._point_features = getattr(config, "point_features", None)
        self._recorded_input = getattr(config, "input_settings", None) or InputSettings()
        self._warned_filled: set[str] = set()
        self._check_clouds = []  # the first frames, for the input check; None once it ran
        self._input_problems = ""  # what the input check found, shown on /diagnostics
        self._input_check_value = None  # its /diagnostics entry once it ran
        # Past sweeps for a multi-sweep model (None: the model takes one sweep) and the poses they are moved with.
        self._sweeps = SweepAccumulator.for_model(config, notify=lambda text: self.get_logger().warning(text)) \
            if config is not None else None
        self._poses = deque(maxlen=ODOMETRY_BUFFER)  # (stamp s, 4x4 sensor-to-world), in arrival order
        self._odometry_subscription = None
        try:
            self._subscribe_odometry()
        except StartupError:
            self.destroy_node()
            raise

        self._detections_pub = self.create_publisher(Detection3DArray, "detections", OUTPUT_QOS)
        self._markers_pub = self.create_publisher(MarkerArray, "detection_markers", OUTPUT_QOS)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        self._subscription = self.create_subscription(PointCloud2, "points", self._on_points, POINTS_QOS)
        self._diagnostics_timer = self.create_timer(self.settings.diagnostics_period, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._process_loop, name="lidar_ptq_detector_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"model {self.settings.model} ({', '.join(self.detector.class_names)}), backend {self.settings.backend}"
            f"{_resolved_backend(self.detector, self.settings.backend)}: "
            f"{self._subscription.topic_name} -> {self._detections_pub.topic_name}"
        )
        if not self._recorded_input.is_identity:
            self.get_logger().info(f"input settings recorded in the model at calibration: "
                                   f"{self._recorded_input.describe()} (the intensity_scale and z_offset parameters "
                                   "apply after them)")

    def _subscribe_odometry(self) -> None:
        topic = self.settings.odometry_topic
        if self._sweeps is None:
            if topic:
                self.get_logger().info(f"odometry_topic {topic!r} ignored: the model takes one sweep")
            return
        self.get_logger().info(f"accumulating {self._sweeps.num_sweeps} sweeps within "
                               f"{self._sweeps.max_time_lag_s:g} s, as the model config asks"
                               + (f"; poses from {topic}" if topic else ""))
        if not topic:
            # The one warning of this limit (the accumulator's own note would repeat it at the first frame).
            self._sweeps.warned_without_poses = True
            lag = self._sweeps.max_time_lag_s
            self.get_logger().warning(f"no odometry_topic: past sweeps are stacked where the sensor saw them, not "
                                      f"motion compensated (static-world assumption: a moving robot smears objects "
                                      f"by speed x lag, at 10 m/s {10 * lag:g} m over {lag:g} s); set "
                                      "odometry_topic to a nav_msgs/Odometry topic")
            return
        try:
            from nav_msgs.msg import Odometry
        except ImportError:
            raise StartupError(f"parameter 'odometry_topic' is {topic!r} but nav_msgs is not importable here; "
                               "install ros-kilted-nav-msgs (or leave odometry_topic empty: no motion "
                               "compensation)") from None
        self._odometry_subscription = self.create_subscription(Odometry, topic, self._on_odometry, OUTPUT_QOS)

    def _on_odometry(self, msg) -> None:
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        try:
            pose = pose_from_position_quaternion((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
        except ValueError as exc:
            self.get_logger().warning(f"odometry: {exc}", throttle_duration_sec=LOG_THROTTLE_S)
            return
        with self._cond:
            self._poses.append((_stamp_seconds(msg.header.stamp), pose))

    def _pose_at(self, stamp: float):
        """The odometry pose nearest `stamp`, or None when none is within ODOMETRY_MAX_GAP_S."""
        with self._cond:
            poses = list(self._poses)
        if not poses:
            return None
        gap, pose = min(((abs(t - stamp), p) for t, p in poses), key=lambda item: item[0])
        return pose if gap <= ODOMETRY_MAX_GAP_S else None

    # -- parameters ---------------------------------------------------------------------------------------------
    def _on_set_parameters(self, parameters) -> SetParametersResult:
        values = {spec.name: getattr(self.settings, spec.name) for spec in PARAMETERS}
        values.update({p.name: p.value for p in parameters if p.name in values})
        try:
            self.settings = validate_settings(values)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _load_detector(self):
        # Every frame allocates and frees the same large arrays: keep freed memory instead of faulting it in again
        # each frame, whatever the backend (onnxruntime's session options do it too; runtime/heap.py).
        keep_freed_memory()
        with warnings.catch_warnings():  # spconv's import-time deprecation notices say nothing to a node's user
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"spconv\.")
            from lidar_ptq_core.runtime import Detector

            try:
                detector = Detector.load(self.settings.model, self.settings.backend, self.settings.num_threads or None)
            except Exception as exc:  # missing file, not a checkpoint, config mismatch: one line, no traceback
                raise StartupError(f"parameter 'model' is {self.settings.model!r}: cannot load it: {exc}") from None
        # torch is imported only where the model runs in it (a bundle on onnxruntime takes num_threads through
        # Detector.load): importing it just to set its threads would cost seconds of start and need torch installed.
        torch = sys.modules.get("torch")
        if self.settings.num_threads and torch is not None:
            torch.set_num_threads(self.settings.num_threads)
        return detector

    # -- frames -------------------------------------------------------------------------------------------------
    def _on_points(self, msg: PointCloud2) -> None:
        """Executor thread: park the message for the processing thread; a message still parked is dropped."""
        with self._cond:
            replaced = self._mailbox is not None
            self._mailbox = msg
            self.stats.add(frames_received=1, frames_dropped=int(replaced))
            self._cond.notify()

    def _process_loop(self) -> None:
        name_this_thread("detector_work")  # apart from onnxruntime's pool and the executor in /proc and top
        while True:
            with self._cond:
                while self._mailbox is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                msg, self._mailbox = self._mailbox, None
            try:
                self._process(msg)
            except Exception as exc:  # publishing after shutdown, or anything unforeseen: the node keeps running
                if not self.context.ok():
                    return
                self.stats.add(detector_failures=1)
                self.stats.set(last_problem=f"{type(exc).__name__}: {exc}")
                self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=LOG_THROTTLE_S)

    def _process(self, msg: PointCloud2) -> None:
        timer = FrameTimer()
        settings = self.settings
        try:
            with timer.span("convert"):
                given = self._recorded_input.then(InputSettings(settings.intensity_scale, settings.z_offset))
                cloud = msg_to_detector_input(msg, given.intensity_scale, settings.max_points, self._point_features,
                                              given.z_offset)
        except (ValueError, TypeError, OverflowError) as exc:
            self.stats.add(malformed_messages=1)
            self.stats.set(last_problem=str(exc))
            self.get_logger().warning(f"{self._subscription.topic_name}: rejected a PointCloud2: {exc}",
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        if not cloud.has_intensity:
            self.stats.add(clouds_without_intensity=1)
        for name in cloud.filled:
            if name not in self._warned_filled:
                self._warned_filled.add(name)
                self.get_logger().warning(f"{self._subscription.topic_name}: PointCloud2 without a {name} field; "
                                          "detecting with it filled as the model config says (zeros unless it "
                                          "names a constant; warned once)")
        self.stats.add(non_finite_points=cloud.non_finite, thinned_points=cloud.thinned)
        check_now = False
        if settings.input_check_frames and self._point_features is not None and cloud.cloud is not None \
                and self._check_clouds is not None:  # None once the check ran
            self._check_clouds.append(cloud.cloud)
            check_now = len(self._check_clouds) >= settings.input_check_frames  # >=: a failed frame retries

        points = cloud.points
        if self._sweeps is not None:
            with timer.span("sweeps"):
                self._sweeps.z_offset = given.z_offset  # poses describe the sensor frame before the offset
                stamp = _stamp_seconds(msg.header.stamp)
                points = self._sweeps.add(points, stamp,
                                          self._pose_at(stamp) if self._odometry_subscription else None)
        with timer.span("detect"):
            if len(points):
                detections = self.detector.detect(points)
                detections = detections.select(detections.scores >= settings.score_threshold)
            else:
                detections = Detections.empty(self.detector.class_names)
        with timer.span("detections_msg"):  # serialized straight from the arrays: no Python message per box
            detections_msg = detections_to_cdr(detections, msg.header)
        with timer.span("publish"):  # the middleware's write (and serializing the markers, when built)
            self._detections_pub.publish(detections_msg)
        # Markers cost more to build and serialize than the detections (about 5 + 2 ms for 60 boxes): only for a
        # subscriber (RViz). Nothing is lost: the topic is volatile, a later subscriber gets the next frame's.
        if settings.publish_markers and self._markers_pub.get_subscription_count() > 0:
            with timer.span("markers_msg"):
                markers_msg = detections_to_markers(detections, msg.header)
            with timer.span("publish"):
                self._markers_pub.publish(markers_msg)
        if check_now:  # after this frame's outputs, which need not wait for it (one frame's time, once)
            with timer.span("input_check"):
                self._check_input(given)
        spans = timer.finish()
        self.profile.add(spans)
        self.stats.frame_done(spans[TOTAL], len(cloud.points), len(detections))

    def _check_input(self, given: InputSettings) -> None:
        """`lidar-ptq check` on the first frames: one log line, and a WARN on /diagnostics from then on."""
        from lidar_ptq_core.pointcloud.input_check import cloud_statistics, compare_statistics, reference_statistics

        config = self.detector.config
        clouds, self._check_clouds = self._check_clouds, None
        try:
            stats = cloud_statistics(clouds, config.point_features, config.voxelization.point_cloud_range, given)
            problems = compare_statistics(stats, reference_statistics(config.name), config.point_features)
        except ValueError as exc:  # a reference file that does not parse: say so, keep detecting
            problems, self._input_problems = [], f"input check failed: {exc}"
        if problems:
            self._input_problems = "; ".join(p.line() for p in problems)
        if self._input_problems:
            self.get_logger().warning(f"{self._subscription.topic_name}: input check on the first {len(clouds)} "
                                      f"frames: {self._input_problems}")
        self._input_check_value = KeyValue(key="input_check", value=self._input_problems or "ok")

    def _publish_diagnostics(self) -> None:
        now, before = self.stats.since_last_report()
        status = diagnostic_status(now, before, f"{self.get_name()}: detector", self.settings.model)
        status.values.extend(KeyValue(key=key, value=value) for key, value in self.profile.key_values())
        if self._input_check_value is not None:
            status.values.append(self._input_check_value)
            if self._input_problems and status.level == DiagnosticStatus.OK:
                status.level = DiagnosticStatus.WARN
                status.message = f"input unlike the model's training data: {self._input_problems}"
        self._diagnostics_pub.publish(diagnostic_array(status, self.get_clock().now().to_msg()))

    def destroy_node(self):
        if self._worker is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._worker.join()
            self._worker = None
        return super().destroy_node()


def _stamp_seconds(stamp) -> float:
    return int(stamp.sec) + 1e-9 * int(stamp.nanosec)


def main(args=None) -> int:
    return run_node_main(DetectorNode, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
