#!/usr/bin/env python
"""Quantization wall time of PTQ recipes on the sim models, without evaluation: for timing on an otherwise idle
machine, separately from the accuracy rows (which run for many minutes beside other work).

Each spec is a ptq_accuracy.py row ('preset:key=value,...', the same calib frames). The quantized model is compared
with that row's saved checkpoint (runs/ptq_bench/<model>/<stem>.safetensors) when there is one: "same model" means
every tensor is equal, so the row's measured accuracy belongs to the time printed here. Per-stage seconds come from
the quantization report. Writes docs/benchmarks/ptq_time_<model>.txt (or --out).

    ./dev run python benchmarks/ptq_time.py --model sim_pillar --calib-frames 32 \
        'sparse-grid:equalize_channels=true,share_input_quantizers=true,equalization_alpha=0.3,grid_search_frames=8'
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from lidar_ptq_core.benchmarking import ROW_DIR, calibration_batches, parse_method_spec, row_stem, same_model
from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.models.checkpoint import load_checkpoint
from lidar_ptq_core.quant import method_config
from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint
from lidar_ptq_core.runtime import bundled_checkpoint
from lidar_ptq_core.sim import SimDataset, load_sim_config

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--model", default="sim_pillar")
    parser.add_argument("--calib-frames", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(bundled_checkpoint(args.model))
    calib = SimDataset("calib", args.calib_frames, load_sim_config("default"))
    calib.prepare(num_workers=1)
    batches = calibration_batches(model.config, calib)
    load = os.getloadavg()[0]
    lines = [f"{args.model}: quantization wall time, {args.calib_frames} sim calib frames, {args.threads} threads "
             f"({platform.processor() or platform.machine()}); load average {load:.2f} before the first row", ""]
    for spec in args.specs:
        preset, overrides, recipe = parse_method_spec(spec)
        started = time.perf_counter()
        net, report = quantize_centerpoint(model, batches, preset, method_config(preset, **overrides), progress=False,
                                           **recipe)
        seconds = time.perf_counter() - started
        stages = ", ".join(f"{k} {v['seconds']:.1f}" for k, v in report.stages.items())
        saved = ROW_DIR / args.model / f"{row_stem(spec, args.calib_frames)}.safetensors"
        lines.append(f"{spec}: {seconds:.1f} s ({stages}); {same_model(net, saved)}")
        print(lines[-1], flush=True)
    out = Path(args.out) if args.out else REPO / "docs" / "benchmarks" / f"ptq_time_{args.model}.txt"
    write_bytes_atomic(out, ("\n".join(lines) + "\n").encode())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
