#!/usr/bin/env python
"""QAT baseline: fake-quant fine-tuning of an INT8 CenterPoint on the sim train split, until it reaches the
LiDAR-PTQ checkpoint's accuracy or a time cap, for the PTQ-vs-QAT cost comparison.

The QAT model starts from `--init` (default sparse-max: BN folded, first-layer channel scaling, max calibration on the
calib split; quantizer ranges then stay fixed) and trains its weights through the fake quantizers (straight-through
rounding) with the FP32 training loss and ground truth. Every `--eval-every` steps it is evaluated on the first
`--check-frames` val frames, beside the LiDAR-PTQ checkpoint on the same frames; it stops when it matches that
checkpoint's centre-distance mAP and (unless --no-match-iou) its BEV IoU mAP, the box precision, or when the training
time reaches `--time-cap-min`. The first check reaching each is reported. The final QAT model is evaluated on
`--val-frames` frames and its row
(method "qat", quantization time = init + training, evaluations excluded) lands in docs/benchmarks/qat_<model>.json
and .txt beside the FP32, init and LiDAR-PTQ rows. Training resumes from runs/qat/<model>/ when interrupted.
With --save, the final QAT model is also written as an INT8 checkpoint (the init's quantizer layout, the trained
weights; provenance method "qat"), so benchmarks/test_split_headline.py can score it on the test split.

    ./dev run python benchmarks/qat.py --model sim_pillar > runs/qat_pillar.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

from lidar_ptq_core.benchmarking import (
    ROW_DIR,
    calibration_batches,
    evaluate_network,
    first_reaching,
    format_rows,
    qat_train_config,
    read_jsonl,
    row_of,
    scores_on,
)
from lidar_ptq_core.io_utils import write_bytes_atomic, write_json_atomic
from lidar_ptq_core.models.checkpoint import load_checkpoint
from lidar_ptq_core.quant import method_config
from lidar_ptq_core.recipes.centerpoint import (
    load_quantized_checkpoint,
    quantize_centerpoint,
    save_quantized_checkpoint,
)
from lidar_ptq_core.runtime import bundled_checkpoint
from lidar_ptq_core.sim import SimDataset, load_sim_config
from lidar_ptq_core.training.train import train

REPO = Path(__file__).resolve().parents[1]


class TargetReached(Exception):
    pass


class ActiveClock:
    """Wall time minus the time this process was stopped (SIGSTOP while a timing benchmark runs alone).

    A daemon thread ticks every `tick` seconds; a gap much longer than a tick means the process was not running, and
    that gap is left out. Without it, pausing QAT for a benchmark would count against QAT's time.
    """

    def __init__(self, tick: float = 0.2, gap: float = 2.0):
        self._tick, self._gap = tick, gap
        self._paused = 0.0
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            if now - last > self._gap:
                with self._lock:
                    self._paused += now - last - self._tick
            last = now

    def paused_seconds(self) -> float:
        with self._lock:
            return self._paused

    def now(self) -> float:
        return time.monotonic() - self.paused_seconds()


def save_qat_checkpoint(model, init_report, path: Path, args, train_frames: int, last: dict,
                        init_seconds: float, reached_target: bool) -> None:
    """The trained QAT model as an INT8 checkpoint: the init's layout and quantizer ranges (QAT keeps them fixed),
    the fine-tuned weights, and provenance that says how it was made."""
    init_report.method = "qat"
    init_report.seconds = init_seconds + last["train_seconds"]
    init_report.provenance = {
        "method": "qat",
        "calibration": (f"sim calib 0..{args.calib_frames - 1} ({args.init} init), then {last['step']} steps of "
                        f"training on sim train 0..{train_frames - 1}"),
        "threads": args.threads,
        "torch": torch.__version__,
        "qat": {"init": args.init, "steps": last["step"], "lr": args.lr, "train_seconds": last["train_seconds"],
                "stop": "target reached on val" if reached_target else "time cap or schedule end"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_quantized_checkpoint(model, init_report, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sim_pillar")
    parser.add_argument("--init", default="sparse-max")
    parser.add_argument("--target", default=None,
                        help="INT8 checkpoint to match, bundled name or path (default: the benchmark's lidar-ptq)")
    parser.add_argument("--calib-frames", type=int, default=256)
    parser.add_argument("--train-frames", type=int, default=600)
    parser.add_argument("--check-frames", type=int, default=100)
    parser.add_argument("--val-frames", type=int, default=500)
    parser.add_argument("--steps", type=int, default=2000, help="one-cycle schedule length (the time cap may stop it)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--time-cap-min", type=float, default=115.0,
                        help="10x the pillar LiDAR-PTQ time (11 min) plus a margin")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--match-iou", action=argparse.BooleanOptionalAction, default=True,
                        help="stop only when QAT also reaches LiDAR-PTQ's BEV IoU mAP (box precision), not only its "
                             "centre-distance mAP (default on)")
    parser.add_argument("--work-dir", default=None, help="training state (default runs/qat/<model>)")
    parser.add_argument("--docs", default=str(REPO / "docs" / "benchmarks"), help="where the results land")
    parser.add_argument("--save", default=None, help="also write the final QAT model here, as an INT8 checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out_dir = Path(args.work_dir or REPO / "runs" / "qat" / args.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    sim = load_sim_config("default")
    calib, train_split = SimDataset("calib", args.calib_frames, sim), SimDataset("train", args.train_frames, sim)
    check, val = SimDataset("val", args.check_frames, sim), SimDataset("val", args.val_frames, sim)
    for split in (calib, train_split, val):
        split.prepare(num_workers=1)

    clock = ActiveClock()
    fp32 = load_checkpoint(bundled_checkpoint(args.model))
    started = clock.now()
    batches = calibration_batches(fp32.config, calib)
    qat_model, init_report = quantize_centerpoint(fp32, batches, args.init,
                                                  method_config(args.init, sensitivity_frames=0), progress=False)
    init_seconds = clock.now() - started
    target_path = bundled_checkpoint(args.target) if args.target else ROW_DIR / args.model / "lidar-ptq.safetensors"
    target_map, target_iou = scores_on(load_quantized_checkpoint(target_path), check)
    print(f"target: {target_path} mAP {100 * target_map:.1f}, BEV IoU mAP {100 * target_iou:.1f} on {len(check)} val "
          f"frames; init {args.init} took {init_seconds:.0f} s", flush=True)

    def reached(entry: dict) -> bool:
        return entry["mAP"] >= target_map and (not args.match_iou or entry["bev_iou_mAP"] >= target_iou)

    history_path = out_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    train_seconds = history[-1]["train_seconds"] if history else 0.0
    segment_start = [clock.now()]

    def on_checkpoint(step: int) -> None:
        nonlocal train_seconds
        train_seconds += clock.now() - segment_start[0]
        mAP, iou = scores_on(qat_model, check)
        qat_model.train()
        history.append({"step": step, "train_seconds": round(train_seconds, 1), "mAP": mAP, "bev_iou_mAP": iou,
                        "paused_s": round(clock.paused_seconds(), 1), "load_avg_1min": round(os.getloadavg()[0], 2)})
        write_json_atomic(history_path, history)
        print(f"step {step}: mAP {100 * mAP:.1f} (target {100 * target_map:.1f}), BEV IoU mAP {100 * iou:.1f} (target "
              f"{100 * target_iou:.1f}) after {train_seconds / 60:.1f} min of training", flush=True)
        if reached(history[-1]) or train_seconds >= 60 * args.time_cap_min:
            raise TargetReached
        segment_start[0] = clock.now()

    config = qat_train_config(args.steps, args.lr, args.eval_every)
    if not history or (not reached(history[-1]) and history[-1]["train_seconds"] < 60 * args.time_cap_min):
        try:
            train(qat_model, train_split, config, out_dir, resume=True, on_checkpoint=on_checkpoint)
        except TargetReached:
            pass
    else:  # finished earlier: restore the last state
        state = torch.load(out_dir / "train_state.pt", map_location="cpu", weights_only=True)
        qat_model.load_state_dict(state["model"])
    qat_model.eval()
    done = reached(history[-1])
    first_map = first_reaching(history, "mAP", target_map)
    first_iou = first_reaching(history, "bev_iou_mAP", target_iou)
    result, run = evaluate_network(qat_model, val)
    row = row_of("qat", result, len(batches), init_seconds + history[-1]["train_seconds"], run.median_ms)
    row.update(qat_steps=history[-1]["step"], qat_reached_target=done, qat_target_mAP_check=target_map,
               qat_target_bev_iou_mAP_check=target_iou, qat_match_iou=args.match_iou,
               qat_first_reaching_mAP=first_map, qat_first_reaching_bev_iou_mAP=first_iou,
               qat_check_frames=len(check), qat_time_cap_min=args.time_cap_min, qat_init=args.init)
    if args.save:
        save_qat_checkpoint(qat_model, init_report, Path(args.save), args, len(train_split), history[-1],
                            init_seconds, done)
        print(f"QAT model saved to {args.save}", flush=True)
    docs = Path(args.docs)
    write_json_atomic(docs / f"qat_{args.model}.json", {"history": history, "row": row})
    # Beside the PTQ rows (read only: the PTQ benchmark may still be appending to its file).
    rows_path = REPO / "docs" / "benchmarks" / f"ptq_{args.model}.jsonl"
    rows = [r for r in read_jsonl(rows_path) if r["method"] in ("fp32", args.init, "lidar-ptq")] + [row]
    goal = "mAP and BEV IoU mAP" if args.match_iou else "mAP"
    header = (f"{args.model}: QAT from {args.init} until the LiDAR-PTQ {goal} on {len(check)} val frames or "
              f"{args.time_cap_min:g} min of training; rows on {len(val)} val frames; quant s of qat = init + training")
    table = format_rows(rows, header)
    write_bytes_atomic(docs / f"qat_{args.model}.txt", table.encode())
    print(table)
    for first, label in ((first_map, "mAP"), (first_iou, "BEV IoU mAP")):
        print(f"QAT {'first reached' if first else 'did NOT reach'} the LiDAR-PTQ {label} on {len(check)} frames"
              + (f" after {first['step']} steps, {first['train_seconds'] / 60:.1f} min of training (+ "
                 f"{init_seconds / 60:.1f} min init)" if first else f" in {history[-1]['train_seconds'] / 60:.1f} min"))
    table_lines = [f"{'step':>6} {'train min':>10} {'mAP':>6} {'BEV IoU':>8}"]
    table_lines += [f"{h['step']:>6} {h['train_seconds'] / 60:>10.1f} {100 * h['mAP']:>6.1f} "
                    f"{100 * h['bev_iou_mAP']:>8.1f}" for h in history]
    write_bytes_atomic(docs / f"qat_{args.model}_history.txt",
                       (f"QAT checks on {len(check)} val frames (LiDAR-PTQ there: mAP {100 * target_map:.1f}, BEV IoU "
                        f"mAP {100 * target_iou:.1f}); init {args.init} {init_seconds:.0f} s\n"
                        + "\n".join(table_lines) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
