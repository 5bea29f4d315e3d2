"""Known answers for the LiDAR-PTQ stages: each stage's result is checked against a value this file computes itself
(brute force, or a loss measured before and after), not against the stage's own report alone.

- the grid search picks the clip ratio that a brute-force search with an independent INT8 quantizer finds best;
- step-size learning with a task hook (TGPL) lowers that task loss on a toy model;
- block reconstruction with adaptive rounding gives a lower block output error than round-to-nearest;
- a quantization interrupted at a stage boundary and run again gives the same tensors as an uninterrupted run.
"""

import copy
import functools
import importlib
import json
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lidar_ptq_core.quant.stages as stages
from lidar_ptq_core.quant import QuantConfig, QuantTarget, quant_wrappers, quantize
from lidar_ptq_core.quant.state import tensors_of

torch.set_num_threads(min(2, torch.get_num_threads()))
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning"),
    pytest.mark.filterwarnings("ignore:'locale.getdefaultlocale':DeprecationWarning"),
]

# Every stage off: each test turns on the one it checks.
NOTHING = dict(grid_search=False, tgpl=False, adaround=False, int32_bias=False, sensitivity_frames=0,
               input_channel_scaling=False, active_sites_only=False)


def int8_reference(x: torch.Tensor, amax, low: int) -> torch.Tensor:
    """Symmetric INT8 quantize-dequantize written out here, independent of the library: scale amax / 127, codes
    clamped to [low, 127]; `amax` a scalar or one value per row (weights, per output channel)."""
    scale = torch.as_tensor(amax, dtype=x.dtype) / 127
    if scale.dim() == 1:
        scale = scale.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.clamp(torch.round(x / scale), low, 127) * scale


# --- grid search of clip ratios ---------------------------------------------------------------------------------


def test_grid_search_picks_the_brute_force_best_clip_ratio():
    # A linear layer whose input is dense in [-1, 1] with one outlier at 100 among 262144 values: max calibration
    # spends the INT8 grid on the outlier (steps of 0.79), so clipping it wins. The brute force below evaluates the
    # same candidate ratios with an independent quantizer against the layer's FP32 output, as the grid search does.
    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(3, 4, generator=gen))
        layer.bias.copy_(torch.randn(3, generator=gen))
    model = nn.Sequential(layer).eval()
    batches = [torch.rand(32768, 4, generator=gen) * 2 - 1 for _ in range(2)]
    batches[0][7, 2] = 100.0
    ratios = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    config = QuantConfig(**{**NOTHING, "grid_search": True, "grid_ratios": ratios, "grid_search_frames": 2})
    qmodel, report = quantize(model, batches, config=config, progress=False)

    calibrated_amax = 100.0  # max calibration over every value
    weight_amax = layer.weight.detach().abs().amax(dim=1)
    quantized_weight = int8_reference(layer.weight.detach(), weight_amax, -127)
    errors = []
    with torch.no_grad():
        for ratio in ratios:
            total = 0.0
            for x in batches:
                quantized = F.linear(int8_reference(x, calibrated_amax * ratio, -128), quantized_weight, layer.bias)
                total += float(((quantized - layer(x)) ** 2).mean())
            errors.append(total / len(batches))
    best = min(range(len(ratios)), key=errors.__getitem__)
    runner_up = min(e for i, e in enumerate(errors) if i != best)
    assert 0 < best < len(ratios) - 1, errors  # an interior optimum: neither no clipping nor the tightest clip
    assert errors[best] < 0.95 * runner_up, errors  # a clear winner, not a tie decided by float noise

    record = report.layers["0"]
    assert record["max"] == pytest.approx(calibrated_amax)
    assert record["grid"]["clip_ratio"] == ratios[best]
    assert record["grid"]["error_before"] == pytest.approx(errors[-1], rel=1e-4)
    assert record["grid"]["error_after"] == pytest.approx(errors[best], rel=1e-4)
    assert float(qmodel[0].input_quantizer.amax) == pytest.approx(calibrated_amax * ratios[best])


