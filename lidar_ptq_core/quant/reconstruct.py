"""Stages that optimise quantization parameters against errors: learned activation step sizes with the task loss at
the final output (TGPL's global stage), and block-by-block reconstruction with adaptive rounding (BRECQ-like), which
can also add the task loss. Both are model-agnostic: blocks are module names, the task loss comes from a hook."""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch
from torch import nn

from . import adaround
from .calibrate import _progress
from .modules import QuantLayer
from .share import unique_quantizers
from .state import quantizers_disabled, set_quantizers, tensors_of


class TaskHook(Protocol):
    """Supplies the task loss (TGPL for detectors): pseudo-labels from the FP32 outputs, and a loss between
    quantized and FP32 outputs at those labels."""

    def targets(self, batch, fp_outputs): ...

    def loss(self, outputs, fp_outputs, targets) -> torch.Tensor: ...


def output_sse(output, reference) -> torch.Tensor:
    """Squared error summed over every output element, per frame of a batch of one (BRECQ's reduction)."""
    a, b = tensors_of(output), tensors_of(reference)
    return sum(((x - y.detach()) ** 2).sum() for x, y in zip(a, b))


def fp_references(model, batches, forward, hook: TaskHook | None):
    """FP32 outputs and pseudo-labels of each batch (computed once, reused by every step)."""
    references = []
    with torch.no_grad(), quantizers_disabled(model):
        for batch in batches:
            out = forward(model, batch)
            references.append((out, hook.targets(batch, out) if hook is not None else None))
    return references


def network_loss(model, batches, forward, hook: TaskHook | None, references) -> float:
    """Mean task loss (or, without a hook, output squared error) of the model as it is now against FP32
    references from `fp_references`: the held-out check that a reconstructed block did not make the network worse."""
    total = 0.0
    with torch.no_grad():
        for batch, (fp_out, targets) in zip(batches, references):
            out = forward(model, batch)
            total += float(hook.loss(out, fp_out, targets) if hook is not None else output_sse(out, fp_out))
    return total / max(len(batches), 1)


def _relative_lr_groups(quantizers, lr: float) -> list[dict]:
    # amax values span 0.1 .. 100: one absolute learning rate would freeze the large ones or blow up the small ones.
    return [{"params": [q.amax], "lr": lr * float(q.amax.detach().abs().max().clamp(min=1e-3))} for q in quantizers]


