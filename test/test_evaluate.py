import argparse
import json
import math

import numpy as np
import pytest

from lidar_ptq_core import boxfile
from lidar_ptq_core.commands import eval as eval_command
from lidar_ptq_core.detections import Detections, GroundTruth
from lidar_ptq_core.evaluate import (
    EvalResult,
    average_precision,
    evaluate,
    evaluate_dirs,
    format_table,
)

CLASSES = ("Car", "Truck", "Pedestrian", "Cyclist")
SIZES = {
    "Car": (4.0, 2.0, 1.6),
    "Truck": (8.0, 2.5, 3.0),
    "Pedestrian": (0.8, 0.8, 1.8),
    "Cyclist": (1.8, 0.6, 1.7),
    "Bus": (12.0, 2.5, 3.0),
}


def make_box(cls, x, y, yaw=0.0):
    l, w, h = SIZES[cls]
    return [x, y, 0.0, l, w, h, yaw]


def make_gt(objects, class_names=CLASSES):
    """objects: (class, x, y) or (class, x, y, ignore)."""
    boxes = [make_box(o[0], o[1], o[2]) for o in objects]
    labels = [class_names.index(o[0]) for o in objects]
    ignore = [bool(o[3]) if len(o) > 3 else False for o in objects]
    return GroundTruth(np.array(boxes).reshape(-1, 7), labels, class_names, ignore=np.array(ignore, bool))


def make_det(objects, class_names=CLASSES):
    """objects: (class, x, y, score)."""
    boxes = [make_box(o[0], o[1], o[2]) for o in objects]
    labels = [class_names.index(o[0]) for o in objects]
    scores = [o[3] for o in objects]
    return Detections(np.array(boxes).reshape(-1, 7), scores, labels, class_names)


def car_ap(result, criterion="distance", rng="all"):
    c = result.classes["Car"]
    return c.distance_ap[rng] if criterion == "distance" else c.iou_ap[rng]


def is_nan(v):
    return isinstance(v, float) and math.isnan(v)


# --- average_precision on its own ---------------------------------------------------------------------------


def test_average_precision_hand_values():
    # FP, TP, FP, TP against 4 GT: precision 0, 1/2, 1/3, 1/2 at recall 0, 1/4, 1/4, 1/2.
    # Envelope is 1/2 up to recall 1/2, 0 after: AP = 1/2 * 1/2 = 0.25.
    assert average_precision([0.9, 0.8, 0.7, 0.6], [False, True, False, True], 4) == pytest.approx(0.25)
    # Unsorted input is sorted by score first: same predictions shuffled.
    assert average_precision([0.7, 0.6, 0.9, 0.8], [False, True, False, True], 4) == pytest.approx(0.25)
    assert average_precision([], [], 3) == 0.0
    assert math.isnan(average_precision([0.5], [False], 0))


# --- known answers through evaluate() -----------------------------------------------------------------------


def test_perfect_predictions_give_ap_one_everywhere():
    gts = [
        make_gt([("Car", 10, 0), ("Pedestrian", 5, 3), ("Car", 0, 40)]),
        make_gt([("Truck", -60, 5), ("Cyclist", 20, -20), ("Car", 35, 0)]),
        make_gt([]),
    ]
    dets = [
        make_det([("Car", 10, 0, 0.9), ("Pedestrian", 5, 3, 0.8), ("Car", 0, 40, 0.3)]),
        make_det([("Truck", -60, 5, 0.5), ("Cyclist", 20, -20, 0.6), ("Car", 35, 0, 0.7)]),
        make_det([]),
    ]
    result = evaluate(dets, gts, CLASSES)
    assert result.ranges == ["all", "0-30m", "30-50m", "50m+"]
    for name in CLASSES:
        c = result.classes[name]
        for rng in result.ranges:
            if c.num_gt[rng] == 0:
                assert is_nan(c.distance_ap[rng]) and is_nan(c.iou_ap[rng])
            else:
                assert c.distance_ap[rng] == pytest.approx(1.0)
                assert c.iou_ap[rng] == pytest.approx(1.0)
                assert all(v == pytest.approx(1.0) for v in c.distance_ap_by_threshold[rng].values())
    assert result.classes["Car"].num_gt == {"all": 3, "0-30m": 1, "30-50m": 2, "50m+": 0}
    for rng in result.ranges:
        assert result.distance_map[rng] == pytest.approx(1.0)
        assert result.iou_map[rng] == pytest.approx(1.0)


