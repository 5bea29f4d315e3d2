"""calibration_recorder and cloud_player: their logic without ROS, then through real rclpy / Fast DDS in this process
and across processes (discovery on loopback, the shipped Fast DDS profile: see conftest).

Clouds are tiny (a few hundred points) except in the one end-to-end chain that plays two simulated sweeps. Each test
uses topics under its own namespace so that parallel runs on one machine do not mix. Nothing is asserted about
durations: waits poll for a condition under a generous deadline.
"""

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by ./dev; run the suite through ./dev test")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs is built into the venv by ./dev")

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from lidar_ptq_core.calibration_data import calibration_clouds  # noqa: E402
from lidar_ptq_core.pointcloud import (  # noqa: E402
    PointCloud,
    iter_bag_frames,
    write_bag_frames,
    write_kitti_bin,
    write_pcd,
)
from lidar_ptq_core.pointcloud.bag import PointCloud2BagWriter  # noqa: E402
from lidar_ptq_ros import calibration_recorder, cloud_player  # noqa: E402
from lidar_ptq_ros.calibration_recorder import CalibrationRecorder, FrameSelector  # noqa: E402
from lidar_ptq_ros.cloud_player import CloudPlayer, FrameSource  # noqa: E402
from lidar_ptq_ros.conversions import msg_to_pointcloud, pointcloud_to_msg  # noqa: E402
from lidar_ptq_ros.detector_node import POINTS_QOS  # noqa: E402

from test_detector_node import wait_for  # noqa: E402  (one polling helper for the ROS tests)

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 60.0  # a deadline for things that normally take well under a second; never asserted as a duration
FIELDS = ("x", "y", "z", "intensity")
_namespaces = itertools.count(1)


# -- helpers ----------------------------------------------------------------------------------------------------
def tiny_cloud(seed: int, n: int = 200, fields=FIELDS) -> PointCloud:
    rng = np.random.default_rng(seed)
    points = rng.uniform(-20.0, 20.0, (n, len(fields))).astype(np.float32)
    if "intensity" in fields:
        points[:, fields.index("intensity")] = rng.uniform(0.0, 1.0, n)
    return PointCloud(points, fields)


def cloud_msg(cloud: PointCloud, sec: int, frame_id: str = "test_lidar") -> PointCloud2:
    return pointcloud_to_msg(cloud, Header(frame_id=frame_id, stamp=Time(sec=sec, nanosec=7)))


def namespace() -> str:
    return f"/lidar_ptq_rec_test_{os.getpid()}_{next(_namespaces)}"


def bag_metadata(bag: Path) -> dict:
    return yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]


def kitti_folder(folder: Path, count: int, n: int = 200) -> list[PointCloud]:
    folder.mkdir(parents=True, exist_ok=True)
    clouds = [tiny_cloud(100 + i, n) for i in range(count)]
    for i, cloud in enumerate(clouds):
        write_kitti_bin(folder / f"{i:06d}.bin", cloud)
    return clouds


