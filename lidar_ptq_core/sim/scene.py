"""Procedural driving scenes, built directly in the sensor frame (x forward, y left, z up, origin at the sensor).

A scene is a smooth terrain (the ground sits at about z = -sensor height) carrying a street: a straight or gently
curved road with lanes, markings, curbs and sidewalks, optionally a cross street, then buildings, walls, hedges,
parking lots, trees, bushes and street furniture along it, and the annotated road users: parked and moving cars and
trucks, pedestrians on sidewalks and crossings, cyclists. Everything is made of three primitive kinds the lidar can
ray-cast quickly (oriented boxes, vertical cylinders, ellipsoids); each annotated object is several primitives so it
does not look like a brick. Objects stand on the terrain and never overlap each other or static structures (a BEV
footprint registry rejects overlapping placements). The same seed always gives the same scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .config import SceneConfig, SizePrior

CLASS_NAMES = ("Car", "Truck", "Pedestrian", "Cyclist")
CAR, TRUCK, PEDESTRIAN, CYCLIST = range(len(CLASS_NAMES))

# Material reflectivities (0..1, the scale of KITTI's intensity channel).
ASPHALT = 0.28
LANE_PAINT = 0.85
CONCRETE = 0.4
GRASS = 0.33
FOLIAGE = 0.38
BARK = 0.2
RUBBER = 0.05
GLASS = 0.12
RETROREFLECTOR = 0.95


@dataclass
class RoadArc:
    """A road centreline of constant curvature through (x0, y0) with heading `heading0` at arc length s = 0.

    Road coordinates (s, d): s along the centreline, d to its left. Lines of constant s are straight and square to
    the road, which is what a cross street follows.
    """

    x0: float
    y0: float
    heading0: float
    curvature: float  # 1/m; > 0 bends left, 0 is straight

    def _centre(self):
        radius = 1.0 / self.curvature
        return radius, self.x0 - radius * math.sin(self.heading0), self.y0 + radius * math.cos(self.heading0)

    def heading(self, s):
        return self.heading0 + self.curvature * np.asarray(s, dtype=np.float64)

    def to_world(self, s, d):
        s, d = np.asarray(s, dtype=np.float64), np.asarray(d, dtype=np.float64)
        if abs(self.curvature) < 1e-9:
            c, sn = math.cos(self.heading0), math.sin(self.heading0)
            return self.x0 + s * c - d * sn, self.y0 + s * sn + d * c
        radius, cx, cy = self._centre()
        theta = self.heading(s)
        return cx + (radius - d) * np.sin(theta), cy - (radius - d) * np.cos(theta)

    def to_road(self, x, y):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if abs(self.curvature) < 1e-9:
            c, sn = math.cos(self.heading0), math.sin(self.heading0)
            vx, vy = x - self.x0, y - self.y0
            return vx * c + vy * sn, -vx * sn + vy * c
        radius, cx, cy = self._centre()
        sign = math.copysign(1.0, radius)
        vx, vy = x - cx, y - cy
        d = radius - sign * np.hypot(vx, vy)
        theta = np.arctan2(sign * vx, -sign * vy)
        return _wrap(theta - self.heading0) * radius, d


@dataclass
class StreetLayout:
    """Cross-section of the street and where its paved areas are, in road coordinates."""

    road: RoadArc
    lane_width: float
    lanes: dict  # side (+1 left, -1 right) -> lane count; right-hand traffic, the sensor drives on side -1
    parking: dict  # side -> parking lane width (0 without)
    curb: dict  # side -> |d| of the curb line
    sidewalk: dict  # side -> sidewalk width
    cross_s: float | None = None  # centre of a cross street, or None
    cross_half_width: float = 0.0
    crosswalks: list = field(default_factory=list)  # s centres of zebra crossings
    paved: list = field(default_factory=list)  # (s0, s1, d0, d1) parking lots and driveways

    def property_line(self, side: int) -> float:
        return self.curb[side] + self.sidewalk[side]

    def in_cross_street(self, s, margin: float = 0.0):
        if self.cross_s is None:
            return np.zeros(np.shape(s), bool)
        return np.abs(np.asarray(s) - self.cross_s) < self.cross_half_width + margin

    def ground_reflectivity(self, x, y) -> np.ndarray:
        s, d = self.road.to_road(x, y)
        side = np.where(d >= 0, 1, -1)
        curb = np.where(side > 0, self.curb[1], self.curb[-1])
        walk_end = curb + np.where(side > 0, self.sidewalk[1], self.sidewalk[-1])
        ad = np.abs(d)
        refl = np.where(ad < curb, ASPHALT, np.where(ad < walk_end, CONCRETE, GRASS))
        cross = self.in_cross_street(s)
        refl = np.where(cross & (ad >= curb), ASPHALT, refl)
        for s0, s1, d0, d1 in self.paved:
            refl = np.where((s >= s0) & (s <= s1) & (d >= d0) & (d <= d1), ASPHALT * 0.9, refl)
        # Lane paint: solid centre line, dashed lane dividers, solid edge lines; none inside the junction.
        lanes = np.where(side > 0, self.lanes[1], self.lanes[-1])
        paint = ad < 0.1
        dash = np.mod(s, 12.0) < 4.0
        for k in range(1, max(self.lanes.values())):
            paint |= (np.abs(ad - k * self.lane_width) < 0.08) & dash & (k < lanes)
        paint |= np.abs(ad - lanes * self.lane_width + 0.15) < 0.08
        for s_cw in self.crosswalks:  # zebra stripes across the road
            paint |= (np.abs(s - s_cw) < 1.5) & (np.mod(d, 1.1) < 0.55) & (ad < curb)
        paint &= ~cross
        return np.where(paint & (ad < curb), LANE_PAINT, refl)


@dataclass
class Terrain:
    """Ground height z(x, y) = base_z + sum_k a_k (sin(kx_k x + ky_k y + p_k) - sin(p_k)): smooth, gentle slopes,
    exactly base_z below the sensor. `layout` (optional) gives the ground its materials."""

    base_z: float
    amplitude: np.ndarray = field(default_factory=lambda: np.zeros(0))
    wave_x: np.ndarray = field(default_factory=lambda: np.zeros(0))  # rad/m
    wave_y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    phase: np.ndarray = field(default_factory=lambda: np.zeros(0))
    layout: StreetLayout | None = None

    @classmethod
    def flat(cls, sensor_height: float) -> "Terrain":
        return cls(-sensor_height)

    def height(self, x, y):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        z = np.full(np.broadcast(x, y).shape, self.base_z)
        for a, kx, ky, p in zip(self.amplitude, self.wave_x, self.wave_y, self.phase):
            z = z + a * (np.sin(kx * x + ky * y + p) - math.sin(p))
        return z

    def height_and_gradient(self, x, y):
        z = np.full(np.broadcast(x, y).shape, self.base_z)
        gx, gy = np.zeros_like(z), np.zeros_like(z)
        for a, kx, ky, p in zip(self.amplitude, self.wave_x, self.wave_y, self.phase):
            arg = kx * x + ky * y + p
            z = z + a * (np.sin(arg) - math.sin(p))
            slope = a * np.cos(arg)
            gx = gx + slope * kx
            gy = gy + slope * ky
        return z, gx, gy

    def reflectivity(self, x, y) -> np.ndarray:
        if self.layout is None:
            return np.full(np.shape(x), GRASS)
        return self.layout.ground_reflectivity(x, y)


@dataclass
class Scene:
    """Primitives in the sensor frame plus the annotated objects. `owner` ties a primitive to an annotated object
    (index into object_boxes) or is -1 for static structure.

    boxes rows:      cx, cy, cz, l, w, h, yaw, reflectivity, porosity, owner  (oriented about z)
    cylinders rows:  cx, cy, z0, z1, radius, reflectivity, porosity, owner    (vertical)
    ellipsoids rows: cx, cy, cz, radius_xy, radius_z, reflectivity, porosity, owner
    Porosity is the chance a ray passes through without a return (foliage, fences, glass).
    """

    terrain: Terrain
    boxes: list = field(default_factory=list)
    cylinders: list = field(default_factory=list)
    ellipsoids: list = field(default_factory=list)
    object_boxes: list = field(default_factory=list)  # (x, y, z, l, w, h, yaw), z at the box centre
    object_labels: list = field(default_factory=list)

    def add_box(self, center, size, yaw, reflectivity, porosity=0.0, owner=-1) -> None:
        self.boxes.append((*center, *size, yaw, reflectivity, porosity, owner))

    def add_cylinder(self, x, y, z0, z1, radius, reflectivity, porosity=0.0, owner=-1) -> None:
        self.cylinders.append((x, y, z0, z1, radius, reflectivity, porosity, owner))

    def add_ellipsoid(self, center, radius_xy, radius_z, reflectivity, porosity=0.0, owner=-1) -> None:
        self.ellipsoids.append((*center, radius_xy, radius_z, reflectivity, porosity, owner))

    def add_object(self, label: int, box, rng: np.random.Generator) -> int:
        """Annotate `box` with `label` and build its geometry; returns the object index."""
        owner = len(self.object_boxes)
        self.object_boxes.append(tuple(float(v) for v in box))
        self.object_labels.append(int(label))
        OBJECT_GEOMETRY[label](self, box, owner, rng)
        return owner

    def primitive_arrays(self):
        """(boxes (N, 10), cylinders (M, 8), ellipsoids (K, 8)) float64 arrays."""
        return (
            np.asarray(self.boxes, np.float64).reshape(-1, 10),
            np.asarray(self.cylinders, np.float64).reshape(-1, 8),
            np.asarray(self.ellipsoids, np.float64).reshape(-1, 8),
        )

    def object_array(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.object_boxes, np.float32).reshape(-1, 7), np.asarray(self.object_labels, np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Object geometry: each builder fills the annotated box (x, y, z, l, w, h, yaw) with a few primitives inside it.


def _part(scene, box, fwd, left, z_lo, z_hi, length, width, refl, porosity=0.0, owner=-1, yaw_offset=0.0):
    """A box part at (fwd, left) in the object frame spanning z_lo..z_hi above the object's bottom."""
    x, y, z, _, _, h, yaw = box
    c, s = math.cos(yaw), math.sin(yaw)
    bottom = z - h / 2
    center = (x + fwd * c - left * s, y + fwd * s + left * c, bottom + (z_lo + z_hi) / 2)
    scene.add_box(center, (length, width, z_hi - z_lo), yaw + yaw_offset, refl, porosity, owner)


