"""The one description of a built CenterPoint's layers and data flow, read off its modules.

Everything that needs to know how the network is wired derives it from `network_topology(model)`: the quantizer's
reconstruction blocks and channel-equalization pairs (recipes/centerpoint.py), the ONNX output names
(export/onnx_qdq.py) and the onnxruntime integer graph (export/onnx_ort_int8.py). A new backbone or head variant
changes this file only.

What it describes (and nothing about quantization):
- `encoder`: the groups before the BEV map, in module order: each PFN layer (pillar) or each sparse stage (voxel;
  its layers are not listed: nothing derived here looks inside the sparse backbone).
- `first_layer`: the layer that reads the raw point or voxel features (metres beside intensities): the encoder's
  first module with a weight matrix or kernel (or accepted by `is_layer`).
- `bev_producers`: the encoder layer whose output channels are the BEV map's channels one to one, reaching it through
  ReLU, the pillar max and the zero-filled scatter only (the last PFN layer's linear; empty for a voxel model, whose
  height compression turns each channel into one BEV channel per height).
- `nodes`: the dense part (backbone_2d + dense_head) in execution order: each conv `Layer` with what it reads (the
  BEV input, another layer, or a `Concat`), a ZeroPad2d before it, a BatchNorm and a ReLU after it.
- `groups`: the dense part's sequential containers, in module order (backbone blocks, deblocks, the head's shared
  conv, each head branch), with their layers in order.
- `outputs`: the network's outputs `<task>.<head>` in the order the head makes them, with the layer producing each.
- `layer_norms`: (layer, BatchNorm right after it) where a module's forward() wires them outside a sequential
  container (the PFN's linear + norm, a sparse residual block's conv + bn), as each such module declares them
  (`layer_norms()`); in module order. A sequential container's conv -> BatchNorm shows in the order of its children.

Only BaseBEVBackbone + CenterHead are known; anything else is one ValueError naming the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

INPUT = "bev"  # the dense part's input: the BEV map
CONCAT = "backbone_2d.concat"  # the concatenation of the backbone's levels (no module of its own)


@dataclass(frozen=True)
class Layer:
    """A conv of the dense part (the module at `name`)."""

    name: str
    source: str  # INPUT, a Layer's name or a Concat's name
    pad: int = 0  # symmetric ZeroPad2d right before it
    norm: str | None = None  # a BatchNorm between it and its ReLU (module path); None once folded away
    relu: bool = False


@dataclass(frozen=True)
class Concat:
    """Channel concatenation of `sources`, in that order."""

    name: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Group:
    """A container whose layers run one after the other. role: pfn, sparse_stage, block, deblock, shared, branch."""

    name: str
    role: str
    layers: tuple[str, ...]


@dataclass(frozen=True)
class Output:
    name: str  # "<task>.<head>", e.g. "0.hm"
    layer: str


@dataclass(frozen=True)
class Topology:
    encoder: tuple[Group, ...]
    first_layer: str
    bev_producers: tuple[str, ...]
    nodes: tuple[Layer | Concat, ...]
    groups: tuple[Group, ...]
    outputs: tuple[Output, ...]
    layer_norms: tuple[tuple[str, str], ...] = ()

    def layer(self, name: str) -> Layer:
        for node in self.nodes:
            if isinstance(node, Layer) and node.name == name:
                return node
        raise KeyError(name)

    def readers(self) -> dict[str, list[tuple[str, int | None]]]:
        """Per node name: the layers reading it directly or through concatenations, as (reader, index of the
        concatenated part it is, None when read whole), readers in module order (groups' order)."""
        order = {layer: i for i, layer in enumerate(n for g in self.groups for n in g.layers)}
        found: dict[str, list[tuple[str, int | None]]] = {n.name: [] for n in self.nodes}
        found[INPUT] = []
        concats = {n.name: n for n in self.nodes if isinstance(n, Concat)}

        def reach(source: str, reader: str, part: int | None):
            if source in concats:
                for index, inner in enumerate(concats[source].sources):
                    reach(inner, reader, index)  # one level of concatenation is what exists; deeper would nest
            else:
                found[source].append((reader, part))

        for node in self.nodes:
            if isinstance(node, Layer):
                reach(node.source, node.name, None)
        for readers in found.values():
            readers.sort(key=lambda r: order[r[0]])
        return found


def is_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))


