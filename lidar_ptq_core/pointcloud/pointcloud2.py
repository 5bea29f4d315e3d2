"""sensor_msgs/PointCloud2 <-> PointCloud, without importing ROS.

Everything here is duck-typed on the message attributes (height, width, fields[name, offset, datatype, count],
is_bigendian, point_step, row_step, data, is_dense), so the same code serves rosbags messages offline and rclpy
messages in the node. `data` may be bytes, bytearray, memoryview, array.array('B') (rclpy), a numpy uint8 array
(rosbags) or a list of ints.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np

from .cloud import INTENSITY_ALIASES, MissingFieldError, PointCloud, canonical_field_names

# sensor_msgs/PointField datatype codes -> numpy type (without byte order)
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
POINTFIELD_NUMPY_TYPES = {INT8: "i1", UINT8: "u1", INT16: "i2", UINT16: "u2", INT32: "i4", UINT32: "u4",
                          FLOAT32: "f4", FLOAT64: "f8"}


class PointFieldSpec(NamedTuple):
    """One sensor_msgs/PointField; has the same attributes, so it can stand in for one."""

    name: str
    offset: int
    datatype: int
    count: int = 1


def pointcloud2_dtype(fields: Sequence, point_step: int, is_bigendian: bool = False) -> np.dtype:
    """Structured dtype of one point: the message fields at their offsets, itemsize = point_step (keeps padding)."""
    order = ">" if is_bigendian else "<"
    names, formats, offsets = [], [], []
    for field in fields:
        name, offset, datatype = str(field.name), int(field.offset), int(field.datatype)
        count = max(int(field.count), 1)  # some drivers publish count 0 for scalar fields
        if datatype not in POINTFIELD_NUMPY_TYPES:
            raise ValueError(f"PointCloud2 field {name!r} has unknown datatype {datatype} (expected 1..8)")
        if name in names:
            raise ValueError(f"PointCloud2 has two fields named {name!r}")
        base = np.dtype(order + POINTFIELD_NUMPY_TYPES[datatype])
        if offset < 0 or offset + base.itemsize * count > point_step:
            raise ValueError(
                f"PointCloud2 field {name!r} (offset {offset}, {count} x {base.itemsize} bytes) "
                f"does not fit in point_step {point_step}"
            )
        names.append(name)
        formats.append(base if count == 1 else np.dtype((base, (count,))))
        offsets.append(offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def _data_as_uint8(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:  # a plain list of ints
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _resolve_field(name: str, available: Sequence[str]) -> str:
    if name in available:
        return name
    if name in INTENSITY_ALIASES:
        for alias in INTENSITY_ALIASES:
            if alias in available:
                return alias
    raise MissingFieldError(f"PointCloud2 has no field {name!r}; it has {list(available)}")


def pointcloud2_to_array(msg, field_names: Iterable[str] | None = None) -> PointCloud:
    """Decode a PointCloud2 message into a float32 PointCloud (height x width points, row-major).

    field_names=None keeps every field (an intensity alias is renamed "intensity"); otherwise the named fields
    in that order, where "intensity", "reflectance" and "i" all find the intensity field. A field with count > 1
    becomes columns name_0, name_1, ... Byte order, padding inside a point (point_step) and at row ends
    (row_step) are honoured. Malformed layouts raise ValueError.
    """
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if height < 0 or width < 0:
        raise ValueError(f"PointCloud2 has negative size {height} x {width}")
    dtype = pointcloud2_dtype(list(msg.fields), point_step, bool(msg.is_bigendian))
    available = list(dtype.names)
    selected = available if field_names is None else [_resolve_field(n, available) for n in field_names]
    out_names = list(field_names) if field_names is not None else list(canonical_field_names(available))

    n = height * width
    if n and point_step <= 0:
        raise ValueError(f"PointCloud2 point_step must be positive, got {point_step}")
    if n and row_step < width * point_step:
        raise ValueError(f"PointCloud2 row_step {row_step} < width {width} x point_step {point_step}")
    data = _data_as_uint8(msg.data)
    needed = (height - 1) * row_step + width * point_step if n else 0
    if data.size < needed or (n and data.size > height * row_step):
        raise ValueError(
            f"PointCloud2 data is {data.size} bytes, expected {height * row_step} "
            f"(height {height} x row_step {row_step})"
        )

    if n:
        # One strided view covers both per-point padding (itemsize) and per-row padding (row stride).
        records = np.ndarray(shape=(height, width), dtype=dtype, buffer=data, strides=(row_step, point_step))
        records = records.reshape(-1)
    else:
        records = np.zeros(0, dtype=dtype)

    columns, names = [], []
    for name, out_name in zip(selected, out_names):
        values = records[name]
        if values.ndim == 1:
            columns.append(values.astype(np.float32))
            names.append(out_name)
        else:
            columns.append(values.astype(np.float32).reshape(n, -1))
            names.extend(f"{out_name}_{j}" for j in range(values.shape[1]))
    points = np.column_stack(columns) if columns else np.zeros((n, 0), np.float32)
    return PointCloud(points.reshape(n, len(names)), tuple(names))


def array_to_pointcloud2_fields(
    cloud: PointCloud, point_step: int | None = None
) -> tuple[list[PointFieldSpec], bytes, int]:
    """Layout for a PointCloud2 holding `cloud`: FLOAT32 little-endian fields packed from offset 0.

    Returns (fields, data, point_step); the message is height 1, width len(cloud), row_step width * point_step,
    is_bigendian False. point_step larger than 4 * C leaves zero padding at the end of each point.
    """
    n, c = cloud.points.shape
    packed = 4 * c
    point_step = packed if point_step is None else int(point_step)
    if point_step < packed:
        raise ValueError(f"point_step {point_step} is smaller than the {packed} bytes of {c} float32 fields")
    fields = [PointFieldSpec(name, 4 * k, FLOAT32, 1) for k, name in enumerate(cloud.fields)]
    values = cloud.points.astype("<f4", copy=False)
    if point_step == packed:
        return fields, values.tobytes(), point_step
    buffer = np.zeros((n, point_step), dtype=np.uint8)
    buffer[:, :packed] = values.view(np.uint8).reshape(n, packed)
    return fields, buffer.tobytes(), point_step


def pointcloud2_message_fields(cloud: PointCloud, point_step: int | None = None) -> dict:
    """Every sensor_msgs/PointCloud2 field but `header` for an unorganised (height 1), little-endian float32 cloud;
    `fields` holds PointFieldSpec tuples for the caller to turn into its own PointField type (rclpy or rosbags)."""
    fields, data, step = array_to_pointcloud2_fields(cloud, point_step)
    return {
        "height": 1,
        "width": len(cloud),
        "fields": fields,
        "is_bigendian": False,
        "point_step": step,
        "row_step": step * len(cloud),
        "data": data,
        "is_dense": bool(np.isfinite(cloud.points).all()),
    }