def test_grid_search_keeps_the_full_range_when_nothing_is_an_outlier():
    # Uniform inputs reaching +-1 everywhere: any clip cuts off many values, so the brute-force best is ratio 1.
    gen = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    batches = [torch.rand(512, 4, generator=gen) * 2 - 1]
    ratios = (0.5, 0.8, 0.9, 1.0)
    config = QuantConfig(**{**NOTHING, "grid_search": True, "grid_ratios": ratios})
    qmodel, report = quantize(model, batches, config=config, progress=False)
    layer, x = model[0], batches[0]
    amax = float(x.abs().max())
    quantized_weight = int8_reference(layer.weight.detach(), layer.weight.detach().abs().amax(dim=1), -127)
    with torch.no_grad():
        errors = [float(((F.linear(int8_reference(x, amax * r, -128), quantized_weight, layer.bias) - layer(x)) ** 2)
                        .mean()) for r in ratios]
    assert errors.index(min(errors)) == len(ratios) - 1, errors
    assert report.layers["0"]["grid"]["clip_ratio"] == 1.0
    assert float(qmodel[0].input_quantizer.amax) == pytest.approx(amax)


# --- step-size learning with a task loss (TGPL) -----------------------------------------------------------------


class PositiveOutputsHook:
    """A toy task hook in TGPL's shape: pseudo-labels are the outputs the FP32 model scores above zero, and the loss
    is the squared error there (the 'detections'), so the other outputs do not count."""

    def targets(self, batch, fp_outputs):
        return fp_outputs > 0

    def loss(self, outputs, fp_outputs, targets):
        return (((outputs - fp_outputs.detach()) ** 2) * targets).sum()


def _task_loss(model, references, hook) -> float:
    """The task loss summed over the frames, with every quantizer on, against the FP32 model's outputs."""
    total = 0.0
    with torch.no_grad():
        for x, reference in references:
            total += float(hook.loss(model(x), reference, hook.targets(x, reference)))
    return total


def test_step_size_learning_lowers_the_task_loss_on_a_toy_model():
    # A 90th-percentile calibration clips a tenth of every input: steps far too small. 30 steps of TGPL widen them.
    # The loss is measured here, on every frame, for the model before TGPL (0 steps) and after.
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    batches = [torch.randn(128, 6, generator=gen) for _ in range(4)]
    hook = PositiveOutputsHook()
    target = QuantTarget(task_hook=hook)
    settings = {**NOTHING, "calibrator": "percentile", "percentile": 90.0, "tgpl": True, "tgpl_frames": 4,
                "tgpl_lr": 5e-2}
    before_model, _ = quantize(model, batches, config=QuantConfig(**settings, tgpl_steps=0), target=target,
                               progress=False)
    after_model, report = quantize(model, batches, config=QuantConfig(**settings, tgpl_steps=30), target=target,
                                   progress=False)
    with torch.no_grad():
        references = [(x, model(x)) for x in batches]
    assert all(hook.targets(x, ref).sum() > 100 for x, ref in references)  # the task loss sees many positives
    before, after = _task_loss(before_model, references, hook), _task_loss(after_model, references, hook)
    assert after < 0.3 * before, (before, after)
    assert report.stages["tgpl"]["steps"] == 30
    # Only the activation step sizes moved, and they grew (less clipping); the weights are the same INT8 weights.
    before_wrappers = quant_wrappers(before_model)
    for name, wrapper in quant_wrappers(after_model).items():
        assert torch.equal(wrapper.layer.weight, before_wrappers[name].layer.weight), name
        assert float(wrapper.input_quantizer.amax) > float(before_wrappers[name].input_quantizer.amax), name


# --- block reconstruction with adaptive rounding ----------------------------------------------------------------


def _block_model() -> nn.Module:
    torch.manual_seed(3)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    with torch.no_grad():
        for conv in (block[0], block[2]):
            # One large weight per output channel makes the per-channel INT8 step coarse for all the others, so the
            # rounding decisions of the small weights matter.
            conv.weight[:, 0, 0, 0] = 4.0
    return nn.Sequential(OrderedDict(block=block)).eval()


def _output_mse(qmodel, model, frames) -> float:
    with torch.no_grad():
        return sum(float(((qmodel(x) - model(x)) ** 2).mean()) for x in frames) / len(frames)


