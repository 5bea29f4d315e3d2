"""`calibration_recorder`: records the calibration set for `lidar-ptq quantize --calib BAG` from a live topic.

Node `lidar_ptq_calibration_recorder`. Subscribes `points` (relative, so remappable; best effort, depth 1, the
sensor-data profile the detector uses) and writes every `every`-th cloud, at least `min_interval` seconds after the
previous one, into a new rosbag2 bag at `output` (MCAP, or sqlite3 on request) until `frames` are written; then it
exits with status 0:

    calibration_recorder --ros-args --params-file config/calibrate.yaml -p output:=calib_bag -r points:=/lidar/points
    lidar-ptq quantize --calib calib_bag --checkpoint sim_pillar --out int8.safetensors

Messages are taken as the CDR bytes DDS delivered (an rclpy subscription with raw=True) and written as they are by
the core's bag writer (lidar_ptq_core/pointcloud/bag.py, rosbags underneath), never deserialised; the bag's
connection carries rosbags' message definition and type hash of
sensor_msgs/msg/PointCloud2, checked at start against the hash rclpy gives this subscription. The bag topic is the
subscription's resolved name (for example /lidar/points), the log time the node's clock at arrival (ROS time: the
bag's clock when use_sim_time is set), which is also the clock `min_interval` is measured with.

Ctrl-C, SIGTERM or a failure leave a valid bag of the frames written so far: the writer is closed on every way out
(finally, and atexit as a last resort). Only SIGKILL leaves a storage file without metadata.yaml. An existing
`output` path is refused at start: a bag is never overwritten.
"""

from __future__ import annotations

import atexit
import math
import os
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from rclpy.node import Node
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.serialization import deserialize_message
from rclpy.task import Future
from sensor_msgs.msg import PointCloud2

from lidar_ptq_core.pointcloud import INTENSITY_ALIASES
from lidar_ptq_core.pointcloud.bag import BAG_STORAGES, POINTCLOUD2_TYPE, PointCloud2BagWriter, pointcloud2_type_hash

from .detector_node import POINTS_QOS
from .node_main import run_node_main
from .node_parameters import ParameterSpec, StartupError, declare_parameters

NODE_NAME = "lidar_ptq_calibration_recorder"
# Selected frames waiting for the disk; one more while all are pending is not recorded (and not counted).
WRITE_QUEUE_DEPTH = 8
LOG_THROTTLE_S = 5.0

PARAMETERS = (
    ParameterSpec("output", "",
                  "Directory of the rosbag2 bag to create (it must not exist; parent folders are created). The bag "
                  "is what `lidar-ptq quantize --calib` reads.", read_only=True,
                  constraints="non-empty; a path that does not exist yet"),
    ParameterSpec("storage", BAG_STORAGES[0], "rosbag2 storage plugin of the new bag: mcap or sqlite3 (.db3).",
                  read_only=True, constraints=f"one of: {', '.join(BAG_STORAGES)}"),
    ParameterSpec("frames", 256,
                  "Frames to record; the node exits (status 0) once they are in the bag. `lidar-ptq quantize` uses "
                  "256 frames by default, spread over the whole bag.", read_only=True, constraints=">= 1"),
    ParameterSpec("every", 1,
                  "Record a cloud only when it is at least the every-th one received since the last recorded one "
                  "(1: every cloud, 10: one in ten). Consecutive sweeps are nearly identical; spacing them covers "
                  "more scenes.", read_only=True, constraints=">= 1"),
    ParameterSpec("min_interval", 0.0,
                  "Record a cloud only when at least this many seconds (node clock at arrival) passed since the "
                  "last recorded one; 0 disables the check. Combined with `every`: both must hold.",
                  read_only=True, constraints="finite, >= 0"),
)
PARAMETER_NAMES = tuple(spec.name for spec in PARAMETERS)



@dataclass(frozen=True)
class Settings:
    output: Path
    storage: str
    frames: int
    every: int
    min_interval: float


def validate_settings(values: Mapping[str, object]) -> Settings:
    """Parameter values -> Settings; ValueError naming the parameter, its value and what it must be."""
    output = values["output"]
    if not isinstance(output, str) or not output.strip():
        raise ValueError(f"parameter 'output' is {output!r}; it must name the bag directory to create")
    storage = values["storage"]
    if storage not in BAG_STORAGES:
        raise ValueError(f"parameter 'storage' is {storage!r}; allowed: {', '.join(BAG_STORAGES)}")
    for name in ("frames", "every"):
        value = values[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"parameter '{name}' is {value!r}; it must be an integer >= 1")
    interval = values["min_interval"]
    if (not isinstance(interval, (int, float)) or isinstance(interval, bool) or not math.isfinite(interval)
            or interval < 0):
        raise ValueError(f"parameter 'min_interval' is {interval!r}; it must be a number of seconds, finite, >= 0")
    return Settings(Path(os.path.expanduser(output.strip())), storage, int(values["frames"]), int(values["every"]),
                    float(interval))


