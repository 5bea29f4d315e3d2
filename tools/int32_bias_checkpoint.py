#!/usr/bin/env python
"""Apply the `int32_bias` stage (lidar_ptq_core/quant/bias.py) to an INT8 checkpoint made before the stage existed.

The stage is the last step of `quantize` (before the sensitivity table, which only measures), so this gives the
checkpoint a rerun with today's settings would give from the same earlier stages. The checkpoint's recorded
quantization settings and stage summary are updated to say so; the file is rewritten atomically.

    ./dev run python tools/int32_bias_checkpoint.py checkpoints/sim_pillar_int8.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: rewrite the checkpoint in place")
    args = parser.parse_args()

    from lidar_ptq_core.models.checkpoint import write_state_with_metadata
    from lidar_ptq_core.quant import quant_wrappers
    from lidar_ptq_core.quant.bias import round_biases_to_int32_grid
    from lidar_ptq_core.recipes.centerpoint import load_quantized_checkpoint, read_metadata

    metadata = dict(read_metadata(args.checkpoint))
    quantization = json.loads(metadata.get("quantization", "{}"))
    if quantization.get("int32_bias"):
        print(f"{args.checkpoint}: biases are already on the int32 grid (int32_bias in its settings); nothing to do")
        return 0
    model = load_quantized_checkpoint(args.checkpoint)
    records = round_biases_to_int32_grid(quant_wrappers(model))
    quantization["int32_bias"] = True
    report = json.loads(metadata.get("report", "{}"))
    report.setdefault("stages", {})["int32_bias"] = {
        "layers": len(records), "applied_after_the_fact": True,
        "max_change_steps": max((r["bias_change_max_steps"] for r in records.values()), default=0.0)}
    metadata.update(quantization=json.dumps(quantization), report=json.dumps(report))
    out = write_state_with_metadata(model, args.out or args.checkpoint, metadata)
    print(f"{out}: {len(records)} biases rounded to their int32 grid s_x * s_w (largest change "
          f"{report['stages']['int32_bias']['max_change_steps']:.3f} of a step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
