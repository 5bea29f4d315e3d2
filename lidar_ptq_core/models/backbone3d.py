"""VoxelResBackBone8x: the sparse 3D convolution backbone of CenterPoint-Voxel (spconv 2.x, OpenPCDet layout).

Weights are spconv 2.x KRSC: (out_channels, kz, ky, kx, in_channels). `algo` is spconv's ConvAlgo for every
sparse conv: ConvAlgo.Native on CPU (spconv's implicit GEMM asserts on CPU tensors), None for spconv's default on
CUDA. The builder picks it from the device.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import spconv.pytorch as spconv
import torch
from torch import nn

_norm = partial(nn.BatchNorm1d, eps=1e-3, momentum=0.01)


def _algo_kwargs(algo) -> dict:
    return {} if algo is None else {"algo": algo}


class SubMConv3d(spconv.SubMConv3d):
    """spconv.SubMConv3d that adds its bias after the sparse conv on CPU tensors: at inference spconv fuses the bias
    into the kernel, which its CPU kernels reject ("bias and act don't support cpu"). Same math, same state_dict;
    CUDA tensors take spconv's own (fused) path."""

    def forward(self, input: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        if self.bias is None or not input.features.is_cpu:
            return super().forward(input)
        # spconv 2.3's internal entry point; its `training` flag only selects fused vs separate bias on this path.
        out = self._conv_forward(
            self.training, input, self.weight, None, name=self.name, sparse_unique_name=self._sparse_unique_name
        )
        return out.replace_feature(out.features + self.bias)


def subm_conv(in_channels, out_channels, indice_key, algo, bias=False):
    return SubMConv3d(
        in_channels, out_channels, 3, padding=1, bias=bias, indice_key=indice_key, **_algo_kwargs(algo)
    )


def conv_bn_relu(conv: nn.Module, out_channels: int) -> spconv.SparseSequential:
    """OpenPCDet's post_act_block layout: keys <i>.0 conv, <i>.1 norm."""
    return spconv.SparseSequential(conv, _norm(out_channels), nn.ReLU())


def _replace_features(x: spconv.SparseConvTensor, features: torch.Tensor) -> spconv.SparseConvTensor:
    return x.replace_feature(features)


class ResidualAdd(nn.Module):
    """The skip connection's sum as a module of its own: a quantizer can sit on it (TensorRT wants one scale for
    both inputs of an add)."""

    def forward(self, residual: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return residual + skip


class SparseBasicBlock(spconv.SparseModule):
    """Residual block of two 3x3x3 submanifold convs (with bias, as OpenPCDet builds them) + BN, identity skip.
    Each activation is its own module (relu1, relu2, add) so quantizers can be attached to each."""

    def __init__(self, channels: int, indice_key: str, algo=None):
        super().__init__()
        self.conv1 = subm_conv(channels, channels, indice_key, algo, bias=True)
        self.bn1 = _norm(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = subm_conv(channels, channels, indice_key, algo, bias=True)
        self.bn2 = _norm(channels)
        self.add = ResidualAdd()
        self.relu2 = nn.ReLU()

    def layer_norms(self) -> list[tuple[str, str]]:
        """(layer, the BatchNorm applied right after it): the wiring its forward() codes (models/topology.py)."""
        return [("conv1", "bn1"), ("conv2", "bn2")]

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        out = self.conv1(x)
        out = _replace_features(out, self.relu1(self.bn1(out.features)))
        out = self.conv2(out)
        out = _replace_features(out, self.relu2(self.add(self.bn2(out.features), x.features)))
        return out


class VoxelResBackBone8x(nn.Module):
    """conv_input (subm) -> conv1 (res blocks) -> conv2..conv4 (stride-2 sparse conv + res blocks) -> conv_out
    (stride 2 along z only). Output: sparse tensor at 1/8 of the x, y grid."""

    def __init__(
        self,
        input_channels: int,
        sparse_shape: Sequence[int],
        channels: Sequence[int] = (16, 32, 64, 128),
        num_res_blocks: Sequence[int] = (2, 2, 2, 2),
        out_channels: int = 128,
        last_pad: int = 0,
        algo=None,
    ):
        super().__init__()
        self.sparse_shape = [int(v) for v in sparse_shape]  # (z, y, x)
        self.algo = algo
        c1, c2, c3, c4 = (int(c) for c in channels)
        self.conv_input = conv_bn_relu(subm_conv(input_channels, c1, "subm1", algo), c1)
        self.conv1 = spconv.SparseSequential(*(SparseBasicBlock(c1, "res1", algo) for _ in range(num_res_blocks[0])))
        self.conv2 = self._down_stage(c1, c2, num_res_blocks[1], 1, "2")
        self.conv3 = self._down_stage(c2, c3, num_res_blocks[2], 1, "3")
        self.conv4 = self._down_stage(c3, c4, num_res_blocks[3], (0, 1, 1), "4")  # z unpadded: shrinks the height
        self.conv_out = conv_bn_relu(
            spconv.SparseConv3d(
                c4, out_channels, (3, 1, 1), stride=(2, 1, 1), padding=last_pad, bias=False,
                indice_key="spconv_down2", **_algo_kwargs(algo),
            ),
            out_channels,
        )
        self.out_channels = int(out_channels)

    def _down_stage(self, in_channels, out_channels, num_blocks, padding, level: str) -> spconv.SparseSequential:
        down = spconv.SparseConv3d(
            in_channels, out_channels, 3, stride=2, padding=padding, bias=False, indice_key=f"spconv{level}",
            **_algo_kwargs(self.algo),
        )
        blocks = (SparseBasicBlock(out_channels, f"res{level}", self.algo) for _ in range(num_blocks))
        return spconv.SparseSequential(conv_bn_relu(down, out_channels), *blocks)

    def forward(self, voxel_features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> spconv.SparseConvTensor:
        """voxel_features (M, C), coords (M, 4) int as (batch, z, y, x)."""
        x = spconv.SparseConvTensor(voxel_features, coords.int(), self.sparse_shape, batch_size)
        x = self.conv_input(x)
        for stage in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv_out):
            x = stage(x)
        return x
