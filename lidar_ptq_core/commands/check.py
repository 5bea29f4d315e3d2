"""`lidar-ptq check SOURCE --model M`: does this sensor's data look like what the model was trained on?

Reads a sample of frames (a file, a folder of files, a rosbag2 bag, or 'sim'), computes their statistics as the
model would see them (its point-feature rule, its recorded input settings, then --intensity-scale / --z-offset) and
compares them with the model's reference statistics (config/input_stats/<model config file>.yaml). Prints a
table, then one line per problem with its fix. Exit code 0: nothing found, 1: problems, 2: bad input.

A multi-sweep model (its config's `sweeps` section, e.g. nuScenes: 10) is checked on what it will see: each sampled
frame accumulated with the frames before it (lidar_ptq_core/sweeps.py, as detect, compare, calibration and the node
do; a folder needs stamps in its file names or --sweep-period), so the time lag counts as present.

`--write-reference PATH` writes the sample's statistics as a model's reference instead (how the sim models' files
were made: `lidar-ptq check sim --sim-split train --frames 64 --model sim_pillar --write-reference
config/input_stats/sim_pillar.yaml`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="a point cloud file (.bin, .pcd.bin, .pcd), a folder of them, a rosbag2 bag, or 'sim'")
    parser.add_argument("--model", required=True,
                        help="checkpoint (bundled name or .safetensors, FP32 or INT8), .lptq bundle, or model config "
                        "(config/models name or .yaml)")
    parser.add_argument("--topic", default=None, help="PointCloud2 topic of a bag that holds several")
    parser.add_argument("--frames", type=int, default=16, help="frames sampled, spread over the source (default 16)")
    parser.add_argument("--sweep-period", type=float, default=None, metavar="SECONDS",
                        help="for a multi-sweep model on a folder of sequential frames: seconds between files (0.05 "
                        "for nuScenes' 20 Hz sweeps); default: stamps in nuScenes-style file names, else single "
                        "sweeps. Bags use their message stamps")
    parser.add_argument("--intensity-scale", type=float, default=1.0,
                        help="check as if intensity were multiplied by this (after what the checkpoint recorded)")
    parser.add_argument("--z-offset", type=float, default=0.0,
                        help="check as if this many metres were added to z (after what the checkpoint recorded)")
    parser.add_argument("--sim-config", default="default", help="simulator config of SOURCE 'sim' (e.g. vlp32)")
    parser.add_argument("--sim-split", default="val", help="split of SOURCE 'sim' (train for reference statistics)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    parser.add_argument("--write-reference", default=None, metavar="YAML",
                        help="write the sample's statistics as the model's reference statistics and exit")


def read_model_config(name: str):
    """The model config of a checkpoint (its embedded config, read from the safetensors header: no tensors, no
    torch), of a bundle (its manifest) or a config file / config name."""
    from ..config_files import data_roots, resolve_config
    from ..models.config import load_model_config, model_config_from_yaml

    path = Path(name)
    if path.suffix == ".lptq":
        from ..export.bundle import read_bundle

        return read_bundle(path).config
    if path.suffix != ".safetensors" and not path.is_file():
        candidates = [root / f"{name}.safetensors" for root in data_roots("checkpoints")]
        path = next((c for c in candidates if c.is_file()), path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        metadata = _safetensors_metadata(path)
        if "config" not in metadata:
            raise ValueError(f"{path}: no model config in the checkpoint's metadata")
        return model_config_from_yaml(metadata["config"])
    return load_model_config(resolve_config(name, "models"))


def _safetensors_metadata(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length > path.stat().st_size - 8:
            raise ValueError(f"{path}: not a safetensors file (header longer than the file)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a safetensors file ({exc})") from None
    return header.get("__metadata__") or {}


def run_check(source: str, model_config, frames: int = 16, topic: str | None = None, intensity_scale: float = 1.0,
              z_offset: float = 0.0, sim_config: str = "default", sim_split: str = "val", *,
              sweep_period: float | None = None) -> dict:
    """The check as plain data: model, source, settings, stats, reference, problems, notes, ok."""
    from ..calibration_data import model_input_settings, sample_clouds
    from ..pointcloud.input_check import cloud_statistics, compare_statistics, reference_statistics

    settings = model_input_settings(model_config, intensity_scale, z_offset)
    notes: list[str] = []
    sweeps = getattr(model_config, "sweeps", None)
    point_range = model_config.voxelization.point_cloud_range
    if sweeps is not None and sweeps.accumulates and source != "sim":
        clouds, described = accumulated_sample(source, model_config, frames, topic, settings, sweep_period,
                                               notify=notes.append)
        # the clouds carry the model's features with the settings already applied
        stats = cloud_statistics(clouds, model_config.point_features, point_range, None, described)
    else:
        if sweep_period is not None and source == "sim":
            raise ValueError("--sweep-period is for folders of sequential frames; the sim frames are independent")
        clouds, described = sample_clouds(source, frames, topic, sim_config, sim_split, progress=False)
        stats = cloud_statistics(clouds, model_config.point_features, point_range, settings, described)
    reference = reference_statistics(model_config.name)
    problems = compare_statistics(stats, reference, model_config.point_features)
    return {"model": model_config.name, "source": described, "input_settings": settings.to_dict(),
            "stats": stats, "reference": reference, "problems": problems, "notes": notes, "ok": not problems}


def accumulated_sample(source: str, model_config, frames: int, topic: str | None, settings,
                       sweep_period: float | None = None, notify=None):
    """([(where, PointCloud)], description): `frames` frames spread over `source`, each accumulated with the frames
    before it as the model takes them (sweeps.py), in the model's feature order with `settings` applied. A cloud
    keeps the features its sensor has, plus the time lag the accumulation writes; the check sees the others missing
    as it would on single frames (so does the time lag of a source without stamps)."""
    from ..calibration_data import spread_indices
    from ..pointcloud import PointCloud
    from ..pointcloud.features import PointPreparer, missing_features
    from ..sweeps import (
        TIME_LAG_FEATURE,
        WindowPreparer,
        describe_accumulation,
        frame_sequence,
        iter_sweep_windows,
        single_sweep_note,
    )

    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    notify = notify or (lambda text: None)
    features = model_config.point_features
    names = [f.name for f in features]
    sequence = frame_sequence(source, topic, sweep_period)
    total = len(sequence)
    if total == 0:
        raise ValueError(f"{source}: no point cloud frames")
    missing_stamps = single_sweep_note(model_config, sequence)
    if missing_stamps:
        notify(missing_stamps)
    prepare = WindowPreparer(model_config, PointPreparer(features, settings, notify=lambda text: None),
                             z_offset=settings.z_offset, notify=notify)
    clouds, sizes = [], []
    for frame, window in iter_sweep_windows(sequence, model_config.sweeps.count,
                                            spread_indices(total, frames).tolist()):
        points = prepare(window)
        sizes.append(prepare.last_sweep_count)
        newest = window.newest.cloud
        lacking = {f.name for f in missing_features(getattr(newest, "fields", names), features)}
        if sequence.stamps is not None:
            lacking.discard(TIME_LAG_FEATURE)  # written by the accumulation; without stamps it stays missing (zeros)
        kept = [k for k, name in enumerate(names) if name not in lacking]
        clouds.append((frame.where, PointCloud(points[:, kept], tuple(names[k] for k in kept))))
    described = f"{len(clouds)} of {total} frames ({sequence.description}) spread over the recording" \
        + describe_accumulation(model_config, sequence) \
        + (f": {min(sizes)}-{max(sizes)} sweeps per frame" if sequence.stamps is not None else "")
    return clouds, described


def run(args) -> int:
    import yaml

    from ..io_utils import write_bytes_atomic

    config = read_model_config(args.model)
    result = run_check(args.source, config, args.frames, args.topic, args.intensity_scale, args.z_offset,
                       args.sim_config, args.sim_split, sweep_period=args.sweep_period)
    stats, reference, problems = result["stats"], result["reference"], result["problems"]
    if args.write_reference:
        data = {"model": config.name,
                "command": f"lidar-ptq check {args.source} --sim-split {args.sim_split} --sim-config "
                           f"{args.sim_config} --frames {args.frames} --model {args.model} --write-reference "
                           f"{args.write_reference}" if args.source == "sim" else f"lidar-ptq check {args.source} "
                           f"--frames {args.frames} --model {args.model} --write-reference {args.write_reference}",
                **stats.to_dict()}
        header = (f"# Reference input statistics of model {config.name} ({stats.source}), read by `lidar-ptq check`\n"
                  "# and the detector node. Regenerate with the command below.\n")
        write_bytes_atomic(args.write_reference, (header + yaml.safe_dump(data, sort_keys=False)).encode())
        print(f"wrote {args.write_reference} ({stats.frames} frames)")
        return 0
    if args.json:
        out = {**result, "stats": stats.to_dict(), "reference": reference.to_dict() if reference else None,
               "problems": [{"kind": p.kind, "message": p.message, "fix": p.fix} for p in problems]}
        print(json.dumps(out, indent=2))
        return 0 if result["ok"] else 1
    from ..pointcloud.input_check import format_table

    print(f"model {config.name}; {stats.source}"
          + ("" if result["input_settings"] == {"intensity_scale": 1.0, "z_offset": 0.0}
             else f"; input corrected: intensity x {result['input_settings']['intensity_scale']:.6g}, "
                  f"z {result['input_settings']['z_offset']:+.3g} m"))
    print(format_table(stats, reference))
    if reference is None:
        print(f"no reference statistics for model {config.name} (config/input_stats/*.yaml): only fields checked")
    for text in result["notes"]:
        print(f"note: {text}")
    for problem in problems:
        print(f"problem: {problem.line()}")
    print("ok: the frames look like the model's training data" if result["ok"]
          else f"{len(problems)} problem(s)")
    return 0 if result["ok"] else 1
