"""Point cloud I/O: real KITTI frames through every reader and writer, hand-made PointCloud2 layouts, bad inputs."""

from __future__ import annotations

import array
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lidar_ptq_core.pointcloud import (
    MissingFieldError,
    PointCloud,
    PointFieldSpec,
    array_to_pointcloud2_fields,
    detect_format,
    encode_pcd,
    iter_bag_frames,
    pointcloud2_to_array,
    pointcloud2_topics,
    read_kitti_bin,
    read_nuscenes_bin,
    read_pcd,
    read_points,
    write_bag_frames,
    write_kitti_bin,
    write_nuscenes_bin,
    write_pcd,
    write_points,
)
from lidar_ptq_core.pointcloud.lzf import lzf_compress, lzf_decompress
from lidar_ptq_core.pointcloud.pointcloud2 import FLOAT32, FLOAT64, INT8, INT16, UINT8, UINT16

from conftest import SHARED_KITTI as KITTI_DIR


@pytest.fixture(scope="module")
def kitti_clouds(kitti_frames) -> list[tuple[str, PointCloud]]:
    """The real frames (conftest's kitti_clouds skips with the reason when they are absent), read once."""
    return [(p.stem, read_kitti_bin(p)) for p in kitti_frames]


def assert_same_cloud(actual: PointCloud, expected: PointCloud) -> None:
    assert actual.fields == expected.fields
    assert actual.points.dtype == np.float32
    # Bitwise (NaN-aware) equality: every path must be lossless for float32 data.
    np.testing.assert_array_equal(actual.points, expected.points)


def small_cloud_with_nonfinite() -> PointCloud:
    points = np.array(
        [[1.5, -2.25, 0.125, 0.5], [np.nan, 0.0, 1.0, 0.25], [np.inf, -np.inf, 3.0, np.nan], [1e-30, 3e38, -0.0, 1.0]],
        dtype=np.float32,
    )
    return PointCloud(points, ("x", "y", "z", "intensity"))


def ring_from_elevation(cloud: PointCloud) -> np.ndarray:
    """A stand-in for the HDL-64E laser index: 64 bins of elevation angle."""
    x, y, z = cloud.xyz.T
    elevation = np.arctan2(z, np.hypot(x, y))
    low, high = np.deg2rad(-24.9), np.deg2rad(2.0)
    return np.clip(np.round((elevation - low) / (high - low) * 63), 0, 63).astype(np.float32)


