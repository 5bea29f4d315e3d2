#!/usr/bin/env python
"""Headline accuracy on the sim `test` split: FP32 and INT8 checkpoints on the same test frames, each INT8 - FP32
with a paired bootstrap 95 % interval over frames (lidar_ptq_core/paired.py), and how many of FP32's boxes each
INT8 checkpoint reproduces (lidar_ptq_core/agreement.py).

The test split is for headline figures only: nothing is ever chosen by its score (docs/QUANTIZATION.md, "Choosing
and reporting"). Run this once per committed checkpoint, inside the project environment, in the background:

    ./dev run python benchmarks/test_split_headline.py --model sim_pillar > runs/test_split_pillar.log 2>&1 &

Each model's boxes are cached as box files under runs/test_split/<model>/<sim config>/<checkpoint>-<sha256>/pred/
(ground truth in .../gt/), written frame by frame: an interrupted run resumes where it stopped, and a rerun on the
same checkpoint contents detects nothing. Rows land in docs/benchmarks/test_split_<model>.jsonl as they finish (a
row for the same checkpoint contents, reference and frames is not made again) and the table
docs/benchmarks/test_split_<model>.txt is rewritten after each row. The CLI gives the same figures from the cached
files: lidar-ptq eval --pred <int8 dir>/pred --reference <fp32 dir>/pred --gt <gt dir> --checkpoint <model>.

Models that are not lidar-ptq checkpoints (NVIDIA's quantizers, run in their own venv by benchmarks/peers/peer_ptq.py
--split test) come in as box folders: --box-dirs <dir> ..., each made under the same cache with a pred/ folder and a
meta.json (name, digest of the weights, how it was calibrated, the sim fingerprint); they are scored exactly like a
checkpoint's boxes, against the same FP32 boxes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lidar_ptq_core.agreement import detection_agreement
from lidar_ptq_core.benchmarking import (
    append_jsonl,
    changed_settings,
    detect_into_box_files,
    format_split_rows,
    read_jsonl,
    split_row_key,
)
from lidar_ptq_core.boxfile import read_detections, read_ground_truth
from lidar_ptq_core.evaluate import evaluate_and_match
from lidar_ptq_core.io_utils import file_sha256, write_bytes_atomic
from lidar_ptq_core.paired import DEFAULT_RESAMPLES, DEFAULT_SEED, paired_bootstrap
from lidar_ptq_core.runtime import Detector, bundled_checkpoint
from lidar_ptq_core.sim import SimDataset, load_sim_config, split_seed

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "runs" / "test_split"


def checkpoint_digest(path: Path) -> str:
    """First 12 hex digits of the file's SHA-256: cached boxes belong to these exact weights."""
    return file_sha256(path)[:12]


def detect_missing(checkpoint: Path, dataset: SimDataset, pred_dir: Path, gt_dir: Path, threads: int) -> list[float]:
    """Detect the frames whose box file is missing; returns the seconds per detected frame."""
    def make_detector():
        torch.set_num_threads(threads)
        return Detector.from_checkpoint(checkpoint)

    return detect_into_box_files(make_detector, dataset, pred_dir, gt_dir, checkpoint.stem)


def read_boxes(dataset: SimDataset, pred_dir: Path, gt_dir: Path):
    """(predictions, ground truths) of the dataset's frames, in order, from the cached box files."""
    predictions, ground_truths = [], []
    for i in range(len(dataset)):
        frame_id = dataset.frame_id(i)
        ground_truths.append(read_ground_truth(gt_dir / f"{frame_id}.json")[1])
        predictions.append(read_detections(pred_dir / f"{frame_id}.json")[1])
    return predictions, ground_truths


def calibration_of(path: Path) -> str | None:
    """How an INT8 checkpoint was calibrated, from its recorded provenance (None for FP32 or older files)."""
    import json

    from lidar_ptq_core.models.checkpoint import read_checkpoint_metadata

    metadata = read_checkpoint_metadata(path)
    report = metadata.get("report")
    if not report:
        return None
    provenance = json.loads(report).get("provenance") or {}
    if not provenance:
        return None
    method = provenance.get("method", "?")
    changed = preset_changes(method, json.loads(metadata.get("quantization") or "{}"))
    return (f"{method}{f' ({changed})' if changed else ''} on {provenance.get('calibration', '?')}, "
            f"{provenance.get('threads', '?')} threads")


