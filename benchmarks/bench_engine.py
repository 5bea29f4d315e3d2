#!/usr/bin/env python
"""Engine speed: FP32 and INT8 CenterPoint on torch and onnxruntime (CPU), per stage and end to end, in one run.

Every row detects the same sim val frames, interleaved (frame by frame, the row order rotating), so a load change on a
shared machine hits all rows alike. Per frame and row: voxelize (numpy), encode (PFN + scatter in torch), dense
(backbone_2d + head: the backend), decode; network = encode + dense. Medians and p90 over frames x repeats.
Rows:
  fp32 torch                  the FP32 checkpoint in torch
  fp32 onnxruntime            the FP32 dense part as ONNX (export_dense_onnx) in onnxruntime
  int8 torch fake-quant       the INT8 checkpoint in torch (FP32 kernels on INT8-exact values: the reference)
  int8 ort QDQ (TensorRT)     the bundle's TensorRT QDQ graph in onnxruntime as is (FP32 kernels around Q/DQ)
  int8 ort integer            onnxruntime's integer graph (export/onnx_ort_int8.py: QLinearConv), our scales
  ort quantize_static         onnxruntime's own quantize_static (QDQ, uint8 activations / int8 per-channel weights,
                              MinMax) of the FP32 dense part, calibrated on sim calib frames: a peer, not our model
Also: which kernels onnxruntime ran (its own profile) per onnxruntime row, agreement of the integer graph with the
fake-quant model (heatmap probabilities, box regression), and mAP of every row on the timed frames.

    ./dev run python benchmarks/bench_engine.py --frames 50 --repeats 2

Writes docs/benchmarks/engine_speed.txt and .json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lidar_ptq_core.decode import decode_batch
from lidar_ptq_core.evaluate import evaluate
from lidar_ptq_core.io_utils import write_bytes_atomic, write_json_atomic
from lidar_ptq_core.recipes.centerpoint import load_any_checkpoint
from lidar_ptq_core.runtime import bundled_checkpoint
from lidar_ptq_core.runtime.backends import OnnxRuntimeBackend, TorchBackend
from lidar_ptq_core.runtime.ort_profile import profile_session
from lidar_ptq_core.sim import SimDataset, load_sim_config
from lidar_ptq_core.voxelize import voxelize_clouds

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "benchmarks" / "engine_speed"
STAGES = ("voxelize", "encode", "dense", "decode")


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def ort_quantize_static(fp32_model, calib_bevs: list[np.ndarray]) -> bytes:
    """onnxruntime.quantization.quantize_static of the FP32 dense graph: QDQ, u8 activations, s8 per-channel weights,
    MinMax calibration over `calib_bevs`."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from lidar_ptq_core.export.onnx_qdq import INPUT_NAME, export_dense_onnx

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


