"""Points -> pillars / voxels, shared by training, calibration and every inference backend.

A pillar is a voxel whose z extent covers the whole range (grid depth 1). Voxel coordinates are (z, y, x) grid
indices, the order OpenPCDet and spconv use. Everything is vectorized numpy and deterministic: voxels are kept in
order of their first point, points within a voxel in input order, so the same cloud always gives the same voxels.
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
            raise ValueError(f"point_cloud_range must be 6 numbers with min < max per axis, got {self.point_cloud_range}")
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


def voxelize(points: np.ndarray, config: VoxelConfig) -> Voxels:
    """Group points (N, C >= 3, x y z first) into voxels of `config`."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must have shape (N, C>=3) with x, y, z first; got {points.shape}")
    points = points.astype(np.float32, copy=False)
    nx, ny, nz = config.grid_size
    num_input = len(points)

    finite = np.isfinite(points).all(axis=1)
    pts = points[finite]
    # Index in float64 and test the index, not the coordinate: a point exactly on the upper edge (or rounding up to
    # it) gets index == grid size and is dropped, so no out-of-range index can escape.
    lower = np.asarray(config.point_cloud_range[:3], np.float64)
    size = np.asarray(config.voxel_size, np.float64)
    idx = np.floor((pts[:, :3].astype(np.float64) - lower) / size).astype(np.int64)
    in_range = ((idx >= 0) & (idx < np.array([nx, ny, nz]))).all(axis=1)
    pts, idx = pts[in_range], idx[in_range]

    linear = (idx[:, 2] * ny + idx[:, 1]) * nx + idx[:, 0]
    unique_ids, first_index, inverse = np.unique(linear, return_index=True, return_inverse=True)
    # Renumber voxels by first appearance so the result follows the input order, not the grid order.
    order_of_unique = np.argsort(first_index, kind="stable")
    rank_of_unique = np.empty_like(order_of_unique)
    rank_of_unique[order_of_unique] = np.arange(len(order_of_unique))
    voxel_of_point = rank_of_unique[inverse]
    num_occupied = len(unique_ids)
    num_voxels = min(num_occupied, config.max_voxels)

    keep_voxel = voxel_of_point < num_voxels
    dropped_voxel_cap = int((~keep_voxel).sum())
    pts, voxel_of_point = pts[keep_voxel], voxel_of_point[keep_voxel]

    # Position of each point inside its voxel, in input order.
    point_order = np.argsort(voxel_of_point, kind="stable")
    sorted_voxels = voxel_of_point[point_order]
    counts = np.bincount(sorted_voxels, minlength=num_voxels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if num_voxels else np.zeros(0, np.int64)
    slot_sorted = np.arange(len(sorted_voxels)) - starts[sorted_voxels] if len(sorted_voxels) else sorted_voxels
    slot = np.empty_like(slot_sorted)
    slot[point_order] = slot_sorted
    fits = slot < config.max_points_per_voxel

    features = np.zeros((num_voxels, config.max_points_per_voxel, points.shape[1]), np.float32)
    features[voxel_of_point[fits], slot[fits]] = pts[fits]
    kept_linear = unique_ids[order_of_unique[:num_voxels]]
    coords = np.stack([kept_linear // (nx * ny), (kept_linear // nx) % ny, kept_linear % nx], axis=1).astype(np.int32)

    report = VoxelizeReport(
        num_input_points=num_input,
        dropped_nonfinite=int((~finite).sum()),
        dropped_out_of_range=int((~in_range).sum()),
        dropped_over_voxel_cap=dropped_voxel_cap,
        dropped_over_point_cap=int((~fits).sum()),
        num_voxels=num_voxels,
        voxels_over_cap=num_occupied - num_voxels,
    )
    return Voxels(
        features=features,
        coords=coords.reshape(-1, 3),
        num_points=np.minimum(counts, config.max_points_per_voxel).astype(np.int32),
        grid_size=(nx, ny, nz),
        report=report,
    )


def collate_voxels(batch: list[Voxels]) -> dict:
    """Stack per-frame voxels into the batch dict the models take (OpenPCDet's names):
    voxels (M, P, C) float32, voxel_num_points (M,) int32, voxel_coords (M, 4) int32 as (batch, z, y, x), batch_size."""
    import torch  # local: the rest of this module stays numpy-only

    if not batch:
        raise ValueError("collate_voxels needs at least one frame")
    coords = [np.concatenate([np.full((len(v), 1), i, np.int32), v.coords], axis=1) for i, v in enumerate(batch)]
    return {
        "voxels": torch.from_numpy(np.concatenate([v.features for v in batch], axis=0)),
        "voxel_num_points": torch.from_numpy(np.concatenate([v.num_points for v in batch], axis=0)),
        "voxel_coords": torch.from_numpy(np.concatenate(coords, axis=0)),
        "batch_size": len(batch),
    }


def voxelize_clouds(clouds, config: VoxelConfig, num_point_features: int) -> tuple[dict, list[VoxelizeReport]]:
    """Clouds (each (N, >= num_point_features), x, y, z, intensity first) -> one collated batch and the voxelization
    report of each cloud: the one path from points to network input for inference, training and calibration."""
    frames = []
    for points in clouds:
        points = np.asarray(points, np.float32)
        if points.ndim != 2 or points.shape[1] < num_point_features:
            raise ValueError(
                f"points must be (N, >= {num_point_features}) x, y, z, intensity...; got {points.shape}"
            )
        frames.append(voxelize(points[:, :num_point_features], config))
    return collate_voxels(frames), [frame.report for frame in frames]