def preset_changes(method: str, settings: dict) -> str:
    """The settings of a checkpoint that differ from its method's preset, as 'key=value, ...'."""
    from lidar_ptq_core.quant import METHODS, method_config

    if method not in METHODS or not settings:
        return ""
    preset = method_config(method).to_dict()
    keys = sorted(key for key in settings if key != "method" and key in preset)
    return ", ".join(f"{key}={settings[key]}" for key in changed_settings(settings, preset, keys))


def read_box_dir(box_dir: Path, dataset: SimDataset) -> dict:
    """The meta.json of a box folder made by another tool, checked: same sim frames, every frame detected."""
    meta_path = box_dir / "meta.json"
    if not meta_path.is_file():
        raise SystemExit(f"{box_dir}: no meta.json (not a finished box folder)")
    meta = json.loads(meta_path.read_text())
    missing = [k for k in ("name", "digest", "sim_fingerprint", "frames") if k not in meta]
    if missing:
        raise SystemExit(f"{meta_path}: missing {', '.join(missing)}")
    if meta["sim_fingerprint"] != dataset.fingerprint:
        raise SystemExit(f"{box_dir}: made on other sim frames ({meta['sim_fingerprint'][:12]}, these are "
                         f"{dataset.fingerprint[:12]})")
    absent = [i for i in range(len(dataset)) if not (box_dir / "pred" / f"{dataset.frame_id(i)}.json").is_file()]
    if absent:
        raise SystemExit(f"{box_dir}: {len(absent)} of {len(dataset)} frames have no boxes (first: frame {absent[0]})")
    return meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sim_pillar", help="FP32 checkpoint: bundled name or .safetensors")
    parser.add_argument("--checkpoints", nargs="+", default=None,
                        help="INT8 checkpoints, bundled names or paths (default: <model>_int8)")
    parser.add_argument("--box-dirs", nargs="+", default=[],
                        help="box folders detected by another tool (pred/ + meta.json), scored as extra rows")
    parser.add_argument("--frames", type=int, default=1000, help="test frames 0..N-1 (default: %(default)s)")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="test (headline figures, never used to choose) or val (where recipes and rows are "
                             "chosen; rows go to val_split_<model>)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for detection (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="processes generating test frames (default: 1)")
    parser.add_argument("--sim-config", default="default",
                        help="the simulated sensor of the test frames (vlp32: the 32-beam one; default: 64-beam)")
    parser.add_argument("--out", default=None,
                        help="default docs/benchmarks/test_split_<model>, _<sim config> for another sensor")
    parser.add_argument("--note", default=None,
                        help="a line for the table's header, e.g. how checkpoints that are not committed were made")
    args = parser.parse_args()
    if args.frames < 1:
        raise SystemExit("--frames must be at least 1")

    model_name = Path(args.model).stem
    suffix = "" if args.sim_config == "default" else f"_{args.sim_config}"
    out = Path(args.out or REPO / "docs" / "benchmarks" / f"{args.split}_split_{model_name}{suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows_path = out.with_suffix(".jsonl")
    rows = read_jsonl(rows_path)

    sim = load_sim_config(args.sim_config)
    test = SimDataset(args.split, args.frames, sim)
    started = time.perf_counter()
    made = test.prepare(num_workers=args.workers, progress=False)
    if made:
        print(f"generated {made} {args.split} frames in {time.perf_counter() - started:.0f} s", flush=True)
    cache = (CACHE if args.split == "test" else CACHE.with_name("val_split")) / model_name / test.fingerprint[:12]
    gt_dir = cache / "gt"

    fp32_path = bundled_checkpoint(args.model)
    default_int8 = [] if args.box_dirs else [f"{model_name}_int8"]
    checkpoints = [fp32_path] + [bundled_checkpoint(c) for c in (args.checkpoints or default_int8)]
    digests = {path: checkpoint_digest(path) for path in checkpoints}
    # Each row: (name, digest, box folder, checkpoint to detect the missing frames with or None, calibration,
    # the other tool's own median detection time or None)
    entries = [(path.stem, digests[path], cache / f"{path.stem}-{digests[path]}", path, calibration_of(path), None)
               for path in checkpoints]
    for box_dir in map(Path, args.box_dirs):
        meta = read_box_dir(box_dir.resolve(), test)
        entries.append((meta["name"], meta["digest"], box_dir.resolve(), None, meta.get("calibration"),
                        meta.get("median_ms")))
    role = "never used for any choice" if args.split == "test" else "the split recipes and rows are chosen on"
    header = (f"{model_name} on the first N sim {args.split} frames ({args.sim_config} sensor; seed "
              f"{split_seed(args.split, 0):,} + index; {role}), detector region; "
              "AP in %: centre-distance mAP, BEV IoU mAP, far-range centre-distance mAP; "
              f"INT8 - FP32 with paired bootstrap 95 % intervals over frames ({args.resamples} resamples, "
              f"seed {args.seed}); agree = % of FP32's boxes (score >= 0.3) the INT8 model reproduces (same "
              f"class, centre within 1 m); ms = median detection time per frame on {args.threads} thread(s) "
              f"({platform.processor() or platform.machine()})" + (f"\n{args.note}" if args.note else ""))

    fp32_detector = Detector.from_checkpoint(fp32_path)  # every row is scored on its classes, in its region
    class_names, region = list(fp32_detector.class_names), fp32_detector.evaluation_region
    reference = reference_boxes = None
    for name, digest, box_dir, path, calibration, tool_median_ms in entries:
        is_fp32 = path == fp32_path
        seconds = detect_missing(path, test, box_dir / "pred", gt_dir, args.threads) if path else []
        predictions, ground_truths = read_boxes(test, box_dir / "pred", gt_dir)
        result, matched = evaluate_and_match(predictions, ground_truths, class_names, region=region)
        if is_fp32:
            reference, reference_boxes = matched, predictions
        far = result.ranges[-1]
        row = {
            "checkpoint": name, "sha256": digest,
            "reference_sha256": None if is_fp32 else digests[fp32_path],
            "frames": args.frames, "split": args.split, "sim_fingerprint": test.fingerprint,
            "mAP": result.distance_map["all"], "bev_iou_mAP": result.iou_map["all"],
            "far_range": far, "far_mAP": result.distance_map[far],
            "class_ap": {name: c.distance_ap["all"] for name, c in result.classes.items()},
            "boxes": str(box_dir.relative_to(REPO) if box_dir.is_relative_to(REPO) else box_dir),
            "median_ms": round(1000 * float(np.median(seconds)), 1) if seconds else None,
            "threads": args.threads, "calibration": calibration,
            "paired": None, "agreement": None, "resamples": args.resamples, "seed": args.seed,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        done = {split_row_key(r): r for r in rows}
        kept = done.get(split_row_key(row))
        if kept and kept.get("class_ap") and (is_fp32 or kept.get("agreement")):
            print(f"[{name}] row already in {rows_path.name}", flush=True)
            continue
        # A row kept before AP per class or agreement were: made again from its cached boxes (the same figures,
        # plus those), in its place.
        stale = [i for i, r in enumerate(rows) if split_row_key(r) == split_row_key(row)]
        if path is None:
            row["median_ms"] = tool_median_ms
        if row["median_ms"] is None:  # boxes were cached by an earlier run: keep its timing if there is one
            earlier = [r for r in rows if r["checkpoint"] == name and r["sha256"] == digest]
            row["median_ms"] = earlier[-1]["median_ms"] if earlier else None
        if not is_fp32:
            differences = paired_bootstrap(reference, matched, num_resamples=args.resamples, seed=args.seed)
            row["paired"] = [d.to_dict() for d in differences]
            agreement = detection_agreement(reference_boxes, predictions, class_names)
            row["agreement"] = {"fp32_reproduced": agreement["reference_recall"],
                                "int8_in_fp32": agreement["other_precision"], "min_score": agreement["min_score"]}
            for d in differences:
                print(d.format(name, fp32_path.stem), flush=True)
        if stale:
            row["date"] = rows[stale[0]]["date"]
            rows[stale[0]] = row
            write_bytes_atomic(rows_path, "".join(json.dumps(r) + "\n" for r in rows).encode())
        else:
            rows.append(row)
            append_jsonl(rows_path, row)
        table = format_split_rows(rows, header)
        write_bytes_atomic(out.with_suffix(".txt"), table.encode())
        print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
