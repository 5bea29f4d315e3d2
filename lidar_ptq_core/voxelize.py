"""Points -> pillars / voxels, shared by training, calibration and every inference backend.

A pillar is a voxel whose z extent covers the whole range (grid depth 1). Voxel coordinates are (z, y, x) grid
indices, the order OpenPCDet and spconv use. Everything is vectorized numpy and deterministic: voxels are kept in
order of their first point, points within a voxel in input order, so the same cloud always gives the same voxels.

No general sort on the way: each point finds the first point of its cell through a table (np.maximum.at), which
numbers the voxels, and one stable radix argsort by voxel number (uint16 keys, counting sort) gives each point its
place in its voxel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class VoxelConfig:
    point_cloud_range: tuple[float, float, float, float, float, float]  # x_min, y_min, z_min, x_max, y_max, z_max
    voxel_size: tuple[float, float, float]  # metres along x, y, z
    max_points_per_voxel: int
    max_voxels: int

    def __post_init__(self) -> None:
        pcr = tuple(float(v) for v in self.point_cloud_range)
        size = tuple(float(v) for v in self.voxel_size)
        if len(pcr) != 6 or not all(pcr[i] < pcr[i + 3] for i in range(3)):
            raise ValueError(f"point_cloud_range must be 6 numbers with min < max per axis, "
                             f"got {self.point_cloud_range}")
        if len(size) != 3 or not all(s > 0 for s in size):
            raise ValueError(f"voxel_size must be 3 positive numbers, got {self.voxel_size}")
        if int(self.max_points_per_voxel) < 1 or int(self.max_voxels) < 1:
            raise ValueError("max_points_per_voxel and max_voxels must be >= 1")
        object.__setattr__(self, "point_cloud_range", pcr)
        object.__setattr__(self, "voxel_size", size)
        object.__setattr__(self, "max_points_per_voxel", int(self.max_points_per_voxel))
        object.__setattr__(self, "max_voxels", int(self.max_voxels))

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Number of voxels along (x, y, z); the range must be a whole number of voxels."""
        pcr, size = self.point_cloud_range, self.voxel_size
        cells = [(pcr[i + 3] - pcr[i]) / size[i] for i in range(3)]
        rounded = [int(round(c)) for c in cells]
        if any(abs(c - r) > 1e-4 for c, r in zip(cells, rounded)):
            raise ValueError(f"point_cloud_range {pcr} is not a whole number of voxels of size {size}")
        return tuple(rounded)

    @classmethod
    def from_dict(cls, data: dict) -> "VoxelConfig":
        from .config_files import build_config

        return build_config(cls, data, "voxelization")


@dataclass(frozen=True)
class VoxelizeReport:
    """What happened to the input points; nothing is dropped silently."""

    num_input_points: int
    dropped_nonfinite: int
    dropped_out_of_range: int
    dropped_over_voxel_cap: int  # points whose voxel did not fit under max_voxels
    dropped_over_point_cap: int  # points beyond max_points_per_voxel in their voxel
    num_voxels: int
    voxels_over_cap: int  # occupied voxels discarded by max_voxels

    @property
    def num_kept_points(self) -> int:
        return (
            self.num_input_points
            - self.dropped_nonfinite
            - self.dropped_out_of_range
            - self.dropped_over_voxel_cap
            - self.dropped_over_point_cap
        )

    def summary(self) -> str:
        return (
            f"{self.num_input_points} points -> {self.num_voxels} voxels ({self.num_kept_points} points kept; dropped: "
            f"{self.dropped_nonfinite} non-finite, {self.dropped_out_of_range} out of range, "
            f"{self.dropped_over_voxel_cap} over max_voxels ({self.voxels_over_cap} voxels), "
            f"{self.dropped_over_point_cap} over max_points_per_voxel)"
        )


@dataclass
class Voxels:
    features: np.ndarray  # (M, max_points_per_voxel, C) float32, zero padded
    coords: np.ndarray  # (M, 3) int32 grid indices (z, y, x)
    num_points: np.ndarray  # (M,) int32, >= 1
    grid_size: tuple[int, int, int]  # (nx, ny, nz)
    report: VoxelizeReport = field(repr=False, default=None)

    def __len__(self) -> int:
        return len(self.coords)


# How each point finds the first point of its cell (see first_cell_mate): "auto" takes a dense int32 table indexed by
# cell for grids up to DENSE_TABLE_MAX_CELLS cells (pillar grids) and a hashed table of about 2 slots per point for
# larger ones (3D voxel grids have millions of cells); "sorting" needs no table. Tests force each method.
DENSE_TABLE_MAX_CELLS = 1 << 19
FIRST_CELL_MATE_METHOD = "auto"
_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: multiplicative hashing spreads grid patterns


