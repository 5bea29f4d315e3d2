"""PCD (Point Cloud Data, PCL file format v0.7) reader and writer: DATA ascii, binary and binary_compressed.

Header: text lines `KEYWORD values...` (VERSION, FIELDS, SIZE, TYPE, COUNT, WIDTH, HEIGHT, VIEWPOINT, POINTS)
ending with `DATA <kind>`; `#` lines are comments. TYPE is I (signed int), U (unsigned int) or F (float) with
SIZE bytes; COUNT values per field. Binary data is packed little-endian records; binary_compressed is
<u4 compressed size><u4 raw size><LZF block> whose raw bytes hold each field for all points in turn.
Fields named "_" are padding and are dropped.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io_utils import write_bytes_atomic
from .cloud import PointCloud, canonical_field_names
from .lzf import lzf_compress, lzf_decompress

DATA_KINDS = ("ascii", "binary", "binary_compressed")
_VALID_SIZES = {"I": (1, 2, 4, 8), "U": (1, 2, 4, 8), "F": (4, 8)}
_KEYWORDS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")
_MAX_HEADER_BYTES = 1 << 16  # a header is a dozen short lines; stop early on files that are not PCD
PADDING_FIELD = "_"


@dataclass
class PcdHeader:
    fields: tuple[str, ...]
    sizes: tuple[int, ...]
    types: tuple[str, ...]
    counts: tuple[int, ...]
    width: int
    height: int
    points: int
    data: str
    data_offset: int  # byte offset of the data section in the file

    @property
    def point_size(self) -> int:
        return sum(s * c for s, c in zip(self.sizes, self.counts))

    def numpy_dtypes(self) -> list[np.dtype]:
        return [np.dtype(f"<{'i' if t == 'I' else 'u' if t == 'U' else 'f'}{s}")
                for t, s in zip(self.types, self.sizes)]

    def output_names(self) -> list[tuple[int, list[str]]]:
        """(field index, column names) for every non-padding field; COUNT > 1 gives name_0, name_1, ..."""
        result = []
        for k, (name, count) in enumerate(zip(self.fields, self.counts)):
            if name == PADDING_FIELD:
                continue
            result.append((k, [name] if count == 1 else [f"{name}_{j}" for j in range(count)]))
        return result


def parse_pcd_header(raw: bytes, path: str | os.PathLike = "<bytes>") -> PcdHeader:
    """Parse and validate the header at the start of `raw`; ValueError naming `path` on anything malformed."""
    values: dict[str, list[str]] = {}
    pos = 0
    data_offset = None
    while data_offset is None:
        if pos >= len(raw) or pos > _MAX_HEADER_BYTES:
            raise ValueError(f"{path}: not a PCD file: no 'DATA' header line found")
        newline = raw.find(b"\n", pos, pos + _MAX_HEADER_BYTES)
        if newline < 0:
            newline = len(raw)  # a last line without newline (only valid if it is DATA with no body)
        if newline - pos > 4096:
            raise ValueError(f"{path}: not a PCD file: header line at byte {pos} is too long")
        try:
            line = raw[pos:newline].decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a PCD file: header line at byte {pos} is not ASCII text") from None
        pos = newline + 1
        if not line or line.startswith("#"):
            continue
        keyword, *rest = line.split()
        keyword = keyword.upper()
        if keyword not in _KEYWORDS:
            raise ValueError(f"{path}: malformed PCD header: unknown keyword {keyword[:40]!r}")
        if keyword in values:
            raise ValueError(f"{path}: malformed PCD header: {keyword} appears twice")
        values[keyword] = rest
        if keyword == "DATA":
            data_offset = min(pos, len(raw))

    def need(key: str) -> list[str]:
        if key not in values:
            raise ValueError(f"{path}: malformed PCD header: missing {key} line")
        return values[key]

    def integers(key: str, items: list[str], minimum: int) -> tuple[int, ...]:
        try:
            numbers = tuple(int(v) for v in items)
        except ValueError:
            raise ValueError(f"{path}: malformed PCD header: {key} must be integers, "
                             f"got {' '.join(items)[:80]!r}") from None
        if any(v < minimum for v in numbers):
            raise ValueError(f"{path}: malformed PCD header: {key} values must be >= {minimum}, got {numbers}")
        return numbers

    def single_int(key: str, minimum: int) -> int:
        items = need(key)
        if len(items) != 1:
            raise ValueError(f"{path}: malformed PCD header: {key} takes one value, got {items}")
        return integers(key, items, minimum)[0]

    fields = tuple(need("FIELDS"))
    if not fields:
        raise ValueError(f"{path}: malformed PCD header: FIELDS is empty")
    sizes = integers("SIZE", need("SIZE"), 1)
    types = tuple(t.upper() for t in need("TYPE"))
    counts = integers("COUNT", values["COUNT"], 1) if "COUNT" in values else (1,) * len(fields)
    for key, items in (("SIZE", sizes), ("TYPE", types), ("COUNT", counts)):
        if len(items) != len(fields):
            raise ValueError(f"{path}: malformed PCD header: {len(fields)} FIELDS but {len(items)} {key} values")
    for name, type_, size in zip(fields, types, sizes):
        if type_ not in _VALID_SIZES:
            raise ValueError(f"{path}: PCD field {name!r} has unknown TYPE {type_!r} (expected I, U or F)")
        if size not in _VALID_SIZES[type_]:
            raise ValueError(f"{path}: PCD field {name!r} has unsupported SIZE {size} for TYPE {type_}")
    real_fields = [f for f in fields if f != PADDING_FIELD]
    if len(set(real_fields)) != len(real_fields):
        raise ValueError(f"{path}: malformed PCD header: repeated field names in FIELDS {fields}")
    width = single_int("WIDTH", 0)
    height = single_int("HEIGHT", 0) if "HEIGHT" in values else 1
    points = single_int("POINTS", 0) if "POINTS" in values else width * height
    if points != width * height:
        raise ValueError(f"{path}: malformed PCD header: POINTS {points} != WIDTH {width} x HEIGHT {height}")
    data = need("DATA")
    if len(data) != 1 or data[0].lower() not in DATA_KINDS:
        raise ValueError(f"{path}: PCD DATA must be one of {', '.join(DATA_KINDS)}, got {' '.join(data)[:40]!r}")
    return PcdHeader(fields, sizes, types, counts, width, height, points, data[0].lower(), data_offset)


def read_pcd(path: str | os.PathLike) -> PointCloud:
    """Read a PCD file into a float32 PointCloud (padding fields dropped, intensity aliases named "intensity")."""
    path = Path(path)
    raw = path.read_bytes()
    header = parse_pcd_header(raw, path)
    body = memoryview(raw)[header.data_offset :]
    if header.data == "ascii":
        columns = _ascii_columns(bytes(body), header, path)
    elif header.data == "binary":
        columns = _binary_columns(body, header, path)
    else:
        columns = _compressed_columns(body, header, path)
    names: list[str] = []
    for _, column_names in header.output_names():
        names.extend(column_names)
    points = np.column_stack(columns) if columns else np.zeros((header.points, 0), np.float32)
    return PointCloud(points.reshape(header.points, len(names)), canonical_field_names(names))


def _ascii_columns(body: bytes, header: PcdHeader, path: Path) -> list[np.ndarray]:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: PCD ascii data contains non-ASCII bytes") from None
    rows = [line.split() for line in text.splitlines() if line.strip()]
    values_per_point = sum(header.counts)
    if len(rows) != header.points:
        raise ValueError(f"{path}: PCD header declares {header.points} points but the ascii data has {len(rows)} lines")
    bad = next((k for k, row in enumerate(rows) if len(row) != values_per_point), None)
    if bad is not None:
        raise ValueError(
            f"{path}: PCD ascii point {bad} has {len(rows[bad])} values, expected {values_per_point}"
        )
    try:
        table = np.array(rows, dtype=np.float64).reshape(header.points, values_per_point)
    except ValueError as exc:
        raise ValueError(f"{path}: PCD ascii data is not numeric: {exc}") from None
    columns, start = [], 0
    for k, count in enumerate(header.counts):
        if header.fields[k] != PADDING_FIELD:
            columns.append(table[:, start : start + count].astype(np.float32))
        start += count
    return columns


def _binary_columns(body: memoryview, header: PcdHeader, path: Path) -> list[np.ndarray]:
    expected = header.points * header.point_size
    if len(body) != expected:
        raise ValueError(
            f"{path}: PCD binary data is {len(body)} bytes, expected {expected} "
            f"({header.points} points x {header.point_size} bytes)"
        )
    # Placeholder names keep padding fields ("_", possibly repeated) unique in the record dtype.
    record = np.dtype(
        [(f"f{k}", dt, (c,)) for k, (dt, c) in enumerate(zip(header.numpy_dtypes(), header.counts))]
    )
    assert record.itemsize == header.point_size
    table = np.frombuffer(body, dtype=record, count=header.points)
    return [
        table[f"f{k}"].reshape(header.points, header.counts[k]).astype(np.float32)
        for k, _ in header.output_names()
    ]


def _compressed_columns(body: memoryview, header: PcdHeader, path: Path) -> list[np.ndarray]:
    if len(body) < 8:
        raise ValueError(f"{path}: PCD binary_compressed data is missing its 8-byte size header")
    compressed_size, raw_size = struct.unpack_from("<II", body, 0)
    expected = header.points * header.point_size
    if raw_size != expected:
        raise ValueError(
            f"{path}: PCD binary_compressed declares {raw_size} uncompressed bytes, expected {expected} "
            f"({header.points} points x {header.point_size} bytes)"
        )
    if 8 + compressed_size > len(body):
        raise ValueError(
            f"{path}: PCD binary_compressed declares {compressed_size} compressed bytes but only "
            f"{len(body) - 8} follow the header (truncated file)"
        )
    try:
        raw = lzf_decompress(body[8 : 8 + compressed_size], raw_size) if raw_size else b""
    except ValueError as exc:
        raise ValueError(f"{path}: PCD binary_compressed data is corrupt: {exc}") from None
    # Field-major layout: all points' values of field 0, then field 1, ...
    columns, offset = [], 0
    for k, (dtype, count) in enumerate(zip(header.numpy_dtypes(), header.counts)):
        nbytes = header.points * count * dtype.itemsize
        if header.fields[k] != PADDING_FIELD:
            block = np.frombuffer(raw, dtype=dtype, count=header.points * count, offset=offset)
            columns.append(block.reshape(header.points, count).astype(np.float32))
        offset += nbytes
    return columns


def encode_pcd(cloud: PointCloud, data: str = "binary") -> bytes:
    """The bytes of a PCD v0.7 file holding `cloud` as float32 fields (unorganised: HEIGHT 1)."""
    if data not in DATA_KINDS:
        raise ValueError(f"PCD data kind must be one of {', '.join(DATA_KINDS)}, got {data!r}")
    for name in cloud.fields:
        if not name or any(ch.isspace() for ch in name) or not name.isascii():
            raise ValueError(f"cannot write field name {name!r} to PCD: names must be ASCII without spaces")
    n, c = cloud.points.shape
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\n"
        "VERSION 0.7\n"
        f"FIELDS {' '.join(cloud.fields)}\n"
        f"SIZE {' '.join(['4'] * c)}\n"
        f"TYPE {' '.join(['F'] * c)}\n"
        f"COUNT {' '.join(['1'] * c)}\n"
        f"WIDTH {n}\n"
        "HEIGHT 1\n"
        "VIEWPOINT 0 0 0 1 0 0 0\n"
        f"POINTS {n}\n"
        f"DATA {data}\n"
    ).encode("ascii")
    points = cloud.points.astype("<f4", copy=False)
    if data == "ascii":
        text = io.StringIO()
        # %.9g round-trips every float32 exactly; nan/inf print as nan/inf and parse back.
        np.savetxt(text, points, fmt="%.9g", delimiter=" ")
        return header + text.getvalue().encode("ascii")
    if data == "binary":
        return header + points.tobytes()
    raw = np.ascontiguousarray(points.T).tobytes()  # field-major, as binary_compressed requires
    compressed = lzf_compress(raw)
    return header + struct.pack("<II", len(compressed), len(raw)) + compressed


def write_pcd(path: str | os.PathLike, cloud: PointCloud, data: str = "binary") -> None:
    """Write `cloud` as a PCD file (atomically); data is "ascii", "binary" or "binary_compressed"."""
    write_bytes_atomic(path, encode_pcd(cloud, data))