def test_shift_of_075m_matches_at_1_2_4_but_not_05():
    gts = [make_gt([("Car", 10, 0)])]
    dets = [make_det([("Car", 10.75, 0, 0.9)])]
    result = evaluate(dets, gts, CLASSES)
    by_t = result.classes["Car"].distance_ap_by_threshold["all"]
    assert by_t == {"0.5": 0.0, "1": 1.0, "2": 1.0, "4": 1.0}
    assert car_ap(result) == pytest.approx(0.75)  # (0 + 1 + 1 + 1) / 4
    # The 4 x 2 car shifted 0.75 m along its length: IoU = 3.25*2 / (8 + 8 - 6.5) = 6.5 / 9.5 = 0.684 < 0.7.
    assert car_ap(result, "iou") == 0.0
    # With a 0.5 IoU threshold for Car the same prediction is a TP.
    assert car_ap(evaluate(dets, gts, CLASSES, iou_thresholds={"Car": 0.5}), "iou") == 1.0


def test_half_of_the_ground_truth_missed_gives_half():
    # 4 GT over two frames, 2 found: recall reaches 1/2 at precision 1, then the envelope is 0: AP = 0.5.
    gts = [make_gt([("Car", 10, 0), ("Car", 20, 5)]), make_gt([("Car", -10, 0), ("Car", 0, -15)])]
    dets = [make_det([("Car", 10, 0, 0.9)]), make_det([("Car", 0, -15, 0.4)])]
    result = evaluate(dets, gts, CLASSES)
    assert car_ap(result) == pytest.approx(0.5)
    assert car_ap(result, "iou") == pytest.approx(0.5)


def test_duplicate_prediction_is_a_false_positive():
    gts = [make_gt([("Car", 10, 0), ("Car", 20, 5)])]
    # In score order: TP (0.9), duplicate of the same car (0.8) = FP, TP (0.7).
    # Points (recall, precision): (1/2, 1), (1/2, 1/2), (1, 2/3). Envelope: 1 on [0, 1/2], 2/3 on (1/2, 1].
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    dets = [make_det([("Car", 10, 0, 0.9), ("Car", 10.1, 0, 0.8), ("Car", 20, 5, 0.7)])]
    result = evaluate(dets, gts, CLASSES)
    assert car_ap(result) == pytest.approx(5 / 6)
    assert car_ap(result, "iou") == pytest.approx(5 / 6)
    # The same duplicate scored last: TP, TP, FP; recall 1 is reached at precision 1: AP = 1.
    dets = [make_det([("Car", 10, 0, 0.9), ("Car", 10.1, 0, 0.6), ("Car", 20, 5, 0.7)])]
    assert car_ap(evaluate(dets, gts, CLASSES)) == pytest.approx(1.0)


def test_score_order_of_a_false_positive_matters():
    gts = [make_gt([("Car", 10, 0), ("Car", 20, 5)])]
    # FP (0.95) first: points (0, 0), (1/2, 1/2), (1, 2/3); the envelope is 2/3 over all recall: AP = 2/3.
    high = [make_det([("Car", -20, 0, 0.95), ("Car", 10, 0, 0.9), ("Car", 20, 5, 0.8)])]
    # Same FP scored 0.1, last: TP, TP, FP: AP = 1.
    low = [make_det([("Car", -20, 0, 0.1), ("Car", 10, 0, 0.9), ("Car", 20, 5, 0.8)])]
    assert car_ap(evaluate(high, gts, CLASSES)) == pytest.approx(2 / 3)
    assert car_ap(evaluate(low, gts, CLASSES)) == pytest.approx(1.0)
    assert car_ap(evaluate(high, gts, CLASSES), "iou") == pytest.approx(2 / 3)


def test_score_order_is_dataset_wide_not_per_frame():
    # Frame 0: one TP at 0.5. Frame 1: an FP at 0.9 and a TP at 0.3. Global order FP, TP, TP (as above): AP 2/3.
    gts = [make_gt([("Car", 10, 0)]), make_gt([("Car", 20, 5)])]
    dets = [make_det([("Car", 10, 0, 0.5)]), make_det([("Car", -20, 0, 0.9), ("Car", 20, 5, 0.3)])]
    assert car_ap(evaluate(dets, gts, CLASSES)) == pytest.approx(2 / 3)


