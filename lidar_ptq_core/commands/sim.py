"""`lidar-ptq sim`: write simulated frames as KITTI .bin + box files, and/or render one as a BEV picture.

    lidar-ptq sim --split val --frames 100 --out DIR [--workers 2]   # DIR/points/<id>.bin, DIR/labels/<id>.json
    lidar-ptq sim --seed 7 --render scene.png [--config vlp32]      # one scene, drawn
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..boxfile import write_ground_truth
from ..pointcloud import KITTI_FIELDS, PointCloud, write_bag_frames, write_kitti_bin
from ..sim.dataset import SPLIT_SEED_OFFSETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", default="default", metavar="NAME|YAML",
        help="simulator config: a name under config/sim/ (default, vlp32) or a YAML path (default: %(default)s)")
    add("--split", default="val", choices=list(SPLIT_SEED_OFFSETS),
        help="split to draw frames from; 'test' is for headline figures only, never for choices "
        "(default: %(default)s)")
    add("--frames", type=int, default=1, metavar="N", help="number of frames (default: %(default)s)")
    add("--start", type=int, default=0, metavar="I", help="first frame index within the split (default: %(default)s)")
    add("--seed", type=int, metavar="S", help="simulate the single scene of this seed instead of a split")
    add("--out", metavar="DIR", help="write DIR/points/<frame_id>.bin and DIR/labels/<frame_id>.json")
    add("--bag", metavar="DIR", help="also write the frames as sensor_msgs/PointCloud2 into a new rosbag2 bag "
        "(the calibration-set format), timestamped at --rate Hz")
    add("--bag-storage", default="sqlite3", choices=["sqlite3", "mcap"], help="rosbag2 storage (default: %(default)s)")
    add("--topic", default="/points", help="PointCloud2 topic in the bag (default: %(default)s)")
    add("--sensor-frame", default="lidar", help="header.frame_id of the bag's messages (default: %(default)s)")
    add("--rate", type=float, default=10.0, help="sweeps per second for bag timestamps (default: %(default)s)")
    add("--render", metavar="PNG", help="draw the first frame in bird's-eye view")
    add("--color-by", default="height", choices=["height", "intensity"], help="point colouring for --render")
    add("--view", type=float, metavar="M",
        help="--render shows +-M metres around the sensor (default: the annotated range)")
    add("--workers", type=int, default=0, metavar="K",
        help="worker processes for generating split frames into the cache (default: in-process)")
    add("--no-cache", action="store_true", help="do not read or write the frame cache")


def run(args: argparse.Namespace) -> int:
    from ..render import render_bev
    from ..sim import CLASS_NAMES, SimDataset, generate_frame, load_sim_config

    if not args.out and not args.render and not args.bag:
        raise ValueError("nothing to do: give --out DIR, --bag DIR and/or --render PNG")
    if args.rate <= 0:
        raise ValueError("--rate must be positive")
    if args.bag and Path(args.bag).exists():  # refuse before simulating anything
        raise FileExistsError(f"{args.bag}: exists already; rosbag2 bags are never overwritten")
    if args.frames < 1:
        raise ValueError("--frames must be at least 1")
    config = load_sim_config(args.config)

    if args.seed is not None:
        dataset = None
        count = 1
    else:
        count = args.frames if args.out or args.bag else 1  # a render alone needs only the first frame
        dataset = SimDataset(args.split, count, config, start=args.start, cache=not args.no_cache)
    sim_seconds = 0.0
    if dataset is not None:
        started = time.perf_counter()
        dataset.prepare(num_workers=args.workers)  # no-op without a cache
        sim_seconds += time.perf_counter() - started

    written, points_total, class_counts = 0, 0, np.zeros(len(CLASS_NAMES), np.int64)
    for i in range(count):
        started = time.perf_counter()
        before = 0 if dataset is None else dataset.generated
        frame = generate_frame(config, args.seed) if dataset is None else dataset[i]
        if dataset is None or dataset.generated > before:
            sim_seconds += time.perf_counter() - started
        if args.out:
            out = Path(args.out)
            write_kitti_bin(out / "points" / f"{frame.frame_id}.bin", PointCloud(frame.points, KITTI_FIELDS))
            write_ground_truth(out / "labels" / f"{frame.frame_id}.json", frame.frame_id, frame.gt)
        points_total += len(frame.points)
        class_counts += np.bincount(frame.gt.labels, minlength=len(CLASS_NAMES))[: len(CLASS_NAMES)]
        written += 1
        if args.render and i == 0:
            ignored = int(frame.gt.ignore.sum())
            title = f"{frame.frame_id} ({config.lidar.name}, {len(frame.gt)} objects, {ignored} ignored)"
            render_bev(args.render, frame.points, frame.gt, title=title, xy_range=args.view or _view(config),
                       color_by=args.color_by)
    made = 1 if dataset is None else dataset.generated

    summary = ", ".join(f"{n} {name}" for name, n in zip(CLASS_NAMES, class_counts))
    print(f"{written} frame(s), {points_total / written:.0f} points/frame; objects: {summary}")
    if made:
        print(f"simulated {made} frame(s) in {sim_seconds:.2f} s ({sim_seconds / made:.3f} s/frame)")
    if args.out:
        print(f"wrote {args.out}/points and {args.out}/labels")
    if args.render:
        print(f"wrote {args.render}")
    if args.bag:
        period_ns = int(round(1e9 / args.rate))
        start_ns = 1_700_000_000 * 1_000_000_000  # a fixed epoch keeps bags of the same frames identical
        frames = (generate_frame(config, args.seed),) if dataset is None else (dataset[i] for i in range(count))
        written_to_bag = write_bag_frames(
            args.bag,
            ((start_ns + k * period_ns, args.sensor_frame, PointCloud(f.points, KITTI_FIELDS))
             for k, f in enumerate(frames)),
            topic=args.topic,
            storage=args.bag_storage,
        )
        print(f"wrote {written_to_bag} PointCloud2 message(s) on {args.topic} to {args.bag} ({args.bag_storage})")
    return 0


def _view(config) -> float:
    # Square view reaching the annotated range, so far objects are in the picture.
    return float(np.ceil(config.scene.object_range_m / 10.0) * 10.0)