def network_topology(model: nn.Module, is_layer: Callable[[nn.Module], bool] = is_conv) -> Topology:
    """The topology of a built CenterPoint. `is_layer` says which modules are the layers (convs); a caller whose
    model has its convs wrapped passes its own test."""
    from .backbone2d import BaseBEVBackbone
    from .head import CenterHead

    backbone, head = model.backbone_2d, model.dense_head
    if not isinstance(backbone, BaseBEVBackbone):
        raise ValueError(f"backbone_2d: unsupported module {type(backbone).__name__} (BaseBEVBackbone only)")
    if not isinstance(head, CenterHead):
        raise ValueError(f"dense_head: unsupported module {type(head).__name__} (CenterHead only)")

    from .map_to_bev import HeightCompression, PointPillarScatter

    expected_to_bev = HeightCompression if model.backbone_3d is not None else PointPillarScatter
    if not isinstance(model.map_to_bev_module, expected_to_bev):
        raise ValueError(f"map_to_bev_module: unsupported module {type(model.map_to_bev_module).__name__} "
                         f"({expected_to_bev.__name__} expected)")
    encoder, bev_producers = [], []
    pfn_layers = getattr(model.vfe, "pfn_layers", None)
    if model.backbone_3d is None and pfn_layers is not None:
        for i in range(len(pfn_layers)):
            encoder.append(Group(f"vfe.pfn_layers.{i}", "pfn", (f"vfe.pfn_layers.{i}.linear",)))
        bev_producers.append(f"vfe.pfn_layers.{len(pfn_layers) - 1}.linear")
    elif model.backbone_3d is not None:
        encoder += [Group(f"backbone_3d.{name}", "sparse_stage", ()) for name, _ in model.backbone_3d.named_children()]

    encoder_modules = [(f"vfe.{n}", m) for n, m in model.vfe.named_modules()]
    if model.backbone_3d is not None:
        encoder_modules += [(f"backbone_3d.{n}", m) for n, m in model.backbone_3d.named_modules()]
    # A layer, or a weight of 2+ dimensions (a Linear or a sparse conv; norms have 1-D weights). Module order puts a
    # wrapper that is_layer accepts before what it wraps.
    weighted = [n for n, m in encoder_modules
                if is_layer(m) or getattr(getattr(m, "weight", None), "ndim", 0) >= 2]
    if not weighted:
        raise ValueError("the encoder (vfe, backbone_3d) has no layer with weights")

    nodes: list[Layer | Concat] = []
    groups: dict[str, Group] = {}

    def sequence(container: nn.Module, source: str, prefix: str, role: str | None) -> str:
        """Walks a sequential container; returns the name of its last layer (what reads it reads that)."""
        pad, names = 0, []
        for index, module in enumerate(container):
            name = f"{prefix}.{index}"
            if isinstance(module, nn.ZeroPad2d):
                padding = set(module.padding) if isinstance(module.padding, tuple) else {module.padding}
                if len(padding) != 1:
                    raise ValueError(f"{name}: only symmetric ZeroPad2d is supported")
                pad += padding.pop()
                continue
            if pad and not is_layer(module):
                raise ValueError(f"{name}: ZeroPad2d must directly precede a conv")
            last = nodes[-1] if nodes else None
            if is_layer(module):
                nodes.append(Layer(name, source, pad))
                source, pad = name, 0
                names.append(name)
            elif isinstance(module, (nn.BatchNorm2d, nn.ReLU)):
                if not isinstance(last, Layer) or last.name != source or last.relu:
                    raise ValueError(f"{name}: a {type(module).__name__} must directly follow a conv")
                if isinstance(module, nn.ReLU):
                    nodes[-1] = Layer(last.name, last.source, last.pad, last.norm, relu=True)
                elif last.norm is not None:
                    raise ValueError(f"{name}: a second BatchNorm after {last.name}")
                else:
                    nodes[-1] = Layer(last.name, last.source, last.pad, name)
            elif isinstance(module, nn.Sequential):
                inner = sequence(module, source, name, None)
                names += [n.name for n in nodes if isinstance(n, Layer) and n.name.startswith(name + ".")]
                source = inner
            elif not isinstance(module, nn.Identity):  # a folded BatchNorm is an Identity
                raise ValueError(f"{name}: unsupported layer {type(module).__name__} in the dense part")
        if role is not None:
            groups[prefix] = Group(prefix, role, tuple(names))
        return source

    source, level_outputs = INPUT, []
    for level, block in enumerate(backbone.blocks):
        source = sequence(block, source, f"backbone_2d.blocks.{level}", "block")
        if len(backbone.deblocks):
            level_outputs.append(sequence(backbone.deblocks[level], source, f"backbone_2d.deblocks.{level}", "deblock"))
        else:
            level_outputs.append(source)
    if len(level_outputs) > 1:
        nodes.append(Concat(CONCAT, tuple(level_outputs)))
        source = CONCAT
    else:
        source = level_outputs[0]
    if len(backbone.deblocks) > len(backbone.blocks):
        extra = len(backbone.blocks)
        source = sequence(backbone.deblocks[extra], source, f"backbone_2d.deblocks.{extra}", "deblock")
    shared = sequence(head.shared_conv, source, "dense_head.shared_conv", "shared")
    outputs = []
    for task, separate in enumerate(head.heads_list):
        for name in separate.head_names:
            prefix = f"dense_head.heads_list.{task}.{name}"
            outputs.append(Output(f"{task}.{name}", sequence(getattr(separate, name), shared, prefix, "branch")))
    in_module_order = [groups[name] for name, _ in model.named_modules() if name in groups]
    layer_norms = [(f"{name}.{layer}", f"{name}.{norm}") for name, module in model.named_modules()
                   if callable(getattr(module, "layer_norms", None)) for layer, norm in module.layer_norms()]
    return Topology(tuple(encoder), weighted[0], tuple(bev_producers), tuple(nodes), tuple(in_module_order),
                    tuple(outputs), tuple(layer_norms))
