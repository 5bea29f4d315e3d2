"""`lidar-ptq detect INPUT... [--out DIR]`: run a detector (FP32 or INT8 checkpoint) on point clouds: files, folders
of files, or rosbag2 bags; print the boxes, write one box JSON per frame, draw a frame.

A multi-sweep model (its config's `sweeps` section) gets each frame accumulated with the frames before it, as the
node does (lidar_ptq_core/sweeps.py): a bag's messages by their stamps, a folder's files in name order by the stamps
in their names or --sweep-period."""

from __future__ import annotations


def add_arguments(parser) -> None:
    from ..devices import DEVICE_CHOICES_HELP

    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="point cloud files (KITTI .bin, nuScenes .pcd.bin, .pcd), folders of them, or rosbag2 "
                             "bags")
    parser.add_argument("--checkpoint", default="sim_pillar", help="bundled name or .safetensors path (FP32 or INT8)")
    parser.add_argument("--bundle", default=None, help="a .lptq bundle instead of --checkpoint (lidar-ptq export)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt", "openvino"],
                        help="network backend for a bundle (default auto: tensorrt where it imports and CUDA is "
                             "available, else the CPU engine the bundle's export chose, onnxruntime or openvino; "
                             "tensorrt is unverified here; openvino: requirements-openvino.txt); checkpoints run in "
                             "torch")
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP + "; a bundle's onnxruntime graphs "
                        "run on the CPU")
    parser.add_argument("--topic", default=None, help="PointCloud2 topic of a bag that holds several")
    parser.add_argument("--sweep-period", type=float, default=None, metavar="SECONDS",
                        help="for a multi-sweep model on folders of sequential frames: seconds between files (0.05 "
                        "for nuScenes' 20 Hz sweeps); default: stamps in nuScenes-style file names, else single "
                        "sweeps. Bags use their message stamps")
    parser.add_argument("--intensity-scale", type=float, default=1.0,
                        help="multiply intensity (0.00392 for a 0..255 sensor; `lidar-ptq check` suggests it); "
                        "applied after what an INT8 checkpoint recorded at calibration")
    parser.add_argument("--z-offset", type=float, default=0.0,
                        help="metres added to z (`lidar-ptq check` suggests it); applied after what an INT8 "
                        "checkpoint recorded at calibration")
    parser.add_argument("--render", default=None,
                        help="write a bird's-eye view PNG of the first frame's points and boxes")
    parser.add_argument("--out", default=None,
                        help="a folder: one <frame_id>.json box file per frame (for `lidar-ptq eval`); with a single "
                        "input frame, a path ending in .json writes that file")
    parser.add_argument("--gt", default=None, help="ground truth box JSON to draw beside the detections")
    parser.add_argument("--min-score", type=float, default=0.3, help="boxes drawn/printed from this score")
    parser.add_argument("--quiet", action="store_true", help="print only the per-frame counts")


def iter_frames(inputs, topic=None, model_config=None, sweep_period=None, notify=None):
    """(frame_id, SweepWindow) for every frame of every input, in order (sweeps.frame_sequence): the frame with the
    frames before it a multi-sweep `model_config` takes (one frame otherwise). `notify` gets, once per input, the
    note that a multi-sweep model meets a source without stamps."""
    from pathlib import Path

    from ..sweeps import frame_sequence, iter_sweep_windows, single_sweep_note

    count = model_config.sweeps.count if model_config is not None else 1
    for item in inputs:
        if item == "sim" or not Path(item).exists():
            raise FileNotFoundError(f"input not found: {item}")
        sequence = frame_sequence(item, topic, sweep_period)
        note = single_sweep_note(model_config, sequence) if model_config is not None else None
        if note and notify is not None:
            notify(note)
        for frame, window in iter_sweep_windows(sequence, count):
            yield frame.frame_id, window


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..boxfile import read_ground_truth, write_detections
    from ..calibration_data import model_input_settings
    from ..pointcloud.features import PointPreparer
    from ..render import render_bev
    from ..runtime import Detector
    from ..sweeps import WindowPreparer

    detector = Detector.load(args.bundle or args.checkpoint, args.backend, device=args.device)
    from ..pointcloud import is_bag_path

    out = Path(args.out) if args.out else None
    # One plain file in and a .json out: write that file (as before); anything else writes a folder of box files.
    single = len(args.inputs) == 1 and Path(args.inputs[0]).is_file() and not is_bag_path(args.inputs[0])
    single_file = out is not None and out.suffix == ".json" and single
    settings = model_input_settings(detector.config, args.intensity_scale, args.z_offset)
    if not settings.is_identity:
        print(f"input corrected: {settings.describe()}")
    def note(text):
        print(f"note: {text}", file=sys.stderr)

    # The model config's rule for missing features (zeros + one note, or an error), as in calibration and the node.
    prepare = PointPreparer(detector.config.point_features, settings, notify=note)
    # A multi-sweep model: each frame with the frames before it (sweeps.py), as in the node and calibration.
    prepare_window = WindowPreparer(detector.config, prepare, z_offset=settings.z_offset, notify=note)
    sweeps = detector.config.sweeps.count
    if sweeps > 1:
        print(f"accumulating up to {sweeps} sweeps within {detector.config.sweeps.max_time_lag:g} s per frame, as "
              "the model config asks (no poses: not motion compensated)")
    frames = iter_frames(args.inputs, args.topic, detector.config, args.sweep_period, notify=note)
    count = 0
    for frame_id, window in frames:
        points = prepare_window(window)
        detections = detector.detect(points)
        shown = detections.select(detections.scores >= args.min_score)
        count += 1
        if not args.quiet:
            for box, score, label in zip(shown.boxes, shown.scores, shown.labels):
                x, y, z, length, width, height, yaw = box
                print(f"{shown.class_names[label]:<11} {score:.2f}  x {x:7.2f} y {y:7.2f} z {z:5.2f}  "
                      f"l {length:5.2f} w {width:4.2f} h {height:4.2f}  yaw {yaw:5.2f}")
        print(f"{frame_id}: {len(shown)} boxes with score >= {args.min_score} ({len(detections)} before the score cut)")
        if out is not None:
            write_detections(out if single_file else out / f"{frame_id}.json", frame_id, detections)
        if args.render and count == 1:
            gt = read_ground_truth(args.gt)[1] if args.gt else None
            render_bev(args.render, points, gt=gt, detections=shown, title=f"{frame_id}: {len(shown)} detections")
            print(f"wrote {args.render}")
    if out is not None:
        print(f"wrote {count} box file(s) to {out}")
    return 0
