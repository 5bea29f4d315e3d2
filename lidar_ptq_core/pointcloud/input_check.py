"""Input checks: statistics of a sample of frames against what a model was trained on, and the fixes they imply.

`cloud_statistics` summarises a set of clouds (fields, points per frame, intensity distribution, a robust ground
height, z and range distribution, share of points inside the model's range); `reference_statistics` finds the
statistics stored for a model config (config/input_stats/<model config file>.yaml, found by the model's name:
computed from the training data for the sim models by `lidar-ptq check sim --sim-split train --write-reference
...`, documented values for the full-size configs); `compare_statistics` lists the problems, each with its
concrete fix. Used by `lidar-ptq check` and the detector node on its first frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .cloud import PointCloud
from .features import InputSettings, PointFeature, missing_features, prepare_points

GROUND_RADIUS_M = 20.0  # the ground estimate looks at points this close (horizontally): the road around the sensor
GROUND_BIN_M = 0.1
GROUND_DENSE_SHARE = 0.25
GROUND_TOLERANCE_M = 0.4  # terrain and mounting differ by this much between frames of one sensor
POINTS_RATIO_LOW = 0.6  # fewer points than this share of the training data's: another beam count or field of view
INTENSITY_RATIO = 3.0  # a p99 intensity this many times off the training data's is another scale
INSIDE_RANGE_DROP = 0.15  # share of points inside the range this much below the training data's
BYTE_SCALE = 1.0 / 255.0


@dataclass
class CloudStatistics:
    """Summary of a sample of frames (after the model's point-feature rule and input settings)."""

    frames: int = 0  # 0: documented values, not measured
    fields: list[str] = field(default_factory=list)  # fields present in every frame, as the sensor names them
    points_per_frame: float | None = None  # median
    intensity: dict | None = None  # p1, p50, p99, max, distinct (values in the sample), integer_share; None: absent
    ground_z: float | None = None  # median over frames of the densest z level of the low points within 20 m
    z_p50: float | None = None
    range_p50: float | None = None  # horizontal distance from the origin, metres
    range_p90: float | None = None
    inside_range: float | None = None  # median share of points inside the point cloud range
    source: str = ""
    notes: list[str] = field(default_factory=list)  # documented (not measured) facts of a reference

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and v != [] and v != ""}

    @classmethod
    def from_dict(cls, data: dict) -> "CloudStatistics":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known - {"model", "command"}
        if unknown:
            raise ValueError(f"unknown keys in reference statistics: {sorted(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})


def ground_height(xyz: np.ndarray, radius: float = GROUND_RADIUS_M) -> float | None:
    """The lowest dense 10 cm z level among the points within `radius` m (horizontally): the road around the
    sensor. Stray returns below the road are sparse; walls, vehicles and vegetation above it may pile up more points
    in one level than the road does (so not simply the densest level): the lowest level holding at least a quarter
    of the densest one's points, then the densest level within 0.3 m above it."""
    near = xyz[np.hypot(xyz[:, 0], xyz[:, 1]) < radius, 2]
    near = near[np.isfinite(near)]
    if len(near) < 50:
        return None
    bins = np.floor(near / GROUND_BIN_M).astype(np.int64)
    counts = np.bincount(bins - bins.min())
    first = int(np.flatnonzero(counts >= GROUND_DENSE_SHARE * counts.max())[0])
    window = counts[first: first + 4]
    level = first + int(np.argmax(window))
    return float((bins.min() + level + 0.5) * GROUND_BIN_M)


def cloud_statistics(clouds, features: tuple[PointFeature, ...], point_cloud_range=None,
                     settings: InputSettings | None = None, source: str = "") -> CloudStatistics:
    """Statistics of `clouds` (PointClouds, or (where, PointCloud) pairs) as the model would see them: features
    filled by the config's rule (an 'error' feature raises), `settings` applied."""
    clouds = [c if isinstance(c, tuple) else (f"frame {i}", c) for i, c in enumerate(clouds)]
    if not clouds:
        raise ValueError("no frames to compute statistics of")
    names = [f.name for f in features]
    fields = None
    counts, grounds, z_mid, ranges_50, ranges_90, inside = [], [], [], [], [], []
    intensity_samples = []
    intensity_missing = False
    rng = np.random.default_rng(0)
    for where, cloud in clouds:
        present = list(cloud.fields) if isinstance(cloud, PointCloud) else names[: np.asarray(cloud).shape[1]]
        fields = present if fields is None else [f for f in fields if f in present]
        points, filled = prepare_points(cloud, features, settings, where)
        finite = np.isfinite(points[:, :3]).all(axis=1)
        points = points[finite]
        counts.append(len(points))
        if not len(points):
            continue
        xyz = points[:, :3]
        ground = ground_height(xyz)
        if ground is not None:
            grounds.append(ground)
        z_mid.append(float(np.median(xyz[:, 2])))
        horizontal = np.hypot(xyz[:, 0], xyz[:, 1])
        ranges_50.append(float(np.median(horizontal)))
        ranges_90.append(float(np.percentile(horizontal, 90)))
        if point_cloud_range is not None:
            lo, hi = np.asarray(point_cloud_range[:3]), np.asarray(point_cloud_range[3:])
            inside.append(float(((xyz >= lo) & (xyz < hi)).all(axis=1).mean()))
        if "intensity" in names and not any(f.name == "intensity" for f in filled):
            values = points[:, names.index("intensity")]
            values = values[np.isfinite(values)]
            take = min(len(values), 20000)  # a fixed-size sample per frame keeps big frames from dominating
            intensity_samples.append(values[rng.choice(len(values), take, replace=False)] if take < len(values)
                                     else values)
        elif "intensity" in names:
            intensity_missing = True
    stats = CloudStatistics(frames=len(clouds), fields=list(fields or []), points_per_frame=_r(np.median(counts)),
                            source=source)
    if intensity_samples and not intensity_missing:
        values = np.concatenate(intensity_samples).astype(np.float64)
        p1, p50, p99 = np.percentile(values, [1, 50, 99])
        stats.intensity = {"p1": _r(p1), "p50": _r(p50), "p99": _r(p99), "max": _r(values.max()),
                           "min": _r(values.min()), "distinct": int(min(len(np.unique(values)), 100000)),
                           "integer_share": _r(np.mean(values == np.round(values)))}
    if grounds:
        stats.ground_z = _r(np.median(grounds))
    if z_mid:
        stats.z_p50 = _r(np.median(z_mid))
        stats.range_p50 = _r(np.median(ranges_50))
        stats.range_p90 = _r(np.median(ranges_90))
    if inside:
        stats.inside_range = _r(np.median(inside))
    return stats


def _r(value) -> float:
    """Four significant digits: statistics of a sample, not exact values."""
    return float(f"{float(value):.4g}")


@dataclass
class Problem:
    kind: str  # fields, intensity, ground, points, range
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.message}: {self.fix}"


