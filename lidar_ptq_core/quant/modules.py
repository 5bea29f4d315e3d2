"""Quantized wrappers: a weighted layer (Linear, Conv2d, ConvTranspose2d; spconv convs in sparse.py) with an input
quantizer (per tensor) and a weight quantizer (per output channel), and the residual add with one quantizer shared
by both inputs (TensorRT requires one scale there).

Every wrapper can also report its input to an observer during calibration: the tensor, the axis of its channels,
and whether every site counts as non-empty. A site is one position along the other axes (a BEV cell, a point slot,
a sparse voxel) and it is empty when all its channels are exactly zero (the scatter canvas, padded point slots);
the active voxels of a sparse tensor are all non-empty. Sparsity-based calibration looks at non-empty sites only;
the naive calibrators see them all (quant/calibrators.py ActivationStatistics.observe).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .fold import input_channel_axis, output_channel_axis
from .quantizer import TensorQuantizer, weight_quantizer_for

Observer = Callable[[nn.Module, torch.Tensor, int, bool], None]  # (wrapper, values, channel axis, all sites active)


def _rows_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class QuantLayer(nn.Module):
    """Wraps `layer` (kept as .layer, BN already folded in). forward = layer(Q(x / input_channel_scale), Q(w))."""

    channels_last = False  # layout of the input: channels at dim 1 (convs) or last (Linear, sparse features)

    def __init__(self, layer: nn.Module, input_channel_scaling: bool = False):
        super().__init__()
        self.layer = layer
        self.input_quantizer = TensorQuantizer()
        self.weight_quantizer = weight_quantizer_for(layer.weight, output_channel_axis(layer))
        self.observer: Observer | None = None
        # The quantized weight computed once, while neither weights nor their scales change (the grid search
        # re-runs a layer at many input clips); None: quantize on every call.
        self.frozen_weight: torch.Tensor | None = None
        # FP32 weights with an INT8 input (QuantConfig.output_layers_int8_input); set from the layout by prepare().
        self.float_weight = False
        in_channels = layer.weight.shape[input_channel_axis(layer)]
        # Per-channel input scale folded into the weights (first layers: metres beside centimetres), see
        # quant/calibrate.py apply_input_channel_scaling. Exact in FP32: x / s times w * s.
        self.register_buffer("input_channel_scale", torch.ones(in_channels) if input_channel_scaling else None)

    # -- the layer's own computation with given (already quantized) input and weight
    def apply_layer(self, x, weight: torch.Tensor):
        raise NotImplementedError

    def _scale_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_channel_scale is None:
            return x
        axis = -1 if self.channels_last else 1
        shape = [1] * x.dim()
        shape[axis] = -1
        return x / self.input_channel_scale.reshape(shape)

    def quantized_weight(self) -> torch.Tensor:
        if self.float_weight:
            return self.layer.weight
        if self.frozen_weight is not None:
            return self.frozen_weight
        return self.weight_quantizer(self.layer.weight)

    def forward(self, x):
        x = self._scale_input(x)
        if self.observer is not None:
            self.observer(self, x, -1 if self.channels_last else 1, False)
        return self.apply_layer(self.input_quantizer(x), self.quantized_weight())


class QuantLinear(QuantLayer):
    channels_last = True

    def apply_layer(self, x, weight):
        return F.linear(x, weight, self.layer.bias)


class QuantConv2d(QuantLayer):
    def apply_layer(self, x, weight):
        return self.layer._conv_forward(x, weight, self.layer.bias)


class QuantConvTranspose2d(QuantLayer):
    def apply_layer(self, x, weight):
        layer = self.layer
        return F.conv_transpose2d(
            x, weight, layer.bias, layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation
        )


class QuantAdd(nn.Module):
    """a + b with both inputs on one INT8 grid (one quantizer), wrapping the model's add module."""

    def __init__(self, add: nn.Module):
        super().__init__()
        self.add = add
        self.input_quantizer = TensorQuantizer()
        self.observer: Observer | None = None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer(self, torch.cat([_rows_channels_last(a), _rows_channels_last(b)]), -1, False)
        return self.add(self.input_quantizer(a), self.input_quantizer(b))


DENSE_WRAPPERS: dict[type, type] = {
    nn.Linear: QuantLinear,
    nn.Conv2d: QuantConv2d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
}
