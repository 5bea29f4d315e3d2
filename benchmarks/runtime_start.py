"""Start time and per-frame time of the INT8 pillar bundle on onnxruntime, before and after issue 19.

Each run is a fresh python process (what a node start costs: interpreter, imports, loading the model), timed from the
parent from the moment it is spawned until the detector is ready, then `--frames` sim frames detected in it:
  before          what loading did until issue 19: import torch, load the bundle's checkpoint as a torch model and
                  build onnxruntime's integer graph from it (TorchEncoderOnnxBackend, graph "auto"); the PFN and the
                  scatter run in torch
  after           Detector.from_bundle(bundle, "onnxruntime"): the shipped graphs, numpy + onnxruntime, nothing built
  after-no-torch  the same in a process where `import torch` fails (a runtime-only install)
Modes are interleaved, `--repeats` times each, one onnxruntime thread, so that the shared machine's load falls on all
alike; the load average is printed with the figures.

With `--before-tree DIR` (the source tree of a commit before issue 19, e.g. `git archive 7e418d9^ | tar -x -C DIR`),
the detector node itself is timed too, from spawn until it logs that its model is loaded: node-before runs that tree's
code (PYTHONPATH) with its shipped bundle, node-after this tree, node-after-no-torch this tree where torch cannot be
imported; each with its shipped defaults (sim_pillar_int8.lptq on backend auto) and num_threads 1.

    python benchmarks/runtime_start.py --before-tree /tmp/before --out docs/benchmarks/runtime_start
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("before", "after", "after-no-torch")
NO_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "spconv"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, NoTorch())
""")
LOAD = {
    "before": """
        from lidar_ptq_core.export.export_bundle import DENSE_PART, load_bundle_model
        from lidar_ptq_core.runtime import Detector
        from lidar_ptq_core.runtime.backends import TorchEncoderOnnxBackend
        model, bundle = load_bundle_model(BUNDLE)
        detector = Detector(model, TorchEncoderOnnxBackend(model, bundle.read_part(DENSE_PART), threads=1))
    """,
    "after": """
        from lidar_ptq_core.runtime import Detector
        detector = Detector.from_bundle(BUNDLE, "onnxruntime", threads=1)
    """,
}
LOAD["after-no-torch"] = LOAD["after"]
CHILD = """
import json, sys, time
BUNDLE = {bundle!r}
{load}
print("READY", flush=True)
frames = json.loads(sys.stdin.readline())
import numpy as np
times = []
for path in frames:
    points = np.fromfile(path, np.float32).reshape(-1, 4)
    start = time.perf_counter()
    detector.detect(points)
    times.append(1000 * (time.perf_counter() - start))
print(json.dumps({{"frame_ms": times, "torch_loaded": "torch" in sys.modules}}), flush=True)
"""


def run_child(mode: str, bundle: str, frame_files: list[str]) -> dict:
    code = (NO_TORCH if mode == "after-no-torch" else "") + CHILD.format(bundle=bundle, load=textwrap.dedent(
        LOAD[mode]))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    line = child.stdout.readline()
    ready_s = time.perf_counter() - start
    if line.strip() != "READY":
        raise RuntimeError(f"{mode}: {line}{child.stderr.read()[-2000:]}")
    child.stdin.write(json.dumps(frame_files) + "\n")
    child.stdin.flush()
    result = json.loads(child.stdout.readline())
    child.wait(timeout=60)
    return {"ready_s": ready_s, **result}


NODE = "import sys\nfrom lidar_ptq_ros.detector_node import main\nsys.exit(main())\n"
NODE_READY = "backend auto"  # the node's start line: "model ... backend auto (onnxruntime): /points -> /detections"


