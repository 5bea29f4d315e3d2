#!/usr/bin/env python
"""What the detector node and cloud_player spend around the library call, per frame, without ROS transport: CPU ms
(time.process_time, this process only, so another job on the machine changes it less than wall time) of each
message-side step on the first --frames sim val frames and the INT8 bundle's detections for them:

  read sim frame          cloud_player: a sim frame from the cache (before it serialized its source at start)
  pointcloud_to_msg       cloud_player: a sim frame -> PointCloud2
  serialize cloud         what publish() does with it before the middleware (rclpy serialize_message)
  stamp serialized cloud  cloud_player with its source serialized at start: the stored bytes with a new stamp
  deserialize cloud       the node's executor thread taking a PointCloud2 (rclpy deserialize_message)
  msg_to_detector_input   the node: PointCloud2 -> (N, 4) float32 points
  detections_to_msg       Detections -> Detection3DArray (what the node did before it wrote the CDR itself)
  detections_to_cdr       the node: Detections -> the serialized Detection3DArray it publishes as it is
  serialize detections    what publish() does with it before the middleware (rclpy serialize_message)
  detections_to_markers   the node: Detections -> MarkerArray (only for a subscriber since issue 19)
  serialize markers
  deserialize detections  a subscriber of the node's detections (the demo's collector) taking one

With --before-tree DIR (the source tree of a commit, e.g. `git archive 121377c lidar_ptq_ros lidar_ptq_core config |
tar -x -C DIR`), the same steps run on that tree's code in a child process (cwd DIR, so that its packages come first),
interleaved with this tree's in --rounds rounds.

    ./dev run python benchmarks/node_stage_costs.py --before-tree /tmp/before --out docs/benchmarks/node_stage_costs.txt
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from lidar_ptq_core.benchmark_child import run_in_child

REPO = Path(__file__).resolve().parents[1]
STEPS = ("read sim frame", "pointcloud_to_msg", "serialize cloud", "stamp serialized cloud", "deserialize cloud",
         "msg_to_detector_input", "detections_to_msg", "detections_to_cdr", "serialize detections",
         "detections_to_markers", "serialize markers", "deserialize detections")
BUNDLE = "sim_pillar_int8.lptq"


def measure(frames: int, repeats: int) -> dict:
    """{step: CPU ms per frame (median over repeats of the mean over frames)}, in this process's tree."""
    import numpy as np
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection3DArray

    from lidar_ptq_core.pointcloud import KITTI_FIELDS, PointCloud
    from lidar_ptq_core.runtime import Detector
    from lidar_ptq_core.sim import SimDataset, load_sim_config
    from lidar_ptq_ros import conversions
    from lidar_ptq_ros.markers import detections_to_markers

    dataset = SimDataset("val", frames, load_sim_config("default"))
    dataset.prepare(progress=False)
    clouds = [PointCloud(frame.points, KITTI_FIELDS) for frame in dataset]
    detector = Detector.load(BUNDLE, "onnxruntime", 1)
    header = Header(frame_id="lidar")
    messages = [conversions.pointcloud_to_msg(cloud, header) for cloud in clouds]
    features = detector.config.point_features
    detections = [detector.detect(conversions.msg_to_detector_input(m, 1.0, 400000, features, 0.0).points)
                  for m in messages]
    arrays = [conversions.detections_to_msg(d, header) for d in detections]
    markers = [detections_to_markers(d, header) for d in detections]
    serialized = [serialize_message(a) for a in arrays]
    serialized_clouds = [serialize_message(m) for m in messages]
    stamp = Header().stamp
    steps = {
        "read sim frame": lambda i: dataset[i],
        "pointcloud_to_msg": lambda i: conversions.pointcloud_to_msg(clouds[i], header),
        "serialize cloud": lambda i: serialize_message(messages[i]),
        "deserialize cloud": lambda i: deserialize_message(serialized_clouds[i], PointCloud2),
        "msg_to_detector_input": lambda i: conversions.msg_to_detector_input(messages[i], 1.0, 400000, features, 0.0),
        "detections_to_msg": lambda i: conversions.detections_to_msg(detections[i], header),
        "serialize detections": lambda i: serialize_message(arrays[i]),
        "detections_to_markers": lambda i: detections_to_markers(detections[i], header),
        "serialize markers": lambda i: serialize_message(markers[i]),
        "deserialize detections": lambda i: deserialize_message(serialized[i], Detection3DArray),
    }
    if hasattr(conversions, "serialized_with_stamp"):  # an older tree has no such steps
        steps["stamp serialized cloud"] = lambda i: conversions.serialized_with_stamp(serialized_clouds[i], stamp)
    if hasattr(conversions, "detections_to_cdr"):
        steps["detections_to_cdr"] = lambda i: conversions.detections_to_cdr(detections[i], header)
    out = {}
    for name, step in steps.items():
        step(0)  # warm-up
        per_repeat = []
        for _ in range(repeats):
            start = time.process_time()
            for i in range(frames):
                step(i)
            per_repeat.append(1000.0 * (time.process_time() - start) / frames)
        out[name] = float(np.median(per_repeat))
    out["boxes per frame"] = float(np.mean([len(d) for d in detections]))
    out["points per frame"] = float(np.mean([len(c) for c in clouds]))
    return out


def measure_in(tree: Path, frames: int, repeats: int) -> dict:
    """measure() with the packages of `tree` (a child python started in it imports them before the installed ones)."""
    return run_in_child(__file__, f"m['measure']({frames}, {repeats})", tree, run_name="node_stage_costs",
                        what=f"measuring in {tree}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10, help="sim val frames (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the frames per round (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds with --before-tree (default 2)")
    parser.add_argument("--before-tree", help="a source tree to compare with (see above)")
    parser.add_argument("--out", default="", help="report .txt (and .json beside it); default: print only")
    args = parser.parse_args(argv)
    if args.before_tree and not (Path(args.before_tree) / "lidar_ptq_ros").is_dir():
        parser.error(f"--before-tree {args.before_tree} has no lidar_ptq_ros package")

    import numpy as np

    load_before = os.getloadavg()
    trees = {"this tree": REPO} | ({"before": Path(args.before_tree).resolve()} if args.before_tree else {})
    runs = {name: [] for name in trees}
    for _ in range(args.rounds if args.before_tree else 1):
        for name, tree in trees.items():
            runs[name].append(measure_in(tree, args.frames, args.repeats))
    load_after = os.getloadavg()
    result = {name: {k: float(np.median([r.get(k, np.nan) for r in rows])) for k in (*STEPS, *rows[0])}
              for name, rows in runs.items()}

    names = list(trees)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"node and player message steps, CPU ms per frame (process_time; median of {args.repeats} passes over "
             f"{args.frames} sim val frames{f', {args.rounds} interleaved rounds' if args.before_tree else ''}), "
             f"{BUNDLE} detections",
             f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
             f"{', '.join(f'{n}: {trees[n]}' for n in names)}",
             f"command: ./dev run python benchmarks/node_stage_costs.py {command}",
             "",
             f"{'step':<26}" + "".join(f"{n:>14}" for n in names)]
    for step in (*STEPS, "boxes per frame", "points per frame"):
        lines.append(f"{step:<26}" + "".join(f"{result[n][step]:>14.2f}" for n in names))
    report = "\n".join(lines)
    print(report)
    if args.out:
        from lidar_ptq_core.io_utils import write_text_and_json

        write_text_and_json(Path(args.out), report, {"frames": args.frames, "repeats": args.repeats,
                                                     "load_average": [load_before[0], load_after[0]],
                                                     "trees": {n: str(t) for n, t in trees.items()}, "cpu_ms": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
