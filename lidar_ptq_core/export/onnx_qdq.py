"""The dense part of a (quantized) CenterPoint as ONNX: BEV map in, head outputs out.

For an INT8 model the graph follows TensorRT's explicit-quantization form: a QuantizeLinear/DequantizeLinear pair on
every quantized layer input (per tensor) and on every weight (per output channel: axis 0 for Conv, axis 1 for
ConvTranspose), zero-point 0, BN already folded, no Q/DQ on the outputs. FP32 models export as plain FP32 graphs.
The torch exporter (TorchScript, opset 13) turns the quantizers' export mode (torch's fake-quant ops) into Q/DQ.

One rewrite follows the export (`quantize_concat_inputs`): a quantizer right after a Concat (the deblocks' outputs
feeding the head's shared conv) becomes one QuantizeLinear per Concat input, all with that quantizer's scale, so the
Concat joins int8 codes and one DequantizeLinear follows it. Per-tensor quantization acts element by element, so
Q(concat(a, b, c)) = concat(Q(a), Q(b), Q(c)): the same numbers, stated so that no engine has to move the quantizer
across the Concat itself. OpenVINO 2026.4 (CPU) computes Concat -> Q/DQ -> Conv wrongly: the sim pillar model's
head outputs came out up to 2.97 off (about 2 mAP), a Concat of int8 codes runs right (docs/RUNTIME.md, "OpenVINO";
docs/benchmarks/openvino_layers.txt).
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from ..models.topology import network_topology
from ..quant.modules import QuantLayer
from ..quant.quantizer import TensorQuantizer

OPSET = 13
INPUT_NAME = "bev"


def output_names(model) -> list[str]:
    """`<task>.<head>` in the order the head produces them, e.g. 0.hm, 0.center, ..."""
    return [output.name for output in network_topology(model, is_layer=is_dense_layer).outputs]


def is_dense_layer(module: nn.Module) -> bool:
    """A conv of the dense part, quantized (wrapped) or not: output names are asked of both kinds of model."""
    return isinstance(module, (QuantLayer, nn.Conv2d, nn.ConvTranspose2d))


class DenseGraph(nn.Module):
    """backbone_2d + dense_head with a flat tuple of outputs (ONNX has no dicts)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, bev: torch.Tensor):
        return tuple(t for task in self.model.dense(bev) for t in task.values())


@contextmanager
def export_mode(model: nn.Module):
    quantizers = [m for m in model.modules() if isinstance(m, TensorQuantizer)]
    for q in quantizers:
        q.export_mode = True
    try:
        yield
    finally:
        for q in quantizers:
            q.export_mode = False


def export_dense_onnx(model, batch_size: int = 1, int8_concats: bool = True) -> bytes:
    """ONNX bytes of the model's dense part for a (batch_size, C, H, W) BEV input of the model's own geometry.
    `int8_concats` False leaves the exporter's Concat -> QuantizeLinear as it is (to show what OpenVINO makes of it:
    benchmarks/openvino_layers.py)."""
    channels, height, width, _ = model.config.bev_input_geometry()
    example = torch.zeros(batch_size, channels, height, width)
    buffer = io.BytesIO()
    graph = DenseGraph(model).eval()
    with torch.no_grad(), export_mode(model), warnings.catch_warnings():
        # Tracing turns the quantizers' scales into graph constants, which is the intent: no TracerWarning for it.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # Strided slices stay unfolded: the graph is the same, only a folding opportunity is skipped.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1 can be constant folded",
                                category=UserWarning)
        torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=output_names(model), do_constant_folding=True)
    return quantize_concat_inputs(buffer.getvalue()) if int8_concats else buffer.getvalue()


def quantize_concat_inputs(data: bytes) -> bytes:
    """ONNX bytes with every Concat -> QuantizeLinear (the Concat's only consumer) rewritten as one QuantizeLinear
    per Concat input (the same scale and zero-point) -> Concat of the int8 codes; the old quantizer's
    DequantizeLinear nodes read the Concat. Bytes without such a Concat come back unchanged."""
    import onnx

    graph_model = onnx.load_from_string(data)
    graph = graph_model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    outputs = {o.name for o in graph.output}
    rewritten = []  # (concat, its quantizer)
    for node in graph.node:
        users = consumers.get(node.output[0], []) if node.op_type == "Concat" else []
        if len(users) == 1 and users[0].op_type == "QuantizeLinear" and node.output[0] not in outputs \
                and users[0].output[0] not in outputs:
            rewritten.append((node, users[0]))
    if not rewritten:
        return data
    float_outputs = {concat.output[0] for concat, _ in rewritten}
    concat_of = {id(quantizer): concat for concat, quantizer in rewritten}
    moved = {id(concat) for concat, _ in rewritten}
    nodes = []
    for node in graph.node:
        if id(node) in moved:
            continue  # emitted where its quantizer was, after the quantizer's scale constants
        concat = concat_of.get(id(node))
        if concat is None:
            nodes.append(node)
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for index, source in enumerate(list(concat.input)):
            codes = f"{node.output[0]}_input{index}"
            nodes.append(onnx.helper.make_node("QuantizeLinear", [source, *node.input[1:]], [codes],
                                               name=f"{node.name}_input{index}", **attributes))
            concat.input[index] = codes
        concat.output[0] = node.output[0]  # the Concat now makes the codes the DequantizeLinear nodes read
        nodes.append(concat)
    del graph.node[:]
    graph.node.extend(nodes)
    # The Concat's float output no longer exists: its shape annotation (if the exporter wrote one) goes too.
    kept = [v for v in graph.value_info if v.name not in float_outputs]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return graph_model.SerializeToString()


def check_onnx(data: bytes):
    """onnx's own checker, plus the Q/DQ rules TensorRT relies on. Returns the loaded model."""
    import onnx
    from onnx import numpy_helper

    graph_model = onnx.load_from_string(data)
    onnx.checker.check_model(graph_model, full_check=True)
    constants = {init.name: numpy_helper.to_array(init) for init in graph_model.graph.initializer}
    for node in graph_model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero_point = constants.get(node.input[2])
            if zero_point is not None and zero_point.any():
                raise ValueError(f"{node.name}: zero-point must be 0 for TensorRT")
    return graph_model
