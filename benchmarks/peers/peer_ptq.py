#!/usr/bin/env python
"""INT8 accuracy of NVIDIA's own PTQ tools on the sim models, beside the project's methods: one row per (tool, method).

Peers: NVIDIA ModelOpt (`mtq.quantize` with `mtq.INT8_DEFAULT_CFG`) and pytorch-quantization 2.1.3 (its default
descriptors: per-channel weights, per-tensor inputs, histogram calibrator, amax from entropy / percentile / mse, or the
max calibrator). Each tool runs its standard recipe unchanged: BN is not folded (the tools quantize the conv weights
as they are), residual adds and outputs get no quantizer. The spconv sparse convs of the voxel model are unknown to
both tools; they are given INT8 quantizers through each tool's own extension point (ModelOpt's QuantModuleRegistry
via `mtq.register`, pytorch-quantization's TensorQuantizer), with the same layout as the dense convs (weights per
output channel, input features per tensor); each row's "note" says so.

Calibration batches and evaluation are exactly those of benchmarks/ptq_accuracy.py (same sim calib and val frames,
one frame per batch, Detector + run_detector_on_dataset + evaluate in the detector's region; the helpers of
lidar_ptq_core/benchmarking.py, row_of and format_rows included). Rows land in <out-dir>/peers_<model>.jsonl as
they finish (a rerun skips rows already there) and the table goes to <out-dir>/peers_<model>.txt. Runs in the peers
venv (benchmarks/peers/setup_venv.sh), never in .venv:

    benchmarks/peers/setup_venv.sh
    .venv-peers/bin/python benchmarks/peers/peer_ptq.py --model sim_pillar > runs/peers_pillar.log 2>&1 &

With --split test the rows are not scored here: each quantized model detects the first --frames sim test frames into
a box folder under runs/test_split/<model>/<sim fingerprint>/ (pred/ written frame by frame, meta.json when complete;
a rerun whose quantized weights are the same continues where it stopped), and benchmarks/test_split_headline.py
--box-dirs scores them against FP32 with paired intervals, like every other test row.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import platform
import shutil
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from lidar_ptq_core.benchmarking import (
    append_jsonl,
    calibration_batches,
    evaluate_network,
    format_rows,
    read_jsonl,
    row_of,
)
from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.models.checkpoint import load_checkpoint
from lidar_ptq_core.runtime import bundled_checkpoint
from lidar_ptq_core.sim import SimDataset, load_sim_config

REPO = Path(__file__).resolve().parents[2]
TEST_CACHE = REPO / "runs" / "test_split"  # where benchmarks/test_split_headline.py keeps every model's boxes

TOOLS = ("fp32", "modelopt", "pytorch-quantization")
PQ_METHODS = ("entropy", "percentile", "mse", "max")
PQ_PERCENTILE = 99.99  # pytorch-quantization's documented example value


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def is_sparse_conv(module: torch.nn.Module) -> bool:
    """spconv sparse convs (SubMConv3d, SparseConv3d and the project's subclass); spconv is only imported when the
    model already has it (the voxel model), since the pillar model never touches it."""
    if "spconv" not in sys.modules:
        return False
    from spconv.pytorch.conv import SparseConvolution

    return isinstance(module, SparseConvolution)


def sparse_conv_with_weight(conv, x, weight):
    """Run spconv conv `conv` on sparse tensor `x` with `weight` in place of its own, adding the bias after the conv
    (spconv's fused bias is rejected on CPU; same math, as lidar_ptq_core's SubMConv3d does)."""
    out = conv._conv_forward(conv.training, x, weight, None, name=conv.name,
                             sparse_unique_name=conv._sparse_unique_name)
    return out if conv.bias is None else out.replace_feature(out.features + conv.bias)


# ----------------------------------------------------------------------------------------------------- ModelOpt
def register_sparse_convs_with_modelopt(model: torch.nn.Module) -> list[str]:
    """Teach ModelOpt the spconv classes in `model`, so INT8_DEFAULT_CFG's `*weight_quantizer` / `*input_quantizer`
    entries reach them: a QuantLinearConvBase whose input quantizer sees the sparse tensor's features (ModelOpt's
    own forward would hand it the SparseConvTensor). Returns the registered class names."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization import tensor_quant
    from modelopt.torch.quantization.nn import QuantModuleRegistry
    from modelopt.torch.quantization.nn.modules.quant_module import QuantInputBase, QuantLinearConvBase

    class QuantSparseConv(QuantLinearConvBase):
        """INT8 spconv conv for ModelOpt: spconv weights are (out, kz, ky, kx, in), so axis 0 is per out-channel."""

        default_quant_desc_weight = tensor_quant.QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL

        def forward(self, x, *args, **kwargs):
            x = x.replace_feature(self.input_quantizer(x.features))
            with self.quantize_weight():  # self.weight reads through weight_quantizer inside this block
                # Skip QuantInputBase.forward (it would quantize the SparseConvTensor itself): straight to spconv.
                out = super(QuantInputBase, self).forward(x, *args, **kwargs)
            return out.replace_feature(self.output_quantizer(out.features))

    registered = []
    for cls in sorted({type(m) for m in model.modules() if is_sparse_conv(m)}, key=lambda c: c.__qualname__):
        if cls not in QuantModuleRegistry:
            mtq.register(original_cls=cls, quantized_cls=type(f"Quant{cls.__name__}", (QuantSparseConv,), {}))
        registered.append(f"{cls.__module__}.{cls.__qualname__}")
    return registered