def test_block_reconstruction_beats_round_to_nearest_on_a_toy_block():
    model = _block_model()
    gen = torch.Generator().manual_seed(4)
    frames = [torch.randn(1, 3, 12, 12, generator=gen) for _ in range(6)]
    calibration, held_out = frames[:4], frames[4:]
    settings = {**NOTHING, "adaround_frames": 4, "adaround_steps": 300, "adaround_check_frames": 0,
                "task_loss_every": 0}
    target = QuantTarget(blocks=("block",))
    nearest, _ = quantize(model, calibration, config=QuantConfig(**settings), target=target, progress=False)
    rounded, report = quantize(model, calibration, config=QuantConfig(**{**settings, "adaround": True}),
                               target=target, progress=False)
    # One block holding both convs; its record is the block's output squared error before and after.
    record = report.layers["block.0"]["reconstruction"]
    assert record["block"] == "block" and record["error_after"] < record["error_rtn"]
    rtn_fit, adaround_fit = _output_mse(nearest, model, calibration), _output_mse(rounded, model, calibration)
    rtn_held, adaround_held = _output_mse(nearest, model, held_out), _output_mse(rounded, model, held_out)
    assert adaround_fit < 0.9 * rtn_fit, (rtn_fit, adaround_fit)  # 0.096 -> 0.084 when written
    assert adaround_held < rtn_held, (rtn_held, adaround_held)  # better on frames it never saw, too
    # Same activation ranges; the weights are still INT8 codes, some rounded the other way than nearest.
    changed = 0
    for name in ("block.0", "block.2"):
        a, b = nearest.get_submodule(name), rounded.get_submodule(name)
        assert torch.equal(a.input_quantizer.amax, b.input_quantizer.amax), name
        assert torch.equal(b.quantized_weight(), b.layer.weight), name  # on the grid
        steps = (b.layer.weight - a.quantized_weight()) / b.weight_quantizer.scale.reshape(-1, 1, 1, 1)
        assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 1 + 1e-3, name
        changed += int((steps.round() != 0).sum())
    assert changed > 0


# --- resume after an interruption -------------------------------------------------------------------------------


class Interrupted(Exception):
    """Stands for the process being stopped (SIGTERM, a crash) in the middle of a stage."""


# The modules through which the quantization driver calls its stage functions: quant/api.py, and quant/stages.py where
# the driver's stages live there. A test replaces a function in each module that has it.
DRIVER_MODULES = ("lidar_ptq_core.quant.api", "lidar_ptq_core.quant.stages")


def _patch_driver(monkeypatch, name: str, make_replacement):
    """Replace the driver's `name` by make_replacement(the real function), wherever the driver looks it up."""
    modules = []
    for module_name in DRIVER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, name):
            modules.append(module)
    assert modules, f"the quantization driver has no {name}"
    replacement = make_replacement(getattr(modules[0], name))
    for module in modules:
        monkeypatch.setattr(module, name, replacement)


def _fail_once_at(monkeypatch, function: str, call: int):
    """Make the driver's <function> raise on its `call`-th call (1-based); earlier calls run as usual."""
    calls = []

    def make(real):
        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == call:
                raise Interrupted(f"{function} call {call}")
            return real(*args, **kwargs)

        return wrapper

    _patch_driver(monkeypatch, function, make)


def _three_block_model() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(OrderedDict(
        b1=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
        b2=nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        b3=nn.Sequential(nn.Conv2d(8, 4, 3, padding=1)),
    )).eval()


# Every stage of the lidar-ptq preset on a toy model with a task hook: calibration, grid search, TGPL, reconstruction
# of three blocks with the task loss and the held-out check, int32 biases, sensitivity.
RESUME_SETTINGS = dict(grid_search_frames=3, tgpl_steps=5, tgpl_frames=3, adaround_steps=30, adaround_frames=3,
                       adaround_check_frames=1, task_loss_every=2, sensitivity_frames=1, input_channel_scaling=False)


def _resume_case():
    gen = torch.Generator().manual_seed(6)
    frames = [torch.randn(1, 3, 10, 10, generator=gen) for _ in range(4)]
    target = QuantTarget(blocks=("b1", "b2", "b3"), task_hook=PositiveOutputsHook())
    return _three_block_model(), frames, target, QuantConfig(**RESUME_SETTINGS)


@functools.cache
def _uninterrupted_state() -> dict:
    """The state of an uninterrupted run without a work folder, made once for every interruption point."""
    model, frames, target, config = _resume_case()
    return quantize(model, frames, config=config, target=target, progress=False)[0].state_dict()


def _record_fp_references(monkeypatch) -> list:
    """Record what the driver's fp_references returns: the FP32 outputs the reconstruction stage compares against."""
    seen = []

    def make(real):
        def recording(*args, **kwargs):
            references = real(*args, **kwargs)
            seen.append([[t.clone() for t in tensors_of(out)] for out, _ in references])
            return references

        return recording

    _patch_driver(monkeypatch, "fp_references", make)
    return seen


