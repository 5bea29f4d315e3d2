"""The demo job's library parts, shared by both ways `lidar-ptq demo` runs (no ROS import here):

- `quantize_from_bag`: the FP32 checkpoint quantized from a calibration bag, used by the offline chain below and by
  the ROS node chain (lidar_ptq_ros/demo_chain.py, which records that bag with the package's nodes);
- `compare_on_held_out`: `lidar-ptq compare` of FP32 vs INT8 on the frames of that bag calibration did not take
  (the bag holds `held_out_frames(calib_frames)` more sweeps than calibration uses, interleaved with them);
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
    compared = None
    if not args.no_quantize:
        int8_path = _record_and_quantize(args, out, steps)
        detectors["INT8"] = Detector.from_checkpoint(int8_path)
        compared = compare_on_held_out(args.checkpoint, int8_path, out / "calib_bag", args.calib_frames,
                                       out / "compare", threads=args.threads)
        print(f"      compare on the bag's {held_out_frames(args.calib_frames)} held-out sweeps: {compared['verdict']}")

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
    if compared is not None:
        print(f"lidar-ptq compare, FP32 vs INT8 on held-out sweeps of the calibration bag: {compared['verdict']} "
              f"({out / 'compare'})")
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


def held_out_frames(calib_frames: int) -> int:
    """Sweeps the demo records into its calibration bag beyond the `calib_frames` calibrated on, for `compare`: a
    quarter as many (at least 2), so that the check costs a few seconds."""
    return max(2, calib_frames // 4)


def compare_on_held_out(checkpoint: str, candidate: str | Path, bag: str | Path, calib_frames: int, out: Path,
                        backend: str = "auto", threads: int | None = None) -> dict:
    """`lidar-ptq compare <bag> --reference <checkpoint> --candidate <candidate> --exclude-calibration <calib_frames>`
    as a library call: FP32 vs INT8 on the bag's frames calibration did not take; compare.json and worst_frames.png
    in `out`. Returns compare's result (its `verdict` is the line the demo prints)."""
    from .commands.compare import run_compare

    return run_compare(str(bag), checkpoint, str(candidate), frames=held_out_frames(calib_frames),
                       calibration_frames=calib_frames, backend=backend, threads=threads, out=out, worst=2)


def compare_summary(result: dict) -> dict:
    """The part of compare's result the demo keeps in its summary."""
    keys = ("source", "threshold", "passed", "verdict", "worst_frames", "files")
    totals = ("frames", "reference_boxes", "other_boxes", "matched", "reference_recall", "other_precision",
              "map_vs_reference")
    return {**{k: result[k] for k in keys if k in result},
            "agreement": {k: result["agreement"][k] for k in totals}}


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
    calib = SimDataset("calib", args.calib_frames + held_out_frames(args.calib_frames), load_sim_config(args.sim))
    calib.prepare(progress=False)
    start_ns, period_ns = 1_700_000_000 * 1_000_000_000, 100_000_000  # 10 Hz
    write_bag_frames(bag, ((start_ns + i * period_ns, "lidar", PointCloud(calib[i].points, KITTI_FIELDS))
                           for i in range(len(calib))), storage="mcap")
    print(f"[2/{steps}] recorded {args.calib_frames} simulated sweeps into the calibration bag {bag} (mcap) to "
          f"calibrate on, plus {held_out_frames(args.calib_frames)} held out for compare, interleaved ({len(calib)} "
          "messages)")
    q = quantize_from_bag(args.checkpoint, bag, args.calib_frames, args.method, out / "int8.safetensors")
    print(f"[3/{steps}] quantized {q.model_name} with {args.method} from {q.calibration} in {q.seconds:.0f} s, "
          f"every layer INT8 -> {q.path}")
    return q.path
