"""Output correction (quant/output_correction.py): the output layer's bias absorbs the mean INT8 - FP32 shift at the
task's sites, not the whole map's mean."""

import pytest
import torch
from torch import nn

from lidar_ptq_core.quant import method_config
from lidar_ptq_core.quant.output_correction import correct_outputs, output_shifts
from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint

from test_models import TINY_PILLAR
from test_quant import calibration_batches, tiny_model


class Offset(nn.Module):
    """Adds a fixed per-site pattern: what rounding does to the input of an output layer, here known exactly."""

    def __init__(self, pattern):
        super().__init__()
        self.register_buffer("pattern", pattern)

    def forward(self, x):
        return x + self.pattern


class Sites:
    def __init__(self, mask):
        self.mask = mask

    def output_sites(self, fp_outputs, targets):
        return [self.mask]


def _models():
    torch.manual_seed(0)
    head = nn.Conv2d(2, 3, 1)
    pattern = torch.zeros(1, 2, 4, 5)
    pattern[0, 0, 1, 2] = 1.0  # the one site the task reads
    pattern[0, 0, 3, :] = -5.0  # background, where a whole-map mean would look
    fp32 = nn.Sequential(nn.Identity(), head)
    shifted = nn.Sequential(Offset(pattern), nn.Conv2d(2, 3, 1))
    shifted[1].load_state_dict(head.state_dict())
    return fp32, shifted


def test_the_shift_at_the_task_sites_is_removed_not_the_whole_maps_mean():
    fp32, quantized = _models()
    mask = torch.zeros(1, 4, 5, dtype=torch.bool)
    mask[0, 1, 2] = True
    batches = [torch.randn(1, 2, 4, 5) for _ in range(3)]
    forward = lambda model, batch: model(batch)  # noqa: E731
    references = [(fp32(b).detach(), None) for b in batches]
    hook = Sites(mask)
    (shift, sites), = output_shifts(quantized, batches, forward, hook, references)
    assert sites == 3
    assert torch.allclose(shift.float(), fp32[1].weight[:, 0, 0, 0], atol=1e-6)  # W @ (+1 in channel 0)
    bias_before = quantized[1].bias.detach().clone()
    records = correct_outputs(quantized, ["1"], batches, forward, hook, references)
    assert torch.allclose(quantized[1].bias, bias_before - shift.float(), atol=1e-6)
    assert records["1"]["output_correction_sites"] == 3
    for b in batches:  # at the site, INT8 now gives FP32's value; elsewhere it is left as it was
        assert torch.allclose(quantized(b)[0, :, 1, 2], fp32(b)[0, :, 1, 2], atol=1e-5)
    with pytest.raises(ValueError, match="output layers"):
        correct_outputs(quantized, ["1", "0"], batches, forward, hook, references)
    with pytest.raises(ValueError, match="output_sites"):
        correct_outputs(quantized, ["1"], batches, forward, object(), references)


def test_the_stage_corrects_every_head_of_a_centerpoint_and_says_so():
    model = tiny_model(TINY_PILLAR)
    config = method_config("sparse-max", keep_float_outputs=True, output_correction=True, output_correction_frames=2,
                           tgpl_score_threshold=0.0,  # the tiny random model scores low
                           sensitivity_frames=0)
    _, report = quantize_centerpoint(model, calibration_batches(model, 2), "sparse-max", config, progress=False)
    summary = report.stages["output_correction"]
    assert summary["frames"] == 2 and summary["layers"] >= 1
    assert set(summary["largest"]) <= set(report.layout["kept_float"])
    with pytest.raises(ValueError, match="output_layers"):  # a target that names no outputs
        from lidar_ptq_core.quant import quantize

        quantize(model, calibration_batches(model, 1), "sparse-max", config)
