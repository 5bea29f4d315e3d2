"""The detector node's pipeline in the library, back to back against paced at the node's rate, in one process.

Why: `./dev demo` and node_latency.py compare the node's time per frame with the same pipeline run back to back on
the same clouds. The node runs one frame every 100 ms and waits in between; this script runs the library pipeline
both ways, alternating, on the same PointCloud2 messages, with nothing else running, to tell how much of the node's
excess is the pacing itself (idle worker threads, cold caches) and not the node.

    ./dev run python benchmarks/paced_pipeline.py            # 40 sim val frames, 2 threads, 10 Hz, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_pass(staged, messages, period: float) -> list[dict]:
    """Stage times of every message; with `period` > 0 each frame starts `period` s after the previous one."""
    frames = []
    for msg in messages:
        started = time.perf_counter()
        _, _, times = staged.frame(msg)
        frames.append(times)
        if period > 0:
            time.sleep(max(0.0, period - (time.perf_counter() - started)))
    return frames


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="sim_pillar_int8.lptq", help="a .lptq bundle (default the shipped one)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--frames", type=int, default=40, help="sim val frames (default 40, as the demo)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rate", type=float, default=10.0, help="the paced passes' frames per second (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating back-to-back / paced pairs (default 3)")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "paced_pipeline"),
                        help="STEM of STEM.txt and STEM.json ('' writes nothing)")
    args = parser.parse_args()
    if args.frames < 2 or args.rounds < 1 or args.rate <= 0:
        parser.error("--frames >= 2, --rounds >= 1 and --rate > 0 are needed")

    from lidar_ptq_core.io_utils import write_text_and_json
    from lidar_ptq_core.runtime import Detector
    from lidar_ptq_core.sim import SimDataset, load_sim_config
    from lidar_ptq_ros.pipeline_bench import StagedDetector, bench_summary, messages_like_the_player

    dataset = SimDataset("val", args.frames, load_sim_config("default"))
    dataset.prepare(progress=False)
    messages = messages_like_the_player(dataset)
    staged = StagedDetector(Detector.load(args.bundle, args.backend, args.threads))  # the node's max_points
    staged.frame(messages[0])  # warm-up
    load_before = os.getloadavg()[0]
    passes = {"back to back": [], f"paced at {args.rate:g} Hz": []}
    for _ in range(args.rounds):
        for label, period in zip(passes, (0.0, 1.0 / args.rate)):
            passes[label] += run_pass(staged, messages, period)
    load_after = os.getloadavg()[0]
    summaries = {label: bench_summary(frames) for label, frames in passes.items()}
    back, paced = summaries.values()
    lines = [
        f"the node's pipeline in the library ({args.bundle}, {args.backend}, {args.threads} threads) on {args.frames} "
        f"sim val frames as cloud_player publishes them, {args.rounds} alternating rounds of each pass, one process",
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average "
        f"{load_before:.2f} before, {load_after:.2f} after (timings are only meaningful below about 1)",
        "",
        f"{'pass':<18}{'frames':>7}{'median ms':>11}{'p90 ms':>8}   stages (median ms)",
    ]
    for label, s in summaries.items():
        stages = ", ".join(f"{k} {v:.1f}" for k, v in s["stages_ms_median"].items())
        lines.append(f"{label:<18}{s['frames']:>7}{s['total_ms_median']:>11.1f}{s['total_ms_p90']:>8.1f}   {stages}")
    lines += ["", f"paced / back to back: {paced['total_ms_median'] / back['total_ms_median']:.2f}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_text_and_json(args.out, text + "\n", {"bundle": args.bundle, "backend": args.backend,
                                                    "threads": args.threads, "rate_hz": args.rate,
                                                    "rounds": args.rounds, "frames": args.frames,
                                                    "load_average": {"before": load_before, "after": load_after},
                                                    "passes": summaries})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
