"""What the benchmark scripts (benchmarks/*.py) share: how a PTQ row is named and parsed, where its files go, how its
results are stored and how a model is scored, so that every figure in docs/benchmarks/ comes from one tested
definition (test/test_benchmark_helpers.py) and no script imports another.

The scripts run from a source checkout (the editable install of `./dev`); the folders below are the checkout's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .evaluate import evaluate
from .io_utils import write_bytes_atomic
from .quant.reconstruct import fp_references, network_loss
from .recipes.centerpoint import TGPLHook
from .runtime import Detector
from .runtime.run_dataset import run_detector_on_dataset
from .sim import SimDataset, load_sim_config
from .training.train import TrainConfig
from .voxelize import voxelize_clouds

CHECKOUT = Path(__file__).resolve().parents[1]
ROW_DIR = CHECKOUT / "runs" / "ptq_bench"  # each quantized row's work folder and checkpoint, per model
DEFAULT_CALIB_FRAMES = 256  # a row on this many frames from calib frame 0 gets no data tag in its file names
RECIPE_SETTINGS = ("tgpl_score_threshold", "tgpl_top_k")  # settings of the CenterPoint recipe, not of QuantConfig


# -- naming a row ------------------------------------------------------------------------------------------------------
def parse_method_spec(spec: str) -> tuple[str, dict, dict]:
    """'lidar-ptq' or 'lidar-ptq:tgpl_steps=400,tgpl_schedule=cosine' -> (preset, overrides of its QuantConfig
    settings, the CenterPoint recipe's settings); the whole spec names the row, so variants of a preset are rows of
    their own."""
    import yaml

    method, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bad setting {item!r} in {spec!r}: expected key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    recipe = {k: overrides.pop(k) for k in RECIPE_SETTINGS if k in overrides}
    return method, overrides, recipe


def data_tag(calib_frames: int, calib_start: int) -> str:
    """Suffix of a row's files when its calibration data is not the default (256 frames from calib frame 0), so
    that rows of one spec on other data never overwrite each other's checkpoint, report or evaluation."""
    return ((f"_{calib_frames}f" if calib_frames != DEFAULT_CALIB_FRAMES else "")
            + (f"_calib{calib_start}" if calib_start else ""))


def file_stem(spec: str) -> str:
    """A row spec as a file name: every character other than letters, digits and '-_.' becomes '_'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


def row_stem(spec: str, calib_frames: int, calib_start: int = 0) -> str:
    """The name of a row's files: its work folder and checkpoint under ROW_DIR/<model>/, its report and evaluation."""
    return file_stem(spec) + data_tag(calib_frames, calib_start)


# -- storing rows ------------------------------------------------------------------------------------------------------
def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a results file, one JSON object a line; no file yet -> no rows."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def append_jsonl(path: str | Path, row: dict) -> None:
    """Add one row to a results file. The whole file is replaced atomically, so a reader (another benchmark reading
    the rows while this one runs) never sees half a line."""
    path = Path(path)
    existing = path.read_bytes() if path.is_file() else b""
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    write_bytes_atomic(path, existing + (json.dumps(row) + "\n").encode())


def row_of(method: str, result, calib_frames: int, quant_seconds: float, median_ms: float) -> dict:
    """A results row from an evaluation (lidar_ptq_core.evaluate's result: distance_map, iou_map, ranges)."""
    return {
        "method": method,
        "mAP": result.distance_map["all"],
        "bev_iou_mAP": result.iou_map["all"],
        "mAP_by_range": {r: result.distance_map[r] for r in result.ranges if r != "all"},
        "calib_frames": calib_frames,
        "quant_seconds": round(quant_seconds, 1),
        "median_ms": round(median_ms, 1),
    }


def format_rows(rows: list[dict], header: str) -> str:
    """The table of rows under `header`: mAP in %, its difference to the fp32 row (nan without one), BEV IoU mAP, mAP
    by range, calibration frames and quantization seconds."""
    ranges = list(rows[0]["mAP_by_range"]) if rows else []
    fp32 = next((r for r in rows if r["method"] == "fp32"), None)
    width = max([18] + [len(r["method"]) for r in rows])
    lines = [header, "", f"{'method':<{width}} {'mAP':>6} {'d mAP':>6} {'BEV IoU':>8} "
             + " ".join(f"{r:>7}" for r in ranges) + f" {'calib':>6} {'quant s':>8}"]
    for row in rows:
        delta = row["mAP"] - fp32["mAP"] if fp32 else float("nan")
        lines.append(f"{row['method']:<{width}} {100 * row['mAP']:6.1f} {100 * delta:+6.1f} "
                     f"{100 * row['bev_iou_mAP']:8.1f} "
                     + " ".join(f"{100 * row['mAP_by_range'][r]:7.1f}" for r in ranges)
                     + f" {row['calib_frames']:>6} {row['quant_seconds']:>8.0f}")
    return "\n".join(lines) + "\n"


def first_reaching(history: list[dict], key: str, target: float) -> dict | None:
    """The first entry of a QAT history whose `key` is at or above `target` (None when none is)."""
    return next((h for h in history if h[key] >= target), None)


# -- data and scoring --------------------------------------------------------------------------------------------------
def calibration_batches(config, calib) -> list[dict]:
    """One collated batch per calibration frame, as every PTQ row of the benchmarks uses them."""
    return [voxelize_clouds([calib[i].points], config.voxelization, config.num_point_features)[0]
            for i in range(len(calib))]


def calib_window_batches(model, start: int, count: int) -> list[dict]:
    """Collated batches of sim calib frames start..start+count-1 for `model`, one per frame."""
    data = SimDataset("calib", count, load_sim_config("default"), start=start)
    data.prepare(num_workers=1)
    return calibration_batches(model.config, data)


def evaluate_network(net, dataset):
    """(evaluation, detection run) of a network on a sim split, inside the detector's region: the benchmarks' one
    way to score a model, so FP32, PTQ, QAT and peer rows are comparable."""
    detector = Detector(net)
    run = run_detector_on_dataset(detector, dataset, progress=False)
    return evaluate(run.predictions, run.ground_truths, class_names=detector.class_names,
                    region=detector.evaluation_region), run


def detect_into_box_files(make_detector, dataset, pred_dir: Path, gt_dir: Path, label: str) -> list[float]:
    """Detect the frames of `dataset` that have no box file in `pred_dir` yet (an interrupted run resumes), writing
    each frame's ground truth to `gt_dir` where it is missing too. `make_detector()` is called only when a frame is
    missing, so a complete folder loads no model. Returns the seconds per detected frame."""
    import time

    import numpy as np

    from .boxfile import write_detections, write_ground_truth

    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    todo = [i for i in range(len(dataset)) if not (pred_dir / f"{dataset.frame_id(i)}.json").is_file()]
    if not todo:
        return []
    pred_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    detector = make_detector()
    seconds = []
    for count, i in enumerate(todo, 1):
        frame = dataset[i]
        started = time.perf_counter()
        det = detector.detect(frame.points)
        seconds.append(time.perf_counter() - started)
        gt_path = gt_dir / f"{frame.frame_id}.json"
        if not gt_path.is_file():
            write_ground_truth(gt_path, frame.frame_id, frame.gt)
        write_detections(pred_dir / f"{frame.frame_id}.json", frame.frame_id, det)
        if count % 100 == 0 or count == len(todo):
            print(f"  {label}: {count}/{len(todo)} frames, {1000 * np.median(seconds):.0f} ms median", flush=True)
    return seconds


def scores_on(model, dataset) -> tuple[float, float]:
    """(centre-distance mAP, BEV IoU mAP), fractions."""
    result = evaluate_network(model, dataset)[0]
    return result.distance_map["all"], result.iou_map["all"]


def held_out_scorer(fp32, start: int, count: int):
    """A function scoring an INT8 network by its mean TGPL loss against `fp32` on calib frames start..start+count-1
    (the FP32 references and pseudo-labels are computed once, here)."""
    def forward(model, batch):
        return model(batch)

    batches = calib_window_batches(fp32, start, count)
    hook = TGPLHook(fp32)
    references = fp_references(fp32, batches, forward, hook)
    return lambda net: network_loss(net, batches, forward, hook, references)


def same_model(net: torch.nn.Module, saved: Path) -> str:
    """Whether `net` is exactly (every tensor equal) the checkpoint saved at `saved`, in words for a report."""
    if not saved.is_file():
        return "no saved row to compare"
    reference = load_file(str(saved))
    state = net.state_dict()
    if set(reference) != set(state):
        return "NOT the same model (other tensors)"
    differ = [k for k, v in state.items() if not torch.equal(v.detach().cpu(), reference[k])]
    return "same model as the accuracy row" if not differ else f"NOT the same model ({len(differ)} tensors differ)"


def qat_train_config(steps: int, lr: float, checkpoint_every: int) -> TrainConfig:
    """QAT's fine-tuning settings: batch 2, a one-cycle schedule that starts at `lr` (no warm-up to speak of)."""
    return TrainConfig(steps=steps, batch_size=2, lr=lr, pct_start=0.02, div_factor=1.0,
                       checkpoint_every=checkpoint_every, log_every=10, loc_weight=1.0)


def split_row_key(row: dict) -> tuple:
    """What makes two rows of benchmarks/test_split_headline.py the same measurement."""
    return row["checkpoint"], row["sha256"], row.get("reference_sha256"), row["frames"], row["sim_fingerprint"]


def format_split_rows(rows: list[dict], header: str) -> str:
    """The table of benchmarks/test_split_headline.py: one row per checkpoint, FP32 rows without differences, each
    INT8 row with its paired intervals and its agreement with FP32 (the share of FP32's confident boxes it
    reproduces, agreement.py; '-' for rows kept before it was measured); then AP per class and how each checkpoint
    was calibrated."""
    width = max([24] + [len(r["checkpoint"]) + 7 for r in rows])
    far = rows[0]["far_range"] if rows else "far"
    columns = ("mAP", "BEV IoU", far)
    lines = [header, "", f"{'checkpoint':<{width}} {'frames':>6} " + " ".join(f"{c:>7}" for c in columns)
             + "".join(f"  {'d ' + c + ' [95 % CI]':>24}" for c in columns) + f" {'agree':>6} {'ms':>6}"]
    for row in rows:
        name = row["checkpoint"] + (" (fp32)" if row["paired"] is None else "")
        values = (row["mAP"], row["bev_iou_mAP"], row["far_mAP"])
        cells = " ".join(f"{100 * v:7.2f}" for v in values)
        if row["paired"] is None:
            deltas = "".join(f"  {'':>24}" for _ in columns)
        else:
            deltas = "".join(f"  {_interval(d):>24}" for d in row["paired"])
        ms = "-" if row["median_ms"] is None else f"{row['median_ms']:.0f}"
        agreement = row.get("agreement")
        agree = f"{100 * agreement['fp32_reproduced']:.1f}" if agreement else ("" if row["paired"] is None else "-")
        lines.append(f"{name:<{width}} {row['frames']:>6} {cells}{deltas} {agree:>6} {ms:>6}")
    lines += _class_lines(rows)
    made = [f"  {row['checkpoint']}: {row['calibration']}" for row in rows if row.get("calibration")]
    if made:
        lines += ["", "calibration (from each checkpoint's recorded provenance):", *made]
    return "\n".join(lines) + "\n"


def _class_lines(rows: list[dict]) -> list[str]:
    """Centre-distance AP per class (INT8 - FP32 in brackets): a mAP difference is often one class's."""
    fp32 = {r["sha256"]: r.get("class_ap") for r in rows if r["paired"] is None}
    with_classes = [r for r in rows if r.get("class_ap")]
    if not with_classes:
        return []
    names = list(with_classes[0]["class_ap"])
    width = max(24, *(len(r["checkpoint"]) + 7 for r in with_classes))
    lines = ["", "centre-distance AP per class in % (INT8 - FP32):",
             f"{'checkpoint':<{width}} " + " ".join(f"{n:>16}" for n in names)]
    for row in with_classes:
        reference = fp32.get(row.get("reference_sha256")) if row["paired"] is not None else None
        cells = []
        for name in names:
            ap = row["class_ap"].get(name)
            cell = "-" if ap is None else f"{100 * ap:.2f}"
            if ap is not None and reference and reference.get(name) is not None:
                cell += f" ({100 * (ap - reference[name]):+.2f})"
            cells.append(f"{cell:>16}")
        lines.append(f"{row['checkpoint']:<{width}} " + " ".join(cells))
    return lines


def _interval(d: dict) -> str:
    return f"{100 * d['difference']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def changed_settings(settings: dict, reference: dict, keys) -> list[str]:
    """The `keys` whose quantization settings differ between two settings dicts (as JSON or QuantConfig.to_dict gives
    them: lists and tuples compare alike; a key missing on one side differs)."""
    missing = object()

    def plain(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    return [k for k in keys if plain(settings.get(k, missing)) != plain(reference.get(k, missing))]
