"""`lidar-ptq compare SOURCE --reference A --candidate B`: does B (an INT8 model) detect what A (its FP32 model) detects
on this sensor's frames? No labels needed: A's boxes are the ground truth.

A and B are checkpoints (bundled name or .safetensors, FP32 or INT8) or .lptq bundles (run by --backend). SOURCE is a
point cloud file, a folder of .bin / .pcd files, a rosbag2 bag (--topic), or 'sim' (a split of the simulator). Every
frame goes through each model's point-feature rule and input settings, as in `lidar-ptq detect` and the node.

Reported, frame by frame and in total: the share of A's boxes (score >= --min-score) that B reproduces (same class,
BEV centre within 1 m, one to one), the share of B's boxes that have such an A box, and B's centre-distance mAP with
A's boxes as ground truth; by class and by range (evaluate.py's bins). Then the verdict: PASS when B reproduces at
least --threshold of A's boxes. Exit code 0 pass, 1 fail, 2 bad input. `--out DIR` writes compare.json and
worst_frames.png (the frames with the most missed + extra boxes, side by side).

Held-out frames: `--exclude-calibration N` leaves out the N frames that `lidar-ptq quantize --calib SOURCE --frames N`
calibrated on (calibration_data.spread_indices of the same source), `--skip-first K` the first K; --frames are then
spread over what is left. calibrate.launch.py records more clouds than it calibrates on and compares on the others.

Why 95 % by default: on frames like its calibration data an INT8 model made with LiDAR-PTQ reproduces about 98 % of
its FP32 model's boxes (the shipped sim_pillar_int8 on 32 sim validation frames: 98.2 %, checkpoint and bundle
alike), and what it misses sits at the score cut: 9 of 10 missed boxes scored under 0.42 in FP32, against 19 % of all
boxes, and 4 of the 10 have an INT8 twin just under 0.3 (docs/benchmarks/compare_missed_scores.txt). One box in
twenty lost is beyond that noise: the same INT8 model on the real KITTI sweeps reproduces 92 % (and 87 % of its boxes
have an FP32 box, against 96 % on sim; docs/benchmarks/compare_real_frames.txt).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..io_utils import json_ready

DEFAULT_THRESHOLD = 0.95
DEFAULT_WORST = 3
RESULT_FILE = "compare.json"
PICTURE_FILE = "worst_frames.png"


def add_arguments(parser) -> None:
    from ..agreement import AGREEMENT_MIN_SCORE
    from ..devices import DEVICE_CHOICES_HELP

    parser.add_argument("source", metavar="SOURCE",
                        help="a point cloud file (.bin, .pcd.bin, .pcd), a folder of them, a rosbag2 bag, or 'sim'")
    parser.add_argument("--reference", required=True,
                        help="the model to follow (usually FP32): bundled name, .safetensors or .lptq bundle")
    parser.add_argument("--candidate", required=True,
                        help="the model checked against it (usually INT8): bundled name, .safetensors or .lptq")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt", "openvino"],
                        help="network backend of a bundle (default auto, as lidar-ptq detect); checkpoints run in "
                        "torch")
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of torch and onnxruntime")
    parser.add_argument("--topic", default=None, help="PointCloud2 topic of a bag that holds several")
    parser.add_argument("--frames", type=int, default=32,
                        help="frames compared, spread over the source's held-out frames (default 32)")
    parser.add_argument("--skip-first", type=int, default=0, metavar="K", help="leave out the first K frames")
    parser.add_argument("--sweep-period", type=float, default=None, metavar="SECONDS",
                        help="for a multi-sweep model on a folder of sequential frames: seconds between files (0.05 "
                        "for nuScenes' 20 Hz sweeps); default: stamps in nuScenes-style file names, else single "
                        "sweeps. Bags use their message stamps")
    parser.add_argument("--exclude-calibration", type=int, default=0, metavar="N",
                        help="leave out the N frames `lidar-ptq quantize --frames N` calibrates on from this "
                        "source (its even spread), so that the comparison runs on frames calibration never saw")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"PASS when the candidate reproduces at least this share of the reference's boxes "
                        f"(default {DEFAULT_THRESHOLD}; the module's docstring says why)")
    parser.add_argument("--min-score", type=float, default=AGREEMENT_MIN_SCORE,
                        help=f"boxes compared from this score (default {AGREEMENT_MIN_SCORE})")
    parser.add_argument("--intensity-scale", type=float, default=1.0,
                        help="multiply intensity for both models (after what a checkpoint recorded; lidar-ptq check "
                        "suggests it)")
    parser.add_argument("--z-offset", type=float, default=0.0,
                        help="metres added to z for both models (after what a checkpoint recorded)")
    parser.add_argument("--sim-config", default="default", help="simulator config of SOURCE 'sim'")
    parser.add_argument("--sim-split", default="val", help="split of SOURCE 'sim' (default val)")
    parser.add_argument("--worst", type=int, default=DEFAULT_WORST,
                        help=f"frames drawn in {PICTURE_FILE} (default {DEFAULT_WORST}, at most 4)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help=f"write {RESULT_FILE} and {PICTURE_FILE} (the worst frames side by side) here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of the tables")



# -- frames -------------------------------------------------------------------------------------------------------
def held_out_indices(total: int, frames: int, skip_first: int = 0, calibration_frames: int = 0) -> list[int]:
    """Up to `frames` indices of range(total) spread evenly over those left after the first `skip_first` and the
    `calibration_frames` indices calibration spreads over the same source (calibration_data.spread_indices)."""
    from ..calibration_data import spread_indices

    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    if skip_first < 0 or calibration_frames < 0:
        raise ValueError("--skip-first and --exclude-calibration must be >= 0")
    excluded = set(range(min(skip_first, total)))
    if calibration_frames:
        excluded.update(spread_indices(total, calibration_frames).tolist())
    remaining = [i for i in range(total) if i not in excluded]
    if not remaining:
        raise ValueError(f"no frames left to compare: the source has {total}, {skip_first} skipped and "
                         f"{calibration_frames} used by calibration (record more frames than calibration takes)")
    return [remaining[i] for i in spread_indices(len(remaining), frames)]


def compare_frames(source: str, frames: int = 32, topic: str | None = None, skip_first: int = 0,
                   calibration_frames: int = 0, sim_config: str = "default", sim_split: str = "val", *,
                   sweeps=None, sweep_period: float | None = None, notify=None):
    """([(frame_id, where, cloud)], description) of the held-out frames of `source`. `cloud`: a PointCloud with every
    field (sim), or a sweeps.SweepWindow: the frame with the frames before it that `sweeps` (a SweepConfig; None: one
    sweep) takes where the source has stamps (a bag; a folder with stamps in its file names or `sweep_period`), else
    the frame alone. `notify` gets the note that a multi-sweep model meets frames without stamps."""
    from ..pointcloud import PointCloud, is_bag_path
    from ..sweeps import describe_accumulation, frame_sequence, iter_sweep_windows, single_sweep_note

    if source == "sim":
        if skip_first or calibration_frames:
            raise ValueError("--skip-first / --exclude-calibration apply to files, folders and bags; SOURCE 'sim' "
                             "takes --sim-split (the val split is never calibrated on)")
        if sweep_period is not None:
            raise ValueError("--sweep-period is for folders of sequential frames; the sim frames are independent")
        from ..sim import SimDataset, load_sim_config

        dataset = SimDataset(sim_split, frames, load_sim_config(sim_config))
        dataset.prepare(num_workers=1, progress=False)
        clouds = [(dataset.frame_id(i), f"sim {sim_split} frame {i}",
                   PointCloud(dataset[i].points, ("x", "y", "z", "intensity"))) for i in range(len(dataset))]
        if sweeps is not None and sweeps.accumulates and notify is not None:
            notify(f"the model takes {sweeps.count} accumulated sweeps but the sim frames are independent scenes: "
                   "single sweeps (time lag 0)")
        return clouds, f"{len(clouds)} frames of the sim {sim_split} split ({sim_config} sensor)"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"point cloud source {source!r} is neither 'sim' nor an existing folder, file or bag")
    left_out = ", ".join(part for part in (f"the first {skip_first}" if skip_first else "",
                                           f"the {calibration_frames} calibration picks" if calibration_frames
                                           else "") if part)
    left_out = f" (left out: {left_out})" if left_out else ""
    bag = is_bag_path(path)
    if path.is_file() and not bag and (skip_first or calibration_frames):
        raise ValueError(f"{path} is a single frame: nothing to skip or hold out")
    sequence = frame_sequence(source, topic, sweep_period)
    total = len(sequence)  # a bag: two passes, count then decode only the windows of the chosen messages
    if bag and total == 0:
        raise ValueError(f"{path}: no point cloud messages")
    picks = held_out_indices(total, frames, skip_first, calibration_frames)
    missing_stamps = single_sweep_note(sweeps, sequence) if sweeps is not None else None
    if missing_stamps and notify is not None:
        notify(missing_stamps)
    count = sweeps.count if sweeps is not None else 1
    clouds = [(frame.frame_id, frame.where, window)
              for frame, window in iter_sweep_windows(sequence, count, picks)]
    if bag:
        described = f"{len(clouds)} of {total} messages of bag {path}{left_out}"
    elif path.is_dir():
        described = f"{len(clouds)} of {total} files in {path}{left_out}"
    else:
        described = f"the single file {path}"
    if sweeps is not None:
        described += describe_accumulation(sweeps, sequence)
    return clouds, described


# -- the comparison -----------------------------------------------------------------------------------------------
def input_settings_pair(reference_config, candidate_config, intensity_scale: float = 1.0, z_offset: float = 0.0):
    """(reference settings, candidate settings, note). Each model gets what its checkpoint recorded at calibration,
    then the given settings; a model that recorded nothing (an FP32 checkpoint) gets the other's recorded settings,
    so that FP32 sees the points its INT8 version was calibrated and deployed on."""
    from ..calibration_data import model_input_settings

    def recorded(config) -> bool:
        settings = getattr(config, "input_settings", None)
        return settings is not None and not settings.is_identity

    if recorded(candidate_config) and not recorded(reference_config):
        reference_config = candidate_config
    elif recorded(reference_config) and not recorded(candidate_config):
        candidate_config = reference_config
    reference = model_input_settings(reference_config, intensity_scale, z_offset)
    candidate = model_input_settings(candidate_config, intensity_scale, z_offset)
    note = "" if reference == candidate else (f"the models recorded different input settings (reference "
                                              f"{reference.describe()}, candidate {candidate.describe()}): the "
                                              "comparison includes that difference")
    return reference, candidate, note


BACKEND_NAMES = {"TorchBackend": "torch", "OnnxRuntimeBackend": "onnxruntime", "TensorRTBackend": "tensorrt",
                 "TorchEncoderOnnxBackend": "onnxruntime, sparse encoder in torch"}


def _describe_model(name: str, detector) -> str:
    kind = "bundle" if str(name).endswith(".lptq") else "checkpoint"
    backend = type(detector.backend).__name__
    return f"{name} ({kind}, {detector.config.name}, {BACKEND_NAMES.get(backend, backend)})"


def run_compare(source: str, reference: str, candidate: str, *, frames: int = 32, topic: str | None = None,
                skip_first: int = 0, calibration_frames: int = 0, threshold: float = DEFAULT_THRESHOLD,
                min_score: float | None = None, backend: str = "auto", device: str = "auto",
                threads: int | None = None, intensity_scale: float = 1.0, z_offset: float = 0.0,
                sim_config: str = "default", sim_split: str = "val", worst: int = DEFAULT_WORST,
                out: str | Path | None = None, detectors=None, log=None, sweep_period: float | None = None) -> dict:
    """The comparison as plain data (what --json prints): models, source, input settings, the agreement of
    agreement.detection_agreement (total, per_frame, by_class, by_range), the worst frames, the verdict. With `out`,
    writes compare.json and worst_frames.png there. `detectors`: already loaded (reference, candidate) Detectors
    (the demo's), instead of loading `reference` / `candidate`. A multi-sweep model compares on accumulated sweeps
    (sweeps.py; `sweep_period`: seconds between a folder's files)."""
    from ..agreement import AGREEMENT_MIN_SCORE, detection_agreement, match_boxes
    from ..pointcloud.features import PointPreparer
    from ..sweeps import WindowPreparer

    min_score = AGREEMENT_MIN_SCORE if min_score is None else min_score
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"--threshold must be in (0, 1], got {threshold}")
    if not 1 <= worst <= 4:
        raise ValueError(f"--worst must be 1 to 4, got {worst}")
    frame_notes = []
    sweeps = _model_sweeps((reference, candidate), detectors)
    if sweeps is None:  # a model whose config is read only by loading it
        detectors = _load_pair(reference, candidate, backend, device, threads)
        sweeps = _model_sweeps((reference, candidate), detectors)
    clouds, described = compare_frames(source, frames, topic, skip_first, calibration_frames, sim_config, sim_split,
                                       sweeps=sweeps, sweep_period=sweep_period, notify=frame_notes.append)
    if detectors is None:
        detectors = _load_pair(reference, candidate, backend, device, threads)
    ref_detector, cand_detector = detectors
    if tuple(ref_detector.class_names) != tuple(cand_detector.class_names):
        raise ValueError(f"the models detect different classes ({list(ref_detector.class_names)} vs "
                         f"{list(cand_detector.class_names)}): compare a model with its own quantized version")
    ref_settings, cand_settings, settings_note = input_settings_pair(ref_detector.config, cand_detector.config,
                                                                     intensity_scale, z_offset)
    notes = [settings_note] if settings_note else []

    def note(text):
        if text not in notes:
            notes.append(text)
            if log is not None:
                log(f"note: {text}")

    if settings_note and log is not None:
        log(f"note: {settings_note}")
    for text in frame_notes:
        note(text)
    # Each model's feature rule and settings; a multi-sweep model's frames accumulated with those before them.
    prepare_ref = WindowPreparer(ref_detector.config, PointPreparer(ref_detector.config.point_features, ref_settings,
                                                                    notify=note),
                                 z_offset=ref_settings.z_offset, notify=note)
    prepare_cand = WindowPreparer(cand_detector.config, PointPreparer(cand_detector.config.point_features,
                                                                      cand_settings, notify=note),
                                  z_offset=cand_settings.z_offset, notify=note)
    references, candidates, kept = [], [], []  # kept: the worst frames so far, with their points for the picture
    for index, (frame_id, where, cloud) in enumerate(clouds):
        ref_boxes = ref_detector.detect(prepare_ref(cloud, where))
        points = prepare_cand(cloud, where)
        cand_boxes = cand_detector.detect(points)
        references.append(ref_boxes)
        candidates.append(cand_boxes)
        r = ref_boxes.select(ref_boxes.scores >= min_score)
        c = cand_boxes.select(cand_boxes.scores >= min_score)
        r_matched, c_matched = match_boxes(r, c)
        badness = (int((~r_matched).sum() + (~c_matched).sum()), -len(r))
        kept.append((badness, index, points, r, c, r_matched, c_matched))
        kept = sorted(kept, key=lambda k: (-k[0][0], k[0][1], k[1]))[:worst]
        if log is not None:
            log(f"  {frame_id}: reference {len(r)} boxes, candidate {len(c)}, {int(r_matched.sum())} reproduced")
    agreement = detection_agreement(references, candidates, ref_detector.class_names, min_score, breakdown=True)
    for entry, (frame_id, where, _) in zip(agreement["per_frame"], clouds):
        entry["frame_id"], entry["where"] = frame_id, where
    recall = agreement["reference_recall"]
    passed = bool(agreement["reference_boxes"] > 0 and recall >= threshold)
    result = {
        "reference": _describe_model(reference, ref_detector), "candidate": _describe_model(candidate, cand_detector),
        "source": described, "input_settings": {"reference": ref_settings.to_dict(),
                                                "candidate": cand_settings.to_dict()},
        "notes": notes, "threshold": threshold, "agreement": agreement,
        "worst_frames": [clouds[k[1]][0] for k in kept], "passed": passed,
    }
    result["verdict"] = verdict_line(result)
    if out is not None:
        out = Path(out)
        from ..io_utils import write_json_atomic
        from ..render import ComparisonPanel, render_comparison

        panels = [ComparisonPanel(points, r, c, rm, cm,
                                  f"{clouds[index][0]}: {int((~rm).sum())} missed, {int((~cm).sum())} extra "
                                  f"({len(r)} reference, {len(c)} candidate boxes)")
                  for _, index, points, r, c, rm, cm in kept]
        render_comparison(out / PICTURE_FILE, panels, title=f"{result['verdict']}\n(score >= {min_score:g}; "
                          "solid: reference, dotted: candidate)", reference_name="reference",
                          candidate_name="candidate")
        result["files"] = {"result": str(out / RESULT_FILE), "picture": str(out / PICTURE_FILE)}
        write_json_atomic(out / RESULT_FILE, json_ready(result))
    return result


def _model_sweeps(models, detectors):
    """The SweepConfig of the model that takes the most sweeps (its frames serve both: a model taking fewer keeps
    the newest of them), read from the loaded detectors or from the models' configs without loading them; None when
    a config is not readable that way (an OpenPCDet .pth)."""
    if detectors is not None:
        configs = [d.config for d in detectors]
    else:
        from .check import read_model_config

        try:
            configs = [read_model_config(str(m)) for m in models]
        except Exception:  # noqa: BLE001 - whatever stops the cheap read, loading the model says it properly
            return None
    from ..sweeps import SweepConfig

    return max((getattr(c, "sweeps", None) or SweepConfig() for c in configs), key=lambda s: s.count)


def _load_pair(reference: str, candidate: str, backend: str, device: str, threads: int | None):
    loaded = _load(reference, backend, device, threads)
    return loaded, loaded if candidate == reference else _load(candidate, backend, device, threads)


def _load(model: str, backend: str, device: str, threads: int | None):
    from ..runtime import Detector

    if threads and not (str(model).endswith(".lptq") and backend == "onnxruntime"):
        import torch

        torch.set_num_threads(threads)

    return Detector.load(model, backend if str(model).endswith(".lptq") else "auto", threads, device=device)


def verdict_line(result: dict) -> str:
    """PASS / FAIL with the figure it rests on, one line (also printed by the demo and calibrate.launch.py)."""
    a, threshold = result["agreement"], result["threshold"]
    if not a["reference_boxes"]:
        return (f"FAIL: the reference has no box with score >= {a['min_score']:g} on the {_frames(a['frames'])} "
                "compared, so nothing shows that the candidate holds; compare on frames with objects")
    figure = (f"the candidate reproduces {100 * a['reference_recall']:.1f} % of the reference's "
              f"{a['reference_boxes']} boxes on {_frames(a['frames'])}")
    if result["passed"]:
        return f"PASS: {figure} (threshold {100 * threshold:g} %)"
    return f"FAIL: {figure}, below the {100 * threshold:g} % threshold"


def _frames(count: int) -> str:
    return f"{count} frame" if count == 1 else f"{count} frames"


def _pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:.1f} %"


