"""The CenterPoint recipe: what lidar_ptq_core.quant needs to know about CenterPoint, and the quantized checkpoint.

- BatchNorms wired by hand (PFN linear/norm, SparseBasicBlock conv/bn pairs) for folding; the rest are found in
  sequential containers.
- First layers (channel scaling): the PFN's first Linear (pillar) or the first SubMConv3d (voxel); both see metres.
- Reconstruction blocks: the PFN, each sparse stage, each backbone_2d block and deblock, the shared head conv and
  each head branch.
- Channel equalization pairs: each 2D conv and the layers that read its output through ReLU, zero padding and
  concatenation only (the backbone_2d chain, the deblocks into the concatenation, the shared conv into the head
  branches, and the pillar PFN into the first BEV conv through max pooling and the zero-filled scatter).
- TGPL: pseudo-labels are the FP32 model's decoded boxes (score >= tgpl_score_threshold, the top tgpl_top_k per
  frame: QuantConfig settings); the loss compares the quantized and FP32 head outputs (heatmap probabilities and box
  regression) at their centre cells.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..decode import decode_batch
from ..models.centerpoint import CenterPoint, build_centerpoint
from ..models.checkpoint import CHECKPOINT_FORMAT, write_state_with_metadata
from ..models.checkpoint import read_checkpoint_metadata as read_metadata
from ..models.config import model_config_from_yaml
from ..models.topology import INPUT, Concat, Layer, network_topology
from ..quant import (
    EqualizationPair,
    QuantConfig,
    QuantLayout,
    QuantTarget,
    load_quantized_state,
    method_config,
    quantize,
)
from ..quant.fold import output_channel_axis
from ..quant.modules import QuantLayer

QUANTIZED_FORMAT = "lidar-ptq-centerpoint-int8/1"
BOX_HEADS = ("center", "center_z", "dim", "rot")


def _residual_add_type(model: CenterPoint) -> tuple[type, ...]:
    """The voxel backbone's ResidualAdd where `model` has that backbone; pillar models skip importing
    models/backbone3d.py (and spconv with it, seconds)."""
    if model.backbone_3d is None:
        return ()
    from ..models.backbone3d import ResidualAdd

    return (ResidualAdd,)


def _is_layer(module) -> bool:
    """A conv of the dense part, wrapped for quantization or not (the recipe is asked of both kinds of model)."""
    return isinstance(module, (QuantLayer, nn.Conv2d, nn.ConvTranspose2d))


def fold_pairs(model: CenterPoint) -> list[tuple[str, str]]:
    """The BatchNorms to fold that are not in a sequential container after their layer (the quantizer finds those
    itself): the layer -> norm wiring the model's modules declare (models/topology.py layer_norms)."""
    return list(network_topology(model, is_layer=_is_layer).layer_norms)


def output_layers(model: CenterPoint) -> list[str]:
    """The layer that makes each network output (every head's last conv), from the model's topology."""
    return list(dict.fromkeys(output.layer for output in network_topology(model, is_layer=_is_layer).outputs))


def first_layers(model: CenterPoint) -> list[str]:
    return [network_topology(model, is_layer=_is_layer).first_layer]


def reconstruction_blocks(model: CenterPoint) -> list[str]:
    """Every group of the model's topology (models/topology.py), in module order."""
    topology = network_topology(model, is_layer=_is_layer)
    return [group.name for group in (*topology.encoder, *topology.groups)]


def equalization_pairs(model: CenterPoint) -> list[EqualizationPair]:
    """Each layer with the layers reading its output through ReLU, zero padding and concatenation only (channel
    offsets into a concatenation), from the model's topology. Producers in execution order, except the one read by
    the head branches, which comes last: equalize() applies pairs in order, and this was the recipe's order from the
    start (a branch's first conv is scaled as a producer before its input columns are measured as a reader)."""
    topology = network_topology(model, is_layer=_is_layer)
    readers = topology.readers()
    concat_offsets = {}  # concat name -> channel offset of each part
    for node in topology.nodes:
        if isinstance(node, Concat):
            offsets, offset = [], 0
            for part in node.sources:
                offsets.append(offset)
                module = model.get_submodule(part)
                offset += module.weight.shape[output_channel_axis(module)]
            concat_offsets[node.name] = offsets
    branch_firsts = {group.layers[0] for group in topology.groups if group.role == "branch"}
    pairs = []
    # The pillar max and the zero-filled scatter pass channels one to one; kept to a one-layer PFN as before.
    if len(topology.encoder) == 1 and topology.bev_producers:
        pairs.append(EqualizationPair(topology.bev_producers[0], tuple((r, 0) for r, _ in readers[INPUT])))
    for node in topology.nodes:
        if not isinstance(node, Layer) or not readers[node.name]:
            continue
        consumers = []
        for reader, part in readers[node.name]:
            source = topology.layer(reader).source
            consumers.append((reader, 0 if part is None else concat_offsets[source][part]))
        pairs.append(EqualizationPair(node.name, tuple(consumers)))
    fan_out = [p for p in pairs if {name for name, _ in p.consumers} <= branch_firsts]
    return [p for p in pairs if p not in fan_out] + fan_out


