"""Output correction: each output layer's bias absorbs the mean INT8 - FP32 shift of its output channels at the sites
the task looks at, not over the whole output.

Bias correction (quant/bias_correction.py) averages over every site, and on a detector's heatmap almost every site
is background, so the mean it removes is the background's. What decides a detection is the value at the few sites
where objects are: on the sim pillar model the Cyclist - Pedestrian logit margin at FP32's detections drifts by
-0.03 to +0.08 with the calibration window, and Cyclist AP moves with it by -1.7 to +2.7 (docs/QUANTIZATION.md). The
task hook names those sites (`output_sites`: for CenterPoint, the pseudo-label centres TGPL uses); this stage
measures each output channel's mean shift there over the calibration frames and subtracts it from the bias of the
layer that makes that output. The quantizer still knows nothing about detection: it sees output tensors, site masks
and the layers the target says make the outputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .state import tensors_of


def output_shifts(model: nn.Module, batches: Sequence, forward: Callable, hook, references) -> list:
    """Per output tensor (tensors_of order): the mean INT8 - FP32 value of each channel at the hook's sites over
    `batches` (float64, shape (C,)), and how many sites it averages; None for an output the hook gives no sites."""
    sums: list = []
    counts: list = []
    with torch.no_grad():
        for batch, (fp_out, targets) in zip(batches, references):
            quantized, reference = tensors_of(forward(model, batch)), tensors_of(fp_out)
            masks = hook.output_sites(fp_out, targets)
            if not (len(masks) == len(quantized) == len(reference)):
                raise ValueError(f"output_sites gave {len(masks)} masks for {len(quantized)} outputs")
            if not sums:
                sums, counts = [None] * len(quantized), [0] * len(quantized)
            for index, (q, f, mask) in enumerate(zip(quantized, reference, masks)):
                if mask is None or not bool(mask.any()):
                    continue
                # (B, C, *spatial) at the (B, *spatial) mask -> (C, sites)
                difference = (q - f).double().movedim(1, 0)[:, mask]
                total = difference.sum(1)
                sums[index] = total if sums[index] is None else sums[index] + total
                counts[index] += difference.shape[1]
    return [None if s is None else (s / counts[i], counts[i]) for i, s in enumerate(sums)]


def correct_outputs(model: nn.Module, output_layers: Sequence[str], batches: Sequence, forward: Callable, hook,
                    references) -> dict[str, dict]:
    """Subtract each output's mean shift at the task's sites from the bias of the layer making it (`output_layers`
    in output order). Returns per corrected layer the largest and mean absolute correction and the sites counted."""
    if not callable(getattr(hook, "output_sites", None)):
        raise ValueError("output_correction needs a task hook with output_sites (where the task reads the outputs)")
    shifts = output_shifts(model, batches, forward, hook, references)
    if len(shifts) != len(output_layers):
        raise ValueError(f"the target names {len(output_layers)} output layers for {len(shifts)} outputs")
    records = {}
    for name, shift in zip(output_layers, shifts):
        if shift is None:
            continue
        module = model.get_submodule(name)
        conv = getattr(module, "layer", module)  # a quantized layer's wrapper, or a layer kept in float
        if getattr(conv, "bias", None) is None or conv.bias.numel() != shift[0].numel():
            raise ValueError(f"{name} has no bias of {shift[0].numel()} channels to correct")
        with torch.no_grad():
            conv.bias.sub_(shift[0].to(conv.bias.dtype).reshape(conv.bias.shape))
        records[name] = {"output_correction_max": float(shift[0].abs().max()),
                         "output_correction_mean": float(shift[0].abs().mean()), "output_correction_sites": shift[1]}
    return records