def compare_statistics(stats: CloudStatistics, reference: CloudStatistics | None,
                       features: tuple[PointFeature, ...]) -> list[Problem]:
    """The problems of `stats` against the model's `reference` (None: only the fields are checked), each with a fix."""
    problems = []
    for feature in missing_features(stats.fields, features):
        problems.append(Problem("fields", f"no {feature.name} field (the sensor has {stats.fields})",
                                f"filled with {feature.fill_text()} (the model config says so)"
                                if feature.fill != "error" else "the model config refuses such clouds: "
                                f"record {feature.name} or use a model without it"))
    if reference is None:
        return problems
    got, want = stats.intensity, reference.intensity
    if got is not None and want is not None:
        problems += _intensity_problems(got, want)
    if stats.ground_z is not None and reference.ground_z is not None:
        shift = reference.ground_z - stats.ground_z
        if abs(shift) > GROUND_TOLERANCE_M:
            offset = round(shift / 0.05) * 0.05
            problems.append(Problem(
                "ground", f"ground at z={stats.ground_z:.2f} m, the model expects {reference.ground_z:.2f} m "
                f"(sensor mounted at another height, or the cloud's origin is not the sensor)",
                f"use --z-offset {offset:.2f}"))
    if reference.points_per_frame and stats.points_per_frame < POINTS_RATIO_LOW * reference.points_per_frame:
        problems.append(Problem(
            "points", f"{stats.points_per_frame:.0f} points per frame, the training data has "
            f"{reference.points_per_frame:.0f} (fewer beams, a narrower field of view or a cropped cloud)",
            "expect lower recall, most at range; calibrate on this sensor's own frames (lidar-ptq quantize --calib) "
            "and compare INT8 with FP32 on them"))
    if stats.inside_range is not None and reference.inside_range is not None \
            and stats.inside_range < reference.inside_range - INSIDE_RANGE_DROP:
        problems.append(Problem(
            "range", f"{100 * stats.inside_range:.0f} % of the points fall inside the model's point cloud range, "
            f"{100 * reference.inside_range:.0f} % in the training data",
            "check units (metres), axes (x forward, z up) and the z offset; points outside are ignored"))
    return problems