@pytest.mark.parametrize("function, call", [
    ("grid_search_clip_ratios", 1),  # stopped after calibration
    ("learn_step_sizes", 1),  # after the grid search
    ("reconstruct_block", 2),  # during the second block, as in the issue
    ("sensitivity", 1),  # after every other stage
], ids=["in-grid-search", "in-tgpl", "in-second-block", "in-sensitivity"])
def test_resume_after_an_interruption_gives_the_uninterrupted_model(tmp_path, monkeypatch, function, call):
    model, frames, target, config = _resume_case()
    expected = _uninterrupted_state()
    with monkeypatch.context() as patch:
        _fail_once_at(patch, function, call)
        with pytest.raises(Interrupted):
            quantize(model, frames, config=config, target=target, progress=False, work_dir=tmp_path)
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["done"] and function not in progress["done"]  # it stopped part way, with stages saved
    resumed, report = quantize(model, frames, config=config, target=target, progress=False, work_dir=tmp_path)
    assert list(resumed.state_dict()) == list(expected)
    differing = [name for name, value in resumed.state_dict().items() if not torch.equal(value, expected[name])]
    assert differing == []
    assert list(report.stages) == ["calibration", "grid_search", "tgpl", "adaround:b1", "adaround:b2",
                                   "adaround:b3", "int32_bias", "sensitivity"]


def test_a_resume_inside_the_reconstruction_compares_against_the_same_fp32_references(tmp_path, monkeypatch):
    # The cause of a resumed model differing from an uninterrupted one, checked directly: the FP32 outputs the
    # reconstruction's task loss and held-out check compare against must not depend on where the run was stopped.
    model, frames, target, config = _resume_case()
    with monkeypatch.context() as patch:
        uninterrupted = _record_fp_references(patch)
        quantize(model, frames, config=config, target=target, progress=False)
    with monkeypatch.context() as patch:
        _fail_once_at(patch, "reconstruct_block", 2)
        with pytest.raises(Interrupted):
            quantize(model, frames, config=config, target=target, progress=False, work_dir=tmp_path)
    with monkeypatch.context() as patch:
        resumed = _record_fp_references(patch)
        quantize(model, frames, config=config, target=target, progress=False, work_dir=tmp_path)
    assert uninterrupted and len(uninterrupted) == len(resumed)  # the task loss's, the held-out check's
    for run_a, run_b in zip(uninterrupted, resumed):
        for frame_a, frame_b in zip(run_a, run_b):
            for a, b in zip(frame_a, frame_b):
                assert torch.equal(a, b)


@pytest.mark.parametrize("function, call, expected", [
    ("learn_step_sizes", 1, "calibration, grid_search done; starting at tgpl"),
    ("reconstruct_block", 2, "calibration, grid_search, tgpl, adaround (1 of 3 blocks) done; starting at adaround:b2"),
], ids=["in-tgpl", "in-second-block"])
def test_a_resume_says_what_it_takes_from_the_work_folder(tmp_path, monkeypatch, function, call, expected):
    model, frames, target, config = _resume_case()
    with monkeypatch.context() as patch:
        _fail_once_at(patch, function, call)
        with pytest.raises(Interrupted):
            quantize(model, frames, config=config, target=target, progress=False, work_dir=tmp_path)
    said = []
    _, report = quantize(model, frames, config=config, target=target, progress=False, work_dir=tmp_path,
                         log=said.append)
    assert said == [f"resuming from {tmp_path}: {expected}"]
    assert report.resumed == said[0] and said[0] in report.format()
    said.clear()  # a third run finds every stage done
    _, report = quantize(model, frames, config=config, target=target, progress=False, work_dir=tmp_path,
                         log=said.append)
    assert said == [f"resuming from {tmp_path}: every stage done (calibration, grid_search, tgpl, adaround (3 of 3 "
                    "blocks), int32_bias, sensitivity); nothing to run"]
    _, fresh = quantize(model, frames, config=config, target=target, progress=False)
    assert fresh.resumed == "" and "resuming" not in fresh.format()


def _wide_model() -> nn.Module:
    """A model with a weight tensor of more than 4096 bytes (32 * 4 * 3 * 3 float32 = 4608), and a BatchNorm (its
    0-dim num_batches_tracked is hashed too)."""
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 4, 3, padding=1)).eval()


