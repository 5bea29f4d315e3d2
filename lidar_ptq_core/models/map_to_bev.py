"""Per-voxel or sparse features -> a dense bird's-eye-view map (B, C, ny, nx). Neither stage has parameters."""

from __future__ import annotations

import torch
from torch import nn


class PointPillarScatter(nn.Module):
    """Place each pillar's feature vector at its (y, x) cell of a zero canvas."""

    def __init__(self, num_bev_features: int, grid_size: tuple[int, int, int]):
        super().__init__()
        self.num_bev_features = int(num_bev_features)
        self.nx, self.ny, nz = (int(v) for v in grid_size)
        if nz != 1:
            raise ValueError(f"PointPillarScatter needs a grid one voxel deep, got {grid_size}")

    def forward(self, pillar_features: torch.Tensor, coords: torch.Tensor, batch_size: int,
                background: float = 0) -> torch.Tensor:
        """pillar_features (M, C), coords (M, 4) as (batch, z, y, x). batch_size comes from the batch, not from the
        coords, so trailing empty frames keep their (empty) canvas. `background` fills the empty cells: 0, or the
        code of 0 when the features are integer codes with a zero-point."""
        coords = coords.long()
        cell = coords[:, 2] * self.nx + coords[:, 3]
        canvas = pillar_features.new_full((batch_size, self.num_bev_features, self.ny * self.nx), background)
        # Written straight into (B, C, cells): no transposed copy of the whole canvas afterwards.
        canvas[coords[:, 0], :, cell] = pillar_features
        return canvas.view(batch_size, self.num_bev_features, self.ny, self.nx)


class HeightCompression(nn.Module):
    """Densify the sparse tensor and fold its z layers into channels: (B, C, D, H, W) -> (B, C * D, H, W)."""

    def __init__(self, num_bev_features: int):
        super().__init__()
        self.num_bev_features = int(num_bev_features)

    def forward(self, sparse_tensor) -> torch.Tensor:
        dense = sparse_tensor.dense()
        batch, channels, depth, height, width = dense.shape
        return dense.view(batch, channels * depth, height, width)
