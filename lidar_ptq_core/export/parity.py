"""Parity at export: a bundle's shipped graphs against the torch model they came from (fake-quant for INT8), on a few
calibration frames, before the bundle is written.

Per graph and output: the largest and the mean absolute difference, and the error, the mean absolute difference over
the reference's mean magnitude (scale-free, so one threshold fits heatmap logits and box offsets alike). Graphs:
  pillar_encoder.onnx  its output against the model's PFN (uint8 codes: differences in grid steps)
  the onnxruntime dense graph, run as the runtime runs it (after the shipped encoder and the numpy scatter for a
                       pillar bundle): head outputs against the model's
  dense.onnx           (INT8) the QDQ graph on onnxruntime, fed the model's own BEV map: what TensorRT is given
  dense.onnx on openvino  when export chose OpenVINO as the bundle's CPU engine (runtime.cpu.auto): the same graph
                       on OpenVINO, which `auto` then runs
and the agreement of the decoded boxes of the onnxruntime runtime (and OpenVINO, when chosen) with the model's
(agreement.py: the share of the model's confident boxes it reproduces, and of its own boxes that the model has). The
bundle passes when every error is at most `max_error` and both agreements are at least `min_agreement` (frames
without confident boxes leave the agreement undefined, which does not fail).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# onnxruntime's integer graph matches fake-quant up to a rounding tie now and then (errors of 1e-4-1e-3 on the sim
# models); a wrong scale or weight gives errors of 0.1 and more.
DEFAULT_MAX_ERROR = 0.02
DEFAULT_MIN_AGREEMENT = 0.95
DEFAULT_FRAMES = 4


@dataclass(frozen=True)
class ParitySettings:
    frames: int = DEFAULT_FRAMES  # 0: no check (recorded as such)
    source: str = "sim"  # 'sim' (calibration split), a folder of .bin / .pcd files, a file or a rosbag2 bag
    max_error: float = DEFAULT_MAX_ERROR
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    topic: str | None = None  # the bag topic, when `source` is a bag with several

    def __post_init__(self) -> None:
        if int(self.frames) < 0:
            raise ValueError(f"--parity-frames must be >= 0, got {self.frames}")
        if not self.max_error >= 0:
            raise ValueError(f"--parity-max-error must be >= 0, got {self.max_error}")
        if not 0 <= self.min_agreement <= 1:
            raise ValueError(f"--parity-min-agreement must be in [0, 1], got {self.min_agreement}")


class _Differences:
    """Running max / mean absolute difference and reference magnitude of one output over frames."""

    def __init__(self):
        self.max_abs, self.sum_abs, self.sum_ref, self.count = 0.0, 0.0, 0.0, 0

    def add(self, got: np.ndarray, reference: np.ndarray) -> None:
        got, reference = np.asarray(got, np.float64), np.asarray(reference, np.float64)
        if got.shape != reference.shape:
            raise ValueError(f"shape {got.shape} differs from the reference's {reference.shape}")
        diff = np.abs(got - reference)
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.sum_ref += float(np.abs(reference).sum())
        self.count += diff.size

    def summary(self) -> dict:
        mean_abs = self.sum_abs / max(self.count, 1)
        ref_mean_abs = self.sum_ref / max(self.count, 1)
        error = mean_abs / ref_mean_abs if ref_mean_abs > 0 else (0.0 if mean_abs == 0 else math.inf)
        return {"max_abs": self.max_abs, "mean_abs": mean_abs, "ref_mean_abs": ref_mean_abs, "error": error}


def _flat(outputs: list[dict], names: list[str]) -> dict[str, np.ndarray]:
    """Head outputs (one dict per task) as {"<task>.<head>": numpy array}."""
    flat = {}
    for name in names:
        task, head = name.split(".", 1)
        value = outputs[int(task)][head]
        flat[name] = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    return flat


def parity_clouds(model, settings: ParitySettings) -> tuple[list[np.ndarray], str]:
    from ..calibration_data import calibration_clouds

    return calibration_clouds(settings.source, settings.frames, settings.topic, progress=False,
                              model_config=model.config)


def check_parity(model, bundle, settings: ParitySettings, clouds: list[np.ndarray] | None = None) -> dict:
    """The parity report of `bundle`'s graphs against `model` (see the module docstring); `clouds` (points in the
    model's feature order) replace the frames `settings` names."""
    import onnxruntime as ort
    import torch

    from ..agreement import detection_agreement
    from ..decode import decode_batch
    from ..runtime.onnx_backend import OnnxRuntimeBackend, runtime_section
    from ..voxelize import voxelize_clouds
    from .onnx_ort_int8 import to_input_codes

    if clouds is None:
        clouds, source = parity_clouds(model, settings)
    else:
        source = f"{len(clouds)} given frames"
    plan = runtime_section(bundle)
    names, ort_plan = plan["outputs"], plan["onnxruntime"]
    code_scale = plan["bev"]["scale"]
    config = model.config
    if ort_plan["encoder"] is not None:
        runtime = OnnxRuntimeBackend(bundle, threads=1)
    else:
        from ..runtime.backends import TorchEncoderOnnxBackend

        runtime = TorchEncoderOnnxBackend(model, bundle.read_part(ort_plan["dense"]), threads=1, graph="shipped",
                                     code_scale=code_scale)
    openvino = None
    openvino_part = f"{plan['tensorrt']['dense']} on openvino"  # its name in the report
    if (plan.get("cpu") or {}).get("auto") == "openvino":  # the engine auto picks on the CPU is checked too
        from ..runtime.openvino_backend import OpenVinoBackend

        openvino = OpenVinoBackend(model, bundle.read_part(plan["tensorrt"]["dense"]), threads=1)
    qdq = None
    if ort_plan["dense"] != plan["tensorrt"]["dense"]:  # an INT8 bundle: its QDQ graph is a graph of its own
        qdq = ort.InferenceSession(bundle.read_part(plan["tensorrt"]["dense"]), providers=["CPUExecutionProvider"])
    graphs: dict[str, dict[str, _Differences]] = {}

    def record(part: str, output: str, got, reference) -> None:
        graphs.setdefault(part, {}).setdefault(output, _Differences()).add(got, reference)

    reference_boxes, runtime_boxes, openvino_boxes = [], [], []
    with torch.inference_mode():
        for points in clouds:
            batch, _ = voxelize_clouds([points], config.voxelization, config.num_point_features)
            encoded = model.encode(batch)
            bev = model.to_bev(encoded, batch)
            reference = model.dense(bev)
            flat_reference = _flat(reference, names)
            if ort_plan["encoder"] is not None:
                numpy_batch = {k: v.numpy() if torch.is_tensor(v) else v for k, v in batch.items()}
                expected = encoded if code_scale is None else to_input_codes(encoded, code_scale)
                record(ort_plan["encoder"], "pillar_features", runtime.encode(numpy_batch), expected.numpy())
                outputs = runtime(numpy_batch)
            else:
                outputs = runtime(batch)
            for name, value in _flat(outputs, names).items():
                record(ort_plan["dense"], name, value, flat_reference[name])
            if qdq is not None:
                for name, value in zip(names, qdq.run(None, {qdq.get_inputs()[0].name: bev.numpy()})):
                    record(plan["tensorrt"]["dense"], name, value, flat_reference[name])
            geometry = config.head_geometry()
            reference_boxes += decode_batch(reference, geometry, config.post_processing)
            runtime_boxes += decode_batch(outputs, geometry, config.post_processing)
            if openvino is not None:
                openvino_outputs = openvino.dense(bev)
                for name, value in _flat(openvino_outputs, names).items():
                    record(openvino_part, name, value, flat_reference[name])
                openvino_boxes += decode_batch(openvino_outputs, geometry, config.post_processing)

    report = {"checked": True, "frames": len(clouds), "source": source,
              "thresholds": {"max_error": settings.max_error, "min_agreement": settings.min_agreement},
              "graphs": {part: {name: d.summary() for name, d in outputs.items()} for part, outputs in graphs.items()}}
    class_names = config.head_geometry().class_names
    engines = {"onnxruntime": detection_agreement(reference_boxes, runtime_boxes, class_names)}
    if openvino is not None:
        engines["openvino"] = detection_agreement(reference_boxes, openvino_boxes, class_names)
    report["boxes"] = {engine: {key: agreement[key] for key in
                                ("reference_boxes", "other_boxes", "matched", "reference_recall", "other_precision",
                                 "map_vs_reference")} for engine, agreement in engines.items()}
    # OpenVINO's failures are kept apart: it is an optional engine, and export decides what they mean.
    failures, openvino_failures = [], []
    for part, outputs in report["graphs"].items():
        for name, summary in outputs.items():
            if not summary["error"] <= settings.max_error:
                (openvino_failures if part == openvino_part else failures).append(
                    f"{part} output {name}: error {summary['error']:.4g} > {settings.max_error:g}")
    for engine, agreement in engines.items():
        for key in ("reference_recall", "other_precision"):
            value = agreement[key]
            if not math.isnan(value) and value < settings.min_agreement:
                (openvino_failures if engine == "openvino" else failures).append(
                    f"{engine} boxes {key} {value:.3f} < {settings.min_agreement:g}")
    report["passed"] = not failures
    report["failures"] = failures
    if openvino_failures:
        report["openvino_failures"] = openvino_failures
    return _json_safe(report)


