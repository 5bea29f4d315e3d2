"""PointCloud2 frames from / to rosbag2 bags (sqlite3 .db3 or MCAP) through the pure-Python `rosbags` library."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import closing
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from .cloud import PointCloud
from .pointcloud2 import pointcloud2_message_fields, pointcloud2_to_array

POINTCLOUD2_TYPE = "sensor_msgs/msg/PointCloud2"
BAG_STORAGES = ("mcap", "sqlite3")  # rosbag2 storage plugins written here (MCAP: rosbag2's default since Iron)


class BagFrame(NamedTuple):
    timestamp_ns: int  # header.stamp of the message (the sensor time), or the bag's log time if asked
    frame_id: str
    cloud: PointCloud


@lru_cache(maxsize=1)
def _typestore():
    # PointCloud2, Header and Time are identical in every ROS 2 distribution, so one store reads any bag.
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.LATEST)


def is_bag_path(path: str | os.PathLike) -> bool:
    """A rosbag2 directory (holding metadata.yaml) or a single .db3/.mcap storage file."""
    path = Path(path)
    if path.is_dir():
        return (path / "metadata.yaml").exists()
    return path.suffix.lower() in (".db3", ".mcap")


def _open_reader(path: Path):
    from rosbags.rosbag2 import Reader, ReaderError

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such bag")
    if path.is_dir() and not (path / "metadata.yaml").exists():
        raise ValueError(f"{path}: not a rosbag2 bag (directory without metadata.yaml)")
    try:
        reader = Reader(path)
        reader.open()
    except ReaderError as exc:
        raise ValueError(f"{path}: cannot open rosbag2 bag: {exc}") from None
    return reader


def pointcloud2_topics(path: str | os.PathLike) -> list[str]:
    """The topics of the bag at `path` that carry sensor_msgs/msg/PointCloud2, sorted."""
    path = Path(path)
    reader = _open_reader(path)
    try:
        return sorted({c.topic for c in reader.connections if c.msgtype == POINTCLOUD2_TYPE})
    finally:
        reader.close()


def _choose_topic(path: Path, reader, topic: str | None) -> str:
    all_topics = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
    cloud_topics = sorted({c.topic for c in reader.connections if c.msgtype == POINTCLOUD2_TYPE})
    if topic is not None:
        if topic not in cloud_topics:
            raise ValueError(
                f"{path}: topic {topic!r} is not a {POINTCLOUD2_TYPE} topic of this bag; "
                f"PointCloud2 topics: {cloud_topics or 'none'}"
            )
        return topic
    if not cloud_topics:
        raise ValueError(f"{path}: the bag has no {POINTCLOUD2_TYPE} topic; its topics: {all_topics or 'none'}")
    if len(cloud_topics) > 1:
        raise ValueError(f"{path}: the bag has several PointCloud2 topics {cloud_topics}; choose one with topic=")
    return cloud_topics[0]


def iter_bag_frames(
    path: str | os.PathLike,
    topic: str | None = None,
    *,
    field_names: Iterable[str] | None = None,
    use_bag_time: bool = False,
) -> Iterator[BagFrame]:
    """Yield (timestamp_ns, frame_id, PointCloud) for every message of one PointCloud2 topic, in log order.

    `path` is a bag directory or a single .db3/.mcap file. With topic=None the bag must hold exactly one
    PointCloud2 topic. timestamp_ns is header.stamp unless use_bag_time, then the time the bag logged it.
    """
    path = Path(path)
    if field_names is not None:
        field_names = tuple(field_names)
    reader = _open_reader(path)
    try:
        chosen = _choose_topic(path, reader, topic)
        connections = [c for c in reader.connections if c.topic == chosen and c.msgtype == POINTCLOUD2_TYPE]
        typestore = _typestore()
        for connection, log_time, raw in reader.messages(connections=connections):
            try:
                msg = typestore.deserialize_cdr(raw, connection.msgtype)
            except Exception as exc:  # rosbags raises assorted errors on corrupt CDR
                raise ValueError(f"{path}: cannot decode a {chosen} message at t={log_time}: {exc}") from None
            try:
                cloud = pointcloud2_to_array(msg, field_names)
            except ValueError as exc:
                raise ValueError(f"{path}: {chosen} message at t={log_time}: {exc}") from None
            stamp = msg.header.stamp
            timestamp = int(log_time) if use_bag_time else int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
            yield BagFrame(timestamp, str(msg.header.frame_id), cloud)
    finally:
        reader.close()


def read_bag_frame(path: str | os.PathLike, topic: str | None = None, index: int = 0, **kwargs) -> BagFrame:
    """Frame number `index` (0 = first) of the bag's PointCloud2 topic."""
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    count = 0
    with closing(iter_bag_frames(path, topic, **kwargs)) as frames:  # closes the bag once we have our frame
        for frame in frames:
            if count == index:
                return frame
            count += 1
    raise ValueError(f"{path}: the PointCloud2 topic has {count} frames, no frame {index}")


