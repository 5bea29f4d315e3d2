"""The QDQ export quantizes a Concat's inputs, not its output (export/onnx_qdq.py quantize_concat_inputs): the same
numbers, a graph TensorRT's rules accept, and the form OpenVINO computes correctly (test_openvino_backend.py)."""

import numpy as np
import pytest

from lidar_ptq_core.export.concat_pattern import concat_then_quantize_graph, graph_inputs
from lidar_ptq_core.export.onnx_qdq import check_onnx, export_dense_onnx, quantize_concat_inputs
from lidar_ptq_core.export.validate import validate_tensorrt_onnx

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_the_rewrite_moves_the_quantizer_onto_every_concat_input_and_changes_no_number():
    import onnx
    import onnxruntime as ort

    original = concat_then_quantize_graph()
    rewritten = quantize_concat_inputs(original)
    graph = check_onnx(rewritten).graph
    producers = {out: node for node in graph.node for out in node.output}
    (concat,) = [node for node in graph.node if node.op_type == "Concat"]
    assert [producers[t].op_type for t in concat.input] == ["QuantizeLinear"] * 3
    assert {producers[t].input[1] for t in concat.input} == {"cat_scale"}  # one scale for all inputs
    users = [node for node in graph.node if concat.output[0] in node.input]
    assert [u.op_type for u in users] == ["DequantizeLinear"]
    assert not [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == concat.output[0]]
    assert onnx.load_from_string(rewritten).graph.output[0].name == "out"

    feeds = graph_inputs(original)
    before = ort.InferenceSession(original, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    after = ort.InferenceSession(rewritten, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(after, before)  # Q is elementwise: Q(concat(a, b)) == concat(Q(a), Q(b))


def test_a_graph_without_a_quantized_concat_comes_back_unchanged():
    data = quantize_concat_inputs(concat_then_quantize_graph())
    assert quantize_concat_inputs(data) == data


def test_the_tensorrt_rules_accept_the_int8_concat_and_refuse_one_of_mixed_scales():
    import onnx
    from onnx import numpy_helper

    rewritten = quantize_concat_inputs(concat_then_quantize_graph())
    report = validate_tensorrt_onnx(rewritten)
    assert report.quantized and len(report.int8_convs) == 1

    model = onnx.load_from_string(rewritten)  # one Concat input on another grid: a lone Q, refused
    (first_q,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x0_relu"]
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(0.05, np.float32), "other_scale"))
    first_q.input[1] = "other_scale"
    with pytest.raises(ValueError, match="must feed DequantizeLinear nodes only"):
        validate_tensorrt_onnx(model.SerializeToString())


def test_the_exported_model_has_no_quantizer_after_a_concat():
    from lidar_ptq_core.quant import method_config
    from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint

    from test_models import TINY_PILLAR
    from test_quant import FAST, calibration_batches, tiny_model

    model = tiny_model(TINY_PILLAR)
    qmodel, _ = quantize_centerpoint(model, calibration_batches(model, 2), "sparse-grid",
                                     method_config("sparse-grid", **FAST), progress=False)
    data = export_dense_onnx(qmodel)
    graph = check_onnx(data).graph
    producers = {out: node for node in graph.node for out in node.output}
    deblock_concats = [n for n in graph.node if n.op_type == "Concat" and all(
        t in producers and producers[t].op_type == "QuantizeLinear" for t in n.input)]
    assert deblock_concats, "the tiny pillar model's deblocks should meet in a Concat of int8 codes"
    concat_outputs = {n.output[0] for n in graph.node if n.op_type == "Concat"}
    assert not [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in concat_outputs]
    assert validate_tensorrt_onnx(data).quantized
