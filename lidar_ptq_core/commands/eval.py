"""`lidar-ptq eval --pred DIR --gt DIR [--out result.json]`: AP tables for a directory of prediction box files.

With `--reference DIR` (e.g. the FP32 model's boxes on the same frames) it also prints the reference's tables and,
per metric, the difference PRED - REFERENCE with its paired bootstrap 95 % interval over frames
(lidar_ptq_core.paired).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluate import DEFAULT_RANGE_EDGES, DISTANCE_THRESHOLDS, evaluate, evaluate_and_match, read_box_dirs
from ..io_utils import write_json_atomic
from ..paired import DEFAULT_RESAMPLES, DEFAULT_SEED, paired_bootstrap


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, metavar="DIR", help="directory of <frame_id>.json detection files")
    parser.add_argument("--gt", required=True, metavar="DIR", help="directory of <frame_id>.json ground-truth files")
    parser.add_argument("--out", metavar="FILE", help="also write the full result as JSON here")
    parser.add_argument(
        "--reference", metavar="DIR", help="box files of a reference model on the same frames (e.g. FP32): also "
        "print its tables and PRED - REFERENCE per metric with a paired bootstrap 95 %% interval over frames"
    )
    parser.add_argument("--label", metavar="NAME",
                        help="name of --pred in the difference lines (default: the last folder name that differs)")
    parser.add_argument("--reference-label", metavar="NAME",
                        help="name of --reference in the difference lines (default: as --label)")
    parser.add_argument("--bootstrap", type=int, metavar="N",
                        help=f"bootstrap resamples for the --reference interval (default: {DEFAULT_RESAMPLES})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of the bootstrap resamples (default: %(default)s)")
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
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="take the region from this detector's point cloud range (as demo and the benchmarks do); bundled name "
        "or .safetensors path, FP32 or INT8",
    )
    parser.add_argument("--bundle", default=None, help="take the region from this .lptq bundle's model config")


def checkpoint_region(checkpoint: str) -> tuple[float, float, float, float]:
    """(x_min, y_min, x_max, y_max) of a checkpoint's or bundle's point cloud range, from its metadata (no weights)."""
    from ..models.config import model_config_from_yaml
    from ..recipes.centerpoint import read_metadata
    from ..runtime import bundled_checkpoint

    if str(checkpoint).endswith(".lptq"):
        from ..export.bundle import read_bundle

        pcr = read_bundle(checkpoint, verify=False).config.voxelization.point_cloud_range
        return pcr[0], pcr[1], pcr[3], pcr[4]
    metadata = read_metadata(bundled_checkpoint(checkpoint))
    if "config" not in metadata:
        raise ValueError(f"{checkpoint}: no model config in the checkpoint metadata")
    pcr = model_config_from_yaml(metadata["config"]).voxelization.point_cloud_range
    return pcr[0], pcr[1], pcr[3], pcr[4]


def run(args: argparse.Namespace) -> int:
    iou_thresholds = _parse_iou_thresholds(args.iou_threshold)
    source = args.bundle or args.checkpoint
    if sum(x is not None for x in (args.region, args.checkpoint, args.bundle)) > 1:
        raise ValueError("give one of --region, --checkpoint, --bundle")
    region = checkpoint_region(source) if source else args.region
    where = f"from {source}" if source else "from --region"
    print(f"region: x {region[0]:g}..{region[2]:g} m, y {region[1]:g}..{region[3]:g} m ({where})" if region else
          "region: none (all ground truth counts; pass --checkpoint for the detector's range, as demo does)")
    if args.reference is None and (args.bootstrap is not None or args.reference_label is not None):
        raise ValueError("--bootstrap and --reference-label need --reference")
    num_resamples = DEFAULT_RESAMPLES if args.bootstrap is None else args.bootstrap
    if num_resamples < 1:
        raise ValueError("--bootstrap must be at least 1")
    settings = dict(distance_thresholds=args.distance_thresholds, iou_thresholds=iou_thresholds,
                    range_edges=args.range_edges, region=region)
    predictions, ground_truths, notes = read_box_dirs(args.pred, args.gt)
    if args.reference is None:
        result = evaluate(predictions, ground_truths, args.classes, **settings)
        result.warnings = notes
        _print_warnings(notes)
        print(result.format_table())
        if args.out:
            write_json_atomic(args.out, result.to_dict())
            print(f"\nwrote {args.out}")
        return 0

    reference_predictions, _, reference_notes = read_box_dirs(args.reference, args.gt)
    _print_warnings(notes + reference_notes)
    # Both sets are scored on the same classes, so that their matchings pair up class by class.
    classes = args.classes or _class_names_of(ground_truths, predictions, reference_predictions) or None
    result, matched = evaluate_and_match(predictions, ground_truths, classes, **settings)
    reference_result, reference_matched = evaluate_and_match(reference_predictions, ground_truths, classes, **settings)
    result.warnings, reference_result.warnings = notes, reference_notes
    default_label, default_reference_label = _distinct_names(args.pred, args.reference)
    label, reference_label = args.label or default_label, args.reference_label or default_reference_label
    differences = paired_bootstrap(reference_matched, matched, num_resamples=num_resamples, seed=args.seed)
    print(f"{reference_label} (reference, {args.reference})")
    print(reference_result.format_table())
    print(f"\n{label} ({args.pred})")
    print(result.format_table())
    print(f"\nPaired bootstrap over {result.num_frames} frames ({num_resamples} resamples, seed {args.seed}), "
          "AP points:")
    for difference in differences:
        print(difference.format(label, reference_label))
    if args.out:
        write_json_atomic(args.out, {
            "label": label, "reference_label": reference_label,
            "prediction": result.to_dict(), "reference": reference_result.to_dict(),
            "paired": [d.to_dict() for d in differences],
        })
        print(f"\nwrote {args.out}")
    return 0


def _print_warnings(notes: list[str]) -> None:
    for note in notes:
        print(f"lidar-ptq eval: warning: {note}", file=sys.stderr)


def _distinct_names(pred_dir, reference_dir) -> tuple[str, str]:
    """The last path components where the two folders differ: 'int8' and 'fp32' for runs/int8/pred, runs/fp32/pred."""
    pred_parts, reference_parts = Path(pred_dir).resolve().parts, Path(reference_dir).resolve().parts
    for pred_part, reference_part in zip(reversed(pred_parts), reversed(reference_parts)):
        if pred_part != reference_part:
            return pred_part, reference_part
    return pred_parts[-1], reference_parts[-1]


def _class_names_of(*box_set_lists) -> list[str]:
    return list(dict.fromkeys(name for box_sets in box_set_lists for s in box_sets for name in s.class_names))


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