def test_predictions_match_only_within_their_frame():
    gts = [make_gt([("Car", 10, 0)]), make_gt([])]
    dets = [make_det([]), make_det([("Car", 10, 0, 0.9)])]
    result = evaluate(dets, gts, CLASSES)
    assert car_ap(result) == 0.0 and car_ap(result, "iou") == 0.0


def test_greedy_distance_matching_takes_the_closest_ground_truth():
    # GT at x = 0 and x = 1.5 (y = 20). Prediction p1 (0.9) at x = 0.9: 0.9 from GT0, 0.6 from GT1.
    # Prediction p2 (0.8) at x = 1.6: 1.6 from GT0, 0.1 from GT1.
    # 0.5 m: p1 matches nothing (FP); p2 -> GT1 (TP). FP, TP: AP = 1/2 * 1/2 = 0.25.
    # 1 m: p1 -> GT1 (closest); p2 is 1.6 from the remaining GT0 -> FP. TP, FP: AP = 0.5.
    # 2 m: p1 -> GT1, p2 -> GT0 (1.6 <= 2). AP = 1.   4 m: same, AP = 1.
    # Class AP = (0.25 + 0.5 + 1 + 1) / 4 = 0.6875.
    gts = [make_gt([("Pedestrian", 0, 20), ("Pedestrian", 1.5, 20)])]
    dets = [make_det([("Pedestrian", 0.9, 20, 0.9), ("Pedestrian", 1.6, 20, 0.8)])]
    c = evaluate(dets, gts, CLASSES).classes["Pedestrian"]
    assert c.distance_ap_by_threshold["all"] == pytest.approx({"0.5": 0.25, "1": 0.5, "2": 1.0, "4": 1.0})
    assert c.distance_ap["all"] == pytest.approx(0.6875)


def test_iou_matching_takes_the_highest_iou():
    # Two 4 x 2 cars at x = 0 and x = 3 (IoU 1/7 with each other). p1 (0.9) at x = 2.5: IoU with GT at 3 is
    # 3.5*2 / (16 - 7) = 7/9; with GT at 0 it is 1.5*2 / 13 = 3/13. It takes GT at 3. p2 (0.8) at x = 0.2 then
    # takes GT at 0 (IoU 3.8*2 / 8.4 = 0.905). Both TP: AP 1.
    gts = [make_gt([("Car", 0, 0), ("Car", 3, 0)])]
    dets = [make_det([("Car", 2.5, 0, 0.9), ("Car", 0.2, 0, 0.8)])]
    assert car_ap(evaluate(dets, gts, CLASSES), "iou") == pytest.approx(1.0)


def test_ignored_ground_truth_neither_helps_nor_hurts():
    base_gt = [make_gt([("Car", 10, 0)])]
    base_det = [make_det([("Car", 10, 0, 0.8)])]
    assert car_ap(evaluate(base_det, base_gt, CLASSES)) == 1.0

    # Does not hurt: an ignored car left undetected is not in the recall denominator.
    gts = [make_gt([("Car", 10, 0), ("Car", 30, 30, True)])]
    result = evaluate(base_det, gts, CLASSES)
    assert car_ap(result) == 1.0 and car_ap(result, "iou") == 1.0
    assert result.classes["Car"].num_gt["all"] == 1 and result.classes["Car"].num_ignored_gt == 1
    # Same frame with the car not ignored: 1 of 2 found, AP 0.5.
    assert car_ap(evaluate(base_det, [make_gt([("Car", 10, 0), ("Car", 30, 30)])], CLASSES)) == 0.5

    # Does not hurt: a high-scoring detection of the ignored car is dropped, not an FP.
    dets = [make_det([("Car", 30, 30, 0.99), ("Car", 10, 0, 0.8)])]
    result = evaluate(dets, gts, CLASSES)
    assert car_ap(result) == 1.0 and car_ap(result, "iou") == 1.0
    assert result.classes["Car"].num_predictions["all"] == 2

    # Does not help: detecting only the ignored car while missing the real one gives AP 0, not credit.
    dets = [make_det([("Car", 30, 30, 0.99)])]
    assert car_ap(evaluate(dets, gts, CLASSES)) == 0.0

    # A class whose only GT are ignored has no AP and is left out of the mAP.
    result = evaluate([make_det([("Truck", 0, 10, 0.9)])], [make_gt([("Truck", 0, 10, True)])], CLASSES)
    assert is_nan(result.classes["Truck"].distance_ap["all"]) and is_nan(result.distance_map["all"])


