"""Biases on the int32 grid of integer kernels.

An integer conv sums int8 x int8 products in int32 and adds the bias there too, so the bias is an integer number of
steps s_x * s_w (input scale times the channel's weight scale) before the output is requantized. onnxruntime's
QLinearConv rounds a float bias to that grid; the fake-quant model, which adds it in FP32, then differs from the
engine by up to half a step in every output of the channel, a constant offset that moves values across rounding
boundaries: on the sim pillar model 1-7 % of the head's codes differed from onnxruntime's, and with the biases on the
grid 0.01-0.08 % did (what is left are exact rounding ties). Putting the biases on the grid makes the fake-quant model
compute what integer engines compute; the change per output is at most half a step of s_x * s_w, a product of two
INT8 steps, so far below the output's own INT8 step. TensorRT adds the bias in FP32, where a bias on the grid is
exact as well.
"""

from __future__ import annotations

import torch

from .modules import QuantLayer


@torch.no_grad()
def round_biases_to_int32_grid(wrappers: dict) -> dict[str, dict]:
    """Round the bias of every quantized layer (input and weight quantizers on) to its grid s_x * s_w per output
    channel. Returns per layer the largest change in steps of that grid (at most 0.5) and in FP32 value."""
    records = {}
    for name, wrapper in wrappers.items():
        if not isinstance(wrapper, QuantLayer):
            continue
        bias = getattr(wrapper.layer, "bias", None)
        if bias is None or wrapper.float_weight or not (wrapper.input_quantizer.enabled
                                                         and wrapper.weight_quantizer.enabled):
            continue  # an FP32-weight layer computes in FP32: its bias has no integer grid
        step = (wrapper.input_quantizer.scale * wrapper.weight_quantizer.scale).to(bias.dtype).reshape(bias.shape)
        rounded = torch.round(bias / step) * step
        records[name] = {"bias_change_max_steps": float(((rounded - bias) / step).abs().max()),
                         "bias_change_max": float((rounded - bias).abs().max())}
        bias.copy_(rounded)
    return records
