"""The detector node's per-stage profile: FrameTimer / FrameProfile alone, then through the node: stages on
/diagnostics, and markers built only while someone subscribes to them."""

import struct
import time

import numpy as np
import pytest

from lidar_ptq_ros.frame_profile import CPU, TOTAL, FrameProfile, FrameTimer

pytestmark = pytest.mark.ros


def test_spans_add_up_within_the_total():
    timer = FrameTimer()
    with timer.span("convert"):
        time.sleep(0.01)
    with timer.span("detect"):
        time.sleep(0.02)
    with timer.span("convert"):  # a stage timed twice adds up
        time.sleep(0.01)
    spans = timer.finish()
    assert set(spans) == {"convert", "detect", TOTAL, CPU}
    assert spans["convert"] >= 20.0 and spans["detect"] >= 20.0
    assert spans[TOTAL] >= spans["convert"] + spans["detect"]
    assert spans[CPU] < spans[TOTAL], "sleeping takes no CPU"


def test_profile_medians_count_a_skipped_stage_as_zero():
    profile = FrameProfile(recent=3)
    profile.add({"detect": 100.0, "markers_msg": 9.0, TOTAL: 120.0})
    for detect in (10.0, 30.0, 20.0):  # the first frame falls out of the window
        profile.add({"detect": detect, TOTAL: detect + 5.0})
    summary = profile.summary()
    assert summary["detect"] == {"median": 20.0, "max": 30.0}
    assert summary[TOTAL] == {"median": 25.0, "max": 35.0}
    assert "markers_msg" not in summary
    profile.add({"detect": 10.0, "markers_msg": 6.0, TOTAL: 15.0})
    assert profile.summary()["markers_msg"] == {"median": 0.0, "max": 6.0}
    values = dict(profile.key_values())
    assert values["markers_msg_ms_max"] == "6.000" and values["detect_ms_median"] == "20.000"
    assert profile.last() == {"detect": 10.0, "markers_msg": 6.0, TOTAL: 15.0}


def test_empty_profile_reports_nothing():
    assert FrameProfile().summary() == {} and FrameProfile().key_values() == [] and FrameProfile().last() == {}


# -- through the node -------------------------------------------------------------------------------------------
rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by ./dev; run the suite through ./dev test")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs is built into the venv by ./dev")

from test_detector_node import (  # noqa: E402
    Harness,
    assert_same_detections,
    diag_values,
    reference,  # noqa: F401  (fixture)
    sample_points,
    tiny_checkpoint,  # noqa: F401  (fixture)
    wait_for,
    xyzi_cloud,
)


def test_stages_reach_diagnostics_and_markers_wait_for_a_subscriber(tiny_checkpoint, reference):  # noqa: F811
    h = Harness(overrides={"model": str(tiny_checkpoint), "score_threshold": 0.0, "max_points": 0})
    try:
        points = sample_points(seed=11)
        detections, markers = h.detect(xyzi_cloud(points))
        assert len(markers.markers) == 1 + 2 * len(detections.detections)
        spans = h.node.profile.last()
        assert {"convert", "detect", "detections_msg", "markers_msg", "publish", TOTAL, CPU} <= set(spans)
        assert sum(v for k, v in spans.items() if k not in (TOTAL, CPU)) <= spans[TOTAL]
        report = wait_for(lambda: next((d for d in reversed(h.diagnostics)
                                        if "detect_ms_median" in diag_values(d)), None), "stage times on /diagnostics")
        values = diag_values(report)
        assert float(values["total_ms_median"]) > 0.0 and float(values["detect_ms_max"]) > 0.0
        assert float(values["total_ms_max"]) >= float(values["detect_ms_max"])

        # RViz goes away: the node stops building markers and still publishes the same detections.
        markers_subscription = next(s for s in h.client.subscriptions if s.topic_name.endswith("/markers"))
        h.client.destroy_subscription(markers_subscription)
        wait_for(lambda: h.node._markers_pub.get_subscription_count() == 0, "the markers subscriber gone")
        markers_before = len(h.markers)
        points = sample_points(seed=12)
        stamp = h.stamp(msg := xyzi_cloud(points))
        answer = h._publish_until(msg, lambda: next((d for d in h.detections if d.header.stamp.sec == stamp), None),
                                  f"detections for stamp {stamp}")
        assert_same_detections(answer, reference.detect(points), reference.class_names)
        spans = h.node.profile.last()
        assert "markers_msg" not in spans and "detections_msg" in spans and "publish" in spans
        assert len(h.markers) == markers_before
        assert np.isfinite(spans[TOTAL])
    finally:
        h.close()


def test_input_check_runs_after_the_frame_is_published_and_once(tiny_checkpoint, reference):  # noqa: F811
    h = Harness(overrides={"model": str(tiny_checkpoint), "score_threshold": 0.0, "max_points": 0,
                           "input_check_frames": 2})
    try:
        published, checks = [], []
        publish = h.node._detections_pub.publish
        # The node publishes the detections serialized (CDR: 4-byte encapsulation, then header.stamp.sec)
        h.node._detections_pub.publish = lambda data: (published.append(struct.unpack_from("<i", data, 4)[0]),
                                                       publish(data))

        def check(given):  # stands in for the check (the tiny model has no reference statistics); clears as it does
            checks.append(list(published))
            h.node._check_clouds = None

        h.node._check_input = check
        stamps = []
        for seed in (21, 22, 23):
            msg = xyzi_cloud(sample_points(n=500, seed=seed))
            stamps.append(h.stamp(msg))
            h._publish_until(msg, lambda s=stamps[-1]: s in published, f"detections for stamp {stamps[-1]}")
        wait_for(lambda: h.stats().frames_processed >= 3, "the third frame done")
        assert checks == [stamps[:2]], "one check, at the second frame, after that frame's detections went out"
        assert "input_check" in h.node.profile.summary()
    finally:
        h.close()
