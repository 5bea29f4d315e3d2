"""lidar_ptq_core.quant and the CenterPoint recipe on tiny models: every piece against a known answer."""

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from lidar_ptq_core.models.centerpoint import CenterPoint, sparse_conv_algo_for
from lidar_ptq_core.models.checkpoint import save_checkpoint
from lidar_ptq_core.models.config import CenterPointConfig
from lidar_ptq_core.quant import METHODS, QuantConfig, QuantLayout, method_config, quant_wrappers, quantize
from lidar_ptq_core.quant.adaround import attach, bake
from lidar_ptq_core.quant.calibrate import apply_input_channel_scaling
from lidar_ptq_core.quant.calibrators import (
    ActivationStatistics,
    amax_entropy,
    amax_mse,
    amax_percentile,
    compute_amax,
)
from lidar_ptq_core.quant.fold import find_sequential_pairs, fold_batch_norms
from lidar_ptq_core.quant.modules import QuantConv2d, QuantLayer, QuantLinear
from lidar_ptq_core.quant.quantizer import (
    ACTIVATION_RANGE,
    WEIGHT_RANGE,
    TensorQuantizer,
    fake_quantize,
    quantize_to_int,
    weight_quantizer_for,
)
from lidar_ptq_core.quant.state import quantizers_disabled, tensors_of
from lidar_ptq_core.recipes.centerpoint import (
    TGPLHook,
    centerpoint_target,
    load_quantized_checkpoint,
    quantize_centerpoint,
    save_quantized_checkpoint,
)
from lidar_ptq_core.voxelize import voxelize_clouds

from test_models import TINY_PILLAR, TINY_VOXEL, random_frame, randomize_batchnorm

torch.set_num_threads(min(2, torch.get_num_threads()))
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning"),
    pytest.mark.filterwarnings("ignore:'locale.getdefaultlocale':DeprecationWarning"),
]

FAST = dict(grid_search_frames=2, adaround_frames=2, tgpl_frames=2, tgpl_steps=3, adaround_steps=4,
            sensitivity_frames=1,
            task_loss_every=2)


# --- quantizer ------------------------------------------------------------------------------------------------


def test_fake_quantize_round_trip_and_int8_ranges():
    amax = torch.tensor(12.7)  # scale 0.1
    codes = torch.arange(-128, 128, dtype=torch.float32)
    on_grid = codes * 0.1
    assert torch.allclose(fake_quantize(on_grid, amax, ACTIVATION_RANGE), on_grid, atol=1e-6)
    assert torch.equal(quantize_to_int(on_grid, amax, ACTIVATION_RANGE), codes.to(torch.int8))
    # Beyond the range values clip to the last code: activations to [-128, 127], weights to [-127, 127].
    wide = torch.tensor([-100.0, -12.81, 0.04, 0.06, 12.76, 100.0])
    assert quantize_to_int(wide, amax, ACTIVATION_RANGE).tolist() == [-128, -128, 0, 1, 127, 127]
    assert quantize_to_int(wide, amax, WEIGHT_RANGE).tolist() == [-127, -127, 0, 1, 127, 127]
    # Per channel: each row on its own grid.
    weight = torch.tensor([[1.0, -0.5], [100.0, 3.0]])
    quantizer = weight_quantizer_for(weight, axis=0)
    assert torch.allclose(quantizer.amax, torch.tensor([1.0, 100.0]))
    codes = quantize_to_int(weight, quantizer.amax, WEIGHT_RANGE, axis=0)
    assert codes.tolist() == [[127, -64], [127, 4]]


def test_quantizer_refuses_use_before_calibration_and_bad_amax():
    quantizer = TensorQuantizer()
    with pytest.raises(RuntimeError, match="before calibration"):
        quantizer(torch.ones(3))
    with pytest.raises(ValueError, match="finite"):
        quantizer.set_amax(float("inf"))


def test_straight_through_gradients():
    x = torch.tensor([0.04, 0.5, 30.0], requires_grad=True)
    amax = torch.tensor(1.27, requires_grad=True)
    fake_quantize(x, amax, ACTIVATION_RANGE).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]  # clipped values pass no gradient
    assert amax.grad is not None and amax.grad != 0  # step size is learnable


# --- BN folding -----------------------------------------------------------------------------------------------


def _random_bn(bn):
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.1)
        bn.weight.copy_(torch.randn(bn.num_features, generator=gen))
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
    return bn


@pytest.mark.parametrize("layer, bn, shape", [
    (nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), (2, 3, 8, 8)),
    (nn.Conv2d(3, 5, 3, padding=1, bias=True), nn.BatchNorm2d(5), (2, 3, 8, 8)),
    (nn.ConvTranspose2d(3, 5, 2, stride=2, bias=False), nn.BatchNorm2d(5), (2, 3, 4, 4)),
    (nn.Linear(6, 4, bias=False), nn.BatchNorm1d(4), (7, 6)),
], ids=["conv", "conv-bias", "deconv", "linear"])
def test_bn_folding_is_exact_in_fp32(layer, bn, shape):
    model = nn.Sequential(layer, _random_bn(bn)).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    expected = model(x)
    folded = copy.deepcopy(model)
    assert find_sequential_pairs(folded) == [("0", "1")]
    fold_batch_norms(folded, find_sequential_pairs(folded))
    assert isinstance(folded[1], nn.Identity)
    assert torch.allclose(folded(x), expected, atol=1e-5, rtol=1e-5)


