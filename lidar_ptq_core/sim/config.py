"""Simulator configuration: dataclasses with defaults, loaded from YAML with strict key checking.

The defaults here are the 64-beam benchmark (config/sim/default.yaml spells them out). A YAML file only needs the
keys it changes; any key the dataclasses do not know is an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config_files import build_config, load_yaml, resolve_config

# Bump whenever the generator's output for a given config and seed changes, so cached frames are regenerated.
GENERATOR_VERSION = 1



@dataclass(frozen=True)
class LidarConfig:
    """A spinning multi-beam lidar. Beam elevations come from blocks of evenly spaced lasers."""

    name: str = "hdl64e"
    # (top_deg, bottom_deg, count) per block; HDL-64E: 32 upper lasers +2..-8.33, 32 lower lasers -8.83..-24.9.
    beam_blocks: tuple[tuple[float, float, int], ...] = ((2.0, -8.33, 32), (-8.83, -24.9, 32))
    azimuth_resolution_deg: float = 0.18
    max_range_m: float = 120.0
    min_range_m: float = 2.5  # the ego vehicle's roof and body hide the nearest returns
    sensor_height_m: float = 1.8
    range_noise_m: float = 0.02
    dropout: float = 0.03  # returns lost at random, whatever the target
    # A target of effective reflectivity 0.1 at this range returns with 50 % probability; the chance falls with
    # range squared, so dark and grazing surfaces fade out first, as on a real sensor.
    weak_return_range_m: float = 100.0
    intensity_noise: float = 0.03


@dataclass(frozen=True)
class SizePrior:
    """Clipped normal distributions of one class's box size, metres."""

    length: tuple[float, float, float, float]  # mean, std, min, max
    width: tuple[float, float, float, float]
    height: tuple[float, float, float, float]


@dataclass(frozen=True)
class ObjectSizes:
    car: SizePrior = SizePrior((4.5, 0.4, 3.4, 5.6), (1.85, 0.1, 1.6, 2.1), (1.55, 0.12, 1.35, 1.95))
    truck: SizePrior = SizePrior((7.0, 1.4, 5.5, 10.0), (2.35, 0.15, 2.1, 2.6), (2.8, 0.4, 2.2, 3.5))
    pedestrian: SizePrior = SizePrior((0.7, 0.08, 0.5, 0.95), (0.65, 0.07, 0.45, 0.85), (1.75, 0.1, 1.45, 2.0))
    cyclist: SizePrior = SizePrior((1.8, 0.1, 1.55, 2.05), (0.65, 0.07, 0.5, 0.8), (1.7, 0.08, 1.5, 1.9))


@dataclass(frozen=True)
class SceneConfig:
    """Procedural street scenes. Densities are expected counts per 100 m of road (both sides / all lanes)."""

    extent_m: float = 110.0  # road, buildings and traffic reach this far ahead and behind the sensor
    object_range_m: float = 90.0  # annotated objects are kept out to this distance from the sensor
    terrain_amplitude_m: float = 0.8  # per low-frequency term; slopes stay gentle
    terrain_wavelength_m: tuple[float, float] = (180.0, 500.0)
    max_curvature: float = 1.0 / 300.0  # 1/m; 0 is a straight road
    straight_road_probability: float = 0.4
    lanes_per_direction: tuple[int, int] = (1, 2)  # inclusive range
    lane_width_m: float = 3.5
    parking_lane_probability: float = 0.6  # per side
    sidewalk_width_m: tuple[float, float] = (2.0, 4.5)
    intersection_probability: float = 0.5
    urban_probability: float = 0.6  # per side: buildings; otherwise suburban walls, hedges and vegetation
    traffic_per_lane: float = 3.0
    truck_fraction: float = 0.15
    parking_occupancy: float = 0.65
    parking_lot_probability: float = 0.35  # per side
    pedestrians_per_sidewalk: float = 4.0
    crossing_pedestrians: tuple[int, int] = (1, 6)
    cyclists: float = 3.0
    trees_per_sidewalk: float = 5.0
    street_furniture_per_sidewalk: float = 6.0  # poles, signs, bins, bollards: small hard negatives
    sizes: ObjectSizes = field(default_factory=ObjectSizes)


@dataclass(frozen=True)
class SimConfig:
    lidar: LidarConfig = field(default_factory=LidarConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    min_points: int = 5  # boxes with fewer lidar points inside are marked ignore

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Short hash of every setting and the generator version: the cache key of frames made with this config."""
        doc = json.dumps({"version": GENERATOR_VERSION, "config": self.to_dict()}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]


def beam_elevations_deg(lidar: LidarConfig) -> list[float]:
    """All beam elevations, top to bottom."""
    elevations = []
    for top, bottom, count in lidar.beam_blocks:
        count = int(count)
        elevations += [top + (bottom - top) * i / max(count - 1, 1) for i in range(count)]
    return sorted(elevations, reverse=True)


def sim_config_from_dict(data: dict | None, source: str = "config") -> SimConfig:
    config = build_config(SimConfig, data or {}, label=source)
    validate(config)
    return config


def load_sim_config(name_or_path: str | Path | None = None) -> SimConfig:
    """A config by name (`default`, `vlp32`: files under config/sim/) or by YAML path; None is the default."""
    if name_or_path is None:
        return SimConfig()
    path = resolve_config(name_or_path, "sim")
    return sim_config_from_dict(load_yaml(path), str(path))


def validate(config: SimConfig) -> None:
    lidar, scene = config.lidar, config.scene
    checks = [
        (len(lidar.beam_blocks) > 0, "lidar.beam_blocks must hold at least one (top, bottom, count) block"),
        (all(len(b) == 3 and int(b[2]) >= 1 for b in lidar.beam_blocks), "each beam block is (top, bottom, count>=1)"),
        (0 < lidar.azimuth_resolution_deg <= 10, "lidar.azimuth_resolution_deg must be in (0, 10]"),
        (0 < lidar.min_range_m < lidar.max_range_m, "need 0 < lidar.min_range_m < lidar.max_range_m"),
        (lidar.sensor_height_m > 0, "lidar.sensor_height_m must be positive"),
        (0 <= lidar.dropout < 1, "lidar.dropout must be in [0, 1)"),
        (lidar.range_noise_m >= 0 and lidar.intensity_noise >= 0, "noise levels must be >= 0"),
        (lidar.weak_return_range_m > 0, "lidar.weak_return_range_m must be positive"),
        (scene.extent_m > 10 and scene.object_range_m > 0, "scene.extent_m must exceed 10 m"),
        (scene.lanes_per_direction[0] >= 1 and scene.lanes_per_direction[0] <= scene.lanes_per_direction[1],
         "scene.lanes_per_direction is an inclusive (min, max) range starting at >= 1"),
        (scene.terrain_wavelength_m[0] > 0 and scene.terrain_wavelength_m[0] <= scene.terrain_wavelength_m[1],
         "scene.terrain_wavelength_m is a (min, max) range of positive lengths"),
        (config.min_points >= 0, "min_points must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"invalid simulator config: {message}")
