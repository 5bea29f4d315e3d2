"""The quantization pipeline as named stages, run by one short driver (`run_pipeline`).

A Stage is a name, a kind (which says the QuantConfig settings its result depends on) and a run function over the
QuantRun, which holds what the stages share: the model being quantized, its quant wrappers, the calibration batches,
the settings, the target and the report. The driver runs the stages in order, gives the checked ones the held-out
check, switches every quantizer on after each stage and hands each finished stage to the work folder
(quant/workdir.py), which saves it and, on a rerun, says which stages are done.

Pipeline: calibration (channel equalization, first-layer scaling, activation ranges) -> grid search of clip ratios
-> TGPL step sizes -> one reconstruction stage per block (adaptive rounding) -> bias correction -> biases on the
int32 grid -> sensitivity table.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from .bias import round_biases_to_int32_grid
from .bias_correction import correct_biases
from .calibrate import calibrate_activations, collect_statistics, grid_search_clip_ratios, sensitivity
from .config import QuantConfig
from .equalize import equalize
from .modules import QuantLayer
from .output_correction import correct_outputs
from .reconstruct import assign_blocks, fp_references, learn_step_sizes, network_loss, reconstruct_block
from .share import tied_input_quantizers, unify_amax
from .state import quantizers_disabled, set_quantizers, tensors_of

if TYPE_CHECKING:
    from .api import QuantReport, QuantTarget
    from .workdir import WorkFolder

# The settings each kind of stage depends on, in pipeline order. A stage's result depends on its own settings and on
# every earlier stage's (the work folder chains them: quant/workdir.py), so a rerun that changes only later settings
# resumes after the stages they do not touch. Every QuantConfig field but `method` (a name) is named here.
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "calibration": ("seed", "keep_float", "keep_float_outputs", "output_layers_int8_input", "calibrator",
                    "percentile", "active_sites_only", "samples_per_batch", "input_channel_scaling",
                    "input_channel_alpha", "share_input_quantizers", "equalize_channels", "equalization_alpha",
                    "equalization_frames", "equalization_alpha_fp32_consumers"),
    "grid_search": ("grid_search", "grid_ratios", "grid_search_frames"),
    "tgpl": ("tgpl", "tgpl_steps", "tgpl_frames", "tgpl_lr", "tgpl_schedule", "tgpl_weight", "output_mse_weight"),
    # tgpl_lr: the learning rate of the block's input step sizes with learn_activation_scales
    "adaround": ("adaround", "adaround_steps", "adaround_frames", "adaround_lr", "adaround_reg_weight",
                 "adaround_beta", "adaround_warmup", "learn_activation_scales", "activation_drop_prob",
                 "task_loss_every", "task_loss_weight", "adaround_check_frames", "tgpl_lr"),
    "bias_correction": ("bias_correction", "bias_correction_frames"),
    "output_correction": ("output_correction", "output_correction_frames"),
    "int32_bias": ("int32_bias",),
    "sensitivity": ("sensitivity_frames",),
}
# Settings of what a stage uses besides its own work: the task hook (its pseudo-labels) and the held-out check.
TASK_HOOK_SETTINGS = ("tgpl_score_threshold", "tgpl_top_k")
HELD_OUT_CHECK_SETTINGS = ("stage_check_frames",)
# The stage after which the weights are the FP32 reference: folded, channel-scaled and equalized (all exact in FP32),
# before any stage writes INT8 values into them. Every FP32 reference output is computed with these weights.
FP32_REFERENCE_STAGE = "calibration"


@dataclass(frozen=True)
class Stage:
    name: str  # in the report and the work folder: "tgpl", "adaround:<block>"
    kind: str  # a key of STAGE_SETTINGS
    run: Callable[["QuantRun"], dict | None]  # does the work; returns the stage's summary for the report
    checked: bool = False  # kept only if the held-out task loss goes down (when stage_check_frames > 0)
    uses_task_hook: bool = False
    snapshot: bool = True  # the state after it is kept on its own, for reruns that change only later settings

    @property
    def settings(self) -> tuple[str, ...]:
        return (STAGE_SETTINGS[self.kind] + (HELD_OUT_CHECK_SETTINGS if self.checked else ())
                + (TASK_HOOK_SETTINGS if self.uses_task_hook or self.checked else ()))


@dataclass
class QuantRun:
    """What the stages share while one model is quantized."""

    model: nn.Module  # the copy being quantized
    wrappers: dict[str, nn.Module]
    batches: list
    config: QuantConfig
    target: "QuantTarget"
    report: "QuantReport"
    shared: list  # groups of layers with one input scale (quant/share.py)
    progress: bool = True
    fp32_state: dict | None = None  # the weights FP32 references are computed with (FP32_REFERENCE_STAGE's)
    held_out_references: list | None = None
    held_out_loss: float | None = None  # the held-out loss as the last checked stage left the model
    reconstruction: "_Reconstruction | None" = None

    @property
    def forward(self):
        return self.target.forward

    def frames(self, count: int) -> list:
        """The first `count` calibration batches (all of them for 0)."""
        return self.batches[: count or len(self.batches)]

    @property
    def held_out(self) -> list:
        frames = self.config.stage_check_frames
        return self.batches[-frames:] if frames else []


def clone_state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextmanager
def fp32_weights(run: QuantRun):
    """The model with the FP32 reference weights inside (the state as it was is put back after): references do not
    depend on which blocks hold baked INT8 weights, so a resumed run compares against what an uninterrupted one
    does."""
    if run.fp32_state is None:
        raise RuntimeError(f"FP32 references are needed before the {FP32_REFERENCE_STAGE} stage ran")
    current = clone_state(run.model)
    run.model.load_state_dict(run.fp32_state)
    try:
        yield
    finally:
        run.model.load_state_dict(current)


def fp32_references(run: QuantRun, frames: list, hook) -> list:
    """FP32 outputs (and the hook's pseudo-labels) of `frames`, with the FP32 reference weights."""
    with fp32_weights(run):
        return fp_references(run.model, frames, run.forward, hook)


# --- the stages -------------------------------------------------------------------------------------------------


def calibrate(run: QuantRun) -> None:
    config = run.config
    if config.equalize_channels and run.target.equalization_pairs:
        equalize_channels(run, run.frames(config.equalization_frames))
    for name, record in calibrate_activations(run.model, run.wrappers, run.batches, run.forward, config,
                                              run.progress).items():
        run.report.layers[name].update(record)
    unify_amax(run.wrappers, run.shared)
    run.fp32_state = clone_state(run.model)


def grid_search(run: QuantRun) -> None:
    records = grid_search_clip_ratios(run.model, run.wrappers, run.frames(run.config.grid_search_frames), run.forward,
                                      run.config.grid_ratios, run.progress, groups=run.shared)
    for name, record in records.items():
        run.report.layers[name]["grid"] = record


def tgpl(run: QuantRun) -> dict:
    config = run.config
    with tied_input_quantizers(run.wrappers, run.shared):
        return learn_step_sizes(run.model, run.wrappers, run.frames(config.tgpl_frames), run.forward,
                                run.target.task_hook, config.tgpl_steps, config.tgpl_lr, config.tgpl_weight,
                                config.output_mse_weight, run.progress, schedule=config.tgpl_schedule)


@dataclass
class _Reconstruction:
    """What every block's reconstruction shares; made when the first block of a run (or of a resumed run) starts."""

    frames: list
    hook: object  # the task hook when the task loss joins the reconstruction, else None
    references: list | None  # FP32 outputs and pseudo-labels of `frames` for the task loss
    check: list  # held-out frames of the per-block check
    check_references: list | None


def _reconstruction(run: QuantRun) -> _Reconstruction:
    if run.reconstruction is None:
        config, hook = run.config, run.target.task_hook
        frames = run.frames(config.adaround_frames)
        # Held-out frames for the per-block check: the calibration frames after the reconstruction subset (the subset
        # itself only when there are no others, which then checks fit, not generalisation).
        check = (run.batches[len(frames): len(frames) + config.adaround_check_frames]
                 or frames[: config.adaround_check_frames])
        task_hook = hook if config.task_loss_every else None
        run.reconstruction = _Reconstruction(
            frames=frames, hook=task_hook,
            references=fp32_references(run, frames, task_hook) if task_hook is not None else None,
            check=check, check_references=fp32_references(run, check, hook) if config.adaround_check_frames else None)
    return run.reconstruction


def reconstruction_stage(blocks: list[tuple[str, list[str]]], index: int) -> Stage:
    """Adaptive rounding of one block's weights, earlier blocks INT8, later ones FP32; with adaround_check_frames the
    block keeps round-to-nearest unless the whole INT8 network's held-out task loss goes down."""
    block, members = blocks[index]

    def run_block(run: QuantRun) -> dict:
        shared = _reconstruction(run)
        earlier = [run.wrappers[n] for _, names in blocks[:index] for n in names]
        later = [run.wrappers[n] for _, names in blocks[index + 1:] for n in names]
        block_wrappers = {n: run.wrappers[n] for n in members}
        set_quantizers(earlier, True)
        set_quantizers([*block_wrappers.values(), *later], False)
        module = run.model.get_submodule(block)

        def deployed_loss() -> float:
            """The task loss of the whole INT8 network (later blocks at round-to-nearest) on the check frames."""
            set_quantizers(later, True)
            try:
                return network_loss(run.model, shared.check, run.forward, run.target.task_hook,
                                    shared.check_references)
            finally:
                set_quantizers(later, False)

        if shared.check_references is not None:
            set_quantizers(block_wrappers.values(), True)
            loss_rtn = deployed_loss()
            saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
        record = reconstruct_block(run.model, module, block_wrappers, shared.frames, run.forward, run.config,
                                   shared.hook, shared.references, run.progress)
        if shared.check_references is not None:
            loss_after = deployed_loss()
            kept = loss_after <= loss_rtn
            if not kept:  # the reconstruction did not generalise: back to round-to-nearest, baked so that every
                module.load_state_dict(saved)  # reconstructed block's weights are INT8 codes
                with torch.no_grad():
                    for wrapper in block_wrappers.values():
                        if isinstance(wrapper, QuantLayer):
                            wrapper.layer.weight.copy_(wrapper.quantized_weight())
            record.update(check_loss_rtn=loss_rtn, check_loss_after=loss_after, kept=kept)
        run.report.layers[members[0]]["reconstruction"] = {"block": block, **record}
        return record

    return Stage(f"adaround:{block}", "adaround", run_block, uses_task_hook=True, snapshot=False)


def bias_correction(run: QuantRun) -> dict:
    frames = run.frames(run.config.bias_correction_frames)
    records = correct_biases(run.model, run.wrappers, frames, run.forward, progress=run.progress)
    for name, record in records.items():
        run.report.layers[name]["bias_correction"] = record
    return {"layers": len(records), "frames": len(frames)}


def output_correction(run: QuantRun) -> dict:
    frames = run.frames(run.config.output_correction_frames)
    hook = run.target.task_hook
    references = fp32_references(run, frames, hook)
    records = correct_outputs(run.model, run.target.output_layers, frames, run.forward, hook, references)
    for name, record in records.items():
        if name in run.report.layers:  # a layer kept in float has no row in the report's table
            run.report.layers[name]["output_correction"] = record
    return {"layers": len(records), "frames": len(frames),
            "largest": {name: round(r["output_correction_max"], 5) for name, r in records.items()}}


def int32_bias(run: QuantRun) -> dict:
    records = round_biases_to_int32_grid(run.wrappers)
    for name, record in records.items():
        run.report.layers[name]["bias"] = record
    return {"layers": len(records),
            "max_change_steps": max((r["bias_change_max_steps"] for r in records.values()), default=0.0)}


def sensitivity_table(run: QuantRun) -> None:
    run.report.sensitivity.update(sensitivity(run.model, run.wrappers, run.frames(run.config.sensitivity_frames),
                                              run.forward, run.progress))


def build_stages(config: QuantConfig, target: "QuantTarget", wrappers: dict) -> list[Stage]:
    """The stages `config` switches on, in pipeline order."""
    if config.tgpl and target.task_hook is None:
        raise ValueError("tgpl needs a task hook (QuantTarget.task_hook)")
    stages = [Stage("calibration", "calibration", calibrate)]
    if config.grid_search:
        stages.append(Stage("grid_search", "grid_search", grid_search, checked=True))
    if config.tgpl:
        stages.append(Stage("tgpl", "tgpl", tgpl, checked=True, uses_task_hook=True))
    if config.adaround:
        blocks = assign_blocks(wrappers, target.blocks)
        stages += [reconstruction_stage(blocks, index) for index in range(len(blocks))]
    if config.bias_correction:
        stages.append(Stage("bias_correction", "bias_correction", bias_correction, checked=True))
    if config.output_correction:
        if target.task_hook is None or not target.output_layers:
            raise ValueError("output_correction needs a task hook and the target's output_layers")
        stages.append(Stage("output_correction", "output_correction", output_correction, checked=True,
                            uses_task_hook=True))
    if config.int32_bias:
        stages.append(Stage("int32_bias", "int32_bias", int32_bias))
    if config.sensitivity_frames:
        stages.append(Stage("sensitivity", "sensitivity", sensitivity_table))
    return stages


# --- the driver -------------------------------------------------------------------------------------------------


def run_pipeline(run: QuantRun, stages: list[Stage], work: "WorkFolder") -> None:
    """Run every stage not already done (work.restore says which, and loads their state), saving after each."""
    done = set(work.restore(run, stages))
    for stage in stages:
        if stage.name in done:
            continue
        started = time.perf_counter()
        if stage.checked and run.held_out:
            summary = _run_checked(run, stage)
        else:
            summary = stage.run(run) or {}
            run.held_out_loss = None  # the model may have changed since the last checked stage measured it
        set_quantizers(run.wrappers.values(), True)
        run.report.stages[stage.name] = {"seconds": round(time.perf_counter() - started, 2), **summary}
        work.save(run, stage)


def _held_out_loss(run: QuantRun) -> float:
    return network_loss(run.model, run.held_out, run.forward, run.target.task_hook, run.held_out_references)


def _run_checked(run: QuantRun, stage: Stage) -> dict:
    """The stage, kept only if it lowers the task loss on the held-out frames (with every quantizer on)."""
    if run.held_out_references is None:
        run.held_out_references = fp32_references(run, run.held_out, run.target.task_hook)
    saved = clone_state(run.model)
    # Checked stages often run back to back: the next one starts from the loss the last one left.
    before = run.held_out_loss if run.held_out_loss is not None else _held_out_loss(run)
    summary = stage.run(run) or {}
    set_quantizers(run.wrappers.values(), True)
    after = _held_out_loss(run)
    if after > before:
        run.model.load_state_dict(saved)
    run.held_out_loss = min(before, after)
    return {**summary, "check_frames": len(run.held_out), "check_loss_before": before, "check_loss_after": after,
            "kept": after <= before}


# --- channel equalization (part of the calibration stage) ------------------------------------------------------


def equalize_channels(run: QuantRun, batches: list) -> None:
    """Channel equalization of the target's pairs (FP32 statistics over active sites), checked to leave the FP32
    output unchanged: a pair that is not one (a consumer missing, a non-homogeneous operation between) is an error.
    Pairs with a layer kept in float (not quantized, so nothing to gain) are left out."""
    wrappers, forward = run.wrappers, run.forward
    pairs = [p for p in run.target.equalization_pairs
             if p.producer in wrappers and all(name in wrappers for name, _ in p.consumers)]
    if not pairs:
        return
    consumers = {name: wrappers[name] for pair in pairs for name, _ in pair.consumers}
    with torch.no_grad(), quantizers_disabled(run.model):
        before = tensors_of(forward(run.model, batches[0]))
    stats = collect_statistics(run.model, consumers, batches, forward, True, 0, run.config.seed, run.progress,
                               "channel equalization")
    ranges = {name: s.channel_amax for name, s in stats.items()}
    missing = [name for name, r in ranges.items() if r is None]
    if missing:
        raise ValueError(f"channel equalization: no input seen at {missing}")
    for producer, record in equalize(wrappers, pairs, ranges, run.config.equalization_alpha,
                                     run.config.equalization_alpha_fp32_consumers).items():
        run.report.layers[producer]["equalization"] = record
    with torch.no_grad(), quantizers_disabled(run.model):
        after = tensors_of(forward(run.model, batches[0]))
    error = max(float((a - b).abs().max()) for a, b in zip(after, before))
    magnitude = max(float(b.abs().max()) for b in before)
    run.report.equalization_max_abs_error = error
    if error > 1e-3 * max(magnitude, 1.0):
        raise ValueError(f"channel equalization changed the FP32 output by {error:.3g} (outputs up to "
                         f"{magnitude:.3g}): the target's equalization pairs are not all homogeneous")
