#!/usr/bin/env python
"""One INT8 checkpoint on every CPU backend, scored on the same sim val frames: does the fast path detect what the
reference (torch fake-quant) detects?

Rows: the FP32 checkpoint in torch (for scale), the INT8 checkpoint in torch fake-quant (the reference the accuracy
tables use), the INT8 dense part in onnxruntime's integer graph (what the node runs), and its TensorRT QDQ graph run
by onnxruntime as is, and a control: the same torch fake-quant model on one thread instead of two, which changes only
the order of FP32 sums, and the same fake-quant model computed in float64: onnxruntime's integer kernels sum exactly
(int32), torch's FP32 convolutions round, and a float64 reference shows which of the two a rounding tie follows.
Per row: centre-distance mAP, BEV IoU mAP and mAP by range on --frames val frames, plus the difference to the
reference. The issue's bar: the integer graph within 0.1 mAP of torch fake-quant. Rows already in the output JSON
(same checkpoints and frames) are kept, not recomputed, unless --force.

    ./dev run python benchmarks/backend_accuracy.py --int8 sim_pillar_int8 --frames 500

Writes docs/benchmarks/backend_accuracy_<int8>.txt and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Float64Backend:
    """The fake-quant model in float64 (its INT8 grids unchanged): a reference with ~1e-16 instead of ~1e-7 relative
    summation error, so values near a rounding tie land on the side exact arithmetic puts them."""

    def __init__(self, model):
        import copy

        self.model = copy.deepcopy(model).double()

    def __call__(self, batch: dict) -> list[dict]:
        import torch

        batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
        return [{k: v.float() for k, v in task.items()} for task in self.model(batch)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp32", default="sim_pillar")
    parser.add_argument("--int8", default="sim_pillar_int8")
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="output stem (default docs/benchmarks/backend_accuracy_<int8>)")
    parser.add_argument("--force", action="store_true", help="recompute rows already in the output JSON")
    parser.add_argument("--no-float64", action="store_true", help="leave out the float64 control (the slowest row)")
    args = parser.parse_args()

    import json

    import torch

    from lidar_ptq_core.evaluate import evaluate
    from lidar_ptq_core.io_utils import write_bytes_atomic, write_json_atomic
    from lidar_ptq_core.recipes.centerpoint import load_any_checkpoint
    from lidar_ptq_core.runtime import Detector, bundled_checkpoint
    from lidar_ptq_core.runtime.backends import OnnxRuntimeBackend
    from lidar_ptq_core.runtime.run_dataset import run_detector_on_dataset
    from lidar_ptq_core.sim import SimDataset, load_sim_config

    torch.set_num_threads(args.threads)
    fp32 = load_any_checkpoint(bundled_checkpoint(args.fp32)).eval()
    int8 = load_any_checkpoint(bundled_checkpoint(args.int8)).eval()
    val = SimDataset("val", args.frames, load_sim_config("default"))
    val.prepare(num_workers=1)
    rows = [  # (label, detector factory, torch threads)
        ("fp32 torch", lambda: Detector(fp32), args.threads),
        ("int8 torch fake-quant (reference)", lambda: Detector(int8), args.threads),
        ("int8 onnxruntime integer graph", lambda: Detector(int8, OnnxRuntimeBackend(int8, threads=args.threads)),
         args.threads),
        ("int8 onnxruntime TensorRT QDQ graph",
         lambda: Detector(int8, OnnxRuntimeBackend(int8, threads=args.threads, graph="given")), args.threads),
        ("control: int8 torch fake-quant, 1 thread", lambda: Detector(int8), 1),
        ("control: int8 torch fake-quant in float64", lambda: Detector(int8, Float64Backend(int8)), args.threads),
    ]
    if args.no_float64:  # the slowest row by far (float64 convolutions), a control only
        rows = rows[:-1]
    stem = Path(args.out or REPO / "docs" / "benchmarks" / f"backend_accuracy_{args.int8}")
    previous = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").is_file() else {}
    same_setup = {k: previous.get(k) for k in ("frames", "fp32", "int8")} == {"frames": args.frames,
                                                                              "fp32": args.fp32, "int8": args.int8}
    results = dict(previous.get("rows", {})) if same_setup and not args.force else {}
    for label, make_detector, threads in rows:
        if label in results:
            print(f"{label}: mAP {results[label]['mAP']:.2f} (kept from {stem.with_suffix('.json').name})")
            continue
        torch.set_num_threads(threads)
        detector = make_detector()
        started = time.perf_counter()
        run = run_detector_on_dataset(detector, val, progress=False)
        result = evaluate(run.predictions, run.ground_truths, class_names=detector.class_names,
                          region=detector.evaluation_region)
        results[label] = {"mAP": 100 * result.distance_map["all"], "bev_iou_mAP": 100 * result.iou_map["all"],
                          "mAP_by_range": {r: 100 * result.distance_map[r] for r in result.ranges if r != "all"},
                          "seconds": round(time.perf_counter() - started, 1)}
        print(f"{label}: mAP {results[label]['mAP']:.2f}", flush=True)
        write_json_atomic(stem.with_suffix(".json"), {"frames": args.frames, "fp32": args.fp32, "int8": args.int8,
                                                      "rows": results})  # each row lands as it is done
    torch.set_num_threads(args.threads)
    reference = results["int8 torch fake-quant (reference)"]
    ranges = list(reference["mAP_by_range"])
    lines = [f"INT8 {args.int8} (FP32 {args.fp32}) on {args.frames} sim val frames, per backend; mAP in %, "
             f"d = row - torch fake-quant ({args.threads} threads)", "",
             f"{'row':<42}{'mAP':>7}{'d':>7}{'BEV IoU':>9}{'d':>7}" + "".join(f"{r:>9}" for r in ranges)]
    for label, r in results.items():
        lines.append(f"{label:<42}{r['mAP']:7.2f}{r['mAP'] - reference['mAP']:+7.2f}{r['bev_iou_mAP']:9.2f}"
                     f"{r['bev_iou_mAP'] - reference['bev_iou_mAP']:+7.2f}"
                     + "".join(f"{r['mAP_by_range'][k]:9.2f}" for k in ranges))
    table = "\n".join(lines) + "\n"
    print(table)
    write_bytes_atomic(stem.with_suffix(".txt"), table.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
