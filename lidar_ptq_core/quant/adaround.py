"""Adaptive rounding: per-weight learnable up/down decisions, regularised to hard 0/1, then baked into the weights.

w_soft = s * clamp(floor(w / s) + h(alpha), qmin, qmax), h = rectified sigmoid (AdaRound's stretch zeta=1.1,
gamma=-0.1). alpha starts where h equals the fractional part of w / s, so the soft weight starts at the FP32 weight
and the hard decision (h >= 0.5) starts at round-to-nearest. The regulariser sum(1 - |2h - 1|^beta), with beta
annealed from high to low, pushes every h to 0 or 1; at the end rounding is made hard and the weight becomes exactly
an INT8 code times its scale.
"""

from __future__ import annotations

import torch
from torch import nn

from .quantizer import TensorQuantizer, broadcast_along, scale_of

ZETA, GAMMA = 1.1, -0.1


class AdaRound(nn.Module):
    def __init__(self, weight: torch.Tensor, amax: torch.Tensor, axis: int, qrange: tuple[int, int]):
        super().__init__()
        self.axis, self.qrange = axis, qrange
        scale = broadcast_along(scale_of(amax.detach()), axis, weight.dim())
        scaled = weight.detach() / scale
        self.register_buffer("floor", torch.floor(scaled))
        rest = (scaled - self.floor).clamp(1e-4, 1 - 1e-4)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.hard = False

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, weight: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
        scale = broadcast_along(scale_of(amax), self.axis, weight.dim())
        offset = (self.alpha >= 0).to(weight.dtype) if self.hard else self.h()
        return torch.clamp(self.floor + offset, *self.qrange) * scale

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()


def attach(quantizer: TensorQuantizer, weight: torch.Tensor) -> AdaRound:
    quantizer.rounding = AdaRound(weight, quantizer.amax, quantizer.axis, quantizer.qrange)
    return quantizer.rounding


@torch.no_grad()
def bake(quantizer: TensorQuantizer, weight: nn.Parameter) -> None:
    """Write the hard-rounded weight (INT8 code x scale) into `weight` and drop the rounding state."""
    rounding = quantizer.rounding
    rounding.hard = True
    weight.copy_(rounding(weight, quantizer.amax))
    quantizer.rounding = None


def beta_at(progress: float, beta: tuple[float, float], warmup: float) -> float | None:
    """None during warm-up (no regulariser), then beta decaying linearly from beta[0] to beta[1]."""
    if progress < warmup:
        return None
    t = (progress - warmup) / max(1 - warmup, 1e-9)
    return beta[0] + (beta[1] - beta[0]) * t
