"""Cross-layer channel equalization: per-channel ranges moved from activations into weights, exact in FP32.

Activations are quantized per tensor, so one channel that spans 15 beside channels that span 0.5 costs the small
channels most of their 256 codes (the CenterPoint head's last convs read such inputs). When a layer's output reaches
its consumers only through positively homogeneous operations (ReLU, zero padding, max pooling, concatenation,
the zero-filled scatter), dividing its output channel i by s_i and multiplying the consumers' input channel i by the
same s_i leaves the network's function unchanged. Weights are quantized per output channel, so the producer's
division costs nothing; the consumers' input columns grow or shrink instead. s_i = r_i^alpha / w_i^(1 - alpha)
balances the activation range r_i against w_i, the largest weight reading channel i relative to its output
channel's largest weight (alpha = 0.5 equalises them, after Nagel et al., "Data-Free Quantization", 2019).

Which layers form such pairs is model knowledge: the task target lists them (`QuantTarget.equalization_pairs`).
A wrong pair (a consumer missing, a non-homogeneous operation between) would change the network, so the FP32
output is compared before and after and a mismatch is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .fold import input_channel_axis, output_channel_axis
from .quantizer import broadcast_along, weight_quantizer_for


@dataclass(frozen=True)
class EqualizationPair:
    producer: str  # a quantized layer (BN folded) whose output channels are scaled down
    consumers: tuple[tuple[str, int], ...]  # (quantized layer, its first input channel that reads the producer)


def column_weights(layer, offset: int, channels: int) -> torch.Tensor:
    """Per input channel in [offset, offset + channels): the largest |weight| reading it, each output channel's
    weights first divided by that output channel's largest (per-channel weight scales make rows independent)."""
    weight = layer.weight.detach().abs()
    out_axis, in_axis = output_channel_axis(layer), input_channel_axis(layer)
    weight = weight.movedim((out_axis, in_axis), (0, 1))
    weight = weight.reshape(weight.shape[0], weight.shape[1], -1).amax(dim=2)  # (out, in)
    weight = weight / weight.amax(dim=1, keepdim=True).clamp(min=1e-12)
    return weight[:, offset: offset + channels].amax(dim=0)


@torch.no_grad()
def equalization_scales(channel_range: torch.Tensor, column_weight: torch.Tensor, alpha: float,
                        limit: float = 1e3) -> torch.Tensor:
    """s per channel: r^alpha / w^(1 - alpha), normalised so that the largest activation range stays as it was
    (a common factor changes nothing), bounded to [1/limit, limit]; channels that never moved keep s = 1."""
    r = channel_range.double().clamp(min=0)
    w = column_weight.to(r.device).double().clamp(min=1e-12)  # statistics live on the CPU, weights maybe on a GPU
    live = r > 0
    scales = torch.ones_like(r)
    if not live.any():
        return scales.float()
    scales[live] = r[live] ** alpha / w[live] ** (1.0 - alpha)
    scales[live] *= (r[live] / scales[live]).max() / r.max()
    return scales.clamp(1.0 / limit, limit).float()


@torch.no_grad()
def apply_equalization(producer, consumers: Sequence[tuple[object, int]], scales: torch.Tensor) -> None:
    """producer output channel i / s_i, every consumer's input channel (offset + i) * s_i; weight quantizer ranges
    refreshed. `producer` and the consumers are quantized wrappers (QuantLayer)."""
    layer = producer.layer
    axis = output_channel_axis(layer)
    layer.weight.div_(broadcast_along(scales.to(layer.weight), axis, layer.weight.dim()))
    if layer.bias is not None:
        layer.bias.div_(scales.to(layer.bias))
    for consumer, offset in consumers:
        weight = consumer.layer.weight
        axis = input_channel_axis(consumer.layer)
        full = torch.ones(weight.shape[axis], dtype=scales.dtype)
        full[offset: offset + len(scales)] = scales
        weight.mul_(broadcast_along(full.to(weight), axis, weight.dim()))
    for wrapper in (producer, *(c for c, _ in consumers)):
        fresh = weight_quantizer_for(wrapper.layer.weight, wrapper.weight_quantizer.axis)
        wrapper.weight_quantizer.set_amax(fresh.amax)


def _range_spread(values: torch.Tensor, live: torch.Tensor) -> float:
    """Largest over smallest of `values` where `live` (1 when nothing is live)."""
    return float(values[live].max() / values[live].min().clamp(min=1e-12)) if live.any() else 1.0


def equalize(wrappers: dict, pairs: Sequence[EqualizationPair], channel_ranges: dict[str, torch.Tensor],
             alpha: float, fp32_consumers_alpha: float | None = None) -> dict[str, dict]:
    """Scale every pair; `channel_ranges[consumer]` is the consumer's per-input-channel |max| (FP32, active sites),
    measured before any pair was scaled (each tensor belongs to one pair, so one pass of statistics serves all).
    A pair whose consumers all keep FP32 weights uses `fp32_consumers_alpha` (default: `alpha`): only the
    activations are on a grid there. Returns per-producer records: the ratio of largest to smallest channel range
    before and after, and the alpha used."""
    records = {}
    for pair in pairs:
        producer = wrappers[pair.producer]
        channels = producer.layer.weight.shape[output_channel_axis(producer.layer)]
        consumers = [(wrappers[name], offset) for name, offset in pair.consumers]
        first, offset = pair.consumers[0]
        ranges = channel_ranges[first][offset: offset + channels]
        for name, off in pair.consumers[1:]:  # every consumer sees the same channels; take the widest view
            ranges = torch.maximum(ranges, channel_ranges[name][off: off + channels])
        column = torch.stack([column_weights(w.layer, off, channels) for w, off in consumers]).amax(dim=0)
        fp32_consumers = all(getattr(w, "float_weight", False) for w, _ in consumers)
        pair_alpha = fp32_consumers_alpha if fp32_consumers and fp32_consumers_alpha is not None else alpha
        scales = equalization_scales(ranges, column, pair_alpha)
        apply_equalization(producer, consumers, scales)
        after = ranges / scales
        live = ranges > 0
        records[pair.producer] = {"consumers": [n for n, _ in pair.consumers],
                                  "range_spread_before": _range_spread(ranges, live),
                                  "range_spread_after": _range_spread(after, live), "scale_min": float(scales.min()),
                                  "scale_max": float(scales.max()), "alpha": pair_alpha}
    return records
