"""`lidar-ptq demo`: the embedded default job on synthetic data and the bundled model.

The chain as far as it exists: the simulator drives and "records" calibration sweeps into a rosbag2 bag, LiDAR-PTQ
(quick settings) quantizes the bundled FP32 CenterPoint from that bag, then both the FP32 and the INT8 model detect
on validation scenes, are evaluated against the simulator's ground truth side by side, and the first frame is drawn.
"""

from __future__ import annotations

import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, default=20, help="validation frames to run (default 20)")
    parser.add_argument("--checkpoint", default="sim_pillar", help="bundled checkpoint name or .safetensors path")
    parser.add_argument("--calib-frames", type=int, default=32, help="sweeps recorded into the calibration bag")
    parser.add_argument("--method", default="lidar-ptq-quick",
                        help="quantization method (default lidar-ptq-quick; the full `lidar-ptq` takes ~10 min)")
    parser.add_argument("--no-quantize", action="store_true", help="FP32 only")
    parser.add_argument("--sim", default="default", help="simulator config (config/sim)")
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo); replaced each run")
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

    if args.frames < 1 or args.calib_frames < 1:
        raise ValueError("--frames and --calib-frames must be >= 1")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    steps = 4 if args.no_quantize else 6
    dataset = SimDataset("val", args.frames, load_sim_config(args.sim))
    print(f"[1/{steps}] synthetic validation scenes: {args.frames} (cache {dataset.frame_path(0).parent})")
    dataset.prepare()

    detectors = {"FP32": Detector.from_checkpoint(args.checkpoint)}
    if not args.no_quantize:
        int8_path = _record_and_quantize(args, out, steps)
        detectors["INT8"] = Detector.from_checkpoint(int8_path)

    results, runs = {}, {}
    step = 2 if args.no_quantize else 4
    for name, detector in detectors.items():
        print(f"[{step}/{steps}] voxelize + detect with {name} {detector.config.name}")
        runs[name] = run_detector_on_dataset(detector, dataset, box_dir=out / name.lower())
        reports = runs[name].voxel_reports
        print(f"      median {np.median([r.num_voxels for r in reports]):.0f} voxels/frame, median "
              f"{runs[name].median_ms:.0f} ms/frame (voxelize + network + decode, {args.threads} threads"
              f"{', torch fake-quant' if name == 'INT8' else ''})")
    step += 1
    print(f"[{step}/{steps}] evaluate against the simulator's ground truth")
    for name, detector in detectors.items():
        box_dir = out / name.lower()
        # From the box files just written, so `lidar-ptq eval --checkpoint` on them prints this very table.
        results[name] = evaluate_dirs(box_dir / "pred", box_dir / "gt", list(detector.class_names),
                                      region=detector.evaluation_region)
        print(f"\n{name}:\n{format_table(results[name])}")
        write_json_atomic(box_dir / "eval.json", results[name].to_dict())
    if "INT8" in results:
        fp32, int8 = results["FP32"], results["INT8"]
        print(f"\nINT8 vs FP32 on {args.frames} frames: centre-distance mAP {100 * int8.distance_map['all']:.1f} vs "
              f"{100 * fp32.distance_map['all']:.1f}, BEV IoU mAP {100 * int8.iou_map['all']:.1f} vs "
              f"{100 * fp32.iou_map['all']:.1f}")
    write_json_atomic(out / "eval.json", {name: r.to_dict() for name, r in results.items()})

    first = dataset[0]
    picture = out / "detections.png"
    shown = "INT8" if "INT8" in runs else "FP32"
    render_bev(picture, first.points, gt=first.gt, detections=runs[shown].predictions[0], min_score=0.3,
               title=f"{first.frame_id}: {shown} {detectors[shown].config.name} detections (score >= 0.3) vs ground truth")
    print(f"[{steps}/{steps}] wrote {picture}, {out / 'eval.json'}, per-frame boxes in "
          f"{', '.join(str(out / n.lower()) for n in detectors)}")
    return 0


def _record_and_quantize(args, out: Path, steps: int) -> Path:
    """The simulator "records" a calibration bag; the FP32 checkpoint is quantized from it. Returns the INT8 path."""
    import shutil

    from ..calibration_data import calibration_clouds
    from ..models.checkpoint import load_checkpoint
    from ..pointcloud import KITTI_FIELDS, PointCloud, write_bag_frames
    from ..quant import method_config
    from ..recipes.centerpoint import quantize_centerpoint, save_quantized_checkpoint
    from ..runtime import bundled_checkpoint
    from ..sim import SimDataset, load_sim_config
    from ..voxelize import voxelize_clouds

    bag = out / "calib_bag"
    if bag.exists():  # the demo's own output from an earlier run; bags are never overwritten, so start afresh
        shutil.rmtree(bag)
    calib = SimDataset("calib", args.calib_frames, load_sim_config(args.sim))
    calib.prepare(progress=False)
    start_ns, period_ns = 1_700_000_000 * 1_000_000_000, 100_000_000  # 10 Hz
    write_bag_frames(bag, ((start_ns + i * period_ns, "lidar", PointCloud(calib[i].points, KITTI_FIELDS))
                           for i in range(len(calib))), storage="mcap")
    print(f"[2/{steps}] recorded {len(calib)} simulated sweeps into the calibration bag {bag} (mcap)")
    started = time.perf_counter()
    model = load_checkpoint(bundled_checkpoint(args.checkpoint))
    clouds, described = calibration_clouds(str(bag), args.calib_frames, progress=False)
    batches = [voxelize_clouds([c], model.config.voxelization, model.config.num_point_features)[0] for c in clouds]
    qmodel, report = quantize_centerpoint(model, batches, args.method, method_config(args.method), progress=True)
    path = save_quantized_checkpoint(qmodel, report, out / "int8.safetensors")
    print(f"[3/{steps}] quantized {model.config.name} with {args.method} from {described} in "
          f"{time.perf_counter() - started:.0f} s, every layer INT8 -> {path}")
    return path
