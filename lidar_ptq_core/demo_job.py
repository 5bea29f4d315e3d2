"""The demo job's library parts, shared by both ways `lidar-ptq demo` runs (no ROS import here):

- `quantize_from_bag`: the FP32 checkpoint quantized from a calibration bag, used by the offline chain below and by
  the ROS node chain (lidar_ptq_ros/demo_chain.py, which records that bag with the package's nodes);
- `run_offline`: the whole job as library calls (`lidar-ptq demo --no-ros`, or where no node-chain runner imports):
  the simulator writes the calibration bag itself, and the FP32 and INT8 models detect on the validation frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


def run_offline(args) -> int:
    """The chain as library calls: sim -> bag -> quantize -> FP32 and INT8 detect offline -> evaluate -> picture."""
    import numpy as np
    import torch

    from .evaluate import evaluate_dirs, format_table
    from .io_utils import write_json_atomic
    from .render import render_bev
    from .runtime import Detector
    from .runtime.run_dataset import run_detector_on_dataset
    from .sim import SimDataset, load_sim_config

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
               title=f"{first.frame_id}: {shown} {detectors[shown].config.name} detections (score >= 0.3) "
                     "vs ground truth")
    print(f"[{steps}/{steps}] wrote {picture}, {out / 'eval.json'}, per-frame boxes in "
          f"{', '.join(str(out / n.lower()) for n in detectors)}")
    return 0


@dataclass
class Quantized:
    path: Path  # the INT8 checkpoint
    model_name: str
    calibration: str  # what the calibration set was
    seconds: float


def quantize_from_bag(checkpoint: str, bag: str | Path, frames: int, method: str, out: Path,
                      progress: bool = True) -> Quantized:
    """Quantize `checkpoint` (bundled name or path) every layer INT8 with `method`, calibrated on up to `frames` clouds
    of `bag` spread over the recording; the INT8 checkpoint is written to `out`."""
    from .calibration_data import calibration_clouds
    from .models.checkpoint import load_checkpoint
    from .quant import method_config
    from .recipes.centerpoint import quantize_centerpoint, save_quantized_checkpoint
    from .runtime import bundled_checkpoint
    from .voxelize import voxelize_clouds

    started = time.perf_counter()
    model = load_checkpoint(bundled_checkpoint(checkpoint))
    clouds, described = calibration_clouds(str(bag), frames, progress=False)
    batches = [voxelize_clouds([c], model.config.voxelization, model.config.num_point_features)[0] for c in clouds]
    qmodel, report = quantize_centerpoint(model, batches, method, method_config(method), progress=progress)
    path = save_quantized_checkpoint(qmodel, report, out)
    return Quantized(Path(path), model.config.name, described, time.perf_counter() - started)


def _record_and_quantize(args, out: Path, steps: int) -> Path:
    """The simulator "records" a calibration bag; the FP32 checkpoint is quantized from it. Returns the INT8 path."""
    import shutil

    from .pointcloud import KITTI_FIELDS, PointCloud, write_bag_frames
    from .sim import SimDataset, load_sim_config

    bag = out / "calib_bag"
    if bag.exists():  # the demo's own output from an earlier run; bags are never overwritten, so start afresh
        shutil.rmtree(bag)
    calib = SimDataset("calib", args.calib_frames, load_sim_config(args.sim))
    calib.prepare(progress=False)
    start_ns, period_ns = 1_700_000_000 * 1_000_000_000, 100_000_000  # 10 Hz
    write_bag_frames(bag, ((start_ns + i * period_ns, "lidar", PointCloud(calib[i].points, KITTI_FIELDS))
                           for i in range(len(calib))), storage="mcap")
    print(f"[2/{steps}] recorded {len(calib)} simulated sweeps into the calibration bag {bag} (mcap)")
    q = quantize_from_bag(args.checkpoint, bag, args.calib_frames, args.method, out / "int8.safetensors")
    print(f"[3/{steps}] quantized {q.model_name} with {args.method} from {q.calibration} in {q.seconds:.0f} s, "
          f"every layer INT8 -> {q.path}")
    return q.path
