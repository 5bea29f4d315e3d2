"""`quantize(model, calibration_batches, method, config, target) -> (quantized model, report)`: the one call.

The model stays a plain torch module; `target` (a QuantTarget, built by a model recipe) says what the quantizer
cannot know by itself: how to run a batch, which BatchNorms fold into which layers outside sequential containers,
which module types are residual adds, which layers see raw sensor inputs (channel scaling), the reconstruction
blocks, and the task-loss hook (TGPL). Fold + wrap here, then the stages (quant/stages.py), each a config switch:
  calibration (channel equalization, first-layer scaling, activation ranges) -> grid search of clip ratios
  -> learned step sizes with TGPL -> block reconstruction with adaptive rounding -> bias correction
  -> biases on the int32 grid -> sensitivity table
With `share_input_quantizers`, layers that read one tensor get one input scale, chosen jointly (quant/share.py).
With `work_dir`, the state after every stage (and every reconstructed block) is saved, and a rerun resumes from
there, saying so (quant/workdir.py).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .config import QuantConfig, method_config
from .equalize import EqualizationPair
from .prepare import QuantLayout, plan_layout, prepare
from .reconstruct import TaskHook
from .share import find_shared_inputs
from .stages import QuantRun, build_stages, run_pipeline
from .state import quantizers_disabled, tensors_of
from .workdir import WorkFolder, fingerprints

_logger = logging.getLogger(__name__)


def default_forward(model: nn.Module, batch):
    return model(batch)


@dataclass
class QuantTarget:
    forward: Callable = default_forward
    fold_pairs: Sequence[tuple[str, str]] = ()
    add_types: tuple[type, ...] = ()
    first_layers: Sequence[str] = ()
    blocks: Sequence[str] = ()
    task_hook: TaskHook | None = None
    equalization_pairs: Sequence[EqualizationPair] = ()  # quant/equalize.py
    output_layers: Sequence[str] = ()  # layers whose output is a network output (config.keep_float_outputs)


@dataclass
class QuantReport:
    method: str
    config: dict
    layout: dict
    layers: dict = field(default_factory=dict)  # name -> calibration / grid / reconstruction records
    stages: dict = field(default_factory=dict)  # stage -> seconds and summary
    sensitivity: dict = field(default_factory=dict)  # name -> output MSE with only that layer INT8
    calibration_frames: int = 0
    fold_max_abs_error: float = 0.0
    equalization_max_abs_error: float = 0.0  # FP32 output before vs after channel equalization (exact: ~1e-5)
    seconds: float = 0.0
    resumed: str = ""  # what a rerun took from the work folder ("" when it ran every stage)
    # What reproduces the result (the caller's inputs, torch threads, device); set by the command that ran it
    provenance: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def format(self) -> str:
        lines = [f"method {self.method}: {len(self.layout['quantized'])} layers INT8, "
                 f"{len(self.layout['kept_float'])} kept in FP32 {self.layout['kept_float']}, "
                 f"{self.calibration_frames} calibration frames, {self.seconds:.0f} s"]
        if self.resumed:
            lines.append(f"  {self.resumed}")
        if self.provenance:
            p = self.provenance
            lines.append(f"  made from {p.get('checkpoint', {}).get('name', '?')} on {p.get('calibration', '?')}; "
                         f"torch {p.get('torch', '?')}, {p.get('threads', '?')} threads, {p.get('device', '?')} "
                         "(the same model bit for bit needs the same threads and device)")
        for stage, info in self.stages.items():
            check = ""
            if "check_frames" in info:
                check = (f" (held-out check on {info['check_frames']} frames: task loss {info['check_loss_before']:.4g}"
                         f" -> {info['check_loss_after']:.4g}, "
                         + ("kept)" if info["kept"] else "not kept: the model from before it is used)"))
            lines.append(f"  stage {stage}: {info.get('seconds', 0):.1f} s{check}")
        equalized = {n: r["equalization"] for n, r in self.layers.items() if "equalization" in r}
        if equalized:
            lines.append(f"channel equalization (FP32 output change {self.equalization_max_abs_error:.2g}): "
                         "largest / smallest channel range of each producer's output, before -> after")
            for name, rec in equalized.items():
                lines.append(f"  {name:<42} {rec['range_spread_before']:8.1f} -> {rec['range_spread_after']:6.1f}"
                             f"   read by {', '.join(rec['consumers'])}")
        lines.append("grid: the layer's output MSE at clip ratio 1 -> at the chosen ratio; block: the reconstruction "
                     "block's output squared error with round-to-nearest -> after adaptive rounding (on the block's "
                     "first layer; * = worse on the held-out check frames, round-to-nearest kept); sens.: network "
                     "output MSE with only this layer INT8")
        lines.append(f"{'layer':<44} {'max':>8} {'amax':>8} {'clip':>5} {'grid err':>19} {'block err':>19} "
                     f"{'sens.':>9}")
        for name, rec in self.layers.items():
            grid = rec.get("grid", {})
            recon = rec.get("reconstruction", {})
            block_error = _pair(recon.get("error_rtn"), recon.get("error_after")) + (
                "*" if recon.get("kept") is False else "")
            lines.append(
                f"{name:<44} {rec.get('max', float('nan')):8.3f} {rec.get('amax_final', float('nan')):8.3f} "
                f"{grid.get('clip_ratio', float('nan')):5.2f} "
                f"{_pair(grid.get('error_before'), grid.get('error_after')):>19} "
                f"{block_error:>19} "
                f"{_num(self.sensitivity.get(name)):>9}"
            )
        return "\n".join(lines)


def _pair(before, after) -> str:
    return "-" if before is None else f"{before:.3g} -> {after:.3g}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def quantize(model: nn.Module, calibration_batches: Sequence, method: str = "lidar-ptq",
             config: QuantConfig | None = None, target: QuantTarget | None = None, *, progress: bool = True,
             work_dir: str | Path | None = None, log: Callable[[str], None] | None = None
             ) -> tuple[nn.Module, QuantReport]:
    """A quantized copy of `model` (the original is untouched) and the report. `config` overrides the method's
    preset entirely when given. Deterministic for a given config.seed (the global RNG state is left as it was).
    `log` receives the one-line notes of the work folder (what a rerun resumes); default: this module's logger."""
    config = config or method_config(method)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _quantize(model, calibration_batches, config, target or QuantTarget(), progress, work_dir,
                         log or _logger.info)