def test_unfolded_batchnorm_is_an_error():
    class Hand(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

    with pytest.raises(ValueError, match="left unfolded.*bn"):
        fold_batch_norms(Hand(), [])
    fold_batch_norms(Hand(), [("conv", "bn")])  # named by hand: fine


# --- calibrators ----------------------------------------------------------------------------------------------


def test_max_and_percentile_calibrators():
    rng = np.random.default_rng(0)
    samples = rng.uniform(0, 1, 200_000).astype(np.float32)
    assert amax_percentile(samples, 99.0) == pytest.approx(0.99, abs=3e-3)
    stats = ActivationStatistics(active_only=False)
    stats.update(torch.tensor([[0.5, -3.0], [1.0, 2.0]]), torch.tensor([True, True]))
    assert compute_amax(stats, "max") == 3.0


def test_mse_calibrator_finds_the_brute_force_best_clip():
    rng = np.random.default_rng(1)
    samples = np.abs(rng.laplace(0, 1, 100_000)).astype(np.float32)
    amax = float(samples.max())
    chosen = amax_mse(samples, amax)

    def error(clip):
        step = clip / 127
        return float(np.mean((samples - np.minimum(np.round(samples / step), 127) * step) ** 2))

    clips = np.linspace(amax / 200, amax, 200)
    best = clips[int(np.argmin([error(c) for c in clips]))]
    assert chosen < 0.9 * amax  # heavy tail: clipping the rare largest values wins
    assert error(chosen) <= error(best) * 1.05


def test_entropy_calibrator_clips_rare_outliers():
    rng = np.random.default_rng(2)
    bulk = np.abs(rng.normal(0, 1, 100_000))
    samples = np.concatenate([bulk, np.full(5, 40.0)]).astype(np.float32)
    chosen = amax_entropy(samples, float(samples.max()))
    assert np.percentile(bulk, 99.9) <= chosen <= bulk.max()  # the tail of the bulk, not the outliers at 40
    # Over mostly-empty sites the histogram is one spike at zero: KL picks its narrowest clip (the collapse the
    # LiDAR-PTQ paper reports for naive entropy calibration), 128 of 2048 bins.
    sparse = np.concatenate([np.zeros(900_000), rng.uniform(0, 10, 100_000)]).astype(np.float32)
    assert amax_entropy(sparse, 10.0) < amax_entropy(sparse[sparse > 0], 10.0)


def test_statistics_of_the_first_layers_stop_the_pass_once_seen():
    from lidar_ptq_core.quant.calibrate import collect_statistics

    class Count(nn.Module):
        calls = 0

        def forward(self, x):
            Count.calls += 1
            return x

    torch.manual_seed(0)
    model = nn.Sequential(QuantLinear(nn.Linear(3, 4)), Count(), QuantLinear(nn.Linear(4, 2)))
    batches = [torch.randn(5, 3) * (i + 1) for i in range(3)]
    full = collect_statistics(model, {"0": model[0]}, batches, lambda m, b: m(b), True, 0, 0, False, "all")
    assert Count.calls == 3
    early = collect_statistics(model, {"0": model[0]}, batches, lambda m, b: m(b), True, 0, 0, False, "first",
                               stop_when_seen=True)
    assert Count.calls == 3  # nothing after the observed layer ran
    assert early["0"].amax == full["0"].amax == float(batches[2].abs().max())
    assert torch.equal(early["0"].channel_amax, full["0"].channel_amax)
    assert model[0].observer is None


def test_max_statistics_without_samples_equal_the_row_path():
    """The max-only path (no histogram samples) takes maxima over the whole tensor; they must equal those over the
    non-empty rows, with the same site counts, for a dense canvas and for sparse features."""
    torch.manual_seed(0)
    canvas = torch.zeros(2, 3, 6, 5)
    canvas[:, :, 1:3, 2:4] = torch.randn(2, 3, 2, 2) * 4
    canvas[1, 0, 5, 0] = -7.5  # a site with one non-zero channel is non-empty
    features = torch.cat([torch.randn(4, 3), torch.zeros(2, 3)])  # active voxels, two of them all zero
    for values, axis, all_active in ((canvas, 1, False), (features, -1, True)):
        for active_only in (True, False):
            rows_path = ActivationStatistics(active_only=active_only, samples_per_batch=10_000)
            max_path = ActivationStatistics(active_only=active_only, samples_per_batch=0)
            rows_path.observe(values, axis, all_active)
            max_path.observe(values, axis, all_active)
            assert max_path.amax == rows_path.amax
            assert torch.equal(max_path.channel_amax, rows_path.channel_amax)
            assert (max_path.num_sites, max_path.num_active_sites, max_path.num_values) == (
                rows_path.num_sites, rows_path.num_active_sites, rows_path.num_values)
    assert max_path.num_active_sites == 6  # every sparse site counts, the all-zero ones included
    empty = ActivationStatistics(active_only=True, samples_per_batch=0)
    empty.observe(torch.zeros(1, 3, 4, 4), 1)
    assert empty.channel_amax is None and empty.num_sites == 16 and empty.num_active_sites == 0


def test_statistics_ignore_empty_sites():
    """Sparsity-based statistics see only sites with a non-zero channel; naive ones count the zero canvas too."""
    canvas = torch.zeros(1, 2, 10, 10)
    canvas[0, :, :3, :3] = torch.arange(1, 19, dtype=torch.float32).reshape(2, 3, 3)  # 9 occupied cells of 100
    layer = QuantConv2d(nn.Conv2d(2, 2, 1))
    records = {}
    for active_only in (True, False):
        stats = ActivationStatistics(active_only=active_only, samples_per_batch=10_000)
        layer.observer = lambda module, values, axis, all_active, stats=stats: stats.observe(values, axis, all_active)
        with quantizers_disabled(layer):
            layer(canvas)
        records[active_only] = stats
    assert records[True].num_active_sites == 9 and records[True].num_sites == 100
    assert (records[True].samples > 0).all() and records[True].samples.size == 18
    assert (records[False].samples == 0).sum() == 2 * 91
    assert compute_amax(records[True], "max") == compute_amax(records[False], "max") == 18.0
    assert compute_amax(records[False], "percentile", 50.0) == 0.0  # the naive median is an empty cell
    assert compute_amax(records[True], "percentile", 50.0) > 5.0


def test_input_channel_scaling_is_exact_and_equalises_channels():
    torch.manual_seed(0)
    layer = QuantLinear(nn.Linear(3, 4), input_channel_scaling=True)
    x = torch.stack([torch.rand(50) * 150 - 75, torch.rand(50) * 0.4 - 0.2, torch.rand(50)], dim=1)
    with quantizers_disabled(layer):
        before = layer(x)
        scale = apply_input_channel_scaling(layer, x.abs().amax(dim=0))
        after = layer(x)
        rows = layer._scale_input(x)
    assert torch.allclose(after, before, atol=1e-4, rtol=1e-5)
    assert torch.allclose(rows.abs().amax(dim=0), torch.ones(3))
    assert torch.allclose(scale, x.abs().amax(dim=0))


def test_balanced_input_channel_scaling_shares_the_spread_between_inputs_and_weights():
    # alpha = 1 moves the whole metres-vs-centimetres spread into the weights: the offset channel's weights end a
    # few INT8 codes wide. alpha = 0.5 leaves the square root of the spread on each side; still exact in FP32.
    def spreads(alpha):
        torch.manual_seed(0)
        layer = QuantLinear(nn.Linear(3, 4), input_channel_scaling=True)
        with torch.no_grad():
            layer.layer.weight.copy_(torch.rand(4, 3) * 0.5 + 0.5)  # similar weights in every column
        x = torch.stack([torch.rand(50) * 150 - 75, torch.rand(50) * 0.4 - 0.2, torch.rand(50)], dim=1)
        with quantizers_disabled(layer):
            before = layer(x)
            apply_input_channel_scaling(layer, x.abs().amax(dim=0), alpha)
            assert torch.allclose(layer(x), before, atol=1e-3, rtol=1e-5)
            inputs = layer._scale_input(x).abs().amax(dim=0)
        weights = layer.layer.weight.abs()
        columns = (weights / weights.amax(dim=1, keepdim=True)).amax(dim=0)
        return float(inputs.max() / inputs.min()), float(columns.max() / columns.min())

    inputs_1, weights_1 = spreads(1.0)
    inputs_half, weights_half = spreads(0.5)
    assert inputs_1 == pytest.approx(1.0, rel=1e-4) and weights_1 > 100
    assert inputs_half < 30 and weights_half < 30 and inputs_half * weights_half == pytest.approx(weights_1, rel=0.3)


# --- adaptive rounding ----------------------------------------------------------------------------------------


def test_adaround_starts_at_round_to_nearest_and_ends_hard():
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(4, 3, 3, 3))
    quantizer = weight_quantizer_for(weight, axis=0)
    rtn = fake_quantize(weight.detach(), quantizer.amax, WEIGHT_RANGE, axis=0)
    rounding = attach(quantizer, weight)
    assert torch.allclose(quantizer(weight), weight, atol=1e-5)  # soft start reproduces the FP32 weight
    rounding.hard = True
    assert torch.allclose(quantizer(weight), rtn, atol=1e-6)  # hard decision starts at round-to-nearest
    rounding.hard = False
    with torch.no_grad():
        rounding.alpha.add_(torch.randn_like(rounding.alpha))  # some learned decisions
    bake(quantizer, weight)
    assert quantizer.rounding is None
    scale = (quantizer.amax / 127).view(-1, 1, 1, 1)
    codes = weight.detach() / scale
    assert torch.allclose(codes, codes.round(), atol=1e-4)  # exactly INT8 codes times the scale
    assert codes.round().abs().max() <= 127
    assert torch.equal(quantizer(weight), weight.detach())  # re-quantizing a baked weight changes nothing


