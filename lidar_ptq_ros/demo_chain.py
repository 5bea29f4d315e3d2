"""The README's main job as a chain of this package's nodes (`lidar-ptq demo` runs it where rclpy imports).

1. cloud_player publishes a simulated drive (the simulator's calib split) and calibration_recorder records it into a
   rosbag2 bag, each node in its own process, as on a robot;
2. LiDAR-PTQ quantizes the FP32 checkpoint from that bag (library call; `--method lidar-ptq-fast` by default); the bag
   holds a quarter more sweeps than calibration takes (demo_job.held_out_frames);
3. `export` makes the .lptq bundle of the INT8 checkpoint, and `lidar-ptq compare` (library call) runs FP32 vs the
   bundle on the bag's sweeps calibration did not take: its PASS / FAIL line ends the report;
4. detector_node runs the FP32 checkpoint, then the INT8 bundle, on the same validation frames replayed by
   cloud_player at `--rate` Hz (10, a lidar's rate); a collector node in this process takes every cloud's stamp and
   every Detection3DArray the node publishes, and the node's /diagnostics;
5. the report: per-frame detections, latency percentiles (stamp of the cloud -> detections received), dropped frames,
   INT8 vs FP32 agreement, mAP against the simulator's ground truth, and a bird's-eye picture of what the node
   published.

Every process runs with DDS discovery on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a fixed ROS_DOMAIN_ID,
default 42) and the shipped Fast DDS profile (shared memory for large clouds); every run uses its own namespace.
`run_node` and `Collector` also serve benchmarks/node_latency.py.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray

from lidar_ptq_core.config_files import data_roots

from .chain_report import FrameResult, NodeRun
from .cloud_player import STAMPS_QOS
from .conversions import msg_to_detections
from .detector_node import NODE_NAME as DETECTOR_NODE_NAME
from .process_cpu import CpuSampler, name_this_thread

DEFAULT_DOMAIN_ID = "42"
DDS_PROFILE = Path("dds") / "fastdds_loopback_shm.xml"
# The collector must see every cloud and every answer: reliable, deep enough for a whole short run.
COLLECT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.RELIABLE)
STARTUP_TIMEOUT_S = 180.0  # a node process importing torch and loading a model on a busy 2-core machine
SETTLE_TIMEOUT_S = 60.0
# A cloud not counted by the node this long after its stamp never reached it (best effort on a busy machine).
DELIVERY_MARGIN_NS = 2_000_000_000
# Reading /proc for the chain's ~60 threads takes about 1 ms of the cores the node uses: 4 times a second is enough.
CPU_SAMPLE_PERIOD_S = 0.25
_runs = itertools.count(1)


class ChainError(RuntimeError):
    """A node of the chain failed or did not come up; the message names it and ends with its log."""


def loopback_environment(base: dict | None = None, log_dir: Path | None = None) -> dict:
    """The environment every process of the chain runs with: discovery on loopback, a fixed domain, the Fast DDS
    profile (shared memory, UDP on loopback only), logs in `log_dir`."""
    env = dict(os.environ if base is None else base)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if not env.get("ROS_DOMAIN_ID"):
        env["ROS_DOMAIN_ID"] = DEFAULT_DOMAIN_ID
    if not env.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        profile = next((root / DDS_PROFILE for root in data_roots("config") if (root / DDS_PROFILE).is_file()), None)
        if profile is not None:
            env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    if log_dir is not None and not env.get("ROS_LOG_DIR"):
        env["ROS_LOG_DIR"] = str(log_dir)
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "1"  # log lines reach the log files as they are written
    env["PYTHONUNBUFFERED"] = "1"
    return env


def use_loopback_environment(log_dir: Path | None = None) -> dict:
    """Apply loopback_environment to this process (before rclpy.init: the middleware reads it then)."""
    env = loopback_environment(log_dir=log_dir)
    os.environ.update(env)
    return env


def _parameter_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # always with a decimal point, so the node reads a double
    return str(value)


class NodeProcess:
    """One of the package's nodes as `python -m lidar_ptq_ros.<module> --ros-args ...`, output in `log`."""

    def __init__(self, module: str, log: Path, parameters: dict, remaps: dict, env: dict):
        self.module, self.log = module, log
        args = [sys.executable, "-m", f"lidar_ptq_ros.{module}", "--ros-args"]
        for name, value in parameters.items():
            args += ["-p", f"{name}:={_parameter_text(value)}"]
        for name, target in remaps.items():
            args += ["-r", f"{name}:={target}"]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def fail(self, what: str) -> ChainError:
        return ChainError(f"{self.module}: {what} (log {self.log}):\n{self.log_tail()}")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise self.fail(f"did not finish within {timeout:.0f} s") from None

    def stop(self) -> int:
        """Ctrl-C (the nodes shut down cleanly on SIGINT), then SIGTERM, then SIGKILL."""
        if self.process.poll() is None:
            for sig, grace in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                self.process.send_signal(sig)
                try:
                    self.process.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        return self.process.returncode


