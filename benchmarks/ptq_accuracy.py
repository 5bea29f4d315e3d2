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
import json
import platform
import sys
import time
from pathlib import Path

import torch

from lidar_ptq_core.evaluate import evaluate, format_table
from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.models.checkpoint import load_checkpoint
from lidar_ptq_core.quant import method_config
from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint, save_quantized_checkpoint
from lidar_ptq_core.runtime import Detector, bundled_checkpoint
from lidar_ptq_core.runtime.run_dataset import run_detector_on_dataset
from lidar_ptq_core.sim import SimDataset, load_sim_config
from lidar_ptq_core.voxelize import voxelize_clouds

REPO = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = ["fp32", "max", "percentile", "entropy", "mse", "sparse-max", "sparse-grid", "sparse-grid-tgpl",
                   "lidar-ptq", "brecq", "qdrop"]


RECIPE_SETTINGS = ("tgpl_score_threshold", "tgpl_top_k")  # settings of the CenterPoint recipe, not of QuantConfig
ROW_DIR = REPO / "runs" / "ptq_bench"  # each quantized row's work folder and checkpoint, per model


def parse_method_spec(spec: str) -> tuple[str, dict, dict]:
    """'lidar-ptq' or 'lidar-ptq:tgpl_steps=400,tgpl_schedule=cosine' -> (preset, overrides of its QuantConfig
    settings, the CenterPoint recipe's settings); the whole spec names the row, so variants of a preset are rows of
    their own."""
    import yaml

    method, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bad setting {item!r} in {spec!r}: expected key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    recipe = {k: overrides.pop(k) for k in RECIPE_SETTINGS if k in overrides}
    return method, overrides, recipe


def data_tag(calib_frames: int, calib_start: int) -> str:
    """Suffix of a row's files when its calibration data is not the default (256 frames from calib frame 0), so
    that rows of one spec on other data never overwrite each other's checkpoint, report or evaluation."""
    return (f"_{calib_frames}f" if calib_frames != 256 else "") + (f"_calib{calib_start}" if calib_start else "")


def file_stem(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


def row_stem(spec: str, calib_frames: int, calib_start: int = 0) -> str:
    """The name of a row's files: its work folder and checkpoint under ROW_DIR/<model>/, its report and evaluation."""
    return file_stem(spec) + data_tag(calib_frames, calib_start)


def calibration_batches(config, calib) -> list[dict]:
    """One collated batch per calibration frame, as every PTQ row of the benchmarks uses them."""
    return [voxelize_clouds([calib[i].points], config.voxelization, config.num_point_features)[0]
            for i in range(len(calib))]


def evaluate_network(net, dataset):
    """(evaluation, detection run) of a network on a sim split, inside the detector's region: the benchmarks' one
    way to score a model, so FP32, PTQ, QAT and peer rows are comparable."""
    detector = Detector(net)
    run = run_detector_on_dataset(detector, dataset, progress=False)
    return evaluate(run.predictions, run.ground_truths, class_names=detector.class_names,
                    region=detector.evaluation_region), run


def row_of(method: str, result, calib_frames: int, quant_seconds: float, median_ms: float) -> dict:
    return {
        "method": method,
        "mAP": result.distance_map["all"],
        "bev_iou_mAP": result.iou_map["all"],
        "mAP_by_range": {r: result.distance_map[r] for r in result.ranges if r != "all"},
        "calib_frames": calib_frames,
        "quant_seconds": round(quant_seconds, 1),
        "median_ms": round(median_ms, 1),
    }


def format_rows(rows: list[dict], header: str) -> str:
    ranges = list(rows[0]["mAP_by_range"]) if rows else []
    fp32 = next((r for r in rows if r["method"] == "fp32"), None)
    width = max([18] + [len(r["method"]) for r in rows])
    lines = [header, "", f"{'method':<{width}} {'mAP':>6} {'d mAP':>6} {'BEV IoU':>8} "
             + " ".join(f"{r:>7}" for r in ranges) + f" {'calib':>6} {'quant s':>8}"]
    for row in rows:
        delta = row["mAP"] - fp32["mAP"] if fp32 else float("nan")
        lines.append(f"{row['method']:<{width}} {100 * row['mAP']:6.1f} {100 * delta:+6.1f} {100 * row['bev_iou_mAP']:8.1f} "
                     + " ".join(f"{100 * row['mAP_by_range'][r]:7.1f}" for r in ranges)
                     + f" {row['calib_frames']:>6} {row['quant_seconds']:>8.0f}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sim_pillar")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                        help="presets, each optionally with settings: 'lidar-ptq:tgpl_steps=400,seed=1'")
    parser.add_argument("--calib-frames", type=int, default=256)
    parser.add_argument("--calib-start", type=int, default=0,
                        help="first calib-split frame: another calibration set for the same rows (files get _calib<N>, and _<frames>f without the default 256 frames)")
    parser.add_argument("--val-frames", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="default docs/benchmarks/ptq_<model>")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or REPO / "docs" / "benchmarks" / f"ptq_{args.model}")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows_path = out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.is_file() else []
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
              f"quantization wall time on {args.threads} threads of this machine ({platform.processor() or platform.machine()})"
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
        with rows_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        write_bytes_atomic(out.parent / f"ptq_{args.model}_{stem}_eval.txt",
                           (format_table(result) + "\n").encode())
        table = format_rows(rows, header)
        write_bytes_atomic(out.with_suffix(".txt"), table.encode())
        print(table, flush=True)
        print(f"[{method}] done in {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