def stable_argsort(keys: np.ndarray, upper: int) -> np.ndarray:
    """np.argsort(keys, kind="stable") for non-negative integer keys < `upper`, as an LSD radix sort: one stable
    argsort per 16-bit digit, where numpy sorts uint8 / uint16 keys by counting (linear time) rather than timsort."""
    order = None
    shift = 0
    while True:
        digit = keys if order is None else keys[order]
        if shift:
            digit = digit >> shift
        remaining = (upper - 1) >> shift  # the largest value this and the higher digits can take
        digit_type = np.uint8 if remaining < (1 << 8) else np.uint16
        if remaining >= (1 << 16):
            digit = digit & 0xFFFF
        step = np.argsort(digit.astype(digit_type), kind="stable")
        order = step if order is None else order[step]
        shift += 16
        if remaining < (1 << 16):
            return order


def _first_by_table(cells: np.ndarray, slots: np.ndarray, num_slots: int) -> np.ndarray:
    """For each point, the first point (input order) of its slot: table[slot] = n - (smallest index in the slot),
    the max of n - i over the slot's points; 0 marks an empty slot."""
    n = len(cells)
    table = np.zeros(num_slots, np.int32)
    np.maximum.at(table, slots, np.arange(n, 0, -1, dtype=np.int32))
    return n - table[slots].astype(np.intp)


def _first_by_sorting(cells: np.ndarray, num_cells: int) -> np.ndarray:
    """For each point, the first point (input order) of its cell, from a stable sort by cell."""
    n = len(cells)
    order = stable_argsort(cells, num_cells)
    sorted_cells = cells[order]
    new_cell = np.empty(n, bool)
    new_cell[:1] = True
    np.not_equal(sorted_cells[1:], sorted_cells[:-1], out=new_cell[1:])
    group = np.cumsum(new_cell) - 1
    # A stable sort keeps input order within a cell, so the first sorted point of a cell is its first point.
    first = np.empty(n, np.intp)
    first[order] = order[np.flatnonzero(new_cell)][group]
    return first


def first_cell_mate(cells: np.ndarray, num_cells: int, method: str | None = None) -> np.ndarray:
    """For each point, the index of the first point (in input order) with the same cell index (< num_cells)."""
    method = method or FIRST_CELL_MATE_METHOD
    if method == "auto":
        method = "dense" if num_cells <= DENSE_TABLE_MAX_CELLS else "hashed"
    if method == "dense":
        return _first_by_table(cells, cells, num_cells)
    if method == "sorting" or len(cells) == 0:
        return _first_by_sorting(cells, num_cells)
    if method != "hashed":
        raise ValueError(f"unknown first_cell_mate method {method!r}")
    bits = max(8, int(2 * len(cells) - 1).bit_length())
    slots = ((cells.astype(np.uint64) * _FIBONACCI) >> np.uint64(64 - bits)).astype(np.intp)
    first = _first_by_table(cells, slots, 1 << bits)
    # A slot's smallest index belongs to one of the cells hashed there, and that cell's points are done. The points
    # of the other cells sharing the slot see a first point of another cell: all points of those cells, sorted apart.
    lost = np.flatnonzero(cells[first] != cells)
    if len(lost):
        first[lost] = lost[_first_by_sorting(cells[lost], num_cells)]
    return first