def _cdr_stamp_ns(data: bytes) -> int:
    """header.stamp of a serialized message that starts with a std_msgs/Header (CDR: 4-byte encapsulation header,
    then sec int32 and nanosec uint32 in the encapsulation's byte order)."""
    order = "<" if data[1] & 1 else ">"
    sec, nanosec = struct.unpack_from(order + "iI", data, 4)
    return sec * 1_000_000_000 + nanosec


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class Collector(Node):
    """Takes, under `namespace`: every cloud's stamp from the player's `points_stamps` (its headers alone: the clouds
    themselves are not taken from the cores the node uses), every Detection3DArray
    from `detections` with its arrival time, and the detector's reports from `diagnostics`."""

    def __init__(self, namespace: str, **node_options):
        super().__init__("lidar_ptq_demo_collector", namespace=namespace, **node_options)
        self.clouds: list[int] = []  # stamps in arrival order (the player's publishing order: reliable, one publisher)
        # (stamp, arrival ns, serialized Detection3DArray): decoded after the run, so that the collector's Python
        # message building (3-6 ms a frame for 60 boxes) does not take the cores from the node it measures.
        self.answers: list[tuple[int, int, bytes]] = []
        self.counters: dict[str, str] = {}
        self.counters_stamp_ns = 0  # when the node made its last report (its clock: system time, as the stamps)
        self._points = self.create_subscription(Header, "points_stamps", self._on_cloud, STAMPS_QOS, raw=True)
        self._detections = self.create_subscription(Detection3DArray, "detections", self._on_detections, COLLECT_QOS,
                                                    raw=True)
        self._diagnostics = self.create_subscription(DiagnosticArray, "diagnostics", self._on_diagnostics,
                                                     COLLECT_QOS)

    def _on_cloud(self, data: bytes) -> None:
        self.clouds.append(_cdr_stamp_ns(data))

    def _on_detections(self, data: bytes) -> None:
        self.answers.append((_cdr_stamp_ns(data), time.time_ns(), data))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(DETECTOR_NODE_NAME):
                self.counters = {kv.key: kv.value for kv in status.values}
                self.counters_stamp_ns = _stamp_ns(msg.header.stamp)

    def detector_ready(self) -> bool:
        """The detector node's publishers are matched (it creates them once its model is loaded)."""
        return self._detections.get_publisher_count() > 0 and self._diagnostics.get_publisher_count() > 0

    def settled(self) -> bool:
        """Call once the player is done. The detector's last report accounts for every cloud it received, its answers
        have all arrived, and it has received every cloud published, or the report was made long enough after the
        last one that a cloud still missing never reached the node."""
        c = self.counters
        if not c or not self.clouds:
            return False
        received, processed = int(c["frames_received"]), int(c["frames_processed"])
        handled = processed + sum(int(c[k]) for k in ("frames_dropped", "malformed_messages", "detector_failures"))
        complete = received == len(self.clouds) or self.counters_stamp_ns > self.clouds[-1] + DELIVERY_MARGIN_NS
        return complete and handled == received and len(self.answers) >= processed

    def node_run(self, label: str, model: str, backend: str, rate: float, class_names) -> NodeRun:
        index = {stamp: i for i, stamp in enumerate(self.clouds)}
        frames = [FrameResult(i, stamp, None, None) for i, stamp in enumerate(self.clouds)]
        unmatched = 0
        for stamp, arrived, data in self.answers:
            if stamp not in index:
                unmatched += 1
                continue
            frame = frames[index[stamp]]
            frame.detections = msg_to_detections(deserialize_message(data, Detection3DArray), tuple(class_names))
            frame.latency_ms = (arrived - stamp) / 1e6
        return NodeRun(label, model, backend, rate, frames, dict(self.counters), unmatched)