def make_pointcloud2_message(cloud: PointCloud, timestamp_ns: int, frame_id: str, point_step: int | None = None):
    """A rosbags sensor_msgs/msg/PointCloud2 (unorganised, float32 little-endian fields) holding `cloud`."""
    types = _typestore().types
    message = pointcloud2_message_fields(cloud, point_step)
    point_field = types["sensor_msgs/msg/PointField"]
    sec, nanosec = divmod(int(timestamp_ns), 1_000_000_000)
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=str(frame_id)
    )
    message["fields"] = [point_field(**spec._asdict()) for spec in message["fields"]]
    message["data"] = np.frombuffer(message["data"], dtype=np.uint8)
    return types[POINTCLOUD2_TYPE](header=header, **message)


def pointcloud2_type_hash() -> str:
    """The RIHS01 type hash the bags written here record for sensor_msgs/msg/PointCloud2."""
    return _typestore().hash_rihs01(POINTCLOUD2_TYPE)


class PointCloud2BagWriter:
    """A new rosbag2 bag at `path` with one PointCloud2 topic, written message by message: the one place that writes
    bags (write_bag_frames, the calibration_recorder node).

    close() writes metadata.yaml and so makes the bag readable; what was written before a failure stays readable
    once closed. Use it from one thread: an sqlite3 storage may only be used by the thread that opened it."""

    def __init__(self, path: str | os.PathLike, topic: str = "/points", storage: str = "mcap"):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in BAG_STORAGES:
            raise ValueError(f"bag storage must be one of {BAG_STORAGES}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path}: exists already; rosbag2 bags are never overwritten")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.count = 0
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self._writer.open()
        try:
            self.connection = self._writer.add_connection(topic, POINTCLOUD2_TYPE, typestore=_typestore())
        except BaseException:
            self._writer.close()
            raise

    @property
    def type_hash(self) -> str:
        """The RIHS01 type hash the bag records for its topic."""
        return self.connection.digest

    @property
    def closed(self) -> bool:
        return self._writer is None

    def write_serialized(self, timestamp_ns: int, data: bytes) -> int:
        """Append one CDR-serialized PointCloud2 logged at timestamp_ns; returns the number of messages written."""
        if self._writer is None:
            raise RuntimeError(f"{self.path}: the bag is closed")
        self._writer.write(self.connection, int(timestamp_ns), data)
        self.count += 1
        return self.count

    def write_cloud(self, timestamp_ns: int, frame_id: str, cloud: PointCloud, point_step: int | None = None) -> int:
        """Append `cloud` stamped and logged at timestamp_ns; returns the number of messages written."""
        msg = make_pointcloud2_message(cloud, timestamp_ns, frame_id, point_step)
        return self.write_serialized(timestamp_ns, _typestore().serialize_cdr(msg, POINTCLOUD2_TYPE))

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def __enter__(self) -> "PointCloud2BagWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_bag_frames(
    path: str | os.PathLike,
    frames: Iterable[tuple[int, str, PointCloud]],
    topic: str = "/points",
    *,
    storage: str = "sqlite3",
    point_step: int | None = None,
) -> int:
    """Write (timestamp_ns, frame_id, cloud) frames as PointCloud2 on `topic` into a new rosbag2 directory.

    The bag is written beside `path` and renamed into place at the end, so `path` never holds a half bag.
    Refuses to overwrite an existing path. Returns the number of frames written; the log time is timestamp_ns.
    """
    if storage not in BAG_STORAGES:
        raise ValueError(f"bag storage must be one of {BAG_STORAGES}, got {storage!r}")
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: exists already; rosbag2 bags are never overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        # The staged bag has the final name so that the storage file inside is named after it.
        staged_bag = staging / path.name
        with PointCloud2BagWriter(staged_bag, topic, storage) as writer:
            for timestamp_ns, frame_id, cloud in frames:
                writer.write_cloud(timestamp_ns, frame_id, cloud, point_step)
        os.rename(staged_bag, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return writer.count
