"""`cloud_player`: publishes recorded or simulated point clouds as sensor_msgs/PointCloud2, like a lidar driver.

Node `lidar_ptq_cloud_player`, for demos, tests and users without a robot. Publishes `points` (relative, so
remappable) from `source`: a rosbag2 bag (its PointCloud2 topic), a folder of .bin / .pcd files (sorted by name), a
single such file, or `sim` (the first `sim_frames` frames of the simulator's `sim_split`, the validation split by
default, generated into the cache when missing). One cloud every 1/`rate` seconds, stamped with the current time and
`frame_id`; after the last cloud the node exits with status 0, or starts over with `loop`:

    cloud_player --ros-args -p source:=sim -p rate:=10.0 -p loop:=true
    cloud_player --ros-args -p source:=calib_bag -r points:=/lidar/points

Every field of the source's clouds is published (float32, little endian, unorganised). The publisher is reliable
(KEEP_LAST 2), which best-effort subscribers such as the detector and the recorder accept too; QoS can be overridden
with the standard qos_overrides./<topic>.publisher.* parameters. `wait_for_subscribers` holds the first cloud back
until that many subscriptions have matched, so that a short `once` run reaches a node started beside it.

A source whose clouds take at most PRESERIALIZE_MAX_BYTES as messages (the demo's and benchmarks' sim frames: 2 MB
each) is read and serialized once at start; each tick then sends the stored bytes with the new stamp written in (one
copy), instead of reading the frame, building a PointCloud2 and serializing it on the cores the detector node shares
(CPU per 120k-point sim cloud: read 1.4 + build 0.3 + serialize 0.2 ms, against 0.1 ms this way; loaded machine,
benchmarks/node_stage_costs.py). A larger source is built cloud by cloud as it is played.

Each cloud's header is also published alone on `points_stamps` (std_msgs/Header, reliable, a few dozen bytes): what
a tool that only needs to know which clouds went out when (the demo's and benchmarks' collector) subscribes to,
instead of taking every multi-megabyte cloud from the cores the detector shares.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.serialization import serialize_message
from rclpy.task import Future
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from lidar_ptq_core.pointcloud import KITTI_FIELDS, PointCloud, is_bag_path, iter_bag_frames, pointcloud2_topics

from .conversions import pointcloud_to_msg, serialized_with_stamp
from .node_main import run_node_main
from .node_parameters import ParameterSpec, StartupError, declare_parameters

NODE_NAME = "lidar_ptq_cloud_player"
SIM_SOURCE = "sim"
SIM_SPLITS = ("val", "calib", "train", "test")
POINT_FILE_SUFFIXES = (".bin", ".pcd")  # .bin: KITTI (.pcd.bin: nuScenes), .pcd: PCD
PLAYER_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE)
# The stamps are small: keep them all, so a collector that falls behind for a moment still sees every cloud's header
STAMPS_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
ACK_TIMEOUT_S = 5.0  # once: how long the last clouds may take to be acknowledged by reliable subscribers
PRESERIALIZE_MAX_BYTES = 256 << 20  # a source up to this size as messages is serialized once, at start

PARAMETERS = (
    ParameterSpec("source", SIM_SOURCE,
                  "What to play: 'sim' (the simulator's validation split), a rosbag2 bag (directory, .mcap or .db3), "
                  "a folder of .bin / .pcd point cloud files (sorted by name) or one such file.", read_only=True,
                  constraints="'sim', or an existing bag, folder or .bin/.pcd file"),
    ParameterSpec("sim_frames", 20, "With source 'sim': how many frames of the split to play.",
                  read_only=True, constraints=">= 1"),
    ParameterSpec("sim_split", "val",
                  "With source 'sim': the simulator split to play: 'val' (what the demo and the benchmarks evaluate "
                  "on), 'calib' (scenes for recording a calibration bag), 'train' or 'test' (headline figures "
                  "only); the splits never share a scene.",
                  read_only=True, constraints="one of: " + ", ".join(SIM_SPLITS)),
    ParameterSpec("sim_config", "default",
                  "With source 'sim': simulator config, a name in config/sim (default, vlp32) or a YAML path.",
                  read_only=True, constraints="non-empty"),
    ParameterSpec("bag_topic", "",
                  "With a bag source: its PointCloud2 topic to play; empty takes the bag's only PointCloud2 topic.",
                  read_only=True),
    ParameterSpec("rate", 10.0, "Clouds per second (Hz).", read_only=True, constraints="finite, > 0"),
    ParameterSpec("loop", False, "Start over after the last cloud instead of exiting (status 0).", read_only=True),
    ParameterSpec("frame_id", "lidar", "header.frame_id of every published cloud (the RViz fixed frame).",
                  read_only=True, constraints="non-empty"),
    ParameterSpec("wait_for_subscribers", 0,
                  "Publish the first cloud only once this many subscriptions match `points` and `points_stamps` "
                  "together; 0 starts at once.",
                  read_only=True, constraints=">= 0"),
)
PARAMETER_NAMES = tuple(spec.name for spec in PARAMETERS)



@dataclass(frozen=True)
class Settings:
    source: str
    sim_frames: int
    sim_split: str
    sim_config: str
    bag_topic: str | None
    rate: float
    loop: bool
    frame_id: str
    wait_for_subscribers: int


def validate_settings(values: Mapping[str, object]) -> Settings:
    """Parameter values -> Settings; ValueError naming the parameter, its value and what it must be. The source
    itself is checked by FrameSource."""
    source = values["source"]
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"parameter 'source' is {source!r}; it must be 'sim', a bag, a folder or a point cloud file")
    for name, low in (("sim_frames", 1), ("wait_for_subscribers", 0)):
        value = values[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"parameter '{name}' is {value!r}; it must be an integer >= {low}")
    rate = values["rate"]
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"parameter 'rate' is {rate!r}; it must be a number of Hz, finite, > 0")
    loop = values["loop"]
    if not isinstance(loop, bool):
        raise ValueError(f"parameter 'loop' is {loop!r}; it must be true or false")
    frame_id = values["frame_id"]
    if not isinstance(frame_id, str) or not frame_id.strip():
        raise ValueError(f"parameter 'frame_id' is {frame_id!r}; it must be a non-empty frame name")
    sim_split = values["sim_split"]
    if sim_split not in SIM_SPLITS:
        raise ValueError(f"parameter 'sim_split' is {sim_split!r}; allowed: {', '.join(SIM_SPLITS)}")
    sim_config = values["sim_config"]
    if not isinstance(sim_config, str) or not sim_config.strip():
        raise ValueError(f"parameter 'sim_config' is {sim_config!r}; it must name a simulator config")
    bag_topic = values["bag_topic"]
    if not isinstance(bag_topic, str):
        raise ValueError(f"parameter 'bag_topic' is {bag_topic!r}; it must be a topic name or empty")
    return Settings(source.strip(), int(values["sim_frames"]), sim_split, sim_config.strip(),
                    bag_topic.strip() or None, float(rate), loop, frame_id.strip(), int(values["wait_for_subscribers"]))


class FrameSource:
    """The clouds of a player source, in order; iterate again for another pass. The constructor checks the source
    (ValueError / FileNotFoundError with the reason) without reading every frame."""

    def __init__(self, source: str, sim_frames: int = 20, bag_topic: str | None = None, sim_split: str = "val",
                 sim_config: str = "default"):
        self.source = source
        self._dataset = None
        self._files: list[Path] = []
        self._bag_topic = None
        if source == SIM_SOURCE:
            from lidar_ptq_core.sim import SimDataset, load_sim_config

            self.kind = "sim"
            self._dataset = SimDataset(sim_split, sim_frames, load_sim_config(sim_config))
            self.description = f"{sim_frames} frames of the sim {sim_split} split"
            return
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{source!r} is neither 'sim' nor an existing bag, folder or file")
        if is_bag_path(path):
            self.kind = "bag"
            topics = pointcloud2_topics(path)
            if bag_topic is not None and bag_topic not in topics:
                raise ValueError(f"{path}: no PointCloud2 topic {bag_topic!r}; its PointCloud2 topics: "
                                 f"{topics or 'none'}")
            if bag_topic is None and len(topics) != 1:
                raise ValueError(f"{path}: the bag has {'no' if not topics else 'several'} PointCloud2 topics "
                                 f"{topics or ''}; {'choose one with bag_topic' if topics else 'nothing to play'}")
            self._bag_topic = bag_topic or topics[0]
            self.description = f"{self._bag_topic} of bag {path}"
        elif path.is_dir():
            self.kind = "folder"
            self._files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(POINT_FILE_SUFFIXES))
            if not self._files:
                raise ValueError(f"{path}: no .bin or .pcd point cloud files")
            self.description = f"{len(self._files)} files of {path}"
        elif path.name.endswith(POINT_FILE_SUFFIXES):
            self.kind = "file"
            self._files = [path]
            self.description = f"the file {path}"
        else:
            raise ValueError(f"{path}: not a rosbag2 bag, a folder or a .bin / .pcd file")
        self.path = path

    def prepare(self) -> int:
        """Simulate the sim frames missing from the cache now rather than while playing; returns how many."""
        return self._dataset.prepare(num_workers=1, progress=False) if self._dataset is not None else 0

    def __iter__(self) -> Iterator[PointCloud]:
        if self.kind == "sim":
            for frame in self._dataset:
                yield PointCloud(frame.points, KITTI_FIELDS)
        elif self.kind == "bag":
            for frame in iter_bag_frames(self.path, self._bag_topic):
                yield frame.cloud
        else:
            from lidar_ptq_core.pointcloud import read_points

            for file in self._files:
                yield read_points(file)


class CloudPlayer(Node):
    """The player node. `finished` completes with the exit status: 0 after a `once` pass, 1 on a failure (a source
    without frames, a file that does not read). Keyword arguments go to rclpy's Node."""

    def __init__(self, **node_options):
        super().__init__(NODE_NAME, **node_options)
        try:
            self.settings = declare_parameters(self, PARAMETERS, validate_settings)
            try:
                self.frames = FrameSource(self.settings.source, self.settings.sim_frames, self.settings.bag_topic,
                                          self.settings.sim_split, self.settings.sim_config)
            except (OSError, ValueError) as exc:
                raise StartupError(f"parameter 'source' is '{self.settings.source}': {exc}") from None
        except StartupError:
            super().destroy_node()
            raise
        if self.frames.kind == "sim" and self.frames.prepare():
            self.get_logger().info(f"simulated {self.settings.sim_frames} frames into the cache")
        # The source's clouds as serialized messages (stamp written in at each publish), or None: built as played.
        self._serialized = self._serialize_source()

        self.finished = Future()
        self.published = 0
        self.passes = 0  # completed passes over the source
        self._in_pass = 0
        self._iterator = None
        self._waiting = self.settings.wait_for_subscribers > 0
        self._publisher = self.create_publisher(PointCloud2, "points", PLAYER_QOS,
                                                qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self._stamps = self.create_publisher(Header, "points_stamps", STAMPS_QOS)
        self._timer = self.create_timer(1.0 / self.settings.rate, self._tick)
        self.topic = self._publisher.topic_name
        waiting = (f", after {self.settings.wait_for_subscribers} subscriber(s) matched" if self._waiting else "")
        self.get_logger().info(
            f"publishing {self.frames.description} on {self.topic} at {self.settings.rate:g} Hz, frame_id "
            f"{self.settings.frame_id}, {'looping' if self.settings.loop else 'once'}{waiting}")

    def _serialize_source(self) -> list[bytes] | None:
        """Every cloud of the source serialized with this player's frame_id, when they fit in PRESERIALIZE_MAX_BYTES;
        None when they do not, or when one does not read: then clouds are built as played, and a file that does not
        read stops the player when its turn comes, as it would without this."""
        header = Header(frame_id=self.settings.frame_id)
        serialized, size = [], 0
        try:
            for cloud in self.frames:
                serialized.append(serialize_message(pointcloud_to_msg(cloud, header)))
                size += len(serialized[-1])
                if size > PRESERIALIZE_MAX_BYTES:
                    return None
        except Exception:  # reported when played, in order
            return None
        return serialized or None

    def _next_cloud(self) -> PointCloud | bytes | None:
        """The next cloud (serialized when the source was serialized at start), starting a new pass when looping; None
        when a `once` pass is over."""
        for _ in range(2):
            if self._iterator is None:
                self._iterator = iter(self._serialized if self._serialized is not None else self.frames)
                self._in_pass = 0
            cloud = next(self._iterator, None)
            if cloud is not None:
                self._in_pass += 1
                return cloud
            self._iterator = None
            if self._in_pass == 0:
                raise ValueError(f"{self.frames.description}: no point clouds to play")
            self.passes += 1
            if not self.settings.loop:
                return None
        raise AssertionError("unreachable")

    def _tick(self) -> None:
        if self.finished.done() or not self.context.ok():  # a signal shut the context down: nothing to publish on
            return
        if self._waiting:
            matched = self._publisher.get_subscription_count() + self._stamps.get_subscription_count()
            if matched < self.settings.wait_for_subscribers:
                return
            self._waiting = False
        try:
            cloud = self._next_cloud()
        except Exception as exc:  # a corrupt bag or file, an empty source: stop with the reason
            self.get_logger().error(f"cannot play {self.frames.description}: {type(exc).__name__}: {exc}")
            self._finish(1)
            return
        if cloud is None:
            self.get_logger().info(f"published {self.published} clouds; done")
            self._finish(0)
            return
        header = Header(frame_id=self.settings.frame_id, stamp=self.get_clock().now().to_msg())
        if isinstance(cloud, bytes):
            self._publisher.publish(serialized_with_stamp(cloud, header.stamp))
        else:
            self._publisher.publish(pointcloud_to_msg(cloud, header))
        self._stamps.publish(header)
        self.published += 1

    def _finish(self, status: int) -> None:
        self._timer.cancel()
        if status == 0:  # let reliable subscribers take the last clouds before the process ends
            self._publisher.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
            self._stamps.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
        self.finished.set_result(status)


def main(args=None) -> int:
    return run_node_main(CloudPlayer, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
