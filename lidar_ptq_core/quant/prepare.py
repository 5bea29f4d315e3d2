"""From an FP32 module tree to its quantized layout: fold BatchNorms, then wrap every quantizable layer.

The layout is described by a `QuantLayout` (plain names, JSON-able), so a quantized checkpoint can rebuild exactly the
same module tree from the FP32 model and load its state_dict strictly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from .fold import _set_submodule, find_sequential_pairs, fold_batch_norms
from .modules import DENSE_WRAPPERS, QuantAdd, QuantLayer


@dataclass
class QuantLayout:
    fold_pairs: list[tuple[str, str]] = field(default_factory=list)
    quantized: list[str] = field(default_factory=list)  # wrapped module names, in module order
    input_scaled: list[str] = field(default_factory=list)  # layers with per-channel input scaling
    kept_float: list[str] = field(default_factory=list)  # quantizable layers left in FP32
    shared_inputs: list[list[str]] = field(default_factory=list)  # groups of layers reading one tensor: one scale
    float_weights: list[str] = field(default_factory=list)  # quantized layers whose weights stay FP32 (input INT8)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "QuantLayout":
        return cls(
            fold_pairs=[tuple(p) for p in data["fold_pairs"]],
            quantized=list(data["quantized"]),
            input_scaled=list(data["input_scaled"]),
            kept_float=list(data["kept_float"]),
            shared_inputs=[list(g) for g in data.get("shared_inputs", [])],  # absent in older checkpoints
            float_weights=list(data.get("float_weights", [])),  # absent in older checkpoints
        )


def _is_sparse_conv(module: nn.Module) -> bool:
    """An spconv SparseConvolution (or subclass), told by the classes of `module` itself: importing spconv (seconds)
    just to test a type would slow down every pillar model."""
    return any(cls.__name__ == "SparseConvolution" and cls.__module__.startswith("spconv.")
               for cls in type(module).__mro__)


def _wrapper_for(module: nn.Module, add_types: tuple[type, ...]):
    if add_types and isinstance(module, add_types):
        return QuantAdd
    if _is_sparse_conv(module):
        from .sparse import QuantSparseConv

        return QuantSparseConv
    for base, wrapper in DENSE_WRAPPERS.items():
        if type(module) is base:
            return wrapper
    return None


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in patterns)


def plan_layout(model: nn.Module, extra_fold_pairs=(), add_types: tuple[type, ...] = (), keep_float=(),
                input_scaled=(), float_weights=()) -> QuantLayout:
    """Which BNs fold into which layers, which layers get quantized (all but `keep_float` names / prefixes), and
    which quantized layers keep FP32 weights (`float_weights`: exact layer names; their input stays INT8)."""
    pairs = find_sequential_pairs(model) + [tuple(p) for p in extra_fold_pairs]
    quantized, kept = [], []
    for name, module in model.named_modules():
        if _wrapper_for(module, add_types) is None:
            continue
        (kept if _matches(name, tuple(keep_float)) else quantized).append(name)
    unknown = [n for n in keep_float if not any(_matches(q, (n,)) for q in quantized + kept)]
    if unknown:
        raise ValueError(f"keep_float names no quantizable layer: {unknown}")
    scaled = [n for n in input_scaled if n in quantized]
    not_quantized = [n for n in float_weights if n not in quantized]
    if not_quantized:
        raise ValueError(f"float_weights names no quantized layer: {not_quantized}")
    return QuantLayout(fold_pairs=pairs, quantized=quantized, input_scaled=scaled, kept_float=kept,
                       float_weights=list(float_weights))


def prepare(model: nn.Module, layout: QuantLayout, add_types: tuple[type, ...] = (), structure_only: bool = False):
    """Fold and wrap `model` in place following `layout`. structure_only: the layout only (for loading a state_dict).
    Returns {name: wrapper}."""
    fold_batch_norms(model, layout.fold_pairs, structure_only=structure_only)
    device = next((p.device for p in model.parameters()), None)
    wrappers = {}
    for name in layout.quantized:
        module = model.get_submodule(name)
        wrapper_cls = _wrapper_for(module, add_types)
        if wrapper_cls is None:
            raise ValueError(f"{name} ({type(module).__name__}) cannot be quantized")
        if wrapper_cls is QuantAdd:
            wrapper = QuantAdd(module)
        else:
            wrapper = wrapper_cls(module, input_channel_scaling=name in layout.input_scaled)
            wrapper.float_weight = name in layout.float_weights
        if device is not None:  # the wrapper's own ranges and scales are made on the CPU: move them to the model
            wrapper.to(device)
        _set_submodule(model, name, wrapper)
        wrappers[name] = wrapper
    return wrappers


def quant_wrappers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, (QuantLayer, QuantAdd))}