def _local_point(box, fwd, left):
    x, y, _, _, _, _, yaw = box
    c, s = math.cos(yaw), math.sin(yaw)
    return x + fwd * c - left * s, y + fwd * s + left * c


def _paint(rng) -> float:
    # Mostly mid-grey paints, some dark, a few bright white/silver.
    base = rng.choice([0.08, 0.25, 0.4, 0.6], p=[0.25, 0.35, 0.25, 0.15])
    return float(np.clip(base + rng.normal(0, 0.04), 0.03, 0.8))


def _car_geometry(scene, box, owner, rng):
    _, _, _, l, w, h, _ = box
    paint = _paint(rng)
    wheel = min(0.68, 0.42 * h)
    for fwd in (0.31 * l, -0.3 * l):  # one dark block per axle, both wheels
        _part(scene, box, fwd, 0.0, 0.0, wheel, wheel, w - 0.08, RUBBER, owner=owner)
    sill, belt = 0.3, 0.58 * h
    _part(scene, box, 0.0, 0.0, sill, 0.45 * h, l, w, paint, owner=owner)
    _part(scene, box, -0.01 * l, 0.0, 0.45 * h, belt, 0.94 * l, 0.99 * w, paint, owner=owner)  # rounded ends
    cabin = rng.uniform(0.45, 0.62) * l  # sedan .. hatchback / SUV
    back = -0.5 * l + rng.uniform(0.08, 0.22) * l
    cabin_centre = min(back + cabin / 2, 0.5 * l - 0.25 * l - cabin / 2)
    _part(scene, box, cabin_centre, 0.0, belt, 0.95 * h, cabin, 0.9 * w, GLASS, porosity=0.35, owner=owner)
    _part(scene, box, cabin_centre - 0.03 * l, 0.0, 0.93 * h, h, 0.85 * cabin, 0.84 * w, paint, owner=owner)


