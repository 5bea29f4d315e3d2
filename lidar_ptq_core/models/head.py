"""CenterHead: a shared 3x3 conv, then one SeparateHead per task predicting hm, center, center_z, dim, rot[, vel].

Outputs are raw: hm logits, centre offsets in cells, z in metres, log dimensions, the two rot channels. Decoding
lives in lidar_ptq_core.decode so every backend shares it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn


class SeparateHead(nn.Module):
    """One attribute group per entry of `heads` (name -> (out_channels, num_conv)): num_conv - 1 x (3x3 conv, BN,
    ReLU) then a 3x3 conv with bias. Submodules are named after the heads (hm, center, ...), as in OpenPCDet."""

    def __init__(self, channels: int, heads: Mapping[str, tuple[int, int]], init_bias: float, use_bias: bool):
        super().__init__()
        self.head_names = tuple(heads)
        for name, (out_channels, num_conv) in heads.items():
            layers: list[nn.Module] = [
                nn.Sequential(
                    nn.Conv2d(channels, channels, 3, padding=1, bias=use_bias), nn.BatchNorm2d(channels), nn.ReLU()
                )
                for _ in range(num_conv - 1)
            ]
            layers.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=True))
            branch = nn.Sequential(*layers)
            if name == "hm":
                nn.init.constant_(branch[-1].bias, init_bias)  # sigmoid(-2.19) ~ 0.1: focal loss starts stable
            else:
                for module in branch.modules():
                    if isinstance(module, nn.Conv2d):
                        nn.init.kaiming_normal_(module.weight)
                        if module.bias is not None:
                            nn.init.zeros_(module.bias)
            self.add_module(name, branch)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name)(x) for name in self.head_names}


class CenterHead(nn.Module):
    def __init__(
        self,
        input_channels: int,
        class_names_each_head: Sequence[Sequence[str]],
        head_dict: Mapping[str, tuple[int, int]],  # box heads: name -> (out_channels, num_conv)
        shared_conv_channel: int = 64,
        num_hm_conv: int = 2,
        use_bias_before_norm: bool = True,
        init_bias: float = -2.19,
    ):
        super().__init__()
        self.class_names_each_head = tuple(tuple(t) for t in class_names_each_head)
        self.shared_conv = nn.Sequential(
            nn.Conv2d(input_channels, shared_conv_channel, 3, padding=1, bias=use_bias_before_norm),
            nn.BatchNorm2d(shared_conv_channel),
            nn.ReLU(),
        )
        self.heads_list = nn.ModuleList()
        for task_classes in self.class_names_each_head:
            heads = {**dict(head_dict), "hm": (len(task_classes), num_hm_conv)}
            self.heads_list.append(SeparateHead(shared_conv_channel, heads, init_bias, use_bias_before_norm))

    def forward(self, bev_features: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        x = self.shared_conv(bev_features)
        return [head(x) for head in self.heads_list]
