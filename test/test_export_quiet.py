"""The ONNX export of an INT8 model says nothing to the user about its expected tracing: no TracerWarning (the
quantizers' scales become graph constants on purpose) and no constant-folding note about strided slices. The filters
are local to the export: the same warnings raised elsewhere still show."""

import warnings

import numpy as np
import torch

from lidar_ptq_core.export.onnx_qdq import check_onnx, export_dense_onnx
from lidar_ptq_core.models.centerpoint import build_centerpoint
from lidar_ptq_core.quant import method_config
from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint
from lidar_ptq_core.voxelize import voxelize_clouds

from test_train import tiny_pillar_config

SILENCED = (torch.jit.TracerWarning,)
FOLDING_NOTE = "Constant folding - Only steps=1 can be constant folded"


def test_int8_export_is_quiet_and_the_filters_stay_local():
    torch.manual_seed(0)
    model = build_centerpoint(tiny_pillar_config()).eval()
    points = np.random.default_rng(0).uniform(-20.0, 20.0, (500, 4)).astype(np.float32)
    batch = voxelize_clouds([points], model.config.voxelization, model.config.num_point_features)[0]
    qmodel, _ = quantize_centerpoint(model, [batch], "max", method_config("max"), progress=False)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = export_dense_onnx(qmodel)
        # Outside the export the filters are gone: the same kinds of warning still reach the user.
        warnings.warn("a tracer warning outside the export", torch.jit.TracerWarning, stacklevel=1)
        warnings.warn(f"{FOLDING_NOTE} (outside the export)", UserWarning, stacklevel=1)
    graph = check_onnx(data)
    assert any(node.op_type == "QuantizeLinear" for node in graph.graph.node), "the INT8 graph was exported"
    shown = [str(w.message) for w in caught if issubclass(w.category, SILENCED) or FOLDING_NOTE in str(w.message)]
    assert shown == ["a tracer warning outside the export", f"{FOLDING_NOTE} (outside the export)"]
