#!/usr/bin/env python
"""INT8 accuracy of every quantization method on the sim models: one row per method, all layers INT8.

Each row quantizes the bundled FP32 checkpoint with `--calib-frames` frames of the sim calib split, saves the
quantized checkpoint under runs/ptq_bench/, detects on `--val-frames` sim val frames with the torch fake-quant model
and evaluates against ground truth in the detector's region. Rows land in docs/benchmarks/ptq_<model>.jsonl as they
finish (a rerun skips rows already there and resumes an interrupted quantization), and the table is rewritten to
docs/benchmarks/ptq_<model>.txt after each row. Run inside the project environment, in the background:

    ./dev run python benchmarks/ptq_accuracy.py --model sim_pillar > runs/ptq_pillar.log 2>&1 &
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from lidar_ptq_core.benchmarking import (
    ROW_DIR,
    append_jsonl,
    calibration_batches,
    evaluate_network,
    format_rows,
    parse_method_spec,
    read_jsonl,
    row_of,
    row_stem,
)
from lidar_ptq_core.evaluate import format_table
from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.models.checkpoint import load_checkpoint
from lidar_ptq_core.quant import method_config
from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint, save_quantized_checkpoint
from lidar_ptq_core.runtime import bundled_checkpoint
from lidar_ptq_core.sim import SimDataset, load_sim_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = ["fp32", "max", "percentile", "entropy", "mse", "sparse-max", "sparse-grid", "sparse-grid-tgpl",
                   "lidar-ptq", "brecq", "qdrop"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sim_pillar")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                        help="presets, each optionally with settings: 'lidar-ptq:tgpl_steps=400,seed=1'")
    parser.add_argument("--calib-frames", type=int, default=256)
    parser.add_argument("--calib-start", type=int, default=0,
                        help="first calib-split frame: another calibration set for the same rows (files get "
                             "_calib<N>, and _<frames>f without the default 256 frames)")
    parser.add_argument("--val-frames", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="default docs/benchmarks/ptq_<model>")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or REPO / "docs" / "benchmarks" / f"ptq_{args.model}")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows_path = out.with_suffix(".jsonl")
    rows = read_jsonl(rows_path)
    done = {r["method"] for r in rows}

    model = load_checkpoint(bundled_checkpoint(args.model))
    sim = load_sim_config("default")
    calib = SimDataset("calib", args.calib_frames, sim, start=args.calib_start)
    val = SimDataset("val", args.val_frames, sim)
    calib.prepare(num_workers=1)
    val.prepare(num_workers=1)
    batches = calibration_batches(model.config, calib)
    header = (f"{args.model}: LiDAR-PTQ and baselines, every layer INT8 (weights per channel, activations per tensor, "
              f"BN folded); {args.val_frames} sim val frames, centre-distance mAP and BEV IoU mAP in %, mAP by range; "
              f"quantization wall time on {args.threads} threads of this machine "
              f"({platform.processor() or platform.machine()})"
              + (f"; calibration frames calib {args.calib_start}..{args.calib_start + args.calib_frames - 1}"
                 if args.calib_start else ""))
    for method in args.methods:
        if method in done:
            continue
        started = time.time()
        stem = row_stem(method, args.calib_frames, args.calib_start)
        if method == "fp32":
            net, seconds, frames = model, 0.0, 0
        else:
            preset, overrides, recipe = parse_method_spec(method)
            net, report = quantize_centerpoint(model, batches, preset, method_config(preset, **overrides),
                                               work_dir=ROW_DIR / args.model / stem, **recipe)
            seconds, frames = report.seconds, len(batches)
            save_quantized_checkpoint(net, report, ROW_DIR / args.model / f"{stem}.safetensors")
            write_bytes_atomic(out.parent / f"ptq_{args.model}_{stem}_report.txt", (report.format() + "\n").encode())
        result, run = evaluate_network(net, val)
        row = {**row_of(method, result, frames, seconds, run.median_ms), "calib_start": args.calib_start}
        rows.append(row)
        append_jsonl(rows_path, row)
        write_bytes_atomic(out.parent / f"ptq_{args.model}_{stem}_eval.txt",
                           (format_table(result) + "\n").encode())
        table = format_rows(rows, header)
        write_bytes_atomic(out.with_suffix(".txt"), table.encode())
        print(table, flush=True)
        print(f"[{method}] done in {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
