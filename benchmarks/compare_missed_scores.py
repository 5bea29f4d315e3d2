"""Where the boxes an INT8 model misses sit: FP32 (sim_pillar) vs INT8 (sim_pillar_int8) on 8 sim validation frames,
the FP32 score of every reference box the INT8 model does not reproduce (lidar-ptq compare's rule: score >= 0.3,
same class, centre within 1 m) and the best INT8 score of the same class within 1 m of it (any score). Backs the
reason for compare's default threshold (lidar_ptq_core/commands/compare.py).

    ./dev run python benchmarks/compare_missed_scores.py > docs/benchmarks/compare_missed_scores.txt
"""

import argparse

import numpy as np

from lidar_ptq_core.agreement import AGREEMENT_DISTANCE_M, AGREEMENT_MIN_SCORE, match_boxes
from lidar_ptq_core.runtime import Detector
from lidar_ptq_core.sim import SimDataset, load_sim_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8, help="sim val frames (default: %(default)s)")
    frames = parser.parse_args().frames
    reference, candidate = Detector.load("sim_pillar"), Detector.load("sim_pillar_int8")
    dataset = SimDataset("val", frames, load_sim_config("default"))
    dataset.prepare(progress=False)
    missed, twins, scores = [], [], []
    for i in range(frames):
        points = dataset[i].points
        r, c = reference.detect(points), candidate.detect(points)
        confident_r = r.select(r.scores >= AGREEMENT_MIN_SCORE)
        confident_c = c.select(c.scores >= AGREEMENT_MIN_SCORE)
        reproduced, _ = match_boxes(confident_r, confident_c)
        scores += confident_r.scores.tolist()
        for k in np.flatnonzero(~reproduced):
            missed.append(float(confident_r.scores[k]))
            same = c.labels == confident_r.labels[k]
            near = np.linalg.norm(c.boxes[same, :2] - confident_r.boxes[k, :2], axis=1) <= AGREEMENT_DISTANCE_M
            twins.append(round(float(c.scores[same][near].max()), 3) if near.any() else None)
    scores = np.array(scores)
    print(f"sim_pillar vs sim_pillar_int8 on {frames} sim val frames: {len(scores)} FP32 boxes with score >= "
          f"{AGREEMENT_MIN_SCORE}, {len(missed)} not reproduced by INT8")
    print("FP32 score of each missed box:", [round(s, 2) for s in sorted(missed)])
    print("best INT8 score within 1 m, same class (None: no box there):", [twins[i] for i in np.argsort(missed)])
    print(f"share of all FP32 boxes scoring below 0.42: {100 * np.mean(scores < 0.42):.0f} %; of the missed ones: "
          f"{100 * np.mean(np.array(missed) < 0.42):.0f} %")


if __name__ == "__main__":
    main()