def stored_point_steps(bag: Path) -> set[int]:
    """point_step of every message as stored, read with rosbags directly (not through the code under test)."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.LATEST)
    with Reader(bag) as reader:
        return {store.deserialize_cdr(raw, c.msgtype).point_step for c, _, raw in reader.messages()}


# ---------------------------------------------------------------- real KITTI frames through every format


def test_kitti_frames_read(kitti_clouds):
    assert len(kitti_clouds) == 9
    for name, cloud in kitti_clouds:
        assert cloud.fields == ("x", "y", "z", "intensity"), name
        assert 17_000 <= len(cloud) <= 21_000, name
        assert np.isfinite(cloud.points).all(), name
        intensity = cloud.field("reflectance")  # alias finds the intensity channel
        assert 0.0 <= intensity.min() and intensity.max() <= 1.0, name
        assert np.shares_memory(cloud.xyz, cloud.points)
        assert read_points(KITTI_DIR / f"{name}.bin").points.tobytes() == cloud.points.tobytes()


def test_kitti_bin_write_is_byte_identical(kitti_clouds, tmp_path):
    for name, cloud in kitti_clouds[:3]:
        out = tmp_path / f"{name}.bin"
        write_points(out, cloud)
        assert out.read_bytes() == (KITTI_DIR / f"{name}.bin").read_bytes()
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary behind


@pytest.mark.parametrize("data", ["ascii", "binary"])
def test_pcd_round_trip_real_frames(kitti_clouds, tmp_path, data):
    for name, cloud in kitti_clouds:
        out = tmp_path / f"{name}.pcd"
        write_points(out, cloud, pcd_data=data)
        assert f"DATA {data}\n".encode() in out.read_bytes()[:400]
        assert_same_cloud(read_points(out), cloud)


def test_pcd_binary_compressed_round_trip_real_frames(kitti_clouds, tmp_path):
    for name, cloud in kitti_clouds[:2]:
        out = tmp_path / f"{name}.pcd"
        write_pcd(out, cloud, data="binary_compressed")
        assert out.stat().st_size < 0.9 * len(cloud) * 16  # really compressed
        assert_same_cloud(read_pcd(out), cloud)


def test_nuscenes_round_trip_real_frames(kitti_clouds, tmp_path):
    for name, cloud in kitti_clouds:
        with_ring = cloud.with_field("ring", ring_from_elevation(cloud))
        out = tmp_path / f"{name}.pcd.bin"
        write_points(out, with_ring)
        assert out.stat().st_size == len(cloud) * 20
        back = read_points(out)
        assert back.fields == ("x", "y", "z", "intensity", "ring")
        assert_same_cloud(back, with_ring)
        assert set(np.unique(back.field("ring"))) <= set(range(64))
    # An explicit format overrides the plain .bin suffix.
    plain = tmp_path / "nuscenes_named_plain.bin"
    write_nuscenes_bin(plain, with_ring)
    assert_same_cloud(read_points(plain, fmt="nuscenes"), with_ring)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_round_trip_real_frames(kitti_clouds, tmp_path, storage):
    bag = tmp_path / f"bag_{storage}"
    frames = [(1_700_000_000_000_000_000 + k * 100_000_000 + 7, "velodyne", c) for k, (_, c) in enumerate(kitti_clouds)]
    # point_step 20 = x, y, z, intensity + 4 padding bytes, as many drivers publish.
    assert write_bag_frames(bag, frames, "/kitti/points", storage=storage, point_step=20) == len(frames)
    assert pointcloud2_topics(bag) == ["/kitti/points"]
    assert stored_point_steps(bag) == {20}
    got = list(iter_bag_frames(bag))
    assert [(t, f) for t, f, _ in got] == [(t, f) for t, f, _ in frames]
    for (_, _, actual), (_, _, expected) in zip(got, frames):
        assert_same_cloud(actual, expected)
    # The single storage file reads on its own too, and read_points gives one frame.
    storage_file = next(bag.glob("*.db3" if storage == "sqlite3" else "*.mcap"))
    assert detect_format(storage_file) == "bag"
    assert_same_cloud(read_points(storage_file, frame_index=2), frames[2][2])
    assert_same_cloud(read_points(bag), frames[0][2])
    xyz_only = read_points(bag, topic="/kitti/points", field_names=["x", "y", "z"])
    np.testing.assert_array_equal(xyz_only.points, frames[0][2].xyz)
    with pytest.raises(ValueError, match="no frame 9"):
        read_points(bag, frame_index=9)
    bag_times = [t for t, _, _ in iter_bag_frames(bag, use_bag_time=True)]
    assert bag_times == [t for t, _, _ in frames]


# ---------------------------------------------------------------- NaN / inf pass through every path


def test_nonfinite_values_pass_through_every_format(tmp_path):
    cloud = small_cloud_with_nonfinite()
    write_kitti_bin(tmp_path / "a.bin", cloud)
    assert_same_cloud(read_points(tmp_path / "a.bin"), cloud)
    for data in ("ascii", "binary", "binary_compressed"):
        write_pcd(tmp_path / f"{data}.pcd", cloud, data)
        assert_same_cloud(read_pcd(tmp_path / f"{data}.pcd"), cloud)
    fields, data, step = array_to_pointcloud2_fields(cloud)
    msg = SimpleNamespace(height=1, width=len(cloud), fields=fields, is_bigendian=False, point_step=step,
                          row_step=step * len(cloud), data=data, is_dense=False)
    assert_same_cloud(pointcloud2_to_array(msg), cloud)
    write_bag_frames(tmp_path / "bag", [(5, "f", cloud)])
    assert_same_cloud(next(iter_bag_frames(tmp_path / "bag")).cloud, cloud)


def test_empty_cloud_round_trips(tmp_path):
    empty = PointCloud(np.zeros((0, 4), np.float32), ("x", "y", "z", "intensity"))
    for data in ("ascii", "binary", "binary_compressed"):
        write_pcd(tmp_path / f"{data}.pcd", empty, data)
        assert_same_cloud(read_pcd(tmp_path / f"{data}.pcd"), empty)
    write_kitti_bin(tmp_path / "e.bin", empty)
    assert_same_cloud(read_kitti_bin(tmp_path / "e.bin"), empty)
    fields, data, step = array_to_pointcloud2_fields(empty)
    msg = SimpleNamespace(height=1, width=0, fields=fields, is_bigendian=False, point_step=step, row_step=0,
                          data=data, is_dense=True)
    assert_same_cloud(pointcloud2_to_array(msg), empty)


# ---------------------------------------------------------------- PointCloud2 layouts on hand-made messages


def mixed_layout_message(big_endian: bool, height: int = 1, row_padding: int = 0, data_kind: str = "bytes"):
    """x,y,z float32 | intensity uint8 | 1 pad | ring uint16 | t float64 | 8 pad bytes: point_step 32."""
    order = ">" if big_endian else "<"
    record = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "t"],
                       "formats": [order + "f4"] * 3 + ["u1", order + "u2", order + "f8"],
                       "offsets": [0, 4, 8, 12, 14, 16], "itemsize": 32})
    width = 3
    rng = np.random.default_rng(3)
    values = np.zeros((height, width), dtype=record)
    for name in ("x", "y", "z"):
        values[name] = rng.normal(0, 20, (height, width)).astype(np.float32)
    values["intensity"] = rng.integers(0, 256, (height, width))
    values["ring"] = rng.integers(0, 128, (height, width))
    values["t"] = rng.uniform(0, 0.1, (height, width))
    point_step = 32
    row_step = width * point_step + row_padding
    rows = np.full((height, row_step), 0xAB, dtype=np.uint8)  # garbage in padding must be ignored
    rows[:, : width * point_step] = values.view(np.uint8).reshape(height, width * point_step)
    raw = rows.tobytes()
    data = {"bytes": raw, "array": array.array("B", raw), "numpy": np.frombuffer(raw, np.uint8),
            "list": list(raw), "memoryview": memoryview(raw)}[data_kind]
    fields = [SimpleNamespace(name="x", offset=0, datatype=FLOAT32, count=1),
              SimpleNamespace(name="y", offset=4, datatype=FLOAT32, count=1),
              SimpleNamespace(name="z", offset=8, datatype=FLOAT32, count=1),
              SimpleNamespace(name="i", offset=12, datatype=UINT8, count=1),
              SimpleNamespace(name="ring", offset=14, datatype=UINT16, count=1),
              SimpleNamespace(name="t", offset=16, datatype=FLOAT64, count=1)]
    msg = SimpleNamespace(height=height, width=width, fields=fields, is_bigendian=big_endian, point_step=point_step,
                          row_step=row_step, data=data, is_dense=True)
    return msg, values.reshape(-1)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("data_kind", ["bytes", "array", "numpy", "list", "memoryview"])
def test_pointcloud2_mixed_types_and_byte_order(big_endian, data_kind):
    msg, values = mixed_layout_message(big_endian, data_kind=data_kind)
    cloud = pointcloud2_to_array(msg)
    assert cloud.fields == ("x", "y", "z", "intensity", "ring", "t")  # "i" is renamed intensity
    for k, name in enumerate(("x", "y", "z", "intensity", "ring", "t")):
        np.testing.assert_array_equal(cloud.points[:, k], values[name].astype(np.float32))
    selected = pointcloud2_to_array(msg, ["x", "y", "z", "reflectance"])
    assert selected.fields == ("x", "y", "z", "reflectance")
    np.testing.assert_array_equal(selected.points[:, 3], values["intensity"].astype(np.float32))


def test_pointcloud2_row_step_padding_and_organised_cloud():
    msg, values = mixed_layout_message(big_endian=True, height=4, row_padding=12)
    cloud = pointcloud2_to_array(msg, ["x", "y", "z", "intensity", "ring"])
    assert len(cloud) == 12
    np.testing.assert_array_equal(cloud.field("ring"), values["ring"].astype(np.float32))
    np.testing.assert_array_equal(cloud.xyz[:, 2], values["z"])
    # The last row may stop right after its last point.
    msg.data = msg.data[:-12]
    assert_same_cloud(pointcloud2_to_array(msg, ["x", "y", "z", "intensity", "ring"]), cloud)


def test_pointcloud2_count_greater_than_one_and_signed_types():
    record = np.dtype([("xyz", "<f4", (3,)), ("label", "i1"), ("pad", "u1"), ("delta", "<i2")])
    values = np.zeros(2, record)
    values["xyz"] = [[1, 2, 3], [4, 5, 6]]
    values["label"] = [-5, 7]
    values["delta"] = [-300, 300]
    fields = [PointFieldSpec("xyz", 0, FLOAT32, 3), PointFieldSpec("label", 12, INT8, 1),
              PointFieldSpec("delta", 14, INT16, 1)]
    msg = SimpleNamespace(height=1, width=2, fields=fields, is_bigendian=False, point_step=16, row_step=32,
                          data=values.tobytes(), is_dense=True)
    cloud = pointcloud2_to_array(msg)
    assert cloud.fields == ("xyz_0", "xyz_1", "xyz_2", "label", "delta")
    np.testing.assert_array_equal(cloud.points, [[1, 2, 3, -5, -300], [4, 5, 6, 7, 300]])


def test_array_to_pointcloud2_fields_padding_layout():
    cloud = small_cloud_with_nonfinite()
    fields, data, step = array_to_pointcloud2_fields(cloud, point_step=20)
    assert step == 20 and len(data) == 20 * len(cloud)
    assert [(f.name, f.offset, f.datatype, f.count) for f in fields] == [
        ("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("intensity", 12, FLOAT32, 1)]
    assert all(data[20 * k + 16 : 20 * k + 20] == b"\0\0\0\0" for k in range(len(cloud)))
    assert struct.unpack_from("<f", data, 20)[0] != struct.unpack_from("<f", data, 20)[0]  # NaN x of point 1
    with pytest.raises(ValueError, match="point_step 12"):
        array_to_pointcloud2_fields(cloud, point_step=12)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: setattr(m, "data", m.data[:-40]), "data is"),
        (lambda m: setattr(m, "data", m.data + b"\0" * 40), "data is"),
        (lambda m: setattr(m, "row_step", 10), "row_step"),
        (lambda m: setattr(m.fields[5], "offset", 28), "does not fit in point_step"),
        (lambda m: setattr(m.fields[3], "datatype", 9), "unknown datatype 9"),
        (lambda m: setattr(m.fields[4], "name", "x"), "two fields named 'x'"),
    ],
)
def test_pointcloud2_malformed(change, message):
    msg, _ = mixed_layout_message(big_endian=False, height=2)
    change(msg)
    with pytest.raises(ValueError, match=message):
        pointcloud2_to_array(msg)


def test_pointcloud2_missing_field_is_named():
    msg, _ = mixed_layout_message(big_endian=False)
    with pytest.raises(MissingFieldError, match="no field 'normal_x'.*'ring'"):
        pointcloud2_to_array(msg, ["x", "normal_x"])


# ---------------------------------------------------------------- PCD headers written by other tools


def test_pcd_ascii_with_padding_counts_and_integer_types(tmp_path):
    path = tmp_path / "pcl_style.pcd"
    path.write_text(
        "# .PCD v0.7 - Point Cloud Data file format\n"
        "VERSION 0.7\n"
        "FIELDS x y z _ reflectance ring normal\n"
        "SIZE 4 4 4 1 1 2 4\n"
        "TYPE F F F U U U F\n"
        "COUNT 1 1 1 3 1 1 2\n"
        "WIDTH 2\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA ascii\n"
        "1.5 2 -3 0 0 0 200 17 0.5 nan\r\n"
        "\n"
        "4 5 6 9 9 9 3 63 inf -1\n"
    )
    cloud = read_pcd(path)
    assert cloud.fields == ("x", "y", "z", "intensity", "ring", "normal_0", "normal_1")
    expected = np.array([[1.5, 2, -3, 200, 17, 0.5, np.nan], [4, 5, 6, 3, 63, np.inf, -1]], np.float32)
    np.testing.assert_array_equal(cloud.points, expected)


def test_pcd_binary_with_padding_and_mixed_types(tmp_path):
    record = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("pad", "V4"), ("intensity", "u1"),
                       ("t", "<f8"), ("label", "<i2")])
    values = np.zeros(3, record)
    values["x"], values["y"], values["z"] = [1, 2, 3], [4, 5, 6], [7, 8, np.nan]
    values["intensity"], values["t"], values["label"] = [0, 128, 255], [0.5, 0.25, 1e-3], [-1, 0, 32000]
    header = (b"VERSION .7\nFIELDS x y z _ intensity t label\nSIZE 4 4 4 4 1 8 2\nTYPE F F F U U F I\n"
              b"COUNT 1 1 1 1 1 1 1\nWIDTH 3\nHEIGHT 1\nPOINTS 3\nDATA binary\n")
    path = tmp_path / "mixed.pcd"
    path.write_bytes(header + values.tobytes())
    cloud = read_points(path)
    assert cloud.fields == ("x", "y", "z", "intensity", "t", "label")
    np.testing.assert_array_equal(cloud.field("z"), [7, 8, np.nan])
    np.testing.assert_array_equal(cloud.field("intensity"), [0, 128, 255])
    np.testing.assert_array_equal(cloud.field("t"), np.float32([0.5, 0.25, 1e-3]))
    np.testing.assert_array_equal(cloud.field("label"), [-1, 0, 32000])


def test_pcd_binary_compressed_field_major_layout(tmp_path):
    # Two fields, x float32 and ring uint16, 3 points: raw data holds all x then all ring.
    raw = np.float32([1, 2, 3]).tobytes() + np.uint16([10, 11, 12]).tobytes()
    compressed = lzf_compress(raw)
    header = b"FIELDS x ring\nSIZE 4 2\nTYPE F U\nWIDTH 3\nHEIGHT 1\nDATA binary_compressed\n"
    path = tmp_path / "c.pcd"
    path.write_bytes(header + struct.pack("<II", len(compressed), len(raw)) + compressed)
    np.testing.assert_array_equal(read_pcd(path).points, [[1, 10], [2, 11], [3, 12]])


def test_lzf_decodes_liblzf_output():
    # Produced by liblzf (python-lzf's lzf.compress): literals, a long overlapping run and short back references.
    assert lzf_decompress(b"\x01aa\xe0\x01\x00\x01bc@\x02\x01bc", 20) == b"aaaaaaaaaaaabcabcabc"
    sample = bytes(range(200)) * 20 + b"\0" * 1000
    assert lzf_decompress(lzf_compress(sample), len(sample)) == sample
    with pytest.raises(ValueError, match="before the start"):
        lzf_decompress(b"\x20\x05", 3)
    with pytest.raises(ValueError, match="declares 99"):
        lzf_decompress(b"\x01ab", 99)


# ---------------------------------------------------------------- untrusted files


def test_truncated_bin_is_rejected(tmp_path):
    path = tmp_path / "truncated.bin"
    path.write_bytes(small_cloud_with_nonfinite().points.tobytes()[:-3])
    with pytest.raises(ValueError, match=r"truncated\.bin.*not a multiple of the 16-byte record"):
        read_points(path)
    nus = tmp_path / "odd.pcd.bin"
    nus.write_bytes(b"\0" * 32)  # 2 KITTI records but 1.6 nuScenes records
    with pytest.raises(ValueError, match="20-byte record"):
        read_nuscenes_bin(nus)


GOOD_HEADER = "VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 1\nHEIGHT 1\nPOINTS 1\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no 'DATA' header line"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe" + b"\0" * 64, "not ASCII"),
        (GOOD_HEADER.encode(), "no 'DATA' header line"),
        (GOOD_HEADER.replace("FIELDS x y z\n", "").encode() + b"DATA ascii\n1 2 3\n", "missing FIELDS"),
        (GOOD_HEADER.replace("TYPE F F F", "TYPE F F Q").encode() + b"DATA ascii\n1 2 3\n", "unknown TYPE 'Q'"),
        (GOOD_HEADER.replace("SIZE 4 4 4", "SIZE 4 4 3").encode() + b"DATA ascii\n1 2 3\n", "unsupported SIZE 3"),
        (GOOD_HEADER.replace("SIZE 4 4 4", "SIZE 4 4").encode() + b"DATA ascii\n1 2 3\n", "3 FIELDS but 2 SIZE"),
        (GOOD_HEADER.replace("WIDTH 1", "WIDTH one").encode() + b"DATA ascii\n1 2 3\n", "WIDTH must be integers"),
        (GOOD_HEADER.replace("WIDTH 1", "WIDTH -4").encode() + b"DATA ascii\n1 2 3\n", "WIDTH values must be >= 0"),
        (GOOD_HEADER.replace("POINTS 1", "POINTS 2").encode() + b"DATA ascii\n1 2 3\n", "POINTS 2 != WIDTH 1"),
        (GOOD_HEADER.encode() + b"COLOR red\nDATA ascii\n1 2 3\n", "unknown keyword 'COLOR'"),
        (GOOD_HEADER.encode() + b"WIDTH 1\nDATA ascii\n1 2 3\n", "WIDTH appears twice"),
        (GOOD_HEADER.encode() + b"DATA zip\n", "DATA must be one of"),
        (GOOD_HEADER.encode() + b"DATA ascii\n1 2\n", "point 0 has 2 values, expected 3"),
        (GOOD_HEADER.encode() + b"DATA ascii\n1 2 3\n4 5 6\n", "declares 1 points but the ascii data has 2"),
        (GOOD_HEADER.encode() + b"DATA ascii\n1 two 3\n", "not numeric"),
        (GOOD_HEADER.encode() + b"DATA binary\n" + b"\0" * 11, "binary data is 11 bytes, expected 12"),
        (GOOD_HEADER.encode() + b"DATA binary_compressed\n\x01", "missing its 8-byte size header"),
        (GOOD_HEADER.encode() + b"DATA binary_compressed\n" + struct.pack("<II", 50, 12) + b"\0" * 10, "truncated"),
        (GOOD_HEADER.encode() + b"DATA binary_compressed\n" + struct.pack("<II", 2, 16) + b"\0\0", "expected 12"),
        (GOOD_HEADER.encode() + b"DATA binary_compressed\n" + struct.pack("<II", 2, 12) + b"\x05a", "corrupt"),
    ],
)
def test_bad_pcd_is_rejected_with_path(tmp_path, content, message):
    path = tmp_path / "bad.pcd"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_points(path)
    assert str(path) in str(info.value)


def write_string_bag(path: Path, topics: dict[str, str]) -> None:
    """A bag whose topics carry the given message types (one empty-ish message each)."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.LATEST)
    with Writer(path, version=9) as writer:
        for topic, msgtype in topics.items():
            connection = writer.add_connection(topic, msgtype, typestore=store)
            if msgtype == "std_msgs/msg/String":
                msg = store.types[msgtype](data="hello")
                writer.write(connection, 1, store.serialize_cdr(msg, msgtype))