def _intensity_problems(got: dict, want: dict) -> list[Problem]:
    if got["max"] - got["min"] < 1e-6:
        return [Problem("intensity", f"intensity is the constant {got['max']:g} in every point (the driver or the "
                        "conversion wrote no reflectance)", "record the sensor's intensity if it has one; otherwise "
                        "expect lower accuracy (the model was trained with varied intensity)")]
    expected_max = want.get("max", want.get("p99"))
    if expected_max is None:
        return []
    expected = f"p99 {want['p99']:g}" if "p99" in want else f"max {expected_max:g}"
    if expected_max <= 1.5 and 1.5 < got["max"] <= 255.5:
        return [Problem("intensity", f"intensity looks 0..255 (p99 {got['p99']:g}, max {got['max']:g}); the model "
                        f"expects 0..1 ({expected})", f"use --intensity-scale {BYTE_SCALE:.5f}")]
    if expected_max > 1.5 and got["max"] <= 1.0:
        return [Problem("intensity", f"intensity looks 0..1 (max {got['max']:g}); the model expects 0..255",
                        "use --intensity-scale 255")]
    if got["p99"] > 0 and want.get("p99", 0) > 0:
        ratio = want["p99"] / got["p99"]
        if ratio > INTENSITY_RATIO or ratio < 1 / INTENSITY_RATIO:
            return [Problem("intensity", f"intensity p99 {got['p99']:g}, the model's training data has "
                            f"{want['p99']:g}", f"use --intensity-scale {ratio:.3g}")]
    return []


def format_table(stats: CloudStatistics, reference: CloudStatistics | None) -> str:
    """Measured vs expected, one row per statistic."""
    def intensity(s):
        if s is None or s.intensity is None:
            return "absent"
        i = s.intensity
        if "p50" not in i:  # documented, not measured
            return f"{i.get('min', 0):g}..{i['max']:g}"
        return f"p1 {i['p1']:g} / p50 {i['p50']:g} / p99 {i['p99']:g}, max {i['max']:g}"

    def num(value, unit="", fmt="{:.2f}"):
        return "-" if value is None else fmt.format(value) + unit

    ref = reference
    rows = [
        ("fields", ", ".join(stats.fields), ", ".join(ref.fields) if ref and ref.fields else "-"),
        ("points per frame", num(stats.points_per_frame, fmt="{:.0f}"),
         num(ref and ref.points_per_frame, fmt="{:.0f}")),
        ("intensity", intensity(stats), intensity(ref)),
        ("ground z", num(stats.ground_z, " m"), num(ref and ref.ground_z, " m")),
        ("median z", num(stats.z_p50, " m"), num(ref and ref.z_p50, " m")),
        ("range p50 / p90", f"{num(stats.range_p50, ' m', '{:.1f}')} / {num(stats.range_p90, ' m', '{:.1f}')}",
         f"{num(ref and ref.range_p50, ' m', '{:.1f}')} / {num(ref and ref.range_p90, ' m', '{:.1f}')}"),
        ("inside the range", num(None if stats.inside_range is None else 100 * stats.inside_range, " %", "{:.1f}"),
         num(None if not ref or ref.inside_range is None else 100 * ref.inside_range, " %", "{:.1f}")),
    ]
    width = max(len(r[1]) for r in rows) + 2
    lines = [f"{'':<18}{'this source':<{width}}model expects", *(f"{a:<18}{b:<{width}}{c}" for a, b, c in rows)]
    return "\n".join(lines)


def reference_path(model_name: str) -> Path | None:
    """config/input_stats/*.yaml whose `model` is `model_name` (the model config's name), if any."""
    from ..config_files import config_roots

    for root in config_roots():
        for path in sorted((root / "input_stats").glob("*.yaml")):
            data = yaml.safe_load(path.read_text()) or {}
            if data.get("model") == model_name:
                return path
    return None


def reference_statistics(model_name: str) -> CloudStatistics | None:
    path = reference_path(model_name)
    if path is None:
        return None
    try:
        return CloudStatistics.from_dict({k: v for k, v in yaml.safe_load(path.read_text()).items()})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
