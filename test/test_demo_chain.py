"""The demo's node chain (lidar_ptq_ros/demo_chain.py) at tiny scale, and its report (chain_report.py).

The chain test runs the real node processes (player, recorder, detector; loopback discovery and the domain from
conftest, inherited by every subprocess) with a tiny untrained CenterPoint: 3 replayed frames, a 2-frame calibration
bag (plus 2 sweeps held out for compare) and naive max calibration instead of LiDAR-PTQ. What the detector node
published must be what the library's Detector gives on the same frames, mapped to the right frame by its stamp, and
compare must have run on the bag's sweeps calibration did not take.
"""

import json

import numpy as np
import pytest

from lidar_ptq_core.agreement import count_agreeing
from lidar_ptq_core.detections import Detections
from lidar_ptq_ros.chain_report import (
    FrameResult,
    NodeRun,
    agreement,
    keep_up_sentence,
    latency_summary,
    percentiles,
)

CLASSES = ("Car", "Pedestrian")


def boxes(*rows):
    """(x, y, label, score) rows -> Detections of 4 x 2 x 1.5 m boxes."""
    rows = np.array(rows, np.float64).reshape(-1, 4)
    b = np.zeros((len(rows), 7), np.float32)
    b[:, 0], b[:, 1], b[:, 3:6] = rows[:, 0], rows[:, 1], (4.0, 2.0, 1.5)
    return Detections(b, rows[:, 3].astype(np.float32), rows[:, 2].astype(np.int64), CLASSES)


def test_count_agreeing_is_one_to_one_same_class_within_a_metre():
    reference = boxes((0, 0, 0, 0.9), (10, 0, 0, 0.8), (20, 0, 1, 0.7))
    other = boxes((0.5, 0, 0, 0.9), (0.2, 0, 0, 0.95), (10, 1.5, 0, 0.8), (20, 0, 0, 0.7))
    # (0.2, 0) takes the box at the origin first (higher score); (0.5, 0) finds it taken; 1.5 m is too far; the box at
    # x=20 has the wrong class.
    assert count_agreeing(reference, other) == 1
    assert count_agreeing(reference, reference) == 3
    assert count_agreeing(reference, Detections.empty(CLASSES)) == 0


def run_of(label, frames):
    """frames: list of (Detections or None, latency or None)."""
    return NodeRun(label, "m", "torch", 10.0,
                   [FrameResult(i, 1000 + i, d, lat) for i, (d, lat) in enumerate(frames)],
                   {"frames_received": "4", "frames_dropped": "1", "mean_processing_ms": "250.0",
                    "max_processing_ms": "300.0"})


def test_latency_summary_counts_dropped_and_never_received_frames():
    run = run_of("INT8", [(boxes((0, 0, 0, 0.9)), 120.0), (None, None), (boxes(), 300.0), (None, None),
                          (boxes((1, 1, 1, 0.5)), 210.0)])
    s = latency_summary(run)
    assert (s["published"], s["answered"], s["dropped"]) == (5, 3, 2)
    assert s["dropped_while_busy"] == 1 and s["never_received"] == 1, "5 published, the node received 4, dropped 1"
    assert s["latency_ms"]["p50"] == 210.0 and s["latency_ms"]["max"] == 300.0
    assert s["processing_ms_mean"] == 250.0 and not s["keeps_up"]
    assert percentiles([1.0, 2.0, 3.0, 4.0, 5.0])["p90"] == pytest.approx(4.6)
    assert np.isnan(percentiles([])["p50"])
    sentence = keep_up_sentence(run)
    assert "does not keep up at 10 Hz" in sentence and "2.5x" in sentence and "answered 3 of 5" in sentence
    run.counters["mean_processing_ms"] = "95.0"  # under the 100 ms period: the drops are from slow frames
    sentence = keep_up_sentence(run)
    assert "keeps up on average at 10 Hz" in sentence and "0.95x" in sentence and "2 of 5" in sentence
    assert "about 6.0 Hz" in sentence  # 3 of 5 answered at 10 Hz


def test_agreement_on_the_frames_both_answered():
    fp32 = run_of("FP32", [(boxes((0, 0, 0, 0.9), (10, 0, 1, 0.8)), 100.0), (boxes((5, 5, 0, 0.9)), 100.0),
                           (None, None)])
    int8 = run_of("INT8", [(boxes((0.3, 0, 0, 0.9), (30, 0, 0, 0.6), (9, 9, 0, 0.1)), 100.0), (None, None),
                           (boxes((1, 1, 0, 0.9)), 100.0)])
    a = agreement(fp32, int8, CLASSES)
    assert a["frames"] == 1, "only frame 0 was answered by both"
    # Boxes under 0.3 are left out: FP32 has 2, INT8 2 (the 0.1 one is not counted); one pair agrees.
    assert (a["reference_boxes"], a["other_boxes"], a["matched"]) == (2, 2, 1)
    assert a["reference_recall"] == 0.5 and a["other_precision"] == 0.5
    assert 0.0 < a["map_vs_reference"] < 100.0
    same = agreement(fp32, fp32, CLASSES)
    assert same["reference_recall"] == same["other_precision"] == 1.0 and same["map_vs_reference"] == 100.0


