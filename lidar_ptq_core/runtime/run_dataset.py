"""Run a Detector over a dataset of frames with ground truth: the shared loop of `demo` and the benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..boxfile import write_detections, write_ground_truth
from ..detections import Detections, GroundTruth
from ..voxelize import VoxelizeReport


@dataclass
class DatasetRun:
    frame_ids: list[str]
    predictions: list[Detections]
    ground_truths: list[GroundTruth]
    seconds: np.ndarray  # per frame: voxelize + network + decode
    voxel_reports: list[VoxelizeReport]

    @property
    def median_ms(self) -> float:
        return float(1000 * np.median(self.seconds))


def run_detector_on_dataset(detector, dataset, box_dir: str | Path | None = None, progress: bool = True) -> DatasetRun:
    """Detect every frame of `dataset` (items with frame_id, points, gt). With `box_dir`, also write
    box_dir/pred/<id>.json and box_dir/gt/<id>.json for `lidar-ptq eval`."""
    from tqdm import tqdm

    run = DatasetRun([], [], [], np.zeros(0), [])
    seconds = []
    for i in tqdm(range(len(dataset)), desc="detect", disable=not progress, dynamic_ncols=True):
        frame = dataset[i]
        start = time.perf_counter()
        det = detector.detect(frame.points)
        seconds.append(time.perf_counter() - start)
        run.frame_ids.append(frame.frame_id)
        run.predictions.append(det)
        run.ground_truths.append(frame.gt)
        run.voxel_reports.append(detector.last_voxel_report)
        if box_dir is not None:
            write_detections(Path(box_dir) / "pred" / f"{frame.frame_id}.json", frame.frame_id, det)
            write_ground_truth(Path(box_dir) / "gt" / f"{frame.frame_id}.json", frame.frame_id, frame.gt)
    run.seconds = np.array(seconds)
    return run