def _json_safe(value):
    """NaN / inf as null: the manifest is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def parity_lines(parity: dict | None) -> list[str]:
    """What `lidar-ptq inspect` prints of a manifest's parity section."""
    if not parity:
        return ["parity        not recorded (bundle written before export checked parity)"]
    if not parity.get("checked"):
        return ["parity        not checked (exported with --parity-frames 0)"]
    limits = parity["thresholds"]
    lines = [f"parity        {'passed' if parity['passed'] else 'FAILED'} on {parity['source']} "
             f"(error = mean |diff| / mean |reference| <= {limits['max_error']:g}, "
             f"box agreement >= {limits['min_agreement']:g})"]
    for part, outputs in parity["graphs"].items():
        worst = max(outputs.items(), key=lambda item: -1 if item[1]["error"] is None else item[1]["error"])
        lines.append(f"  {part}: {len(outputs)} outputs, worst {worst[0]} error {_number(worst[1]['error'])} "
                     f"(max |diff| {_number(worst[1]['max_abs'])}, mean {_number(worst[1]['mean_abs'])})")
    for engine, boxes in parity["boxes"].items():
        lines.append(f"  {engine} boxes: {boxes['matched']} of {boxes['reference_boxes']} reference boxes "
                     f"reproduced (recall {_number(boxes['reference_recall'])}, precision "
                     f"{_number(boxes['other_precision'])}, mAP vs reference {_number(boxes['map_vs_reference'])})")
    lines += [f"  failed: {failure}" for failure in parity.get("failures", [])]
    return lines


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"
