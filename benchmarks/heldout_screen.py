#!/usr/bin/env python
"""Screen PTQ recipes on three calibration windows by the held-out TGPL loss, in seconds instead of evaluations.

Each spec ('preset:key=value,...', as in ptq_accuracy.py) quantizes the sim pillar model on calib frames N..N+F-1 for
each window start N; the INT8 network is then scored by the TGPL loss against FP32 on calib frames 768-791, which no
window uses. That loss ranks saved checkpoints as their mAP does (benchmarks/heldout_rank.py: Spearman -0.72 with mAP,
-0.89 with 50 m+ AP; models above 71 mAP score 5-8, below 69 score 24-59). A recipe that holds on every window
has a low loss on all three. Writes docs/benchmarks/heldout_screen_sim_pillar.txt.

    ./dev run python benchmarks/heldout_screen.py --frames 32 'sparse-max:equalize_channels=true' lidar-ptq-fast
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from lidar_ptq_core.benchmarking import calib_window_batches, held_out_scorer, parse_method_spec
from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.models.checkpoint import load_checkpoint
from lidar_ptq_core.quant import method_config
from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint
from lidar_ptq_core.runtime import bundled_checkpoint

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--frames", type=int, default=32, help="calibration frames per window")
    parser.add_argument("--starts", type=int, nargs="+", default=[0, 256, 512])
    parser.add_argument("--held-out-start", type=int, default=768)
    parser.add_argument("--held-out-frames", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "heldout_screen_sim_pillar.txt"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fp32 = load_checkpoint(bundled_checkpoint("sim_pillar")).eval()
    held_out_loss = held_out_scorer(fp32, args.held_out_start, args.held_out_frames)
    windows = {start: calib_window_batches(fp32, start, args.frames) for start in args.starts}
    end = args.held_out_start + args.held_out_frames - 1
    lines = [f"sim_pillar: held-out TGPL loss on calib {args.held_out_start}-{end} of recipes calibrated on "
             f"{args.frames}-frame windows; lower is better (saved models above 71 mAP: 5-8; "
             "heldout_rank_sim_pillar.txt)",
             "", " / ".join(f"calib {s}" for s in args.starts) + "   seconds   recipe   (stages undone by the check)"]
    print(lines[-1], flush=True)
    for spec in args.specs:
        preset, overrides, recipe = parse_method_spec(spec)
        losses, seconds, undone = [], [], []
        for start, batches in windows.items():
            started = time.perf_counter()
            net, report = quantize_centerpoint(fp32, batches, preset, method_config(preset, **overrides),
                                               progress=False, **recipe)
            seconds.append(time.perf_counter() - started)
            losses.append(held_out_loss(net))
            undone += [f"{name}@{start}" for name, info in report.stages.items() if info.get("kept") is False]
        lines.append(" / ".join(f"{loss:6.2f}" for loss in losses) + f"   {min(seconds):3.0f}-{max(seconds):3.0f}   "
                     f"{spec}" + (f"   ({', '.join(undone)})" if undone else ""))
        print(lines[-1], flush=True)
    write_bytes_atomic(Path(args.out), ("\n".join(lines) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
