"""The one rule for turning a sensor's point cloud into the model's point features, used by every entry point
(Detector, `lidar-ptq detect` / `check`, calibration from a folder or bag, the detector node).

A model config names its point features in order (x, y, z first) and, per feature, how a sensor that lacks it is
filled: "zero", a constant, or "error". Input settings correct a sensor that differs from the training data:
`intensity_scale` multiplies the intensity, `z_offset` (metres) is added to z.

Clouds come as a `PointCloud` (fields by name; intensity aliases resolve) or as a plain (N, C) array, whose columns
are taken to be the model's features in order: C >= F keeps the first F columns, 3 <= C < F fills the rest.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from .cloud import INTENSITY_ALIASES, MissingFieldError, PointCloud

XYZ = ("x", "y", "z")
FILL_ZERO = "zero"
FILL_ERROR = "error"
# Names a sensor may use for a feature the model calls by its canonical name.
FEATURE_ALIASES = {"intensity": INTENSITY_ALIASES}


@dataclass(frozen=True)
class PointFeature:
    """One per-point input channel of a model and how it is filled when the sensor lacks it."""

    name: str
    fill: str | float | None = None  # "zero", "error", or a constant; None: error for x, y, z, else zero

    def __post_init__(self) -> None:
        name = str(self.name).strip()
        if not name:
            raise ValueError("point_features: a feature needs a non-empty name")
        fill = self.fill
        if fill is None:
            fill = FILL_ERROR if name in XYZ else FILL_ZERO
        if isinstance(fill, str):
            if fill not in (FILL_ZERO, FILL_ERROR):
                try:
                    fill = float(fill)
                except ValueError:
                    raise ValueError(f"point_features: {name}.fill must be 'zero', 'error' or a number, "
                                     f"got {self.fill!r}") from None
        elif isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise ValueError(f"point_features: {name}.fill must be 'zero', 'error' or a number, got {self.fill!r}")
        if not isinstance(fill, str):
            fill = float(fill)
            if not math.isfinite(fill):
                raise ValueError(f"point_features: {name}.fill must be finite, got {self.fill!r}")
        if name in XYZ and fill != FILL_ERROR:
            raise ValueError(f"point_features: {name} cannot be filled (a point needs x, y and z); use fill: error")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fill", fill)

    def fill_text(self) -> str:
        if self.fill == FILL_ZERO:
            return "zeros"
        if self.fill == FILL_ERROR:
            return "an error"
        return f"the constant {self.fill:g}"

    def to_plain(self):
        """A bare name where the fill is the default for that name, else {name, fill}."""
        default = FILL_ERROR if self.name in XYZ else FILL_ZERO
        return self.name if self.fill == default else {"name": self.name, "fill": self.fill}


def default_point_features(count: int) -> tuple[PointFeature, ...]:
    """What a config without a point_features section means (old checkpoints): x, y, z (error when missing), then
    intensity and unnamed extra features, filled with zeros."""
    if count < 3:
        raise ValueError(f"a model needs at least 3 point features (x, y, z), got {count}")
    names = XYZ + ("intensity",) + tuple(f"feature_{i}" for i in range(4, count))
    return tuple(PointFeature(n) for n in names[:count])


def parse_point_features(entries, count: int) -> tuple[PointFeature, ...]:
    """A config's point_features list (names, {name, fill} mappings or PointFeature) -> checked PointFeatures."""
    if entries is None or len(entries) == 0:
        return default_point_features(count)
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f"point_features must be a list, got {entries!r}")
    features = []
    for entry in entries:
        if isinstance(entry, PointFeature):
            features.append(entry)
        elif isinstance(entry, str):
            features.append(PointFeature(entry))
        elif isinstance(entry, Mapping):
            unknown = set(entry) - {"name", "fill"}
            if unknown or "name" not in entry:
                raise ValueError(f"point_features entry {dict(entry)} needs 'name' and optionally 'fill' only")
            features.append(PointFeature(str(entry["name"]), entry.get("fill")))
        else:
            raise ValueError(f"point_features entry {entry!r} must be a name or {{name, fill}}")
    names = tuple(f.name for f in features)
    if names[:3] != XYZ:
        raise ValueError(f"point_features must start with x, y, z; got {list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"point_features names must be unique, got {list(names)}")
    if len(features) != count:
        raise ValueError(f"point_features lists {len(features)} features but num_point_features is {count}")
    return tuple(features)


@dataclass(frozen=True)
class InputSettings:
    """Corrections for a sensor unlike the training data: intensity x intensity_scale, z + z_offset (metres)."""

    intensity_scale: float = 1.0
    z_offset: float = 0.0

    def __post_init__(self) -> None:
        for name in ("intensity_scale", "z_offset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.intensity_scale <= 0:
            raise ValueError(f"intensity_scale must be > 0, got {self.intensity_scale}")

    @property
    def is_identity(self) -> bool:
        return self.intensity_scale == 1.0 and self.z_offset == 0.0

    def then(self, other: "InputSettings") -> "InputSettings":
        """Both corrections, one after the other (they act on separate columns, so the order does not matter)."""
        return InputSettings(self.intensity_scale * other.intensity_scale, self.z_offset + other.z_offset)

    def describe(self) -> str:
        return f"intensity x {self.intensity_scale:.6g}, z {self.z_offset:+.3g} m"

    def to_dict(self) -> dict:
        return {"intensity_scale": self.intensity_scale, "z_offset": self.z_offset}


def _source_column(cloud: PointCloud, name: str) -> int | None:
    for alias in FEATURE_ALIASES.get(name, (name,)):
        if alias in cloud.fields:
            return cloud.fields.index(alias)
    return None


def missing_features(available: Iterable[str], features: Sequence[PointFeature]) -> list[PointFeature]:
    """The model's features a sensor offering the fields `available` lacks (aliases count as present)."""
    available = set(available)
    return [f for f in features if not any(a in available for a in FEATURE_ALIASES.get(f.name, (f.name,)))]


def prepare_points(cloud, features: Sequence[PointFeature], settings: InputSettings | None = None,
                   where: str = "point cloud") -> tuple[np.ndarray, list[PointFeature]]:
    """(points (N, F) float32 in the model's feature order, the features that were filled).

    Raises MissingFieldError naming `where` when a missing feature's fill is "error", ValueError for a malformed
    array. `settings` scale the intensity and shift z (filled columns are never scaled)."""
    settings = settings or InputSettings()
    names = [f.name for f in features]
    if isinstance(cloud, PointCloud):
        columns = [_source_column(cloud, n) for n in names]
        data = cloud.points
    else:
        data = np.asarray(cloud, dtype=np.float32)
        if data.ndim != 2 or data.shape[1] < 3:
            raise ValueError(f"{where}: points must be an (N, >= 3) array with x, y, z first; got {data.shape}")
        columns = [k if k < data.shape[1] else None for k in range(len(names))]
    filled = [f for f, column in zip(features, columns) if column is None]
    refused = [f.name for f in filled if f.fill == FILL_ERROR]
    if refused:
        have = list(cloud.fields) if isinstance(cloud, PointCloud) else f"{data.shape[1]} columns"
        raise MissingFieldError(f"{where} lacks {refused} (it has {have}); the model config fills "
                                f"{'it' if len(refused) == 1 else 'them'} with an error, not a default")
    out = np.empty((len(data), len(names)), np.float32)
    for k, (feature, column) in enumerate(zip(features, columns)):
        if column is None:
            out[:, k] = 0.0 if feature.fill == FILL_ZERO else float(feature.fill)
        else:
            out[:, k] = data[:, column]
    if settings.intensity_scale != 1.0 and "intensity" in names and features[names.index("intensity")] not in filled:
        out[:, names.index("intensity")] *= np.float32(settings.intensity_scale)
    if settings.z_offset != 0.0:
        out[:, 2] += np.float32(settings.z_offset)
    return out, filled


class PointPreparer:
    """prepare_points for one source (a Detector, a command, a node): each filled feature is reported once.

    `notify` receives the one-line note (default: warnings.warn)."""

    def __init__(self, features: Sequence[PointFeature], settings: InputSettings | None = None,
                 notify: Callable[[str], None] | None = None):
        self.features = tuple(features)
        self.settings = settings or InputSettings()
        self.notify = notify or (lambda text: warnings.warn(text, stacklevel=3))
        self.noted: set[str] = set()

    def __call__(self, cloud, where: str = "point cloud") -> np.ndarray:
        points, filled = prepare_points(cloud, self.features, self.settings, where)
        for feature in filled:
            if feature.name not in self.noted:
                self.noted.add(feature.name)
                self.notify(f"{where} has no {feature.name} field: filled with {feature.fill_text()} "
                            f"(the model config says so; reported once)")
        return points
