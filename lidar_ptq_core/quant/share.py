"""One input grid per tensor: layers that read the very same tensor get one activation scale.

Per-layer calibration gives each consumer of a tensor its own clip (a CenterPoint head's shared conv feeds five
branches, and the grid search picked five amax values between 10.9 and 15.1 for it). An integer engine then has to
produce that tensor once per grid: the onnxruntime graph repeats the producing conv's output channels per grid, which
made the shared conv the most expensive layer of the INT8 head. With `share_input_quantizers` the consumers of one
tensor are found by running the model once, and every stage that sets activation scales sets them jointly: the grid
search adds the consumers' output errors per candidate ratio, TGPL learns one step size for all of them (their
quantizers are tied while it runs). After quantization the consumers hold equal amax values in separate quantizers, so
the state_dict and the checkpoint format are unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch

from .modules import QuantLayer


def find_shared_inputs(model, wrappers: dict, batch, forward) -> list[list[str]]:
    """Groups (two or more, in module order) of quantized layers whose forward received the same input tensor
    object in one FP32 pass over `batch`. Layers with per-channel input scaling (first layers) are left out: their
    input is rescaled per layer."""
    from .state import quantizers_disabled

    seen: dict[str, object] = {}

    def record(name):
        def hook(module, args):
            if args and name not in seen:
                seen[name] = args[0]  # the object itself: keeps it alive, so no other tensor reuses its id
        return hook

    layers = {n: w for n, w in wrappers.items() if isinstance(w, QuantLayer) and w.input_channel_scale is None}
    handles = [w.register_forward_pre_hook(record(n)) for n, w in layers.items()]
    try:
        with torch.no_grad(), quantizers_disabled(model):
            forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    groups: dict[int, list[str]] = {}
    for name in layers:
        if name in seen:
            groups.setdefault(id(seen[name]), []).append(name)
    return [members for members in groups.values() if len(members) > 1]


def unify_amax(wrappers: dict, groups: Sequence[Sequence[str]]) -> None:
    """Give every member of a group its first member's input amax (after calibration, where they differ at most by
    the calibrators' sampling)."""
    with torch.no_grad():
        for members in groups:
            leader = wrappers[members[0]].input_quantizer
            for name in members[1:]:
                wrappers[name].input_quantizer.set_amax(leader.amax.detach().clone())


@contextmanager
def tied_input_quantizers(wrappers: dict, groups: Sequence[Sequence[str]]):
    """Inside, each group's members use their first member's input quantizer object (one learned amax, gradients
    from every consumer); on exit each member gets its own quantizer back, holding the shared value."""
    originals = {}
    for members in groups:
        leader = wrappers[members[0]].input_quantizer
        for name in members[1:]:
            originals[name] = wrappers[name].input_quantizer
            wrappers[name].input_quantizer = leader
    try:
        yield
    finally:
        with torch.no_grad():
            for members in groups:
                leader = wrappers[members[0]].input_quantizer
                for name in members[1:]:
                    own = originals[name]
                    own.set_amax(leader.amax.detach().clone())
                    own.enabled = leader.enabled
                    wrappers[name].input_quantizer = own


def unique_quantizers(quantizers) -> list:
    """The quantizers without repeats (tied ones appear once), in order."""
    seen, result = set(), []
    for q in quantizers:
        if id(q) not in seen:
            seen.add(id(q))
            result.append(q)
    return result