def _ap(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"


def format_report(result: dict) -> str:
    """The per-frame table, the class and range tables, the totals and the verdict."""
    a = result["agreement"]
    lines = [f"reference: {result['reference']}", f"candidate: {result['candidate']}",
             f"frames: {result['source']}",
             f"input: reference {_settings_text(result['input_settings']['reference'])}, candidate "
             f"{_settings_text(result['input_settings']['candidate'])}"]
    lines += [f"note: {n}" for n in result["notes"]]
    width = max([len(f["frame_id"]) for f in a["per_frame"]] + [5])
    lines.append(f"\n{'frame':<{width}}  reference  candidate  reproduced  missed  extra")
    for f in a["per_frame"]:
        lines.append(f"{f['frame_id']:<{width}}  {f['reference_boxes']:>9}  {f['other_boxes']:>9}  "
                     f"{_pct(f['reference_recall']):>10}  {f['missed']:>6}  {f['extra']:>5}")
    for title, table in (("class", a["by_class"]), ("range", a["by_range"])):
        lines.append(f"\n{'by ' + title:<12} reference  reproduced  candidate  with reference  AP vs reference")
        for key, t in table.items():
            lines.append(f"{key:<12} {t['reference_boxes']:>9}  {_pct(t['reference_recall']):>10}  "
                         f"{t['other_boxes']:>9}  {_pct(t['other_precision']):>14}  {_ap(t['ap_vs_reference']):>15}")
    lines.append(f"\ntotal: {a['matched']} of {a['reference_boxes']} reference boxes reproduced "
                 f"({_pct(a['reference_recall'])}; score >= {a['min_score']:g}, same class, centre within "
                 f"{a['max_distance_m']:g} m); {_pct(a['other_precision'])} of the candidate's {a['other_boxes']} "
                 f"boxes have a reference box; mAP with the reference as ground truth {_ap(a['map_vs_reference'])}")
    lines.append(result["verdict"])
    return "\n".join(lines)


def _settings_text(settings: dict) -> str:
    if settings == {"intensity_scale": 1.0, "z_offset": 0.0}:
        return "as recorded (none)"
    return f"intensity x {settings['intensity_scale']:.6g}, z {settings['z_offset']:+.3g} m"


def run(args) -> int:
    log = None if args.json else (lambda text: print(text, file=sys.stderr))
    result = run_compare(args.source, args.reference, args.candidate, frames=args.frames, topic=args.topic,
                         skip_first=args.skip_first, calibration_frames=args.exclude_calibration,
                         threshold=args.threshold, min_score=args.min_score, backend=args.backend,
                         device=args.device, threads=args.threads, intensity_scale=args.intensity_scale,
                         z_offset=args.z_offset, sim_config=args.sim_config, sim_split=args.sim_split,
                         worst=args.worst, out=args.out, log=log, sweep_period=args.sweep_period)
    if args.json:
        print(json.dumps(json_ready(result), indent=2))
    else:
        print(format_report(result))
        if args.out:
            print(f"wrote {result['files']['result']}, {result['files']['picture']} (worst frames: "
                  f"{', '.join(result['worst_frames'])})")
    return 0 if result["passed"] else 1
