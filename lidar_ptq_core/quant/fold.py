"""BatchNorm folding: conv/linear followed by BatchNorm -> one conv/linear with bias, exact in FP32 (eval mode).

Folding must happen before quantization: TensorRT folds BN into the conv and quantizes the folded weights, so the
fake-quant model must quantize the same numbers. Pairs inside nn.Sequential containers (and spconv's
SparseSequential) are found automatically; pairs wired by hand in a forward method are named by the caller.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def output_channel_axis(module: nn.Module) -> int:
    """Axis of the weight that indexes output channels: 1 for transposed convs (in, out, k...), 0 otherwise
    (Linear, Conv, spconv's KRSC (out, k..., in))."""
    return 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0


def input_channel_axis(module: nn.Module) -> int:
    """Axis of the weight that indexes input channels."""
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return 0
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return 1
    return module.weight.dim() - 1  # spconv: (out, k..., in)


def is_foldable(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), torch.Tensor) and not isinstance(module, BN_TYPES)


def find_sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv_name, bn_name) for every BatchNorm that directly follows a weighted layer in a sequential container."""
    pairs = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential) and type(parent).__name__ != "SparseSequential":
            continue
        children = list(parent.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if isinstance(b, BN_TYPES) and is_foldable(a):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + name_a, prefix + name_b))
    return pairs


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def fold_bn(conv: nn.Module, bn: nn.Module) -> None:
    """Fold `bn`'s running statistics and affine parameters into `conv` in place (adding a bias if it had none)."""
    axis = output_channel_axis(conv)
    weight = conv.weight
    if weight.shape[axis] != bn.num_features:
        raise ValueError(f"cannot fold BatchNorm({bn.num_features}) into a layer with {weight.shape[axis]} outputs")
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.affine else torch.ones_like(std)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    shape = [1] * weight.dim()
    shape[axis] = -1
    conv.weight.copy_((weight.double() * factor.reshape(shape)).to(weight.dtype))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(std)
    new_bias = ((bias - bn.running_mean.double()) * factor + beta).to(weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


def fold_batch_norms(model: nn.Module, pairs: Iterable[tuple[str, str]], structure_only: bool = False) -> list[str]:
    """Fold each (layer, bn) pair and put nn.Identity where the BN was. `structure_only` gives the folded layout
    (biases added, BNs gone) without computing values, for loading a folded state_dict. Returns the folded BN names."""
    folded = []
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if not isinstance(bn, BN_TYPES):
            raise ValueError(f"{bn_name} is {type(bn).__name__}, not a BatchNorm")
        if structure_only:
            if conv.bias is None:
                out = conv.weight.shape[output_channel_axis(conv)]
                conv.bias = nn.Parameter(conv.weight.new_zeros(out))
        else:
            fold_bn(conv, bn)
        _set_submodule(model, bn_name, nn.Identity())
        folded.append(bn_name)
    remaining = [name for name, m in model.named_modules() if isinstance(m, BN_TYPES)]
    if remaining:
        raise ValueError(f"BatchNorm layers left unfolded (name their preceding layer): {remaining}")
    return folded