def wait_until(condition, what: str, timeout: float, process: NodeProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and not process.running():
            raise process.fail(f"exited with status {process.process.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            if process is not None:
                raise process.fail(f"no {what} within {timeout:.0f} s")
            raise ChainError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.05)


def _namespace() -> str:
    return f"/lidar_ptq_demo_{os.getpid()}_{next(_runs)}"


def _published_by_player(player: NodeProcess) -> int | None:
    for line in reversed(player.log.read_text(errors="replace").splitlines()):
        if "published " in line and " clouds; done" in line:
            return int(line.split("published ")[1].split()[0])
    return None


def run_node(context, label: str, model: str, backend: str, *, frames: int, rate: float, threads: int,
             class_names, env: dict, log_dir: Path, sim_config: str = "default", score_threshold: float = 0.0,
             progress=print) -> NodeRun:
    """detector_node on `model` with `backend`, fed the first `frames` clouds of the sim val split by cloud_player at
    `rate` Hz; returns what it published for each cloud. The node publishes every box its checkpoint decodes at or
    above `score_threshold`."""
    ns = _namespace()
    collector = Collector(ns, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(collector)
    spinner = threading.Thread(target=_named(executor.spin, "demo_collector"), name="lidar_ptq_demo_collector",
                               daemon=True)
    spinner.start()
    tag = label.lower()
    # About ten samples over a short run, at most CPU_SAMPLE_PERIOD_S apart over a long one
    cpu = CpuSampler(period=min(CPU_SAMPLE_PERIOD_S, max(0.05, frames / rate / 10)))
    detector = NodeProcess("detector_node", log_dir / f"detector_{tag}.log",
                           {"model": model, "backend": backend, "num_threads": threads,
                            "score_threshold": float(score_threshold), "diagnostics_period": 0.5,
                            "publish_markers": True},
                           {"__ns": ns, "/diagnostics": f"{ns}/diagnostics"}, env)
    player = None
    cpu.watch("detector_node", detector.process.pid)
    cpu.watch("this process", os.getpid())  # the collector, and whatever else the caller runs meanwhile
    cpu.start()
    try:
        wait_until(collector.detector_ready, "detector node up (model loaded, topics matched)", STARTUP_TIMEOUT_S,
                   detector)
        progress(f"      detector_node up ({label}: {model}, {backend}); cloud_player replays {frames} val frames at "
                 f"{rate:g} Hz")
        player = NodeProcess("cloud_player", log_dir / f"player_{tag}.log",
                             {"source": "sim", "sim_split": "val", "sim_config": sim_config, "sim_frames": frames,
                              "rate": float(rate), "loop": False, "wait_for_subscribers": 2},  # node + collector
                             {"__ns": ns}, env)
        cpu.watch("cloud_player", player.process.pid)
        status = player.wait(timeout=STARTUP_TIMEOUT_S + 3.0 * frames / rate)
        if status != 0:
            raise player.fail(f"exited with status {status}")
        wait_until(collector.settled, "last frame handled by the detector node", SETTLE_TIMEOUT_S, detector)
        published = _published_by_player(player)
        if published is not None and published != len(collector.clouds):
            raise ChainError(f"cloud_player published {published} clouds but the collector saw "
                             f"{len(collector.clouds)}; frames cannot be told apart")
    finally:
        cpu.stop()
        if player is not None:
            player.stop()  # already exited, unless something failed or the demo was interrupted
        status = detector.stop()
        executor.shutdown()
        spinner.join(timeout=10)
        collector.destroy_node()
    if status != 0:
        raise detector.fail(f"exited with status {status} on Ctrl-C")
    run = collector.node_run(label, model, backend, rate, class_names)
    run.cpu_ms_per_cloud, run.page_faults_per_cloud = cpu_per_cloud(cpu, collector.clouds, rate)
    return run


def _named(target, name: str):
    """`target` run in a thread the OS (and CpuSampler) knows by `name`."""
    def run():
        name_this_thread(name)
        target()
    return run


def cpu_per_cloud(cpu: CpuSampler, stamps_ns: list[int], rate: float) -> tuple[dict, dict]:
    """CPU ms per cloud period of each watched process's threads ({process: {thread name: ms}}, busiest first) and
    minor page faults per cloud period of each process, from the first cloud's stamp to the last's: the steady state,
    without the processes' start-up. Empty dicts when the run was too short to tell."""
    if len(stamps_ns) < 2:
        return {}, {}
    start, end = stamps_ns[0] / 1e9, stamps_ns[-1] / 1e9
    seconds = cpu.window_seconds(start, end)
    if seconds <= 0:
        return {}, {}
    periods = seconds * rate
    return ({label: {name: 1000.0 * value / periods for name, value in sorted(threads.items(), key=lambda kv: -kv[1])}
             for label, threads in cpu.window(start, end).items()},
            {label: faults / periods for label, faults in cpu.page_faults(start, end).items()})


def cpu_line(run: NodeRun) -> str:
    """One line: CPU ms per cloud period of each process while the clouds were played, its busiest threads."""
    parts = []
    for label, threads in run.cpu_ms_per_cloud.items():
        busiest = ", ".join(f"{name} {ms:.1f}" for name, ms in list(threads.items())[:4] if ms >= 0.05)
        faults = run.page_faults_per_cloud.get(label)
        parts.append(f"{label} {sum(threads.values()):.1f}" + (f" ({busiest})" if busiest else "")
                     + (f" {faults:.0f} page faults" if faults is not None else ""))
    return (f"{run.label}: CPU ms per cloud period while playing (threads by name), and minor page faults: "
            + "; ".join(parts) if parts else f"{run.label}: no CPU samples")


def record_calibration_bag(bag: Path, frames: int, *, env: dict, log_dir: Path, sim_config: str = "default",
                           rate: float = 10.0) -> None:
    """cloud_player (sim calib split, looping) -> calibration_recorder -> `bag` (MCAP) with `frames` clouds."""
    ns = _namespace()
    recorder = NodeProcess("calibration_recorder", log_dir / "recorder.log",
                           {"output": str(bag), "storage": "mcap", "frames": frames, "every": 1, "min_interval": 0.0},
                           {"__ns": ns}, env)
    player = NodeProcess("cloud_player", log_dir / "player_calib.log",
                         {"source": "sim", "sim_split": "calib", "sim_config": sim_config, "sim_frames": frames,
                          "rate": float(rate), "loop": True, "wait_for_subscribers": 1},
                         {"__ns": ns}, env)
    try:
        status = recorder.wait(timeout=STARTUP_TIMEOUT_S + 3.0 * frames / rate)
    finally:
        player.stop()
        recorder.stop()  # already exited, unless the demo was interrupted
    if status != 0:
        raise recorder.fail(f"exited with status {status}")


# -- `lidar-ptq demo` ---------------------------------------------------------------------------------------------
def run_demo(args) -> int:
    """The demo (arguments of lidar_ptq_core/commands/demo.py) as the node chain. `lidar-ptq demo` finds it through
    the entry point lidar_ptq.demo:node-chain (setup.py); the core never imports this module."""

    from lidar_ptq_core.boxfile import write_detections, write_ground_truth
    from lidar_ptq_core.demo_job import compare_on_held_out, compare_summary, held_out_frames, quantize_from_bag
    from lidar_ptq_core.io_utils import json_ready, write_json_atomic
    from lidar_ptq_core.models.checkpoint import read_checkpoint_config
    from lidar_ptq_core.render import render_bev
    from lidar_ptq_core.runtime import bundled_checkpoint
    from lidar_ptq_core.sim import SimDataset, load_sim_config

    from .chain_report import (
        SHOWN_MIN_SCORE,
        accuracy,
        agreement,
        format_latency_table,
        frame_line,
        keep_up_sentence,
        latency_summary,
    )

    started = time.perf_counter()
    out = Path(args.out)
    logs = out / "logs"
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    env = use_loopback_environment(log_dir=logs / "ros")
    steps = 3 if args.no_quantize else 7
    config = read_checkpoint_config(bundled_checkpoint(args.checkpoint))
    geometry = config.head_geometry()
    pcr = config.voxelization.point_cloud_range
    region = (pcr[0], pcr[1], pcr[3], pcr[4])

    sim_config = load_sim_config(args.sim)
    val = SimDataset("val", args.frames, sim_config)
    val.prepare(progress=False)
    held_out = held_out_frames(args.calib_frames)
    if not args.no_quantize:
        SimDataset("calib", args.calib_frames + held_out, sim_config).prepare(progress=False)
    print(f"[1/{steps}] synthetic scenes: {args.frames} validation frames to replay"
          f"{'' if args.no_quantize else f', {args.calib_frames} + {held_out} calibration frames'} (cache "
          f"{val.frame_path(0).parent.parent}); ROS 2 domain {env['ROS_DOMAIN_ID']}, discovery on loopback; "
          f"node logs in {logs}")

    context = rclpy.Context()
    rclpy.init(context=context)
    compared = None
    try:
        models = [("FP32", args.checkpoint, "torch")]
        if not args.no_quantize:
            bag = out / "calib_bag"
            if bag.exists():  # the demo's own bag from an earlier run; the recorder never overwrites one
                shutil.rmtree(bag)
            t0 = time.perf_counter()
            record_calibration_bag(bag, args.calib_frames + held_out, env=env, log_dir=logs, sim_config=args.sim)
            print(f"[2/{steps}] cloud_player published the simulated drive (calib split, 10 Hz), calibration_recorder "
                  f"recorded {args.calib_frames + held_out} clouds into {bag} (mcap) in {time.perf_counter() - t0:.0f} "
                  f"s: {args.calib_frames} to calibrate on (spread over the bag), {held_out} held out for compare")
            q = quantize_from_bag(args.checkpoint, bag, args.calib_frames, args.method, out / "int8.safetensors")
            print(f"[3/{steps}] quantized {q.model_name} with {args.method} from {q.calibration} in {q.seconds:.0f} s,"
                  f" every layer INT8 -> {q.path}")
            from lidar_ptq_core.export.export_bundle import export_bundle

            bundle = export_bundle(q.path, out / "int8.lptq")
            print(f"[4/{steps}] exported the bundle {bundle} ({bundle.stat().st_size / 1e6:.1f} MB: INT8 checkpoint + "
                  f"dense part as QDQ ONNX)")
            t0 = time.perf_counter()
            compared = compare_on_held_out(args.checkpoint, bundle, bag, args.calib_frames, out / "compare",
                                           backend=args.backend, threads=args.threads)
            print(f"      lidar-ptq compare, FP32 vs the bundle ({args.backend}) on the bag's {held_out} held-out "
                  f"sweeps ({time.perf_counter() - t0:.0f} s): {compared['verdict']}")
            models.append(("INT8", str(bundle), args.backend))

        runs = []
        for label, model, backend in models:
            step = 2 if args.no_quantize else 4 + len(runs) + 1
            print(f"[{step}/{steps}] detector_node with the {label} {'bundle' if model.endswith('.lptq') else 'model'} "
                  f"on replayed frames")
            run = run_node(context, label, model, backend, frames=args.frames, rate=args.rate, threads=args.threads,
                           class_names=geometry.class_names, env=env, log_dir=logs, sim_config=args.sim)
            s = latency_summary(run)
            print(f"      answered {s['answered']} of {s['published']} clouds; latency p50 "
                  f"{s['latency_ms']['p50']:.0f} ms; node {s['processing_ms_mean']:.0f} ms per frame")
            runs.append(run)
    finally:
        rclpy.try_shutdown(context=context)

    # -- the report ---------------------------------------------------------------------------------------------
    print(f"[{steps}/{steps}] what the detector node published (boxes with score >= {SHOWN_MIN_SCORE} by class; "
          "latency = cloud stamp -> detections received)")
    for i in range(args.frames):
        print(frame_line(val.frame_id(i), runs, i))
    ground_truths = [val[i].gt for i in range(args.frames)]
    summary = {"frames": args.frames, "rate_hz": args.rate, "threads": args.threads, "runs": {}}
    print(f"\nLatency and dropped frames at {args.rate:g} Hz ({args.threads} inference threads; 'node ms' = the "
          "node's own time per frame from /diagnostics):")
    print(format_latency_table(runs))
    for run in runs:
        print("  " + keep_up_sentence(run))
    for run in runs:
        print("  " + cpu_line(run))
    if runs[-1].model.endswith(".lptq"):
        compared_to_bench = node_over_bench(runs[-1], val, args.threads)
        summary["node_over_bench"] = compared_to_bench
        print("  " + compared_to_bench["line"])
    print("\nmAP against the simulator's ground truth on the frames each run answered (every published box):")
    for run in runs:
        box_dir = out / f"node_{run.label.lower()}"
        for sub in ("pred", "gt"):
            if (box_dir / sub).exists():
                shutil.rmtree(box_dir / sub)
        for frame in run.answered:  # box files of what the node published: `lidar-ptq eval` gives the same table
            frame_id = val.frame_id(frame.index)
            write_detections(box_dir / "pred" / f"{frame_id}.json", frame_id, frame.detections)
            write_ground_truth(box_dir / "gt" / f"{frame_id}.json", frame_id, ground_truths[frame.index])
        result = accuracy(run, ground_truths, geometry.class_names, region)
        entry = {"model": run.model, "backend": run.backend, **latency_summary(run), "node_counters": run.counters,
                 "cpu_ms_per_cloud": run.cpu_ms_per_cloud, "page_faults_per_cloud": run.page_faults_per_cloud}
        if result is not None:
            per_class = ", ".join(f"{name} {100 * c.distance_ap['all']:.1f}" for name, c in result.classes.items()
                                  if c.distance_ap["all"] == c.distance_ap["all"])
            print(f"  {run.label} on {len(run.answered)} frames: mAP {100 * result.distance_map['all']:.1f} centre "
                  f"distance, {100 * result.iou_map['all']:.1f} BEV IoU (AP {per_class}); full table: lidar-ptq eval "
                  f"--pred {box_dir / 'pred'} --gt {box_dir / 'gt'} --checkpoint {args.checkpoint}")
            entry["eval"] = result.to_dict()
        summary["runs"][run.label] = entry
    if len(runs) == 2:
        int8 = runs[1]
        reference = fp32_reference(args.checkpoint, int8, val, args.threads)
        agree = agreement(reference, int8, geometry.class_names)
        indices = {f.index for f in int8.answered}
        both = {r.label: accuracy(r, ground_truths, geometry.class_names, region, indices) for r in (reference, int8)}
        summary["agreement"] = agree
        print(f"\nINT8 vs FP32 on the {agree['frames']} frames the INT8 node answered (FP32 reference: the FP32 "
              f"checkpoint's boxes for the same clouds, what its node publishes): INT8 reproduces {agree['matched']} "
              f"of {agree['reference_boxes']} FP32 boxes ({100 * agree['reference_recall']:.0f}%; score >= "
              f"{SHOWN_MIN_SCORE}, same class, centre within 1 m); {100 * agree['other_precision']:.0f}% of its "
              f"{agree['other_boxes']} boxes have an FP32 match; mAP of INT8 with FP32 as ground truth "
              f"{agree['map_vs_reference']:.1f}")
        if all(both.values()):
            summary["map_on_int8_frames"] = {k: {"distance": v.distance_map["all"], "bev_iou": v.iou_map["all"]}
                                             for k, v in both.items()}
            print(f"mAP against the ground truth on those frames: INT8 {100 * both['INT8'].distance_map['all']:.1f} "
                  f"vs FP32 {100 * both['FP32'].distance_map['all']:.1f} (centre distance), "
                  f"{100 * both['INT8'].iou_map['all']:.1f} vs {100 * both['FP32'].iou_map['all']:.1f} (BEV IoU)")

    if compared is not None:
        summary["compare"] = compare_summary(compared)
        print(f"\nlidar-ptq compare, FP32 vs the INT8 bundle on {held_out} sweeps of the calibration bag that "
              f"calibration did not take (as calibrate.launch.py ends): {compared['verdict']}; worst frames drawn in "
              f"{compared['files']['picture']}")

    shown = runs[-1]
    answered = shown.answered
    if answered:
        frame = max(answered, key=lambda f: len(ground_truths[f.index]))  # the busiest scene the node answered
        sim_frame = val[frame.index]
        picture = out / "detections.png"
        render_bev(picture, sim_frame.points, gt=sim_frame.gt, detections=frame.detections, min_score=SHOWN_MIN_SCORE,
                   title=f"{sim_frame.frame_id}: what detector_node published ({shown.label}, {shown.backend}; "
                         f"score >= {SHOWN_MIN_SCORE}) vs ground truth")
        summary["picture"] = {"path": str(picture), "frame_id": sim_frame.frame_id, "run": shown.label}
        print(f"\nwrote {picture} ({sim_frame.frame_id}, {shown.label}), {out / 'summary.json'}, the published boxes "
              f"in {', '.join(str(out / f'node_{r.label.lower()}') for r in runs)}, node logs in {logs}")
    summary["seconds"] = time.perf_counter() - started
    write_json_atomic(out / "summary.json", json_ready(summary))
    print(f"demo done in {summary['seconds']:.0f} s")
    return 0


def node_over_bench(run: NodeRun, dataset, threads: int) -> dict:
    """The node's median time per frame (its /diagnostics) over the library pipeline's on the same clouds (issue 19:
    at most 1.2x, with a latency p50 of at most 80 ms at 10 Hz), timed here after the node has stopped."""
    from lidar_ptq_core.runtime import Detector

    from .chain_report import latency_summary
    from .pipeline_bench import (
        StagedDetector,
        bench_pass,
        bench_summary,
        messages_like_the_player,
        node_summary,
        verdict,
    )

    staged = StagedDetector(Detector.load(run.model, run.backend, threads))  # the node's default max_points
    bench = bench_summary(bench_pass(staged, messages_like_the_player(dataset), check=True))
    node = node_summary(run.counters)
    ratio = node["total_ms_median"] / bench["total_ms_median"]
    p50 = latency_summary(run)["latency_ms"]["p50"]
    line = (f"{run.label} node {node['total_ms_median']:.0f} ms per frame (median) against "
            f"{bench['total_ms_median']:.0f} ms for the same pipeline in the library on the same clouds: "
            + verdict(f"{run.label} {run.backend}", ratio, p50))
    return {"bench": bench, "node": node, "ratio": ratio, "latency_p50_ms": p50, "line": line}


def fp32_reference(checkpoint: str, run: NodeRun, dataset, threads: int) -> NodeRun:
    """The FP32 checkpoint's boxes for the frames `run` answered, computed here with the library Detector (the FP32
    node publishes exactly these: it calls the same Detector, and the demo's nodes publish every decoded box). Both
    node runs drop frames at 10 Hz, and rarely the same ones, so this is the FP32 side INT8 is compared with."""
    import torch

    from lidar_ptq_core.runtime import Detector

    torch.set_num_threads(threads)
    detector = Detector.from_checkpoint(checkpoint)
    frames = [FrameResult(f.index, f.stamp_ns, detector.detect(dataset[f.index].points), None) for f in run.answered]
    return NodeRun("FP32", checkpoint, "torch (library)", run.rate_hz, frames)