def _truck_geometry(scene, box, owner, rng):
    _, _, _, l, w, h, _ = box
    paint = _paint(rng)
    wheel = 0.9 if l > 7.0 else 0.7
    axles = (0.5 * l - 1.3, -0.5 * l + 1.2) if l <= 8.5 else (0.5 * l - 1.3, -0.5 * l + 1.1, -0.5 * l + 2.4)
    for fwd in axles:
        _part(scene, box, fwd, 0.0, 0.0, wheel, wheel, w - 0.1, RUBBER, owner=owner)
    if l > 7.0:  # box truck: cab in front, tall cargo box behind
        cab = 2.1
        _part(scene, box, 0.5 * l - cab / 2, 0.0, 0.5, 0.62 * h, cab, w - 0.05, paint, owner=owner)
        _part(scene, box, 0.5 * l - cab / 2 - 0.1, 0.0, 0.62 * h, 0.8 * h, cab - 0.3, w - 0.1, GLASS, 0.3, owner)
        cargo_refl = float(np.clip(rng.normal(0.45, 0.12), 0.1, 0.8))
        _part(scene, box, -cab / 2 - 0.1, 0.0, 0.75, h, l - cab - 0.2, w, cargo_refl, owner=owner)
    else:  # van: long body, short sloped nose
        _part(scene, box, 0.0, 0.0, 0.35, 0.55 * h, l, w, paint, owner=owner)
        _part(scene, box, -0.45, 0.0, 0.55 * h, h, l - 0.9, w - 0.04, paint, owner=owner)
        _part(scene, box, 0.5 * l - 1.2, 0.0, 0.55 * h, 0.85 * h, 0.5, w - 0.15, GLASS, 0.3, owner)


def _pedestrian_geometry(scene, box, owner, rng):
    x, y, z, l, w, h, yaw = box
    clothes = float(np.clip(rng.normal(0.3, 0.12), 0.05, 0.7))
    stride = rng.uniform(0.25, min(0.55, l - 0.05))
    _part(scene, box, 0.0, 0.0, 0.0, 0.47 * h, stride, 0.3, clothes, owner=owner)
    torso_width = min(0.48, w - 0.05)
    _part(scene, box, 0.0, 0.0, 0.47 * h, 0.83 * h, 0.3, torso_width, clothes, owner=owner)
    if rng.random() < 0.3:  # backpack or bag
        _part(scene, box, -0.22, 0.0, 0.5 * h, 0.75 * h, 0.15, 0.3, float(rng.uniform(0.1, 0.5)), owner=owner)
    scene.add_ellipsoid((x, y, z + h / 2 - 0.12), 0.1, 0.12, 0.2, owner=owner)


def _cyclist_geometry(scene, box, owner, rng):
    x, y, z, l, w, h, yaw = box
    frame = float(rng.uniform(0.15, 0.6))
    wheel = 0.68
    for fwd in (0.5 * l - wheel / 2, -0.5 * l + wheel / 2):  # thin wheels, spokes let rays through
        _part(scene, box, fwd, 0.0, 0.0, wheel, wheel, 0.05, RUBBER, porosity=0.3, owner=owner)
    _part(scene, box, 0.0, 0.0, 0.4, 0.85, l - 2 * wheel + 0.4, 0.06, frame, owner=owner)
    clothes = float(np.clip(rng.normal(0.3, 0.12), 0.05, 0.7))
    _part(scene, box, -0.1, 0.0, 0.55, 0.55 * h + 0.1, 0.45, 0.34, clothes, owner=owner)  # legs on the pedals
    _part(scene, box, 0.02, 0.0, 0.55 * h + 0.1, 0.86 * h, 0.36, min(0.44, w - 0.04), clothes, owner=owner)
    hx, hy = _local_point(box, 0.12, 0.0)
    scene.add_ellipsoid((hx, hy, z + h / 2 - 0.12), 0.11, 0.12, 0.25, owner=owner)


