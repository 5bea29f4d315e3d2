"""Switching quantizers on and off, and comparing nested network outputs. Small helpers shared by every stage."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn

from .quantizer import TensorQuantizer


def set_quantizers(modules: Iterable[nn.Module], enabled: bool) -> None:
    for module in modules:
        for q in module.modules():
            if isinstance(q, TensorQuantizer):
                q.enabled = enabled


@contextmanager
def quantizers_disabled(model: nn.Module):
    """The model computes in FP32 inside (folded BN is exact), whatever its quantizers' state was."""
    quantizers = [q for q in model.modules() if isinstance(q, TensorQuantizer)]
    before = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield
    finally:
        for q, was in zip(quantizers, before):
            q.enabled = was


def tensors_of(value) -> list[torch.Tensor]:
    """Every tensor in a nested output (tensors, lists, tuples, dicts in key order, spconv sparse tensors)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for key in value for t in tensors_of(value[key])]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_of(item)]
    features = getattr(value, "features", None)  # spconv SparseConvTensor
    if isinstance(features, torch.Tensor):
        return [features]
    return []


def output_mse(output, reference) -> torch.Tensor:
    """Mean squared difference over every tensor of two nested outputs of the same structure."""
    a, b = tensors_of(output), tensors_of(reference)
    if len(a) != len(b) or not a:
        raise ValueError("outputs differ in structure")
    total = sum(((x - y.detach()) ** 2).sum() for x, y in zip(a, b))
    return total / sum(x.numel() for x in a)
