"""`lidar-ptq eval --pred DIR --gt DIR [--out result.json]`: AP tables for a directory of prediction box files."""

from __future__ import annotations

import argparse
import sys
import warnings

from ..evaluate import DEFAULT_RANGE_EDGES, DISTANCE_THRESHOLDS, evaluate_dirs
from ..io_utils import write_json_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, metavar="DIR", help="directory of <frame_id>.json detection files")
    parser.add_argument("--gt", required=True, metavar="DIR", help="directory of <frame_id>.json ground-truth files")
    parser.add_argument("--out", metavar="FILE", help="also write the full result as JSON here")
    parser.add_argument(
        "--classes", nargs="+", metavar="NAME", help="classes to evaluate (default: those named in the files)"
    )
    parser.add_argument(
        "--distance-thresholds",
        nargs="+",
        type=float,
        default=list(DISTANCE_THRESHOLDS),
        metavar="M",
        help="BEV centre-distance thresholds in metres (default: %(default)s)",
    )
    parser.add_argument(
        "--iou-threshold",
        action="append",
        default=[],
        metavar="CLASS=IOU",
        help="BEV IoU threshold for a class, repeatable (default: 0.7 Car/Truck, 0.5 otherwise)",
    )
    parser.add_argument(
        "--range-edges",
        nargs="+",
        type=float,
        default=list(DEFAULT_RANGE_EDGES),
        metavar="M",
        help="range bin edges in metres; the last bin is open-ended (default: %(default)s)",
    )
    parser.add_argument(
        "--region",
        nargs=4,
        type=float,
        default=None,
        metavar=("X_MIN", "Y_MIN", "X_MAX", "Y_MAX"),
        help="evaluate only inside this area (e.g. the detector's point cloud range): ground truth centred outside "
        "is ignored, predictions centred outside are dropped",
    )


def run(args: argparse.Namespace) -> int:
    iou_thresholds = _parse_iou_thresholds(args.iou_threshold)
    # evaluate_dirs also records its warnings in the result; print them once, in the command's own style.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate_dirs(
            args.pred,
            args.gt,
            args.classes,
            distance_thresholds=args.distance_thresholds,
            iou_thresholds=iou_thresholds,
            range_edges=args.range_edges,
            region=args.region,
        )
    for note in result.warnings:
        print(f"lidar-ptq eval: warning: {note}", file=sys.stderr)
    print(result.format_table())
    if args.out:
        write_json_atomic(args.out, result.to_dict())
        print(f"\nwrote {args.out}")
    return 0


def _parse_iou_thresholds(items: list[str]) -> dict[str, float]:
    thresholds = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            thresholds[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--iou-threshold expects CLASS=IOU, got {item!r}")
    return thresholds