def quantize_modelopt(model, batches) -> tuple[torch.nn.Module, str, str]:
    """mtq.quantize with INT8_DEFAULT_CFG (max calibration, per-channel weights, per-tensor inputs)."""
    import modelopt.torch.quantization as mtq

    sparse = register_sparse_convs_with_modelopt(model)

    def forward_loop(net):
        with torch.no_grad():
            for batch in batches:
                net(batch)

    model = mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)
    quantizers = {name: m for name, m in model.named_modules() if type(m).__name__ == "TensorQuantizer"}
    enabled = [name for name, m in quantizers.items() if m.is_enabled]
    sparse_enabled = [n for n in enabled if is_sparse_conv(model.get_submodule(n.rsplit(".", 1)[0]))]
    note = f"{len(enabled)} of {len(quantizers)} quantizers enabled"
    if sparse:
        note += (f"; spconv sparse convs INT8 via mtq.register ({', '.join(c.rsplit('.', 1)[1] for c in sparse)}): "
                 f"{len(sparse_enabled)} sparse quantizers enabled")
    return model, "modelopt INT8_DEFAULT_CFG", note


# ------------------------------------------------------------------------------------------ pytorch-quantization
def _pq_input_desc(calib_method: str):
    from pytorch_quantization.tensor_quant import QuantDescriptor

    return QuantDescriptor(num_bits=8, calib_method="max" if calib_method == "max" else "histogram")


def attach_pq_sparse_quantizers(model: torch.nn.Module, calib_method: str) -> int:
    """pytorch-quantization knows no spconv layer: give each sparse conv a TensorQuantizer pair laid out like its
    QuantConv3d (weights per out-channel, input features per tensor, same calibrator) by switching the instance to a
    subclass whose forward quantizes features and weight. Replaced in place, after the weights were loaded."""
    from pytorch_quantization.nn import TensorQuantizer
    from pytorch_quantization.tensor_quant import QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL

    def forward(self, x):
        x = x.replace_feature(self._input_quantizer(x.features))
        return sparse_conv_with_weight(self, x, self._weight_quantizer(self.weight))

    subclasses: dict[type, type] = {}
    count = 0
    for module in model.modules():
        if not is_sparse_conv(module):
            continue
        cls = type(module)
        if cls not in subclasses:
            subclasses[cls] = type(f"PQ{cls.__name__}", (cls,), {"forward": forward})
        module._input_quantizer = TensorQuantizer(_pq_input_desc(calib_method))
        module._weight_quantizer = TensorQuantizer(QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL)
        module.__class__ = subclasses[cls]
        count += 1
    return count


