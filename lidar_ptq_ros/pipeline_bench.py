"""The detector node's pipeline timed with the library's pieces on the same PointCloud2 messages (the "bench" side of
issue 19's node-over-bench ratio), and the verdict against the node's targets. Used by `./dev demo` and
benchmarks/node_latency.py: both compare the node's own per-frame time (its /diagnostics) with this."""

from __future__ import annotations

import time

import numpy as np

TARGET_RATIO = 1.2  # issue 19: the node at most 1.2x the bench pipeline per frame
TARGET_P50_MS = 80.0  # and its latency p50 at 10 Hz at most 80 ms
TARGET_ROW = "int8-onnxruntime"
BENCH_STAGES = ("convert", "voxelize", "network", "decode")
NODE_STAGES = ("convert", "input_check", "detect", "detections_msg", "markers_msg", "publish")  # frame_profile names
NODE_SCORE_THRESHOLD = 0.0  # what run_node gives the node: every box the checkpoint decodes


class StagedDetector:
    """The node's pipeline on a PointCloud2 with the library's pieces, stage by stage: what `lidar-ptq bench` times,
    from the message on. `frame(msg)` -> (Detections, {stage: ms}). `max_points`: the node's parameter of that name
    (default: the node's default)."""

    def __init__(self, detector, max_points: int | None = None):
        from lidar_ptq_core.pointcloud.features import InputSettings
        from lidar_ptq_core.runtime.heap import keep_freed_memory

        keep_freed_memory()  # as the detector node does for every backend: the comparison is like with like

        if max_points is None:
            from .detector_node import PARAMETERS

            max_points = next(p.default for p in PARAMETERS if p.name == "max_points")
        self.detector, self.max_points = detector, max_points
        config = detector.config
        # As the node: the input settings recorded at calibration, then the node's own (identity here).
        self.given = (getattr(config, "input_settings", None) or InputSettings()).then(InputSettings())

    def frame(self, msg):
        from lidar_ptq_core.decode import decode_batch
        from lidar_ptq_core.voxelize import voxelize_clouds
        from lidar_ptq_ros.conversions import msg_to_detector_input

        det, config = self.detector, self.detector.config
        numpy_backend = getattr(det.backend, "takes_numpy", False)
        times, t0 = {}, time.perf_counter()
        cloud = msg_to_detector_input(msg, self.given.intensity_scale, self.max_points, config.point_features,
                                      self.given.z_offset)
        t1 = time.perf_counter()
        with _inference_mode(numpy_backend):
            points = det.prepare_points(cloud.points, "bench")
            batch, _ = voxelize_clouds([points], config.voxelization, config.num_point_features,
                                       as_numpy=numpy_backend)
            t2 = time.perf_counter()
            outputs = det.backend(batch)
            t3 = time.perf_counter()
            detections = decode_batch(outputs, det.geometry, config.post_processing)[0]
            detections = detections.select(detections.scores >= NODE_SCORE_THRESHOLD)
            t4 = time.perf_counter()
        for stage, start, end in zip(BENCH_STAGES, (t0, t1, t2, t3), (t1, t2, t3, t4)):
            times[stage] = 1000.0 * (end - start)
        return detections, cloud.points, times


def _inference_mode(numpy_backend: bool):
    import contextlib

    if numpy_backend:
        return contextlib.nullcontext()
    import torch

    return torch.inference_mode()


def bench_pass(staged: StagedDetector, messages, check: bool) -> list[dict]:
    """Per-frame stage times over `messages` after a warm-up frame; `check`: the staged pipeline must give what
    Detector.detect gives (else the comparison would time something else)."""
    staged.frame(messages[0])
    frames = []
    for index, msg in enumerate(messages):
        detections, points, times = staged.frame(msg)
        if check and index < 3:
            expected = staged.detector.detect(points)
            expected = expected.select(expected.scores >= NODE_SCORE_THRESHOLD)
            if len(expected) != len(detections) or not np.allclose(expected.boxes, detections.boxes, atol=1e-4):
                raise RuntimeError(f"frame {index}: the staged pipeline gave {len(detections)} boxes, "
                                   f"Detector.detect {len(expected)}")
        frames.append(times)
    return frames


def bench_summary(frames: list[dict]) -> dict:
    totals = [sum(f[s] for s in BENCH_STAGES) for f in frames]
    return {"frames": len(frames), "total_ms_median": float(np.median(totals)),
            "total_ms_p90": float(np.percentile(totals, 90)),
            "stages_ms_median": {s: float(np.median([f[s] for f in frames])) for s in BENCH_STAGES}}


def node_summary(counters: dict) -> dict:
    def value(key):
        text = counters.get(key)
        return float(text) if text not in (None, "") else float("nan")

    return {"total_ms_median": value("total_ms_median"), "total_ms_max": value("total_ms_max"),
            "process_cpu_ms_median": value("process_cpu_ms_median"),
            "stages_ms_median": {s: value(f"{s}_ms_median") for s in NODE_STAGES if f"{s}_ms_median" in counters}}


def verdict(row: str, ratio: float, p50: float) -> str:
    ok = ratio <= TARGET_RATIO and p50 <= TARGET_P50_MS
    return (f"{'PASS' if ok else 'FAIL'} ({row}): node / bench = {ratio:.2f} (target <= {TARGET_RATIO:g}), "
            f"latency p50 {p50:.0f} ms (target <= {TARGET_P50_MS:g} ms)")


def messages_like_the_player(frames) -> list:
    """PointCloud2 messages of sim frames as cloud_player publishes them (its sim source: KITTI fields)."""
    from std_msgs.msg import Header

    from lidar_ptq_core.pointcloud import KITTI_FIELDS, PointCloud

    from .conversions import pointcloud_to_msg

    return [pointcloud_to_msg(PointCloud(frame.points, KITTI_FIELDS), Header(frame_id="lidar")) for frame in frames]
