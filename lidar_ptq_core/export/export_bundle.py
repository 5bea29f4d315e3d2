"""Checkpoint -> `.lptq` bundle: the checkpoint itself (the torch reference path, config and quantization embedded)
and the dense part as ONNX (QDQ for an INT8 checkpoint: what TensorRT and onnxruntime consume)."""

from __future__ import annotations

import json
from pathlib import Path

from .bundle import BundleManifest, read_bundle, write_bundle
from .onnx_qdq import INPUT_NAME, OPSET, export_dense_onnx, output_names
from .validate import validate_tensorrt_onnx

CHECKPOINT_PART = "model.safetensors"
DENSE_PART = "dense.onnx"


def export_bundle(checkpoint: str | Path, out: str | Path) -> Path:
    from ..recipes.centerpoint import load_any_checkpoint, read_metadata

    checkpoint = Path(checkpoint)
    model = load_any_checkpoint(checkpoint)
    metadata = read_metadata(checkpoint)
    quantization = None
    if getattr(model, "quantization", None) is not None:
        summary = json.loads(metadata.get("report", "{}"))
        quantization = {"method": model.quantization.get("method", "unknown"), "summary": summary,
                        "config": model.quantization}
    dense = export_dense_onnx(model)
    validate_tensorrt_onnx(dense, DENSE_PART)  # onnx checker, polygraphy, TensorRT's Q/DQ rules
    manifest = BundleManifest.for_model(model.config, quantization)
    parts = {CHECKPOINT_PART: checkpoint.read_bytes(), DENSE_PART: dense}
    return write_bundle(out, manifest, parts)


def load_bundle_model(path: str | Path, device: str = "cpu"):
    """(model, bundle): the torch model of a bundle's checkpoint part, checked against the manifest's config."""
    from ..recipes.centerpoint import load_checkpoint_bytes

    bundle = read_bundle(path)
    if CHECKPOINT_PART not in bundle.manifest.parts:
        raise ValueError(f"{path}: the bundle has no {CHECKPOINT_PART} part")
    model = load_checkpoint_bytes(bundle.read_part(CHECKPOINT_PART), f"{path}:{CHECKPOINT_PART}", device)
    if model.config != bundle.config:
        raise ValueError(f"{path}: the manifest's model config does not match the weights' embedded config")
    return model, bundle


def dense_graph_contract(model) -> dict:
    """What the dense ONNX part must look like for this model: input name and shape, output names."""
    channels, height, width, _ = model.config.bev_input_geometry()
    return {"input": INPUT_NAME, "shape": [1, channels, height, width], "outputs": output_names(model), "opset": OPSET}
