#!/usr/bin/env python
"""Voxelization speed on 120k-point sim frames: the current `voxelize` beside the previous implementation (kept as
`reference_voxelize` in test/test_voxelize.py), same frames, calls interleaved (which one goes first alternates per
repetition), outputs checked equal. Prints median / p90 ms per call for each config and writes
docs/benchmarks/voxelize_speed.txt.

    ./dev run python benchmarks/voxelize_speed.py                 # 30 repetitions x 5 frames, 4 configs
    ./dev run python benchmarks/voxelize_speed.py --repeats 10 sim_pillar

Frames: the first `--frames` frames of the sim `val` split (64-beam default config) with at least `--points` points,
each cut to its first `--points` points (scan order kept). The machine is shared: `uptime` load is printed before and
after, compare figures only within one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
from pathlib import Path

import numpy as np

from lidar_ptq_core.bench import load_average
from lidar_ptq_core.config_files import resolve_config
from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.models.config import load_model_config
from lidar_ptq_core.sim import generate_frame, load_sim_config, split_seed
from lidar_ptq_core.voxelize import voxelize

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CONFIGS = ["sim_pillar", "sim_voxel", "waymo_centerpoint_pillar_1x", "nuscenes_centerpoint_voxel0075_res3d"]


def reference_implementation():
    """The voxelize of before the speed work, kept in the tests only (test/test_voxelize.py), loaded from its file."""
    spec = importlib.util.spec_from_file_location("test_voxelize", REPO / "test" / "test_voxelize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_voxelize


def sim_frames(count: int, num_points: int) -> tuple[list[np.ndarray], list[int]]:
    config = load_sim_config("default")
    frames, used = [], []
    index = 0
    while len(frames) < count:
        points = generate_frame(config, split_seed("val", index)).points
        if len(points) >= num_points:
            frames.append(np.ascontiguousarray(points[:num_points]))
            used.append(index)
        index += 1
        if index > 50 * count:
            raise SystemExit(f"fewer than {count} of the first {index} val frames have {num_points} points")
    return frames, used


def load() -> str:
    return f"load average {load_average()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=CONFIGS, help="model configs (config/models/NAME.yaml)")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=DOCS / "benchmarks" / "voxelize_speed.txt")
    args = parser.parse_args()

    reference = reference_implementation()
    frames, used = sim_frames(args.frames, args.points)
    lines = [
        f"voxelize speed: {len(frames)} sim val frames (indices {used}) cut to {args.points} points, "
        f"{args.repeats} repetitions, old and new interleaved; ms per call",
        f"numpy {np.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs; {load()} at start",
        f"{'config':40s} {'old median':>10s} {'old p90':>8s} {'new median':>10s} {'new p90':>8s} {'speed-up':>8s}"
        f"  voxels / kept points (frame 0)",
    ]
    print("\n".join(lines), flush=True)
    for name in args.configs:
        cfg = load_model_config(resolve_config(name, "models")).voxelization
        for points in frames:  # warm-up, and the two must agree before anything is timed
            new = voxelize(points, cfg)
            features, coords, num_points, _ = reference(points, cfg)
            if not (np.array_equal(new.features, features) and np.array_equal(new.coords, coords)
                    and np.array_equal(new.num_points, num_points)):
                raise SystemExit(f"{name}: voxelize and the reference disagree")
        times = {"old": [], "new": []}
        for rep in range(args.repeats):
            for points in frames:
                for which in (("new", "old") if rep % 2 else ("old", "new")):
                    fn = reference if which == "old" else voxelize
                    start = time.perf_counter()
                    fn(points, cfg)
                    times[which].append((time.perf_counter() - start) * 1e3)
        old_med, old_p90 = np.median(times["old"]), np.percentile(times["old"], 90)
        new_med, new_p90 = np.median(times["new"]), np.percentile(times["new"], 90)
        report = voxelize(frames[0], cfg).report
        line = (f"{name:40s} {old_med:10.1f} {old_p90:8.1f} {new_med:10.1f} {new_p90:8.1f} {old_med / new_med:7.1f}x"
                f"  {report.num_voxels} / {report.num_kept_points}")
        print(line, flush=True)
        lines.append(line)
    lines.append(f"{load()} at end")
    print(lines[-1])
    write_bytes_atomic(args.out, ("\n".join(lines) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
