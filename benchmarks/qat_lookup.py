#!/usr/bin/env python
"""How long the recorded QAT run took to reach a given INT8 checkpoint's accuracy, without training again.

benchmarks/qat.py scores QAT every N steps on the first --check-frames val frames and keeps that history (with its
init and training time, paused time left out). This scores another checkpoint on the same frames and finds the first
QAT check at or above it, for centre-distance mAP and for BEV IoU mAP; the ratio to the checkpoint's own
quantization time (from its metadata, or --ptq-seconds when that was measured elsewhere) is printed beside.

    ./dev run python benchmarks/qat_lookup.py --checkpoint sim_pillar_int8 \
        --qat docs/benchmarks/qat_sim_pillar_both.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lidar_ptq_core.benchmarking import evaluate_network, first_reaching
from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.models.checkpoint import read_checkpoint_metadata
from lidar_ptq_core.recipes.centerpoint import load_any_checkpoint
from lidar_ptq_core.runtime import bundled_checkpoint
from lidar_ptq_core.sim import SimDataset, load_sim_config

REPO = Path(__file__).resolve().parents[1]


def shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="sim_pillar_int8")
    parser.add_argument("--qat", default=str(REPO / "docs" / "benchmarks" / "qat_sim_pillar_both.json"))
    parser.add_argument("--ptq-seconds", type=float, default=None,
                        help="the checkpoint's quantization wall time (default: from its metadata)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="default docs/benchmarks/qat_lookup_<checkpoint>.txt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    recorded = json.loads(Path(args.qat).read_text())
    history, row = recorded["history"], recorded["row"]
    init_seconds = row["quant_seconds"] - history[-1]["train_seconds"]
    path = Path(args.checkpoint)
    path = path if path.is_file() else bundled_checkpoint(args.checkpoint)
    model = load_any_checkpoint(path)
    ptq_seconds = args.ptq_seconds
    if ptq_seconds is None:
        summary = json.loads(read_checkpoint_metadata(path).get("report", "{}"))
        ptq_seconds = summary.get("seconds")
    check = SimDataset("val", row["qat_check_frames"], load_sim_config("default"))
    check.prepare(num_workers=1)
    result, _ = evaluate_network(model, check)
    target = {"mAP": result.distance_map["all"], "bev_iou_mAP": result.iou_map["all"]}

    ptq_time = "unknown" if ptq_seconds is None else f"{ptq_seconds:.0f} s"
    lines = [f"{args.checkpoint} on the first {len(check)} val frames: mAP {100 * target['mAP']:.1f}, BEV IoU mAP "
             f"{100 * target['bev_iou_mAP']:.1f}; quantization time {ptq_time}",
             f"recorded QAT run: {shown(Path(args.qat))} (init {row['qat_init']} {init_seconds:.0f} s, "
             f"{history[-1]['step']} steps, "
             f"checks every {history[1]['step'] - history[0]['step'] if len(history) > 1 else '?'} steps)"]
    for key, label in (("mAP", "centre-distance mAP"), ("bev_iou_mAP", "BEV IoU mAP")):
        first = first_reaching(history, key, target[key])
        if first is None:
            qat_seconds = init_seconds + history[-1]["train_seconds"]
            lines.append(f"{label}: QAT did not reach it in {qat_seconds / 60:.1f} min "
                         f"(ratio > {qat_seconds / ptq_seconds:.1f}x)"
                         if ptq_seconds else f"{label}: not reached")
            continue
        qat_seconds = init_seconds + first["train_seconds"]
        ratio = f", {qat_seconds / ptq_seconds:.2f}x the PTQ time" if ptq_seconds else ""
        lines.append(f"{label}: QAT reached it at step {first['step']} ({100 * first[key]:.1f}), "
                     f"{qat_seconds / 60:.1f} min with init{ratio}")
    text = "\n".join(lines) + "\n"
    out = Path(args.out or REPO / "docs" / "benchmarks" / f"qat_lookup_{path.stem}.txt")
    write_bytes_atomic(out, text.encode())
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
