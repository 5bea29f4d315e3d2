"""`PointCloud`: the one in-memory point cloud type every reader returns and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

# Lidar drivers and datasets disagree on what to call the return strength; all of these mean "intensity".
INTENSITY_ALIASES = ("intensity", "reflectance", "i")
XYZ = ("x", "y", "z")


def canonical_field_names(names: Sequence[str]) -> tuple[str, ...]:
    """Rename the first intensity alias to "intensity" unless the cloud already has a field of that name."""
    names = tuple(names)
    if "intensity" in names:
        return names
    for alias in INTENSITY_ALIASES[1:]:
        if alias in names:
            return tuple("intensity" if n == alias else n for n in names)
    return names


@dataclass(eq=False)
class PointCloud:
    """N points with C named float32 channels: `points[:, k]` is the channel `fields[k]`.

    Every channel is float32 whatever its on-disk type (a detector consumes float32), so an integer field
    beyond 2**24 or a float64 timestamp loses precision here. NaN/inf are kept as they are.
    """

    points: np.ndarray
    fields: tuple[str, ...]

    def __post_init__(self) -> None:
        points = np.ascontiguousarray(self.points, dtype=np.float32)
        fields = tuple(str(f) for f in self.fields)
        if points.ndim == 1 and points.size == 0:
            points = points.reshape(0, len(fields))
        if points.ndim != 2:
            raise ValueError(f"PointCloud.points must be 2-D (N, C), got shape {points.shape}")
        if points.shape[1] != len(fields):
            raise ValueError(f"PointCloud has {points.shape[1]} columns but {len(fields)} field names {fields}")
        if len(set(fields)) != len(fields):
            raise ValueError(f"PointCloud field names must be unique, got {fields}")
        self.points = points
        self.fields = fields

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def num_points(self) -> int:
        return len(self)

    @property
    def xyz(self) -> np.ndarray:
        """(N, 3) float32 x, y, z (a view when the cloud starts with x, y, z)."""
        if self.fields[:3] == XYZ:
            return self.points[:, :3]
        return self.select_fields(XYZ).points

    def has_field(self, name: str) -> bool:
        return self._column_index(name) is not None

    def field(self, name: str) -> np.ndarray:
        """(N,) float32 column `name`; any intensity alias finds the cloud's intensity channel."""
        return self.points[:, self._require_column(name)]

    def select_fields(self, names: Iterable[str]) -> "PointCloud":
        """A new cloud holding only `names`, in that order (aliases resolve; the result uses the names asked for)."""
        names = tuple(names)
        columns = [self._require_column(n) for n in names]
        return PointCloud(self.points[:, columns], names)

    def with_field(self, name: str, values) -> "PointCloud":
        """A new cloud with column `name` appended, or replaced if it exists."""
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        if values.shape[0] != len(self):
            raise ValueError(f"field {name!r} has {values.shape[0]} values for a cloud of {len(self)} points")
        if name in self.fields:
            points = self.points.copy()
            points[:, self.fields.index(name)] = values
            return PointCloud(points, self.fields)
        return PointCloud(np.column_stack([self.points, values]), self.fields + (name,))

    def _column_index(self, name: str) -> int | None:
        if name in self.fields:
            return self.fields.index(name)
        if name in INTENSITY_ALIASES:
            for alias in INTENSITY_ALIASES:
                if alias in self.fields:
                    return self.fields.index(alias)
        return None

    def _require_column(self, name: str) -> int:
        index = self._column_index(name)
        if index is None:
            raise MissingFieldError(f"point cloud has no field {name!r}; it has {list(self.fields)}")
        return index

    def __repr__(self) -> str:
        return f"PointCloud({len(self)} points, fields={self.fields})"


class MissingFieldError(KeyError, ValueError):
    """A missing field: a KeyError for lookups, a ValueError so the CLI reports it as bad input.

    The message is kept readable (KeyError would otherwise quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
