"""Is this ONNX graph what TensorRT's explicit quantization expects? Checked here, on machines without TensorRT.

`validate_tensorrt_onnx(data)` runs three checks and returns an `OnnxValidation` report, or raises `ValueError` naming
the node and the rule it breaks:
1. onnx's own checker (full check, shape inference included);
2. polygraphy's inspection of the model (the ONNX loader TensorRT's own tools use; needs only onnx): inputs, outputs,
   layer count. Skipped with a note in the report where polygraphy is not installed (`pip install polygraphy`);
3. our rules for TensorRT's explicit (Q/DQ) quantization, applied to any graph holding Q/DQ nodes:
   - every QuantizeLinear / DequantizeLinear has a constant, positive, finite scale and an int8 zero-point that is 0
     (TensorRT supports only symmetric INT8);
   - every QuantizeLinear feeds only DequantizeLinear nodes, and every DequantizeLinear of an activation is fed by a
     QuantizeLinear (the pairs TensorRT fuses into INT8 layers; a lone Q or DQ is a precision break); a Concat of
     int8 codes may sit between them (Q on every input, one scale, its output read by DequantizeLinear only);
   - every Conv / ConvTranspose is either INT8 on both inputs or FP32 on both: its data input comes from a
     per-tensor DequantizeLinear (one scale), its weight from a DequantizeLinear of a constant with one scale per
     output channel on the right axis (0 for Conv, 1 for ConvTranspose);
   - the graph input has a static shape (the engine is built without optimization profiles).
A graph without Q/DQ nodes is an FP32 graph: checks 1, 2 and the static input only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
CONV_OPS = ("Conv", "ConvTranspose")
MIN_QDQ_OPSET = 13  # per-channel (axis) DequantizeLinear


@dataclass
class OnnxValidation:
    """What validate_tensorrt_onnx found in a graph that passed."""

    opset: int
    inputs: dict[str, list[int]]
    outputs: list[str]
    nodes: int
    quantized: bool  # holds Q/DQ nodes: TensorRT builds it with the INT8 flag, scales from the graph
    int8_convs: list[str] = field(default_factory=list)
    fp32_convs: list[str] = field(default_factory=list)
    qdq_pairs: int = 0
    polygraphy: str | None = None  # polygraphy's summary of the model; None where polygraphy is not installed
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kind = (f"INT8 QDQ graph: {len(self.int8_convs)} INT8 conv layers, {len(self.fp32_convs)} FP32, "
                f"{self.qdq_pairs} Q/DQ pairs" if self.quantized else "FP32 graph (no Q/DQ)")
        inputs = ", ".join(f"{name} {shape}" for name, shape in self.inputs.items())
        checked = "onnx checker, " + ("polygraphy inspection" if self.polygraphy is not None
                                      else "polygraphy not installed") + ", TensorRT Q/DQ rules"
        return (f"{kind}; opset {self.opset}; input {inputs}; {len(self.outputs)} outputs; {self.nodes} nodes "
                f"({checked})")


def _constants(graph) -> dict:
    """Initializers and Constant nodes' values by tensor name."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def _attribute(node, name: str, default):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def polygraphy_summary(model) -> str | None:
    """polygraphy's text description of an ONNX model (layers included), or None where polygraphy is missing."""
    try:
        from polygraphy.backend.onnx import util as onnx_util
    except ImportError:
        return None
    return onnx_util.str_from_onnx(model, show_layers=True)


def _check_qdq_node(node, constants: dict) -> None:
    if len(node.input) < 2 or node.input[1] not in constants:
        raise ValueError(f"{node.op_type} {node.name!r}: its scale is not a constant (TensorRT needs constant scales)")
    scale = constants[node.input[1]]
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise ValueError(f"{node.op_type} {node.name!r}: scale must be positive and finite")
    if len(node.input) > 2 and node.input[2]:
        zero_point = constants.get(node.input[2])
        if zero_point is None:
            raise ValueError(f"{node.op_type} {node.name!r}: zero-point is not a constant")
        if zero_point.dtype != np.int8:
            raise ValueError(f"{node.op_type} {node.name!r}: zero-point is {zero_point.dtype}; TensorRT INT8 needs "
                             "int8 (uint8 means asymmetric quantization, which TensorRT does not support)")
        if zero_point.any():
            raise ValueError(f"{node.op_type} {node.name!r}: zero-point must be 0 for TensorRT (symmetric INT8), "
                             f"got {zero_point.ravel()[:4].tolist()}")


