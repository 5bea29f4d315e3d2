#!/usr/bin/env python
"""Does OpenVINO compute the bundle's QDQ graph as the fake-quant model does? mAP on sim test frames of the INT8
checkpoints in torch fake-quant (the reference), their QDQ dense graph (dense.onnx, as `lidar-ptq export` writes it)
on OpenVINO's CPU plugin and on onnxruntime, each difference with its paired bootstrap 95 % interval; and, on the same
frames in the same run, the dense part's time per frame on OpenVINO (QDQ graph) and on onnxruntime's integer graph
(what the node runs today), alternating which goes first, with the same thread count.

The test split's seeds were never used for any choice. The bar (issue 19): OpenVINO within 0.1 mAP of fake-quant for
both models on 500 frames. Timings are only as good as the machine is quiet: the header prints the load average.

    ./dev run python benchmarks/openvino_parity.py --frames 500

Writes docs/benchmarks/openvino_parity.txt and .json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "torch fake-quant"
CANDIDATES = ("openvino QDQ graph", "onnxruntime QDQ graph")


def run_model(name: str, frames: int, threads: int) -> dict:
    import numpy as np
    import torch

    from lidar_ptq_core.evaluate import evaluate, match_frames
    from lidar_ptq_core.export.onnx_qdq import export_dense_onnx
    from lidar_ptq_core.paired import paired_bootstrap
    from lidar_ptq_core.recipes.centerpoint import load_any_checkpoint
    from lidar_ptq_core.runtime import Detector, bundled_checkpoint
    from lidar_ptq_core.runtime.backends import TorchEncoderOnnxBackend
    from lidar_ptq_core.runtime.openvino_backend import OpenVinoBackend
    from lidar_ptq_core.sim import SimDataset, load_sim_config
    from lidar_ptq_core.voxelize import voxelize_clouds

    model = load_any_checkpoint(bundled_checkpoint(name)).eval()
    dense_onnx = export_dense_onnx(model)  # what `lidar-ptq export` puts in the bundle as dense.onnx
    openvino = OpenVinoBackend(model, dense_onnx, threads=threads)
    integer_graph = TorchEncoderOnnxBackend(model, threads=threads)  # onnxruntime's QLinearConv graph
    detectors = {REFERENCE: Detector(model), CANDIDATES[0]: Detector(model, openvino),
                 CANDIDATES[1]: Detector(model, TorchEncoderOnnxBackend(model, dense_onnx, threads, graph="given"))}
    test = SimDataset("test", frames, load_sim_config("default"))
    test.prepare(num_workers=1, progress=False)
    predictions = {label: [] for label in detectors}
    ground_truths, dense_seconds = [], {"openvino QDQ graph": [], "onnxruntime integer graph": []}
    started = time.perf_counter()
    for index in range(len(test)):
        frame = test[index]
        ground_truths.append(frame.gt)
        for label, detector in detectors.items():
            predictions[label].append(detector.detect(frame.points))
        points = detectors[REFERENCE].prepare_points(frame.points, "test frame")
        with torch.inference_mode():
            batch, _ = voxelize_clouds([points], model.config.voxelization, model.config.num_point_features)
            inputs = {"openvino QDQ graph": (openvino, openvino.bev_input(batch)),
                      "onnxruntime integer graph": (integer_graph, integer_graph.bev_input(batch))}
            order = list(inputs) if index % 2 == 0 else list(inputs)[::-1]  # neither always runs on a warm cache
            for label in order:
                backend, bev = inputs[label]
                tic = time.perf_counter()
                backend.dense(bev)
                dense_seconds[label].append(time.perf_counter() - tic)
        if (index + 1) % 100 == 0:
            print(f"  {name}: {index + 1}/{len(test)} frames, {time.perf_counter() - started:.0f} s", flush=True)
    detector = detectors[REFERENCE]
    evaluation = dict(class_names=detector.class_names, region=detector.evaluation_region)
    maps = {label: 100 * evaluate(preds, ground_truths, **evaluation).distance_map["all"]
            for label, preds in predictions.items()}
    matched = {label: match_frames(preds, ground_truths, **evaluation) for label, preds in predictions.items()}
    differences = {label: [d.to_dict() for d in paired_bootstrap(matched[REFERENCE], matched[label])]
                   for label in CANDIDATES}
    timing = {label: {"median_ms": 1000 * float(np.median(s)), "p90_ms": 1000 * float(np.percentile(s, 90))}
              for label, s in dense_seconds.items()}
    return {"frames": len(test), "mAP": maps, "differences": differences, "dense_time": timing,
            "seconds": round(time.perf_counter() - started, 1)}


def report(results: dict, header: list[str]) -> str:
    lines = list(header)
    for name, result in results.items():
        lines += ["", f"{name}: {result['frames']} sim test frames"]
        lines.append(f"  {'backend':<24}{'mAP':>7}   difference to {REFERENCE} [95 % CI] (mAP, BEV IoU mAP, far)")
        lines.append(f"  {REFERENCE:<24}{result['mAP'][REFERENCE]:7.2f}")
        for label in CANDIDATES:
            parts = [f"{100 * d['difference']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
                     for d in result["differences"][label]]
            lines.append(f"  {label:<24}{result['mAP'][label]:7.2f}   " + "; ".join(parts))
        ov, ort = result["dense_time"]["openvino QDQ graph"], result["dense_time"]["onnxruntime integer graph"]
        lines.append(f"  dense part per frame, median (p90): OpenVINO QDQ {ov['median_ms']:.1f} ({ov['p90_ms']:.1f}) "
                     f"ms, onnxruntime integer {ort['median_ms']:.1f} ({ort['p90_ms']:.1f}) ms, "
                     f"ratio {ov['median_ms'] / ort['median_ms']:.2f}")
        within = abs(result["differences"]["openvino QDQ graph"][0]["difference"]) * 100 <= 0.1
        lines.append(f"  OpenVINO within 0.1 mAP of fake-quant: {'yes' if within else 'NO'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sim_pillar_int8", "sim_voxel_int8"])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "openvino_parity"), help="output stem")
    args = parser.parse_args()

    import onnxruntime
    import openvino
    import torch

    from lidar_ptq_core.io_utils import write_text_and_json

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    header = [f"OpenVINO {openvino.__version__} vs torch fake-quant on the bundle's QDQ graph; onnxruntime "
              f"{onnxruntime.__version__}; torch {torch.__version__}; {args.threads} threads each; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              f"load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}: timings from a loaded machine are "
              "indicative only (re-run on a quiet one)",
              "command: ./dev run python benchmarks/openvino_parity.py " + " ".join(sys.argv[1:])]
    print("\n".join(header), flush=True)
    results = {}
    for name in args.models:
        results[name] = run_model(name, args.frames, args.threads)
        print(report({name: results[name]}, []), flush=True)
    end_load = os.getloadavg()
    header[1] += f"; at end {end_load[0]:.1f}"
    text = report(results, header)
    write_text_and_json(args.out, text, {"load_average_start": load, "load_average_end": end_load,
                                         "threads": args.threads, "openvino": openvino.__version__,
                                         "onnxruntime": onnxruntime.__version__, "models": results})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
