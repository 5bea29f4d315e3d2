"""Export of the dense part of a quantized CenterPoint as TensorRT-style QDQ ONNX (tiny models)."""

import numpy as np
import pytest
import torch

from lidar_ptq_core.export.onnx_qdq import check_onnx, export_dense_onnx, output_names
from lidar_ptq_core.quant import method_config
from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint

from test_models import TINY_PILLAR
from test_quant import FAST, calibration_batches, tiny_model

pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def quantized():
    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 2)
    qmodel, report = quantize_centerpoint(model, batches, "sparse-grid", method_config("sparse-grid", **FAST),
                                          progress=False)
    qmodel.report = report
    return qmodel, batches


def test_dense_part_exports_as_qdq_onnx_following_tensorrt_rules(quantized):
    from onnx import numpy_helper

    qmodel, _ = quantized
    graph = check_onnx(export_dense_onnx(qmodel)).graph
    producers = {out: node for node in graph.node for out in node.output}
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    dense_layers = [m for part in (qmodel.backbone_2d, qmodel.dense_head) for m in part.modules()
                    if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == len(dense_layers)
    for conv in convs:
        data_dq, weight_dq = producers[conv.input[0]], producers[conv.input[1]]
        assert data_dq.op_type == "DequantizeLinear", f"{conv.name}: input not quantized"
        assert weight_dq.op_type == "DequantizeLinear", f"{conv.name}: weight not quantized"
        scale = constants.get(weight_dq.input[1])
        if scale is None:
            scale = numpy_helper.to_array(producers[weight_dq.input[1]].attribute[0].t)
        out_axis = 1 if conv.op_type == "ConvTranspose" else 0
        axis = next((a.i for a in weight_dq.attribute if a.name == "axis"), 1)
        assert scale.ndim == 1 and axis == out_axis, f"{conv.name}: weights not per output channel"
    assert [o.name for o in graph.output] == output_names(qmodel)


def test_onnxruntime_runs_the_qdq_graph_like_the_torch_fake_quant_model(quantized):
    import onnxruntime as ort

    qmodel, batches = quantized
    session = ort.InferenceSession(export_dense_onnx(qmodel), providers=["CPUExecutionProvider"])
    bev = qmodel.bev_features(batches[1]).detach()
    with torch.no_grad():
        reference = [t for task in qmodel.dense(bev) for t in task.values()]
    outputs = session.run(None, {"bev": bev.numpy()})
    for name, got, want in zip(output_names(qmodel), outputs, reference):
        want = want.numpy()
        # Same INT8 grid; accumulation order may flip a rare rounding tie, nothing more.
        assert np.abs(got - want).max() <= 0.03 * max(np.abs(want).max(), 1e-3), name
        assert np.median(np.abs(got - want)) <= 1e-4 * max(np.abs(want).max(), 1.0), name


def test_export_bundle_round_trip_and_backends(quantized, tmp_path, capsys):
    """checkpoint -> lidar-ptq export -> bundle; torch and onnxruntime backends give the checkpoint's detections."""
    from lidar_ptq_core import cli
    from lidar_ptq_core.recipes.centerpoint import save_quantized_checkpoint
    from lidar_ptq_core.runtime import Detector

    from test_models import random_frame

    qmodel, _ = quantized
    checkpoint = save_quantized_checkpoint(qmodel, qmodel.report, tmp_path / "q.safetensors")
    bundle = tmp_path / "q.lptq"
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(bundle)]) == 0
    assert "INT8 sparse-grid" in capsys.readouterr().out
    assert cli.main(["inspect", str(bundle)]) == 0
    assert "dense.onnx" in capsys.readouterr().out
    points = random_frame(5, 800)
    reference = Detector.from_checkpoint(checkpoint).detect(points)
    same = Detector.from_bundle(bundle, backend="torch").detect(points)
    np.testing.assert_array_equal(same.boxes, reference.boxes)
    onnx = Detector.from_bundle(bundle, backend="onnxruntime").detect(points)
    top = np.argsort(-reference.scores)[:20]
    assert np.allclose(np.sort(onnx.scores)[::-1][:20], reference.scores[top], atol=0.02)
    with pytest.raises(ValueError, match="tensorrt"):
        Detector.from_bundle(bundle, backend="tensorrt")
    assert cli.main(["detect", str(tmp_path / "none.bin"), "--bundle", str(bundle)]) == 2
