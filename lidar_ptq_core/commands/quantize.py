"""`lidar-ptq quantize --checkpoint C --calib SOURCE --method M --out FILE`: INT8 post-training quantization."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..devices import DEVICE_CHOICES_HELP
    from ..quant.config import METHODS

    parser.add_argument("--checkpoint", default="sim_pillar",
                        help="FP32 checkpoint: bundled name, .safetensors, or an OpenPCDet .pth (with --model-config)")
    parser.add_argument("--model-config", default=None, metavar="NAME_OR_YAML",
                        help="model config of an OpenPCDet .pth (e.g. waymo_centerpoint_pillar_1x); read with "
                        "weights_only, no pickled code runs")
    parser.add_argument("--calib", default="sim", metavar="SOURCE",
                        help="'sim' (the sim calib split), a folder of .bin/.pcd frames, or a rosbag2 bag")
    parser.add_argument("--topic", default=None, help="PointCloud2 topic of the bag (needed if it has several)")
    parser.add_argument("--frames", type=int, default=256, help="calibration frames, spread over the source")
    parser.add_argument("--sim-start", type=int, default=0,
                        help="with --calib sim: the first frame of the calib split (another calibration window)")
    parser.add_argument("--sweep-period", type=float, default=None, metavar="SECONDS",
                        help="a multi-sweep model on a folder of sequential frames: seconds between files (0.05 for "
                        "nuScenes' 20 Hz sweeps), so calibration accumulates sweeps as the node does")
    parser.add_argument("--sim-config", default="default",
                        help="with --calib sim: the simulated sensor (default: 64-beam; vlp32: 32-beam)")
    parser.add_argument("--intensity-scale", type=float, default=1.0,
                        help="multiply the calibration frames' intensity (0.00392 for a 0..255 sensor; lidar-ptq "
                        "check suggests it); recorded in the INT8 checkpoint, which detect and the node then apply")
    parser.add_argument("--z-offset", type=float, default=0.0,
                        help="metres added to z of the calibration frames (lidar-ptq check suggests it); recorded "
                        "in the INT8 checkpoint like --intensity-scale")
    parser.add_argument("--method", default="lidar-ptq", choices=sorted(METHODS))
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="quantization settings overriding the method's preset (keys of quant.QuantConfig, "
                        "e.g. tgpl_steps: 400, tgpl_score_threshold: 0.4)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="settings",
                        help="quantization settings overriding the preset and --config (values read as YAML: "
                        "tgpl_top_k=50 grid_ratios=[0.5,1.0])")
    parser.add_argument("--keep-float", nargs="+", default=None, metavar="LAYER",
                        help="layers (module names or prefixes) left in FP32")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--work-dir", default=None, help="stage checkpoints for resuming (default: <out>.work)")
    parser.add_argument("--out", required=True, help="quantized checkpoint (.safetensors) to write")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-input-check", action="store_true",
                        help="skip `lidar-ptq check` on a sample of the calibration frames before calibrating")


INPUT_CHECK_FRAMES = 16  # the sample `lidar-ptq check` reads by default


def check_calibration_input(source: str, model_config, frames: int, topic: str | None = None,
                            intensity_scale: float = 1.0, z_offset: float = 0.0, log=print) -> list:
    """`lidar-ptq check` on up to 16 of the calibration frames, before calibrating: each problem is printed with its
    fix and calibration goes on (a model quantized on mismatched frames is still what was asked for); a frame the
    model cannot take at all (no x, y or z; a feature its config refuses to fill) stops it with one error."""
    from ..pointcloud.cloud import MissingFieldError
    from .check import run_check

    try:
        result = run_check(source, model_config, min(frames, INPUT_CHECK_FRAMES), topic, intensity_scale, z_offset,
                           sim_split="calib")
    except MissingFieldError as exc:
        raise ValueError(f"input check: {exc}") from None
    for problem in result["problems"]:
        log(f"input check: {problem.line()}")
    if result["problems"]:
        log(f"input check: {len(result['problems'])} problem(s) in {result['source']}; calibrating anyway "
            "(`lidar-ptq check` shows the table; --no-input-check skips this)")
    return result["problems"]


def quantize_provenance(args, described: str, device) -> dict:
    """What reproduces this checkpoint: the command's inputs (the settings themselves are recorded in full beside it)
    and the environment. TGPL and reconstruction are bit-for-bit reproducible only with the same torch thread count
    and device: float sums in another order move a step size by an ulp, and 200 Adam steps grow that."""
    import platform

    import torch

    from ..io_utils import file_sha256
    from ..runtime import bundled_checkpoint

    checkpoint = {"name": args.checkpoint}
    try:
        checkpoint["sha256"] = file_sha256(bundled_checkpoint(args.checkpoint))
    except (OSError, ValueError):
        pass
    return {
        "checkpoint": checkpoint, "model_config": args.model_config, "calib": args.calib, "topic": args.topic,
        "frames": args.frames, "sim_start": args.sim_start, "sim_config": args.sim_config,
        "sweep_period": args.sweep_period,
        "intensity_scale": args.intensity_scale, "z_offset": args.z_offset, "method": args.method,
        "calibration": described, "threads": torch.get_num_threads(), "device": str(device),
        "torch": torch.__version__, "machine": platform.machine(),
    }


def run(args) -> int:
    from dataclasses import replace
    from pathlib import Path

    import torch

    from ..calibration_data import calibration_clouds, record_input_settings
    from ..config_files import load_yaml
    from ..devices import batch_to, describe, resolve_device
    from ..io_utils import write_bytes_atomic
    from ..models.checkpoint import load_checkpoint
    from ..quant import QuantConfig, method_config
    from ..quant.config import parse_settings
    from ..recipes.centerpoint import quantize_centerpoint, save_quantized_checkpoint
    from ..runtime import bundled_checkpoint
    from ..voxelize import voxelize_clouds

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out}")
    config = method_config(args.method)
    overrides = load_yaml(args.config) if args.config else {}
    overrides.update(parse_settings(args.settings))
    if overrides:
        config = QuantConfig.from_dict({**config.to_dict(), **overrides, "method": args.method})
    if args.keep_float is not None:
        config = replace(config, keep_float=tuple(args.keep_float))
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.checkpoint.endswith(".pth"):
        from ..config_files import resolve_config
        from ..models.checkpoint import import_openpcdet_checkpoint

        if not args.model_config:
            raise ValueError("an OpenPCDet .pth needs --model-config (which network its weights belong to)")
        model = import_openpcdet_checkpoint(args.checkpoint, resolve_config(args.model_config, "models"), device=device)
    else:
        model = load_checkpoint(bundled_checkpoint(args.checkpoint), device=device)
    if not args.no_input_check:
        check_calibration_input(args.calib, model.config, args.frames, args.topic, args.intensity_scale,
                                args.z_offset)
    clouds, described = calibration_clouds(args.calib, args.frames, args.topic, args.sim_config,
                                           progress=not args.quiet, model_config=model.config,
                                           intensity_scale=args.intensity_scale, z_offset=args.z_offset,
                                           sim_start=args.sim_start, sweep_period=args.sweep_period)
    record_input_settings(model, args.intensity_scale, args.z_offset)
    print(f"calibration: {described}; network on {describe(device)}")
    batches = [batch_to(voxelize_clouds([c], model.config.voxelization, model.config.num_point_features)[0], device)
               for c in clouds]
    work_dir = Path(args.work_dir) if args.work_dir else out.with_name(out.stem + ".work")
    qmodel, report = quantize_centerpoint(model, batches, args.method, config, progress=not args.quiet,
                                          work_dir=work_dir, log=print)
    report.provenance = quantize_provenance(args, described, device)
    save_quantized_checkpoint(qmodel, report, out)
    text = report.format()
    write_bytes_atomic(out.with_suffix(".report.txt"), (text + "\n").encode())
    print(text)
    print(f"wrote {out} (report: {out.with_suffix('.report.txt')}; stage checkpoints in {work_dir})")
    return 0
