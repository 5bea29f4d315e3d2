"""spconv sparse convolutions (SubMConv3d, SparseConv3d) as quantized layers. Imported only for models that use
spconv. The input quantizer sees the active sites' features only: a sparse tensor holds nothing else."""

from __future__ import annotations

import spconv.pytorch as spconv
import torch

from .modules import QuantLayer


class QuantSparseConv(QuantLayer, spconv.SparseModule):
    """Runs the wrapped conv with the fake-quantized weight; its bias is added after the sparse conv (spconv's CPU
    kernels take no fused bias), which is the same sum."""

    channels_last = True

    def _scale_input(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        if self.input_channel_scale is None:
            return x
        return x.replace_feature(x.features / self.input_channel_scale)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        x = self._scale_input(x)
        if self.observer is not None:
            self.observer(self, x.features, -1, True)
        quantized = x.replace_feature(self.input_quantizer(x.features))
        return self.apply_layer(quantized, self.quantized_weight())

    def apply_layer(self, x: spconv.SparseConvTensor, weight: torch.Tensor) -> spconv.SparseConvTensor:
        layer = self.layer
        # spconv 2.3's internal entry point, as models/backbone3d.py uses it for the same CPU bias reason.
        out = layer._conv_forward(
            layer.training, x, weight, None, name=layer.name, sparse_unique_name=layer._sparse_unique_name
        )
        if layer.bias is not None:
            out = out.replace_feature(out.features + layer.bias)
        return out
