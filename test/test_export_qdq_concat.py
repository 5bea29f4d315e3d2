"""The QDQ export quantizes a Concat's inputs, not its output (export/onnx_qdq.py quantize_concat_inputs): the same
numbers, a graph TensorRT's rules accept, and the form OpenVINO computes correctly (test_openvino_backend.py)."""

import numpy as np
import pytest

from lidar_ptq_core.export.onnx_qdq import check_onnx, export_dense_onnx, quantize_concat_inputs
from lidar_ptq_core.export.validate import validate_tensorrt_onnx

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def concat_then_quantize_graph(branches: int = 3, channels: int = 4, scale: float = 0.04, seed: int = 0) -> bytes:
    """Inputs -> ReLU -> Concat -> Q/DQ -> Conv (per-channel Q/DQ weights): the deblocks-to-head pattern."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, initializers = [], []

    def constant(name, value):
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def quantize_dequantize(tensor, tag, scales, axis=None):
        attributes = {} if axis is None else {"axis": axis}
        s = constant(f"{tag}_scale", np.asarray(scales, np.float32))
        z = constant(f"{tag}_zero", np.zeros(np.shape(scales), np.int8))
        nodes.append(helper.make_node("QuantizeLinear", [tensor, s, z], [f"{tag}_q"], name=f"{tag}_Q", **attributes))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", s, z], [f"{tag}_dq"], name=f"{tag}_DQ",
                                      **attributes))
        return f"{tag}_dq"

    inputs = [f"x{b}" for b in range(branches)]
    for name in inputs:
        nodes.append(helper.make_node("Relu", [name], [f"{name}_relu"]))
    nodes.append(helper.make_node("Concat", [f"{name}_relu" for name in inputs], ["cat"], axis=1, name="Concat"))
    data = quantize_dequantize("cat", "cat", scale)
    weight = rng.normal(0, 0.2, (6, channels * branches, 3, 3)).astype(np.float32)
    weight_scales = np.abs(weight).max(axis=(1, 2, 3)) / 127
    weight = quantize_dequantize(constant("w", weight), "w", weight_scales, axis=0)
    nodes.append(helper.make_node("Conv", [data, weight, constant("b", rng.normal(0, 0.5, 6).astype(np.float32))],
                                  ["out"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes, "concat_then_quantize",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, channels, 16, 16]) for name in inputs],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6, 16, 16])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def graph_inputs(data: bytes, seed: int = 1) -> dict:
    import onnx

    rng = np.random.default_rng(seed)
    graph = onnx.load_from_string(data).graph
    return {value.name: rng.normal(0, 2, [d.dim_value for d in value.type.tensor_type.shape.dim]).astype(np.float32)
            for value in graph.input}


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
