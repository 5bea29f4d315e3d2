"""INT8 fake quantization with TensorRT semantics: symmetric, zero-point 0, scale = amax / 127.

Weights are quantized per output channel to [-127, 127] (TensorRT's weight range), activations per tensor to
[-128, 127] (what QuantizeLinear to int8 produces). Rounding uses a straight-through estimator, so gradients flow to
the input (zero where it was clipped) and to amax (learned step sizes), as in LSQ.
"""

from __future__ import annotations

import torch
from torch import nn

WEIGHT_RANGE = (-127, 127)
ACTIVATION_RANGE = (-128, 127)
QMAX = 127  # scale = amax / QMAX in both cases, so a symmetric grid maps to int8 exactly
_MIN_AMAX = 1e-8  # an all-zero tensor still gets a usable (tiny) scale


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (half to even, as QuantizeLinear), gradient of the identity."""
    return x + (torch.round(x) - x).detach()


def broadcast_along(values: torch.Tensor, axis: int | None, ndim: int) -> torch.Tensor:
    """Shape a per-channel vector to broadcast along `axis` of an ndim tensor (a scalar stays a scalar)."""
    if axis is None:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def scale_of(amax: torch.Tensor) -> torch.Tensor:
    return amax.clamp(min=_MIN_AMAX) / QMAX


def fake_quantize(x: torch.Tensor, amax: torch.Tensor, qrange: tuple[int, int],
                  axis: int | None = None) -> torch.Tensor:
    """Quantize-dequantize `x` on the symmetric grid of `amax` (a scalar, or one value per channel along `axis`)."""
    scale = broadcast_along(scale_of(amax), axis, x.dim())
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
        return torch.clamp(round_ste(x / scale), *qrange) * scale
    # Without a graph: the same values (round_ste's forward is exactly round), in place on one fresh tensor. The
    # calibration passes and grid search spend a third of their time here.
    return (x / scale).round_().clamp_(*qrange).mul_(scale)


def quantize_to_int(x: torch.Tensor, amax: torch.Tensor, qrange: tuple[int, int], axis: int | None = None):
    """The integer codes (int8 values) of `x`, for export and for checking that weights sit on the grid."""
    scale = broadcast_along(scale_of(amax), axis, x.dim())
    return torch.clamp(torch.round(x / scale), *qrange).to(torch.int8)


class TensorQuantizer(nn.Module):
    """Holds amax (a parameter, frozen unless step sizes are learned) and fake-quantizes its input when enabled.

    `axis` None: per tensor (activations). An int: per channel along that axis, `channels` values (weights).
    Adaptive rounding (weights only): `enable_adaptive_rounding` adds per-element rounding logits; `hard_rounding`
    then decides up/down exactly, and `bake` writes the rounded values back (see quant/adaround.py).
    """

    def __init__(self, axis: int | None = None, channels: int = 1, qrange: tuple[int, int] = ACTIVATION_RANGE):
        super().__init__()
        self.axis = axis
        self.qrange = tuple(qrange)
        shape = () if axis is None else (int(channels),)
        self.amax = nn.Parameter(torch.full(shape, float("nan")), requires_grad=False)
        self.enabled = True
        self.rounding = None  # an AdaRound state (quant/adaround.py) while weights are being reconstructed
        self.drop_prob = 0.0  # QDrop: during reconstruction, this fraction of elements passes unquantized
        self.export_mode = False  # torch's fake-quant ops, which ONNX export turns into QuantizeLinear/DequantizeLinear

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.amax).all())

    def set_amax(self, amax) -> None:
        value = torch.as_tensor(amax, dtype=self.amax.dtype, device=self.amax.device).reshape(self.amax.shape)
        if not torch.isfinite(value).all() or (value < 0).any():
            raise ValueError(f"amax must be finite and >= 0, got {value}")
        with torch.no_grad():
            self.amax.copy_(value.clamp(min=_MIN_AMAX))

    @property
    def scale(self) -> torch.Tensor:
        return scale_of(self.amax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if not self.calibrated:
            raise RuntimeError("quantizer used before calibration (amax unset)")
        if self.rounding is not None:
            return self.rounding(x, self.amax)
        if self.export_mode:
            return self._export_forward(x)
        quantized = fake_quantize(x, self.amax, self.qrange, self.axis)
        if self.drop_prob > 0:
            return torch.where(torch.rand_like(x) < self.drop_prob, x, quantized)
        return quantized

    def _export_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same numbers through torch's fake-quant ops, so ONNX export emits Q/DQ pairs (zero-point 0, int8). ONNX
        int8 is [-128, 127]; weights already sit on [-127, 127], so the wider clamp changes nothing for them."""
        # Scales as fresh constants, not arithmetic on the amax parameter, so the graph holds plain numbers.
        scale = torch.tensor(self.scale.detach().cpu().tolist(), dtype=torch.float32, device=x.device)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, float(scale), 0, -128, 127)
        zero_point = torch.zeros(scale.shape, dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, self.axis, -128, 127)

    def extra_repr(self) -> str:
        kind = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        return f"{kind}, range={self.qrange}, enabled={self.enabled}"


def weight_quantizer_for(weight: torch.Tensor, axis: int) -> TensorQuantizer:
    """A per-output-channel weight quantizer initialised to each channel's max |w| (max calibration of weights)."""
    quantizer = TensorQuantizer(axis=axis, channels=weight.shape[axis], qrange=WEIGHT_RANGE).to(weight.device)
    dims = [d for d in range(weight.dim()) if d != axis]
    quantizer.set_amax(weight.detach().abs().amax(dim=dims))
    return quantizer