# --- the CenterPoint recipe -----------------------------------------------------------------------------------


def tiny_model(config_dict, seed=0):
    torch.manual_seed(seed)
    config = CenterPointConfig.from_dict(copy.deepcopy(config_dict))
    return randomize_batchnorm(CenterPoint(config, sparse_conv_algo=sparse_conv_algo_for("cpu"))).eval()


def calibration_batches(model, count=3):
    return [voxelize_clouds([random_frame(seed, 600)], model.config.voxelization, 4)[0] for seed in range(count)]


def test_tgpl_positives_are_the_pseudo_label_centres():
    model = tiny_model(TINY_PILLAR)
    geometry = model.config.head_geometry()
    batch = calibration_batches(model, 1)[0]
    with torch.no_grad():
        outputs = model(batch)
    for out in outputs:
        out["hm"].fill_(-10.0)  # nothing detected...
        for key in ("center", "center_z", "dim", "rot"):
            out[key].zero_()
        out["center"].fill_(0.5)  # box centres in the middle of their cells
    outputs[0]["hm"][0, 1, 5, 7] = 4.0  # ...but a Truck centred in cell (row 5, col 7)
    outputs[1]["hm"][0, 0, 20, 3] = 3.0  # and a Pedestrian in cell (20, 3) of the second task
    outputs[1]["hm"][0, 1, 30, 30] = -1.5  # score 0.18: decoded, but below the pseudo-label threshold
    hook = TGPLHook(model, score_threshold=0.3, background_weight=0.0)
    targets = hook.targets(batch, outputs)
    assert targets[0].tolist() == [[0, 5, 7]]
    assert targets[1].tolist() == [[0, 20, 3]]
    assert geometry.height > 30
    # The loss is zero for identical outputs and sees a change at a positive, not elsewhere.
    assert float(hook.loss(outputs, outputs, targets)) == 0.0
    moved = [{k: v.clone() for k, v in out.items()} for out in outputs]
    moved[1]["dim"][0, :, 30, 30] += 1.0
    assert float(hook.loss(moved, outputs, targets)) == 0.0
    moved[1]["dim"][0, :, 20, 3] += 1.0
    assert float(hook.loss(moved, outputs, targets)) == pytest.approx(3.0)
    # The background term sees heatmap changes anywhere, in probability (a deep negative logit barely counts).
    hook.background_weight = 1.0
    moved[0]["hm"][0, 0, 1, 1] = 0.0  # probability 4.5e-5 -> 0.5: a new false positive
    moved[0]["hm"][0, 0, 2, 2] = -20.0  # 4.5e-5 -> 2e-9: nothing
    assert float(hook.loss(moved, outputs, targets)) == pytest.approx(3.0 + (0.5 - 4.54e-5) ** 2, rel=1e-3)


@pytest.mark.parametrize("config_dict", [TINY_PILLAR, TINY_VOXEL], ids=["pillar", "voxel"])
def test_every_layer_int8_and_folding_exact(config_dict):
    model = tiny_model(config_dict)
    batches = calibration_batches(model)
    qmodel, report = quantize_centerpoint(model, batches, "lidar-ptq", method_config("lidar-ptq", **FAST),
                                          progress=False)
    assert report.fold_max_abs_error < 1e-4
    wrappers = quant_wrappers(qmodel)
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))
                or type(m).__name__ in ("SubMConv3d", "SparseConv3d")]
    assert sorted(n for n in wrappers if not n.endswith(".add")) == sorted(weighted)
    assert report.layout["kept_float"] == []
    assert not [m for m in qmodel.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if model.backbone_3d is not None:
        assert any(n.endswith(".add") for n in wrappers)  # residual adds quantized
        assert report.layout["input_scaled"] == ["backbone_3d.conv_input.0"]
    else:
        assert report.layout["input_scaled"] == ["vfe.pfn_layers.0.linear"]
    for name, wrapper in wrappers.items():
        assert wrapper.input_quantizer.calibrated, name
    assert set(report.sensitivity) == set(wrappers)
    with torch.no_grad():
        outputs = qmodel(batches[0])
    assert all(torch.isfinite(t).all() for out in outputs for t in out.values())


def reload_and_check_outputs(qmodel, report, batch, tmp_path):
    """Save and reload a quantized model; the reloaded one gives the same outputs bit for bit. Returns it."""
    loaded = load_quantized_checkpoint(save_quantized_checkpoint(qmodel, report, tmp_path / "q.safetensors"))
    with torch.no_grad():
        a, b = qmodel(batch), loaded(batch)
    for x, y in zip(a, b):
        for key in x:
            assert torch.equal(x[key], y[key]), key
    return loaded


def test_quantized_checkpoint_reloads_bit_exactly(tmp_path):
    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model)
    qmodel, report = quantize_centerpoint(model, batches, "lidar-ptq", method_config("lidar-ptq", **FAST),
                                          progress=False)
    loaded = reload_and_check_outputs(qmodel, report, batches[1], tmp_path)
    # Reconstructed weights sit exactly on their INT8 grid.
    for name, wrapper in quant_wrappers(loaded).items():
        if hasattr(wrapper, "weight_quantizer"):
            assert torch.equal(wrapper.quantized_weight(), wrapper.layer.weight.detach()), name
    assert loaded.quantization["method"] == "lidar-ptq"