def run_node(mode: str, before_tree: str | None, index: int) -> float:
    """Seconds from spawn until the node logs that its model is loaded; the node is then stopped (SIGINT)."""
    import signal

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RCUTILS_LOGGING_BUFFERED_STREAM": "0"}
    if mode == "node-before":
        env["PYTHONPATH"] = os.pathsep.join([before_tree, env.get("PYTHONPATH", "")])
    code = (NO_TORCH if mode == "node-after-no-torch" else "") + NODE
    args = [sys.executable, "-c", code, "--ros-args", "-p", "num_threads:=1", "-r",
            f"__node:=runtime_start_{os.getpid()}_{index}", "-r", f"points:=/runtime_start_{os.getpid()}/points"]
    start = time.perf_counter()
    child = subprocess.Popen(args, cwd=before_tree if mode == "node-before" else REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    try:
        for line in child.stdout:
            seen.append(line)
            if NODE_READY in line:
                return time.perf_counter() - start
        raise RuntimeError(f"{mode}: the node stopped before it was ready:\n{''.join(seen)[-3000:]}")
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(REPO / "checkpoints" / "sim_pillar_int8.lptq"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--before-tree", default=None, help="source tree before issue 19: also time the node")
    parser.add_argument("--out", default=None, help="write OUT.txt and OUT.json")
    args = parser.parse_args()

    from lidar_ptq_core.sim import SimDataset, load_sim_config

    dataset = SimDataset("val", args.frames, load_sim_config("default"))
    dataset.prepare(num_workers=1, progress=False)
    frame_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"runtime_start_frames_{os.getpid()}"
    frame_dir.mkdir(parents=True, exist_ok=True)
    frame_files = []
    for index in range(len(dataset)):
        path = frame_dir / f"{index:06d}.bin"
        dataset[index].points[:, :4].astype("float32").tofile(path)
        frame_files.append(str(path))

    load_start = os.getloadavg()
    runs = {mode: [] for mode in MODES}
    node_modes = ("node-before", "node-after", "node-after-no-torch") if args.before_tree else ()
    node_starts = {mode: [] for mode in node_modes}
    for repeat in range(args.repeats):
        for mode in MODES:
            runs[mode].append(run_child(mode, args.bundle, frame_files))
        for mode in node_modes:
            node_starts[mode].append(run_node(mode, args.before_tree, repeat))
    load_end = os.getloadavg()

    lines = [f"INT8 pillar bundle {Path(args.bundle).name} on onnxruntime (1 thread): start (process spawn -> "
             f"detector ready) and detect time per frame on {args.frames} sim val frames, {args.repeats} fresh "
             "processes per mode, interleaved",
             f"machine: {os.cpu_count()} CPUs, shared with other jobs; load average {load_start[0]:.1f} at the "
             f"start, {load_end[0]:.1f} at the end", "",
             f"{'mode':<16}{'start s (median)':>18}{'start s (min-max)':>20}{'frame ms (median)':>20}"
             f"{'torch imported':>16}"]
    summary = {}
    for mode, results in runs.items():
        starts = [r["ready_s"] for r in results]
        frames = [ms for r in results for ms in r["frame_ms"][1:]]  # the first frame warms up the sessions
        summary[mode] = {"start_s": starts, "start_s_median": statistics.median(starts),
                         "frame_ms_median": statistics.median(frames),
                         "torch_imported": any(r["torch_loaded"] for r in results)}
        lines.append(f"{mode:<16}{summary[mode]['start_s_median']:>18.2f}"
                     f"{f'{min(starts):.2f}-{max(starts):.2f}':>20}{summary[mode]['frame_ms_median']:>20.1f}"
                     f"{'yes' if summary[mode]['torch_imported'] else 'no':>16}")
    if node_modes:
        lines += ["", "detector node, spawn -> model loaded (its start log line), shipped defaults, num_threads 1:",
                  f"{'mode':<22}{'start s (median)':>18}{'start s (min-max)':>20}"]
        for mode, starts in node_starts.items():
            summary[mode] = {"start_s": starts, "start_s_median": statistics.median(starts)}
            lines.append(f"{mode:<22}{statistics.median(starts):>18.2f}{f'{min(starts):.2f}-{max(starts):.2f}':>20}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        from lidar_ptq_core.io_utils import write_text_and_json

        write_text_and_json(args.out, text, {"args": vars(args), "load_average_start": load_start,
                                             "load_average_end": load_end, "modes": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
