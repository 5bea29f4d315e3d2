"""`lidar-ptq demo`: the embedded default job on synthetic data and the bundled model.

Generates validation scenes (cached), voxelizes them with the model's settings, detects with the bundled FP32
checkpoint, evaluates against the simulator's ground truth and draws the first frame."""

from __future__ import annotations

import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, default=20, help="validation frames to run (default 20)")
    parser.add_argument("--checkpoint", default="sim_pillar", help="bundled checkpoint name or .safetensors path")
    parser.add_argument("--sim", default="default", help="simulator config (config/sim)")
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--threads", type=int, default=2)


def run(args) -> int:
    import numpy as np
    import torch

    from ..evaluate import evaluate_dirs, format_table
    from ..io_utils import write_json_atomic
    from ..render import render_bev
    from ..runtime import Detector
    from ..runtime.run_dataset import run_detector_on_dataset
    from ..sim import SimDataset, load_sim_config

    if args.frames < 1:
        raise ValueError("--frames must be >= 1")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    dataset = SimDataset("val", args.frames, load_sim_config(args.sim))
    print(f"[1/4] synthetic validation scenes: {args.frames} (cache {dataset.frame_path(0).parent})")
    dataset.prepare()

    detector = Detector.from_checkpoint(args.checkpoint)
    print(f"[2/4] voxelize + detect with {detector.config.name} ({args.checkpoint})")
    detection_run = run_detector_on_dataset(detector, dataset, box_dir=out)
    reports = detection_run.voxel_reports
    print(f"      first frame: {reports[0].summary()}")
    print(f"      median {np.median([r.num_voxels for r in reports]):.0f} voxels/frame, median {detection_run.median_ms:.0f} "
          f"ms/frame (voxelize + network + decode, {args.threads} threads)")

    print("[3/4] evaluate against the simulator's ground truth")
    # From the box files just written, so `lidar-ptq eval --checkpoint` on them prints this very table.
    result = evaluate_dirs(out / "pred", out / "gt", list(detector.class_names), region=detector.evaluation_region)
    print(format_table(result))
    write_json_atomic(out / "eval.json", result.to_dict())

    first = dataset[0]
    picture = out / "detections.png"
    render_bev(picture, first.points, gt=first.gt, detections=detection_run.predictions[0], min_score=0.3,
               title=f"{first.frame_id}: {detector.config.name} detections (score >= 0.3) vs ground truth")
    print(f"[4/4] wrote {picture}, {out / 'eval.json'}, per-frame boxes in {out / 'pred'} and {out / 'gt'}")
    return 0
