"""The CenterPoint network (pillar or voxel) and its builder.

`CenterPoint(batch)` takes the dict of lidar_ptq_core.voxelize.collate_voxels and returns the raw head outputs,
one dict per task; it never decodes, so the whole network stays a plain torch module for export and quantization.
Submodule names are OpenPCDet's (vfe, backbone_3d, map_to_bev_module, backbone_2d, dense_head, plus the global_step
buffer), so an OpenPCDet CenterPoint `model_state` loads with strict=True.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..decode import HeadGeometry
from .backbone2d import BaseBEVBackbone
from .config import CenterPointConfig, PillarVFEConfig, load_model_config
from .head import CenterHead
from .map_to_bev import HeightCompression, PointPillarScatter
from .vfe import MeanVFE, PillarVFE


def sparse_conv_algo_for(device: torch.device | str):
    """spconv ConvAlgo for sparse convs on `device`: Native on CPU (implicit GEMM asserts there), None (spconv's
    default, implicit GEMM) on CUDA."""
    if torch.device(device).type == "cuda":
        return None
    import spconv.pytorch as spconv

    return spconv.ConvAlgo.Native


class CenterPoint(nn.Module):
    def __init__(self, config: CenterPointConfig, sparse_conv_algo=None):
        """`sparse_conv_algo` only matters for the voxel model; see sparse_conv_algo_for and build_centerpoint."""
        super().__init__()
        self.config = config
        vox = config.voxelization
        # OpenPCDet's training-step counter; kept so its checkpoints load strictly. Unused here.
        self.register_buffer("global_step", torch.zeros(1, dtype=torch.long))

        if isinstance(config.vfe, PillarVFEConfig):
            self.vfe = PillarVFE(
                config.num_point_features,
                vox.voxel_size,
                vox.point_cloud_range,
                num_filters=config.vfe.num_filters,
                with_distance=config.vfe.with_distance,
                use_absolute_xyz=config.vfe.use_absolute_xyz,
                use_norm=config.vfe.use_norm,
            )
            self.backbone_3d = None
            self.map_to_bev_module = PointPillarScatter(config.map_to_bev.num_bev_features, vox.grid_size)
        else:
            from .backbone3d import VoxelResBackBone8x  # spconv only for voxel models

            bb = config.backbone_3d
            self.vfe = MeanVFE(config.num_point_features)
            self.backbone_3d = VoxelResBackBone8x(
                config.num_point_features,
                config.sparse_shape,
                channels=bb.channels,
                num_res_blocks=bb.num_res_blocks,
                out_channels=bb.out_channels,
                last_pad=bb.last_pad,
                algo=sparse_conv_algo,
            )
            self.map_to_bev_module = HeightCompression(config.map_to_bev.num_bev_features)

        b2d = config.backbone_2d
        self.backbone_2d = BaseBEVBackbone(
            config.map_to_bev.num_bev_features,
            b2d.layer_nums,
            b2d.layer_strides,
            b2d.num_filters,
            b2d.upsample_strides,
            b2d.num_upsample_filters,
        )
        head = config.dense_head
        self.dense_head = CenterHead(
            self.backbone_2d.out_channels,
            head.class_names_each_head,
            {name: (spec.out_channels, spec.num_conv) for name, spec in head.head_dict.items()},
            shared_conv_channel=head.shared_conv_channel,
            num_hm_conv=head.num_hm_conv,
            use_bias_before_norm=head.use_bias_before_norm,
            init_bias=head.init_bias,
        )

    @property
    def head_geometry(self) -> HeadGeometry:
        return self.config.head_geometry()

    # The forward pass is a chain of named stages that can be called (calibration, export) or replaced one at a time:
    #   encode: voxels -> per-pillar features (pillar) or the sparse 3D backbone's output (voxel)
    #   to_bev: encoded features -> dense BEV map (B, num_bev_features, H, W)
    #   dense:  BEV map -> head outputs (backbone_2d + dense_head)

    def encode(self, batch: dict):
        """Pillar model: (M, C) pillar features. Voxel model: the sparse backbone's SparseConvTensor, or None for a
        batch without any voxel (spconv rejects empty inputs)."""
        voxels, num_points = batch["voxels"], batch["voxel_num_points"]
        coords, batch_size = batch["voxel_coords"], int(batch["batch_size"])
        if self.backbone_3d is None:
            return self.vfe(voxels, num_points, coords)
        if coords.shape[0] == 0:
            return None
        return self.backbone_3d(self.vfe(voxels, num_points), coords, batch_size)

    def to_bev(self, encoded, batch: dict) -> torch.Tensor:
        batch_size = int(batch["batch_size"])
        if self.backbone_3d is None:
            return self.map_to_bev_module(encoded, batch["voxel_coords"], batch_size)
        if encoded is None:  # an empty sparse map densifies to zeros anyway
            channels, height, width, _ = self.config.bev_input_geometry()
            return batch["voxels"].new_zeros(batch_size, channels, height, width)
        return self.map_to_bev_module(encoded)

    def dense(self, bev: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.dense_head(self.backbone_2d(bev))

    def bev_features(self, batch: dict) -> torch.Tensor:
        """Voxels -> dense BEV map entering backbone_2d, (B, num_bev_features, H, W)."""
        return self.to_bev(self.encode(batch), batch)

    def forward(self, batch: dict) -> list[dict[str, torch.Tensor]]:
        """Head outputs per task: {'hm': (B, classes, H, W) logits, 'center', 'center_z', 'dim', 'rot'[, 'vel']}."""
        return self.dense(self.to_bev(self.encode(batch), batch))


def build_centerpoint(
    config: CenterPointConfig | str | Path, device: torch.device | str = "cpu", sparse_conv_algo="auto"
) -> CenterPoint:
    """Build a CenterPoint on `device` from a config or a model YAML path. sparse_conv_algo "auto" picks spconv's
    algorithm from the device; pass a spconv ConvAlgo (or None for spconv's default) to override."""
    if not isinstance(config, CenterPointConfig):
        config = load_model_config(config)
    if isinstance(sparse_conv_algo, str) and sparse_conv_algo == "auto":
        # Pillar models never touch spconv (importing it takes seconds).
        sparse_conv_algo = sparse_conv_algo_for(device) if config.backbone_3d is not None else None
    return CenterPoint(config, sparse_conv_algo=sparse_conv_algo).to(device)
