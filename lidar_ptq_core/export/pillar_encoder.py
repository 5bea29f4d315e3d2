"""The pillar encoder (PillarVFE: point feature augmentation, the PFN layers, max over each pillar's points) as ONNX,
so that a pillar bundle runs without torch: voxelize (numpy) -> this graph -> scatter (numpy) -> the dense graph.

Inputs (M pillars, dynamic; P = max_points_per_voxel and C = the point features, fixed):
  voxels      (M, P, C) float32, zero padded (lidar_ptq_core.voxelize)
  num_points  (M,) int32
  coords      (M, 4) int32 as (batch, z, y, x)
Output `pillar_features` (M, C_out): FP32 features, or for an INT8 model whose dense graph takes the BEV map as
uint8 codes the codes themselves (zero-point 128, on the first dense conv's input grid), exactly what
runtime/backends.py's OnnxRuntimeBackend.bev_input scatters (export/onnx_ort_int8.to_input_codes). The graph is
traced from the model's own PillarVFE, so the fake-quant Linear turns into QuantizeLinear/DequantizeLinear pairs with
the model's scales (export_mode) and input channel scales stay divisions: no second description of the encoder.
"""

from __future__ import annotations

import io
import warnings

ENCODER_INPUTS = ("voxels", "num_points", "coords")
ENCODER_OUTPUT = "pillar_features"
ENCODER_OPSET = 13


def is_pillar_model(model) -> bool:
    return getattr(model, "backbone_3d", None) is None


def export_pillar_encoder(model, code_scale: float | None = None) -> bytes:
    """ONNX bytes of a pillar model's encoder; `code_scale`: output uint8 codes on that grid (to_input_codes)
    instead of FP32 features."""
    import torch
    from torch import nn

    from .onnx_ort_int8 import to_input_codes
    from .onnx_qdq import export_mode

    if not is_pillar_model(model):
        raise ValueError("only pillar models have a pillar encoder graph; a voxel model's encoder is spconv's")

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.vfe = model.vfe

        def forward(self, voxels, num_points, coords):
            features = self.vfe(voxels, num_points, coords)
            return features if code_scale is None else to_input_codes(features, code_scale)

    vox = model.config.voxelization
    pillars = 3  # any example size: the pillar axis is dynamic
    example = (torch.zeros(pillars, vox.max_points_per_voxel, model.config.num_point_features),
               torch.ones(pillars, dtype=torch.int32), torch.zeros(pillars, 4, dtype=torch.int32))
    buffer = io.BytesIO()
    with torch.no_grad(), export_mode(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # scales become graph constants
        torch.onnx.export(Encoder().eval(), example, buffer, dynamo=False, opset_version=ENCODER_OPSET,
                          input_names=list(ENCODER_INPUTS), output_names=[ENCODER_OUTPUT],
                          dynamic_axes={name: {0: "pillars"} for name in (*ENCODER_INPUTS, ENCODER_OUTPUT)},
                          do_constant_folding=True)
    return buffer.getvalue()
