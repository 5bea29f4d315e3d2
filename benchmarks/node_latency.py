#!/usr/bin/env python
"""The detector node at a lidar's rate: FP32 checkpoint vs INT8 bundle, side by side in one run.

For each row, detector_node runs in its own process (as `lidar-ptq demo` runs it) and cloud_player publishes the same
sim val frames to it at --rate Hz; a collector node in this process takes every cloud's stamp and every
Detection3DArray the node publishes. Per row: clouds published, answered and dropped (the node drops a cloud that
arrives while it is busy, never queues), end-to-end latency p50 / p90 / p99 / max (cloud stamp -> detections
received, so waiting in the node's one-slot mailbox counts), and the node's own processing time per frame from its
/diagnostics. Rows run one after the other, never at the same time; DDS discovery on loopback (demo_chain).
Rows:
  FP32 torch          the FP32 checkpoint (--checkpoint)
  INT8 onnxruntime    the INT8 bundle (--int8 exported with `lidar-ptq export`): the dense part as QDQ ONNX
  INT8 torch          the same bundle's INT8 checkpoint part as torch fake-quant

    ./dev run python benchmarks/node_latency.py --frames 50 --rate 10 --threads 2

Writes docs/benchmarks/node_latency.txt and .json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50, help="sim val frames played per row (default 50)")
    parser.add_argument("--rate", type=float, default=10.0, help="Hz the player publishes at (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="the node's num_threads (default 2)")
    parser.add_argument("--checkpoint", default="sim_pillar", help="FP32 checkpoint (default sim_pillar)")
    parser.add_argument("--int8", default="sim_pillar_int8",
                        help="INT8 checkpoint exported to a bundle for the INT8 rows, or a .lptq bundle "
                             "(default the bundled sim_pillar_int8, LiDAR-PTQ)")
    parser.add_argument("--rows", default="fp32-torch,int8-onnxruntime,int8-torch",
                        help="comma-separated rows among fp32-torch, int8-onnxruntime, int8-torch")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "node_latency.txt"),
                        help="report (.txt; the .json beside it); '' writes nothing")
    args = parser.parse_args(argv)

    # The loopback environment before rclpy initialises (and for every node process).
    from lidar_ptq_ros.demo_chain import use_loopback_environment

    logs = Path(tempfile.mkdtemp(prefix="node_latency_", dir=REPO / "build" if (REPO / "build").is_dir() else None))
    env = use_loopback_environment(log_dir=logs / "ros")

    import rclpy

    from lidar_ptq_core.export.export_bundle import export_bundle
    from lidar_ptq_core.io_utils import write_bytes_atomic, write_json_atomic
    from lidar_ptq_core.models.checkpoint import read_checkpoint_config
    from lidar_ptq_core.runtime import bundled_checkpoint
    from lidar_ptq_core.sim import SimDataset, load_sim_config
    from lidar_ptq_ros.chain_report import format_latency_table, keep_up_sentence, latency_summary
    from lidar_ptq_ros.demo_chain import run_node

    bundle = args.int8 if args.int8.endswith(".lptq") else str(export_bundle(bundled_checkpoint(args.int8),
                                                                             logs / f"{Path(args.int8).stem}.lptq"))
    available = {"fp32-torch": ("FP32", args.checkpoint, "torch"), "int8-onnxruntime": ("INT8", bundle, "onnxruntime"),
                 "int8-torch": ("INT8", bundle, "torch")}
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in available]
    if unknown or not rows:
        parser.error(f"unknown rows {unknown}; choose among {list(available)}")
    class_names = read_checkpoint_config(bundled_checkpoint(args.checkpoint)).head_geometry().class_names
    SimDataset("val", args.frames, load_sim_config("default")).prepare(progress=False)

    load_before = os.getloadavg()
    started = time.perf_counter()
    context = rclpy.Context()
    rclpy.init(context=context)
    runs = []
    try:
        for row in rows:
            label, model, backend = available[row]
            print(f"{row}: detector_node on {model} ({backend}), {args.frames} frames at {args.rate:g} Hz", flush=True)
            runs.append(run_node(context, label, model, backend, frames=args.frames, rate=args.rate,
                                 threads=args.threads, class_names=class_names, env=env, log_dir=logs))
    finally:
        rclpy.try_shutdown(context=context)
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()

    lines = [
        f"detector_node at {args.rate:g} Hz input: {args.frames} sim val frames per row, num_threads {args.threads}, "
        f"rows one after the other",
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; load "
        f"average {load_before[0]:.1f} before, {load_after[0]:.1f} after (other work shares this machine)",
        f"command: ./dev run python benchmarks/node_latency.py {' '.join(sys.argv[1:] if argv is None else argv)}",
        "latency = cloud stamp -> Detection3DArray received (player -> node -> collector, waiting in the node's "
        "mailbox included); 'node ms' = the node's own time per frame (its /diagnostics, mean over its last 50 frames)",
        "",
        format_latency_table(runs),
        "",
    ]
    for row, run in zip(rows, runs):
        s = latency_summary(run)
        lines.append(f"  {row}: {keep_up_sentence(run)}; node max {s['processing_ms_max']:.0f} ms, latency max "
                     f"{s['latency_ms']['max']:.0f} ms, {s['dropped_while_busy']} replaced while busy, "
                     f"{s['never_received']} never reached the node")
    lines.append(f"\n{seconds:.0f} s for the whole run; node logs in {logs}")
    report = "\n".join(lines)
    print("\n" + report)
    if args.out:
        out = Path(args.out)
        write_bytes_atomic(out, (report + "\n").encode())
        write_json_atomic(out.with_suffix(".json"), {
            "frames": args.frames, "rate_hz": args.rate, "threads": args.threads, "seconds": seconds,
            "load_average": {"before": load_before[0], "after": load_after[0]},
            "rows": {row: {"model": run.model, "backend": run.backend, **_finite(latency_summary(run)),
                           "node_counters": run.counters} for row, run in zip(rows, runs)},
        })
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def _finite(obj):
    import math

    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and math.isnan(obj) else obj


if __name__ == "__main__":
    sys.exit(main())