OBJECT_GEOMETRY = {
    CAR: _car_geometry,
    TRUCK: _truck_geometry,
    PEDESTRIAN: _pedestrian_geometry,
    CYCLIST: _cyclist_geometry,
}


# ---------------------------------------------------------------------------------------------------------------
# Placement bookkeeping.


class Footprints:
    """BEV rectangles already taken; `fits` is a separating-axis test against all of them at once."""

    def __init__(self):
        self._rows = np.zeros((64, 5))  # cx, cy, half_l, half_w, yaw
        self._count = 0

    def add(self, cx, cy, length, width, yaw) -> None:
        if self._count == len(self._rows):
            self._rows = np.concatenate([self._rows, np.zeros_like(self._rows)])
        self._rows[self._count] = (cx, cy, length / 2, width / 2, yaw)
        self._count += 1

    def fits(self, cx, cy, length, width, yaw, margin=0.3) -> bool:
        rows = self._rows[: self._count]
        hl, hw = length / 2 + margin, width / 2 + margin
        near = np.hypot(rows[:, 0] - cx, rows[:, 1] - cy) < math.hypot(hl, hw) + np.hypot(rows[:, 2], rows[:, 3])
        if not near.any():
            return True
        other = rows[near]
        delta = other[:, :2] - (cx, cy)
        ac, as_ = math.cos(yaw), math.sin(yaw)
        oc, os_ = np.cos(other[:, 4]), np.sin(other[:, 4])
        separated = np.zeros(len(other), bool)
        for ux, uy in [(ac, as_), (-as_, ac), (oc, os_), (-os_, oc)]:  # both rectangles' edge normals
            reach_a = hl * np.abs(ux * ac + uy * as_) + hw * np.abs(-ux * as_ + uy * ac)
            reach_b = other[:, 2] * np.abs(ux * oc + uy * os_) + other[:, 3] * np.abs(-ux * os_ + uy * oc)
            separated |= np.abs(delta[:, 0] * ux + delta[:, 1] * uy) > reach_a + reach_b
        return bool(separated.all())

    def place(self, cx, cy, length, width, yaw, margin=0.3) -> bool:
        if not self.fits(cx, cy, length, width, yaw, margin):
            return False
        self.add(cx, cy, length, width, yaw)
        return True


def sample_size(prior: SizePrior, rng) -> tuple[float, float, float]:
    return tuple(float(np.clip(rng.normal(m, s), lo, hi)) for m, s, lo, hi in (prior.length, prior.width, prior.height))


def _wrap(angle):
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


# ---------------------------------------------------------------------------------------------------------------
# The street generator.


