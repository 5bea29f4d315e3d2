"""`lidar-ptq bench --fp32 C --int8 C --source SOURCE --out STEM`: engine speed, FP32 and INT8 on torch and
onnxruntime side by side in one run, per stage and end to end (medians and p90), with onnxruntime's own
quantize_static as the peer row. The rows and what they time: lidar_ptq_core/bench.py.

Sources: 'sim' (the sim val split, with ground truth: mAP per row), a folder of .bin/.pcd frames, one file, or a
rosbag2 bag (no ground truth: timing and INT8-vs-FP32 agreement only). `--fp32 waymo-pillar-random` is the full-size
Waymo CenterPoint-Pillar (468 x 468 BEV) with random weights, quantized here with a cheap method: timing only."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..bench import ROWS

    parser.add_argument("--fp32", default="sim_pillar",
                        help="FP32 checkpoint: bundled name or .safetensors; or 'waymo-pillar-random' (the full-size "
                        "Waymo pillar network, random weights, timing only)")
    parser.add_argument("--int8", default="auto",
                        help="INT8 checkpoint (bundled name or .safetensors); 'auto' (default): the bundled "
                        "<fp32>_int8 when there is one, else 'quantize'; 'quantize': quantize the FP32 model here "
                        "with --int8-method on the --calib frames")
    parser.add_argument("--int8-method", default="max", help="method for --int8 quantize (default max: cheap)")
    parser.add_argument("--source", default="sim", metavar="SOURCE",
                        help="timed frames: 'sim' (sim val split, mAP per row), a folder of .bin/.pcd frames, one "
                        "file, or a rosbag2 bag")
    parser.add_argument("--topic", default=None, help="PointCloud2 topic of a bag that holds several")
    parser.add_argument("--frames", type=int, default=50, help="frames timed (spread over a folder or bag)")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the frames (medians and p90 over all)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--device", default="cpu",
                        help="torch device of the torch rows: cpu (default: the engine comparison is on the CPU), "
                        "cuda, cuda:N or auto; onnxruntime rows always run on the CPU")
    parser.add_argument("--rows", default="all",
                        help=f"comma-separated rows to run (default all): {', '.join(ROWS)}")
    parser.add_argument("--calib", default="sim", metavar="SOURCE",
                        help="calibration frames for the quantize_static peer row and --int8 quantize: 'sim' (the sim "
                        "calib split), a folder, a file or a bag")
    parser.add_argument("--calib-frames", type=int, default=16, help="calibration frames (default 16)")
    parser.add_argument("--profile-runs", type=int, default=3,
                        help="onnxruntime profile runs of one frame per onnxruntime row (0: no kernel tables)")
    parser.add_argument("--out", default=None, metavar="STEM",
                        help="write STEM.txt (the table) and STEM.json, e.g. docs/benchmarks/engine_speed")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def timed_frames(source: str, frames: int, topic: str | None = None, threads: int = 1):
    """(clouds, ground truths or None, description) of the frames to time."""
    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    if source == "sim":
        from ..sim import SimDataset, load_sim_config

        val = SimDataset("val", frames, load_sim_config("default"))
        val.prepare(num_workers=max(threads, 1), progress=False)
        items = [val[i] for i in range(len(val))]
        return [f.points for f in items], [f.gt for f in items], f"{frames} sim val frames"
    from ..calibration_data import calibration_clouds

    clouds, described = calibration_clouds(source, frames, topic, progress=False)
    return clouds, None, described


def _load_models(args, calib_clouds_fn):
    """(fp32, int8 or None, notes, trained) as asked by --fp32 / --int8."""
    from ..bench import INT8_ROWS, RANDOM_MODELS, quantize_for_bench, random_model
    from ..recipes.centerpoint import load_any_checkpoint
    from ..runtime import bundled_checkpoint

    notes = []
    trained = args.fp32 not in RANDOM_MODELS
    if trained:
        fp32 = load_any_checkpoint(bundled_checkpoint(args.fp32)).eval()
        fp32_name = args.fp32
    else:
        fp32 = random_model(args.fp32)
        fp32_name = f"{args.fp32} ({RANDOM_MODELS[args.fp32]})"
        notes.append(f"{args.fp32}: {RANDOM_MODELS[args.fp32]} built with RANDOM weights (no trained weights exist "
                     "here): TIMING ONLY, no accuracy; decode time is not representative (random heatmaps)")
    if not any(key in INT8_ROWS for key in args.row_keys):
        return fp32, None, fp32_name, "none", notes, trained
    int8_source = args.int8
    if int8_source == "auto":
        int8_source = "quantize"
        if trained and "/" not in args.fp32 and not args.fp32.endswith(".safetensors"):
            try:
                bundled_checkpoint(f"{args.fp32}_int8")
                int8_source = f"{args.fp32}_int8"
            except FileNotFoundError:
                pass
    if int8_source == "quantize":
        clouds, described = calib_clouds_fn()
        int8 = quantize_for_bench(fp32, clouds, args.int8_method)
        int8_name = f"{args.int8_method} on {described}"
        notes.append(f"INT8 model: the FP32 model quantized here with '{args.int8_method}' (every layer INT8) on "
                     f"{described}")
    else:
        int8 = load_any_checkpoint(bundled_checkpoint(int8_source)).eval()
        int8_name = int8_source
    return fp32, int8, fp32_name, int8_name, notes, trained


def run(args) -> int:
    import time

    import torch

    from ..bench import build_rows, machine_line, parse_rows, run_bench, write_result
    from ..devices import describe, resolve_device

    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    args.row_keys = parse_rows(args.rows)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    calib = {}

    def calib_clouds():
        if not calib:
            if args.calib == "sim":
                from ..calibration_data import calibration_clouds

                calib["v"] = calibration_clouds("sim", args.calib_frames, progress=False)
            else:
                clouds, _, described = timed_frames(args.calib, args.calib_frames, args.topic, args.threads)
                calib["v"] = (clouds, described)
        return calib["v"]

    fp32, int8, fp32_name, int8_name, notes, trained = _load_models(args, calib_clouds)
    clouds, ground_truths, described = timed_frames(args.source, args.frames, args.topic, args.threads)
    features = fp32.config.num_point_features
    if min(c.shape[1] for c in clouds) < features:
        notes.append(f"the frames carry fewer than the network's {features} point features: the missing columns are "
                     "zeros")
    if not trained:
        ground_truths = None
    peer = []
    if "ort-quantize-static" in args.row_keys:
        clouds_for_peer, peer_described = calib_clouds()
        peer = clouds_for_peer
        notes.append(f"quantize_static peer: QDQ, uint8 activations / int8 per-channel weights, MinMax, calibrated "
                     f"on {peer_described}")
    device = resolve_device(args.device)
    if device.type != "cpu":
        notes.append(f"torch rows on {describe(device)} (times include a synchronize after each stage); "
                     "onnxruntime rows on the CPU")
    rows = build_rows(fp32, int8, args.row_keys, threads=args.threads, calib_clouds=peer, device=device)
    setup_s = time.perf_counter() - started
    if not args.quiet:
        print(f"bench: {len(rows)} rows ready in {setup_s:.0f} s; timing {len(clouds)} frames x {args.repeats}",
              flush=True)
    result = run_bench(rows, clouds, repeats=args.repeats, ground_truths=ground_truths, threads=args.threads,
                       profile_runs=args.profile_runs, progress=not args.quiet, agreement=trained)
    grid = fp32.config.voxelization.grid_size
    result.header = [
        f"engine speed: FP32 {fp32_name} / INT8 {int8_name} ({fp32.config.name}, BEV grid {grid[0]} x {grid[1]}), "
        f"{described} x {args.repeats} repeats, rows interleaved; {machine_line(args.threads)}",
        f"load average (1/5/15 min) {result.load_average_start} at start, {result.load_average_end} at end; on a "
        "shared machine absolute times are inflated, the interleaving keeps the rows comparable",
        f"wall {time.perf_counter() - started:.0f} s (models, graphs and quantize_static {setup_s:.0f} s)",
        *notes,
    ]
    if not trained:
        result.header.append("random weights: no mAP and no INT8-vs-FP32 box agreement (timing only)")
    elif ground_truths is None:
        result.header.append("no ground truth for these frames: no mAP; INT8-vs-FP32 agreement only")
    print(result.format(), end="")
    if args.out:
        txt, js = write_result(result, args.out)
        print(f"wrote {txt} and {js}")
    return 0