@contextlib.contextmanager
def cuda_calls_stay_on_cpu():
    """pytorch-quantization 2.1.3's mse amax search moves its histogram with an unconditional `.cuda()`, which asserts
    on a CPU-only torch. Inside this block Tensor.cuda returns the tensor itself (only when CUDA is absent), so the
    tool's own search runs unchanged on CPU."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def build_pq_model(model_name: str, calib_method: str):
    """The FP32 checkpoint built under pytorch-quantization's monkey patching (quant_modules.initialize), so every
    nn.Conv2d / ConvTranspose2d / Linear is its Quant* twin with default descriptors; uncalibrated quantizers carry no
    state, so the FP32 state_dict still loads strictly. The patching is undone right after."""
    from absl import logging as absl_logging
    from pytorch_quantization import nn as quant_nn
    from pytorch_quantization import quant_modules

    absl_logging.set_verbosity(absl_logging.ERROR)  # one "Load calibrated amax" warning per quantizer otherwise
    desc = _pq_input_desc(calib_method)
    for cls in (quant_nn.QuantConv2d, quant_nn.QuantConvTranspose2d, quant_nn.QuantLinear, quant_nn.QuantConv3d):
        cls.set_default_quant_desc_input(desc)
    quant_modules.initialize()
    try:
        model = load_checkpoint(bundled_checkpoint(model_name))
    finally:
        quant_modules.deactivate()
    return model


def quantize_pytorch_quantization(model, batches, calib_method: str) -> tuple[torch.nn.Module, str, str]:
    """pytorch-quantization's calibration recipe: quantizers in calibration mode (quantization off) over the
    calibration batches, then amax from the calibrators (histogram ones with `calib_method`), quantization back on."""
    from pytorch_quantization import calib
    from pytorch_quantization.nn import TensorQuantizer

    sparse = attach_pq_sparse_quantizers(model, calib_method)
    quantizers = [m for m in model.modules() if isinstance(m, TensorQuantizer)]
    for q in quantizers:
        if q._calibrator is not None:
            q.disable_quant()
            q.enable_calib()
        else:
            q.disable()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for q in quantizers:
        if q._calibrator is None:
            q.enable()
            continue
        if isinstance(q._calibrator, calib.MaxCalibrator):
            q.load_calib_amax()
        elif calib_method == "percentile":
            q.load_calib_amax("percentile", percentile=PQ_PERCENTILE)
        elif calib_method == "mse":
            with cuda_calls_stay_on_cpu():
                q.load_calib_amax("mse")
        else:
            q.load_calib_amax(calib_method)
        q.disable_calib()
        q.enable_quant()
    layers = sum(1 for m in model.modules() if hasattr(m, "_weight_quantizer"))
    note = (f"{layers} layers with weight+input quantizers (quant_modules.initialize)"
            + (f"; {sparse} spconv sparse convs INT8 via TensorQuantizer" if sparse else "")
            + (f"; percentile {PQ_PERCENTILE}" if calib_method == "percentile" else "")
            + ("; mse search on CPU (2.1.3 calls .cuda() unconditionally: made a no-op there)"
               if calib_method == "mse" and not torch.cuda.is_available() else ""))
    return model, f"pytorch-quantization {calib_method}", note


# ------------------------------------------------------------------------------------------------ test split
def weights_digest(net: torch.nn.Module) -> str:
    """First 12 hex digits of a SHA-256 over every tensor of the quantized model (names, shapes and bytes): a box
    folder belongs to these exact weights and quantizer ranges."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def method_slug(method: str) -> str:
    """'modelopt INT8_DEFAULT_CFG' -> 'modelopt-int8_default_cfg': a folder name."""
    return "-".join(method.lower().split())