def test_output_layers_with_fp32_weights_and_int8_input_survive_reconstruction_and_reload(tmp_path):
    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model)
    config = method_config("lidar-ptq", keep_float_outputs=True, output_layers_int8_input=True, **FAST)
    qmodel, report = quantize_centerpoint(model, batches, "lidar-ptq", config, progress=False)
    float_weights = report.layout["float_weights"]
    assert float_weights and set(float_weights) <= set(report.layout["quantized"])
    assert not report.layout["kept_float"]
    loaded = reload_and_check_outputs(qmodel, report, batches[1], tmp_path)
    for name, wrapper in quant_wrappers(loaded).items():
        if not hasattr(wrapper, "weight_quantizer"):
            continue
        on_grid = torch.equal(wrapper.weight_quantizer(wrapper.layer.weight), wrapper.layer.weight.detach())
        assert wrapper.float_weight == (name in float_weights), name
        assert wrapper.input_quantizer.calibrated, name
        # Reconstruction rounds every other layer's weights onto their grid and leaves the FP32 ones alone.
        assert on_grid != wrapper.float_weight, name


def test_keep_float_layers_are_named_and_left_alone():
    model = tiny_model(TINY_PILLAR)
    config = method_config("max", keep_float=("backbone_2d.deblocks",))
    qmodel, report = quantize_centerpoint(model, calibration_batches(model, 2), "max", config, progress=False)
    assert report.layout["kept_float"] == ["backbone_2d.deblocks.0.0", "backbone_2d.deblocks.1.0"]
    assert isinstance(qmodel.backbone_2d.deblocks[0][0], nn.ConvTranspose2d)
    assert "backbone_2d.deblocks" in report.format()
    # with channel equalization on, pairs that touch a float layer are left out, the others still equalized
    _, report = quantize_centerpoint(model, calibration_batches(model, 2), "max",
                                     method_config("max", keep_float=("backbone_2d.deblocks",), equalize_channels=True),
                                     progress=False)
    equalized = [n for n, r in report.layers.items() if "equalization" in r]
    assert equalized and not any(n.startswith("backbone_2d.deblocks") for n in equalized)
    assert "backbone_2d.blocks.0.4" not in equalized  # its readers include a float deblock
    with pytest.raises(ValueError, match="keep_float names no quantizable layer"):
        quantize_centerpoint(model, calibration_batches(model, 1), "max", method_config("max", keep_float=("nope",)),
                             progress=False)


def test_keep_float_outputs_leaves_exactly_the_layers_that_make_the_network_outputs():
    from lidar_ptq_core.recipes.centerpoint import output_layers

    model = tiny_model(TINY_PILLAR)
    heads = sorted(f"dense_head.heads_list.{task}.{name}.1"  # every task's head (the tiny model has two)
                   for task, head in enumerate(model.dense_head.heads_list) for name in head.head_names)
    assert len(heads) == 10
    assert sorted(output_layers(model)) == heads
    config = method_config("max", keep_float_outputs=True, keep_float=("backbone_2d.deblocks.0",))
    qmodel, report = quantize_centerpoint(model, calibration_batches(model, 2), "max", config, progress=False)
    assert sorted(report.layout["kept_float"]) == sorted(heads + ["backbone_2d.deblocks.0.0"])
    assert all(type(qmodel.get_submodule(name)) is nn.Conv2d for name in heads)
    assert "dense_head.heads_list.0.center.0.0" in report.layout["quantized"]  # the 3x3 conv before stays INT8
    with pytest.raises(ValueError, match="output_layers"):  # a target that names no outputs cannot honour it
        quantize(model, calibration_batches(model, 1), "max", config)


