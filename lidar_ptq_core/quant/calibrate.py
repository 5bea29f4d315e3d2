"""Calibration passes over the calibration batches: first-layer channel scaling, activation statistics -> amax,
the grid search of clip ratios, and the per-layer sensitivity table."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .calibrators import ActivationStatistics, compute_amax
from .config import QuantConfig
from .fold import input_channel_axis
from .modules import QuantLayer
from .quantizer import broadcast_along, weight_quantizer_for
from .state import output_mse, quantizers_disabled, set_quantizers

Forward = Callable[[nn.Module, object], object]


def _progress(iterable, desc: str, enabled: bool, total: int | None = None):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, disable=not enabled, dynamic_ncols=True, total=total, leave=False)


class _AllSeen(Exception):
    """Raised from an observer to end a forward pass once every observed wrapper has reported its input."""


def collect_statistics(model, wrappers: dict, batches: Sequence, forward: Forward, active_only: bool,
                       samples_per_batch: int, seed: int, progress: bool, desc: str,
                       stop_when_seen: bool = False) -> dict[str, ActivationStatistics]:
    """FP32 passes (all quantizers off) recording each wrapper's input statistics. stop_when_seen: end each pass
    as soon as every wrapper has reported once (for layers called once per pass, near its start: the first layers),
    instead of running the rest of the network for nothing."""
    stats = {name: ActivationStatistics(active_only, samples_per_batch, seed) for name in wrappers}
    seen: set[str] = set()

    def observer_for(name):
        def observe(module, values, channel_axis, all_active):
            stats[name].observe(values, channel_axis, all_active)
            seen.add(name)
            if stop_when_seen and len(seen) == len(wrappers):
                raise _AllSeen

        return observe

    for name, wrapper in wrappers.items():
        wrapper.observer = observer_for(name)
    try:
        with torch.no_grad(), quantizers_disabled(model):
            for batch in _progress(batches, desc, progress):
                seen.clear()
                try:
                    forward(model, batch)
                except _AllSeen:
                    pass
    finally:
        for wrapper in wrappers.values():
            wrapper.observer = None
    return stats


@torch.no_grad()
def apply_input_channel_scaling(wrapper: QuantLayer, channel_amax: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Divide each input channel by a scale s and multiply the weights' input channels by the same s: the product
    is unchanged (exact in FP32 up to rounding). alpha = 1: s = the channel's calibrated |max|, so every channel
    spans [-1, 1] for the per-tensor input quantizer, and the whole spread moves into the weights, where a
    centimetre-offset channel's weights can end up two INT8 codes wide beside the metre channels' (per output
    channel, one scale for all inputs). alpha < 1 balances the two sides as channel equalization does
    (quant/equalize.py): s = r^alpha / w^(1 - alpha). Channels that never moved keep s = 1."""
    from .equalize import column_weights, equalization_scales

    if alpha >= 1.0:
        scale = torch.where(channel_amax > 0, channel_amax, torch.ones_like(channel_amax))
    else:
        channels = wrapper.layer.weight.shape[input_channel_axis(wrapper.layer)]
        scale = equalization_scales(channel_amax, column_weights(wrapper.layer, 0, channels), alpha)
    scale = scale.to(wrapper.layer.weight)
    previous = wrapper.input_channel_scale.clone()
    total = previous * scale
    wrapper.layer.weight.mul_(broadcast_along(scale, input_channel_axis(wrapper.layer), wrapper.layer.weight.dim()))
    wrapper.input_channel_scale.copy_(total)
    fresh = weight_quantizer_for(wrapper.layer.weight, wrapper.weight_quantizer.axis)
    wrapper.weight_quantizer.set_amax(fresh.amax)
    return total


