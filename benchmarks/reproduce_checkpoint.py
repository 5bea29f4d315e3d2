"""Re-make an INT8 checkpoint with today's `lidar-ptq quantize` and compare it bit for bit with the file.

The checkpoint's metadata holds every quantization setting, and (checkpoints made since 2026-12-04) the command's
inputs and environment (`provenance`: FP32 checkpoint and its SHA-256, calibration source, frames, window, input
settings, torch threads, device). The rerun uses exactly those; for an older checkpoint, give what it lacks
(`--threads`, `--calib`, `--frames`, `--sim-start`). The result: every tensor equal or not (with the largest
difference of those that are not), and the quantization settings equal or not. Output kept in
docs/benchmarks/reproduce_<checkpoint stem>.txt and .json.

    ./dev run python benchmarks/reproduce_checkpoint.py checkpoints/sim_pillar_int8.safetensors
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def compare_states(reference: dict, candidate: dict) -> dict:
    """Tensor by tensor: names only in one, names whose shape, dtype or bytes differ, and the largest |difference|."""
    import torch

    only = sorted(set(reference) ^ set(candidate))
    different, largest = [], 0.0
    for name in sorted(set(reference) & set(candidate)):
        a, b = reference[name], candidate[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            different.append(name)
            continue
        if not torch.equal(a, b):
            different.append(name)
            largest = max(largest, float((a.double() - b.double()).abs().max()))
    return {"tensors": len(reference), "only_in_one": only, "different": different, "largest_difference": largest,
            "identical": not only and not different}


def rerun_arguments(provenance: dict, overrides: argparse.Namespace, calibration_frames: int) -> list[str]:
    """The `lidar-ptq quantize` arguments that re-make the checkpoint (settings come from a --config file)."""
    def pick(key, default):
        value = getattr(overrides, key)
        return value if value is not None else provenance.get(key, default)

    threads = pick("threads", None)
    if threads is None:
        raise ValueError("the checkpoint does not record its torch thread count (made before 2026-12-04): give "
                         "--threads (TGPL and reconstruction are bit-for-bit reproducible only at the same count)")
    checkpoint = overrides.fp32 or provenance.get("checkpoint", {}).get("name")
    if not checkpoint:
        raise ValueError("the checkpoint does not record its FP32 source: give --fp32")
    args = ["--checkpoint", checkpoint, "--calib", pick("calib", "sim"),
            "--frames", str(pick("frames", calibration_frames)), "--sim-start", str(pick("sim_start", 0)),
            "--sim-config", pick("sim_config", "default"), "--threads", str(threads),
            "--intensity-scale", repr(float(provenance.get("intensity_scale", 1.0))),
            "--z-offset", repr(float(provenance.get("z_offset", 0.0))), "--device", provenance.get("device", "cpu")]
    if provenance.get("model_config"):
        args += ["--model-config", provenance["model_config"]]
    if provenance.get("topic"):
        args += ["--topic", provenance["topic"]]
    if provenance.get("sweep_period") is not None:
        args += ["--sweep-period", repr(float(provenance["sweep_period"]))]
    return args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="an INT8 checkpoint (.safetensors) written by lidar-ptq quantize")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (for checkpoints that lack them)")
    parser.add_argument("--calib", default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--sim-start", type=int, default=None, dest="sim_start")
    parser.add_argument("--sim-config", default=None, dest="sim_config")
    parser.add_argument("--fp32", default=None, help="FP32 checkpoint (for checkpoints that lack it)")
    parser.add_argument("--keep", default=None, help="folder for the rerun's checkpoint and log (default: temporary)")
    parser.add_argument("--rerun", default=None,
                        help="compare with a rerun already made by the printed command (its .safetensors) instead of "
                             "making one")
    parser.add_argument("--out", default=None, help="default docs/benchmarks/reproduce_<checkpoint stem>")
    args = parser.parse_args()

    import yaml
    from safetensors.torch import load_file

    from lidar_ptq_core.io_utils import write_text_and_json
    from lidar_ptq_core.models.checkpoint import read_checkpoint_metadata

    path = Path(args.checkpoint)
    metadata = read_checkpoint_metadata(path)
    settings = json.loads(metadata["quantization"])
    report = json.loads(metadata["report"])
    provenance = report.get("provenance") or {}
    method = settings.pop("method")
    task_settings = settings.pop("task_settings", {})  # older checkpoints: the TGPL hook's settings beside the config
    settings.update(task_settings)
    quantize_args = rerun_arguments(provenance, args, report["calibration_frames"])

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="reproduce_"))
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "settings.yaml"
    config_path.write_text(yaml.safe_dump(settings, sort_keys=True))
    rerun = work / f"{path.stem}_rerun.safetensors"
    command = ["lidar-ptq", "quantize", *quantize_args, "--method", method, "--config", str(config_path),
               "--out", str(rerun), "--work-dir", str(work / "rerun.work"), "--quiet", "--no-input-check"]
    print(" ".join(command), flush=True)
    started = time.perf_counter()
    if args.rerun:
        rerun = Path(args.rerun)
    else:
        with open(work / "rerun.log", "w") as log:
            result = subprocess.run([sys.executable, "-m", "lidar_ptq_core.cli", *command[1:]], stdout=log,
                                    stderr=subprocess.STDOUT, cwd=REPO)
        if result.returncode != 0:
            print((work / "rerun.log").read_text()[-3000:])
            raise SystemExit(f"the rerun failed (rc {result.returncode}); log: {work / 'rerun.log'}")
    seconds = time.perf_counter() - started
    comparison = compare_states(load_file(str(path)), load_file(str(rerun)))
    rerun_settings = json.loads(read_checkpoint_metadata(rerun)["quantization"])
    rerun_settings.pop("method")
    differing, added = settings_differences(settings, rerun_settings)
    same_settings = not differing
    verdict = "REPRODUCED bit for bit" if comparison["identical"] and same_settings else "NOT reproduced"
    lines = [
        f"reproduce {path} with today's lidar-ptq quantize ({time.strftime('%Y-%m-%d')})",
        f"command: {' '.join(command)}",
        f"recorded provenance: {json.dumps(provenance) if provenance else 'none (made before 2026-12-04)'}",
        f"rerun: {seconds:.0f} s" if not args.rerun else f"rerun: {args.rerun}, made earlier by the command above",
        f"tensors: {comparison['tensors']}, different: {len(comparison['different'])}, only in one: "
        f"{len(comparison['only_in_one'])}, largest difference {comparison['largest_difference']:.3g}",
        f"quantization settings recorded in the rerun: {'the same' if same_settings else 'DIFFERENT'}"
        + (f" ({', '.join(differing)})" if differing else ""),
    ]
    if added:
        lines.append("settings added to lidar-ptq since the checkpoint was made, in the rerun at their defaults "
                     f"(the checkpoint's recipe did not have them): {', '.join(added)}")
    if comparison["different"]:
        lines.append("different tensors: " + ", ".join(comparison["different"][:20]))
    lines.append(verdict)
    text = "\n".join(lines)
    print(text)
    out = Path(args.out) if args.out else REPO / "docs" / "benchmarks" / f"reproduce_{path.stem}"
    write_text_and_json(out, text + "\n", {"checkpoint": str(path), "command": command, "provenance": provenance,
                                           "seconds": round(seconds, 1), "same_settings": same_settings,
                                           "differing_settings": differing, "settings_added_since": added,
                                           **comparison, "verdict": verdict})
    return 0 if verdict.startswith("REPRODUCED") else 1


def settings_differences(recorded: dict, rerun: dict) -> tuple[list[str], list[str]]:
    """(settings that differ, settings the recorded checkpoint lacks that the rerun has at QuantConfig's default)."""
    from lidar_ptq_core.benchmarking import changed_settings
    from lidar_ptq_core.quant import QuantConfig

    defaults = QuantConfig().to_dict()
    keys = sorted(set(recorded) | set(rerun))
    added = [k for k in keys if k not in recorded and k in defaults and not changed_settings(rerun, defaults, [k])]
    return changed_settings(recorded, rerun, [k for k in keys if k not in added]), added


if __name__ == "__main__":
    raise SystemExit(main())
