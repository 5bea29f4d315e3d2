"""`lidar-ptq detect FILE`: run a detector on one point cloud; print boxes, optionally save them and a picture."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("file", help="point cloud: KITTI .bin, nuScenes .pcd.bin, .pcd, or a rosbag2 bag (first frame)")
    parser.add_argument("--checkpoint", default="sim_pillar", help="bundled name or .safetensors path")
    parser.add_argument("--render", default=None, help="write a bird's-eye view PNG of points and boxes")
    parser.add_argument("--out", default=None, help="write the detections as a box JSON file")
    parser.add_argument("--gt", default=None, help="ground truth box JSON to draw beside the detections")
    parser.add_argument("--min-score", type=float, default=0.3, help="boxes drawn/printed from this score")


def run(args) -> int:
    from pathlib import Path

    from ..boxfile import read_ground_truth, write_detections
    from ..pointcloud import read_points
    from ..render import render_bev
    from ..runtime import Detector

    detector = Detector.from_checkpoint(args.checkpoint)
    cloud = read_points(args.file)
    missing = [f for f in ("x", "y", "z", "intensity") if not cloud.has_field(f)]
    if missing:
        raise ValueError(f"{args.file} lacks fields {missing}; the detector needs x, y, z, intensity")
    points = cloud.select_fields(("x", "y", "z", "intensity")).points
    detections = detector.detect(points)
    shown = detections.select(detections.scores >= args.min_score)
    for box, score, label in zip(shown.boxes, shown.scores, shown.labels):
        x, y, z, length, width, height, yaw = box
        print(f"{shown.class_names[label]:<11} {score:.2f}  x {x:7.2f} y {y:7.2f} z {z:5.2f}  "
              f"l {length:5.2f} w {width:4.2f} h {height:4.2f}  yaw {yaw:5.2f}")
    print(f"{len(shown)} boxes with score >= {args.min_score} ({len(detections)} before the score cut)")
    frame_id = Path(args.file).name.split(".")[0]
    if args.out:
        write_detections(args.out, frame_id, detections)
    if args.render:
        gt = read_ground_truth(args.gt)[1] if args.gt else None
        render_bev(args.render, points, gt=gt, detections=shown, title=f"{frame_id}: {len(shown)} detections")
        print(f"wrote {args.render}")
    return 0