def test_quantization_resumes_from_its_stage_checkpoints(tmp_path, monkeypatch):
    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model)
    config = method_config("lidar-ptq", **FAST)
    first, report = quantize_centerpoint(model, batches, "lidar-ptq", config, progress=False, work_dir=tmp_path)
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["done"][:3] == ["calibration", "grid_search", "tgpl"] and progress["done"][-1] == "sensitivity"

    import lidar_ptq_core.quant.stages as stages

    def fail(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(stages, "calibrate_activations", fail)
    monkeypatch.setattr(stages, "reconstruct_block", fail)
    second, resumed = quantize_centerpoint(model, batches, "lidar-ptq", config, progress=False, work_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    # the resumed report keeps what the skipped stages measured
    assert resumed.equalization_max_abs_error == report.equalization_max_abs_error > 0
    assert resumed.layers == report.layers


def test_changing_only_reconstruction_settings_resumes_after_the_early_stages(tmp_path, monkeypatch):
    import lidar_ptq_core.quant.stages as stages

    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model)
    quantize_centerpoint(model, batches, "lidar-ptq", method_config("lidar-ptq", **FAST), progress=False,
                         work_dir=tmp_path)
    changed = method_config("lidar-ptq", **{**FAST, "adaround_steps": 2, "adaround_lr": 5e-3})
    fresh, _ = quantize_centerpoint(model, batches, "lidar-ptq", changed, progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("an early stage with unchanged settings ran again")

    for function in ("calibrate_activations", "grid_search_clip_ratios", "learn_step_sizes"):
        monkeypatch.setattr(stages, function, fail)
    ran = []
    real = stages.reconstruct_block
    monkeypatch.setattr(stages, "reconstruct_block", lambda *a, **k: ran.append(1) or real(*a, **k))
    resumed, report = quantize_centerpoint(model, batches, "lidar-ptq", changed, progress=False, work_dir=tmp_path)
    assert ran and list(report.stages)[:3] == ["calibration", "grid_search", "tgpl"]
    for (name, a), b in zip(fresh.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # A changed calibration setting invalidates everything after it.
    monkeypatch.undo()
    calibrated = []
    real_calibrate = stages.calibrate_activations
    monkeypatch.setattr(stages, "calibrate_activations",
                        lambda *a, **k: calibrated.append(1) or real_calibrate(*a, **k))
    other = method_config("lidar-ptq", **{**FAST, "calibrator": "percentile"})
    quantize_centerpoint(model, batches, "lidar-ptq", other, progress=False, work_dir=tmp_path)
    assert calibrated == [1]


def test_a_block_that_gets_worse_on_held_out_frames_keeps_round_to_nearest(monkeypatch):
    import lidar_ptq_core.quant.stages as stages

    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 4)
    config = method_config("lidar-ptq", **{**FAST, "adaround_frames": 2, "adaround_check_frames": 2})
    real = stages.reconstruct_block
    damaged = "dense_head.shared_conv"
    weights_before = {}

    def reconstruct(qmodel, module, members, *args, **kwargs):
        record = real(qmodel, module, members, *args, **kwargs)
        if module is qmodel.get_submodule(damaged):  # a reconstruction that ruins the block
            layer = next(iter(members.values())).layer
            weights_before["w"] = layer.weight.detach().clone()
            with torch.no_grad():
                layer.weight.mul_(-3.0)
        return record

    monkeypatch.setattr(stages, "reconstruct_block", reconstruct)
    qmodel, report = quantize_centerpoint(model, batches, "lidar-ptq", config, progress=False)
    records = {r["block"]: r for r in (rec.get("reconstruction") for rec in report.layers.values()) if r}
    assert records[damaged]["kept"] is False
    assert records[damaged]["check_loss_after"] > records[damaged]["check_loss_rtn"]
    assert all(isinstance(r["kept"], bool) for r in records.values())  # every block was checked
    layer = qmodel.get_submodule(damaged)[0].layer
    # Back to the state before reconstruction: FP32 weights that the weight quantizer rounds to nearest.
    assert not torch.equal(layer.weight, weights_before["w"] * -3.0)
    assert torch.equal(qmodel.get_submodule(damaged)[0].quantized_weight(), layer.weight)  # on the INT8 grid
    assert "*" in report.format()


def test_a_stage_that_gets_worse_on_held_out_frames_is_undone(monkeypatch):
    """With stage_check_frames, TGPL's step sizes are kept only if the held-out task loss went down: a TGPL that
    ruins the ranges leaves the ranges the grid search chose, and the report says so."""
    import lidar_ptq_core.quant.stages as stages

    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 4)
    config = method_config("lidar-ptq", **{**FAST, "adaround": False, "stage_check_frames": 2})
    after_grid = {}
    real_grid = stages.grid_search_clip_ratios

    def grid(qmodel, wrappers, *args, **kwargs):
        records = real_grid(qmodel, wrappers, *args, **kwargs)
        after_grid.update({n: w.input_quantizer.amax.detach().clone() for n, w in wrappers.items()})
        return records

    def ruinous_tgpl(qmodel, wrappers, *args, **kwargs):
        with torch.no_grad():
            for wrapper in wrappers.values():
                wrapper.input_quantizer.amax.mul_(0.01)  # clip nearly everything
        return {"steps": 0}

    monkeypatch.setattr(stages, "grid_search_clip_ratios", grid)
    monkeypatch.setattr(stages, "learn_step_sizes", ruinous_tgpl)
    qmodel, report = quantize_centerpoint(model, batches, "lidar-ptq", config, progress=False)
    tgpl, grid_stage = report.stages["tgpl"], report.stages["grid_search"]
    assert tgpl["kept"] is False and tgpl["check_loss_after"] > tgpl["check_loss_before"]
    assert tgpl["check_frames"] == 2 and isinstance(grid_stage["kept"], bool)
    wrappers = quant_wrappers(qmodel)
    if grid_stage["kept"]:
        for name, amax in after_grid.items():
            assert torch.equal(wrappers[name].input_quantizer.amax, amax), name
    assert "not kept" in report.format()
    # Without the check (the default), the same ruinous stage stays.
    plain = method_config("lidar-ptq", **{**FAST, "adaround": False})
    _, report = quantize_centerpoint(model, batches, "lidar-ptq", plain, progress=False)
    assert "check_frames" not in report.stages["tgpl"]


def test_quantize_is_deterministic_with_a_seed():
    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model)
    config = method_config("qdrop", **FAST)
    a, _ = quantize_centerpoint(model, batches, "qdrop", config, progress=False)
    torch.manual_seed(123)  # global RNG state must not matter... except for QDrop's dropping, seeded below
    b, _ = quantize_centerpoint(model, batches, "qdrop", config, progress=False)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_every_method_preset_runs_its_stages_and_stays_close_to_fp32():
    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 2)
    with torch.no_grad():
        reference = tensors_of(model(batches[1]))  # a frame the calibration never saw
    from lidar_ptq_core.quant.reconstruct import assign_blocks

    blocks = centerpoint_target(model).blocks
    for method in METHODS:
        overrides = {**FAST, "adaround_steps": 1, "tgpl_steps": 1, "sensitivity_frames": 0}
        config = method_config(method, **overrides)
        qmodel, report = quantize_centerpoint(model, batches[:1], method, config, progress=False)
        assert report.method == method
        for key, value in METHODS[method].items():  # the preset's settings are the ones recorded
            assert report.config[key] == overrides.get(key, value), (method, key)
        wrappers = quant_wrappers(qmodel)
        # Exactly the stages the preset switches on ran, in pipeline order (every block reconstructed once).
        expected = (["calibration"] + ["grid_search"] * config.grid_search + ["tgpl"] * config.tgpl
                    + [f"adaround:{b}" for b, _ in assign_blocks(wrappers, blocks)] * config.adaround
                    + ["bias_correction"] * config.bias_correction + ["int32_bias"])
        assert list(report.stages) == expected, method
        assert report.stages.get("tgpl", {"steps": 1})["steps"] == 1
        assert report.layout["kept_float"] == [] and all(w.input_quantizer.calibrated for w in wrappers.values())
        for name, wrapper in wrappers.items():
            if config.grid_search:
                assert report.layers[name]["grid"]["clip_ratio"] in config.grid_ratios, (method, name)
            if config.adaround and isinstance(wrapper, QuantLayer):  # reconstructed weights are INT8 codes
                assert torch.equal(wrapper.quantized_weight(), wrapper.layer.weight), (method, name)
        with torch.no_grad():
            outputs = tensors_of(qmodel(batches[1]))
        assert len(outputs) == len(reference) and all(torch.isfinite(t).all() for t in outputs), method
        # Output error relative to each output's FP32 variance; 0.001-0.004 when written. Entropy calibration over
        # every site of a mostly empty canvas clips nearly everything (3.6 when written), the failure LiDAR-PTQ's
        # sparsity-based calibration avoids, so it is held only to finite outputs.
        relative = max(float(((a - b) ** 2).mean() / b.var()) for a, b in zip(outputs, reference))
        assert method == "entropy" or relative < 0.01, (method, relative)


