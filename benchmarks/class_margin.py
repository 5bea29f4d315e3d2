#!/usr/bin/env python
"""How INT8 moves the heatmap logits where FP32 sees objects: per class, and the margin between two classes.

For each INT8 checkpoint, on the first N sim val frames: at every FP32 heatmap peak (3x3 local maximum with
probability > 0.1) of a class, the mean INT8 - FP32 logit of that class; and at the peaks of either of two classes
(default Pedestrian and Cyclist), the mean shift of the margin logit(second) - logit(first). A positive margin shift
moves objects the two classes share towards the second: on the sim pillar model its sign and size follow the INT8
model's Cyclist AP on test (docs/QUANTIZATION.md, "Where the pillar model's mAP difference comes from").

    ./dev run python benchmarks/class_margin.py runs/r17/a.safetensors runs/r17/b.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.models.checkpoint import load_checkpoint
from lidar_ptq_core.recipes.centerpoint import load_quantized_checkpoint
from lidar_ptq_core.runtime import bundled_checkpoint
from lidar_ptq_core.sim import SimDataset, load_sim_config
from lidar_ptq_core.voxelize import voxelize_clouds

REPO = Path(__file__).resolve().parents[1]


def heatmap_peaks(logits: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """(B, C, H, W) logits -> bool mask of the 3x3 local maxima with probability above `threshold`."""
    probability = torch.sigmoid(logits)
    return (probability == torch.nn.functional.max_pool2d(probability, 3, 1, 1)) & (probability > threshold)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="INT8 checkpoints (bundled names or paths)")
    parser.add_argument("--model", default="sim_pillar")
    parser.add_argument("--frames", type=int, default=24, help="sim val frames 0..N-1")
    parser.add_argument("--classes", nargs=2, default=["Pedestrian", "Cyclist"], metavar=("FIRST", "SECOND"))
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "class_margin_sim_pillar.txt"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    fp32 = load_checkpoint(bundled_checkpoint(args.model)).eval()
    names = list(fp32.config.class_names)
    first, second = (names.index(c) for c in args.classes)
    val = SimDataset("val", args.frames, load_sim_config("default"))
    batches = [voxelize_clouds([val[i].points], fp32.config.voxelization, fp32.config.num_point_features)[0]
               for i in range(len(val))]
    with torch.no_grad():
        reference = [fp32(batch)[0]["hm"] for batch in batches]
    lines = [f"{args.model}: INT8 - FP32 heatmap logits at FP32's peaks (probability > 0.1, 3x3 maxima), first "
             f"{args.frames} sim val frames, first task; margin = logit({args.classes[1]}) - logit({args.classes[0]}) "
             "at the peaks of either", "",
             f"{'checkpoint':<44} " + " ".join(f"{n:>16}" for n in names) + f" {'margin shift':>13} {'sd':>6}"]
    print(lines[-1], flush=True)
    for spec in args.checkpoints:
        qmodel = load_quantized_checkpoint(bundled_checkpoint(spec)).eval()
        per_class, margin = [[] for _ in names], []
        with torch.no_grad():
            for batch, ref in zip(batches, reference):
                out = qmodel(batch)[0]["hm"]
                peaks = heatmap_peaks(ref)[0]
                for c in range(len(names)):
                    per_class[c].append((out[0, c] - ref[0, c])[peaks[c]])
                sites = peaks[first] | peaks[second]
                margin.append(((out[0, second] - out[0, first]) - (ref[0, second] - ref[0, first]))[sites])
        shifts = [torch.cat(values) for values in per_class]
        margins = torch.cat(margin)
        cells = " ".join(f"{float(s.mean()):+.3f} (n={len(s)})".rjust(16) for s in shifts)
        lines.append(f"{Path(spec).stem:<44} {cells} {float(margins.mean()):+13.3f} {float(margins.std()):6.3f}")
        print(lines[-1], flush=True)
    write_bytes_atomic(Path(args.out), ("\n".join(lines) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
