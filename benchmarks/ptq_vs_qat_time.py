#!/usr/bin/env python
"""PTQ against QAT to the same accuracy, timed side by side in one run on this machine.

QAT's accuracy curve comes from the recorded run (benchmarks/qat.py: checks every 50 steps on the first 100 val
frames); its speed is measured here, in the same run as the PTQ recipe, so machine-speed drift between hours cancels:
  1. the PTQ recipe on each calibration window, timed, and checked to give the same model as that window's saved
     accuracy row (runs/ptq_bench/, written by ptq_accuracy.py);
  2. QAT's init (sparse-max on its 256 calib frames, as qat.py does it), timed;
  3. QAT training steps (batch 2, the recorded run's settings), timed per step after a warm-up;
  4. each PTQ model scored on QAT's check frames; the recorded run's first check at or above its centre-distance mAP
     (and its BEV IoU mAP) gives QAT's steps, and QAT's time = init + steps x step time.
Writes docs/benchmarks/ptq_vs_qat_time_<model>.txt.

    ./dev run python benchmarks/ptq_vs_qat_time.py lidar-ptq-fast --calib-frames 32 --calib-starts 0 256 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from lidar_ptq_core.benchmarking import (
    ROW_DIR,
    calibration_batches,
    parse_method_spec,
    qat_train_config,
    row_stem,
    same_model,
    scores_on,
)
from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.models.checkpoint import load_checkpoint
from lidar_ptq_core.quant import method_config
from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint
from lidar_ptq_core.runtime import bundled_checkpoint
from lidar_ptq_core.sim import SimDataset, load_sim_config
from lidar_ptq_core.training.train import train

REPO = Path(__file__).resolve().parents[1]


def time_qat_steps(model, train_split, steps: int, warmup: int, lr: float) -> float:
    """Seconds per QAT training step (batch 2), from the warm-up's last step to the last one."""
    marks: dict[int, float] = {}
    config = qat_train_config(steps, lr, checkpoint_every=warmup)
    with tempfile.TemporaryDirectory() as tmp:
        train(model, train_split, config, tmp, resume=False, progress=False,
              on_checkpoint=lambda step: marks.__setitem__(step, time.perf_counter()))
    first, last = min(marks), max(marks)
    if last == first:
        raise SystemExit("--qat-steps must be at least twice --qat-warmup")
    return (marks[last] - marks[first]) / (last - first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="the PTQ row, as ptq_accuracy.py names it ('preset:key=value,...')")
    parser.add_argument("--model", default="sim_pillar")
    parser.add_argument("--calib-frames", type=int, default=256)
    parser.add_argument("--calib-starts", type=int, nargs="+", default=[0])
    parser.add_argument("--qat", default=str(REPO / "docs" / "benchmarks" / "qat_sim_pillar_both.json"))
    parser.add_argument("--qat-steps", type=int, default=60)
    parser.add_argument("--qat-warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recorded = json.loads(Path(args.qat).read_text())
    history, qat_row = recorded["history"], recorded["row"]
    sim = load_sim_config("default")
    fp32 = load_checkpoint(bundled_checkpoint(args.model))
    preset, overrides, recipe = parse_method_spec(args.spec)

    lines = [f"{args.model}: PTQ '{args.spec}' on {args.calib_frames} calib frames against QAT "
             f"({qat_row['qat_init']} init on {qat_row['calib_frames']} calib frames, then training), timed in one "
             "run; "
             f"{args.threads} threads ({platform.processor() or platform.machine()}), load average "
             f"{os.getloadavg()[0]:.2f} at the start", ""]

    def log(line: str = "") -> None:
        lines.append(line)
        print(line, flush=True)

    # 1. PTQ on each window
    ptq = {}
    for start in args.calib_starts:
        data = SimDataset("calib", args.calib_frames, sim, start=start)
        data.prepare(num_workers=1)
        started = time.perf_counter()  # voxelizing the frames counts, as in QAT's init below (and in qat.py)
        batches = calibration_batches(fp32.config, data)
        net, _ = quantize_centerpoint(fp32, batches, preset, method_config(preset, **overrides), progress=False,
                                      **recipe)
        seconds = time.perf_counter() - started
        saved = ROW_DIR / args.model / f"{row_stem(args.spec, args.calib_frames, start)}.safetensors"
        ptq[start] = (net, seconds)
        log(f"PTQ on calib {start}-{start + args.calib_frames - 1}: {seconds:.1f} s; {same_model(net, saved)}")

    # 2-3. QAT's init and its step time
    calib = SimDataset("calib", qat_row["calib_frames"], sim)
    calib.prepare(num_workers=1)
    started = time.perf_counter()
    qat_model, _ = quantize_centerpoint(fp32, calibration_batches(fp32.config, calib), qat_row["qat_init"],
                                        method_config(qat_row["qat_init"], sensitivity_frames=0), progress=False)
    init_seconds = time.perf_counter() - started
    log(f"QAT init ({qat_row['qat_init']}, {len(calib)} frames): {init_seconds:.1f} s")
    train_split = SimDataset("train", 600, sim)
    train_split.prepare(num_workers=1)
    step_seconds = time_qat_steps(qat_model, train_split, args.qat_steps, args.qat_warmup, 1e-4)
    recorded_steps = [(b["train_seconds"] - a["train_seconds"]) / (b["step"] - a["step"])
                      for a, b in zip(history, history[1:])]
    log(f"QAT training: {step_seconds:.3f} s per step here (steps {args.qat_warmup}-{args.qat_steps}); the recorded "
        f"run's median {sorted(recorded_steps)[len(recorded_steps) // 2]:.3f} s per step")
    log()

    # 4. QAT's time to each PTQ model's accuracy
    check = SimDataset("val", qat_row["qat_check_frames"], sim)
    check.prepare(num_workers=1)
    log(f"QAT's time to the same accuracy on the first {len(check)} val frames (the recorded run's checks): "
        "init + steps x step time")
    log(f"{'window':>8} {'PTQ s':>6} {'mAP':>5} {'IoU':>5}   {'QAT to mAP':>22}   {'QAT to mAP and BEV IoU':>26}")
    for start, (net, seconds) in ptq.items():
        target = scores_on(net, check)
        cells = []
        for keys in (("mAP",), ("mAP", "bev_iou_mAP")):
            first = next((h for h in history if all(h[k] >= t for k, t in zip(keys, target))), None)
            if first is None:
                total = init_seconds + history[-1]["step"] * step_seconds
                cells.append(f"not in {history[-1]['step']} steps: > {total:.0f} s, > {total / seconds:.1f}x")
            else:
                total = init_seconds + first["step"] * step_seconds
                cells.append(f"{first['step']} steps, {total:.0f} s, {total / seconds:.1f}x")
        log(f"{start:>8} {seconds:6.1f} {100 * target[0]:5.1f} {100 * target[1]:5.1f}   "
            f"{cells[0]:>22}   {cells[1]:>26}")
    out = Path(args.out or REPO / "docs" / "benchmarks" / f"ptq_vs_qat_time_{args.model}.txt")
    write_bytes_atomic(out, ("\n".join(lines) + "\n").encode())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