def detect_test_boxes(net, method: str, note: str, dataset, box_dir: Path, gt_dir: Path, calibration: str,
                      quant_seconds: float) -> Path:
    """Detect every frame of `dataset` with `net` into box_dir/pred (resumable: frames already there are kept when
    the weights are the same), then write box_dir/meta.json, the sign that the folder is complete."""
    from lidar_ptq_core.benchmarking import detect_into_box_files
    from lidar_ptq_core.io_utils import write_json_atomic
    from lidar_ptq_core.runtime import Detector

    digest = weights_digest(net)
    digest_path = box_dir / "weights_digest"
    if digest_path.is_file() and digest_path.read_text().strip() != digest:
        print(f"[{method}] weights differ from the boxes in {box_dir}: detecting every frame again", flush=True)
        shutil.rmtree(box_dir)
    box_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(digest_path, digest.encode())
    with torch.no_grad():
        seconds = detect_into_box_files(lambda: Detector(net), dataset, box_dir / "pred", gt_dir, f"[{method}]")
    if not seconds:
        print(f"[{method}] boxes already in {box_dir}", flush=True)
    meta_path = box_dir / "meta.json"
    earlier = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    write_json_atomic(meta_path, {
        "name": method_slug(method), "method": method, "digest": digest, "frames": len(dataset),
        "sim_fingerprint": dataset.fingerprint, "calibration": calibration, "note": note,
        "quant_seconds": round(quant_seconds, 1),
        "median_ms": round(1000 * float(np.median(seconds)), 1) if seconds else earlier.get("median_ms"),
    })
    return box_dir