class FrameSelector:
    """Which arriving clouds to record: at least `every` messages and `min_interval_ns` after the last recorded one
    (the first one always), until `frames` are selected. A clock that jumps back (a looping bag's sim time) counts
    as the interval having passed."""

    def __init__(self, frames: int, every: int = 1, min_interval_ns: int = 0):
        self.frames, self.every, self.min_interval_ns = frames, every, min_interval_ns
        self.received = 0  # messages offered while frames were still wanted
        self.selected = 0
        self._since_last = 0
        self._last_ns: int | None = None
        self._before: tuple | None = None

    @property
    def complete(self) -> bool:
        return self.selected >= self.frames

    def offer(self, time_ns: int) -> bool:
        if self.complete:
            return False
        self.received += 1
        self._since_last += 1
        if self._last_ns is not None:
            if self._since_last < self.every:
                return False
            elapsed = time_ns - self._last_ns
            if 0 <= elapsed < self.min_interval_ns:
                return False
        self._before = (self._since_last, self._last_ns)
        self.selected += 1
        self._since_last = 0
        self._last_ns = time_ns
        return True

    def cancel_last(self) -> None:
        """Undo the last selection (the frame could not be recorded): the next cloud may take its place."""
        if self._before is not None:
            self.selected -= 1
            self._since_last, self._last_ns = self._before
            self._before = None


class BagWriterThread:
    """A PointCloud2BagWriter (the core's bag writer) opened, written and closed by one thread of its own, fed through
    a queue, so that the executor never waits for the disk and a signal in the main thread never interrupts a write.

    Opening errors are raised by the constructor. `on_written(count)` and `on_failed(exc)` run in the writer thread.
    close() writes what is queued, then closes the bag; it also runs at interpreter exit if nobody called it."""

    def __init__(self, path, topic: str, storage: str, on_written, on_failed, depth: int = WRITE_QUEUE_DEPTH):
        self.depth = depth
        self.bag: PointCloud2BagWriter | None = None
        self._on_written, self._on_failed = on_written, on_failed
        self._queue: queue.Queue = queue.Queue()  # unbounded, so that close() never blocks; put() keeps the depth
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(path, topic, storage), daemon=True,
                                        name="lidar_ptq_recorder_writer")
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error
        atexit.register(self.close)

    def _run(self, path, topic, storage) -> None:
        try:
            self.bag = PointCloud2BagWriter(path, topic, storage)
        except BaseException as exc:
            self._open_error = exc
            return
        finally:
            self._opened.set()
        try:
            while (item := self._queue.get()) is not None:
                try:
                    count = self.bag.write_serialized(*item)
                except Exception as exc:  # disk full, anything unforeseen: stop with what is written
                    self._on_failed(exc)
                    return
                self._on_written(count)
        finally:
            self.bag.close()

    def put(self, timestamp_ns: int, data: bytes) -> bool:
        """Queue a message; False (nothing queued) while `depth` messages still wait for the disk."""
        if self._queue.qsize() >= self.depth:
            return False
        self._queue.put((timestamp_ns, data))
        return True

    def close(self) -> int:
        """Write the queued messages, close the bag (readable from now on); returns the messages in the bag."""
        if self._thread.is_alive():
            self._queue.put(None)  # after every queued message
            self._thread.join()
        atexit.unregister(self.close)
        return self.bag.count if self.bag is not None else 0


def cloud_fields_problem(data: bytes) -> str | None:
    """Why a serialized PointCloud2 is no use for calibration (x, y, z and intensity needed), or None."""
    try:
        msg = deserialize_message(data, PointCloud2)
    except Exception as exc:  # bytes that are not a PointCloud2
        return f"cannot decode the PointCloud2: {type(exc).__name__}: {exc}"
    names = [str(field.name) for field in msg.fields]
    missing = [axis for axis in ("x", "y", "z") if axis not in names]
    if not any(alias in names for alias in INTENSITY_ALIASES):
        missing.append("intensity")
    if missing:
        return f"the PointCloud2 lacks fields {missing} (it has {names}); calibration needs x, y, z, intensity"
    return None


