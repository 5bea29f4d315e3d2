"""Checkpoint -> `.lptq` bundle: the checkpoint itself (the torch reference path, config and quantization embedded)
and every graph a backend runs, so that loading a bundle builds none:

  dense.onnx           the dense part as TensorRT's QDQ graph (FP32 graph for an FP32 model): TensorRT, other QDQ
                       consumers, and onnxruntime for an FP32 model
  dense_ort_int8.onnx  INT8 models: onnxruntime's integer graph of the same numbers (export/onnx_ort_int8.py)
  pillar_encoder.onnx  pillar models: PillarVFE as ONNX (export/pillar_encoder.py), FP32 features or, when the
                       integer graph takes the BEV map as uint8 codes, those codes

The manifest's `runtime` section (runtime_plan) names the parts each engine runs and what the BEV map between them
holds; its `parity` section records the shipped graphs against the torch model on calibration frames
(export/parity.py), and a bundle whose graphs disagree beyond the thresholds is not written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .bundle import BundleManifest, read_bundle, write_bundle

CHECKPOINT_PART = "model.safetensors"
DENSE_PART = "dense.onnx"
ORT_DENSE_PART = "dense_ort_int8.onnx"
ENCODER_PART = "pillar_encoder.onnx"
PART_ROLES = {CHECKPOINT_PART: "checkpoint", DENSE_PART: "dense-qdq", ORT_DENSE_PART: "dense-ort-int8",
              ENCODER_PART: "pillar-encoder"}


def export_graphs(model) -> tuple[dict[str, bytes], dict]:
    """(graph parts, runtime plan) of a model: every graph a backend runs, and which runs where."""
    from .onnx_ort_int8 import ZERO_POINT, dense_part_quantized, export_dense_ort_int8, input_code_scale
    from .onnx_qdq import export_dense_onnx, output_names
    from .pillar_encoder import export_pillar_encoder, is_pillar_model
    from .validate import validate_tensorrt_onnx

    dense = export_dense_onnx(model)
    validate_tensorrt_onnx(dense, DENSE_PART)  # onnx checker, polygraphy, TensorRT's Q/DQ rules
    parts = {DENSE_PART: dense}
    code_scale = None
    ort_dense = DENSE_PART
    if dense_part_quantized(model):
        code_scale = input_code_scale(model)
        parts[ORT_DENSE_PART] = export_dense_ort_int8(model, input_codes=code_scale is not None)
        ort_dense = ORT_DENSE_PART
    encoder = None
    if is_pillar_model(model):
        parts[ENCODER_PART] = export_pillar_encoder(model, code_scale)
        encoder = ENCODER_PART
    channels, height, width, _ = model.config.bev_input_geometry()
    plan = {
        "outputs": output_names(model),
        # What onnxruntime's dense graph takes: FP32 features, or uint8 codes on the grid of `scale`; `background`
        # fills the cells without a pillar (0, or the zero-point: the code of 0).
        "bev": {"shape": [channels, height, width], "dtype": "float32" if code_scale is None else "uint8",
                "background": 0 if code_scale is None else ZERO_POINT, "scale": code_scale},
        "onnxruntime": {"encoder": encoder, "dense": ort_dense},  # encoder None: torch + spconv (voxel models)
        "tensorrt": {"encoder": None, "dense": DENSE_PART},  # the encoder in torch on the GPU, FP32 BEV map
        "cpu": cpu_engine_choice(model),
    }
    return parts, plan


def cpu_engine_choice(model) -> dict:
    """Which engine `auto` runs this bundle on without TensorRT: {"auto": "onnxruntime" | "openvino", "why": str}.
    onnxruntime's integer graph runs every INT8 conv whose output is read as INT8 as a QLinearConv, but a conv whose
    output feeds an FP32 layer (the heads' hidden convs before output layers kept in FP32) only as an FP32 conv;
    OpenVINO runs the bundle's QDQ graph with such convs in INT8 and FP32 output. So a bundle with such convs picks
    OpenVINO where it is installed at export (the parity check then runs it too), else onnxruntime."""
    import importlib.util

    from .onnx_ort_int8 import dense_part_quantized, int8_layer_report

    if not dense_part_quantized(model):
        return {"auto": "onnxruntime", "why": "FP32 model"}
    fp32_convs = [name for name, how in int8_layer_report(model).items() if how.startswith("fp32 output (feeds")]
    if not fp32_convs:
        return {"auto": "onnxruntime", "why": "every INT8 conv runs as an integer conv in onnxruntime"}
    why = (f"{len(fp32_convs)} INT8 convs feed FP32 layers, which onnxruntime's integer graph computes in FP32 "
           f"({', '.join(fp32_convs[:3])}{', ...' if len(fp32_convs) > 3 else ''})")
    if importlib.util.find_spec("openvino") is None:
        return {"auto": "onnxruntime", "why": why + "; openvino was not installed at export"}
    return {"auto": "openvino", "why": why + "; OpenVINO runs them as INT8 convs"}


def export_bundle(checkpoint: str | Path, out: str | Path, parity=None) -> Path:
    """Write the bundle of `checkpoint` to `out`. `parity` (export/parity.py ParitySettings): the check of the
    shipped graphs against the torch model, default 4 sim calibration frames; a ValueError names what disagreed."""
    from ..recipes.centerpoint import load_any_checkpoint, read_metadata
    from .parity import ParitySettings, check_parity

    checkpoint = Path(checkpoint)
    model = load_any_checkpoint(checkpoint).eval()
    metadata = read_metadata(checkpoint)
    quantization = None
    if getattr(model, "quantization", None) is not None:
        summary = json.loads(metadata.get("report", "{}"))
        quantization = {"method": model.quantization.get("method", "unknown"), "summary": summary,
                        "config": model.quantization}
    graphs, plan = export_graphs(model)
    manifest = BundleManifest.for_model(model.config, quantization)
    manifest.runtime = plan
    manifest.parts = {name: {"role": PART_ROLES[name]} for name in (CHECKPOINT_PART, *graphs)}
    parts = {CHECKPOINT_PART: checkpoint.read_bytes(), **graphs}
    settings = parity if parity is not None else ParitySettings()
    if settings.frames == 0:
        manifest.parity = {"checked": False}
        return write_bundle(out, manifest, parts)
    # The check runs the bundle as a robot loads it, so a draft is written beside `out` first.
    out = Path(out)
    handle, draft = tempfile.mkstemp(suffix=".lptq", prefix=f".{out.name}.parity-", dir=out.parent)
    os.close(handle)
    try:
        write_bundle(draft, manifest, parts)
        report = check_parity(model, read_bundle(draft), settings)
    finally:
        Path(draft).unlink(missing_ok=True)
    openvino_failures = report.pop("openvino_failures", [])
    if not report["passed"]:
        raise ValueError(f"the bundle's graphs disagree with the torch model, bundle not written: "
                         f"{'; '.join(report['failures'] + openvino_failures)} (thresholds: --parity-max-error, "
                         "--parity-min-agreement)")
    if openvino_failures:  # OpenVINO disagrees where onnxruntime holds: auto stays on onnxruntime, the bundle is fine
        manifest.runtime["cpu"] = {"auto": "onnxruntime", "why": "OpenVINO failed the parity check at export: "
                                   + "; ".join(openvino_failures)}
        report["openvino_refused"] = openvino_failures
    manifest.parity = report
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
    from .onnx_qdq import INPUT_NAME, OPSET, output_names

    channels, height, width, _ = model.config.bev_input_geometry()
    return {"input": INPUT_NAME, "shape": [1, channels, height, width], "outputs": output_names(model), "opset": OPSET}