def test_quant_config_rejects_bad_values():
    with pytest.raises(ValueError, match="calibrator"):
        QuantConfig(calibrator="kl")
    with pytest.raises(ValueError, match="unknown keys in quantization"):
        QuantConfig.from_dict({"grid_ratio": [0.5]})
    with pytest.raises(ValueError, match="unknown method"):
        method_config("int4")
    with pytest.raises(ValueError, match="quantization.grid_search: expected true or false"):
        QuantConfig.from_dict({"grid_search": "yes"})
    with pytest.raises(ValueError, match=r"quantization.adaround_beta: expected 2 values"):
        QuantConfig.from_dict({"adaround_beta": [20]})
    config = QuantConfig.from_dict({"keep_float": ["backbone_2d.deblocks"], "grid_ratios": [0.5, 1]})
    assert config.keep_float == ("backbone_2d.deblocks",) and config.grid_ratios == (0.5, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["waymo_centerpoint_pillar_1x", "nuscenes_centerpoint_voxel0075_res3d"])
def test_full_size_configs_go_through_quantize(name):
    """The OpenPCDet-sized networks (468x468 Waymo pillar BEV, nuScenes 0.075 m voxels) quantize end to end; random
    weights and two random frames are enough to exercise every layer type at full size."""
    from pathlib import Path

    from lidar_ptq_core.models.centerpoint import build_centerpoint

    model = randomize_batchnorm(build_centerpoint(Path(__file__).parents[1] / "config/models" / f"{name}.yaml")).eval()
    config = model.config
    pcr = config.voxelization.point_cloud_range
    rng = np.random.default_rng(0)
    clouds = [np.concatenate([rng.uniform(pcr[:3], pcr[3:], (4000, 3)),
                              rng.uniform(0, 1, (4000, config.num_point_features - 3))], axis=1).astype(np.float32)
              for _ in range(2)]
    batches = [voxelize_clouds([c], config.voxelization, config.num_point_features)[0] for c in clouds]
    quant = method_config("sparse-max", sensitivity_frames=0)  # the grid search is covered on the tiny models
    qmodel, report = quantize_centerpoint(model, batches[:1], "sparse-max", quant, progress=False)
    assert report.layout["kept_float"] == [] and len(report.layout["quantized"]) > 30
    with torch.no_grad():
        outputs = qmodel(batches[1])
        reference = model(batches[1])
    scale = max(float(t.abs().max()) for out in reference for t in out.values())
    assert report.fold_max_abs_error < 1e-3 * max(scale, 1.0)
    assert len(outputs) == len(config.dense_head.class_names_each_head)
    assert all(torch.isfinite(t).all() for out in outputs for t in out.values())


def test_layers_reading_one_tensor_share_one_input_scale_chosen_jointly():
    # The head's branches all read the shared conv's output: with share_input_quantizers they end on one amax
    # (grid search and TGPL choose it jointly), recorded in the layout; without it the grid search picks per layer.
    from lidar_ptq_core.quant.share import find_shared_inputs

    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 3)
    shared, report = quantize_centerpoint(model, batches, "lidar-ptq", method_config("lidar-ptq", **FAST),
                                          progress=False)
    groups = report.layout["shared_inputs"]
    branches = sorted(n for n in quant_wrappers(shared) if n.startswith("dense_head.heads_list.0.") and
                      n.count(".") == 5 and n.endswith(".0.0"))
    assert len(branches) >= 2 and any(set(branches) <= set(g) for g in groups), (groups, branches)
    for members in groups:
        values = {float(shared.get_submodule(n).input_quantizer.amax) for n in members}
        assert len(values) == 1, (members, values)
        # each member keeps its own quantizer module (the state_dict is unchanged), holding the shared value
        assert len({id(shared.get_submodule(n).input_quantizer) for n in members}) == len(members)
        ratios = {report.layers[n]["grid"]["clip_ratio"] for n in members}
        assert len(ratios) == 1
    # the layout survives the checkpoint; groups are found again the same way
    assert QuantLayout.from_dict(report.layout).shared_inputs == groups
    from lidar_ptq_core.quant.prepare import prepare
    from lidar_ptq_core.recipes.centerpoint import centerpoint_target

    fresh = tiny_model(TINY_PILLAR)
    target = centerpoint_target(fresh)
    wrappers = prepare(fresh, QuantLayout.from_dict(report.layout), tuple(target.add_types))
    assert find_shared_inputs(fresh, wrappers, batches[0], target.forward) == groups
    # the integer onnxruntime graph then makes the shared conv's output once, not once per branch grid
    from lidar_ptq_core.export.onnx_ort_int8 import int8_layer_report

    assert int8_layer_report(shared)["dense_head.shared_conv.0"] == "integer"
    with pytest.raises(ValueError, match="share_input_quantizers does not support"):
        method_config("qdrop", share_input_quantizers=True)


def test_tgpl_cosine_schedule_decays_the_step_size_learning_rate(monkeypatch):
    # With tgpl_schedule=cosine the k-th of N steps uses lr * (1 + cos(pi k / N)) / 2 in every parameter group.
    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 2)
    seen = []
    original = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append([group["lr"] for group in self.param_groups])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    steps = 6
    config = method_config("sparse-grid-tgpl", **{**FAST, "tgpl_steps": steps, "tgpl_schedule": "cosine"})
    _, report = quantize_centerpoint(model, batches, "sparse-grid-tgpl", config, progress=False)
    assert len(seen) == steps and report.stages["tgpl"]["steps"] == steps
    first = np.array(seen[0])
    for k, lrs in enumerate(seen):
        assert np.allclose(np.array(lrs) / first, 0.5 * (1 + np.cos(np.pi * k / steps))), k
    with pytest.raises(ValueError, match="tgpl_schedule"):
        method_config("lidar-ptq", tgpl_schedule="linear")


def test_channel_equalization_scales_known_answer():
    from lidar_ptq_core.quant.equalize import equalization_scales

    # r = [4, 1], w = [1, 1], alpha 0.5: s = sqrt(r) = [2, 1], normalised so the largest range stays 4 -> [1, 0.5];
    # the ranges become [4, 2] (spread 4 -> 2). A channel that never moved keeps s = 1.
    scales = equalization_scales(torch.tensor([4.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.3]), 0.5)
    assert torch.allclose(scales, torch.tensor([1.0, 0.5, 1.0]))
    # alpha 1: every range moves into the weights (all channels end at the largest range); alpha 0: nothing moves
    # beyond the weight balance.
    r = torch.tensor([8.0, 2.0, 0.5])
    assert torch.allclose(r / equalization_scales(r, torch.ones(3), 1.0), torch.full((3,), 8.0))
    assert torch.allclose(equalization_scales(r, torch.ones(3), 0.0), torch.ones(3))


