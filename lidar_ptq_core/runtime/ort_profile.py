"""Which kernels onnxruntime ran, from its own profile (SessionOptions.enable_profiling).

onnxruntime writes a Chrome-trace JSON: one event per node run with cat "Node", name "<node>_kernel_time", the
duration in microseconds and args.op_name, the kernel's op type after graph optimization (QLinearConv, Conv,
FusedConv, QuantizeLinear, ...). These helpers run a graph with profiling on and sum that up per op type and per
node, so tests and benchmarks can say which kernels ran, not which ops the graph had before optimization.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class KernelProfile:
    runs: int  # session.run calls profiled
    by_op: dict[str, dict] = field(default_factory=dict)  # op type -> {"calls", "ms"} (ms summed over all runs)
    by_node: dict[str, dict] = field(default_factory=dict)  # node name -> {"op", "calls", "ms"}

    def op_types(self) -> set[str]:
        return set(self.by_op)

    def ms_per_run(self, op: str) -> float:
        return self.by_op.get(op, {"ms": 0.0})["ms"] / max(self.runs, 1)

    def table(self) -> str:
        """Op types by total time: calls per run, milliseconds per run, share of the kernel time."""
        total = sum(v["ms"] for v in self.by_op.values()) or 1.0
        lines = [f"{'kernel':<22}{'calls/run':>10}{'ms/run':>10}{'share':>8}"]
        for op, v in sorted(self.by_op.items(), key=lambda kv: -kv[1]["ms"]):
            lines.append(f"{op:<22}{v['calls'] / max(self.runs, 1):>10.0f}{v['ms'] / max(self.runs, 1):>10.2f}"
                         f"{100 * v['ms'] / total:>7.1f}%")
        lines.append(f"{'total':<22}{'':>10}{total / max(self.runs, 1):>10.2f}")
        return "\n".join(lines)


def parse_profile(path: str | Path, runs: int) -> KernelProfile:
    """Sum onnxruntime's profile JSON per kernel op type and per node. `runs`: how many run() calls it covers."""
    events = json.loads(Path(path).read_text())
    profile = KernelProfile(runs=runs)
    by_op = defaultdict(lambda: {"calls": 0, "ms": 0.0})
    by_node = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        node = event["name"][: -len("_kernel_time")]
        ms = event.get("dur", 0) / 1000.0
        by_op[op]["calls"] += 1
        by_op[op]["ms"] += ms
        entry = by_node.setdefault(node, {"op": op, "calls": 0, "ms": 0.0})
        entry["calls"] += 1
        entry["ms"] += ms
    profile.by_op, profile.by_node = dict(by_op), by_node
    return profile


def profile_session(onnx_bytes: bytes, feeds: dict, runs: int = 1, threads: int | None = None,
                    optimization_level=None) -> KernelProfile:
    """Build a CPU session for `onnx_bytes` with profiling on, run it once to warm up and then `runs` times, and
    return the kernel profile of those `runs` (the warm-up's events are left out)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="lidar_ptq_ort_profile_") as tmp:
        options = session_options(threads, optimization_level)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            session.run(None, feeds)
        events = [e for e in json.loads(Path(session.end_profiling()).read_text())
                  if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
        per_run = len(events) // (runs + 1)  # every run executes the same nodes: drop the warm-up's
        trimmed = Path(tmp) / "trimmed.json"
        trimmed.write_text(json.dumps(events[per_run:]))
        return parse_profile(trimmed, runs)


def session_options(threads: int | None = None, optimization_level=None, config_entries: dict | None = None):
    """onnxruntime SessionOptions: all graph optimizations (QDQ fusion needs >= extended) unless told otherwise;
    `threads` intra-op threads (None: onnxruntime's default, one per physical core); worker threads do not spin;
    `config_entries`: further session config entries, after (so over) these.

    Why no spinning: by default onnxruntime's intra-op threads busy-wait for a while after each run. In our pipeline
    torch code (the encoder, decode) runs right after, on the same cores, and measured here the pillar encoder took
    28-36 ms after a spinning session against 13-18 ms after a sleeping one, with the session itself no slower.

    Every onnxruntime session of the project is made with these options (the detector node's, `lidar-ptq bench`'s,
    the demo's library pipeline), so this is also where the process's allocator is set to keep freed memory between
    frames (heap.keep_freed_memory: the numpy work around the session otherwise faults its arrays in again every
    frame, which made the same voxelize take 4.6 ms in one process and 8-10 ms in another)."""
    import onnxruntime as ort

    from .heap import keep_freed_memory

    keep_freed_memory()

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (config_entries or {}).items():  # benchmarks/node_ort_options.py tries others against these
        options.add_session_config_entry(key, str(value))
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimization_level is None
                                        else optimization_level)
    if threads:
        options.intra_op_num_threads = threads
    return options