def calibrate_activations(model, wrappers: dict, batches: Sequence, forward: Forward, config: QuantConfig,
                          progress: bool = True) -> dict[str, dict]:
    """Set every input quantizer's amax with the configured calibrator. Returns per-layer calibration records."""
    scaled = {n: w for n, w in wrappers.items() if isinstance(w, QuantLayer) and w.input_channel_scale is not None}
    records: dict[str, dict] = {name: {} for name in wrappers}
    if scaled:
        stats = collect_statistics(model, scaled, batches, forward, True, 0, config.seed, progress, "channel ranges",
                                   stop_when_seen=True)
        for name, wrapper in scaled.items():
            if stats[name].channel_amax is None:
                raise ValueError(f"{name}: no input seen during calibration")
            total = apply_input_channel_scaling(wrapper, stats[name].channel_amax, config.input_channel_alpha)
            records[name]["input_channel_scale"] = [round(float(v), 6) for v in total]
    samples = 0 if config.calibrator == "max" else config.samples_per_batch  # max needs only the exact maximum
    stats = collect_statistics(model, wrappers, batches, forward, config.active_sites_only, samples,
                               config.seed, progress, f"calibrate ({config.calibrator})")
    for name, wrapper in wrappers.items():
        s = stats[name]
        if s.num_sites == 0:
            raise ValueError(f"{name}: no input seen during calibration")
        amax = compute_amax(s, config.calibrator, config.percentile)
        wrapper.input_quantizer.set_amax(amax if amax > 0 else 1.0)
        records[name].update(
            max=s.amax, amax=float(wrapper.input_quantizer.amax), active_fraction=round(s.active_fraction, 4),
        )
    return records


class _GridSearch:
    """Forward hooks that, for each layer during an FP32 pass, re-run that layer with its quantizers on at each
    candidate clip ratio and add up the squared output error."""

    def __init__(self, wrappers: dict, ratios: Sequence[float]):
        self.wrappers = wrappers
        self.ratios = list(ratios)
        self.base = {n: w.input_quantizer.amax.detach().clone() for n, w in wrappers.items()}
        self.errors = {n: np.zeros(len(ratios)) for n in wrappers}
        self.busy = False

    def hook(self, name):
        def run(module, args, output):
            if self.busy:
                return
            self.busy = True
            try:
                reference = output
                set_quantizers([module], True)
                if isinstance(module, QuantLayer):  # the weights do not change with the input clip
                    module.frozen_weight = module.quantized_weight()
                for i, ratio in enumerate(self.ratios):
                    module.input_quantizer.set_amax(self.base[name] * ratio)
                    self.errors[name][i] += float(output_mse(module(*args), reference))
                module.input_quantizer.set_amax(self.base[name])
                set_quantizers([module], False)
            finally:
                if isinstance(module, QuantLayer):
                    module.frozen_weight = None
                self.busy = False

        return run


def grid_search_clip_ratios(model, wrappers: dict, batches: Sequence, forward: Forward, ratios: Sequence[float],
                            progress: bool = True, groups: Sequence[Sequence[str]] = ()) -> dict[str, dict]:
    """LiDAR-PTQ's light grid search: each layer's amax becomes ratio x (its calibrated amax), the ratio minimising
    that layer's output error with its input and weights quantized, measured on FP32 inputs. Layers of one group
    (reading one tensor, see quant/share.py) get the one ratio minimising the sum of their errors."""
    search = _GridSearch(wrappers, ratios)
    handles = [w.register_forward_hook(search.hook(n)) for n, w in wrappers.items()]
    try:
        with torch.no_grad(), quantizers_disabled(model):
            for batch in _progress(batches, "grid search", progress):
                forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    records = {}
    ratios = list(ratios)
    unit = ratios.index(1.0) if 1.0 in ratios else int(np.argmax(ratios))
    joint = {}
    for members in groups:
        total = sum(search.errors[n] for n in members)
        for name in members:
            joint[name] = int(np.argmin(total))
    for name, wrapper in wrappers.items():
        errors = search.errors[name]
        best = joint.get(name, int(np.argmin(errors)))
        wrapper.input_quantizer.set_amax(search.base[name] * ratios[best])
        records[name] = dict(clip_ratio=ratios[best], error_before=float(errors[unit]) / max(len(batches), 1),
                             error_after=float(errors[best]) / max(len(batches), 1),
                             amax=float(wrapper.input_quantizer.amax))
    return records


@torch.no_grad()
def sensitivity(model, wrappers: dict, batches: Sequence, forward: Forward, progress: bool = True) -> dict[str, float]:
    """Output error (MSE over every network output) with only one layer INT8, for each layer."""
    if not batches:
        return {}
    all_wrappers = list(wrappers.values())
    with quantizers_disabled(model):
        references = [forward(model, b) for b in batches]
    result = {}
    with quantizers_disabled(model):
        for name, wrapper in _progress(wrappers.items(), "sensitivity", progress, total=len(wrappers)):
            set_quantizers([wrapper], True)
            errors = [float(output_mse(forward(model, b), ref)) for b, ref in zip(batches, references)]
            set_quantizers([wrapper], False)
            result[name] = float(np.mean(errors))
    set_quantizers(all_wrappers, True)
    return result