def test_range_bins():
    # GT cars at 10 m, 40 m and 60 m; detections: 10 m (0.9), 60 m (0.8), and an FP at (0, 45) (0.7, range 45 m).
    gts = [make_gt([("Car", 10, 0), ("Car", 40, 0)]), make_gt([("Car", 60, 0)])]
    dets = [make_det([("Car", 10, 0, 0.9), ("Car", 0, 45, 0.7)]), make_det([("Car", 60, 0, 0.8)])]
    result = evaluate(dets, gts, CLASSES)
    c = result.classes["Car"]
    for criterion in ("distance", "iou"):
        # all: TP, TP, FP against 3 GT: precision 1 up to recall 2/3, then 0: AP = 2/3.
        assert car_ap(result, criterion, "all") == pytest.approx(2 / 3)
        assert car_ap(result, criterion, "0-30m") == 1.0  # its one GT found, the FP at 45 m is not in this bin
        assert car_ap(result, criterion, "30-50m") == 0.0  # GT at 40 m missed, FP at 45 m counts here
        assert car_ap(result, criterion, "50m+") == 1.0
    assert c.num_gt == {"all": 3, "0-30m": 1, "30-50m": 1, "50m+": 1}
    assert c.num_predictions == {"all": 3, "0-30m": 1, "30-50m": 1, "50m+": 1}


def test_range_bin_counts_a_true_positive_in_the_bin_of_its_ground_truth():
    # GT at 29.8 m (bin 0-30) found by a prediction at 30.2 m (bin 30-50), 0.4 m off: TP at every distance
    # threshold and IoU 3.6*2 / (16 - 7.2) = 0.82 >= 0.7. A second GT at 40 m is missed.
    gts = [make_gt([("Car", 29.8, 0), ("Car", 40, 0)])]
    dets = [make_det([("Car", 30.2, 0, 0.9)])]
    result = evaluate(dets, gts, CLASSES)
    for criterion in ("distance", "iou"):
        assert car_ap(result, criterion, "0-30m") == 1.0
        # The TP belongs to 0-30 m only; 30-50 m has its missed GT and no counted prediction: AP 0, not an FP.
        assert car_ap(result, criterion, "30-50m") == 0.0
        assert is_nan(car_ap(result, criterion, "50m+"))
        assert car_ap(result, criterion, "all") == 0.5
    assert result.classes["Car"].num_predictions["30-50m"] == 1


def test_custom_range_edges():
    gts = [make_gt([("Car", 10, 0), ("Car", 25, 0)])]
    dets = [make_det([("Car", 10, 0, 0.9)])]
    result = evaluate(dets, gts, CLASSES, range_edges=(0, 20))
    assert result.ranges == ["all", "0-20m", "20m+"]
    assert car_ap(result, "distance", "0-20m") == 1.0
    assert car_ap(result, "distance", "20m+") == 0.0
    with pytest.raises(ValueError):
        evaluate(dets, gts, CLASSES, range_edges=(0, 50, 30))