def learn_step_sizes(model, wrappers: dict, batches: Sequence, forward, hook: TaskHook | None, steps: int, lr: float,
                     task_weight: float, output_weight: float, progress: bool = True,
                     schedule: str = "constant") -> dict:
    """All quantizers on; the activation amax of every layer is learned against output error + task loss, one frame
    per step. With schedule="cosine" the learning rate decays to 0, so the result does not hang on the last frames."""
    quantizers = unique_quantizers(w.input_quantizer for w in wrappers.values())  # tied ones once (quant/share.py)
    references = fp_references(model, batches, forward, hook)
    set_quantizers(wrappers.values(), True)
    # Weights and biases stay fixed here: without their gradients the backward pass computes only what reaches the
    # step sizes, and each layer's INT8 weight is made once instead of once per step (same values, less work).
    fixed = [p for p in model.parameters() if p.requires_grad]
    layers = [w for w in wrappers.values() if isinstance(w, QuantLayer)]
    for p in fixed:
        p.requires_grad_(False)
    with torch.no_grad():
        for layer in layers:
            layer.frozen_weight = layer.quantized_weight()
    for q in quantizers:
        q.amax.requires_grad_(True)
    optimizer = torch.optim.Adam(_relative_lr_groups(quantizers, lr))
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    first, last = None, None
    try:
        for step in _progress(range(steps), "TGPL step sizes", progress):
            if schedule == "cosine":
                factor = 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * factor
            i = step % len(batches)
            out = forward(model, batches[i])
            fp_out, targets = references[i]
            loss = output_weight * output_sse(out, fp_out)
            if hook is not None and task_weight:
                loss = loss + task_weight * hook.loss(out, fp_out, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for q in quantizers:
                    q.amax.clamp_(min=1e-6)
            last = float(loss.detach())
            first = last if first is None else first
    finally:
        for q in quantizers:
            q.amax.requires_grad_(False)
        for p in fixed:
            p.requires_grad_(True)
        for layer in layers:
            layer.frozen_weight = None
    return {"steps": steps, "loss_first": first, "loss_last": last}


def assign_blocks(wrappers: dict, blocks: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Each wrapper goes to the first block that contains it; wrappers outside every block become blocks of their
    own, so every quantized layer is reconstructed once, in module order."""
    assigned, order = {}, []
    for name in wrappers:
        owner = next((b for b in blocks if name == b or name.startswith(b + ".")), name)
        if owner not in assigned:
            assigned[owner] = []
            order.append(owner)
        assigned[owner].append(name)
    return [(b, assigned[b]) for b in order]


class _Capture:
    def __init__(self, module: nn.Module):
        self.args, self.output = None, None
        self.handles = [module.register_forward_pre_hook(self.pre), module.register_forward_hook(self.post)]

    def pre(self, module, args):
        if self.args is not None:
            raise RuntimeError("a reconstruction block must run once per forward pass")
        self.args = args

    def post(self, module, args, output):
        self.output = output

    def close(self):
        for h in self.handles:
            h.remove()


def _run_and_capture(model, block_module, batch, forward):
    capture = _Capture(block_module)
    try:
        forward(model, batch)
    finally:
        capture.close()
    if capture.args is None:
        raise RuntimeError("the reconstruction block never ran")
    return capture.args, capture.output


def reconstruct_block(model, block_module: nn.Module, members: dict, batches: Sequence, forward, config,
                      hook: TaskHook | None, references, progress: bool = True) -> dict:
    """Adaptive rounding of the weights of one block (its earlier blocks already quantized, later ones off)."""
    with torch.no_grad():
        with quantizers_disabled(model):
            fp_outputs = [_run_and_capture(model, block_module, b, forward)[1] for b in batches]
        set_quantizers(members.values(), False)
        inputs = [_run_and_capture(model, block_module, b, forward)[0] for b in batches]
    set_quantizers(members.values(), True)

    def block_error(i):
        return output_sse(block_module(*inputs[i]), fp_outputs[i])

    with torch.no_grad():  # round-to-nearest weights, calibrated activations
        before = sum(float(block_error(i)) for i in range(len(batches))) / len(batches)
    # Layers that keep FP32 weights have no rounding to learn.
    layers = [w for w in members.values() if isinstance(w, QuantLayer) and not w.float_weight]
    roundings = [adaround.attach(w.weight_quantizer, w.layer.weight) for w in layers]
    groups = [{"params": [r.alpha for r in roundings], "lr": config.adaround_lr}] if roundings else []
    act_quantizers = [w.input_quantizer for w in members.values()]
    if config.learn_activation_scales:
        for q in act_quantizers:
            q.amax.requires_grad_(True)
        groups += _relative_lr_groups(act_quantizers, config.tgpl_lr)
    for q in act_quantizers:
        q.drop_prob = config.activation_drop_prob
    steps = config.adaround_steps if groups else 0
    optimizer = torch.optim.Adam(groups) if groups else None
    try:
        for step in _progress(range(steps), "adaround", progress):
            i = step % len(batches)
            loss = block_error(i)
            beta = adaround.beta_at(step / max(steps, 1), config.adaround_beta, config.adaround_warmup)
            if beta is not None and roundings:
                loss = loss + config.adaround_reg_weight * sum(r.regulariser(beta) for r in roundings)
            if hook is not None and config.task_loss_every and step % config.task_loss_every == 0:
                fp_out, targets = references[i]
                loss = loss + config.task_loss_weight * hook.loss(forward(model, batches[i]), fp_out, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if config.learn_activation_scales:
                with torch.no_grad():
                    for q in act_quantizers:
                        q.amax.clamp_(min=1e-6)
    finally:
        for q in act_quantizers:
            q.amax.requires_grad_(False)
            q.drop_prob = 0.0
        for w in layers:
            adaround.bake(w.weight_quantizer, w.layer.weight)
    with torch.no_grad():
        after = sum(float(block_error(i)) for i in range(len(batches))) / len(batches)
    return {"steps": steps, "error_rtn": before, "error_after": after}
