"""Engine speed: FP32 and INT8 CenterPoint on torch and onnxruntime (CPU), per stage and end to end, in one run
(`lidar-ptq bench`, `benchmarks/bench_engine.py`).

Every row detects the same frames, interleaved (frame by frame, the row order rotating), so a load change on a shared
machine hits all rows alike. Per frame and row: voxelize (numpy), encode (PFN + scatter or the sparse backbone, torch
in every row; the integer graph's row scatters uint8 codes: backend.bev_input), dense (backbone_2d + head: the row's
backend), decode; network = encode + dense; total = all four.
Medians and p90 over frames x repeats, after one warm-up frame per row.

Rows (keys for `rows=`):
  fp32-torch            the FP32 model in torch
  fp32-ort              the FP32 dense part as ONNX (export_dense_onnx) in onnxruntime
  int8-torch            the INT8 model in torch (fake-quant: FP32 kernels on INT8-exact values; the reference)
  int8-ort-qdq          the INT8 model's TensorRT QDQ graph (the bundle's dense.onnx) in onnxruntime as is
  int8-ort              onnxruntime's integer graph of the INT8 model (export/onnx_ort_int8.py: QLinearConv)
  int8-openvino         the INT8 model's QDQ graph on OpenVINO's CPU plugin (runtime/openvino_backend.py; the
                        `openvino` backend), where openvino is installed
  ort-quantize-static   onnxruntime's own quantize_static of the FP32 dense part (QDQ, uint8 activations, int8
                        per-channel weights, MinMax) calibrated on calibration frames: a peer, not our model

Besides the times: accuracy (mAP) of every row where the frames have ground truth, agreement of every INT8 row with
FP32 (share of confident FP32 boxes reproduced, mAP with FP32's boxes as ground truth), the integer graph's output
difference from the fake-quant model, and which kernels onnxruntime ran (its own profile) per onnxruntime row.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .agreement import AGREEMENT_DISTANCE_M, AGREEMENT_MIN_SCORE, detection_agreement

# torch and the model code are imported where used: `lidar-ptq --help` and the other commands' parsers import this
# module (for ROWS) and should not pay for torch.

ROWS = {
    "fp32-torch": "fp32 torch",
    "fp32-ort": "fp32 onnxruntime",
    "int8-torch": "int8 torch fake-quant",
    "int8-ort-qdq": "int8 ort QDQ (TensorRT graph)",
    "int8-ort": "int8 ort integer (ours)",
    "int8-openvino": "int8 openvino QDQ graph",
    "ort-quantize-static": "ort quantize_static (peer)",
}
INT8_ROWS = ("int8-torch", "int8-ort-qdq", "int8-ort", "int8-openvino")
ENGINE_ROWS = ("int8-ort", "int8-openvino")  # the INT8 engines the speed-ups are given for
STAGES = ("voxelize", "encode", "dense", "decode")
COLUMNS = (*STAGES, "network", "total")
# Networks with no trained weights, built with random initialisation from a model config: timing only.
RANDOM_MODELS = {"waymo-pillar-random": "waymo_centerpoint_pillar_1x"}


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except (OSError, AttributeError):
        return "n/a"


def parse_rows(text: str | None) -> list[str]:
    """'fp32-torch,int8-ort' -> row keys (all rows for None or 'all', the OpenVINO row only where openvino is
    installed), in the table's order."""
    if text is None or text == "all":
        import importlib.util

        return [k for k in ROWS if k != "int8-openvino" or importlib.util.find_spec("openvino") is not None]
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ROWS]
    if unknown or not keys:
        raise ValueError(f"unknown rows {unknown or text!r}; expected a comma-separated subset of {list(ROWS)}")
    return [k for k in ROWS if k in keys]


def fit_point_features(points: np.ndarray, count: int) -> np.ndarray:
    """Points with at least `count` columns: missing ones (e.g. Waymo's elongation for x, y, z, intensity frames)
    are zeros."""
    points = np.asarray(points, np.float32)
    if points.shape[1] >= count:
        return points
    return np.concatenate([points, np.zeros((len(points), count - points.shape[1]), np.float32)], axis=1)