def _quantize(model, calibration_batches, config: QuantConfig, target: QuantTarget, progress, work_dir, log):
    started = time.perf_counter()
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("quantize needs at least one calibration batch")
    qmodel = copy.deepcopy(model).eval()
    if config.keep_float_outputs and not target.output_layers:
        raise ValueError("keep_float_outputs needs the target's output_layers (the task recipe names them)")
    if config.output_layers_int8_input and not config.keep_float_outputs:
        raise ValueError("output_layers_int8_input applies to keep_float_outputs: set both")
    float_outputs = tuple(target.output_layers) if config.keep_float_outputs else ()
    int8_input = config.output_layers_int8_input
    keep_float = tuple(config.keep_float) + (() if int8_input else float_outputs)
    layout = plan_layout(qmodel, target.fold_pairs, tuple(target.add_types), tuple(dict.fromkeys(keep_float)),
                         target.first_layers if config.input_channel_scaling else (),
                         float_weights=float_outputs if int8_input else ())
    with torch.no_grad():
        reference = target.forward(model.eval(), batches[0])
    wrappers = prepare(qmodel, layout, tuple(target.add_types))
    if config.share_input_quantizers:
        layout.shared_inputs = find_shared_inputs(qmodel, wrappers, batches[0], target.forward)
    report = QuantReport(method=config.method, config=config.to_dict(), layout=layout.to_dict(),
                         layers={n: {} for n in wrappers}, calibration_frames=len(batches))
    with torch.no_grad(), quantizers_disabled(qmodel):
        folded = target.forward(qmodel, batches[0])
    report.fold_max_abs_error = max(float((a - b).abs().max())
                                    for a, b in zip(tensors_of(folded), tensors_of(reference)))

    stages = build_stages(config, target, wrappers)
    # Hashing every weight and frame takes a moment on large data: only where there is a work folder to check.
    work = WorkFolder(work_dir, fingerprints(model, batches, target, config, stages) if work_dir else {}, log)
    run = QuantRun(qmodel, wrappers, batches, config, target, report, layout.shared_inputs, progress)
    run_pipeline(run, stages, work)
    report.resumed = work.resumed
    for name, wrapper in wrappers.items():
        report.layers[name]["amax_final"] = float(wrapper.input_quantizer.amax)
    report.seconds = round(time.perf_counter() - started, 2)
    return qmodel, report


def load_quantized_state(model: nn.Module, layout: QuantLayout, state: dict, add_types: tuple[type, ...] = ()):
    """Rebuild the quantized layout on an FP32 model of the same config and load a quantized state_dict strictly."""
    prepare(model, layout, add_types, structure_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