@pytest.mark.parametrize("config_dict", [TINY_PILLAR, TINY_VOXEL], ids=["pillar", "voxel"])
def test_channel_equalization_is_exact_and_narrows_channel_ranges(config_dict):
    from dataclasses import replace

    from lidar_ptq_core.quant.equalize import EqualizationPair
    from lidar_ptq_core.recipes.centerpoint import centerpoint_target

    model = tiny_model(config_dict)
    batches = calibration_batches(model, 2)
    config = method_config("sparse-max", equalize_channels=True, **FAST)
    qmodel, report = quantize_centerpoint(model, batches, "sparse-max", config, progress=False)
    records = {n: r["equalization"] for n, r in report.layers.items() if "equalization" in r}
    assert len(records) >= 8 and report.equalization_max_abs_error < 1e-4
    assert all(r["range_spread_after"] <= r["range_spread_before"] + 1e-6 for r in records.values())
    assert max(r["range_spread_before"] / r["range_spread_after"] for r in records.values()) > 2
    with torch.no_grad(), quantizers_disabled(qmodel):
        for batch in batches:
            for a, b in zip(tensors_of(qmodel(batch)), tensors_of(model(batch))):
                assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert "channel equalization" in report.format()
    # A pair that leaves out a reader of the producer's output changes the network: refused, not applied silently.
    target = centerpoint_target(model)
    shared = next(p for p in target.equalization_pairs if len(p.consumers) > 1)
    broken = [EqualizationPair(shared.producer, shared.consumers[:1])]
    with pytest.raises(ValueError, match="not all homogeneous"):
        quantize(model, batches, config=config, target=replace(target, equalization_pairs=broken), progress=False)


def test_pairs_feeding_fp32_weight_output_layers_are_balanced_fully_and_stay_exact():
    # The output layers keep FP32 weights and read INT8: the pairs feeding them move every range into those weights
    # (alpha 1: each producer channel ends at the widest one's range), the others keep equalization_alpha.
    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 2)
    config = method_config("sparse-max", equalize_channels=True, equalization_alpha=0.3, keep_float_outputs=True,
                           output_layers_int8_input=True, **FAST)
    qmodel, report = quantize_centerpoint(model, batches, "sparse-max", config, progress=False)
    float_weights = set(report.layout["float_weights"])
    records = {n: r["equalization"] for n, r in report.layers.items() if "equalization" in r}
    feeding = {n: r for n, r in records.items() if set(r["consumers"]) <= float_weights}
    assert feeding and len(feeding) < len(records)
    for name, record in records.items():
        assert record["alpha"] == (1.0 if name in feeding else 0.3), name
    for record in feeding.values():
        assert record["range_spread_after"] == pytest.approx(1.0, abs=1e-4)
    assert report.equalization_max_abs_error < 1e-4


def test_biases_end_on_the_int32_grid_of_integer_kernels():
    # Integer kernels add the bias in int32, in steps of s_x * s_w: the fake-quant model must compute the same.
    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 2)
    qmodel, report = quantize_centerpoint(model, batches[:1], "sparse-max", method_config("sparse-max", **FAST),
                                          progress=False)
    checked = 0
    for name, wrapper in quant_wrappers(qmodel).items():
        if isinstance(wrapper, QuantLayer) and wrapper.layer.bias is not None:
            steps = wrapper.layer.bias / (wrapper.input_quantizer.scale * wrapper.weight_quantizer.scale).reshape(
                wrapper.layer.bias.shape)
            assert torch.allclose(steps, torch.round(steps), atol=1e-3), name
            assert 0 <= report.layers[name]["bias"]["bias_change_max_steps"] <= 0.5 + 1e-6
            checked += 1
    assert checked >= 5 and report.stages["int32_bias"]["layers"] == checked
    plain, _ = quantize_centerpoint(model, batches[:1], "sparse-max",
                                    method_config("sparse-max", int32_bias=False, **FAST), progress=False)
    off_grid = 0
    for name, wrapper in quant_wrappers(plain).items():
        if isinstance(wrapper, QuantLayer) and wrapper.layer.bias is not None:
            step = (wrapper.input_quantizer.scale * wrapper.weight_quantizer.scale).reshape(wrapper.layer.bias.shape)
            steps = wrapper.layer.bias / step
            off_grid += int(((steps - torch.round(steps)).abs() > 0.01).any())
            # the two models differ by at most half a grid step per bias
            rounded = qmodel.get_submodule(name).layer.bias
            assert ((rounded - wrapper.layer.bias).abs() / step).max() <= 0.5 + 1e-4, name
    assert off_grid > 0, "without the stage the biases are off the grid"


# --- bias correction ---------------------------------------------------------------------------------------------


def _layer_output_means(model, wrappers, batches, forward):
    """Per quantized layer: per-channel output means over the frames, as bias correction counts sites."""
    from lidar_ptq_core.quant.bias_correction import _channel_means

    sums, handles = {}, []
    for name, wrapper in wrappers.items():
        if isinstance(wrapper, QuantLayer):
            handles.append(wrapper.register_forward_hook(
                lambda m, a, o, name=name: sums.__setitem__(name, sums.get(name, 0) + _channel_means(m, a, o))))
    with torch.no_grad():
        for batch in batches:
            forward(model, batch)
    for handle in handles:
        handle.remove()
    return {name: total / len(batches) for name, total in sums.items()}


def _mean_shifts(qmodel, uncorrected, batches, forward):
    """Largest per-channel mean output shift of each layer, INT8 against FP32 (the uncorrected model's own biases)."""
    quantized = _layer_output_means(qmodel, quant_wrappers(qmodel), batches, forward)
    with quantizers_disabled(uncorrected):
        reference = _layer_output_means(uncorrected, quant_wrappers(uncorrected), batches, forward)
    return {name: float((quantized[name] - reference[name]).abs().max()) for name in quantized}