def same_cloud(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


class Ros:
    """One rclpy context: the node(s) under test and a client node, spun by one executor in a background thread."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.client = rclpy.create_node("lidar_ptq_rec_test_client", context=self.context)
        self.nodes = []
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.client)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def close(self):
        self.executor.shutdown()
        self.thread.join(timeout=10)
        for node in self.nodes:
            node.destroy_node()
        self.client.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def ros():
    r = Ros()
    yield r
    r.close()


def start_recorder(ros: Ros, ns: str, **parameters) -> CalibrationRecorder:
    return ros.add(CalibrationRecorder(
        context=ros.context, cli_args=["--ros-args", "-r", f"points:={ns}/points", "-r", f"/clock:={ns}/clock"],
        parameter_overrides=[Parameter(k, value=v) for k, v in parameters.items()]))


def send_until_received(ros: Ros, publisher, recorder: CalibrationRecorder, msg: PointCloud2, received: int):
    """Best effort may lose a sample: publish again every 2 s until the recorder has seen `received` clouds."""
    last = -1e9

    def check():
        nonlocal last
        if recorder.selector.received >= received:
            return True
        if time.monotonic() - last > 2.0:
            publisher.publish(msg)
            last = time.monotonic()
        return False

    wait_for(check, f"cloud {received} at the recorder")


# -- frame selection (no ROS) -----------------------------------------------------------------------------------
def test_selector_every_nth_message_until_frames():
    selector = FrameSelector(frames=3, every=3)
    chosen = [i for i in range(20) if selector.offer(time_ns=i)]
    assert chosen == [0, 3, 6]
    assert selector.complete and selector.received == 7, "messages after the last frame are not even counted"


def test_selector_min_interval_and_both_rules():
    second = 1_000_000_000
    selector = FrameSelector(frames=10, min_interval_ns=second // 2)
    times = [0.0, 0.2, 0.49, 0.5, 0.7, 1.2, 1.3, 2.0]
    assert [t for t in times if selector.offer(round(t * second))] == [0.0, 0.5, 1.2, 2.0]
    both = FrameSelector(frames=10, every=2, min_interval_ns=second)  # 10 Hz: every 2nd and 1 s apart -> every 10th
    assert [i for i in range(35) if both.offer(i * second // 10)] == [0, 10, 20, 30]


def test_selector_clock_jumping_back_counts_as_elapsed_and_cancel_undoes():
    selector = FrameSelector(frames=5, min_interval_ns=100)
    assert selector.offer(1000) and not selector.offer(1050)
    assert selector.offer(10), "a bag looping under sim time restarts its clock"
    selector.cancel_last()
    assert selector.selected == 1 and selector.offer(20), "a cancelled frame leaves room for the next"


@pytest.mark.parametrize("name, value, message", [
    ("output", "", "must name the bag directory"),
    ("output", "   ", "must name the bag directory"),
    ("storage", "rosbag", "allowed: mcap, sqlite3"),
    ("frames", 0, "integer >= 1"),
    ("frames", True, "integer >= 1"),
    ("every", -2, "integer >= 1"),
    ("min_interval", -0.1, ">= 0"),
    ("min_interval", float("inf"), "finite"),
])
def test_recorder_invalid_parameter_values(name, value, message):
    valid = {"output": "bag", "storage": "mcap", "frames": 4, "every": 1, "min_interval": 0.0}
    with pytest.raises(ValueError, match=f"parameter '{name}'") as error:
        calibration_recorder.validate_settings({**valid, name: value})
    assert message in str(error.value)
    assert calibration_recorder.validate_settings({**valid, "min_interval": 2}).min_interval == 2.0


@pytest.mark.parametrize("name, value, message", [
    ("source", "", "'sim', a bag"),
    ("sim_frames", 0, "integer >= 1"),
    ("rate", 0.0, "> 0"),
    ("rate", float("nan"), "finite"),
    ("loop", "yes", "true or false"),
    ("frame_id", " ", "non-empty"),
    ("wait_for_subscribers", -1, "integer >= 0"),
    ("sim_split", "holdout", "allowed: val, calib, train, test"),
    ("sim_config", "", "simulator config"),
])
def test_player_invalid_parameter_values(name, value, message):
    valid = {"source": "sim", "sim_frames": 2, "sim_split": "val", "sim_config": "default", "bag_topic": "",
             "rate": 10.0, "loop": False, "frame_id": "lidar", "wait_for_subscribers": 0}
    with pytest.raises(ValueError, match=f"parameter '{name}'") as error:
        cloud_player.validate_settings({**valid, name: value})
    assert message in str(error.value)
    assert cloud_player.validate_settings({**valid, "rate": 5}).rate == 5.0


# -- the bag writer (no ROS graph) --------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_writer_of_serialized_messages_reads_back(tmp_path, storage):
    """The core's bag writer, as the recorder uses it: rclpy's CDR bytes written as they are."""
    clouds = [tiny_cloud(i) for i in range(3)]
    bag = PointCloud2BagWriter(tmp_path / "bag", "/lidar/points", storage)
    for i, cloud in enumerate(clouds):
        assert bag.write_serialized(1_000 + i, serialize_message(cloud_msg(cloud, sec=10 + i))) == i + 1
    bag.close()
    bag.close()  # idempotent
    frames = list(iter_bag_frames(tmp_path / "bag"))
    assert [f.timestamp_ns for f in frames] == [(10 + i) * 1_000_000_000 + 7 for i in range(3)]
    assert all(f.frame_id == "test_lidar" for f in frames)
    for frame, cloud in zip(frames, clouds):
        assert frame.cloud.fields == FIELDS and same_cloud(frame.cloud.points, cloud.points)
    assert [f.timestamp_ns for f in iter_bag_frames(tmp_path / "bag", use_bag_time=True)] == [1000, 1001, 1002]
    meta = bag_metadata(tmp_path / "bag")
    assert meta["storage_identifier"] == storage and meta["message_count"] == 3
    topic = meta["topics_with_message_count"][0]["topic_metadata"]
    assert topic["name"] == "/lidar/points" and topic["type"] == "sensor_msgs/msg/PointCloud2"
    assert topic["type_description_hash"] == bag.type_hash
    assert topic["type_description_hash"] == calibration_recorder.pointcloud2_type_hash()
    with pytest.raises(RuntimeError, match="closed"):
        bag.write_serialized(5, b"")


def test_bag_writer_refuses_an_existing_path(tmp_path):
    (tmp_path / "bag").mkdir()
    (tmp_path / "bag" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="never overwritten"):
        PointCloud2BagWriter(tmp_path / "bag", "/points")
    assert [p.name for p in (tmp_path / "bag").iterdir()] == ["keep.txt"]


CRASHING_WRITER = """
import sys
from rclpy.serialization import serialize_message
from std_msgs.msg import Header
from lidar_ptq_core.pointcloud import PointCloud
from lidar_ptq_ros.calibration_recorder import BagWriterThread
from lidar_ptq_ros.conversions import pointcloud_to_msg
import numpy as np

written = []
writer = BagWriterThread(sys.argv[1], "/points", sys.argv[2], written.append, print)
for i in range(3):
    cloud = PointCloud(np.full((10, 4), i, np.float32), ("x", "y", "z", "intensity"))
    writer.put(i, serialize_message(pointcloud_to_msg(cloud, Header(frame_id="f"))))
raise RuntimeError("crash before anyone closed the bag")
"""


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_writer_thread_closes_the_bag_when_the_process_dies_of_an_exception(tmp_path, storage):
    """Nobody calls close(): the atexit hook writes what was queued and metadata.yaml."""
    (tmp_path / "crash.py").write_text(CRASHING_WRITER)
    result = subprocess.run([sys.executable, str(tmp_path / "crash.py"), str(tmp_path / "bag"), storage],
                            capture_output=True, text=True, timeout=120, env=os.environ.copy(), cwd=tmp_path)
    assert result.returncode == 1 and "crash before anyone closed the bag" in result.stderr
    frames = list(iter_bag_frames(tmp_path / "bag"))
    assert [float(f.cloud.points[0, 0]) for f in frames] == [0.0, 1.0, 2.0]
    assert bag_metadata(tmp_path / "bag")["message_count"] == 3


# -- player sources (no ROS graph) ---------------------------------------------------------------------------------
def test_frame_source_folder_file_and_bag(tmp_path):
    clouds = kitti_folder(tmp_path / "frames", 3)
    write_pcd(tmp_path / "frames" / "000003.pcd", tiny_cloud(7, fields=("x", "y", "z", "intensity", "ring")))
    (tmp_path / "frames" / "notes.txt").write_text("not a cloud")
    folder = FrameSource(str(tmp_path / "frames"))
    played = list(folder)
    assert folder.kind == "folder" and len(played) == 4
    assert all(same_cloud(p.points, c.points) for p, c in zip(played, clouds))
    assert played[3].fields == ("x", "y", "z", "intensity", "ring"), "every field of the file is played"
    assert len(list(folder)) == 4, "a second pass plays again"

    single = FrameSource(str(tmp_path / "frames" / "000001.bin"))
    assert single.kind == "file" and same_cloud(next(iter(single)).points, clouds[1].points)

    write_bag_frames(tmp_path / "bag", [(5, "f", c) for c in clouds[:2]], topic="/a", storage="mcap")
    bag = FrameSource(str(tmp_path / "bag"))
    assert bag.kind == "bag" and [same_cloud(p.points, c.points) for p, c in zip(bag, clouds)] == [True, True]


def test_frame_source_sim_plays_the_val_split():
    from lidar_ptq_core.sim import SimDataset, load_sim_config

    source = FrameSource("sim", sim_frames=2)
    source.prepare()
    played = list(source)
    expected = SimDataset("val", 2, load_sim_config("default"))
    assert len(played) == 2 and played[0].fields == FIELDS
    assert all(same_cloud(p.points, expected[i].points) for i, p in enumerate(played))


def test_frame_source_sim_plays_another_split():
    from lidar_ptq_core.sim import SimDataset, load_sim_config

    source = FrameSource("sim", sim_frames=2, sim_split="calib")
    source.prepare()
    played = list(source)
    calib, val = (SimDataset(split, 2, load_sim_config("default")) for split in ("calib", "val"))
    assert source.description == "2 frames of the sim calib split"
    assert all(same_cloud(p.points, calib[i].points) for i, p in enumerate(played))
    assert not any(same_cloud(p.points, v.points) for p in played for v in val), "calib and val share no scene"


def test_frame_source_refuses_what_it_cannot_play(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'sim'"):
        FrameSource(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .bin or .pcd"):
        FrameSource(str(tmp_path / "empty"))
    (tmp_path / "cloud.ply").write_text("ply")
    with pytest.raises(ValueError, match="not a rosbag2 bag"):
        FrameSource(str(tmp_path / "cloud.ply"))
    cloud = tiny_cloud(0)
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from lidar_ptq_core.pointcloud import make_pointcloud2_message

    store = get_typestore(Stores.LATEST)
    with Writer(tmp_path / "two", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic in ("/a", "/b"):
            connection = writer.add_connection(topic, "sensor_msgs/msg/PointCloud2", typestore=store)
            writer.write(connection, 1, store.serialize_cdr(make_pointcloud2_message(cloud, 1, "f"),
                                                            "sensor_msgs/msg/PointCloud2"))
    with pytest.raises(ValueError, match="several PointCloud2 topics"):
        FrameSource(str(tmp_path / "two"))
    with pytest.raises(ValueError, match="no PointCloud2 topic '/c'"):
        FrameSource(str(tmp_path / "two"), bag_topic="/c")
    assert FrameSource(str(tmp_path / "two"), bag_topic="/b").description.startswith("/b of bag")


# -- the recorder through rclpy in this process ---------------------------------------------------------------------
def test_recorder_writes_every_nth_cloud_and_finishes(ros, tmp_path):
    ns = namespace()
    recorder = start_recorder(ros, ns, output=str(tmp_path / "calib"), frames=3, every=2)
    publisher = ros.client.create_publisher(PointCloud2, f"{ns}/points", POINTS_QOS)
    wait_for(lambda: publisher.get_subscription_count() > 0, "discovery of the recorder")
    clouds = [tiny_cloud(i) for i in range(5)]
    for i, cloud in enumerate(clouds):
        send_until_received(ros, publisher, recorder, cloud_msg(cloud, sec=100 + i), i + 1)
    assert wait_for(recorder.finished.done, "the recorder finishing") and recorder.finished.result() == 0
    assert recorder.close() == 3
    frames = list(iter_bag_frames(tmp_path / "calib"))
    assert [f.timestamp_ns // 1_000_000_000 for f in frames] == [100, 102, 104], "clouds 1, 3 and 5"
    for frame, cloud in zip(frames, clouds[::2]):
        assert frame.frame_id == "test_lidar" and same_cloud(frame.cloud.points, cloud.points)
    # The bag describes what DDS carried: the type hash of the publisher's endpoint, on the resolved topic.
    endpoint = ros.client.get_publishers_info_by_topic(f"{ns}/points")[0]
    topic = bag_metadata(tmp_path / "calib")["topics_with_message_count"][0]["topic_metadata"]
    assert topic["name"] == f"{ns}/points" and topic["type_description_hash"] == str(endpoint.topic_type_hash)
    assert bag_metadata(tmp_path / "calib")["storage_identifier"] == "mcap"
    clouds_back, _ = calibration_clouds(str(tmp_path / "calib"), 3)
    assert len(clouds_back) == 3 and same_cloud(clouds_back[1], clouds[2].points)


def test_recorder_min_interval_follows_the_node_clock(ros, tmp_path):
    """use_sim_time: the test drives /clock, so the spacing and the bag's log times are exact."""
    ns = namespace()
    recorder = start_recorder(ros, ns, output=str(tmp_path / "calib"), frames=3, min_interval=0.5,
                              storage="sqlite3", use_sim_time=True)
    publisher = ros.client.create_publisher(PointCloud2, f"{ns}/points", POINTS_QOS)
    clock = ros.client.create_publisher(Clock, f"{ns}/clock", 10)
    wait_for(lambda: publisher.get_subscription_count() > 0 and clock.get_subscription_count() > 0, "discovery")
    seconds = [10.0, 10.2, 10.5, 10.9, 11.0]
    for i, t in enumerate(seconds):
        sec, nanosec = int(t), round((t - int(t)) * 1e9)

        def at(sec=sec, nanosec=nanosec):
            clock.publish(Clock(clock=Time(sec=sec, nanosec=nanosec)))
            return recorder.get_clock().now().nanoseconds == sec * 1_000_000_000 + nanosec

        wait_for(at, f"the recorder's clock at {t} s")
        send_until_received(ros, publisher, recorder, cloud_msg(tiny_cloud(i), sec=i), i + 1)
    assert wait_for(recorder.finished.done, "the recorder finishing") and recorder.finished.result() == 0
    recorder.close()
    frames = list(iter_bag_frames(tmp_path / "calib", use_bag_time=True))
    assert [f.timestamp_ns for f in frames] == [10_000_000_000, 10_500_000_000, 11_000_000_000]
    assert bag_metadata(tmp_path / "calib")["storage_identifier"] == "sqlite3"


def test_recorder_failing_write_leaves_a_readable_bag(ros, tmp_path, monkeypatch):
    ns = namespace()
    recorder = start_recorder(ros, ns, output=str(tmp_path / "calib"), frames=5)
    real_write = recorder.bag.write_serialized

    def failing_write(timestamp_ns, data):
        if recorder.bag.count >= 2:
            raise OSError(28, "No space left on device")
        return real_write(timestamp_ns, data)

    monkeypatch.setattr(recorder.bag, "write_serialized", failing_write)
    publisher = ros.client.create_publisher(PointCloud2, f"{ns}/points", POINTS_QOS)
    wait_for(lambda: publisher.get_subscription_count() > 0, "discovery of the recorder")
    for i in range(3):
        send_until_received(ros, publisher, recorder, cloud_msg(tiny_cloud(i), sec=i + 1), i + 1)
    assert wait_for(recorder.finished.done, "the recorder stopping") and recorder.finished.result() == 1
    assert recorder.close() == 2
    assert [f.timestamp_ns // 1_000_000_000 for f in iter_bag_frames(tmp_path / "calib")] == [1, 2]


def test_recorder_stops_on_clouds_calibration_cannot_use(ros, tmp_path):
    ns = namespace()
    recorder = start_recorder(ros, ns, output=str(tmp_path / "calib"), frames=2)
    publisher = ros.client.create_publisher(PointCloud2, f"{ns}/points", POINTS_QOS)
    wait_for(lambda: publisher.get_subscription_count() > 0, "discovery of the recorder")
    xyz_only = tiny_cloud(0, fields=("x", "y", "z"))
    send_until_received(ros, publisher, recorder, cloud_msg(xyz_only, sec=1), 1)
    assert wait_for(recorder.finished.done, "the recorder stopping") and recorder.finished.result() == 1
    assert recorder.close() == 0
    assert list(iter_bag_frames(tmp_path / "calib")) == [] and bag_metadata(tmp_path / "calib")["message_count"] == 0


def test_recorder_refuses_an_existing_output(ros, tmp_path):
    (tmp_path / "calib").mkdir()
    with pytest.raises(calibration_recorder.StartupError, match="exists already.*never overwritten"):
        start_recorder(ros, namespace(), output=str(tmp_path / "calib"))
    assert list((tmp_path / "calib").iterdir()) == []


def test_recorder_parameters_have_descriptions(ros, tmp_path):
    recorder = start_recorder(ros, namespace(), output=str(tmp_path / "calib"))
    for name in calibration_recorder.PARAMETER_NAMES:
        assert recorder.describe_parameter(name).description
    assert recorder.get_parameter("storage").value == "mcap" and recorder.get_parameter("frames").value == 256


# -- the player through rclpy in this process -----------------------------------------------------------------------
def start_player(ros: Ros, ns: str, **parameters) -> tuple[CloudPlayer, list]:
    received = []
    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
    ros.client.create_subscription(PointCloud2, f"{ns}/points", received.append, reliable)
    player = ros.add(CloudPlayer(context=ros.context, cli_args=["--ros-args", "-r", f"points:={ns}/points"],
                                 parameter_overrides=[Parameter(k, value=v) for k, v in parameters.items()]))
    return player, received


def test_player_once_publishes_every_frame_in_order_then_finishes(ros, tmp_path):
    clouds = kitti_folder(tmp_path / "frames", 3)
    ns = namespace()
    before = ros.client.get_clock().now().nanoseconds
    player, received = start_player(ros, ns, source=str(tmp_path / "frames"), rate=50.0, frame_id="velo",
                                    wait_for_subscribers=1)
    assert wait_for(player.finished.done, "the player finishing") and player.finished.result() == 0
    wait_for(lambda: len(received) >= 3, "three clouds")
    after = ros.client.get_clock().now().nanoseconds
    assert len(received) == 3 and player.published == 3 and player.passes == 1
    stamps = [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in received]
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= after, "stamped with the time of publishing"
    for msg, cloud in zip(received, clouds):
        assert msg.header.frame_id == "velo" and msg.height == 1 and not msg.is_bigendian
        back = msg_to_pointcloud(msg)
        assert back.fields == FIELDS and same_cloud(back.points, cloud.points)


@pytest.mark.parametrize("serialized_at_start", [True, False], ids=["serialized-at-start", "built-as-played"])
def test_player_serializes_a_small_source_once_and_builds_a_large_one_as_played(ros, tmp_path, monkeypatch,
                                                                               serialized_at_start):
    if not serialized_at_start:  # a source larger than the budget: each cloud is built when its turn comes
        monkeypatch.setattr(cloud_player, "PRESERIALIZE_MAX_BYTES", 1000)
    clouds = kitti_folder(tmp_path / "frames", 3)
    player, received = start_player(ros, namespace(), source=str(tmp_path / "frames"), rate=50.0, loop=True,
                                    wait_for_subscribers=1)
    assert (player._serialized is not None) == serialized_at_start
    if serialized_at_start:
        assert len(player._serialized) == 3
    wait_for(lambda: len(received) >= 5, "five clouds")
    order = [next(k for k, c in enumerate(clouds) if same_cloud(msg_to_pointcloud(m).points, c.points))
             for m in received[:5]]
    assert order == [0, 1, 2, 0, 1] and player.passes >= 1
    stamps = [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in received[:5]]
    assert all(a < b for a, b in zip(stamps, stamps[1:])), "each publish stamped anew, also the stored clouds"


def test_player_loop_starts_over(ros, tmp_path):
    clouds = kitti_folder(tmp_path / "frames", 2)
    ns = namespace()
    player, received = start_player(ros, ns, source=str(tmp_path / "frames"), rate=50.0, loop=True,
                                    wait_for_subscribers=1)
    wait_for(lambda: len(received) >= 5, "five clouds")
    assert not player.finished.done() and player.passes >= 2
    order = [next(k for k, c in enumerate(clouds) if same_cloud(msg_to_pointcloud(m).points, c.points))
             for m in received[:5]]
    assert order == [0, 1, 0, 1, 0]
    assert all(m.header.frame_id == "lidar" for m in received), "the default frame_id"


def test_player_plays_a_bag_with_all_its_fields(ros, tmp_path):
    clouds = [tiny_cloud(i, fields=("x", "y", "z", "intensity", "ring")) for i in range(2)]
    write_bag_frames(tmp_path / "bag", [(i, "orig", c) for i, c in enumerate(clouds)], topic="/velodyne_points")
    player, received = start_player(ros, namespace(), source=str(tmp_path / "bag"), rate=50.0,
                                    wait_for_subscribers=1)
    assert wait_for(player.finished.done, "the player finishing") and player.finished.result() == 0
    wait_for(lambda: len(received) >= 2, "two clouds")
    for msg, cloud in zip(received, clouds):
        back = msg_to_pointcloud(msg)
        assert msg.header.frame_id == "lidar" and back.fields == cloud.fields
        assert same_cloud(back.points, cloud.points)


def test_player_refuses_a_missing_source(ros, tmp_path):
    with pytest.raises(cloud_player.StartupError, match="parameter 'source'.*neither 'sim'"):
        start_player(ros, namespace(), source=str(tmp_path / "nothing"))


# -- across processes: console scripts, signals, the whole chain ------------------------------------------------------
def node_process(module: str, log: Path, *ros_args: str) -> subprocess.Popen:
    # conftest's loopback settings are inherited. faulthandler: a rare segfault of the recorder on SIGINT was seen
    # once in CI and never reproduced; if it comes back, every thread's Python stack lands in the log the test shows.
    env = {**os.environ, "RCUTILS_LOGGING_BUFFERED_STREAM": "1", "PYTHONFAULTHANDLER": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", f"lidar_ptq_ros.{module}", "--ros-args", *ros_args],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_exit(process: subprocess.Popen, log: Path, timeout: float = 120) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail(f"{process.args[2]} did not exit within {timeout} s: {log.read_text()}")


def test_player_process_to_recorder_process_to_quantize_input(tmp_path):
    """cloud_player (sim, looping) -> calibration_recorder -> bag -> what `lidar-ptq quantize --calib` reads."""
    from lidar_ptq_core.sim import SimDataset, load_sim_config

    ns = namespace()
    player = node_process("cloud_player", tmp_path / "player.log", "-p", "source:=sim", "-p", "sim_frames:=2",
                          "-p", "rate:=5.0", "-p", "loop:=true", "-r", f"points:={ns}/points")
    try:
        recorder = node_process("calibration_recorder", tmp_path / "recorder.log", "-p",
                                f"output:={tmp_path / 'calib'}", "-p", "frames:=3", "-r", f"points:={ns}/points")
        status = wait_exit(recorder, tmp_path / "recorder.log")
    finally:
        stop(player)
    log = (tmp_path / "recorder.log").read_text()
    assert status == 0, log
    assert "3/3 frames recorded" in log and f"wrote 3 frame(s) of {ns}/points" in log
    assert player.returncode == 0, (tmp_path / "player.log").read_text()
    clouds, description = calibration_clouds(str(tmp_path / "calib"), 3)
    assert len(clouds) == 3 and "3 of 3 messages" in description
    sim = [f.points for f in SimDataset("val", 2, load_sim_config("default"))]
    assert all(any(same_cloud(c, s) for s in sim) for c in clouds), "every recorded cloud is a played sim frame"
    assert {f.frame_id for f in iter_bag_frames(tmp_path / "calib")} == {"lidar"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_leaves_a_readable_bag(tmp_path, sig):
    clouds = kitti_folder(tmp_path / "frames", 3)
    ns = namespace()
    player = node_process("cloud_player", tmp_path / "player.log", "-p", f"source:={tmp_path / 'frames'}",
                          "-p", "rate:=20.0", "-p", "loop:=true", "-r", f"points:={ns}/points")
    recorder_log = tmp_path / "recorder.log"
    try:
        recorder = node_process("calibration_recorder", recorder_log, "-p", f"output:={tmp_path / 'calib'}",
                                "-p", "frames:=100", "-r", f"points:={ns}/points")
        try:
            def some_frames():
                if recorder.poll() is not None:
                    pytest.fail(f"recorder exited with {recorder.returncode}: {recorder_log.read_text()}")
                return "10/100 frames recorded" in recorder_log.read_text()

            wait_for(some_frames, "ten recorded frames")
            recorder.send_signal(sig)
            status = wait_exit(recorder, recorder_log, timeout=30)
        finally:
            stop(recorder)
    finally:
        stop(player)
    log = recorder_log.read_text()
    assert status == 0, log
    frames = list(iter_bag_frames(tmp_path / "calib"))
    assert 10 <= len(frames) < 100, log
    assert bag_metadata(tmp_path / "calib")["message_count"] == len(frames)
    assert f"wrote {len(frames)} frame(s)" in log
    assert all(any(same_cloud(f.cloud.points, c.points) for c in clouds) for f in frames)
    assert len(calibration_clouds(str(tmp_path / "calib"), 4)[0]) == 4


@pytest.mark.parametrize("module, args, message", [
    ("calibration_recorder", ["-p", "frames:=0"], "parameter 'frames'"),
    ("calibration_recorder", ["-p", "storage:=bag"], "parameter 'storage'"),
    ("calibration_recorder", [], "parameter 'output' is ''"),
    ("calibration_recorder", ["-p", "output:=EXISTING"], "exists already"),
    ("cloud_player", ["-p", "rate:=-1.0"], "parameter 'rate'"),
    ("cloud_player", ["-p", "source:=/no/such/bag"], "parameter 'source'"),
    ("cloud_player", ["-p", "loop:=maybe"], "parameter 'loop'"),
])
def test_console_script_exits_1_with_one_line_on_invalid_parameters(tmp_path, module, args, message):
    (tmp_path / "existing").mkdir()
    args = [a.replace("EXISTING", str(tmp_path / "existing")) for a in args]
    if module == "calibration_recorder" and not any(a.startswith("output:=") for a in args) and message != \
            "parameter 'output' is ''":
        args += ["-p", f"output:={tmp_path / 'new_bag'}"]
    result = subprocess.run([sys.executable, "-m", f"lidar_ptq_ros.{module}", "--ros-args", *args],
                            capture_output=True, text=True, timeout=120, env=os.environ.copy(), cwd=tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1, output
    lines = output.splitlines()
    assert len(lines) == 1 and "cannot start" in lines[0] and message in lines[0], output
    assert "Traceback" not in output
    assert not (tmp_path / "new_bag").exists() and list((tmp_path / "existing").iterdir()) == []


def test_player_stopped_by_sigterm_while_publishing_exits_cleanly(tmp_path):
    """SIGTERM shuts rclpy's context down; a timer callback already running then publishes on the dead context.
    That is the stop, not a failure: the process exits 0 (it once exited 1 under load, seen in the test above)."""
    import time

    for attempt in range(3):
        log = tmp_path / f"player{attempt}.log"
        player = node_process("cloud_player", log, "-p", "source:=sim", "-p", "sim_frames:=2", "-p", "rate:=200.0",
                              "-p", "loop:=true", "-r", f"points:={namespace()}/points")
        try:
            deadline = time.monotonic() + 60
            while "publishing" not in log.read_text() and time.monotonic() < deadline and player.poll() is None:
                time.sleep(0.1)
            time.sleep(0.3 + 0.2 * attempt)  # well inside the 200 Hz publishing
        finally:
            stop(player)
        assert "publishing" in log.read_text(), log.read_text()
        assert player.returncode == 0, log.read_text()
