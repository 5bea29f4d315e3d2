"""Voxel feature encoders: the points of each voxel -> one feature vector per voxel (OpenPCDet names and layout)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class PFNLayer(nn.Module):
    """Pointwise Linear + BatchNorm + ReLU, then max over the points of the pillar. All but the last layer output
    half their channels per point and concatenate the pillar max back onto every point."""

    def __init__(self, in_channels: int, out_channels: int, use_norm: bool = True, last_layer: bool = False):
        super().__init__()
        self.last_layer = last_layer
        per_point = out_channels if last_layer else out_channels // 2
        self.linear = nn.Linear(in_channels, per_point, bias=not use_norm)
        self.norm = nn.BatchNorm1d(per_point, eps=1e-3, momentum=0.01) if use_norm else None
        self.relu = nn.ReLU()  # a module, not torch.relu, so every activation can carry its own quantizer

    def layer_norms(self) -> list[tuple[str, str]]:
        """(layer, the BatchNorm applied right after it): the wiring its forward() codes (models/topology.py)."""
        return [("linear", "norm")] if self.norm is not None else []

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """points (M, P, C_in) -> (M, C_out) for the last layer, else (M, P, C_out)."""
        x = self.linear(points)
        if self.norm is not None:
            num_voxels, num_points, channels = x.shape
            x = self.norm(x.reshape(-1, channels)).reshape(num_voxels, num_points, channels)
        x = self.relu(x)
        pillar_max = x.max(dim=1, keepdim=True).values
        if self.last_layer:
            return pillar_max.squeeze(1)
        return torch.cat([x, pillar_max.expand_as(x)], dim=2)


class PillarVFE(nn.Module):
    """Per-point input: the point's own features (x, y, z, intensity, ...), its offset to the mean of its pillar's
    points, its offset to the pillar centre [and its distance from the sensor]. Padded point slots are zeroed before
    the PFN layers, as OpenPCDet does, so an imported OpenPCDet checkpoint computes the same features."""

    def __init__(
        self,
        num_point_features: int,
        voxel_size: Sequence[float],
        point_cloud_range: Sequence[float],
        num_filters: Sequence[int] = (64, 64),
        with_distance: bool = False,
        use_absolute_xyz: bool = True,
        use_norm: bool = True,
    ):
        super().__init__()
        self.with_distance = with_distance
        self.use_absolute_xyz = use_absolute_xyz
        in_channels = num_point_features + (6 if use_absolute_xyz else 3) + (1 if with_distance else 0)
        widths = [in_channels, *num_filters]
        self.pfn_layers = nn.ModuleList(
            PFNLayer(widths[i], widths[i + 1], use_norm, last_layer=i == len(num_filters) - 1)
            for i in range(len(num_filters))
        )
        self.out_channels = int(num_filters[-1])
        # Centre of voxel (0, 0, 0); buffers would land in the state_dict and break OpenPCDet key parity.
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.first_centre = tuple(float(point_cloud_range[i]) + self.voxel_size[i] / 2 for i in range(3))

    def forward(self, voxels: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """voxels (M, P, C) zero padded, num_points (M,), coords (M, 4) as (batch, z, y, x) -> (M, out_channels)."""
        xyz = voxels[:, :, :3]
        count = num_points.to(voxels.dtype).clamp(min=1).view(-1, 1, 1)
        offset_to_mean = xyz - xyz.sum(dim=1, keepdim=True) / count
        # coords are (batch, z, y, x); flip to x, y, z to line up with the point columns.
        cell = coords[:, [3, 2, 1]].to(voxels.dtype)
        size = voxels.new_tensor(self.voxel_size)
        centre = cell * size + voxels.new_tensor(self.first_centre)
        offset_to_centre = xyz - centre.unsqueeze(1)

        own = voxels if self.use_absolute_xyz else voxels[:, :, 3:]
        parts = [own, offset_to_mean, offset_to_centre]
        if self.with_distance:
            parts.append(xyz.norm(dim=2, keepdim=True))
        features = torch.cat(parts, dim=2)
        slots = torch.arange(voxels.shape[1], device=voxels.device)
        valid = (slots.view(1, -1) < num_points.view(-1, 1)).unsqueeze(2)
        features = features * valid.to(features.dtype)
        for layer in self.pfn_layers:
            features = layer(features)
        return features


class MeanVFE(nn.Module):
    """The mean of each voxel's points (padded slots are zero, so summing and dividing by the count is exact)."""

    def __init__(self, num_point_features: int):
        super().__init__()
        self.out_channels = int(num_point_features)

    def forward(self, voxels: torch.Tensor, num_points: torch.Tensor) -> torch.Tensor:
        count = num_points.to(voxels.dtype).clamp(min=1).view(-1, 1)
        return (voxels.sum(dim=1) / count).contiguous()