def random_model(name: str, seed: int = 0):
    """A network of RANDOM_MODELS built from its config with random weights (eval mode)."""
    import torch

    from .config_files import resolve_config
    from .models.centerpoint import build_centerpoint

    if name not in RANDOM_MODELS:
        raise ValueError(f"unknown random model {name!r}; expected one of {list(RANDOM_MODELS)}")
    torch.manual_seed(seed)
    return build_centerpoint(resolve_config(RANDOM_MODELS[name], "models")).eval()


def settle_batchnorm(model, batches: list[dict]):
    """Re-estimate every BatchNorm's running mean and variance on `batches` (a cumulative average; weights untouched),
    then back to eval mode. A randomly initialised network has running statistics 0 / 1, so its activations shrink
    layer by layer until the heads see almost nothing and no box passes a score threshold; with its own statistics
    each normalised layer sees unit-scale inputs, as in a trained network, so quantization ranges, export parity and
    box agreement are exercised on real numbers. Still random weights: the boxes mean nothing."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches
    model.eval()
    for norm in norms:
        norm.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return model.eval()


def quantize_for_bench(model, clouds: list[np.ndarray], method: str = "max"):
    """An INT8 fake-quant copy of `model` calibrated on `clouds` with a cheap method (no sensitivity analysis)."""
    from .quant import method_config
    from .recipes.centerpoint import quantize_centerpoint
    from .voxelize import voxelize_clouds

    config = model.config
    batches = [voxelize_clouds([fit_point_features(c, config.num_point_features)], config.voxelization,
                               config.num_point_features)[0] for c in clouds]
    qmodel, _ = quantize_centerpoint(model, batches, method, method_config(method, sensitivity_frames=0),
                                     progress=False)
    return qmodel.eval()


def ort_quantize_static(fp32_model, calib_bevs: list[np.ndarray]) -> bytes:
    """onnxruntime.quantization.quantize_static of the FP32 dense graph: QDQ, u8 activations, s8 per-channel weights,
    MinMax calibration over `calib_bevs` (BEV feature maps, one frame each)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from .export.onnx_qdq import INPUT_NAME, export_dense_onnx

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{INPUT_NAME: bev} for bev in calib_bevs])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="lidar_ptq_qs_") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(export_dense_onnx(fp32_model))
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax)
        return dst.read_bytes()


@dataclass
class BenchRow:
    key: str
    model: object  # a CenterPoint (FP32 or INT8 fake-quant)
    backend: object

    @property
    def label(self) -> str:
        return ROWS[self.key]


def build_rows(fp32, int8, keys: list[str], threads: int | None = None,
               calib_clouds: list[np.ndarray] | None = None, device="cpu") -> list[BenchRow]:
    """The rows `keys` over the FP32 and INT8 models (int8 may be None when no INT8 row is asked for);
    `calib_clouds` calibrate onnxruntime's quantize_static (the peer row). The torch rows run on `device` (a copy of
    the model there); onnxruntime rows always on the CPU."""
    import copy

    import torch

    from .runtime.backends import OnnxRuntimeBackend, TorchBackend
    from .voxelize import voxelize_clouds

    if int8 is None and any(k in INT8_ROWS for k in keys):
        raise ValueError(f"rows {[k for k in keys if k in INT8_ROWS]} need an INT8 model")
    if int8 is not None and int8.config.voxelization != fp32.config.voxelization:
        raise ValueError("the FP32 and INT8 models must share the voxelization")
    device = torch.device(device)

    def on_device(model):
        return model if device.type == "cpu" else copy.deepcopy(model).to(device)

    rows = []
    for key in keys:
        if key == "fp32-torch":
            rows.append(BenchRow(key, fp32, TorchBackend(on_device(fp32))))
        elif key == "fp32-ort":
            rows.append(BenchRow(key, fp32, OnnxRuntimeBackend(fp32, threads=threads)))
        elif key == "int8-torch":
            rows.append(BenchRow(key, int8, TorchBackend(on_device(int8))))
        elif key == "int8-ort-qdq":
            rows.append(BenchRow(key, int8, OnnxRuntimeBackend(int8, threads=threads, graph="given")))
        elif key == "int8-ort":
            rows.append(BenchRow(key, int8, OnnxRuntimeBackend(int8, threads=threads)))
        elif key == "int8-openvino":
            from .runtime.openvino_backend import OpenVinoBackend

            rows.append(BenchRow(key, int8, OpenVinoBackend(int8, threads=threads)))
        elif key == "ort-quantize-static":
            if not calib_clouds:
                raise ValueError("the quantize_static row needs calibration frames")
            config = fp32.config
            with torch.inference_mode():
                bevs = [fp32.bev_features(voxelize_clouds([fit_point_features(c, config.num_point_features)],
                                                          config.voxelization, config.num_point_features)[0]).numpy()
                        for c in calib_clouds]
            rows.append(BenchRow(key, fp32, OnnxRuntimeBackend(fp32, ort_quantize_static(fp32, bevs), threads=threads,
                                                               graph="given")))
        else:
            raise ValueError(f"unknown row {key!r}")
    return rows


