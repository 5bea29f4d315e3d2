#!/usr/bin/env python
"""FP32 accuracy of the bundled sim checkpoints on the synthetic validation split.

Prints, per checkpoint, the evaluation table (centre-distance AP by class and range, BEV IoU AP) and the median time
per frame, and writes docs/benchmarks/fp32_<name>.json, docs/benchmarks/fp32_<name>.txt and a detection picture
docs/detections_<name>.png. Run inside the project environment:

    ./dev run python benchmarks/fp32_accuracy.py --frames 500 sim_pillar sim_voxel
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from lidar_ptq_core.evaluate import evaluate, format_table
from lidar_ptq_core.io_utils import write_bytes_atomic, write_json_atomic
from lidar_ptq_core.render import render_bev
from lidar_ptq_core.runtime import Detector, bundled_checkpoint
from lidar_ptq_core.runtime.run_dataset import run_detector_on_dataset
from lidar_ptq_core.sim import SimDataset, load_sim_config

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def shown_path(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="bundled checkpoint names or .safetensors paths")
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--sim", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--picture-frame", type=int, default=0, help="validation frame drawn into docs/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = SimDataset("val", args.frames, load_sim_config(args.sim))
    dataset.prepare(num_workers=args.threads)
    for name in args.checkpoints:
        stem = Path(name).stem
        detector = Detector.from_checkpoint(name)
        started = time.time()
        detection_run = run_detector_on_dataset(detector, dataset)
        result = evaluate(detection_run.predictions, detection_run.ground_truths, class_names=detector.class_names,
                          region=detector.evaluation_region)
        header = (
            f"checkpoint {shown_path(bundled_checkpoint(name))} ({detector.config.name}); {len(dataset)} sim val "
            "frames "
            f"(sim config {args.sim!r}); median {detection_run.median_ms:.0f} ms/frame for voxelize + FP32 torch "
            f"network + decode on {args.threads} CPU threads ({platform.processor() or platform.machine()}); "
            f"wall {time.time() - started:.0f} s"
        )
        table = format_table(result)
        print(header)
        print(table)
        (DOCS / "benchmarks").mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(DOCS / "benchmarks" / f"fp32_{stem}.txt", (header + "\n\n" + table + "\n").encode())
        write_json_atomic(
            DOCS / "benchmarks" / f"fp32_{stem}.json",
            {"header": header, "median_ms": detection_run.median_ms, "result": result.to_dict()},
        )
        frame = dataset[args.picture_frame]
        render_bev(
            DOCS / f"detections_{stem}.png", frame.points, gt=frame.gt,
            detections=detection_run.predictions[args.picture_frame], min_score=0.3,
            title=f"{frame.frame_id}: {detector.config.name} FP32 detections (score >= 0.3, dashed GT = ignored)",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
