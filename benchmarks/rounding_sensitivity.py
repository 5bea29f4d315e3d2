#!/usr/bin/env python
"""How much a network's head outputs move when its BEV input moves by a rounding-sized amount: the floor under any
export parity check. An INT8 fake-quant model is a step function; two engines that sum in another order flip a few
roundings, and a network that amplifies small changes (random weights, no training to make it smooth) turns those
flips into large output differences that say nothing about the export.

For each checkpoint, on the first --frames sim calib frames: the dense part's outputs for the BEV input x and for
x * (1 + eps * noise), noise uniform in [-1, 1], reported as the export parity metric (mean |diff| / mean |reference|
per output, the worst output). The last column needs no perturbation at all: the same model and input computed in
float64 against float32, which changes only the rounding of the sums, as another engine's summation order does.
Run for FP32 and INT8 checkpoints side by side:

    ./dev run python benchmarks/rounding_sensitivity.py --checkpoints sim_pillar sim_pillar_int8 \\
        runs/full_size_recipe/waymo_pillar_random.safetensors runs/full_size_recipe/waymo_pillar_random_int8.safetensors
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from lidar_ptq_core.bench import fit_point_features
from lidar_ptq_core.recipes.centerpoint import load_any_checkpoint
from lidar_ptq_core.runtime import bundled_checkpoint
from lidar_ptq_core.sim import SimDataset, load_sim_config
from lidar_ptq_core.voxelize import voxelize_clouds


def relative_change(reference: list[dict], other: list[dict]) -> dict[str, float]:
    """Export parity's metric per head output: mean |other - reference| / mean |reference|."""
    changes = {}
    for task, (ref, oth) in enumerate(zip(reference, other)):
        for key in ref:
            scale = ref[key].abs().mean().clamp_min(1e-12)
            changes[f"{task}.{key}"] = float((oth[key] - ref[key]).abs().mean() / scale)
    return changes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", required=True, help="bundled names or .safetensors")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-6, 1e-4])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frames = SimDataset("calib", args.frames, load_sim_config("default"))
    frames.prepare(num_workers=1)
    print(f"relative change of the head outputs (mean |diff| / mean |reference|, worst output, mean over "
          f"{args.frames} sim calib frames) when the BEV input is scaled by 1 + eps * U(-1, 1)")
    print(f"{'checkpoint':<60} " + " ".join(f"{f'eps {eps:g}':>22}" for eps in args.eps)
          + f" {'float64 vs float32':>22}")
    for name in args.checkpoints:
        model = load_any_checkpoint(bundled_checkpoint(name)).eval()
        config = model.config
        worst = {eps: [] for eps in args.eps}
        worst["float64"] = []
        model64 = copy.deepcopy(model).double()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for i in range(len(frames)):
                points = fit_point_features(frames[i].points, config.num_point_features)
                batch = voxelize_clouds([points], config.voxelization, config.num_point_features)[0]
                bev = model.to_bev(model.encode(batch), batch)
                reference = model.dense(bev)
                for eps in args.eps:
                    noise = torch.rand(bev.shape, generator=generator) * 2 - 1
                    moved = model.dense(bev * (1 + eps * noise))
                    changes = relative_change(reference, moved)
                    worst[eps].append(max(changes.items(), key=lambda kv: kv[1]))
                in_float64 = [{k: v.float() for k, v in out.items()} for out in model64.dense(bev.double())]
                changes = relative_change(reference, in_float64)
                worst["float64"].append(max(changes.items(), key=lambda kv: kv[1]))
        cells = []
        for eps in [*args.eps, "float64"]:
            mean = sum(v for _, v in worst[eps]) / len(worst[eps])
            cells.append(f"{mean:>10.3g} ({max(worst[eps], key=lambda kv: kv[1])[0]:>9})")
        print(f"{name:<60} " + " ".join(f"{c:>22}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