def percentile_row(values_ms) -> dict:
    v = np.asarray(values_ms, np.float64)
    return {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)), "n": int(v.size)}


def _output_difference(ours: list[dict], reference: list[dict], into: dict) -> None:
    for task_ours, task_ref in zip(ours, reference):
        for head, value in task_ours.items():
            if head == "hm":
                diff = (value.cpu().sigmoid() - task_ref[head].cpu().sigmoid()).abs()
                into["hm_prob_max_abs"] = max(into["hm_prob_max_abs"], float(diff.max()))
                into["hm_prob_mean_abs"].append(float(diff.mean()))
            else:
                into["box_max_abs"] = max(into["box_max_abs"],
                                          float((value.cpu() - task_ref[head].cpu()).abs().max()))


@dataclass
class BenchResult:
    rows: dict[str, str]  # key -> label, in table order
    frames: int
    repeats: int
    threads: int | None
    ms: dict[str, dict[str, dict]]  # row -> column -> {"median", "p90", "n"}
    accuracy: dict[str, dict] | None  # row -> {"mAP", "bev_iou_mAP"} (%), None without ground truth
    agreement: dict[str, dict]  # INT8 row -> detection_agreement against the FP32 reference row
    agreement_reference: str | None
    output_difference: dict | None  # int8 ort integer vs int8 torch fake-quant, raw head outputs
    kernels: dict[str, object] = field(default_factory=dict)  # onnxruntime row -> KernelProfile
    wall_s: float = 0.0
    load_average_start: str = "n/a"
    load_average_end: str = "n/a"
    header: list[str] = field(default_factory=list)

    def speedups(self, engine: str = "int8-ort") -> dict[str, float]:
        """An INT8 engine row (default: the integer graph) against the FP32 rows (medians), where those rows ran."""
        ms, result = self.ms, {}
        if engine not in ms:
            return result
        ours = ms[engine]
        fp32 = [k for k in ("fp32-torch", "fp32-ort") if k in ms]
        if fp32:
            result["dense_speedup_vs_fastest_fp32"] = min(ms[k]["dense"]["median"] for k in fp32) / ours["dense"][
                "median"]
            result["network_speedup_vs_fastest_fp32"] = min(ms[k]["network"]["median"] for k in fp32) / ours[
                "network"]["median"]
        for key, name in (("fp32-torch", "fp32_torch"), ("fp32-ort", "fp32_onnxruntime")):
            if key in ms:
                result[f"end_to_end_speedup_vs_{name}"] = ms[key]["total"]["median"] / ours["total"]["median"]
        return result

    def to_json(self) -> dict:
        return {
            "header": self.header, "rows": self.rows, "frames": self.frames, "repeats": self.repeats,
            "threads": self.threads, "wall_s": self.wall_s, "load_average_start": self.load_average_start,
            "load_average_end": self.load_average_end, "stages": list(COLUMNS), "ms": self.ms,
            "accuracy": self.accuracy, "agreement_reference": self.agreement_reference, "agreement": self.agreement,
            "output_difference": self.output_difference, "targets": self.speedups(),
            "engine_speedups": {key: self.speedups(key) for key in ENGINE_ROWS if key in self.ms},
            "kernels": {key: profile.by_op for key, profile in self.kernels.items()},
        }

    def format(self) -> str:
        lines = [*self.header, "", "milliseconds per frame, median (p90):"]
        title = f"{'row':<32}" + "".join(f"{c:>17}" for c in COLUMNS)
        if self.accuracy is not None:
            title += f"{'mAP':>7}{'IoU mAP':>9}"
        lines.append(title)
        for key, label in self.rows.items():
            line = f"{label:<32}" + "".join(
                f"{self.ms[key][c]['median']:>9.1f} ({self.ms[key][c]['p90']:>5.1f})" for c in COLUMNS)
            if self.accuracy is not None:
                line += f"{self.accuracy[key]['mAP']:>7.1f}{self.accuracy[key]['bev_iou_mAP']:>9.1f}"
            lines.append(line)
        for engine in ENGINE_ROWS:
            speedups = self.speedups(engine)
            if not speedups:
                continue
            parts = []
            if "dense_speedup_vs_fastest_fp32" in speedups:
                parts.append(f"dense part {speedups['dense_speedup_vs_fastest_fp32']:.2f}x and network (encode + "
                             f"dense) {speedups['network_speedup_vs_fastest_fp32']:.2f}x vs the fastest FP32 row")
            for name, label in (("fp32_torch", "FP32 torch"), ("fp32_onnxruntime", "FP32 onnxruntime")):
                if f"end_to_end_speedup_vs_{name}" in speedups:
                    parts.append(f"end to end {speedups[f'end_to_end_speedup_vs_{name}']:.2f}x vs {label}")
            lines += ["", f"{ROWS[engine]} (median): " + "; ".join(parts)]
        if self.agreement:
            lines += ["", f"INT8 vs FP32 ({ROWS[self.agreement_reference]}) on the same frames: FP32 boxes with score "
                      f">= {AGREEMENT_MIN_SCORE} reproduced (same class, centre within {AGREEMENT_DISTANCE_M:g} m), "
                      "INT8 boxes with such an FP32 box, mAP with FP32's boxes as ground truth:"]
            for key, a in self.agreement.items():
                lines.append(f"  {ROWS[key]:<30} {a['matched']}/{a['reference_boxes']} FP32 boxes "
                             f"({_pct(a['reference_recall'])}), {a['matched']}/{a['other_boxes']} INT8 boxes "
                             f"({_pct(a['other_precision'])}), mAP vs FP32 {a['map_vs_reference']:.1f}")
        if self.output_difference is not None:
            d = self.output_difference
            lines += ["", f"int8 ort integer vs int8 torch fake-quant, raw outputs on the same frames: heatmap "
                      f"probability max |diff| {d['hm_prob_max_abs']:.4f} (mean {d['hm_prob_mean_abs']:.6f}), box "
                      f"regression max |diff| {d['box_max_abs']:.4f}"]
        for key, profile in self.kernels.items():
            lines += ["", f"onnxruntime kernels, {ROWS[key]} (its profile, one frame, mean of {profile.runs} runs):",
                      profile.table()]
        return "\n".join(lines) + "\n"


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f} %"


