#!/usr/bin/env python
"""Where an INT8 checkpoint loses its accuracy: the same quantized model scored with parts of it back in FP32.

A quantized checkpoint stores its weights as INT8 values times their scales (adaptive rounding and round-to-nearest
are baked in), so its weights cannot be switched back to FP32; the FP32 checkpoint is the reference row. Rows: the
FP32 model; every layer INT8; INT8 weights with FP32 activations (every input quantizer off); and every layer INT8
except the activations of one group of layers (module-name prefixes). Each row detects on the same sim val frames;
the table says how much of the gap to FP32 the weights and each group's activations hold.

With --weights-by-group the rows are instead the FP32 model with the weights of one group of layers rounded to
INT8 (per output channel, round-to-nearest, BN folded, first-layer channel scaling with --input-channel-alpha),
every activation FP32: which layers' weights cost accuracy before any method touches them. A diagnosis, not a
deployable configuration. Rows land as they finish (resumable):

    ./dev run python benchmarks/ptq_diagnose.py --checkpoint sim_pillar_int8 --frames 500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lidar_ptq_core.benchmarking import append_jsonl, calibration_batches, evaluate_network, read_jsonl
from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.quant import quant_wrappers
from lidar_ptq_core.recipes.centerpoint import load_any_checkpoint
from lidar_ptq_core.runtime import bundled_checkpoint
from lidar_ptq_core.sim import SimDataset, load_sim_config

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("vfe", "backbone_3d", "backbone_2d.blocks", "backbone_2d.deblocks", "dense_head.shared_conv",
          "dense_head.heads_list")


def set_activations(model, enabled: bool, float_prefixes=()) -> None:
    for name, wrapper in quant_wrappers(model).items():
        in_float = any(name == p or name.startswith(p + ".") for p in float_prefixes)
        wrapper.input_quantizer.enabled = enabled and not in_float


def set_weights(model, prefixes) -> None:
    """Input quantizers off everywhere; weight quantizers on in the layers under `prefixes` only."""
    for name, wrapper in quant_wrappers(model).items():
        wrapper.input_quantizer.enabled = False
        if hasattr(wrapper, "weight_quantizer"):
            wrapper.weight_quantizer.enabled = any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def weights_by_group(fp32, fp32_name: str, args):
    """A max-calibrated copy of the FP32 model whose weights are fake-quantized on the fly (nothing baked)."""
    from lidar_ptq_core.quant import method_config
    from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint

    calib = SimDataset("calib", args.calib_frames, load_sim_config("default"))
    calib.prepare(num_workers=1)
    config = method_config("sparse-max", input_channel_alpha=args.input_channel_alpha, int32_bias=False,
                           sensitivity_frames=0)
    model, _ = quantize_centerpoint(fp32, calibration_batches(fp32.config, calib), "sparse-max", config,
                                    progress=False)
    names = list(quant_wrappers(model))
    groups = [g for g in GROUPS if any(n == g or n.startswith(g + ".") for n in names)]
    rows = [(f"FP32 ({fp32_name})", None), ("INT8 weights everywhere, FP32 activations", {"weights_of": ("",)})]
    rows += [(f"INT8 weights of {g} only", {"weights_of": (g,)}) for g in groups]
    return model, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="sim_pillar_int8")
    parser.add_argument("--fp32", default=None, help="the FP32 checkpoint (default: the name without _int8)")
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="default docs/benchmarks/ptq_diagnose_<checkpoint>")
    parser.add_argument("--weights-by-group", action="store_true")
    parser.add_argument("--input-channel-alpha", type=float, default=1.0)
    parser.add_argument("--calib-frames", type=int, default=32, help="for --weights-by-group: channel scaling")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.checkpoint)
    model = load_any_checkpoint(path if path.is_file() else bundled_checkpoint(args.checkpoint))
    fp32_name = args.fp32 or path.stem.removesuffix("_int8")
    fp32_path = Path(fp32_name)
    fp32 = load_any_checkpoint(fp32_path if fp32_path.is_file() else bundled_checkpoint(fp32_name))
    names = list(quant_wrappers(model))
    groups = [g for g in GROUPS if any(n == g or n.startswith(g + ".") for n in names)]
    rows_spec = [(f"FP32 ({fp32_name})", None),
                 ("every layer INT8", dict(enabled=True)),
                 ("INT8 weights, FP32 activations", dict(enabled=False))]
    rows_spec += [(f"INT8 but {g} activations FP32", dict(enabled=True, float_prefixes=(g,))) for g in groups]

    if args.weights_by_group:
        model, rows_spec = weights_by_group(fp32, fp32_name, args)
        path = Path(f"{fp32_name}_weights_alpha{args.input_channel_alpha:g}")
    out = Path(args.out or REPO / "docs" / "benchmarks" / f"ptq_diagnose_{path.stem}")
    rows_path = out.with_suffix(".jsonl")
    rows = read_jsonl(rows_path)
    val = SimDataset("val", args.frames, load_sim_config("default"))
    val.prepare(num_workers=1)
    for label, switches in rows_spec:
        if any(r["row"] == label for r in rows):
            continue
        if switches is None:
            result, _ = evaluate_network(fp32, val)
        elif "weights_of" in switches:
            set_weights(model, switches["weights_of"])
            result, _ = evaluate_network(model, val)
        else:
            set_activations(model, **switches)
            result, _ = evaluate_network(model, val)
        row = {"row": label, "mAP": result.distance_map["all"], "bev_iou_mAP": result.iou_map["all"],
               "mAP_by_range": {r: result.distance_map[r] for r in result.ranges if r != "all"}}
        rows.append(row)
        append_jsonl(rows_path, row)
        reference = next((r for r in rows if r["row"].startswith("FP32")), None)
        ranges = list(row["mAP_by_range"])
        lines = [f"{args.checkpoint}: the INT8 model with parts of it in FP32 (same weights and scales); "
                 f"{args.frames} sim val frames, centre-distance mAP and BEV IoU mAP in %; d = vs FP32",
                 "", f"{'row':<50} {'mAP':>6} {'d mAP':>6} {'BEV IoU':>8} " + " ".join(f"{r:>7}" for r in ranges)]
        for r in rows:
            delta = 100 * (r["mAP"] - reference["mAP"]) if reference else float("nan")
            lines.append(f"{r['row']:<50} {100 * r['mAP']:6.1f} {delta:+6.1f} {100 * r['bev_iou_mAP']:8.1f} "
                         + " ".join(f"{100 * r['mAP_by_range'][k]:7.1f}" for k in ranges))
        write_bytes_atomic(out.with_suffix(".txt"), ("\n".join(lines) + "\n").encode())
        print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