# ---------------------------------------------------------------------------------------------------- table
def format_table(rows: list[dict], header: str) -> str:
    """benchmarking.format_rows, with its 18-character method column widened to fit the peers' longer names."""
    table = format_rows(rows, header).splitlines()
    width = max([18] + [len(r["method"]) for r in rows])
    first = 2  # format_rows: header, blank line, column titles, one line per row
    names = ["method"] + [r["method"] for r in rows]
    for i, name in enumerate(names):
        line = table[first + i]
        table[first + i] = name.ljust(width) + line[max(18, len(name)):]
    notes = [f"  {r['method']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(table + ([""] + notes if notes else [])) + "\n"


def quantize_job(model_name: str, tool: str, calib_method: str | None, batches):
    """(network, method, note, seconds) of one peer tool on the calibration batches."""
    t0 = time.time()
    if tool == "modelopt":
        model = load_checkpoint(bundled_checkpoint(model_name))
        t0 = time.time()
        net, method, note = quantize_modelopt(model, batches)
    else:
        model = build_pq_model(model_name, calib_method)
        net, method, note = quantize_pytorch_quantization(model, batches, calib_method)
    return net, method, note, time.time() - t0


def run_test_split(args, versions: dict) -> int:
    """Each peer row as a box folder of the test frames, for benchmarks/test_split_headline.py --box-dirs."""
    sim = load_sim_config("default")
    calib = SimDataset("calib", args.calib_frames, sim)
    test = SimDataset("test", args.test_frames, sim)
    calib.prepare(num_workers=1)
    test.prepare(num_workers=1)
    cache = TEST_CACHE / args.model / test.fingerprint[:12]
    batches = calibration_batches(load_checkpoint(bundled_checkpoint(args.model)).config, calib)
    jobs = [(tool, method) for tool in args.tool if tool != "fp32"  # the headline script detects FP32 itself
            for method in (args.calib_method if tool == "pytorch-quantization" else [None])]
    made = []
    for tool, calib_method in jobs:
        net, method, note, seconds = quantize_job(args.model, tool, calib_method, batches)
        tool_version = versions["nvidia-modelopt" if tool == "modelopt" else tool]
        print(f"[{method}] quantized in {seconds:.0f} s; {note}", flush=True)
        box_dir = cache / f"peer-{method_slug(method)}-{tool_version}"
        calibration = (f"{method} ({tool} {tool_version}, torch {versions['torch']}) on sim calib "
                       f"0..{args.calib_frames - 1}, {args.threads} threads")
        made.append(detect_test_boxes(net, method, note, test, box_dir, cache / "gt", calibration, seconds))
    print("score them beside FP32 (in .venv):\n  ./dev run python benchmarks/test_split_headline.py --model "
          f"{args.model} --frames {args.test_frames} --box-dirs "
          + " ".join(str(d.relative_to(REPO)) for d in made) + f" --out docs/benchmarks/test_split_{args.model}_peers",
          flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sim_pillar", choices=["sim_pillar", "sim_voxel"])
    parser.add_argument("--tool", nargs="+", default=list(TOOLS), choices=TOOLS,
                        help="fp32 is the unquantized reference row, evaluated in this venv")
    parser.add_argument("--calib-method", nargs="+", default=["entropy"], choices=PQ_METHODS,
                        help="pytorch-quantization amax methods, one row each")
    parser.add_argument("--calib-frames", type=int, default=256)
    parser.add_argument("--val-frames", type=int, default=500)
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="val: score here (rows in peers_<model>); test: detect box folders for "
                             "benchmarks/test_split_headline.py --box-dirs")
    parser.add_argument("--test-frames", type=int, default=1000, help="with --split test: frames 0..N-1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=str(REPO / "docs" / "benchmarks"),
                        help="where peers_<model>.jsonl/.txt go (smoke runs: somewhere under /tmp)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = out_dir / f"peers_{args.model}.jsonl"
    rows = read_jsonl(rows_path)
    done = {r["method"] for r in rows}

    versions = {name: package_version(name) for name in ("torch", "nvidia-modelopt", "pytorch-quantization")}
    jobs = [(tool, method) for tool in args.tool
            for method in (args.calib_method if tool == "pytorch-quantization" else [None])]
    planned = {"fp32": "fp32", "modelopt": "modelopt INT8_DEFAULT_CFG"}
    jobs = [(t, m) for t, m in jobs if planned.get(t, f"pytorch-quantization {m}") not in done]

    if args.split == "test":
        return run_test_split(args, versions)

    fp32 = load_checkpoint(bundled_checkpoint(args.model))
    sim = load_sim_config("default")
    calib = SimDataset("calib", args.calib_frames, sim)
    val = SimDataset("val", args.val_frames, sim)
    calib.prepare(num_workers=1)
    val.prepare(num_workers=1)
    batches = calibration_batches(fp32.config, calib)
    header = (f"{args.model}: NVIDIA peer INT8 PTQ, each tool's standard recipe (nvidia-modelopt "
              f"{versions['nvidia-modelopt']}, pytorch-quantization {versions['pytorch-quantization']}, torch "
              f"{versions['torch']}; weights per channel, activations per tensor, BN not folded); {args.val_frames} "
              f"sim val frames, centre-distance mAP and BEV IoU mAP in %, mAP by range; quantization wall time on "
              f"{args.threads} threads of this machine ({platform.processor() or platform.machine()})")
    if rows:
        table = format_table(rows, header)
        write_bytes_atomic(out_dir / f"peers_{args.model}.txt", table.encode())
    for tool, calib_method in jobs:
        started = time.time()
        if tool == "fp32":
            net, method, note, seconds, frames = fp32, "fp32", "", 0.0, 0
        else:
            net, method, note, seconds = quantize_job(args.model, tool, calib_method, batches)
            frames = len(batches)
        print(f"[{method}] quantized in {seconds:.0f} s; {note}", flush=True)
        result, run = evaluate_network(net, val)
        row = row_of(method, result, frames, seconds, run.median_ms)
        row.update(tool=tool, tool_version=versions[{"fp32": "torch", "modelopt": "nvidia-modelopt"}.get(tool, tool)],
                   torch=versions["torch"], val_frames=args.val_frames, note=note)
        rows.append(row)
        append_jsonl(rows_path, row)
        table = format_table(rows, header)
        write_bytes_atomic(out_dir / f"peers_{args.model}.txt", table.encode())
        print(table, flush=True)
        print(f"[{method}] done in {time.time() - started:.0f} s", flush=True)
    if not jobs and rows:
        print(format_table(rows, header), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
