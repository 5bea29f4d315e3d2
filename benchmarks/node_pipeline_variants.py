#!/usr/bin/env python
"""The node's pipeline in the library under settings the node could run with, each in its own child process,
alternating (issue 19: which process and onnxruntime settings make the INT8 node's frame cheaper on 2 shared cores).

Variants (--variants, comma-separated; default all):
  kept             what the node and every bench run with: the allocator keeps freed memory (runtime/heap.py),
                   onnxruntime intra-op threads do not spin (ort_profile.session_options), --threads threads
  glibc-default    the allocator left as glibc sets it (LIDAR_PTQ_KEEP_FREED_MEMORY=0)
  glibc-after-torch  the same, in a process that first ran the FP32 checkpoint in torch on the frames, as
                   `lidar-ptq demo`'s process had (quantization, compare) before it timed its bench
  spinning         onnxruntime's intra-op threads busy-wait between parallel sections (allow_spinning 1)
  dynamic-blocks   onnxruntime hands out a parallel loop's work in shrinking blocks (dynamic_block_base 4), so a
                   preempted thread holds up less of it
  one-thread       1 intra-op thread
  fp32-kept, fp32-glibc-default   the FP32 checkpoint in torch (the FP32 node's pipeline; --threads torch threads)
                   with the allocator kept and left to glibc (not in the default list)

Each child loads the INT8 bundle on onnxruntime and runs lidar_ptq_ros.pipeline_bench.StagedDetector (PointCloud2 ->
points, voxelize, network, decode) on the first --frames sim val frames as cloud_player publishes them, in a worker
thread as the detector node does, --passes times after one warm-up frame. Per frame: each stage's wall time, the
process CPU time and the minor page faults (memory the kernel hands the process afresh, zero-filled). A fresh
process per variant and round: the allocator's state is per process, and spinning threads would run on into the
next variant's frames.

    ./dev run python benchmarks/node_pipeline_variants.py --rounds 3 --out docs/benchmarks/node_pipeline_variants.txt
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from lidar_ptq_core.benchmark_child import run_in_child

REPO = Path(__file__).resolve().parents[1]
BUNDLE = "sim_pillar_int8.lptq"
GLIBC_DEFAULT = {"LIDAR_PTQ_KEEP_FREED_MEMORY": "0"}
# name -> (environment, onnxruntime session config entries, threads: None = --threads, torch work first, FP32 torch)
VARIANTS = {
    "kept": ({}, {}, None, False, False),
    "glibc-default": (GLIBC_DEFAULT, {}, None, False, False),
    "glibc-after-torch": (GLIBC_DEFAULT, {}, None, True, False),
    "spinning": ({}, {"session.intra_op.allow_spinning": "1"}, None, False, False),
    "dynamic-blocks": ({}, {"session.dynamic_block_base": "4"}, None, False, False),
    "one-thread": ({}, {}, 1, False, False),
    "fp32-kept": ({}, {}, None, False, True),
    "fp32-glibc-default": (GLIBC_DEFAULT, {}, None, False, True),
}
DEFAULT_VARIANTS = [name for name, spec in VARIANTS.items() if not spec[4]]


def baseline_of(name: str) -> str:
    return "fp32-kept" if VARIANTS[name][4] else "kept"


def measure(frames: int, passes: int, threads: int, config_entries: dict, torch_first: bool = False,
            fp32: bool = False) -> dict:
    """One variant in this process: per-frame stage ms, CPU ms and page faults, and what the allocator setting did."""
    import resource
    import threading
    import time

    from lidar_ptq_core.export.bundle import read_bundle
    from lidar_ptq_core.runtime import Detector
    from lidar_ptq_core.runtime.detector import bundled_bundle
    from lidar_ptq_core.runtime.heap import keep_freed_memory
    from lidar_ptq_core.runtime.onnx_backend import OnnxRuntimeBackend
    from lidar_ptq_core.sim import SimDataset, load_sim_config
    from lidar_ptq_ros.pipeline_bench import BENCH_STAGES, StagedDetector, messages_like_the_player

    dataset = SimDataset("val", frames, load_sim_config("default"))
    dataset.prepare(progress=False)
    messages = messages_like_the_player(dataset)
    if torch_first:
        import torch

        torch.set_num_threads(threads)
        fp32 = Detector.from_checkpoint("sim_pillar")
        for frame in dataset:
            fp32.detect(frame.points)
    if fp32:  # as the FP32 node: the checkpoint in torch with num_threads torch threads
        import torch

        torch.set_num_threads(threads)
        detector = Detector.from_checkpoint("sim_pillar")
    else:
        bundle = read_bundle(bundled_bundle(BUNDLE))
        detector = Detector(backend=OnnxRuntimeBackend(bundle, threads, config_entries), config=bundle.config)
    staged = StagedDetector(detector)
    rows = []

    def work():  # in a thread of its own, as the node's worker (glibc gives such a thread another arena)
        staged.frame(messages[0])
        for _ in range(passes):
            for msg in messages:
                faults, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
                _, _, times = staged.frame(msg)
                rows.append({**times, "cpu": 1000.0 * (time.process_time() - cpu),
                             "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults})

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return {"allocator": keep_freed_memory(), "stages": list(BENCH_STAGES), "frames": rows}


def run_variant(name: str, frames: int, passes: int, threads: int) -> dict:
    environment, entries, variant_threads, torch_first, fp32 = VARIANTS[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(environment)
    call = f"m['measure']({frames}, {passes}, {variant_threads or threads}, {entries!r}, {torch_first}, {fp32})"
    return run_in_child(__file__, call, REPO, env=env, run_name="variant", what=f"variant {name!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated among {', '.join(VARIANTS)} (default {', '.join(DEFAULT_VARIANTS)}; "
                             "'kept', or 'fp32-kept' with an FP32 variant, always runs)")
    parser.add_argument("--frames", type=int, default=20, help="sim val frames (default 20)")
    parser.add_argument("--passes", type=int, default=3, help="passes over the frames per process (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the variants, order alternating (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    parser.add_argument("--out", default="", help="report .txt (and .json beside it); default: print only")
    parser.add_argument("--note", default="", help="a line on the machine's state, kept in the report")
    args = parser.parse_args(argv)
    asked = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in asked if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose among {list(VARIANTS)}")
    # Each model's baseline runs too: every other variant is read against it
    baselines = ["kept"] if any(not VARIANTS[v][4] for v in asked) else []
    baselines += ["fp32-kept"] if any(VARIANTS[v][4] for v in asked) else []
    names = baselines + [v for v in asked if v not in baselines]
    if min(args.frames, args.passes, args.rounds, args.threads) < 1:
        parser.error("--frames, --passes, --rounds and --threads must be at least 1")

    import numpy as np

    load_before = os.getloadavg()
    runs = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in (names if round_index % 2 == 0 else reversed(names)):
            print(f"round {round_index + 1}: {name}", flush=True)
            runs[name].append(run_variant(name, args.frames, args.passes, args.threads))
    load_after = os.getloadavg()

    stages = runs[names[0]][0]["stages"]
    result = {}
    for name, variant_runs in runs.items():
        frames = [f for r in variant_runs for f in r["frames"]]
        totals = [sum(f[s] for s in stages) for f in frames]
        result[name] = {"allocator": sorted({r["allocator"] for r in variant_runs}), "frames": len(frames),
                        "config_entries": VARIANTS[name][1], "threads": VARIANTS[name][2] or args.threads,
                        "median": {k: float(np.median([f[k] for f in frames])) for k in (*stages, "cpu", "faults")},
                        "total_ms_median": float(np.median(totals)), "total_ms_p90": float(np.percentile(totals, 90)),
                        "round_totals": [float(np.median([sum(f[s] for s in stages) for f in r["frames"]]))
                                         for r in variant_runs]}
    lines = [f"the node's pipeline in the library ({BUNDLE}, onnxruntime) in a worker thread, {args.frames} sim val "
             f"frames x {args.passes} passes per process, {args.rounds} rounds over the variants (order alternating)",
             f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
             + (f"; {args.note}" if args.note else ""),
             f"command: ./dev run python benchmarks/node_pipeline_variants.py "
             f"{shlex.join(sys.argv[1:] if argv is None else argv)}", "",
             "medians per frame, ms (faults: minor page faults); 'x kept': total over the kept variant's of the same "
             "model (kept, or fp32-kept)",
             f"{'variant':<18}{'frames':>7}{'total':>8}{'p90':>7}" + "".join(f"{s:>10}" for s in stages)
             + f"{'CPU ms':>9}{'faults':>8}{'x kept':>8}   per-round totals"]
    for name, r in result.items():
        m = r["median"]
        lines.append(f"{name:<18}{r['frames']:>7}{r['total_ms_median']:>8.1f}{r['total_ms_p90']:>7.1f}"
                     + "".join(f"{m[s]:>10.1f}" for s in stages)
                     + f"{m['cpu']:>9.1f}{m['faults']:>8.0f}"
                     + f"{r['total_ms_median'] / result[baseline_of(name)]['total_ms_median']:>8.2f}   "
                     + ", ".join(f"{t:.1f}" for t in r["round_totals"]))
    lines.append("allocator per variant: " + ", ".join(f"{name} {r['allocator']}" for name, r in result.items()))
    report = "\n".join(lines)
    print(report)
    if args.out:
        from lidar_ptq_core.io_utils import write_text_and_json

        write_text_and_json(Path(args.out), report, {"frames": args.frames, "passes": args.passes,
                                                     "rounds": args.rounds, "threads": args.threads,
                                                     "load_average": [load_before[0], load_after[0]],
                                                     "note": args.note, "variants": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