class CalibrationRecorder(Node):
    """The recorder node. `finished` completes with the exit status: 0 once `frames` are in the bag, 1 on a failure.
    Call close() after spinning: it writes what is queued and closes the bag. Keyword arguments go to rclpy's Node."""

    def __init__(self, **node_options):
        super().__init__(NODE_NAME, **node_options)
        self._writer = None
        self._closed = False
        try:
            self.settings = declare_parameters(self, PARAMETERS, validate_settings)
            if self.settings.output.exists():
                raise StartupError(f"parameter 'output' is '{self.settings.output}': it exists already; a bag is "
                                   "never overwritten (choose a new path)")
            self._subscription = self.create_subscription(
                PointCloud2, "points", self._on_points, POINTS_QOS, raw=True,
                qos_overriding_options=QoSOverridingOptions.with_default_policies())
            self.topic = self._subscription.topic_name
            self._check_type_hash()
            self.finished = Future()
            try:
                self._writer = BagWriterThread(self.settings.output, self.topic, self.settings.storage,
                                               self._on_written, self._on_write_failed)
            except (OSError, ValueError) as exc:
                raise StartupError(f"parameter 'output' is '{self.settings.output}': cannot create the bag: "
                                   f"{exc}") from None
        except StartupError:
            if self._writer is not None:
                self._writer.close()
            super().destroy_node()
            raise

        self.selector = FrameSelector(self.settings.frames, self.settings.every,
                                      round(self.settings.min_interval * 1e9))
        self.not_recorded = 0  # selected while the writer still had WRITE_QUEUE_DEPTH frames to write
        self._checked_fields = False
        self._log_step = max(1, self.settings.frames // 10)
        spacing = [f"one cloud in {self.settings.every}"] if self.settings.every > 1 else []
        if self.settings.min_interval > 0:
            spacing.append(f">= {self.settings.min_interval:g} s apart")
        spacing = f" ({', '.join(spacing)})" if spacing else ""
        self.get_logger().info(f"recording {self.settings.frames} frames of {self.topic}{spacing} into "
                               f"{self.settings.output} ({self.settings.storage})")

    @property
    def bag(self) -> PointCloud2BagWriter:
        return self._writer.bag

    # -- parameters ---------------------------------------------------------------------------------------------
    def _check_type_hash(self) -> None:
        """The bag must describe the bytes it stores: rosbags' PointCloud2 hash must be the one rclpy uses."""
        local = [str(info.topic_type_hash) for info in self.get_subscriptions_info_by_topic(self.topic)
                 if info.node_name == self.get_name() and info.node_namespace == self.get_namespace()]
        written = pointcloud2_type_hash()
        if local and local[0] != written:
            raise StartupError(f"{POINTCLOUD2_TYPE}: this ROS 2 has type hash {local[0]}, rosbags writes "
                               f"{written}; the bag would not describe the recorded messages")

    # -- frames -------------------------------------------------------------------------------------------------
    def _on_points(self, data: bytes) -> None:
        """Executor thread: choose, then hand the bytes to the writer thread (never blocks on the disk)."""
        if self.finished.done():
            return
        now_ns = self.get_clock().now().nanoseconds
        if not self.selector.offer(now_ns):
            return
        if not self._checked_fields:
            self._checked_fields = True
            problem = cloud_fields_problem(data)
            if problem:
                self.get_logger().error(f"{self.topic}: {problem}; stopping")
                self.selector.cancel_last()
                self.finished.set_result(1)
                return
        if not self._writer.put(now_ns, data):
            self.selector.cancel_last()
            self.not_recorded += 1
            self.get_logger().warning(f"the disk is slower than the clouds: {self.not_recorded} selected cloud(s) "
                                      "not recorded so far", throttle_duration_sec=LOG_THROTTLE_S)

    def _on_written(self, count: int) -> None:
        """Writer thread: progress, and the end once `frames` are in the bag."""
        frames = self.settings.frames
        if count % self._log_step == 0 or count == frames:
            self.get_logger().info(f"{count}/{frames} frames recorded")
        if count >= frames and not self.finished.done():
            self.finished.set_result(0)

    def _on_write_failed(self, exc: Exception) -> None:
        self.get_logger().error(f"{self.settings.output}: cannot write a frame: {type(exc).__name__}: {exc}")
        if not self.finished.done():
            self.finished.set_result(1)

    def close(self) -> int:
        """Write the frames still queued, close the bag (readable from now on); returns the frames in the bag."""
        if self._writer is None:
            return 0
        first = not self._closed
        self._closed = True
        count = self._writer.close()
        if first:
            self.get_logger().info(f"wrote {count} frame(s) of {self.topic} to {self.settings.output}")
        return count

    def destroy_node(self):
        self.close()
        return super().destroy_node()


def main(args=None) -> int:
    return run_node_main(CalibrationRecorder, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