class _StreetBuilder:
    def __init__(self, cfg: SceneConfig, sensor_height: float, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.terrain = _random_terrain(cfg, sensor_height, rng)
        self.layout = self._random_layout()
        self.terrain.layout = self.layout
        self.scene = Scene(self.terrain)
        self.taken = Footprints()
        self.taken.add(0.0, 0.0, 4.8, 2.0, 0.0)  # the ego vehicle carrying the sensor
        self.road = self.layout.road

    # --- layout -------------------------------------------------------------------------------------------------

    def _random_layout(self) -> StreetLayout:
        cfg, rng = self.cfg, self.rng
        lo, hi = cfg.lanes_per_direction
        lanes = {1: int(rng.integers(lo, hi + 1)), -1: int(rng.integers(lo, hi + 1))}
        parking = {side: (2.3 if rng.random() < cfg.parking_lane_probability else 0.0) for side in (1, -1)}
        lw = cfg.lane_width_m
        curb = {side: lanes[side] * lw + parking[side] for side in (1, -1)}
        sidewalk = {side: float(rng.uniform(*cfg.sidewalk_width_m)) for side in (1, -1)}
        ego_lane = int(rng.integers(0, lanes[-1]))
        ego_d = -(ego_lane + 0.5) * lw + rng.normal(0, 0.2)
        heading0 = float(rng.normal(0, 0.03))  # the ego does not drive exactly parallel to the road
        curvature = 0.0
        if rng.random() >= cfg.straight_road_probability:
            curvature = float(rng.uniform(-1, 1) * cfg.max_curvature)
        n0 = (-math.sin(heading0), math.cos(heading0))
        road = RoadArc(-ego_d * n0[0], -ego_d * n0[1], heading0, curvature)
        layout = StreetLayout(road, lw, lanes, parking, curb, sidewalk)
        if rng.random() < cfg.intersection_probability:
            layout.cross_s = float(rng.choice([-1, 1]) * rng.uniform(15, 70))
            layout.cross_half_width = float(rng.choice([1, 2]) * lw + rng.uniform(0, 1))
            offset = layout.cross_half_width + max(sidewalk.values()) / 2 + 2.0  # just outside the junction
            layout.crosswalks += [layout.cross_s - offset, layout.cross_s + offset]
        elif rng.random() < 0.3:
            layout.crosswalks.append(float(rng.choice([-1, 1]) * rng.uniform(12, 60)))
        return layout

    def pose(self, s, d, heading_offset=0.0):
        x, y = self.road.to_world(s, d)
        return float(x), float(y), float(self.road.heading(s) + heading_offset)

    def ground(self, x, y) -> float:
        return float(self.terrain.height(x, y))

    def ground_under(self, x, y, length, width, yaw) -> float:
        """Lowest terrain under a footprint, so structures are buried rather than floating."""
        c, s = math.cos(yaw), math.sin(yaw)
        xs = [x + a * length / 2 * c - b * width / 2 * s for a in (-1, 1) for b in (-1, 1)]
        ys = [y + a * length / 2 * s + b * width / 2 * c for a in (-1, 1) for b in (-1, 1)]
        return float(np.min(self.terrain.height(np.array(xs), np.array(ys))))

    # --- static structure ---------------------------------------------------------------------------------------

    def static_box(self, x, y, length, width, height, yaw, refl, porosity=0.0, margin=0.2, register=True) -> bool:
        if register and not self.taken.place(x, y, length, width, yaw, margin):
            return False
        bottom = self.ground_under(x, y, length, width, yaw) - 0.3
        top = self.ground(x, y) + height
        self.scene.add_box((x, y, (bottom + top) / 2), (length, width, top - bottom), yaw, refl, porosity)
        return True

    def curbs(self):
        e, segment = self.cfg.extent_m, 5.0
        for side in (1, -1):
            d = side * (self.layout.curb[side] + 0.1)
            for s in np.arange(-e, e, segment) + segment / 2:
                if self.layout.in_cross_street(s, 0.5):
                    continue
                x, y, yaw = self.pose(s, d)
                z = self.ground(x, y)
                # Not registered as taken: a car may park with a wheel on the curb.
                self.scene.add_box((x, y, z - 0.075), (segment, 0.2, 0.45), yaw, CONCRETE)

    def frontage(self):
        """Buildings, walls, hedges, gaps, parking lots and yards along both sides of the road."""
        cfg, rng = self.cfg, self.rng
        for side in (1, -1):
            urban = rng.random() < cfg.urban_probability
            lot_wanted = rng.random() < cfg.parking_lot_probability
            s = -cfg.extent_m - rng.uniform(0, 10)
            while s < cfg.extent_m:
                corner = self.layout.cross_half_width + self.layout.sidewalk[side]
                if self.layout.cross_s is not None and abs(s - self.layout.cross_s) < corner:
                    s = self.layout.cross_s + corner + 0.5  # skip the cross street's mouth
                    continue
                if lot_wanted and abs(s) < 70 and rng.random() < 0.25:
                    s += self.parking_lot(side, s)
                    lot_wanted = False
                    continue
                kind = rng.choice(["building", "gap", "wall"], p=[0.75, 0.15, 0.1] if urban else [0.45, 0.25, 0.3])
                if kind == "building":
                    s += self.building(side, s, urban)
                elif kind == "gap":
                    s += self.yard(side, s)
                else:
                    s += self.wall(side, s)

    def _block_end_clipped(self, s, length):
        """Shorten a block so it stops before the cross street."""
        if self.layout.cross_s is None:
            return length
        mouth = self.layout.cross_s - self.layout.cross_half_width
        if s < mouth and s + length > mouth - 2:
            length = max(mouth - 2 - s, 0.0)
        return length

    def building(self, side, s, urban) -> float:
        rng = self.rng
        length = rng.uniform(10, 35) if urban else rng.uniform(8, 16)
        length = self._block_end_clipped(s, length)
        if length < 5:
            return length + 1.0
        depth = rng.uniform(8, 20) if urban else rng.uniform(8, 12)
        height = rng.uniform(5, 20) if urban else rng.uniform(4, 8)
        setback = rng.uniform(0.3, 3) if urban else rng.uniform(4, 12)
        d = side * (self.layout.property_line(side) + setback + depth / 2)
        x, y, yaw = self.pose(s + length / 2, d)
        self.static_box(x, y, length - 0.3, depth, height, yaw, float(rng.uniform(0.2, 0.55)))
        if not urban:
            self.yard_content(side, s, length, setback)
        gap = rng.uniform(0, 2) if urban else rng.uniform(2, 8)
        return length + gap

    def yard(self, side, s) -> float:
        rng = self.rng
        length = self._block_end_clipped(s, rng.uniform(5, 18))
        if length < 3:
            return length + 1.0
        # A driveway, often with a car parked nose-in or tail-in.
        if rng.random() < 0.5:
            d0 = self.layout.property_line(side)
            self.layout.paved.append(_paved_rect(s + 1, s + 4.5, side * d0, side * (d0 + 12)))
            if rng.random() < 0.7:
                along = rng.uniform(3.5, 8)
                self.vehicle(s + 2.75, side * (d0 + along), rng.choice([0, math.pi]) + math.pi / 2, parked=True)
        self.yard_content(side, s, length, 0.0)
        return length

    def yard_content(self, side, s, length, depth):
        rng = self.rng
        for _ in range(rng.poisson(1.5)):
            d = side * (self.layout.property_line(side) + rng.uniform(1, max(depth, 6)))
            self.tree_or_bush(s + rng.uniform(0, length), d)

    def wall(self, side, s) -> float:
        rng = self.rng
        length = self._block_end_clipped(s, rng.uniform(6, 30))
        if length < 3:
            return length + 1.0
        d = side * (self.layout.property_line(side) + rng.uniform(0.2, 1.0))
        kind = rng.choice(["wall", "fence", "hedge"], p=[0.4, 0.3, 0.3])
        height = {"wall": rng.uniform(1.0, 2.5), "fence": rng.uniform(1.0, 2.0), "hedge": rng.uniform(0.8, 2.0)}[kind]
        thick = {"wall": 0.25, "fence": 0.05, "hedge": rng.uniform(0.6, 1.2)}[kind]
        refl = {"wall": rng.uniform(0.2, 0.5), "fence": 0.5, "hedge": FOLIAGE}[kind]
        porosity = {"wall": 0.0, "fence": 0.65, "hedge": 0.3}[kind]
        x, y, yaw = self.pose(s + length / 2, d + side * thick / 2)
        self.static_box(x, y, length, thick, height, yaw, float(refl), porosity)
        # Something behind it: a building further back or yard trees.
        if rng.random() < 0.6:
            depth = rng.uniform(8, 14)
            x, y, yaw = self.pose(s + length / 2, side * (abs(d) + rng.uniform(4, 10) + depth / 2))
            self.static_box(x, y, min(length, 14), depth, rng.uniform(4, 9), yaw, float(rng.uniform(0.2, 0.5)))
        self.yard_content(side, s, length, 8.0)
        return length

    def parking_lot(self, side, s) -> float:
        rng = self.rng
        length = self._block_end_clipped(s, rng.uniform(25, 45))
        if length < 10:
            return length + 1.0
        d0 = self.layout.property_line(side) + 1.0
        depth = 17.0
        self.layout.paved.append(_paved_rect(s, s + length, side * d0, side * (d0 + depth)))
        spacing = rng.uniform(2.5, 2.9)
        for row_d in (d0 + 2.6, d0 + depth - 2.6):
            for k in range(int(length // spacing)):
                if rng.random() < self.cfg.parking_occupancy:
                    facing = rng.choice([0, math.pi]) + math.pi / 2  # nose in or tail in
                    self.vehicle(s + (k + 0.5) * spacing, side * row_d, facing, parked=True, jitter=0.06)
        for _ in range(rng.poisson(1.2)):  # people walking to their cars
            d = side * (d0 + depth / 2 + rng.normal(0, 1.5))
            self.pedestrian(s + rng.uniform(0, length), d, rng.uniform(-math.pi, math.pi))
        depth_b = rng.uniform(10, 20)
        x, y, yaw = self.pose(s + length / 2, side * (d0 + depth + 2 + depth_b / 2))
        self.static_box(x, y, length, depth_b, rng.uniform(4, 12), yaw, float(rng.uniform(0.2, 0.5)))
        return length

    def tree_or_bush(self, s, d):
        rng = self.rng
        x, y, _ = self.pose(s, d)
        z = self.ground(x, y)
        if rng.random() < 0.55:
            # Street trees are pruned to clear pedestrians and vans: the crown starts at the trunk's top.
            trunk_r, trunk_h = rng.uniform(0.1, 0.3), rng.uniform(2.3, 3.8)
            if not self.taken.place(x, y, 2 * trunk_r, 2 * trunk_r, 0.0, margin=0.4):
                return
            crown_r, crown_h = rng.uniform(1.5, 3.5), rng.uniform(1.2, 3.0)
            self.scene.add_cylinder(x, y, z - 0.2, z + trunk_h + crown_h * 0.5, trunk_r, BARK)
            self.scene.add_ellipsoid((x, y, z + trunk_h + crown_h), crown_r, crown_h, FOLIAGE, porosity=0.55)
        else:
            r, rz = rng.uniform(0.4, 1.4), rng.uniform(0.4, 1.0)
            if not self.taken.place(x, y, 1.6 * r, 1.6 * r, 0.0, margin=0.1):
                return
            self.scene.add_ellipsoid((x, y, z + rz * 0.6), r, rz, FOLIAGE, porosity=0.25)

    def sidewalk_furniture(self):
        """Trees in pits, street lights, signs, bins, bollards, hydrants, parked bicycles: the small clutter that a
        detector must learn is not a pedestrian."""
        cfg, rng = self.cfg, self.rng
        span = 2 * cfg.extent_m / 100
        for side in (1, -1):
            curb = self.layout.curb[side]
            for _ in range(rng.poisson(cfg.trees_per_sidewalk * span)):
                s = rng.uniform(-cfg.extent_m, cfg.extent_m)
                if not self.layout.in_cross_street(s, 2):
                    self.tree_or_bush(s, side * (curb + 0.8))
            lamp_spacing = rng.uniform(25, 40)
            for s in np.arange(-cfg.extent_m, cfg.extent_m, lamp_spacing) + rng.uniform(0, lamp_spacing):
                if not self.layout.in_cross_street(s, 1):
                    self.street_light(s, side * (curb + 0.5), side)
            for _ in range(rng.poisson(cfg.street_furniture_per_sidewalk * span)):
                s = rng.uniform(-cfg.extent_m, cfg.extent_m)
                if self.layout.in_cross_street(s, 1):
                    continue
                inset = rng.uniform(0.3, 0.8)  # near the curb or along the property line
                d = side * (curb + inset if rng.random() < 0.6 else self.layout.property_line(side) - inset)
                self.furniture(s, d)

    def street_light(self, s, d, side):
        x, y, yaw = self.pose(s, d)
        if not self.taken.place(x, y, 0.3, 0.3, 0.0, margin=0.2):
            return
        z, height = self.ground(x, y), self.rng.uniform(6, 9)
        self.scene.add_cylinder(x, y, z - 0.2, z + height, 0.1, 0.35)
        arm = 1.8  # reaches over the road
        ax, ay, _ = self.pose(s, d - side * arm / 2)
        self.scene.add_box((ax, ay, z + height - 0.1), (0.25, arm, 0.2), yaw, 0.35)

    def furniture(self, s, d):
        rng = self.rng
        x, y, yaw = self.pose(s, d)
        z = self.ground(x, y)
        kinds = {"sign": 0.2, "bin": 0.2, "bollard": 0.15, "hydrant": 0.1, "bench": 0.1, "bicycle": 0.1, "pole": 0.15}
        kind = rng.choice(list(kinds), p=list(kinds.values()))
        if kind == "bench":
            if self.taken.place(x, y, 1.8, 0.6, yaw, 0.2):
                self.scene.add_box((x, y, z + 0.45), (1.8, 0.6, 0.9), yaw, 0.3, porosity=0.3)
            return
        if kind == "bicycle":  # parked, no rider: not a Cyclist
            bike_yaw = yaw + (math.pi / 2 if rng.random() < 0.5 else 0.0)
            if self.taken.place(x, y, 1.75, 0.6, bike_yaw, 0.1):
                self.scene.add_box((x, y, z + 0.45), (1.75, 0.06, 0.9), bike_yaw, 0.3, porosity=0.5)
            return
        if not self.taken.place(x, y, 0.7, 0.7, yaw, 0.15):
            return
        if kind == "sign":
            height = rng.uniform(2.0, 2.8)
            self.scene.add_cylinder(x, y, z - 0.1, z + height, 0.04, 0.4)
            self.scene.add_box((x, y, z + height + 0.3), (0.04, 0.65, 0.65), yaw + rng.normal(0, 0.3), RETROREFLECTOR)
        elif kind == "bin":
            self.scene.add_box((x, y, z + 0.5), (0.6, 0.6, 1.0), yaw, float(rng.uniform(0.1, 0.4)))
        elif kind == "bollard":
            self.scene.add_cylinder(x, y, z - 0.1, z + 0.9, 0.1, 0.5)
        elif kind == "hydrant":
            self.scene.add_cylinder(x, y, z - 0.1, z + 0.75, 0.15, 0.45)
        else:  # utility pole
            self.scene.add_cylinder(x, y, z - 0.2, z + rng.uniform(5, 10), 0.15, 0.25)

    # --- road users ---------------------------------------------------------------------------------------------

    def in_range(self, x, y) -> bool:
        return x * x + y * y <= self.cfg.object_range_m**2

    def vehicle(self, s, d, heading_offset=0.0, parked=False, jitter=0.03, truck=None) -> bool:
        rng, sizes = self.rng, self.cfg.sizes
        x, y, yaw = self.pose(s, d, heading_offset + rng.normal(0, jitter))
        if not self.in_range(x, y):
            return False
        truck = (rng.random() < self.cfg.truck_fraction * (0.6 if parked else 1.0)) if truck is None else truck
        label = TRUCK if truck else CAR
        l, w, h = sample_size(sizes.truck if truck else sizes.car, rng)
        if parked and truck:
            l = min(l, 7.0)  # vans park, box trucks rarely
        if not self.taken.place(x, y, l, w, yaw, margin=0.35):
            return False
        self.scene.add_object(label, (x, y, self.ground(x, y) + h / 2, l, w, h, yaw), rng)
        return True

    def pedestrian(self, s, d, heading_offset) -> bool:
        rng = self.rng
        x, y, yaw = self.pose(s, d, heading_offset)
        if not self.in_range(x, y):
            return False
        l, w, h = sample_size(self.cfg.sizes.pedestrian, rng)
        if rng.random() < 0.07:  # a child
            h = rng.uniform(1.0, 1.4)
        if not self.taken.place(x, y, l, w, yaw, margin=0.1):
            return False
        self.scene.add_object(PEDESTRIAN, (x, y, self.ground(x, y) + h / 2, l, w, h, yaw), self.rng)
        return True

    def cyclist(self, s, d, heading_offset) -> bool:
        rng = self.rng
        x, y, yaw = self.pose(s, d, heading_offset + rng.normal(0, 0.05))
        if not self.in_range(x, y):
            return False
        l, w, h = sample_size(self.cfg.sizes.cyclist, rng)
        if not self.taken.place(x, y, l, w, yaw, margin=0.3):
            return False
        self.scene.add_object(CYCLIST, (x, y, self.ground(x, y) + h / 2, l, w, h, yaw), rng)
        return True

    def parked_cars(self):
        rng = self.rng
        for side in (1, -1):
            width = self.layout.parking[side]
            if width <= 0:
                continue
            d = side * (self.layout.curb[side] - width / 2)
            s = -self.cfg.extent_m + rng.uniform(0, 5)
            while s < self.cfg.extent_m:
                length = self.cfg.sizes.car.length[0] + 1.0
                if rng.random() < self.cfg.parking_occupancy and not self.layout.in_cross_street(s, 4):
                    # Parked in the direction of travel on that side, now and then the other way round.
                    facing = 0.0 if side < 0 else math.pi
                    if rng.random() < 0.1:
                        facing += math.pi
                    self.vehicle(s + length / 2, d + rng.normal(0, 0.1), facing, parked=True, jitter=0.04)
                s += length + rng.uniform(0.5, 3.0)

    def traffic(self):
        cfg, rng = self.cfg, self.rng
        lw = self.layout.lane_width
        mean_gap = max(100.0 / max(cfg.traffic_per_lane, 1e-3) - 5.0, 3.0)
        for side in (1, -1):
            facing = 0.0 if side < 0 else math.pi
            for lane in range(self.layout.lanes[side]):
                d = side * (lane + 0.5) * lw
                s = -cfg.extent_m + rng.exponential(mean_gap)
                while s < cfg.extent_m:
                    self.vehicle(s, d + rng.normal(0, 0.25), facing)
                    s += 6.0 + rng.exponential(mean_gap)
        if self.layout.cross_s is not None:  # traffic on the cross street, waiting or crossing
            for side in (1, -1):
                for _ in range(rng.integers(0, 4)):
                    # Right-hand traffic: leaving the main road uses the lane at lower s, arriving the other one.
                    outward = rng.random() < 0.5
                    lane = (-1 if outward else 1) * self.layout.cross_half_width / 2
                    out = self.layout.curb[side] + rng.uniform(3, 60)
                    facing = side * math.pi / 2 + (0.0 if outward else math.pi)
                    self.vehicle(self.layout.cross_s + lane, side * out, facing)

    def cyclists(self):
        cfg, rng = self.cfg, self.rng
        for _ in range(rng.poisson(cfg.cyclists * 2 * cfg.extent_m / 100)):
            side = rng.choice([1, -1])
            s = rng.uniform(-cfg.extent_m, cfg.extent_m)
            facing = 0.0 if side < 0 else math.pi
            if rng.random() < 0.8:  # riding at the road edge, outside the parking lane
                d = side * (self.layout.curb[side] - self.layout.parking[side] - rng.uniform(0.6, 1.2))
            else:  # on the sidewalk
                d = side * (self.layout.curb[side] + self.layout.sidewalk[side] / 2)
                facing = rng.choice([0.0, math.pi])
            self.cyclist(s, d, facing)

    def pedestrians(self):
        cfg, rng = self.cfg, self.rng
        span = 2 * cfg.extent_m / 100
        for side in (1, -1):
            curb, walk = self.layout.curb[side], self.layout.sidewalk[side]
            for _ in range(rng.poisson(cfg.pedestrians_per_sidewalk * span)):
                s = rng.uniform(-cfg.extent_m, cfg.extent_m)
                d = side * (curb + rng.uniform(0.4, max(walk - 0.4, 0.5)))
                if rng.random() < 0.8:  # walking along the sidewalk, either way
                    heading = rng.choice([0.0, math.pi]) + rng.normal(0, 0.2)
                else:  # standing, turning, window shopping
                    heading = rng.uniform(-math.pi, math.pi)
                self.pedestrian(s, d, heading)
                for _ in range(rng.choice([0, 0, 0, 1, 2])):  # walking in a group
                    self.pedestrian(s + rng.normal(0, 1.2), d + side * rng.normal(0, 0.6), heading + rng.normal(0, 0.2))
        lo, hi = cfg.crossing_pedestrians
        crossings = self.layout.crosswalks or [float(rng.uniform(-60, 60))]
        for _ in range(rng.integers(lo, hi + 1)):
            s = rng.choice(crossings) + rng.normal(0, 0.8)
            d = rng.uniform(-self.layout.curb[-1] - 1, self.layout.curb[1] + 1)
            self.pedestrian(s, d, rng.choice([math.pi / 2, -math.pi / 2]) + rng.normal(0, 0.15))

    def build(self) -> Scene:
        # Order matters for who wins a contested spot: fixed structure first, then vehicles, then vulnerable users.
        self.curbs()
        self.traffic()
        self.parked_cars()
        self.frontage()
        self.sidewalk_furniture()
        self.cyclists()
        self.pedestrians()
        return self.scene


def _paved_rect(s0, s1, d0, d1):
    return (min(s0, s1), max(s0, s1), min(d0, d1), max(d0, d1))


def _random_terrain(cfg: SceneConfig, sensor_height: float, rng) -> Terrain:
    count = 3
    wavelength = rng.uniform(*cfg.terrain_wavelength_m, size=count)
    direction = rng.uniform(0, 2 * np.pi, size=count)
    k = 2 * np.pi / wavelength
    return Terrain(
        base_z=-sensor_height,
        amplitude=rng.uniform(0.2, 1.0, size=count) * cfg.terrain_amplitude_m,
        wave_x=k * np.cos(direction),
        wave_y=k * np.sin(direction),
        phase=rng.uniform(0, 2 * np.pi, size=count),
    )


def build_scene(cfg: SceneConfig, sensor_height: float, rng: np.random.Generator) -> Scene:
    """A random street scene around a sensor `sensor_height` above the road."""
    return _StreetBuilder(cfg, sensor_height, rng).build()