@dataclass
class TGPLHook:
    """Task-guided global positive loss for a CenterPoint head.

    At the pseudo-label centres: squared error of the heatmap probabilities (every class) plus L1 of the box
    regression (center, center_z, dim, rot). Beside it, with `background_weight`, the squared error of the heatmap
    probabilities over the whole map, so quantization does not light up false positives elsewhere. Probabilities,
    not logits: a background logit moving from -12 to -9 changes no detection.
    """

    model: CenterPoint
    score_threshold: float = QuantConfig.tgpl_score_threshold  # the defaults live in QuantConfig
    top_k: int = QuantConfig.tgpl_top_k
    heatmap_weight: float = 1.0
    box_weight: float = 1.0
    background_weight: float = 1.0

    def targets(self, batch, fp_outputs) -> list[torch.Tensor]:
        """Per task: positive cells (frame, row, col) of the FP32 detections kept as pseudo-labels."""
        geometry = self.model.config.head_geometry()
        detections = decode_batch(fp_outputs, geometry, self.model.config.post_processing)
        task_of_class = [t for t, names in enumerate(geometry.task_class_names) for _ in names]
        cells = [[] for _ in geometry.task_class_names]
        for frame, det in enumerate(detections):
            keep = np.flatnonzero(det.scores >= self.score_threshold)
            keep = keep[np.argsort(-det.scores[keep], kind="stable")][: self.top_k]
            cols, rows = geometry.metres_to_grid(det.boxes[keep, 0], det.boxes[keep, 1])
            for label, col, row in zip(det.labels[keep], np.floor(cols), np.floor(rows)):
                if 0 <= row < geometry.height and 0 <= col < geometry.width:
                    cells[task_of_class[int(label)]].append((frame, int(row), int(col)))
        return [torch.tensor(sorted(set(c)), dtype=torch.long).reshape(-1, 3) for c in cells]

    def output_sites(self, fp_outputs, targets) -> list[torch.Tensor]:
        """Per output tensor (every head of every task, in output order): the (frame, row, col) mask of its task's
        pseudo-label centres, where decoding reads scores and boxes (quant/output_correction.py)."""
        masks = []
        for out, cells in zip(fp_outputs, targets):
            hm = out["hm"]
            mask = torch.zeros((hm.shape[0], *hm.shape[2:]), dtype=torch.bool, device=hm.device)
            if cells.numel():
                mask[cells[:, 0], cells[:, 1], cells[:, 2]] = True
            masks += [mask] * len(out)
        return masks

    def positive_loss(self, outputs, fp_outputs, targets) -> torch.Tensor:
        total = outputs[0]["hm"].new_zeros(())
        for out, ref, cells in zip(outputs, fp_outputs, targets):
            if cells.numel() == 0:
                continue
            at = (cells[:, 0], slice(None), cells[:, 1], cells[:, 2])  # (B, C, H, W)[at] -> (positives, C)
            hm_error = (torch.sigmoid(out["hm"][at]) - torch.sigmoid(ref["hm"][at]).detach()) ** 2
            box_error = sum((out[k][at] - ref[k][at].detach()).abs().sum() for k in BOX_HEADS)
            total = total + self.heatmap_weight * hm_error.sum() + self.box_weight * box_error
        return total

    def loss(self, outputs, fp_outputs, targets) -> torch.Tensor:
        total = self.positive_loss(outputs, fp_outputs, targets)
        if self.background_weight:
            for out, ref in zip(outputs, fp_outputs):
                error = (torch.sigmoid(out["hm"]) - torch.sigmoid(ref["hm"]).detach()) ** 2
                total = total + self.background_weight * error.sum()
        return total


def centerpoint_target(model: CenterPoint, config: QuantConfig | None = None) -> QuantTarget:
    """What the quantizer needs to know about `model`; TGPL's pseudo-labels use `config`'s tgpl_score_threshold and
    tgpl_top_k (QuantConfig's defaults without a config)."""
    config = config or QuantConfig()
    return QuantTarget(
        forward=lambda m, batch: m(batch),
        fold_pairs=fold_pairs(model),
        add_types=_residual_add_type(model),
        first_layers=first_layers(model),
        blocks=reconstruction_blocks(model),
        task_hook=TGPLHook(model, config.tgpl_score_threshold, config.tgpl_top_k),
        equalization_pairs=equalization_pairs(model),
        output_layers=output_layers(model),
    )