def test_a_changed_byte_anywhere_in_the_weights_or_data_starts_the_work_folder_over(tmp_path, monkeypatch):
    # The old fingerprint hashed the first 4096 bytes of each FP32 tensor: a checkpoint differing only after them
    # reused the other checkpoint's work folder. Now one changed byte anywhere makes a fresh run.
    gen = torch.Generator().manual_seed(8)
    frames = [torch.randn(1, 3, 8, 8, generator=gen) for _ in range(2)]
    config = QuantConfig(**{**NOTHING, "sensitivity_frames": 1})
    model = _wide_model()
    quantize(model, frames, config=config, progress=False, work_dir=tmp_path)

    changed = copy.deepcopy(model)
    weight = changed[3].weight
    assert weight.numel() * weight.element_size() > 4096
    with torch.no_grad():
        weight.view(-1)[-1] += 0.5  # its last 4 bytes, past byte 4096 of the tensor
    calibrated, said = [], []
    real = stages.calibrate_activations
    monkeypatch.setattr(stages, "calibrate_activations", lambda *a, **k: calibrated.append(1) or real(*a, **k))
    resumed, _ = quantize(changed, frames, config=config, progress=False, work_dir=tmp_path, log=said.append)
    assert calibrated == [1]  # ran again
    assert said == [f"work folder {tmp_path} holds stages of other FP32 weights, calibration data or settings: "
                    "starting over"]
    fresh, _ = quantize(changed, frames, config=config, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), fresh.state_dict().values()))

    # The same for the calibration data: a byte in the last frame.
    later = [f.clone() for f in frames]
    later[-1].view(-1)[-1] += 0.5
    calibrated.clear()
    quantize(changed, later, config=config, progress=False, work_dir=tmp_path, log=said.append)
    assert calibrated == [1]


def test_fingerprints_cover_every_byte_and_chain_the_settings_stage_by_stage():
    from lidar_ptq_core.quant.prepare import plan_layout, prepare
    from lidar_ptq_core.quant.stages import build_stages
    from lidar_ptq_core.quant.workdir import fingerprints

    model, frames, target, config = _resume_case()
    wide = _wide_model()
    wrappers = prepare(model, plan_layout(model, (), (), (), ()), ())
    stages_of = build_stages(config, target, wrappers)
    assert [s.name for s in stages_of][3:6] == ["adaround:b1", "adaround:b2", "adaround:b3"]
    base = fingerprints(wide, frames, target, config, stages_of)
    assert len(base) == len(stages_of) and all(len(h) == 64 for h in base.values())  # full SHA-256
    assert base == fingerprints(wide, frames, target, config, stages_of)
    changed = copy.deepcopy(wide)
    with torch.no_grad():
        changed[3].weight.view(-1)[-1] += 1e-3
    assert all(a != b for a, b in zip(base.values(), fingerprints(changed, frames, target, config, stages_of).values()))
    # A later stage's setting leaves the earlier stages' fingerprints alone.
    later = fingerprints(wide, frames, target, QuantConfig(**{**RESUME_SETTINGS, "adaround_lr": 5e-3}), stages_of)
    same = [name for name in base if base[name] == later[name]]
    assert same == ["calibration", "grid_search", "tgpl"]


def test_a_work_folder_of_the_older_format_is_refused_with_a_reason(tmp_path):
    # Folders of the first format (fingerprints over the first 4096 bytes of each tensor) are not trusted: the run
    # starts over and says why, and the folder then holds this run's stages.
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(9)
    frames = [torch.randn(1, 3, 8, 8, generator=gen) for _ in range(2)]
    model, config = _wide_model(), QuantConfig(**NOTHING)
    save_file({"0.weight": torch.zeros(1)}, str(tmp_path / "state.safetensors"))  # no format in its metadata
    (tmp_path / "progress.json").write_text(json.dumps({"fingerprints": {}, "done": ["calibration"], "report": {}}))
    said = []
    quantize(model, frames, config=config, progress=False, work_dir=tmp_path, log=said.append)
    assert said == [f"work folder {tmp_path} was made by an older version (another resume format): starting over"]
    said.clear()
    _, report = quantize(model, frames, config=config, progress=False, work_dir=tmp_path, log=said.append)
    assert said == [f"resuming from {tmp_path}: every stage done (calibration); nothing to run"]
