"""`quantize(model, calibration_batches, method, config, target) -> (quantized model, report)`: the one call.

The model stays a plain torch module; `target` (a QuantTarget, built by a model recipe) says what the quantizer
cannot know by itself: how to run a batch, which BatchNorms fold into which layers outside sequential containers,
which module types are residual adds, which layers see raw sensor inputs (channel scaling), the reconstruction
blocks, and the task-loss hook (TGPL). Stages, each a config switch:
  fold + wrap -> channel scaling of first layers -> activation calibration -> grid search of clip ratios
  -> learned step sizes with TGPL -> block reconstruction with adaptive rounding -> bias correction
  -> biases on the int32 grid
  -> sensitivity table
With `share_input_quantizers`, layers that read one tensor get one input scale, chosen jointly (quant/share.py).
With `work_dir`, the state after every stage (and every reconstructed block) is saved, and a rerun with the same
settings resumes from there.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..io_utils import atomic_path, write_json_atomic
from .bias import round_biases_to_int32_grid
from .bias_correction import correct_biases
from .calibrate import calibrate_activations, collect_statistics, grid_search_clip_ratios, sensitivity
from .config import QuantConfig, method_config
from .equalize import EqualizationPair, equalize
from .modules import QuantLayer
from .prepare import QuantLayout, plan_layout, prepare
from .reconstruct import (TaskHook, assign_blocks, fp_references, learn_step_sizes, network_loss,
                          reconstruct_block)
from .share import find_shared_inputs, tied_input_quantizers, unify_amax
from .state import output_mse, quantizers_disabled, set_quantizers


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
    task_settings: dict = field(default_factory=dict)  # the task hook's settings, recorded in report and resume keys


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

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def format(self) -> str:
        lines = [f"method {self.method}: {len(self.layout['quantized'])} layers INT8, "
                 f"{len(self.layout['kept_float'])} kept in FP32 {self.layout['kept_float']}, "
                 f"{self.calibration_frames} calibration frames, {self.seconds:.0f} s"]
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
            lines.append(
                f"{name:<44} {rec.get('max', float('nan')):8.3f} {rec.get('amax_final', float('nan')):8.3f} "
                f"{grid.get('clip_ratio', float('nan')):5.2f} "
                f"{_pair(grid.get('error_before'), grid.get('error_after')):>19} "
                f"{_pair(recon.get('error_rtn'), recon.get('error_after')) + ('*' if recon.get('kept') is False else ''):>19} "
                f"{_num(self.sensitivity.get(name)):>9}"
            )
        return "\n".join(lines)


def _pair(before, after) -> str:
    return "-" if before is None else f"{before:.3g} -> {after:.3g}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.3g}"


# The settings each early stage depends on (with those of the stages before it). A rerun that changes only later
# settings (for example the adaptive rounding's) restarts from the last early stage whose settings are unchanged.
EARLY_STAGES = ("calibration", "grid_search", "tgpl")
_STAGE_SETTINGS = {
    "calibration": ("seed", "keep_float", "calibrator", "percentile", "active_sites_only", "samples_per_batch",
                    "input_channel_scaling", "input_channel_alpha", "share_input_quantizers", "equalize_channels",
                    "equalization_alpha", "equalization_frames"),
    "grid_search": ("grid_search", "grid_ratios", "grid_search_frames", "stage_check_frames"),
    "tgpl": ("tgpl", "tgpl_steps", "tgpl_frames", "tgpl_lr", "tgpl_schedule", "tgpl_weight", "output_mse_weight",
             "task_settings"),
}


class _Checkpointer:
    """Saves the quantized model's state after each stage to work_dir (and a copy after each early stage); on a rerun
    with the same calibration data, restores the last state whose settings are unchanged and tells which stages are
    done: everything with identical settings, up to the last unchanged early stage otherwise."""

    def __init__(self, work_dir, fingerprints: dict[str, str]):
        self.dir = Path(work_dir) if work_dir else None
        self.fingerprints = fingerprints
        self.done: list[str] = []
        self.report: dict = {}
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def restore(self, model: nn.Module) -> None:
        if self.dir is None or not (self.dir / "progress.json").is_file():
            return
        from safetensors.torch import load_file

        progress = json.loads((self.dir / "progress.json").read_text())
        saved = progress.get("fingerprints", {})
        if saved.get("all") == self.fingerprints["all"]:
            model.load_state_dict(load_file(str(self.dir / "state.safetensors")), strict=True)
            self.done, self.report = progress["done"], progress["report"]
            return
        for stage in reversed(EARLY_STAGES):
            path = self.dir / f"state_{stage}.safetensors"
            if stage in progress.get("done", []) and saved.get(stage) == self.fingerprints[stage] and path.is_file():
                model.load_state_dict(load_file(str(path)), strict=True)
                self.done = progress["done"][: progress["done"].index(stage) + 1]
                report = progress["report"]
                report["stages"] = {k: v for k, v in report.get("stages", {}).items() if k in self.done}
                report["sensitivity"] = {}
                for record in report.get("layers", {}).values():
                    record.pop("reconstruction", None)
                self.report = report
                return
        # other data or calibration settings: start over (the files are overwritten stage by stage)

    def save(self, model: nn.Module, stage: str, report: QuantReport) -> None:
        self.done.append(stage)
        if self.dir is None:
            return
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        targets = ["state.safetensors"] + ([f"state_{stage}.safetensors"] if stage in EARLY_STAGES else [])
        for name in targets:
            with atomic_path(self.dir / name) as tmp:
                save_file(state, str(tmp))
        write_json_atomic(self.dir / "progress.json",
                          {"fingerprints": self.fingerprints, "done": self.done, "report": report.to_dict()})


def _fingerprints(model: nn.Module, batches, config: QuantConfig, task_settings=None) -> dict[str, str]:
    """Per early stage: a hash of the FP32 model, the calibration data and the settings up to that stage; 'all':
    with every setting."""
    data = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        data.update(key.encode())
        data.update(value.detach().cpu().float().numpy().tobytes()[:4096])
    for batch in batches:
        for value in (batch.values() if isinstance(batch, dict) else [batch]):
            if isinstance(value, torch.Tensor):
                data.update(value.detach().cpu().numpy().tobytes())
    settings = config.to_dict()
    settings["task_settings"] = dict(task_settings or {})  # the task hook's (pseudo-label threshold, ...)

    def digest(keys) -> str:
        h = data.copy()
        h.update(json.dumps({k: settings[k] for k in keys}, sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    result, keys = {}, []
    for stage in EARLY_STAGES:
        keys += list(_STAGE_SETTINGS[stage])
        result[stage] = digest(keys)
    result["all"] = digest(sorted(settings))
    return result


def quantize(model: nn.Module, calibration_batches: Sequence, method: str = "lidar-ptq",
             config: QuantConfig | None = None, target: QuantTarget | None = None, *, progress: bool = True,
             work_dir: str | Path | None = None) -> tuple[nn.Module, QuantReport]:
    """A quantized copy of `model` (the original is untouched) and the report. `config` overrides the method's
    preset entirely when given. Deterministic for a given config.seed (the global RNG state is left as it was)."""
    config = config or method_config(method)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _quantize(model, calibration_batches, config, target, progress, work_dir)


def _quantize(model, calibration_batches, config: QuantConfig, target, progress, work_dir):
    started = time.perf_counter()
    target = target or QuantTarget()
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("quantize needs at least one calibration batch")
    forward = target.forward
    qmodel = copy.deepcopy(model).eval()
    layout = plan_layout(qmodel, target.fold_pairs, tuple(target.add_types), config.keep_float,
                         target.first_layers if config.input_channel_scaling else ())
    with torch.no_grad():
        reference = forward(model.eval(), batches[0])
    wrappers = prepare(qmodel, layout, tuple(target.add_types))
    if config.share_input_quantizers:
        layout.shared_inputs = find_shared_inputs(qmodel, wrappers, batches[0], forward)
    shared = layout.shared_inputs
    recorded = {**config.to_dict(), **({"task_settings": dict(target.task_settings)} if target.task_settings else {})}
    report = QuantReport(method=config.method, config=recorded, layout=layout.to_dict(),
                         layers={n: {} for n in wrappers}, calibration_frames=len(batches))
    with torch.no_grad(), quantizers_disabled(qmodel):
        folded = forward(qmodel, batches[0])
    report.fold_max_abs_error = max(
        float((a - b).abs().max()) for a, b in zip(_flat(folded), _flat(reference))
    )

    checkpoints = _Checkpointer(work_dir, _fingerprints(model, batches, config, target.task_settings))
    checkpoints.restore(qmodel)
    if checkpoints.report:
        for key in ("layers", "stages", "sensitivity"):
            getattr(report, key).update(checkpoints.report.get(key, {}))
        report.equalization_max_abs_error = checkpoints.report.get("equalization_max_abs_error", 0.0)

    def stage(name: str, run: Callable[[], dict | None]) -> None:
        if name in checkpoints.done:
            return
        t0 = time.perf_counter()
        summary = run() or {}
        report.stages[name] = {"seconds": round(time.perf_counter() - t0, 2), **summary}
        checkpoints.save(qmodel, name, report)

    def calibration():
        if config.equalize_channels and target.equalization_pairs:
            equalize_channels(qmodel, wrappers, target, batches[: config.equalization_frames or len(batches)],
                              config, report, progress)
        for name, rec in calibrate_activations(qmodel, wrappers, batches, forward, config, progress).items():
            report.layers[name].update(rec)
        unify_amax(wrappers, shared)

    def grid():
        subset = batches[: config.grid_search_frames or len(batches)]
        for name, rec in grid_search_clip_ratios(qmodel, wrappers, subset, forward, config.grid_ratios,
                                                 progress, groups=shared).items():
            report.layers[name]["grid"] = rec

    def tgpl():
        subset = batches[: config.tgpl_frames or len(batches)]
        with tied_input_quantizers(wrappers, shared):
            return learn_step_sizes(qmodel, wrappers, subset, forward, target.task_hook, config.tgpl_steps,
                                    config.tgpl_lr, config.tgpl_weight, config.output_mse_weight, progress,
                                    schedule=config.tgpl_schedule)

    held_out = batches[-config.stage_check_frames:] if config.stage_check_frames else []
    # The FP32 references of the held-out frames, and the held-out loss of the model as the last checked stage left
    # it: the checked stages run back to back, so the next one starts from that loss instead of measuring it again.
    held_out_state: dict = {"references": None, "loss": None}

    def checked(run: Callable[[], dict | None]) -> Callable[[], dict]:
        """The stage, kept only if it lowers the task loss on the held-out frames (with every quantizer on)."""
        if not held_out:
            return run

        def held_out_loss() -> float:
            return network_loss(qmodel, held_out, forward, target.task_hook, held_out_state["references"])

        def run_checked() -> dict:
            if held_out_state["references"] is None:
                held_out_state["references"] = fp_references(qmodel, held_out, forward, target.task_hook)
            saved = {k: v.detach().clone() for k, v in qmodel.state_dict().items()}
            before = held_out_state["loss"] if held_out_state["loss"] is not None else held_out_loss()
            summary = run() or {}
            set_quantizers(wrappers.values(), True)
            after = held_out_loss()
            if after > before:
                qmodel.load_state_dict(saved)
            held_out_state["loss"] = min(before, after)
            return {**summary, "check_frames": len(held_out), "check_loss_before": before,
                    "check_loss_after": after, "kept": after <= before}

        return run_checked

    stage("calibration", calibration)
    set_quantizers(wrappers.values(), True)
    if config.grid_search:
        stage("grid_search", checked(grid))
    if config.tgpl:
        if target.task_hook is None:
            raise ValueError("tgpl needs a task hook (QuantTarget.task_hook)")
        stage("tgpl", checked(tgpl))
    if config.adaround:
        subset = batches[: config.adaround_frames or len(batches)]
        hook = target.task_hook if config.task_loss_every else None
        groups = assign_blocks(wrappers, target.blocks)
        pending = [(b, members) for b, members in groups if f"adaround:{b}" not in checkpoints.done]
        set_quantizers([wrappers[n] for _, members in pending for n in members], False)
        references = fp_references(qmodel, subset, forward, hook) if hook is not None and pending else None
        # Held-out frames for the per-block check: the calibration frames after the reconstruction subset (the
        # subset itself only when there are no others, which then checks fit, not generalisation).
        check = batches[len(subset): len(subset) + config.adaround_check_frames] or subset[: config.adaround_check_frames]
        check_references = (fp_references(qmodel, check, forward, target.task_hook)
                            if config.adaround_check_frames and pending else None)
        def deployed_loss(later):
            """The task loss of the whole INT8 network (later blocks at round-to-nearest) on the check frames."""
            set_quantizers(later, True)
            try:
                return network_loss(qmodel, check, forward, target.task_hook, check_references)
            finally:
                set_quantizers(later, False)

        for index, (block, members) in enumerate(pending):
            def run(block=block, members=members, index=index):
                module = qmodel.get_submodule(block)
                block_wrappers = {n: wrappers[n] for n in members}
                later = [wrappers[n] for _, others in pending[index + 1:] for n in others]
                if check_references is not None:
                    set_quantizers(block_wrappers.values(), True)
                    loss_rtn = deployed_loss(later)
                    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
                rec = reconstruct_block(qmodel, module, block_wrappers, subset, forward, config, hook, references,
                                        progress)
                if check_references is not None:
                    loss_after = deployed_loss(later)
                    kept = loss_after <= loss_rtn
                    if not kept:  # the reconstruction did not generalise: back to round-to-nearest, baked so
                        module.load_state_dict(saved)  # that every reconstructed block's weights are INT8 codes
                        with torch.no_grad():
                            for wrapper in block_wrappers.values():
                                if isinstance(wrapper, QuantLayer):
                                    wrapper.layer.weight.copy_(wrapper.quantized_weight())
                    rec.update(check_loss_rtn=loss_rtn, check_loss_after=loss_after, kept=kept)
                report.layers[members[0]]["reconstruction"] = {"block": block, **rec}
                return rec
            stage(f"adaround:{block}", run)
    set_quantizers(wrappers.values(), True)
    if config.bias_correction:
        if config.adaround:
            held_out_state["loss"] = None  # the reconstruction changed the model since the last checked stage

        def bias_correction():
            subset = batches[: config.bias_correction_frames or len(batches)]
            records = correct_biases(qmodel, wrappers, subset, forward, progress=progress)
            for name, rec in records.items():
                report.layers[name]["bias_correction"] = rec
            return {"layers": len(records), "frames": len(subset)}
        stage("bias_correction", checked(bias_correction))
    if config.int32_bias:
        def int32_bias():
            records = round_biases_to_int32_grid(wrappers)
            for name, rec in records.items():
                report.layers[name]["bias"] = rec
            return {"layers": len(records),
                    "max_change_steps": max((r["bias_change_max_steps"] for r in records.values()), default=0.0)}
        stage("int32_bias", int32_bias)
    if config.sensitivity_frames:
        stage("sensitivity", lambda: report.sensitivity.update(
            sensitivity(qmodel, wrappers, batches[: config.sensitivity_frames], forward, progress)))
    set_quantizers(wrappers.values(), True)
    for name, wrapper in wrappers.items():
        report.layers[name]["amax_final"] = float(wrapper.input_quantizer.amax)
    report.seconds = round(time.perf_counter() - started, 2)
    return qmodel, report


def equalize_channels(qmodel, wrappers, target, batches, config: QuantConfig, report: QuantReport,
                      progress: bool) -> None:
    """Channel equalization of the target's pairs (FP32 statistics over active sites), checked to leave the FP32
    output unchanged: a pair that is not one (a consumer missing, a non-homogeneous operation between) is an error.
    Pairs with a layer kept in float (not quantized, so nothing to gain) are left out."""
    pairs = [p for p in target.equalization_pairs
             if p.producer in wrappers and all(name in wrappers for name, _ in p.consumers)]
    if not pairs:
        return
    consumers = {name: wrappers[name] for pair in pairs for name, _ in pair.consumers}
    with torch.no_grad(), quantizers_disabled(qmodel):
        before = _flat(target.forward(qmodel, batches[0]))
    stats = collect_statistics(qmodel, consumers, batches, target.forward, True, 0, config.seed, progress,
                               "channel equalization")
    ranges = {name: s.channel_amax for name, s in stats.items()}
    missing = [name for name, r in ranges.items() if r is None]
    if missing:
        raise ValueError(f"channel equalization: no input seen at {missing}")
    for producer, rec in equalize(wrappers, pairs, ranges, config.equalization_alpha).items():
        report.layers[producer]["equalization"] = rec
    with torch.no_grad(), quantizers_disabled(qmodel):
        after = _flat(target.forward(qmodel, batches[0]))
    error = max(float((a - b).abs().max()) for a, b in zip(after, before))
    magnitude = max(float(b.abs().max()) for b in before)
    report.equalization_max_abs_error = error
    if error > 1e-3 * max(magnitude, 1.0):
        raise ValueError(f"channel equalization changed the FP32 output by {error:.3g} (outputs up to "
                         f"{magnitude:.3g}): the target's equalization pairs are not all homogeneous")


def _flat(output):
    from .state import tensors_of

    return tensors_of(output)


def load_quantized_state(model: nn.Module, layout: QuantLayout, state: dict, add_types: tuple[type, ...] = ()):
    """Rebuild the quantized layout on an FP32 model of the same config and load a quantized state_dict strictly."""
    prepare(model, layout, add_types, structure_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
