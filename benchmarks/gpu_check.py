#!/usr/bin/env python
"""The GPU check: what the torch CUDA path gives against the CPU, stage by stage, on a machine with an NVIDIA GPU.

Runs as it is (at most ~8 minutes on one GPU and 16 CPU cores), from the repository root, with the project's
dependencies importable (torch with CUDA, numpy, safetensors, PyYAML, tqdm; spconv for the voxel model):

    PYTHONPATH=. python benchmarks/gpu_check.py --out docs/benchmarks/gpu_check

What it measures, each part on its own (a part that fails is recorded with its error and the rest goes on):
- the machine: GPU, torch and CUDA versions, spconv on the GPU (a sparse conv run against a dense conv3d), TensorRT
  (importable or not);
- for sim_pillar, sim_voxel (when spconv runs on the GPU) and the full-size Waymo CenterPoint-Pillar (468 x 468 BEV,
  RANDOM weights: timing and parity only): per-stage times (voxelize on the CPU, encode, dense, decode; medians with
  a synchronize after each GPU stage) of FP32 on the CPU and on the GPU, FP16 autocast on the GPU, and INT8 fake-quant
  on both; parity of every GPU row against its CPU row (head outputs, box agreement) and, where ground truth exists,
  mAP per row on the same frames;
- `lidar-ptq-fast` quantization timed on the GPU and on the CPU from the same calibration frames, and the two INT8
  models compared (step sizes and mAP).
Writes OUT.txt (the report) and OUT.json. Nothing here is a pass/fail gate: it prints figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import traceback
import warnings

import numpy as np
import torch

from lidar_ptq_core.agreement import detection_agreement
from lidar_ptq_core.bench import fit_point_features, random_model
from lidar_ptq_core.decode import decode_batch
from lidar_ptq_core.devices import batch_to, exact_fp32, resolve_device, synchronize
from lidar_ptq_core.evaluate import evaluate
from lidar_ptq_core.io_utils import write_text_and_json
from lidar_ptq_core.voxelize import voxelize_clouds

warnings.filterwarnings("ignore", category=FutureWarning)  # spconv's torch.cuda.amp decorators, once per import
warnings.filterwarnings("ignore", category=UserWarning, module="spconv")
GPU = "cuda"  # --dry-run-on-cpu replaces it to walk through the script on a machine without a GPU

LINES: list[str] = []
RESULT: dict = {"parts": {}}
STARTED = time.perf_counter()


def say(text: str = "") -> None:
    print(text, flush=True)
    LINES.append(text)


def elapsed() -> float:
    return time.perf_counter() - STARTED


def part(name: str):
    """Decorator: run a part, record its result or its error, never stop the script."""
    def wrap(fn):
        def run(*args, **kwargs):
            say(f"\n== {name} (at {elapsed():.0f} s)")
            t0 = time.perf_counter()
            try:
                value = fn(*args, **kwargs)
                RESULT["parts"][name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 1), "result": value}
                return value
            except Exception as exc:  # a failed part is a finding, not the end of the check
                say(f"FAILED: {type(exc).__name__}: {exc}")
                say("".join(traceback.format_exception(exc)[-6:]).rstrip())
                RESULT["parts"][name] = {"ok": False, "seconds": round(time.perf_counter() - t0, 1),
                                         "error": f"{type(exc).__name__}: {exc}"}
                return None
        return run
    return wrap


# -- the machine

@part("machine")
def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import onnxruntime

        info["onnxruntime"] = f"{onnxruntime.__version__} providers {onnxruntime.get_available_providers()}"
    except ImportError as exc:
        info["onnxruntime"] = f"not importable ({exc})"
    try:
        import tensorrt  # noqa: F401

        info["tensorrt"] = tensorrt.__version__
    except Exception as exc:  # ImportError, or a broken install's OSError
        info["tensorrt"] = f"NOT importable ({type(exc).__name__}: {exc}): the TensorRT path stays unverified"
    for key, value in info.items():
        say(f"  {key}: {value}")
    return info


@part("spconv on the GPU")
def spconv_check() -> dict:
    """A SubMConv3d on the GPU (spconv's default algorithm) against the same weights on the CPU (Native) and a dense
    conv3d at the active sites."""
    import spconv.pytorch as spconv

    torch.manual_seed(0)
    coords = torch.unique(torch.randint(0, 24, (3000, 3)), dim=0)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1).int()
    features = torch.randn(len(coords), 16)
    conv_cpu = spconv.SubMConv3d(16, 32, 3, padding=1, bias=False, indice_key="k",
                                 algo=spconv.ConvAlgo.Native)
    conv_gpu = spconv.SubMConv3d(16, 32, 3, padding=1, bias=False, indice_key="k").to(GPU)
    conv_gpu.weight.data.copy_(conv_cpu.weight.data)
    x_cpu = spconv.SparseConvTensor(features, coords, [24, 24, 24], 1)
    x_gpu = spconv.SparseConvTensor(features.to(GPU), coords.to(GPU), [24, 24, 24], 1)
    y_cpu = conv_cpu(x_cpu).dense()
    y_gpu = conv_gpu(x_gpu).dense().cpu()
    dense = torch.nn.functional.conv3d(x_cpu.dense(), conv_cpu.weight.permute(0, 4, 1, 2, 3), padding=1)
    mask = (x_cpu.dense().abs().sum(1, keepdim=True) > 0).float()
    info = {"spconv": getattr(spconv, "__version__", None) or __import__("spconv").__version__,
            "gpu_vs_cpu_max_abs": float((y_gpu - y_cpu).detach().abs().max()),
            "cpu_vs_dense_max_abs": float((y_cpu - dense * mask).detach().abs().max())}
    say(f"  spconv {info['spconv']}: GPU vs CPU max |diff| {info['gpu_vs_cpu_max_abs']:.2e}, CPU vs dense conv3d "
        f"{info['cpu_vs_dense_max_abs']:.2e}")
    return info


# -- frames

def sim_frames(split: str, count: int, workers: int):
    from lidar_ptq_core.sim import SimDataset, load_sim_config

    data = SimDataset(split, count, load_sim_config("default"))
    data.prepare(num_workers=workers, progress=False)
    frames = [data[i] for i in range(len(data))]
    return [f.points for f in frames], [f.gt for f in frames]


# -- running a model, stage by stage

def run_model(model, clouds, device, fp16: bool = False, keep_outputs: int = 4, tf32: bool = False):
    """Per-stage ms (median), detections per frame, head outputs of the first `keep_outputs` frames (on the CPU).
    tf32: let cuDNN and matmuls use TF32 for this run (torch's default for convolutions; the commands turn it off)."""
    exact_fp32(not tf32)
    config = model.config
    features = config.num_point_features
    geometry, post = config.head_geometry(), config.post_processing
    times = {k: [] for k in ("voxelize", "encode", "dense", "decode", "total")}
    detections, outputs_kept = [], []
    autocast = torch.autocast(torch.device(device).type, dtype=torch.float16, enabled=fp16)
    with torch.inference_mode():
        for index, points in enumerate([clouds[0], *clouds]):  # the first run warms up (allocations, kernels)
            t0 = time.perf_counter()
            batch = voxelize_clouds([fit_point_features(points, features)], config.voxelization, features)[0]
            batch = batch_to(batch, device)
            synchronize(device)
            t1 = time.perf_counter()
            with autocast:
                bev = model.bev_features(batch)
                synchronize(device)
                t2 = time.perf_counter()
                outputs = model.dense(bev)
            outputs = [{k: v.float() for k, v in task.items()} for task in outputs]
            synchronize(device)
            t3 = time.perf_counter()
            dets = decode_batch(outputs, geometry, post)[0]
            t4 = time.perf_counter()
            if index == 0:
                continue
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                times[key].append(1000 * value)
            detections.append(dets)
            if len(outputs_kept) < keep_outputs:
                outputs_kept.append([{k: v.cpu() for k, v in task.items()} for task in outputs])
    exact_fp32(True)
    return {k: float(np.median(v)) for k, v in times.items()}, detections, outputs_kept


def output_difference(a, b) -> dict:
    """Largest heatmap probability and box regression differences between two sets of head outputs."""
    hm, box = 0.0, 0.0
    for frame_a, frame_b in zip(a, b):
        for task_a, task_b in zip(frame_a, frame_b):
            for head, value in task_a.items():
                if head == "hm":
                    hm = max(hm, float((value.sigmoid() - task_b[head].sigmoid()).abs().max()))
                else:
                    box = max(box, float((value - task_b[head]).abs().max()))
    return {"hm_prob_max_abs": hm, "box_max_abs": box}


def accuracy(detections, gts, config) -> dict:
    pcr = config.voxelization.point_cloud_range
    result = evaluate(detections, gts[: len(detections)], list(config.head_geometry().class_names),
                      region=(pcr[0], pcr[1], pcr[3], pcr[4]))
    return {"mAP": 100 * result.distance_map["all"], "bev_iou_mAP": 100 * result.iou_map["all"]}


def compare_rows(name: str, models: dict, clouds, gts, cpu_frames: int) -> dict:
    """models: row -> (model, device, fp16, tf32). CPU rows run on the first `cpu_frames` frames, GPU rows on all;
    parity and agreement are taken on the frames both have."""
    rows, runs = {}, {}
    for row, (model, device, fp16, tf32) in models.items():
        frames = clouds[:cpu_frames] if row.endswith("-cpu") else clouds
        ms, dets, outs = run_model(model, frames, device, fp16, tf32=tf32)
        runs[row] = (dets, outs)
        rows[row] = {"device": str(device), "fp16": fp16, "tf32": tf32, "frames": len(frames), "ms": ms}
        if gts is not None:
            rows[row]["accuracy"] = accuracy(dets, gts, model.config)
    for row in rows:
        reference = {"fp32-cuda": "fp32-cpu", "tf32-cuda": "fp32-cpu", "fp16-cuda": "fp32-cuda",
                     "int8-cuda": "int8-cpu", "int8-cpu": "fp32-cpu"}.get(row)
        if reference in runs:
            common = min(len(runs[row][0]), len(runs[reference][0]))
            rows[row]["vs"] = reference
            rows[row]["output_difference"] = output_difference(runs[row][1], runs[reference][1])
            rows[row]["agreement"] = detection_agreement(runs[reference][0][:common], runs[row][0][:common],
                                                         models[row][0].config.head_geometry().class_names)
    say(f"  {'row':<11} {'frames':>6} {'voxelize':>9} {'encode':>8} {'dense':>8} {'decode':>8} {'total':>8}  "
        f"{'mAP':>5} {'BEV IoU':>7}  parity")
    for row, rec in rows.items():
        ms, acc = rec["ms"], rec.get("accuracy")
        parity = ""
        if "vs" in rec:
            d, a = rec["output_difference"], rec["agreement"]
            parity = (f"vs {rec['vs']}: hm prob max |diff| {d['hm_prob_max_abs']:.2e}, box {d['box_max_abs']:.2e}; "
                      f"boxes reproduced {100 * a['reference_recall']:.1f} %, mAP vs it {a['map_vs_reference']:.1f}")
        acc_text = f"{acc['mAP']:5.1f} {acc['bev_iou_mAP']:7.1f}" if acc else f"{'-':>5} {'-':>7}"
        say(f"  {row:<11} {rec['frames']:>6} {ms['voxelize']:9.1f} {ms['encode']:8.1f} {ms['dense']:8.1f} "
            f"{ms['decode']:8.1f} {ms['total']:8.1f}  {acc_text}  {parity}")
    return rows


def model_rows(fp32_cpu, fp32_gpu, int8_cpu, int8_gpu) -> dict:
    rows = {"fp32-cpu": (fp32_cpu, "cpu", False, False), "fp32-cuda": (fp32_gpu, GPU, False, False),
            "tf32-cuda": (fp32_gpu, GPU, False, True), "fp16-cuda": (fp32_gpu, GPU, True, False)}
    if int8_cpu is not None:
        rows["int8-cpu"] = (int8_cpu, "cpu", False, False)
        rows["int8-cuda"] = (int8_gpu, GPU, False, False)
    return rows


def trained_model_part(name: str, clouds, gts, cpu_frames: int):
    @part(f"{name}: FP32, FP16 and INT8 fake-quant, CPU vs GPU (ms per frame, medians)")
    def run():
        from lidar_ptq_core.recipes.centerpoint import load_any_checkpoint
        from lidar_ptq_core.runtime import bundled_checkpoint

        fp32 = [load_any_checkpoint(bundled_checkpoint(name), device=d).eval() for d in ("cpu", GPU)]
        int8 = [load_any_checkpoint(bundled_checkpoint(f"{name}_int8"), device=d).eval() for d in ("cpu", GPU)]
        return compare_rows(name, model_rows(fp32[0], fp32[1], int8[0], int8[1]), clouds, gts, cpu_frames)
    return run()


def timed_quantization(key: str, model, device, calib, method: str):
    """(INT8 model, record) of `method` on `calib` with the model on `device`, timed with the GPU work finished."""
    from lidar_ptq_core.quant import method_config
    from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint

    config = model.config
    batches = [batch_to(voxelize_clouds([fit_point_features(c, config.num_point_features)], config.voxelization,
                                        config.num_point_features)[0], device) for c in calib]
    synchronize(device)
    t0 = time.perf_counter()
    qmodel, report = quantize_centerpoint(model, batches, method, method_config(method), progress=False)
    synchronize(device)
    seconds = time.perf_counter() - t0
    record = {"frames": len(calib), "seconds": round(seconds, 2),
              "stages": {k: v.get("seconds") for k, v in report.stages.items()}}
    say(f"  {key}: {len(calib)} calibration frames, {seconds:.1f} s (stages "
        + ", ".join(f"{k} {v}" for k, v in record["stages"].items()) + ")")
    return qmodel, record


def quantize_part(label: str, model_cpu, model_gpu, calib, val, gts, cpu_calib_frames: int,
                  method: str = "lidar-ptq-fast"):
    @part(f"{label}: {method} quantization, GPU vs CPU from the same calibration frames")
    def run():
        config = model_cpu.config
        results, models = {}, {}
        for key, device, model, frames in (("cuda", GPU, model_gpu, len(calib)),
                                           ("cpu", "cpu", model_cpu, cpu_calib_frames)):
            if frames == 0:
                say(f"  cpu: skipped ({elapsed():.0f} s used of the budget)")
                continue
            models[key], results[key] = timed_quantization(key, model, device, calib[:frames], method)
        if results.get("cpu", {}).get("frames") == results["cuda"]["frames"]:
            cpu_state = models["cpu"].state_dict()
            gpu_state = {k: v.cpu() for k, v in models["cuda"].state_dict().items()}
            amax = [k for k in cpu_state if k.endswith("amax")]
            rel = max(float(((gpu_state[k] - cpu_state[k]).abs() / cpu_state[k].abs().clamp(min=1e-8)).max())
                      for k in amax)
            results["step_size_max_rel_diff"] = rel
            say(f"  same frames on both: largest relative step-size difference GPU vs CPU {rel:.2e} "
                f"({len(amax)} ranges)")
            if gts is not None:  # both INT8 models run on the GPU: the difference is the quantization's alone
                for key in ("cuda", "cpu"):
                    _, dets, _ = run_model(models[key].to(GPU), val, GPU)
                    results[key]["accuracy"] = accuracy(dets, gts, config)
                    say(f"  INT8 quantized on {key}, run on the GPU: mAP {results[key]['accuracy']['mAP']:.2f}, "
                        f"BEV IoU {results[key]['accuracy']['bev_iou_mAP']:.2f} on {len(val)} test frames")
        return results
    return run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/benchmarks/gpu_check", help="OUT.txt and OUT.json")
    parser.add_argument("--frames", type=int, default=200, help="sim test frames run on every row")
    parser.add_argument("--cpu-frames", type=int, default=200,
                        help="of those, frames the sim models' CPU rows run (the full-size model's: 4)")
    parser.add_argument("--calib-frames", type=int, default=32, help="calibration frames for lidar-ptq-fast")
    parser.add_argument("--budget-s", type=float, default=420, help="skip the optional parts after this many seconds")
    parser.add_argument("--dry-run-on-cpu", action="store_true",
                        help="walk through every part with the CPU standing in for the GPU (checks the script, "
                        "measures nothing about a GPU)")
    args = parser.parse_args()
    global GPU
    torch.manual_seed(0)
    info = machine()
    if args.dry_run_on_cpu:
        GPU = "cpu"
        say("DRY RUN: the CPU stands in for the GPU; no figure below is a GPU figure")
    elif torch.cuda.is_available():
        resolve_device(GPU)  # as the commands do: TF32 off
    else:
        say("no CUDA GPU: this check needs one (the CPU paths are covered by the test suite)")
        write(args.out)
        return 1
    have_spconv = spconv_check() is not None
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    t0 = time.perf_counter()
    # The test split: no choice is made on these frames here, and they are not the frames the recipes were tuned on.
    val, gts = sim_frames("test", args.frames, workers)
    calib, _ = sim_frames("calib", args.calib_frames, workers)
    say(f"\nsim frames: {len(val)} test, {len(calib)} calib, generated in {time.perf_counter() - t0:.1f} s "
        f"({workers} workers); TF32 off unless a row says tf32")
    RESULT["frames"] = {"test": len(val), "calib": len(calib), "cpu_rows": args.cpu_frames}

    trained_model_part("sim_pillar", val, gts, args.cpu_frames)
    from lidar_ptq_core.recipes.centerpoint import load_any_checkpoint
    from lidar_ptq_core.runtime import bundled_checkpoint

    pillar = [load_any_checkpoint(bundled_checkpoint("sim_pillar"), device=d).eval() for d in ("cpu", GPU)]
    quantize_part("sim_pillar", pillar[0], pillar[1], calib, val, gts, len(calib))
    # The paper's stages (grid search, TGPL, adaptive rounding) on the GPU too, on small budgets.
    quantize_part("sim_pillar", pillar[0], pillar[1], calib, val, gts,
                  len(calib) if elapsed() < args.budget_s - 200 else 0, method="lidar-ptq-quick")

    @part("waymo-pillar-random (full-size Waymo CenterPoint-Pillar, 468 x 468 BEV, RANDOM weights: timing and parity)")
    def waymo():
        fp32_cpu = random_model("waymo-pillar-random")
        fp32_gpu = copy.deepcopy(fp32_cpu).to(GPU)
        return compare_rows("waymo", model_rows(fp32_cpu, fp32_gpu, None, None), val[:48], None, 4)
    waymo()

    @part("waymo-pillar-random: lidar-ptq-fast on the GPU (full-size quantization time), INT8 rows")
    def waymo_quant():
        fp32_cpu = random_model("waymo-pillar-random")
        fp32_gpu = copy.deepcopy(fp32_cpu).to(GPU)
        cpu_frames = 4 if elapsed() < args.budget_s - 120 else 0
        results = quantize_part_plain(fp32_cpu, fp32_gpu, calib, cpu_frames)
        return results
    waymo_quant()

    if have_spconv:
        trained_model_part("sim_voxel", val, gts, args.cpu_frames)
        if elapsed() < args.budget_s:
            voxel = [load_any_checkpoint(bundled_checkpoint("sim_voxel"), device=d).eval() for d in ("cpu", GPU)]
            quantize_part("sim_voxel", voxel[0], voxel[1], calib, val, gts,
                          len(calib) if elapsed() < args.budget_s - 150 else 8)
        else:
            say(f"\nsim_voxel quantization skipped: {elapsed():.0f} s used of the {args.budget_s:.0f} s budget")
    else:
        say("\nsim_voxel skipped: spconv does not run on the GPU here (see above)")
    RESULT["machine"] = info
    RESULT["seconds"] = round(elapsed(), 1)
    say(f"\ntotal {elapsed():.0f} s")
    write(args.out)
    return 0


def quantize_part_plain(fp32_cpu, fp32_gpu, calib, cpu_frames: int) -> dict:
    """lidar-ptq-fast of an untrained full-size model: GPU on every calibration frame, CPU on `cpu_frames` (timing
    only; 0 skips the CPU); then the INT8 model's GPU timing."""
    results = {}
    for key, device, model, frames in (("cuda", GPU, fp32_gpu, len(calib)), ("cpu", "cpu", fp32_cpu, cpu_frames)):
        if frames == 0:
            continue
        qmodel, results[key] = timed_quantization(key, model, device, calib[:frames], "lidar-ptq-fast")
        if key == "cuda":
            ms, _, _ = run_model(qmodel, calib[:8], GPU)
            results["int8_cuda_ms"] = ms
            say(f"  INT8 fake-quant on the GPU: total {ms['total']:.1f} ms per frame (encode {ms['encode']:.1f}, "
                f"dense {ms['dense']:.1f}, decode {ms['decode']:.1f}; 8 frames)")
    return results


def write(stem: str) -> None:
    txt, js = write_text_and_json(stem, "\n".join(LINES), json.loads(json.dumps(RESULT, default=str)))
    print(f"wrote {txt} and {js}")


if __name__ == "__main__":
    sys.exit(main())