def test_bias_correction_removes_the_mean_shift_of_every_layer():
    # A BEV-like input: an empty canvas with a few occupied cells, so every layer after the first sees one background
    # vector almost everywhere, and its rounding error shifts whole channels. Corrected on one frame, every layer's
    # per-channel mean output equals FP32's on that frame (each correction measured after the ones before it).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Conv2d):
                layer.bias.uniform_(0.2, 1.0)

    def frame(seed):
        g = torch.Generator().manual_seed(seed)
        canvas = torch.zeros(1, 4, 32, 32)
        cells = torch.randint(0, 32, (2, 40), generator=g)
        canvas[0, :, cells[0], cells[1]] = torch.randn(4, 40, generator=g) * 3
        return canvas

    batches = [frame(1), frame(2)]
    settings = dict(grid_search=False, tgpl=False, adaround=False, int32_bias=False, sensitivity_frames=0,
                    input_channel_scaling=False)
    plain, _ = quantize(model, batches[:1], config=QuantConfig(**settings), progress=False)
    corrected, report = quantize(model, batches[:1], config=QuantConfig(bias_correction=True, **settings),
                                 progress=False)
    forward = lambda m, b: m(b)  # noqa: E731
    before = _mean_shifts(plain, plain, batches[:1], forward)
    after = _mean_shifts(corrected, plain, batches[:1], forward)
    assert max(before.values()) > 1e-3, before  # quantization did shift the channels
    assert max(after.values()) < 1e-5, after
    assert report.stages["bias_correction"]["layers"] == 4
    assert all(report.layers[n]["bias_correction"]["bias_correction_max"] > 0 for n in before)
    # Over two frames the first layer (nothing before it) gets the mean of its two per-frame shifts exactly.
    two, _ = quantize(model, batches, config=QuantConfig(bias_correction=True, **settings), progress=False)
    first = next(iter(quant_wrappers(two)))
    assert _mean_shifts(two, plain, batches, forward)[first] < 1e-5
    assert not QuantConfig().bias_correction  # off unless a preset or the user turns it on


def test_bias_correction_on_sparse_voxel_layers_and_in_the_fast_preset():
    # The voxel model's spconv layers: means over active sites. The fast preset's whole pipeline on one frame.
    model = tiny_model(TINY_VOXEL)
    batches = calibration_batches(model, 1)
    config = method_config("lidar-ptq-fast", int32_bias=False, stage_check_frames=0)
    qmodel, report = quantize_centerpoint(model, batches, "lidar-ptq-fast", config, progress=False)
    plain, _ = quantize_centerpoint(model, batches, "lidar-ptq-fast", replace(config, bias_correction=False),
                                    progress=False)
    shifts = _mean_shifts(qmodel, plain, batches, lambda m, b: m(b))
    sparse = [n for n in shifts if n.startswith("backbone_3d")]
    assert sparse and all(n in report.layers and "bias_correction" in report.layers[n] for n in sparse)
    assert max(shifts.values()) < 1e-3, shifts
    assert report.config["calibrator"] == "mse" and "grid_search" not in report.stages


def test_every_setting_belongs_to_the_stages_that_depend_on_it():
    # The stage -> settings map is derived in one place (quant/stages.py) and names every QuantConfig field; the
    # stages that use the task hook (TGPL, reconstruction, every held-out check) depend on its settings.
    from dataclasses import fields

    from lidar_ptq_core.quant.stages import HELD_OUT_CHECK_SETTINGS, STAGE_SETTINGS, TASK_HOOK_SETTINGS, build_stages

    named = {s for settings in STAGE_SETTINGS.values() for s in settings} | set(TASK_HOOK_SETTINGS) | set(
        HELD_OUT_CHECK_SETTINGS)
    assert named == {f.name for f in fields(QuantConfig)} - {"method"}
    model = tiny_model(TINY_PILLAR)
    config = method_config("lidar-ptq", bias_correction=True)
    qmodel, _ = quantize_centerpoint(model, calibration_batches(model, 1), "max", method_config("max"), progress=False)
    stages = {s.name: s for s in build_stages(config, centerpoint_target(model), quant_wrappers(qmodel))}
    for name in ("grid_search", "tgpl", "bias_correction"):
        assert set(TASK_HOOK_SETTINGS + HELD_OUT_CHECK_SETTINGS) <= set(stages[name].settings), name
    assert set(TASK_HOOK_SETTINGS) <= set(stages["adaround:dense_head.shared_conv"].settings)
    assert not set(TASK_HOOK_SETTINGS) & set(stages["calibration"].settings + stages["sensitivity"].settings)


def test_tgpl_settings_from_a_yaml_config_and_the_cli_reach_the_task_hook(tmp_path, monkeypatch, capsys):
    import yaml

    from lidar_ptq_core import cli
    from lidar_ptq_core.models.checkpoint import read_checkpoint_metadata
    from lidar_ptq_core.recipes import centerpoint as recipe

    ckpt = save_checkpoint(tiny_model(TINY_PILLAR), tmp_path / "tiny.safetensors")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        random_frame(i, 600).astype(np.float32).tofile(frames / f"{i:06d}.bin")
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"tgpl_score_threshold": 0.05, "tgpl_steps": 2, "grid_search_frames": 1,
                                        "tgpl_frames": 1, "sensitivity_frames": 0}))
    seen = []
    real_targets = recipe.TGPLHook.targets

    def targets(hook, batch, fp_outputs):
        seen.append((hook.score_threshold, hook.top_k))
        return real_targets(hook, batch, fp_outputs)

    monkeypatch.setattr(recipe.TGPLHook, "targets", targets)
    int8 = tmp_path / "int8.safetensors"
    argv = ["quantize", "--checkpoint", str(ckpt), "--calib", str(frames), "--frames", "2", "--method",
            "sparse-grid-tgpl", "--config", str(settings), "--set", "tgpl_top_k=7", "--out", str(int8), "--quiet"]
    assert cli.main(argv) == 0
    assert seen and set(seen) == {(0.05, 7)}
    recorded = json.loads(read_checkpoint_metadata(int8)["quantization"])
    assert (recorded["tgpl_score_threshold"], recorded["tgpl_top_k"], recorded["tgpl_steps"]) == (0.05, 7, 2)
    capsys.readouterr()
    # The same command again resumes from <out>.work and says so.
    assert cli.main(argv) == 0
    assert f"resuming from {tmp_path / 'int8.work'}: every stage done" in capsys.readouterr().out
    # A changed TGPL setting redoes the stages that use the hook, after calibration.
    assert cli.main(argv[:-4] + ["tgpl_top_k=9", "--out", str(int8), "--quiet"]) == 0
    assert f"resuming from {tmp_path / 'int8.work'}: calibration done; starting at grid_search" in (
        capsys.readouterr().out)
    assert seen[-1] == (0.05, 9)
    assert cli.main(argv[:-4] + ["tgpl_topk=9", "--out", str(int8)]) == 2
    assert "unknown keys in quantization" in capsys.readouterr().err
