#!/usr/bin/env python
"""Does the TGPL task loss on held-out frames rank quantized models as their mAP does?

Scores every saved pillar checkpoint of the PTQ benchmark rows (runs/ptq_bench/sim_pillar/, with its row's mAP in
docs/benchmarks/ptq_sim_pillar*.jsonl) by the TGPL loss of the whole INT8 network against FP32 (heatmap and boxes at
the FP32 detections, heatmap background) on calibration frames that no row used, and prints the Spearman rank
correlation with mAP and with 50 m+ AP. This is the evidence behind `stage_check_frames` (quant/api.py).

    ./dev run python benchmarks/heldout_rank.py --start 768 --frames 24
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from lidar_ptq_core.benchmarking import ROW_DIR, held_out_scorer, read_jsonl, row_stem
from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.models.checkpoint import load_checkpoint
from lidar_ptq_core.recipes.centerpoint import load_any_checkpoint
from lidar_ptq_core.runtime import bundled_checkpoint

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=int, default=768, help="first held-out calib frame (rows used 0..767)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "heldout_rank_sim_pillar.txt"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fp32 = load_checkpoint(bundled_checkpoint("sim_pillar")).eval()
    held_out_loss = held_out_scorer(fp32, args.start, args.frames)
    rows = {}
    for path in sorted((REPO / "docs" / "benchmarks").glob("ptq_sim_pillar*.jsonl")):
        for row in read_jsonl(path):
            if row["method"] in ("fp32", "qat"):
                continue
            stem = row_stem(row["method"], row.get("calib_frames", 256), row.get("calib_start", 0))
            checkpoint = ROW_DIR / "sim_pillar" / f"{stem}.safetensors"
            if checkpoint.is_file():
                rows[stem] = (row["mAP"], row["mAP_by_range"]["50m+"], checkpoint)
    if len(rows) < 3:
        raise SystemExit(f"only {len(rows)} saved checkpoints under {ROW_DIR / 'sim_pillar'}: "
                         "run ptq_accuracy.py first")
    lines = [f"held-out TGPL loss on sim calib frames {args.start}..{args.start + args.frames - 1} against mAP on 500 "
             f"val frames, {len(rows)} saved pillar checkpoints", "", f"{'mAP':>6} {'50m+':>6} {'loss':>8}  row"]
    scored = []
    for stem, (map_all, map_far, checkpoint) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        net = load_any_checkpoint(checkpoint).eval()
        loss = held_out_loss(net)
        scored.append((map_all, map_far, loss))
        lines.append(f"{100 * map_all:6.2f} {100 * map_far:6.2f} {loss:8.3f}  {stem}")
        print(lines[-1], flush=True)
    a = np.array(scored)
    lines += ["", f"Spearman rank correlation: loss vs mAP {spearmanr(a[:, 0], a[:, 2]).correlation:+.3f}, "
                  f"loss vs 50 m+ AP {spearmanr(a[:, 1], a[:, 2]).correlation:+.3f}"]
    print(lines[-1])
    write_bytes_atomic(Path(args.out), ("\n".join(lines) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