def test_bag_without_pointcloud2_topic(tmp_path):
    bag = tmp_path / "no_clouds"
    write_string_bag(bag, {"/chatter": "std_msgs/msg/String"})
    with pytest.raises(ValueError, match=r"no sensor_msgs/msg/PointCloud2 topic.*/chatter \(std_msgs/msg/String\)"):
        read_points(bag)
    with pytest.raises(ValueError, match="not a sensor_msgs/msg/PointCloud2 topic"):
        list(iter_bag_frames(bag, topic="/chatter"))


def test_bag_with_two_pointcloud2_topics_needs_a_topic(tmp_path):
    bag = tmp_path / "two"
    write_string_bag(bag, {"/front/points": "sensor_msgs/msg/PointCloud2",
                           "/rear/points": "sensor_msgs/msg/PointCloud2"})
    with pytest.raises(ValueError, match=r"several PointCloud2 topics \['/front/points', '/rear/points'\]"):
        next(iter_bag_frames(bag))
    assert list(iter_bag_frames(bag, topic="/rear/points")) == []


def test_bag_paths_that_are_not_bags(tmp_path):
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(ValueError, match="not a rosbag2 bag"):
        read_points(tmp_path / "plain_dir")
    with pytest.raises(FileNotFoundError):
        read_points(tmp_path / "missing.mcap")
    broken = tmp_path / "broken.db3"
    broken.write_bytes(b"this is not sqlite" * 10)
    with pytest.raises(ValueError, match="broken.db3"):
        read_points(broken)
    write_bag_frames(tmp_path / "exists", [(1, "f", small_cloud_with_nonfinite())], storage="mcap")
    with pytest.raises(FileExistsError):
        write_bag_frames(tmp_path / "exists", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.db3", "exists", "plain_dir"]


# ---------------------------------------------------------------- the PointCloud type and dispatch


def test_pointcloud_type():
    cloud = small_cloud_with_nonfinite()
    assert len(cloud) == 4 and cloud.xyz.shape == (4, 3)
    reordered = cloud.select_fields(["intensity", "x"])
    assert reordered.fields == ("intensity", "x")
    np.testing.assert_array_equal(reordered.points[:, 1], cloud.points[:, 0])
    with pytest.raises(ValueError, match=r"no field 'ring'; it has \['x', 'y', 'z', 'intensity'\]"):
        cloud.select_fields(["x", "ring"])
    with pytest.raises(KeyError):
        cloud.field("ring")
    with pytest.raises(ValueError, match="3 columns but 4 field names"):
        PointCloud(np.zeros((2, 3)), ("x", "y", "z", "i"))
    with pytest.raises(ValueError, match="unique"):
        PointCloud(np.zeros((2, 2)), ("x", "x"))
    swapped = PointCloud(cloud.points[:, [3, 2, 1, 0]], ("i", "z", "y", "x"))
    np.testing.assert_array_equal(swapped.xyz, cloud.xyz)
    np.testing.assert_array_equal(swapped.field("intensity"), cloud.field("intensity"))


def test_write_failure_leaves_no_file(tmp_path):
    xyz_only = PointCloud(np.ones((3, 3)), ("x", "y", "z"))
    with pytest.raises(ValueError, match="no field 'intensity'"):
        write_points(tmp_path / "out.bin", xyz_only)
    with pytest.raises(ValueError, match="no field 'ring'"):
        write_points(tmp_path / "out.pcd.bin", small_cloud_with_nonfinite())
    assert list(tmp_path.iterdir()) == []
    write_points(tmp_path / "xyz.pcd", xyz_only, pcd_data="ascii")  # PCD keeps whatever fields there are
    assert read_pcd(tmp_path / "xyz.pcd").fields == ("x", "y", "z")


def test_detect_format(tmp_path):
    assert detect_format("a/000001.bin") == "kitti"
    assert detect_format("a/n015-LIDAR_TOP.PCD.BIN") == "nuscenes"
    assert detect_format("a/scan.pcd") == "pcd"
    assert detect_format("a/run.mcap") == "bag"
    assert detect_format("a/run_0.db3") == "bag"
    assert detect_format("a/x.bin", fmt="nuScenes") == "nuscenes"
    with pytest.raises(ValueError, match="cannot tell the point cloud format"):
        detect_format("a/scan.ply")
    with pytest.raises(ValueError, match="unknown point cloud format 'las'"):
        detect_format("a/scan.bin", fmt="las")
    with pytest.raises(ValueError, match="use write_bag_frames"):
        write_points(tmp_path / "x.mcap", small_cloud_with_nonfinite())


def test_encode_pcd_rejects_unwritable_names():
    with pytest.raises(ValueError, match="without spaces"):
        encode_pcd(PointCloud(np.zeros((1, 1)), ("my field",)))