def _check_conv(node, producers: dict, constants: dict) -> bool:
    """True for an INT8 conv, False for an FP32 one; ValueError for anything half-way."""
    data_dq, weight_dq = producers.get(node.input[0]), producers.get(node.input[1])
    data_int8 = data_dq is not None and data_dq.op_type == "DequantizeLinear"
    weight_int8 = weight_dq is not None and weight_dq.op_type == "DequantizeLinear"
    if not data_int8 and not weight_int8:
        return False
    if not weight_int8:
        raise ValueError(f"{node.op_type} {node.name!r}: its input is quantized but its weight "
                         f"{node.input[1]!r} does not come through a DequantizeLinear (TensorRT would run it in "
                         "FP32/FP16 with a precision break)")
    if not data_int8:
        raise ValueError(f"{node.op_type} {node.name!r}: its weight is quantized but its input {node.input[0]!r} has "
                         "no Q/DQ pair")
    data_scale = constants[data_dq.input[1]]
    if data_scale.size != 1:
        raise ValueError(f"{node.op_type} {node.name!r}: input scale must be per tensor, got {data_scale.size} values")
    weight_q = producers.get(weight_dq.input[0])
    if weight_dq.input[0] in constants:  # an int8 weight stored as such
        weight = constants[weight_dq.input[0]]
    elif weight_q is not None and weight_q.op_type == "QuantizeLinear" and weight_q.input[0] in constants:
        weight = constants[weight_q.input[0]]
    else:
        raise ValueError(f"{node.op_type} {node.name!r}: its weight DequantizeLinear is not fed by a constant weight "
                         "(or a QuantizeLinear of one)")
    out_axis = 1 if node.op_type == "ConvTranspose" else 0
    groups = _attribute(node, "group", 1)
    out_channels = weight.shape[out_axis] * (groups if out_axis == 1 else 1)
    scale = constants[weight_dq.input[1]]
    axis = _attribute(weight_dq, "axis", 1)
    if scale.ndim != 1 or scale.size != out_channels or axis % weight.ndim != out_axis:
        raise ValueError(f"{node.op_type} {node.name!r}: weight scales must be per output channel ({out_channels} "
                         f"scales on axis {out_axis}), got {scale.size} on axis {axis}")
    return True


def validate_tensorrt_onnx(data: bytes, name: str = "dense.onnx") -> OnnxValidation:
    """Check ONNX bytes for a TensorRT explicit-quantization build; ValueError (prefixed with `name`) when not."""
    import onnx

    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises several types (DecodeError, ValidationError, InferenceError)
        raise ValueError(f"{name}: not a valid ONNX model: {str(exc).strip().splitlines()[0]}") from exc
    try:
        return _validate(model)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _is_int8_concat(node, producers: dict, consumers: dict, constants: dict) -> bool:
    """A Concat joining int8 codes: every input from a QuantizeLinear of one scale, read by DequantizeLinear only."""
    if node.op_type != "Concat":
        return False
    sources = [producers.get(tensor) for tensor in node.input]
    if not sources or any(s is None or s.op_type != "QuantizeLinear" for s in sources):
        return False
    scales = [constants.get(s.input[1]) for s in sources]
    if any(scale is None or scale.size != 1 or scale != scales[0] for scale in scales):
        return False
    users = consumers.get(node.output[0], [])
    return bool(users) and all(user.op_type == "DequantizeLinear" for user in users)


def _validate(model) -> OnnxValidation:
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    constants = _constants(graph)
    initializers = {init.name for init in graph.initializer}
    inputs = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        if any(d <= 0 for d in dims):
            raise ValueError(f"input {value.name!r} has a dynamic shape {dims}; the engine is built for a static one "
                             "(export the dense part for a fixed BEV size)")
        inputs[value.name] = dims
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    qdq = [node for node in graph.node if node.op_type in QDQ_OPS]
    report = OnnxValidation(opset=opset, inputs=inputs, outputs=[o.name for o in graph.output],
                            nodes=len(graph.node), quantized=bool(qdq))
    report.polygraphy = polygraphy_summary(model)
    if report.polygraphy is None:
        report.notes.append("polygraphy is not installed (pip install polygraphy): its inspection was skipped")
    if not qdq:
        report.fp32_convs = [node.name for node in graph.node if node.op_type in CONV_OPS]
        return report
    if opset < MIN_QDQ_OPSET:
        raise ValueError(f"opset {opset}: TensorRT's per-channel Q/DQ needs opset >= {MIN_QDQ_OPSET}")
    int8_concats = {id(node) for node in graph.node if _is_int8_concat(node, producers, consumers, constants)}
    for node in qdq:
        _check_qdq_node(node, constants)
        if node.op_type == "QuantizeLinear":
            users = consumers.get(node.output[0], [])
            if [id(user) for user in users] in ([c] for c in int8_concats):
                continue  # a Concat of codes: its DequantizeLinear users count as the pairs
            if not users or any(user.op_type != "DequantizeLinear" for user in users):
                raise ValueError(f"QuantizeLinear {node.name!r} must feed DequantizeLinear nodes only, feeds "
                                 f"{[user.op_type for user in users]}")
            report.qdq_pairs += len(users)
        else:
            source = producers.get(node.input[0])
            if source is not None and id(source) in int8_concats:
                continue
            if node.input[0] not in constants and (source is None or source.op_type != "QuantizeLinear"):
                raise ValueError(f"DequantizeLinear {node.name!r} is not fed by a QuantizeLinear (a lone DQ)")
    for node in graph.node:
        if node.op_type in CONV_OPS:
            (report.int8_convs if _check_conv(node, producers, constants) else report.fp32_convs).append(
                node.name)
    return report
