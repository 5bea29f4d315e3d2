#!/usr/bin/env python
"""The detector node at a lidar's rate against the library pipeline on the same frames, in one run (issue 19).

Per row, on the first --frames sim val frames as cloud_player publishes them (the same PointCloud2 messages):
  bench   the library's Detector on the same model, backend and threads, in this process with no node running,
          timed stage by stage as the node runs them: PointCloud2 -> points (msg_to_detector_input), voxelize,
          network, decode; per-frame median of their sum over two passes (one before the node rows, one after, so a
          load change on a shared machine hits both sides), after one warm-up frame;
  node    detector_node in its own process (as `lidar-ptq demo` runs it), fed by cloud_player at --rate Hz; a
          collector node in this process takes every cloud's stamp, every Detection3DArray and the node's
          /diagnostics: its per-frame median time and per-stage medians (lidar_ptq_ros/frame_profile.py), and the
          end-to-end latency (cloud stamp -> detections received, waiting in the node's one-slot mailbox included).
Then "node ms / bench ms = R" and, for the INT8 onnxruntime row (the node's default model), a PASS / FAIL line against
issue 19's targets: R <= 1.2 and latency p50 <= 80 ms at 10 Hz.

With --before-tree DIR (the source tree of an earlier commit with its checkpoints, e.g. `git archive 121377c
lidar_ptq_ros lidar_ptq_core config checkpoints | tar -x -C DIR`), each row also runs its node and player from that
tree ("<row> before"), alternating with this tree's in --rounds rounds. Every node run also reports the CPU seconds of
the node process, the player process (both whole lives: start included) and this process (the collector) while it ran:
what shares the cores with the node.

Rows (--rows, comma-separated; default the INT8 bundle only, about a minute):
  int8-onnxruntime    the INT8 bundle (--int8; the shipped sim_pillar_int8.lptq, the node's default) on onnxruntime
  fp32-torch          the FP32 checkpoint (--checkpoint)
  int8-torch          the same bundle's INT8 checkpoint part as torch fake-quant
  int8-openvino       the same bundle on OpenVINO (its QDQ graph; the node's backend:=openvino)

    ./dev run python benchmarks/node_latency.py                     # INT8 bundle, 50 frames at 10 Hz, 2 threads
    ./dev run python benchmarks/node_latency.py --rows int8-onnxruntime,fp32-torch,int8-torch

Writes docs/benchmarks/node_latency.txt and .json (--out '' writes nothing).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from lidar_ptq_ros.pipeline_bench import (  # the node's pipeline timed with the library's pieces
    TARGET_P50_MS,
    TARGET_RATIO,
    TARGET_ROW,
    StagedDetector,
    bench_pass,
    bench_summary,
    messages_like_the_player,
    node_summary,
    verdict,
)

REPO = Path(__file__).resolve().parents[1]
ROWS = ("int8-onnxruntime", "fp32-torch", "int8-torch", "int8-openvino")

class ChildCpu:
    """CPU seconds (user + system) of this process's child processes, by module (`python -m lidar_ptq_ros.<module>`),
    sampled every `period` s from /proc while in the `with` block, and this process's own over the block."""

    def __init__(self, period: float = 0.1):
        import threading

        self.period, self.seconds, self._modules = period, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="node_latency_cpu", daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        self._own = time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.seconds["this process"] = time.process_time() - self._own
        return False

    def _children(self) -> set[int]:
        pids = set()
        for children in Path("/proc/self/task").glob("*/children"):
            try:
                pids.update(int(pid) for pid in children.read_text().split())
            except OSError:
                continue
        return pids

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            for pid in self._children():
                try:
                    if pid not in self._modules:
                        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                        module = next((a.decode() for a in args if a.startswith(b"lidar_ptq_ros.")), None)
                        self._modules[pid] = module.split(".", 1)[1] if module else None
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if self._modules[pid]:
                    self.seconds[self._modules[pid]] = max(self.seconds.get(self._modules[pid], 0.0),
                                                          (int(fields[11]) + int(fields[12])) / self._tick)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50, help="sim val frames played per row (default 50)")
    parser.add_argument("--rate", type=float, default=10.0, help="Hz the player publishes at (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="the node's num_threads, and the bench's (default 2)")
    parser.add_argument("--checkpoint", default="sim_pillar", help="FP32 checkpoint (default sim_pillar)")
    parser.add_argument("--int8", default="sim_pillar_int8.lptq",
                        help="a .lptq bundle for the INT8 rows (default the shipped sim_pillar_int8.lptq, the node's "
                             "default model), or an INT8 checkpoint, exported to a bundle first")
    parser.add_argument("--rows", default=TARGET_ROW, help=f"comma-separated rows among {', '.join(ROWS)} "
                        f"(default {TARGET_ROW})")
    parser.add_argument("--max-points", type=int, default=None,
                        help="the bench's max_points (default: the node's default, as run_node leaves it)")
    parser.add_argument("--before-tree", help="also run each row's node and player from this source tree (see above)")
    parser.add_argument("--rounds", type=int, default=1, help="node runs per row and tree, alternating (default 1)")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "node_latency.txt"),
                        help="report (.txt; the .json beside it); '' writes nothing")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        parser.error(f"unknown rows {unknown}; choose among {list(ROWS)}")
    if args.frames < 2:
        parser.error("--frames must be at least 2")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.before_tree and not (Path(args.before_tree) / "lidar_ptq_ros").is_dir():
        parser.error(f"--before-tree {args.before_tree} has no lidar_ptq_ros package")

    # The loopback environment before rclpy initialises (and for every node process).
    from lidar_ptq_ros.demo_chain import use_loopback_environment

    logs = Path(tempfile.mkdtemp(prefix="node_latency_", dir=REPO / "build" if (REPO / "build").is_dir() else None))
    env = use_loopback_environment(log_dir=logs / "ros")

    import rclpy

    from lidar_ptq_core.io_utils import json_ready, write_bytes_atomic, write_json_atomic
    from lidar_ptq_core.models.checkpoint import read_checkpoint_config
    from lidar_ptq_core.runtime import Detector, bundled_checkpoint
    from lidar_ptq_core.runtime.detector import bundled_bundle
    from lidar_ptq_core.sim import SimDataset, load_sim_config
    from lidar_ptq_ros.chain_report import format_latency_table, keep_up_sentence, latency_summary
    from lidar_ptq_ros.demo_chain import run_node

    if args.int8.endswith(".lptq"):
        bundle = str(bundled_bundle(args.int8))
    else:
        from lidar_ptq_core.export.export_bundle import export_bundle

        bundle = str(export_bundle(bundled_checkpoint(args.int8), logs / f"{Path(args.int8).stem}.lptq"))
    available = {"fp32-torch": ("FP32", args.checkpoint, "torch"), "int8-onnxruntime": ("INT8", bundle, "onnxruntime"),
                 "int8-torch": ("INT8", bundle, "torch"), "int8-openvino": ("INT8", bundle, "openvino")}
    class_names = read_checkpoint_config(bundled_checkpoint(args.checkpoint)).head_geometry().class_names
    dataset = SimDataset("val", args.frames, load_sim_config("default"))
    dataset.prepare(progress=False)
    messages = messages_like_the_player(dataset)  # the clouds as cloud_player publishes them

    staged = {}
    for row in rows:
        _, model, backend = available[row]
        detector = Detector.load(model, backend, args.threads or None)
        torch = sys.modules.get("torch")
        if args.threads and torch is not None:  # as the node: torch threads where torch runs the model
            torch.set_num_threads(args.threads)
        staged[row] = StagedDetector(detector, args.max_points)

    load_before = os.getloadavg()
    started = time.perf_counter()
    bench_frames = {row: [] for row in rows}
    for row in rows:
        print(f"{row}: bench pipeline (before the node), {args.frames} frames", flush=True)
        bench_frames[row] += bench_pass(staged[row], messages, check=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    trees = {"": REPO} | ({" before": Path(args.before_tree).resolve()} if args.before_tree else {})
    node_runs = {(row, tag): [] for row in rows for tag in trees}  # (row, tree tag) -> [(NodeRun, cpu seconds)]
    try:
        for round_index in range(args.rounds):
            order = list(trees) if round_index % 2 == 0 else list(reversed(trees))
            for row in rows:
                label, model, backend = available[row]
                for tag in order:
                    print(f"{row}{tag}: detector_node on {model} ({backend}), {args.frames} frames at {args.rate:g} Hz"
                          f"{f' from {trees[tag]}' if tag else ''}", flush=True)
                    os.chdir(trees[tag])  # `python -m` imports the nodes from the working folder first
                    try:
                        with ChildCpu() as cpu:
                            run = run_node(context, label, model, backend, frames=args.frames, rate=args.rate,
                                           threads=args.threads, class_names=class_names, env=env, log_dir=logs)
                    finally:
                        os.chdir(REPO)
                    node_runs[(row, tag)].append((run, cpu.seconds))
    finally:
        rclpy.try_shutdown(context=context)
    # One run per row and tree for the tables: the one with the median latency p50.
    chosen = {}
    for key, pairs in node_runs.items():
        pairs = sorted(pairs, key=lambda pair: latency_summary(pair[0])["latency_ms"]["p50"])
        chosen[key] = pairs[(len(pairs) - 1) // 2]
    runs = [chosen[(row, "")][0] for row in rows]
    for row in rows:
        print(f"{row}: bench pipeline (after the node), {args.frames} frames", flush=True)
        bench_frames[row] += bench_pass(staged[row], messages, check=False)
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()

    results = {}
    for (row, tag), (run, cpu) in chosen.items():
        bench, node, latency = bench_summary(bench_frames[row]), node_summary(run.counters), latency_summary(run)
        results[row + tag] = {"model": run.model, "backend": run.backend, "tree": str(trees[tag]), "bench": bench,
                              "node": node, "ratio": node["total_ms_median"] / bench["total_ms_median"], **latency,
                              "cpu_seconds": cpu, "cpu_ms_per_cloud": run.cpu_ms_per_cloud,
                              "page_faults_per_cloud": run.page_faults_per_cloud,
                              "node_counters": run.counters,
                              "all_runs": [{"latency_ms": latency_summary(r)["latency_ms"],
                                            "processing_ms_mean": latency_summary(r)["processing_ms_mean"],
                                            "answered": latency_summary(r)["answered"], "cpu_seconds": c,
                                            "node_ms_median": node_summary(r.counters)["total_ms_median"],
                                            "cpu_ms_per_cloud": r.cpu_ms_per_cloud,
                                            "page_faults_per_cloud": r.page_faults_per_cloud}
                                           for r, c in node_runs[(row, tag)]]}

    lines = [
        f"detector_node at {args.rate:g} Hz vs the library pipeline (bench) on the same {args.frames} sim val frames, "
        f"num_threads {args.threads}, rows one after the other",
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; load "
        f"average {load_before[0]:.2f} before, {load_after[0]:.2f} after (timings are only meaningful below 0.5)",
        f"command: ./dev run python benchmarks/node_latency.py {' '.join(sys.argv[1:] if argv is None else argv)}",
        "latency = cloud stamp -> Detection3DArray received (player -> node -> collector, waiting in the node's "
        "mailbox included); 'node ms' = the node's own time per frame (its /diagnostics, mean over its last 50 frames)",
        "",
        format_latency_table(runs),
        "",
        "Per frame, medians in ms: bench = this process, no node running (2 passes: before and after the node rows); "
        "node = its /diagnostics (frame_profile, last 50 frames)",
    ]
    for row in rows:
        r = results[row]
        b, n = r["bench"], r["node"]
        lines.append(f"  {row}: bench {b['total_ms_median']:.1f} (" + ", ".join(
            f"{s} {v:.1f}" for s, v in b["stages_ms_median"].items()) + f"); node {n['total_ms_median']:.1f} (" +
            ", ".join(f"{s} {v:.1f}" for s, v in n["stages_ms_median"].items()) +
            f"; process CPU {n['process_cpu_ms_median']:.1f})")
        lines.append(f"  {row}: node ms / bench ms = {n['total_ms_median']:.1f} / {b['total_ms_median']:.1f} = "
                     f"{r['ratio']:.2f}; latency p50 {r['latency_ms']['p50']:.0f} ms, p90 {r['latency_ms']['p90']:.0f}"
                     f" ms")
    lines.append("")
    lines.append(f"CPU seconds while each node run lasted ({args.frames} frames at {args.rate:g} Hz; node and player: "
                 "their whole lives, start included; this process: the collector)" +
                 (f"; the run with the median latency p50 of {args.rounds}" if args.rounds > 1 else ""))
    for key, r in results.items():
        lines.append(f"  {key}: " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in r["cpu_seconds"].items())
                     + (f"; node mean {r['processing_ms_mean']:.0f} ms, latency p50 {r['latency_ms']['p50']:.0f} ms, "
                        f"answered {r['answered']} of {r['published']}" if key not in rows else ""))
        if len(r["all_runs"]) > 1:
            lines.append("      every run: " + "; ".join(
                f"node mean {a['processing_ms_mean']:.0f} ms, p50 {a['latency_ms']['p50']:.0f} ms, answered "
                f"{a['answered']}, node CPU {a['cpu_seconds'].get('detector_node', float('nan')):.2f} s, player CPU "
                f"{a['cpu_seconds'].get('cloud_player', float('nan')):.2f} s" for a in r["all_runs"]))
    lines.append("")
    lines.append("CPU ms per cloud period while the clouds were played (first cloud's stamp to the last: steady state),"
                 " per process and its busiest threads by name (lidar_ptq_ros/process_cpu.py)")
    for key, r in results.items():
        lines.append(f"  {key}: " + "; ".join(
            f"{label} {sum(threads.values()):.1f} (" + ", ".join(
                f"{name} {ms:.1f}" for name, ms in list(threads.items())[:4]) + ")"
            + f" {r['page_faults_per_cloud'].get(label, float('nan')):.0f} page faults"
            for label, threads in r["cpu_ms_per_cloud"].items()))
    if args.rounds > 1:
        lines.append("Every run, alternating (node median ms, latency p50 ms, node / player CPU ms per cloud period, "
                     "node page faults per cloud):")
        for key, r in results.items():
            lines.append(f"  {key}: " + "; ".join(
                f"{a['node_ms_median']:.1f} / p50 {a['latency_ms']['p50']:.0f} / "
                f"{sum(a['cpu_ms_per_cloud'].get('detector_node', {}).values()):.1f} / "
                f"{sum(a['cpu_ms_per_cloud'].get('cloud_player', {}).values()):.1f} / "
                f"{a['page_faults_per_cloud'].get('detector_node', float('nan')):.0f}" for a in r["all_runs"]))
    lines.append("")
    for row, run in zip(rows, runs):
        s = results[row]
        lines.append(f"  {row}: {keep_up_sentence(run)}; node max {s['processing_ms_max']:.0f} ms, latency max "
                     f"{s['latency_ms']['max']:.0f} ms, {s['dropped_while_busy']} replaced while busy, "
                     f"{s['never_received']} never reached the node")
    if TARGET_ROW in results:
        lines.append("")
        lines.append(verdict(TARGET_ROW, results[TARGET_ROW]["ratio"], results[TARGET_ROW]["latency_ms"]["p50"]))
    lines.append(f"\n{seconds:.0f} s for the whole run; node logs in {logs}")
    report = "\n".join(lines)
    print("\n" + report)
    if args.out:
        out = Path(args.out)
        write_bytes_atomic(out, (report + "\n").encode())
        write_json_atomic(out.with_suffix(".json"), json_ready({
            "frames": args.frames, "rate_hz": args.rate, "threads": args.threads, "seconds": seconds,
            "load_average": {"before": load_before[0], "after": load_after[0]},
            "targets": {"ratio": TARGET_RATIO, "latency_p50_ms": TARGET_P50_MS, "row": TARGET_ROW},
            "rounds": args.rounds, "before_tree": args.before_tree, "rows": results,
        }))
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