def quantize_centerpoint(model: CenterPoint, calibration_batches, method: str = "lidar-ptq",
                         config: QuantConfig | None = None, progress: bool = True, work_dir=None,
                         tgpl_score_threshold: float | None = None, tgpl_top_k: int | None = None, log=None):
    """(quantized CenterPoint, report). The quantized model keeps `.config` so Detector and decode work as before.
    TGPL's pseudo-labels are the FP32 detections with score >= config.tgpl_score_threshold, at most config.tgpl_top_k
    per frame; the two keyword arguments, where given, override those settings (for callers from before they were
    settings)."""
    model = model.eval()
    config = config or method_config(method)
    overrides = {k: v for k, v in (("tgpl_score_threshold", tgpl_score_threshold), ("tgpl_top_k", tgpl_top_k))
                 if v is not None}
    config = replace(config, **overrides)
    return quantize(model, calibration_batches, method, config, centerpoint_target(model, config), progress=progress,
                    work_dir=work_dir, log=log)


# -- the quantized checkpoint: one safetensors file, config + layout + quantization settings in its metadata

def save_quantized_checkpoint(qmodel: CenterPoint, report, path: str | Path) -> Path:
    summary = {k: report.to_dict()[k] for k in ("method", "calibration_frames", "seconds", "stages", "provenance")}
    metadata = {
        "format": QUANTIZED_FORMAT,
        "config": qmodel.config.to_yaml(),
        "layout": json.dumps(report.layout),
        "quantization": json.dumps(report.config),
        "report": json.dumps(summary),
    }
    return write_state_with_metadata(qmodel, path, metadata)


def safetensors_metadata_from_bytes(data: bytes) -> dict:
    """The __metadata__ of safetensors bytes (8-byte little-endian header length, then the JSON header)."""
    if len(data) < 8:
        raise ValueError("not a safetensors file (too short)")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8:
        raise ValueError("not a safetensors file (header longer than the data)")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a safetensors file ({exc})") from None
    return header.get("__metadata__") or {}


def model_from_state(state: dict, metadata: dict, source: str, device="cpu") -> CenterPoint:
    """An FP32 or INT8 CenterPoint from a state_dict and its checkpoint metadata (file or bundle part)."""
    fmt = metadata.get("format")
    if fmt not in (QUANTIZED_FORMAT, CHECKPOINT_FORMAT) or "config" not in metadata:
        raise ValueError(f"{source}: unknown checkpoint format {fmt!r}")
    try:
        config = model_config_from_yaml(metadata["config"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source}: the embedded model config does not parse: {exc}") from None
    model = build_centerpoint(config, device=device)
    state = {k: v.to(device) for k, v in state.items()}
    if fmt == CHECKPOINT_FORMAT:
        from ..models.checkpoint import load_state_dict_checked

        load_state_dict_checked(model, state, source=source)
        return model.eval()
    try:
        layout = QuantLayout.from_dict(json.loads(metadata["layout"]))
    except (KeyError, json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{source}: damaged quantization metadata ({exc})") from exc
    try:
        load_quantized_state(model, layout, state, _residual_add_type(model))
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{source}: weights do not match the quantized layout: {str(exc).splitlines()[0]}") from exc
    model.quantization = json.loads(metadata.get("quantization", "{}"))
    return model.eval()


def load_quantized_checkpoint(path: str | Path, device="cpu") -> CenterPoint:
    """Build the FP32 model from the embedded config, rebuild the quantized layout, load the state strictly."""
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    if metadata.get("format") != QUANTIZED_FORMAT:
        raise ValueError(f"{path}: not a {QUANTIZED_FORMAT} checkpoint (format {metadata.get('format')!r})")
    return model_from_state(load_file(str(path)), metadata, str(path), device)


def load_any_checkpoint(path: str | Path, device="cpu") -> CenterPoint:
    """An FP32 (lidar-ptq-centerpoint) or INT8 fake-quant (lidar-ptq-centerpoint-int8) checkpoint."""
    from safetensors.torch import load_file

    metadata = read_metadata(path)  # checks the format before any tensor is read
    if metadata.get("format") not in (QUANTIZED_FORMAT, CHECKPOINT_FORMAT):
        raise ValueError(f"{path}: unknown checkpoint format {metadata.get('format')!r}")
    return model_from_state(load_file(str(path)), metadata, str(path), device)


def load_checkpoint_bytes(data: bytes, source: str, device="cpu") -> CenterPoint:
    """A checkpoint held in memory (a bundle part): FP32 or INT8."""
    from safetensors.torch import load

    metadata = safetensors_metadata_from_bytes(data)
    try:
        state = load(data)
    except Exception as exc:  # safetensors raises its own error types for damaged data
        raise ValueError(f"{source}: unreadable safetensors data ({exc})") from None
    return model_from_state(state, metadata, source, device)