def voxelize(points: np.ndarray, config: VoxelConfig) -> Voxels:
    """Group points (N, C >= 3, x y z first) into voxels of `config`."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must have shape (N, C>=3) with x, y, z first; got {points.shape}")
    points = points.astype(np.float32, copy=False)
    nx, ny, nz = config.grid_size
    num_input, channels = points.shape
    max_points = config.max_points_per_voxel

    if np.isfinite(points).all():
        finite = None
        num_finite = num_input
    else:
        finite = np.isfinite(points[:, 0])
        for c in range(1, channels):
            finite &= np.isfinite(points[:, c])
        num_finite = int(np.count_nonzero(finite))

    # Grid position t = (p - lower) / size in float64, one axis at a time. A point is in range when 0 <= t < cells,
    # which is the same as its index floor(t) lying in [0, cells): a point exactly on the upper edge (or rounding up
    # to it) is dropped, so no out-of-range index can escape. NaN / inf never pass these comparisons.
    lower, size = config.point_cloud_range[:3], config.voxel_size
    positions = []
    valid = finite
    for axis, cells in enumerate((nx, ny, nz)):
        t = points[:, axis].astype(np.float64)
        t -= lower[axis]
        t /= size[axis]
        positions.append(t)
        if valid is None:
            valid = t >= 0
        else:
            valid &= t >= 0
        valid &= t < cells
    point_index = np.flatnonzero(valid)  # the points that get a cell, in input order
    num_valid = len(point_index)

    # Linear cell index (z, y, x order); truncation is floor here since every t >= 0.
    top = 2 if nz > 1 else 1  # pillars: z index always 0
    cell = positions[top][point_index].astype(np.intp)
    for axis in range(top - 1, -1, -1):
        cell *= (nx, ny)[axis]
        cell += positions[axis][point_index].astype(np.intp)

    # Voxels are numbered in order of their first point: a point that is its cell's first point opens the next voxel.
    first = first_cell_mate(cell, nx * ny * nz)
    opens_voxel = first == np.arange(num_valid)
    first_points = np.flatnonzero(opens_voxel)
    num_occupied = len(first_points)
    num_voxels = min(num_occupied, config.max_voxels)
    voxel_number = np.cumsum(opens_voxel)
    voxel_number -= 1
    voxel_of_point = voxel_number[first]

    if num_occupied > num_voxels:
        kept = np.flatnonzero(voxel_of_point < num_voxels)
        voxel_of_point, point_index = voxel_of_point[kept], point_index[kept]
    dropped_voxel_cap = num_valid - len(point_index)

    # Position of each point inside its voxel, in input order: a stable sort by voxel keeps input order within one.
    counts = np.bincount(voxel_of_point, minlength=num_voxels)
    order = stable_argsort(voxel_of_point, num_voxels) if num_voxels else np.zeros(0, np.intp)
    sorted_voxels = voxel_of_point[order]
    starts = np.cumsum(counts) - counts
    slot = np.arange(len(order)) - starts[sorted_voxels]
    if num_voxels and counts.max() > max_points:
        fits = np.flatnonzero(slot < max_points)
        order, sorted_voxels, slot = order[fits], sorted_voxels[fits], slot[fits]
    num_kept = len(order)

    features = np.zeros((num_voxels, max_points, channels), np.float32)
    rows = sorted_voxels * max_points
    rows += slot
    features.reshape(-1, channels)[rows] = points.take(point_index[order], axis=0)
    kept_cells = cell[first_points[:num_voxels]]
    coords = np.empty((num_voxels, 3), np.int32)
    coords[:, 0] = kept_cells // (nx * ny)
    coords[:, 1] = (kept_cells // nx) % ny
    coords[:, 2] = kept_cells % nx

    report = VoxelizeReport(
        num_input_points=num_input,
        dropped_nonfinite=num_input - num_finite,
        dropped_out_of_range=num_finite - num_valid,
        dropped_over_voxel_cap=dropped_voxel_cap,
        dropped_over_point_cap=len(point_index) - num_kept,
        num_voxels=num_voxels,
        voxels_over_cap=num_occupied - num_voxels,
    )
    return Voxels(
        features=features,
        coords=coords,
        num_points=np.minimum(counts, max_points).astype(np.int32),
        grid_size=(nx, ny, nz),
        report=report,
    )


def stack_voxels(batch: list[Voxels]) -> dict:
    """Stack per-frame voxels into the batch dict the models take (OpenPCDet's names), as numpy arrays:
    voxels (M, P, C) float32, voxel_num_points (M,) int32, voxel_coords (M, 4) int32 as (batch, z, y, x), batch_size."""
    if not batch:
        raise ValueError("stacking voxels needs at least one frame")
    coords = [np.concatenate([np.full((len(v), 1), i, np.int32), v.coords], axis=1) for i, v in enumerate(batch)]
    return {
        "voxels": np.concatenate([v.features for v in batch], axis=0),
        "voxel_num_points": np.concatenate([v.num_points for v in batch], axis=0),
        "voxel_coords": np.concatenate(coords, axis=0),
        "batch_size": len(batch),
    }


def collate_voxels(batch: list[Voxels]) -> dict:
    """stack_voxels as torch tensors (shared memory, no copy)."""
    import torch  # local: the rest of this module stays numpy-only

    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in stack_voxels(batch).items()}


def voxelize_clouds(clouds, config: VoxelConfig, num_point_features: int,
                    as_numpy: bool = False) -> tuple[dict, list[VoxelizeReport]]:
    """Clouds (each (N, >= num_point_features), x, y, z, intensity first) -> one collated batch and the voxelization
    report of each cloud: the one path from points to network input for inference, training and calibration.
    `as_numpy`: the batch holds numpy arrays (stack_voxels; the torch-free runtime) instead of torch tensors."""
    frames = []
    for points in clouds:
        points = np.asarray(points, np.float32)
        if points.ndim != 2 or points.shape[1] < num_point_features:
            raise ValueError(
                f"points must be (N, >= {num_point_features}) x, y, z, intensity...; got {points.shape}"
            )
        frames.append(voxelize(points[:, :num_point_features], config))
    return (stack_voxels(frames) if as_numpy else collate_voxels(frames)), [frame.report for frame in frames]
