#!/usr/bin/env python
"""Which class the detector gives each ground-truth object: for every non-ignored GT box, the nearest detection
(score >= 0.3, centre within 1 m) and its label, plus the mean box-length error of those matches. Prints one
confusion table per checkpoint and writes docs/benchmarks/confusion_<name>.txt.

    ./dev run python benchmarks/class_confusion.py --frames 100 sim_pillar sim_voxel
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.runtime import Detector
from lidar_ptq_core.sim import SimDataset, load_sim_config

DOCS = Path(__file__).resolve().parents[1] / "docs"


def confusion(detector: Detector, dataset, min_score: float, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """counts[gt_class, predicted_class or 'missed'], summed length error per GT class of the matched ones."""
    names = detector.class_names
    counts = np.zeros((len(names), len(names) + 1), np.int64)
    length_error = np.zeros(len(names))
    for i in range(len(dataset)):
        frame = dataset[i]
        det = detector.detect(frame.points)
        det = det.select(det.scores >= min_score)
        gt_names = [frame.gt.class_names[k] for k in frame.gt.labels]
        for g, (box, ignored) in enumerate(zip(frame.gt.boxes, frame.gt.ignore)):
            if ignored or gt_names[g] not in names:
                continue
            row = names.index(gt_names[g])
            dist = np.hypot(det.boxes[:, 0] - box[0], det.boxes[:, 1] - box[1])
            if len(dist) == 0 or dist.min() > radius:
                counts[row, -1] += 1
                continue
            j = int(dist.argmin())
            counts[row, det.labels[j]] += 1
            length_error[row] += det.boxes[j, 3] - box[3]
    return counts, length_error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--min-score", type=float, default=0.3)
    parser.add_argument("--radius", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = SimDataset("val", args.frames, load_sim_config("default"))
    dataset.prepare()
    for name in args.checkpoints:
        detector = Detector.from_checkpoint(name)
        names = detector.class_names
        counts, length_error = confusion(detector, dataset, args.min_score, args.radius)
        lines = [f"{name}: {args.frames} sim val frames; rows = ground truth, columns = label of the nearest detection "
                 f"(score >= {args.min_score}, within {args.radius} m)",
                 f"{'':<11}" + "".join(f"{n:>11}" for n in names) + f"{'missed':>9}{'mean dl':>9}"]
        for row, gt_name in enumerate(names):
            matched = counts[row, :-1].sum()
            dl = length_error[row] / matched if matched else float("nan")
            lines.append(f"{gt_name:<11}" + "".join(f"{c:>11}" for c in counts[row, :-1]) + f"{counts[row, -1]:>9}"
                         f"{dl:>+9.2f}")
        text = "\n".join(lines)
        print(text + "\n")
        write_bytes_atomic(DOCS / "benchmarks" / f"confusion_{Path(name).stem}.txt", (text + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
