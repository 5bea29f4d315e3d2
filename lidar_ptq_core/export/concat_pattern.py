"""A small ONNX graph of the pattern where the deblocks meet the head: inputs -> ReLU -> Concat -> Q/DQ -> Conv
(per-channel Q/DQ weights, zero-point 0, random weights). The smallest case on which OpenVINO 2026.4 departs from the
QDQ arithmetic (benchmarks/openvino_layers.py) and on which the export's int8 Concat is tested
(test/test_export_qdq_concat.py, test/test_openvino_backend.py)."""

from __future__ import annotations

import numpy as np


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
    """Random inputs for every graph input, by name."""
    import onnx

    rng = np.random.default_rng(seed)
    graph = onnx.load_from_string(data).graph
    return {value.name: rng.normal(0, 2, [d.dim_value for d in value.type.tensor_type.shape.dim]).astype(np.float32)
            for value in graph.input}
