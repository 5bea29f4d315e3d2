"""A spinning multi-beam lidar, simulated by ray casting against a Scene.

Rays form a (beams x azimuth columns) grid from the sensor origin. Each primitive covers only a small window of that
grid as seen from the sensor (an azimuth interval and an elevation interval), so it is intersected with the rays in
its window only, all at once with numpy: a slab test in the box frame for oriented boxes, closed forms for vertical
cylinders and ellipsoids, and a few Newton steps per ray for the smooth terrain. A depth buffer keeps the nearest hit
per ray, which is what produces occlusion and shadows. Then the sensor model: weak returns fade with range squared
(dark and grazing surfaces first), random dropout, gaussian range noise along the ray, intensity from reflectivity
and incidence angle.

Measured on one core of the 2-core build machine (numpy 2.4, mean of 20 full frames; `lidar-ptq sim` prints the
same per-frame figure): HDL-64E-like 64 x 2000 rays 0.14 s per frame (0.02 s scene, 0.12 s ray casting and sensor
model, ~120k points), HDL-32E-like 32 x 2250 rays 0.08 s (~60k points).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .config import LidarConfig, beam_elevations_deg
from .scene import Scene

GROUND = -2  # owner code of terrain hits; -1 is static structure, >= 0 an annotated object
_EL_PAD = 1e-4  # radians of slack on every window, so culling never loses a ray that grazes a primitive


@dataclass(frozen=True)
class RayGrid:
    elevation: np.ndarray  # (B,) radians, top beam first
    azimuth: np.ndarray  # (A,) radians, column centres from -pi up
    step: float  # azimuth step, radians
    dx: np.ndarray  # (B, A) unit ray directions
    dy: np.ndarray
    dz: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.dx.shape


@functools.lru_cache(maxsize=8)
def ray_grid(lidar: LidarConfig) -> RayGrid:
    elevation = np.radians(np.array(beam_elevations_deg(lidar)))
    columns = int(round(360.0 / lidar.azimuth_resolution_deg))
    step = 2 * np.pi / columns
    azimuth = -np.pi + (np.arange(columns) + 0.5) * step
    ce, se = np.cos(elevation)[:, None], np.sin(elevation)[:, None]
    dx, dy = ce * np.cos(azimuth)[None, :], ce * np.sin(azimuth)[None, :]
    dz = np.broadcast_to(se, dx.shape).copy()
    for a in (elevation, azimuth, dx, dy, dz):
        a.flags.writeable = False
    return RayGrid(elevation, azimuth, step, dx, dy, dz)


@dataclass
class Scan:
    """One sweep, kept on the ray grid so per-object statistics can be windowed like the ray casting."""

    grid: RayGrid
    xyz: np.ndarray  # (B, A, 3) float32, meaningless where not valid
    intensity: np.ndarray  # (B, A) float32 in [0, 1]
    valid: np.ndarray  # (B, A) bool: the ray returned a point
    owner: np.ndarray  # (B, A) int32: object index, -1 static, -2 ground

    @property
    def points(self) -> np.ndarray:
        """(N, 4) float32 x, y, z, intensity: the KITTI .bin layout, beam by beam."""
        return np.concatenate([self.xyz[self.valid], self.intensity[self.valid][:, None]], axis=1).astype(np.float32)

    def hits_per_object(self, num_objects: int) -> np.ndarray:
        """(M,) returned points whose ray hit each object's own geometry (visibility, not box membership)."""
        own = self.owner[self.valid]
        return np.bincount(own[own >= 0], minlength=num_objects)[:num_objects].astype(np.int64)

    def count_in_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """(M,) returned points inside each box (x, y, z, l, w, h, yaw), whatever surface they came from."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
        counts = np.zeros(len(boxes), np.int64)
        if not len(boxes):
            return counts
        windows = _box_windows(self.grid, boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 5] / 2,
                               boxes[:, 2] + boxes[:, 5] / 2, boxes[:, 3], boxes[:, 4], boxes[:, 6])
        for i, (b0, b1, cols) in enumerate(windows):
            if cols is None:
                continue
            pts = self.xyz[b0:b1, cols].astype(np.float64)
            ok = self.valid[b0:b1, cols]
            counts[i] = int((_inside_box(pts, boxes[i]) & ok).sum())
        return counts


def _inside_box(pts: np.ndarray, box: np.ndarray) -> np.ndarray:
    x, y, z, l, w, h, yaw = box
    c, s = math.cos(yaw), math.sin(yaw)
    rx, ry = pts[..., 0] - x, pts[..., 1] - y
    along, across = rx * c + ry * s, -rx * s + ry * c
    return (np.abs(along) <= l / 2) & (np.abs(across) <= w / 2) & (np.abs(pts[..., 2] - z) <= h / 2)


# ---------------------------------------------------------------------------------------------------------------
# Windows: which rays can meet a primitive.


def _windows(grid: RayGrid, az_lo, az_hi, el_lo, el_hi):
    """Per primitive (b0, b1, cols): a beam slice and a column slice or index array (wrapping at +-pi); cols is
    None for an empty window. Inputs are arrays of angle bounds."""
    num_cols = grid.shape[1]
    neg_el = -grid.elevation  # ascending
    b0 = np.searchsorted(neg_el, -(el_hi + _EL_PAD), side="left")
    b1 = np.searchsorted(neg_el, -(el_lo - _EL_PAD), side="right")
    j0 = np.ceil((az_lo + np.pi) / grid.step - 0.5 - 1e-6).astype(np.int64)
    j1 = np.floor((az_hi + np.pi) / grid.step - 0.5 + 1e-6).astype(np.int64)
    out = []
    for lo_b, hi_b, lo_j, hi_j in zip(b0.tolist(), b1.tolist(), j0.tolist(), j1.tolist()):
        if hi_b <= lo_b or hi_j < lo_j:
            out.append((0, 0, None))
        elif hi_j - lo_j + 1 >= num_cols:
            out.append((lo_b, hi_b, slice(0, num_cols)))
        elif lo_j >= 0 and hi_j < num_cols:
            out.append((lo_b, hi_b, slice(lo_j, hi_j + 1)))
        else:
            out.append((lo_b, hi_b, np.arange(lo_j, hi_j + 1) % num_cols))
    return out


def _elevation_bounds(dist, radius, z_lo, z_hi):
    near = np.maximum(dist - radius, 1e-3)
    far = dist + radius
    el_hi = np.where(z_hi > 0, np.arctan2(z_hi, near), np.arctan2(z_hi, far))
    el_lo = np.where(z_lo < 0, np.arctan2(z_lo, near), np.arctan2(z_lo, far))
    return el_lo, el_hi


def _round_windows(grid, cx, cy, radius, z_lo, z_hi):
    """Windows of vertical cylinders / ellipsoids of BEV radius `radius`."""
    dist = np.hypot(cx, cy)
    centre = np.arctan2(cy, cx)
    inside = dist <= radius
    half = np.where(inside, np.pi, np.arcsin(np.clip(radius / np.maximum(dist, 1e-9), 0, 1))) + grid.step * 1e-3
    el_lo, el_hi = _elevation_bounds(dist, radius, z_lo, z_hi)
    el_lo = np.where(inside & (z_lo < 0), -np.pi / 2, el_lo)
    el_hi = np.where(inside & (z_hi > 0), np.pi / 2, el_hi)
    return _windows(grid, centre - half, centre + half, el_lo, el_hi)


def _box_windows(grid, cx, cy, z_lo, z_hi, length, width, yaw):
    """Windows of oriented boxes, the azimuth interval from the four BEV corners."""
    dist = np.hypot(cx, cy)
    centre = np.arctan2(cy, cx)
    c, s = np.cos(yaw), np.sin(yaw)
    deltas = []
    for a in (-0.5, 0.5):
        for b in (-0.5, 0.5):
            px = cx + a * length * c - b * width * s
            py = cy + a * length * s + b * width * c
            deltas.append((np.arctan2(py, px) - centre + np.pi) % (2 * np.pi) - np.pi)
    deltas = np.stack(deltas)
    radius = 0.5 * np.hypot(length, width)
    inside = dist <= radius  # conservatively: the sensor may be over the footprint, look all around
    pad = grid.step * 1e-3
    az_lo = np.where(inside, centre - np.pi, centre + deltas.min(axis=0) - pad)
    az_hi = np.where(inside, centre + np.pi, centre + deltas.max(axis=0) + pad)
    el_lo, el_hi = _elevation_bounds(dist, radius, z_lo, z_hi)
    el_lo = np.where(inside & (z_lo < 0), -np.pi / 2, el_lo)
    el_hi = np.where(inside & (z_hi > 0), np.pi / 2, el_hi)
    return _windows(grid, az_lo, az_hi, el_lo, el_hi)


# ---------------------------------------------------------------------------------------------------------------
# Intersection kernels: ray origin at the sensor, (dx, dy, dz) unit directions of the window's rays.
# Each returns (t, cos_incidence) with t = inf where the ray misses.


def _hit_box(dx, dy, dz, cx, cy, cz, length, width, height, yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    origin = (-(cx * c + cy * s), -(-cx * s + cy * c), -cz)  # sensor in the box frame
    local = (dx * c + dy * s, -dx * s + dy * c, dz)
    half = (length / 2, width / 2, height / 2)
    t_min, t_max = [], []
    for o, d, h in zip(origin, local, half):
        d = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1, t2 = (-h - o) / d, (h - o) / d
        t_min.append(np.minimum(t1, t2))
        t_max.append(np.maximum(t1, t2))
    t_near = np.maximum(np.maximum(t_min[0], t_min[1]), t_min[2])
    t_far = np.minimum(np.minimum(t_max[0], t_max[1]), t_max[2])
    hit = (t_near <= t_far) & (t_near > 0)
    # The entry face is the slab entered last; the incidence cosine is the direction's component along its axis.
    cos_inc = np.where(
        (t_min[0] >= t_min[1]) & (t_min[0] >= t_min[2]),
        np.abs(local[0]),
        np.where(t_min[1] >= t_min[2], np.abs(local[1]), np.abs(local[2])),
    )
    return np.where(hit, t_near, np.inf), cos_inc


def _hit_cylinder(dx, dy, dz, cx, cy, z0, z1, radius):
    a = np.maximum(dx * dx + dy * dy, 1e-12)
    b = -(dx * cx + dy * cy)
    cc = cx * cx + cy * cy - radius * radius
    disc = b * b - a * cc
    t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    z = t_side * dz
    side = (disc >= 0) & (t_side > 0) & (z >= z0) & (z <= z1)
    t = np.where(side, t_side, np.inf)
    cos_inc = np.abs((t_side * dx - cx) * dx + (t_side * dy - cy) * dy) / radius
    cap_z = z1 if z1 < 0 else (z0 if z0 > 0 else None)  # the cap facing the sensor, if any
    if cap_z is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            t_cap = cap_z / dz
        cap = (t_cap > 0) & ((t_cap * dx - cx) ** 2 + (t_cap * dy - cy) ** 2 <= radius * radius) & (t_cap < t)
        t = np.where(cap, t_cap, t)
        cos_inc = np.where(cap, np.abs(dz), cos_inc)
    return t, np.clip(cos_inc, 0.0, 1.0)


def _hit_ellipsoid(dx, dy, dz, cx, cy, cz, radius_xy, radius_z):
    k = radius_xy / radius_z  # scaling z by k turns the ellipsoid into a sphere of radius radius_xy
    dzs, czs = dz * k, cz * k
    a = dx * dx + dy * dy + dzs * dzs
    b = -(dx * cx + dy * cy + dzs * czs)
    cc = cx * cx + cy * cy + czs * czs - radius_xy * radius_xy
    disc = b * b - a * cc
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    hit = (disc >= 0) & (t > 0)
    nx, ny, nz = t * dx - cx, t * dy - cy, (t * dz - cz) * k * k
    cos_inc = np.abs(nx * dx + ny * dy + nz * dz) / np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-12)
    return np.where(hit, t, np.inf), cos_inc


def _hit_terrain(terrain, grid: RayGrid, max_range: float):
    """Ground hit per ray: Newton on f(t) = t dz - z_ground(t dx, t dy) from the flat-ground distance. The terrain
    is smooth and gentle, so a few steps converge; rays that end up anywhere but on the surface get no hit."""
    t_out = np.full(grid.shape, np.inf)
    cos_out = np.zeros(grid.shape)
    base = terrain.base_z
    with np.errstate(divide="ignore"):
        t_flat = np.where(grid.dz < -1e-4, base / grid.dz, np.inf)
    rays = np.nonzero(t_flat < 2.0 * max_range)
    dx, dy, dz = grid.dx[rays], grid.dy[rays], grid.dz[rays]
    t = t_flat[rays]
    if len(terrain.amplitude):
        for _ in range(4):
            z, gx, gy = terrain.height_and_gradient(t * dx, t * dy)
            slope = dz - (gx * dx + gy * dy)  # df/dt, negative while the ray descends relative to the ground
            t = t - (t * dz - z) / np.minimum(slope, -1e-6)
    z, gx, gy = terrain.height_and_gradient(t * dx, t * dy)
    ok = (np.abs(t * dz - z) < 1e-3) & (t > 0) & (dz - (gx * dx + gy * dy) < 0)
    t_out[rays] = np.where(ok, t, np.inf)
    cos_out[rays] = np.abs(-gx * dx - gy * dy + dz) / np.sqrt(gx * gx + gy * gy + 1.0)
    return t_out, cos_out


# ---------------------------------------------------------------------------------------------------------------


def scan(scene: Scene, lidar: LidarConfig, rng: np.random.Generator) -> Scan:
    """Cast every ray of `lidar` into `scene` (sensor at the origin) and apply the sensor model."""
    grid = ray_grid(lidar)
    depth, cos_inc = _hit_terrain(scene.terrain, grid, lidar.max_range_m)
    reflectivity = np.zeros(grid.shape)
    owner = np.where(np.isfinite(depth), GROUND, -1).astype(np.int32)

    def merge(b0, b1, cols, t, cos, refl, porosity, own):
        current = depth[b0:b1, cols]
        closer = t < current
        if porosity > 0:
            closer &= rng.random(closer.shape) >= porosity
        r, c = np.nonzero(closer)
        if not len(r):
            return
        rows = r + b0
        columns = c + cols.start if isinstance(cols, slice) else cols[c]
        depth[rows, columns] = t[r, c]
        cos_inc[rows, columns] = cos[r, c]
        reflectivity[rows, columns] = refl
        owner[rows, columns] = own

    boxes, cylinders, ellipsoids = scene.primitive_arrays()
    # Per primitive kind: its rows (geometry columns, then reflectivity, material, owner), the number of geometry
    # columns, the ray window each primitive can hit, its nearest possible distance, and the exact hit test.
    kinds = []
    if len(boxes):
        cx, cy, cz, l, w, h, yaw = boxes[:, :7].T
        windows = _box_windows(grid, cx, cy, cz - h / 2, cz + h / 2, l, w, yaw)
        kinds.append((boxes, 7, windows, np.hypot(cx, cy) - 0.5 * np.hypot(l, w), _hit_box))
    if len(cylinders):
        cx, cy, z0, z1, r = cylinders[:, :5].T
        kinds.append((cylinders, 5, _round_windows(grid, cx, cy, r, z0, z1), np.hypot(cx, cy) - r, _hit_cylinder))
    if len(ellipsoids):
        cx, cy, cz, rxy, rz = ellipsoids[:, :5].T
        windows = _round_windows(grid, cx, cy, rxy, cz - rz, cz + rz)
        kinds.append((ellipsoids, 5, windows, np.hypot(cx, cy) - rxy, _hit_ellipsoid))
    for rows, geometry_columns, windows, nearest, hit in kinds:
        for row, (b0, b1, cols), distance in zip(rows, windows, nearest):
            if cols is None or distance >= lidar.max_range_m:
                continue
            t, cos = hit(grid.dx[b0:b1, cols], grid.dy[b0:b1, cols], grid.dz[b0:b1, cols], *row[:geometry_columns])
            g = geometry_columns
            merge(b0, b1, cols, t, cos, row[g], row[g + 1], int(row[g + 2]))

    return _sensor_model(scene, lidar, grid, depth, cos_inc, reflectivity, owner, rng)


def _sensor_model(scene, lidar, grid, depth, cos_inc, reflectivity, owner, rng) -> Scan:
    on_ground = owner == GROUND
    if on_ground.any():
        t = depth[on_ground]
        reflectivity[on_ground] = scene.terrain.reflectivity(t * grid.dx[on_ground], t * grid.dy[on_ground])
    in_range = np.isfinite(depth) & (depth >= lidar.min_range_m) & (depth <= lidar.max_range_m)
    safe_depth = np.where(in_range, depth, 1.0)
    # Return strength: reflectivity, softened Lambertian incidence, inverse-square range.
    strength = reflectivity * (0.5 + 0.5 * cos_inc)
    snr = strength / 0.1 * (lidar.weak_return_range_m / safe_depth) ** 2
    p_return = snr * snr / (1.0 + snr * snr) * (1.0 - lidar.dropout)
    valid = in_range & (rng.random(grid.shape) < p_return)
    noisy = safe_depth + rng.normal(0.0, lidar.range_noise_m, grid.shape) if lidar.range_noise_m > 0 else safe_depth
    xyz = np.stack([noisy * grid.dx, noisy * grid.dy, noisy * grid.dz], axis=-1).astype(np.float32)
    intensity = strength * (1.0 + rng.normal(0.0, 0.1, grid.shape)) + rng.normal(0.0, lidar.intensity_noise, grid.shape)
    intensity = np.clip(intensity, 0.0, 1.0).astype(np.float32)
    return Scan(grid, xyz, intensity, valid, owner)
