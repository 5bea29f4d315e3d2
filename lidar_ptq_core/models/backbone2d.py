"""BaseBEVBackbone: strided 2D conv blocks, each brought back to a common resolution by a deblock, concatenated."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class BaseBEVBackbone(nn.Module):
    """blocks[i]: ZeroPad2d(1), 3x3 conv with stride layer_strides[i], BN, ReLU, then layer_nums[i] x (3x3 conv,
    BN, ReLU). deblocks[i]: ConvTranspose2d (upsample stride >= 1) or a strided conv (stride < 1), BN, ReLU.
    A last extra upsample stride adds one deblock after the concatenation."""

    def __init__(
        self,
        input_channels: int,
        layer_nums: Sequence[int],
        layer_strides: Sequence[int],
        num_filters: Sequence[int],
        upsample_strides: Sequence[float] = (),
        num_upsample_filters: Sequence[int] = (),
    ):
        super().__init__()
        in_channels = [input_channels, *num_filters[:-1]]
        self.blocks = nn.ModuleList()
        self.deblocks = nn.ModuleList()
        for level, (repeats, stride, width) in enumerate(zip(layer_nums, layer_strides, num_filters)):
            layers = [
                nn.ZeroPad2d(1),
                nn.Conv2d(in_channels[level], width, 3, stride=stride, padding=0, bias=False),
                _bn(width),
                nn.ReLU(),
            ]
            for _ in range(repeats):
                layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), _bn(width), nn.ReLU()]
            self.blocks.append(nn.Sequential(*layers))
            if upsample_strides:
                self.deblocks.append(self._resample(width, num_upsample_filters[level], upsample_strides[level]))
        levels = len(layer_nums)
        concat_channels = sum(num_upsample_filters[:levels]) if upsample_strides else sum(num_filters)
        if len(upsample_strides) > levels:
            self.deblocks.append(self._resample(concat_channels, concat_channels, upsample_strides[-1]))
        self.out_channels = concat_channels

    @staticmethod
    def _resample(in_channels: int, out_channels: int, stride: float) -> nn.Sequential:
        if stride >= 1:
            conv = nn.ConvTranspose2d(in_channels, out_channels, int(stride), stride=int(stride), bias=False)
        else:
            k = round(1 / stride)
            conv = nn.Conv2d(in_channels, out_channels, k, stride=k, bias=False)
        return nn.Sequential(conv, _bn(out_channels), nn.ReLU())

    def forward(self, spatial_features: torch.Tensor) -> torch.Tensor:
        x = spatial_features
        outputs = []
        for level, block in enumerate(self.blocks):
            x = block(x)
            outputs.append(self.deblocks[level](x) if len(self.deblocks) else x)
        x = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
        if len(self.deblocks) > len(self.blocks):
            x = self.deblocks[-1](x)
        return x