def test_map_skips_classes_without_ground_truth_and_counts_missed_classes_as_zero():
    gts = [make_gt([("Car", 10, 0), ("Pedestrian", 5, 5)])]
    dets = [make_det([("Car", 10, 0, 0.9), ("Truck", 30, 0, 0.5)])]
    result = evaluate(dets, gts, CLASSES)
    assert result.classes["Car"].distance_ap["all"] == 1.0
    assert result.classes["Pedestrian"].distance_ap["all"] == 0.0  # GT but no predictions
    assert is_nan(result.classes["Truck"].distance_ap["all"])  # predictions but no GT
    assert is_nan(result.classes["Cyclist"].distance_ap["all"])
    assert result.distance_map["all"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert result.iou_map["all"] == pytest.approx(0.5)
    assert result.classes["Truck"].num_predictions["all"] == 1


def test_classes_are_matched_by_name_not_index():
    gts = [make_gt([("Car", 10, 0), ("Pedestrian", 5, 5)], class_names=("Car", "Pedestrian"))]
    # Predictions list their classes in another order and carry a class the GT never names.
    pred_names = ("Bus", "Pedestrian", "Car")
    dets = [make_det([("Car", 10, 0, 0.9), ("Pedestrian", 5, 5, 0.8), ("Bus", 0, 20, 0.7)], class_names=pred_names)]
    result = evaluate(dets, gts)  # class names default to GT names first, then prediction-only names
    assert result.class_names == ["Car", "Pedestrian", "Bus"]
    assert result.classes["Car"].distance_ap["all"] == 1.0
    assert result.classes["Pedestrian"].distance_ap["all"] == 1.0
    assert is_nan(result.classes["Bus"].distance_ap["all"])
    assert result.classes["Bus"].iou_threshold == 0.5  # unknown class: default threshold
    assert result.distance_map["all"] == 1.0
    # Restricting class_names leaves the other classes out.
    assert evaluate(dets, gts, ["Pedestrian"]).class_names == ["Pedestrian"]


def test_iou_thresholds_per_class():
    # Pedestrian boxes 0.8 x 0.8 shifted 0.2 m: IoU = 0.6*0.8 / (1.28 - 0.48) = 0.6 (>= 0.5 default).
    gts = [make_gt([("Pedestrian", 5, 0)])]
    dets = [make_det([("Pedestrian", 5.2, 0, 0.9)])]
    assert evaluate(dets, gts, CLASSES).classes["Pedestrian"].iou_ap["all"] == pytest.approx(1.0)
    assert evaluate(dets, gts, CLASSES, iou_thresholds={"Pedestrian": 0.7}).classes["Pedestrian"].iou_ap["all"] == 0.0
    with pytest.raises(ValueError):
        evaluate(dets, gts, CLASSES, iou_thresholds={"Car": 1.5})


def test_frame_count_mismatch_is_an_error():
    with pytest.raises(ValueError):
        evaluate([make_det([])], [make_gt([]), make_gt([])], CLASSES)


def test_result_serialises_to_json_and_back():
    gts = [make_gt([("Car", 10, 0), ("Car", 40, 0)])]
    dets = [make_det([("Car", 10, 0, 0.9)])]
    result = evaluate(dets, gts, CLASSES)
    text = json.dumps(result.to_dict(), allow_nan=False)  # NaN must have become null
    doc = json.loads(text)
    assert doc["classes"]["Truck"]["distance_ap"]["all"] is None
    assert doc["classes"]["Car"]["distance_ap_by_threshold"]["all"]["0.5"] == 0.5
    back = EvalResult.from_dict(doc)
    assert back.classes["Car"].distance_ap == result.classes["Car"].distance_ap
    assert is_nan(back.classes["Truck"].iou_ap["all"])
    table = format_table(result)
    assert "Car" in table and "mAP" in table and "50.0" in table


# --- directories and the CLI ----------------------------------------------------------------------------------


def write_dataset(tmp_path, gts, dets):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for frame, gt in gts.items():
        boxfile.write_ground_truth(gt_dir / f"{frame}.json", frame, gt)
    for frame, det in dets.items():
        boxfile.write_detections(pred_dir / f"{frame}.json", frame, det)
    pred_dir.mkdir(exist_ok=True)
    return pred_dir, gt_dir


def test_evaluate_dirs_pairs_files_and_warns_on_missing_predictions(tmp_path):
    gts = {"000000": make_gt([("Car", 10, 0)]), "000001": make_gt([("Car", 20, 0)])}
    dets = {"000000": make_det([("Car", 10, 0, 0.9)])}
    pred_dir, gt_dir = write_dataset(tmp_path, gts, dets)
    with pytest.warns(UserWarning, match="000001"):
        result = evaluate_dirs(pred_dir, gt_dir)
    assert result.num_frames == 2
    assert car_ap(result) == pytest.approx(0.5)
    assert any("000001" in w for w in result.warnings)


def test_evaluate_dirs_rejects_predictions_without_ground_truth(tmp_path):
    gts = {"000000": make_gt([("Car", 10, 0)])}
    dets = {"000000": make_det([("Car", 10, 0, 0.9)]), "000007": make_det([])}
    pred_dir, gt_dir = write_dataset(tmp_path, gts, dets)
    with pytest.raises(ValueError, match="000007"):
        evaluate_dirs(pred_dir, gt_dir)
    with pytest.raises(FileNotFoundError):
        evaluate_dirs(tmp_path / "nope", gt_dir)


def run_eval_command(argv):
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    return eval_command.run(parser.parse_args(argv))


def test_eval_command_end_to_end(tmp_path, capsys):
    gts = {
        "000000": make_gt([("Car", 10, 0), ("Pedestrian", 5, 3, True)]),
        "000001": make_gt([("Car", 40, 5), ("Cyclist", 60, 0)]),
        "000002": make_gt([("Truck", 15, -4)]),
    }
    dets = {
        "000000": make_det([("Car", 10, 0, 0.9), ("Pedestrian", 5, 3, 0.4)]),
        "000001": make_det([("Car", 40.75, 5, 0.8), ("Cyclist", 60, 0, 0.7)]),
    }
    pred_dir, gt_dir = write_dataset(tmp_path, gts, dets)
    out = tmp_path / "res" / "result.json"
    rc = run_eval_command(["--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "Centre-distance AP" in captured.out and "BEV rotated-IoU AP" in captured.out
    assert "000002" in captured.err  # missing prediction file reported
    doc = json.loads(out.read_text())
    assert doc["num_frames"] == 3
    car = doc["classes"]["Car"]
    # Car at 10 m exact, car at 40 m off by 0.75 m: AP@0.5 m: TP, FP with 2 GT = 0.5; 1, 2, 4 m: 1.
    assert car["distance_ap_by_threshold"]["all"] == {"0.5": 0.5, "1": 1.0, "2": 1.0, "4": 1.0}
    assert car["distance_ap"]["all"] == pytest.approx(0.875)
    assert doc["classes"]["Pedestrian"]["distance_ap"]["all"] is None  # only ignored GT
    assert doc["classes"]["Truck"]["distance_ap"]["all"] == 0.0  # its frame has no prediction file
    assert doc["classes"]["Cyclist"]["iou_ap"]["50m+"] == 1.0
    assert not list(out.parent.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_eval_command_options(tmp_path, capsys):
    gts = {"a": make_gt([("Car", 10, 0)])}
    dets = {"a": make_det([("Car", 10.75, 0, 0.9)])}
    pred_dir, gt_dir = write_dataset(tmp_path, gts, dets)
    out = tmp_path / "r.json"
    argv = ["--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out), "--distance-thresholds", "1"]
    argv += ["--iou-threshold", "Car=0.5", "--range-edges", "0", "20", "--classes", "Car"]
    assert run_eval_command(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["class_names"] == ["Car"]
    assert doc["ranges"] == ["all", "0-20m", "20m+"]
    assert doc["classes"]["Car"]["distance_ap"]["all"] == 1.0
    assert doc["classes"]["Car"]["iou_ap"]["all"] == 1.0  # IoU 0.684 >= 0.5
    with pytest.raises(ValueError):
        run_eval_command(["--pred", str(pred_dir), "--gt", str(gt_dir), "--iou-threshold", "Car"])


def test_cli_eval_subcommand(tmp_path, capsys, monkeypatch):
    from lidar_ptq_core import cli

    gts = {"000000": make_gt([("Car", 10, 0)])}
    dets = {"000000": make_det([("Car", 10, 0, 0.9)]), "000009": make_det([])}
    pred_dir, gt_dir = write_dataset(tmp_path, gts, dets)
    assert cli.main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir)]) == 2  # orphan prediction file
    assert "000009" in capsys.readouterr().err
    (pred_dir / "000009.json").unlink()
    assert cli.main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir)]) == 0
    assert "Car" in capsys.readouterr().out


def test_region_ignores_ground_truth_outside_and_drops_predictions_outside():
    gt = [make_gt([("Car", 10, 0), ("Car", 80, 0)])]
    det = [make_det([("Car", 10, 0, 0.9), ("Car", 90, 0, 0.95)])]
    # Without a region: the miss at 80 m and the FP at 90 m both count.
    loose = evaluate(det, gt, ["Car"])
    assert loose.classes["Car"].distance_ap["all"] < 1.0
    strict = evaluate(det, gt, ["Car"], region=(-76.8, -76.8, 76.8, 76.8))
    assert strict.classes["Car"].distance_ap["all"] == 1.0
    assert strict.classes["Car"].num_gt["all"] == 1 and strict.classes["Car"].num_ignored_gt == 1