def percentile_row(values_ms: list[float]) -> dict:
    v = np.asarray(values_ms)
    return {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)), "n": int(v.size)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=50, help="sim val frames (timed and evaluated)")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the frames (timing only)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--calib-frames", type=int, default=16, help="sim calib frames for ORT's quantize_static")
    parser.add_argument("--fp32", default="sim_pillar")
    parser.add_argument("--int8", default="sim_pillar_int8")
    parser.add_argument("--out", default=str(OUT), help="output stem (.txt and .json are written)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = load_average()

    fp32 = load_any_checkpoint(bundled_checkpoint(args.fp32)).eval()
    int8 = load_any_checkpoint(bundled_checkpoint(args.int8)).eval()
    config = fp32.config
    if int8.config.voxelization != config.voxelization:
        raise ValueError("the FP32 and INT8 checkpoints must share the voxelization")
    geometry, post = config.head_geometry(), config.post_processing
    val = SimDataset("val", args.frames, load_sim_config("default"))
    val.prepare(num_workers=args.threads, progress=False)
    calib = SimDataset("calib", args.calib_frames, load_sim_config("default"))
    calib.prepare(num_workers=args.threads, progress=False)

    with torch.inference_mode():
        calib_bevs = [fp32.bev_features(voxelize_clouds([calib[i].points], config.voxelization,
                                                        config.num_point_features)[0]).numpy()
                      for i in range(len(calib))]
    started = time.perf_counter()
    rows = {
        "fp32 torch": (fp32, TorchBackend(fp32)),
        "fp32 onnxruntime": (fp32, OnnxRuntimeBackend(fp32, threads=args.threads)),
        "int8 torch fake-quant": (int8, TorchBackend(int8)),
        "int8 ort QDQ (TensorRT graph)": (int8, OnnxRuntimeBackend(int8, threads=args.threads, graph="given")),
        "int8 ort integer (ours)": (int8, OnnxRuntimeBackend(int8, threads=args.threads)),
        "ort quantize_static (peer)": (fp32, OnnxRuntimeBackend(fp32, ort_quantize_static(fp32, calib_bevs),
                                                                threads=args.threads, graph="given")),
    }
    setup_s = time.perf_counter() - started
    names = list(rows)
    times = {name: {stage: [] for stage in (*STAGES, "network", "total")} for name in names}
    predictions = {name: [] for name in names}
    ground_truths = []
    agreement = {"hm_prob_max_abs": 0.0, "hm_prob_mean_abs": [], "box_max_abs": 0.0}

    def run_row(name, points):
        model, backend = rows[name]
        t0 = time.perf_counter()
        batch, _ = voxelize_clouds([points], config.voxelization, config.num_point_features)
        t1 = time.perf_counter()
        bev = model.bev_features(batch)
        t2 = time.perf_counter()
        outputs = backend.dense(bev)
        t3 = time.perf_counter()
        detections = decode_batch(outputs, geometry, post)[0]
        t4 = time.perf_counter()
        stage_ms = dict(zip(STAGES, 1000 * np.diff([t0, t1, t2, t3, t4])))
        stage_ms["network"] = stage_ms["encode"] + stage_ms["dense"]
        stage_ms["total"] = 1000 * (t4 - t0)
        return stage_ms, outputs, detections

    with torch.inference_mode():
        for name in names:  # warm-up: first-run allocations, lazy initialisation
            run_row(name, val[0].points)
        for repeat in range(args.repeats):
            for i in range(len(val)):
                frame = val[i]
                order = names[(i + repeat) % len(names):] + names[: (i + repeat) % len(names)]
                outputs = {}
                for name in order:
                    stage_ms, outputs[name], detections = run_row(name, frame.points)
                    for stage, ms in stage_ms.items():
                        times[name][stage].append(ms)
                    if repeat == 0:
                        predictions[name].append(detections)
                if repeat == 0:
                    ground_truths.append(frame.gt)
                    ours, reference = outputs["int8 ort integer (ours)"], outputs["int8 torch fake-quant"]
                    for task_ours, task_ref in zip(ours, reference):
                        for head, value in task_ours.items():
                            diff = (value - task_ref[head]).abs()
                            if head == "hm":
                                diff = (value.sigmoid() - task_ref[head].sigmoid()).abs()
                                agreement["hm_prob_max_abs"] = max(agreement["hm_prob_max_abs"], float(diff.max()))
                                agreement["hm_prob_mean_abs"].append(float(diff.mean()))
                            else:
                                agreement["box_max_abs"] = max(agreement["box_max_abs"], float(diff.max()))
    agreement["hm_prob_mean_abs"] = float(np.mean(agreement["hm_prob_mean_abs"]))
    wall_s = time.perf_counter() - started

    region = (config.voxelization.point_cloud_range[0], config.voxelization.point_cloud_range[1],
              config.voxelization.point_cloud_range[3], config.voxelization.point_cloud_range[4])
    accuracy = {}
    for name in names:
        result = evaluate(predictions[name], ground_truths, class_names=geometry.class_names, region=region)
        accuracy[name] = {"mAP": 100 * result.distance_map["all"], "bev_iou_mAP": 100 * result.iou_map["all"]}

    profiles = {}
    with torch.inference_mode():
        bev = int8.bev_features(voxelize_clouds([val[0].points], config.voxelization,
                                                config.num_point_features)[0]).numpy()
    for name, (_, backend) in rows.items():
        if isinstance(backend, OnnxRuntimeBackend):
            profiles[name] = profile_session(backend.onnx_bytes, {"bev": bev}, runs=3, threads=args.threads)
    load_end = load_average()

    summary = {name: {stage: percentile_row(v) for stage, v in times[name].items()} for name in names}
    fastest_fp32 = min(summary["fp32 torch"]["dense"]["median"], summary["fp32 onnxruntime"]["dense"]["median"])
    fastest_fp32_network = min(summary["fp32 torch"]["network"]["median"],
                               summary["fp32 onnxruntime"]["network"]["median"])
    ours = summary["int8 ort integer (ours)"]
    targets = {
        "dense_speedup_vs_fastest_fp32": fastest_fp32 / ours["dense"]["median"],
        "network_speedup_vs_fastest_fp32": fastest_fp32_network / ours["network"]["median"],
        "end_to_end_speedup_vs_fp32_torch": summary["fp32 torch"]["total"]["median"] / ours["total"]["median"],
        "end_to_end_speedup_vs_fp32_onnxruntime": (summary["fp32 onnxruntime"]["total"]["median"]
                                                   / ours["total"]["median"]),
    }

    import onnxruntime

    header = [
        f"engine speed: {args.fp32} / {args.int8} ({config.name}), {len(val)} sim val frames x {args.repeats} "
        f"repeats, rows interleaved; {args.threads} threads (torch and onnxruntime); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}",
        f"SHARED MACHINE: load average (1/5/15 min) {load_start} at start, {load_end} at end (other engineers' "
        f"benchmarks ran beside this one); absolute times are inflated, the interleaving keeps the rows comparable",
        f"wall {wall_s:.0f} s (graph building and quantize_static {setup_s:.0f} s)",
    ]
    lines = [*header, "", "milliseconds per frame, median (p90):"]
    columns = ("voxelize", "encode", "dense", "decode", "network", "total")
    lines.append(f"{'row':<32}" + "".join(f"{c:>17}" for c in columns) + f"{'mAP':>7}{'IoU mAP':>9}")
    for name in names:
        cells = "".join(f"{summary[name][c]['median']:>9.1f} ({summary[name][c]['p90']:>5.1f})" for c in columns)
        lines.append(f"{name:<32}{cells}{accuracy[name]['mAP']:>7.1f}{accuracy[name]['bev_iou_mAP']:>9.1f}")
    lines += [
        "",
        f"int8 ort integer vs fastest FP32 (median): dense part {targets['dense_speedup_vs_fastest_fp32']:.2f}x, "
        f"network (encode + dense) {targets['network_speedup_vs_fastest_fp32']:.2f}x; end to end "
        f"{targets['end_to_end_speedup_vs_fp32_torch']:.2f}x vs FP32 torch, "
        f"{targets['end_to_end_speedup_vs_fp32_onnxruntime']:.2f}x vs FP32 onnxruntime",
        f"int8 ort integer vs int8 torch fake-quant on the same frames: heatmap probability max |diff| "
        f"{agreement['hm_prob_max_abs']:.4f} (mean {agreement['hm_prob_mean_abs']:.6f}), box regression max |diff| "
        f"{agreement['box_max_abs']:.4f}; mAP {accuracy['int8 ort integer (ours)']['mAP']:.2f} vs "
        f"{accuracy['int8 torch fake-quant']['mAP']:.2f}",
    ]
    for name, profile in profiles.items():
        lines += ["", f"onnxruntime kernels, {name} (its profile, one frame, mean of 3 runs):", profile.table()]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    write_bytes_atomic(out.with_suffix(".txt"), text.encode())
    write_json_atomic(out.with_suffix(".json"), {
        "header": header, "frames": len(val), "repeats": args.repeats, "threads": args.threads,
        "load_average_start": load_start, "load_average_end": load_end, "ms": summary, "accuracy": accuracy,
        "targets": targets, "agreement": agreement,
        "kernels": {name: p.by_op for name, p in profiles.items()},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
