"""Paired bootstrap of metric differences: exact against evaluate(), known answers, coverage, and `lidar-ptq eval
--reference` end to end."""

import argparse
import json
import math

import numpy as np
import pytest

from lidar_ptq_core import boxfile
from lidar_ptq_core.commands import eval as eval_command
from lidar_ptq_core.detections import Detections, GroundTruth
from lidar_ptq_core.evaluate import ClassOutcomes, MatchedFrames, evaluate, match_frames
from lidar_ptq_core.paired import (
    MetricSpec,
    default_metrics,
    metric_samples,
    paired_bootstrap,
    resample_counts,
)

CLASSES = ("Car", "Pedestrian")
SIZES = {"Car": (4.0, 2.0, 1.6), "Pedestrian": (0.8, 0.8, 1.8)}


def random_scenes(num_frames, seed, miss_rate=0.2, fp_per_frame=2.0, jitter=0.4):
    """Ground truth up to 70 m out (some ignored) and noisy detections of it: misses, centre jitter, FPs."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(num_frames):
        n = rng.integers(0, 6)
        labels = rng.integers(0, len(CLASSES), n)
        radius, angle = rng.uniform(3, 70, n), rng.uniform(-np.pi, np.pi, n)
        boxes = np.zeros((n, 7))
        boxes[:, 0], boxes[:, 1] = radius * np.cos(angle), radius * np.sin(angle)
        boxes[:, 3:6] = [SIZES[CLASSES[c]] for c in labels] if n else np.zeros((0, 3))
        boxes[:, 6] = rng.uniform(-np.pi, np.pi, n)
        gts.append(GroundTruth(boxes, labels, CLASSES, ignore=rng.random(n) < 0.1))
        found = rng.random(n) >= miss_rate
        pred = boxes[found].copy()
        pred[:, :2] += rng.normal(0, jitter, (len(pred), 2))
        num_fp = rng.poisson(fp_per_frame)
        fp = np.zeros((num_fp, 7))
        fp_labels = rng.integers(0, len(CLASSES), num_fp)
        fp[:, :2] = rng.uniform(-70, 70, (num_fp, 2))
        fp[:, 3:6] = [SIZES[CLASSES[c]] for c in fp_labels] if num_fp else np.zeros((0, 3))
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(pred)), rng.uniform(0.05, 0.8, num_fp)])
        dets.append(Detections(np.concatenate([pred, fp]), scores, np.concatenate([labels[found], fp_labels]),
                               CLASSES))
    return dets, gts


def headline(result):
    return {"mAP": result.distance_map["all"], "BEV IoU mAP": result.iou_map["all"],
            "50m+ mAP": result.distance_map["50m+"]}


def test_counts_of_one_reproduce_evaluate_exactly():
    dets, gts = random_scenes(60, seed=1)
    matched = match_frames(dets, gts)
    assert [m.name for m in default_metrics(matched)] == ["mAP", "BEV IoU mAP", "50m+ mAP"]
    samples = metric_samples(matched, np.ones((1, 60), np.int64))
    for name, value in headline(evaluate(dets, gts)).items():
        assert samples[name][0] == pytest.approx(value, abs=1e-12), name


def test_integer_counts_equal_evaluate_on_the_repeated_frames():
    # Continuous random scores: no ties between different predictions, so repeating a frame k times in the list
    # that evaluate() sees is exactly a weight of k.
    dets, gts = random_scenes(25, seed=2)
    matched = match_frames(dets, gts)
    counts = resample_counts(25, num_resamples=6, seed=3)
    assert counts.shape == (6, 25) and (counts.sum(axis=1) == 25).all() and (counts == 0).any()
    samples = metric_samples(matched, counts)
    for row, frame_counts in enumerate(counts):
        frames = np.repeat(np.arange(25), frame_counts)
        expected = headline(evaluate([dets[i] for i in frames], [gts[i] for i in frames], list(CLASSES)))
        for name, value in expected.items():
            assert samples[name][row] == pytest.approx(value, abs=1e-12), (row, name)


def test_identical_sets_differ_by_zero_with_a_zero_width_interval():
    dets, gts = random_scenes(40, seed=4)
    matched = match_frames(dets, gts)
    for diff in paired_bootstrap(matched, matched, num_resamples=200, seed=5):
        assert diff.difference == 0.0 and diff.low == 0.0 and diff.high == 0.0
        assert diff.reference == diff.candidate and not math.isnan(diff.reference)


def test_a_set_worse_on_half_the_frames_gives_the_known_difference_and_an_interval_below_zero():
    dets, gts = random_scenes(120, seed=6, miss_rate=0.0, fp_per_frame=0.5, jitter=0.1)
    worse = [Detections.empty(CLASSES) if i % 2 else d for i, d in enumerate(dets)]  # half the frames blind
    reference, candidate = match_frames(dets, gts), match_frames(worse, gts)
    full, blind = headline(evaluate(dets, gts)), headline(evaluate(worse, gts))
    expected = {name: blind[name] - full[name] for name in full}
    results = {d.metric: d for d in paired_bootstrap(reference, candidate, num_resamples=500, seed=7)}
    for name, value in expected.items():
        diff = results[name]
        assert diff.difference == pytest.approx(value, abs=1e-12)
        assert diff.low <= diff.difference <= diff.high
        assert diff.high < 0  # losing every box of half the frames is a real loss, whatever the resample
    line = results["mAP"].format("blind", "full")
    assert line.startswith(f"blind - full: {100 * expected['mAP']:+.2f} mAP [95 % CI ")


def single_class_outcomes(detected: np.ndarray) -> MatchedFrames:
    """One Car GT per frame, detected (one TP at score 0.9) where `detected`, nothing else: AP = detected share."""
    num_frames, num_criteria = len(detected), 2  # one distance threshold and IoU
    frames = np.flatnonzero(detected)
    outcomes = ClassOutcomes(
        frame=frames, score=np.full(len(frames), 0.9), pred_bin=np.zeros(len(frames), np.int64),
        status=np.ones((num_criteria, len(frames)), np.int64),
        matched_bin=np.zeros((num_criteria, len(frames)), np.int64),
        gt_per_frame=np.stack([np.ones(num_frames, np.int64), np.ones(num_frames, np.int64),
                               np.zeros(num_frames, np.int64)]),
    )
    return MatchedFrames(num_frames, ["Car"], ["all", "0-30m", "30m+"], [2.0], {"Car": outcomes})


def test_interval_width_and_coverage_match_a_proportion():
    # Reference detects every GT (AP 1), candidate each with probability q (AP = share found), so the difference
    # is a proportion minus 1: its true value is q - 1 and a 95 % interval should be about 2 * 1.96 * its
    # standard error wide and hold q - 1 in about 95 % of data sets.
    rng = np.random.default_rng(8)
    num_frames, q, repeats = 200, 0.7, 200
    everything = single_class_outcomes(np.ones(num_frames, bool))
    covered = 0
    for repeat in range(repeats):
        detected = rng.random(num_frames) < q
        diff = paired_bootstrap(everything, single_class_outcomes(detected), num_resamples=400, seed=repeat,
                                metrics=[MetricSpec("mAP", "distance", "all")])[0]
        share = detected.mean()
        assert diff.metric == "mAP" and diff.difference == pytest.approx(share - 1, abs=1e-12)
        expected_width = 2 * 1.96 * math.sqrt(share * (1 - share) / num_frames)
        assert diff.high - diff.low == pytest.approx(expected_width, rel=0.25)
        covered += diff.low <= q - 1 <= diff.high
    assert 0.88 <= covered / repeats <= 0.99


def test_interval_narrows_with_more_frames():
    widths = []
    for num_frames in (100, 400):
        dets, gts = random_scenes(num_frames, seed=9)
        worse_dets, _ = random_scenes(num_frames, seed=9, miss_rate=0.35)  # same scenes, more misses
        diff = paired_bootstrap(match_frames(dets, gts), match_frames(worse_dets, gts), num_resamples=400)[0]
        widths.append(diff.high - diff.low)
    assert widths[1] < 0.75 * widths[0]  # about half: the error falls as 1 / sqrt(frames)


def test_unpaired_inputs_and_bad_settings_are_refused():
    dets, gts = random_scenes(10, seed=10)
    matched = match_frames(dets, gts)
    with pytest.raises(ValueError, match="same frames"):
        paired_bootstrap(matched, match_frames(dets[:9], gts[:9]))
    other_dets, other_gts = random_scenes(10, seed=11)
    with pytest.raises(ValueError, match="different ground truth"):
        paired_bootstrap(matched, match_frames(other_dets, other_gts, list(CLASSES)))
    # The same ground-truth counts in every frame but one box elsewhere: only the per-frame digests can tell
    moved = gts[3].boxes.copy()
    moved[:, 0] += 0.5
    shifted = [*gts[:3], GroundTruth(moved, gts[3].labels, gts[3].class_names, gts[3].num_points, gts[3].ignore),
               *gts[4:]]
    with pytest.raises(ValueError, match="1 frame\\(s\\) differ, the first at index 3"):
        paired_bootstrap(matched, match_frames(dets, shifted))
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap(matched, matched, num_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(matched, matched, confidence=1.0)


# --- lidar-ptq eval --reference ----------------------------------------------------------------------------------


def write_box_dirs(tmp_path, dets_by_name, gts):
    for i, gt in enumerate(gts):
        boxfile.write_ground_truth(tmp_path / "gt" / f"f{i:03d}.json", f"f{i:03d}", gt)
    for name, dets in dets_by_name.items():
        for i, det in enumerate(dets):
            if len(det):  # a frame without a file counts as no detections
                boxfile.write_detections(tmp_path / name / f"f{i:03d}.json", f"f{i:03d}", det)


def run_eval(argv):
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    return eval_command.run(parser.parse_args(argv))


def test_eval_cli_reference_prints_both_tables_and_paired_lines(tmp_path, capsys):
    dets, gts = random_scenes(30, seed=12, miss_rate=0.0, fp_per_frame=0.5, jitter=0.1)
    worse = [Detections.empty(CLASSES) if i % 3 == 0 else d for i, d in enumerate(dets)]
    write_box_dirs(tmp_path, {"fp32": dets, "int8": worse}, gts)
    out = tmp_path / "paired.json"
    argv = ["--pred", str(tmp_path / "int8"), "--reference", str(tmp_path / "fp32"), "--gt", str(tmp_path / "gt"),
            "--out", str(out), "--bootstrap", "300", "--region", "-80", "-80", "80", "80"]
    assert run_eval(argv) == 0
    text = capsys.readouterr().out
    assert eval_command._distinct_names(tmp_path / "int8" / "pred", tmp_path / "fp32" / "pred") == ("int8", "fp32")
    assert text.count("Centre-distance AP") == 2
    doc = json.loads(out.read_text())
    full, blind = evaluate(dets, gts), evaluate(worse, gts)
    assert doc["reference"]["distance_map"]["all"] == pytest.approx(full.distance_map["all"], abs=1e-9)
    assert doc["prediction"]["distance_map"]["all"] == pytest.approx(blind.distance_map["all"], abs=1e-9)
    paired = {row["metric"]: row for row in doc["paired"]}
    assert set(paired) == {"mAP", "BEV IoU mAP", "50m+ mAP"} and paired["mAP"]["num_resamples"] == 300
    delta = blind.distance_map["all"] - full.distance_map["all"]
    assert paired["mAP"]["difference"] == pytest.approx(delta, abs=1e-9)
    assert paired["mAP"]["low"] <= delta <= paired["mAP"]["high"] < 0
    line = next(line for line in text.splitlines() if line.startswith("int8 - fp32:") and line.endswith("]")
                and " mAP [" in line and "IoU" not in line and "50m+" not in line)
    assert line == (f"int8 - fp32: {100 * delta:+.2f} mAP [95 % CI {100 * paired['mAP']['low']:+.2f}, "
                    f"{100 * paired['mAP']['high']:+.2f}]")
    # Without --reference: one table and the plain result document, as before.
    assert run_eval(["--pred", str(tmp_path / "int8"), "--gt", str(tmp_path / "gt"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("Centre-distance AP") == 1
    assert "paired" not in json.loads(out.read_text()) and "distance_map" in json.loads(out.read_text())
    with pytest.raises(ValueError, match="--bootstrap"):
        run_eval(["--pred", str(tmp_path / "int8"), "--gt", str(tmp_path / "gt"), "--bootstrap", "500"])