def run_bench(rows: list[BenchRow], clouds: list[np.ndarray], repeats: int = 1,
              ground_truths: list | None = None, threads: int | None = None, profile_runs: int = 3,
              progress: bool = False, agreement: bool = True) -> BenchResult:
    """Time `rows` on `clouds` (interleaved, rotating order) `repeats` times; accuracy against `ground_truths` when
    given; INT8-vs-FP32 detection agreement (unless `agreement` is False: random weights); onnxruntime kernel
    profiles of one frame (`profile_runs` runs; 0: none)."""
    import torch

    from .decode import decode_batch
    from .devices import synchronize
    from .evaluate import evaluate
    from .runtime.backends import OnnxRuntimeBackend
    from .runtime.ort_profile import profile_session
    from .voxelize import voxelize_clouds

    if not rows:
        raise ValueError("no rows to benchmark")
    if not clouds:
        raise ValueError("no frames to benchmark")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    config = rows[0].model.config
    features = config.num_point_features
    clouds = [fit_point_features(c, features) for c in clouds]
    geometry, post = config.head_geometry(), config.post_processing
    load_start, started = load_average(), time.perf_counter()
    keys = [row.key for row in rows]
    by_key = {row.key: row for row in rows}
    times = {key: {c: [] for c in COLUMNS} for key in keys}
    predictions = {key: [] for key in keys}
    difference = ({"hm_prob_max_abs": 0.0, "hm_prob_mean_abs": [], "box_max_abs": 0.0}
                  if {"int8-ort", "int8-torch"} <= set(keys) else None)

    def run_row(row: BenchRow, points):
        t0 = time.perf_counter()
        batch, _ = voxelize_clouds([points], config.voxelization, features)
        t1 = time.perf_counter()
        bev = row.backend.bev_input(batch)
        synchronize(row.backend.device)  # GPU work is asynchronous: each stage's time includes its kernels
        t2 = time.perf_counter()
        outputs = row.backend.dense(bev)
        synchronize(row.backend.device)
        t3 = time.perf_counter()
        detections = decode_batch(outputs, geometry, post)[0]
        t4 = time.perf_counter()
        stage_ms = dict(zip(STAGES, (1000 * np.diff([t0, t1, t2, t3, t4])).tolist()))
        stage_ms["network"] = stage_ms["encode"] + stage_ms["dense"]
        stage_ms["total"] = 1000 * (t4 - t0)
        return stage_ms, outputs, detections

    total_steps = repeats * len(clouds)
    with torch.inference_mode():
        for row in rows:  # warm-up: first-run allocations, lazy initialisation
            run_row(row, clouds[0])
        step = 0
        for repeat in range(repeats):
            for i, points in enumerate(clouds):
                shift = (i + repeat) % len(keys)
                outputs = {}
                for key in keys[shift:] + keys[:shift]:
                    stage_ms, outputs[key], detections = run_row(by_key[key], points)
                    for column, ms in stage_ms.items():
                        times[key][column].append(ms)
                    if repeat == 0:
                        predictions[key].append(detections)
                if repeat == 0 and difference is not None:
                    _output_difference(outputs["int8-ort"], outputs["int8-torch"], difference)
                step += 1
                if progress:
                    print(f"bench: frame {step}/{total_steps}", flush=True)
    if difference is not None:
        difference["hm_prob_mean_abs"] = float(np.mean(difference["hm_prob_mean_abs"]))
    wall_s = time.perf_counter() - started

    accuracy = None
    if ground_truths is not None:
        pcr = config.voxelization.point_cloud_range
        region = (pcr[0], pcr[1], pcr[3], pcr[4])
        accuracy = {}
        for key in keys:
            result = evaluate(predictions[key], ground_truths[: len(clouds)], class_names=geometry.class_names,
                              region=region)
            accuracy[key] = {"mAP": 100 * result.distance_map["all"], "bev_iou_mAP": 100 * result.iou_map["all"]}

    reference = next((k for k in ("fp32-torch", "fp32-ort") if k in keys), None) if agreement else None
    agreements = {}
    if reference is not None:
        for key in keys:
            if key not in ("fp32-torch", "fp32-ort"):
                agreements[key] = detection_agreement(predictions[reference], predictions[key], geometry.class_names)

    kernels = {}
    if profile_runs > 0:
        with torch.inference_mode():
            batch = voxelize_clouds([clouds[0]], config.voxelization, features)[0]
            for row in rows:
                if isinstance(row.backend, OnnxRuntimeBackend):
                    bev = row.backend.bev_input(batch).numpy()
                    kernels[row.key] = profile_session(row.backend.onnx_bytes, {row.backend.input_name: bev},
                                                       runs=profile_runs, threads=threads)
    return BenchResult(rows={k: ROWS[k] for k in keys}, frames=len(clouds), repeats=repeats, threads=threads,
                       ms={k: {c: percentile_row(v) for c, v in times[k].items()} for k in keys}, accuracy=accuracy,
                       agreement=agreements, agreement_reference=reference, output_difference=difference,
                       kernels=kernels, wall_s=wall_s, load_average_start=load_start, load_average_end=load_average())


def machine_line(threads: int | None) -> str:
    import onnxruntime
    import torch

    try:
        from importlib.metadata import version

        openvino = f", openvino {version('openvino')}"
    except Exception:  # not installed: no OpenVINO row either
        openvino = ""
    return (f"{threads or 'default'} threads (torch, onnxruntime and openvino); "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}{openvino}")


def write_result(result: BenchResult, stem: str | Path) -> tuple[Path, Path]:
    """STEM.txt (the table) and STEM.json, each written atomically."""
    from .io_utils import write_bytes_atomic, write_json_atomic

    stem = Path(stem)
    if stem.suffix in (".txt", ".json"):
        stem = stem.with_suffix("")
    txt, js = stem.with_name(stem.name + ".txt"), stem.with_name(stem.name + ".json")
    write_bytes_atomic(txt, result.format().encode())
    write_json_atomic(js, result.to_json())
    return txt, js