# -- the chain across processes ----------------------------------------------------------------------------------
@pytest.mark.ros
def test_demo_chain_records_quantizes_exports_and_reports_what_the_node_published(tmp_path, capsys):
    pytest.importorskip("rclpy", reason="rclpy is installed by ./dev")
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs is built into the venv by ./dev")
    import torch

    from lidar_ptq_core import cli
    from lidar_ptq_core.boxfile import read_detections, read_ground_truth
    from lidar_ptq_core.models.centerpoint import build_centerpoint
    from lidar_ptq_core.models.checkpoint import save_checkpoint
    from lidar_ptq_core.pointcloud import iter_bag_frames
    from lidar_ptq_core.runtime import Detector
    from lidar_ptq_core.sim import SimDataset, load_sim_config

    from test_train import tiny_pillar_config

    torch.manual_seed(0)
    ckpt = save_checkpoint(build_centerpoint(tiny_pillar_config()), tmp_path / "tiny.safetensors")
    out = tmp_path / "demo"
    argv = ["demo", "--frames", "3", "--rate", "5", "--calib-frames", "2", "--method", "max", "--threads", "1",
            "--checkpoint", str(ckpt), "--out", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "[7/7]" in text and "ROS 2 is not importable" not in text
    assert "calibration_recorder recorded 4 clouds" in text and "2 to calibrate on" in text
    assert "exported the bundle" in text

    bag_frames = list(iter_bag_frames(out / "calib_bag"))
    calib = SimDataset("calib", 4, load_sim_config("default"))
    assert len(bag_frames) == 4
    assert all(any(np.array_equal(f.cloud.points, c.points) for c in calib) for f in bag_frames), \
        "the bag holds the simulated drive the player published"

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"FP32", "INT8"} and summary["frames"] == 3 and summary["rate_hz"] == 5.0
    val = SimDataset("val", 3, load_sim_config("default"))
    for label, run in summary["runs"].items():
        assert run["published"] == 3 and run["answered"] + run["dropped"] == 3 and run["answered"] >= 1
        assert run["node_counters"]["frames_processed"] == str(run["answered"])
        assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p90"] <= run["latency_ms"]["p99"]
        assert run["eval"]["num_frames"] == run["answered"]
        assert set(run["eval"]["class_names"]) == set(tiny_pillar_config().class_names)
        # The published boxes of each answered frame are the library's for that very frame.
        detector = Detector.load(run["model"], "onnxruntime" if label == "INT8" else "torch")
        preds = sorted((out / f"node_{label.lower()}" / "pred").glob("*.json"))
        assert len(preds) == run["answered"]
        for path in preds:
            frame_id, published = read_detections(path)
            index = [val.frame_id(i) for i in range(3)].index(frame_id)
            expected = detector.detect(val[index].points)
            assert len(published) == len(expected)
            np.testing.assert_allclose(published.boxes[:, :6], expected.boxes[:, :6], atol=2e-3)
            np.testing.assert_allclose(published.scores, expected.scores, atol=2e-3)
            gt_id, gt = read_ground_truth(out / f"node_{label.lower()}" / "gt" / path.name)
            assert gt_id == frame_id and len(gt) == len(val[index].gt)
    int8 = summary["runs"]["INT8"]
    assert int8["model"].endswith("int8.lptq") and int8["backend"] == "onnxruntime"
    agree = summary["agreement"]
    assert agree["frames"] == summary["runs"]["INT8"]["answered"]
    assert 0 <= agree["matched"] <= min(agree["reference_boxes"], agree["other_boxes"])
    assert (out / "detections.png").stat().st_size > 10_000 and summary["picture"]["run"] == "INT8"
    # compare: FP32 vs the bundle on the bag's messages 1 and 2 (calibration with 2 frames took 0 and 3).
    compared = summary["compare"]
    assert compared["verdict"].split(":")[0] in ("PASS", "FAIL") and compared["verdict"] in text
    assert compared["agreement"]["frames"] == 2 and "2 of 4 messages" in compared["source"]
    details = json.loads((out / "compare" / "compare.json").read_text())
    assert [f["frame_id"] for f in details["agreement"]["per_frame"]] == ["calib_bag_000001", "calib_bag_000002"]
    assert details["candidate"].startswith(str(out / "int8.lptq")) and "onnxruntime" in details["candidate"]
    assert (out / "compare" / "worst_frames.png").stat().st_size > 10_000
    assert {p.name for p in (out / "logs").iterdir()} >= {"recorder.log", "player_calib.log", "detector_fp32.log",
                                                          "detector_int8.log", "player_fp32.log", "player_int8.log"}
    # The INT8 node's time per frame over the library pipeline's on the same clouds, with its verdict line
    ratio = summary["node_over_bench"]
    assert ratio["bench"]["frames"] == 3 and ratio["bench"]["total_ms_median"] > 0
    assert ratio["ratio"] == pytest.approx(ratio["node"]["total_ms_median"] / ratio["bench"]["total_ms_median"])
    # What each process of the chain spent per cloud period while the clouds were played (process_cpu.py)
    for label, run in summary["runs"].items():
        cpu = run["cpu_ms_per_cloud"]
        assert set(cpu) == {"detector_node", "cloud_player", "this process"}, cpu
        assert sum(cpu["detector_node"].values()) > 0 and {"main", "detector_work"} <= set(cpu["detector_node"])
        assert set(run["page_faults_per_cloud"]) == set(cpu)
        assert all(ms >= 0 for threads in cpu.values() for ms in threads.values())
        assert f"{label}: CPU ms per cloud period while playing" in text
    assert ratio["line"] in text and ("PASS (INT8 onnxruntime)" in ratio["line"]
                                      or "FAIL (INT8 onnxruntime)" in ratio["line"])
