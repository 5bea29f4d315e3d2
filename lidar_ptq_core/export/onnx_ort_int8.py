"""The dense part of an INT8 CenterPoint as onnxruntime's integer graph (CPU): BEV map in, head outputs out.

The bundle's dense.onnx is TensorRT's QDQ graph (int8, zero-point 0, a Q/DQ pair on every layer input). Run as is,
onnxruntime's CPU provider computes it with FP32 kernels around the Q/DQ pairs: its QDQ fusion needs a
QuantizeLinear right after each Conv, while TensorRT's form puts the ReLU and the next layer's Q there. This module
builds, from the quantized torch model and its own scales (nothing is recalibrated), a graph of the same numbers that
onnxruntime fuses into QLinearConv:

- Activations are uint8 with zero-point 128. A symmetric int8 code q with scale s is the uint8 code q + 128 with the
  same scale: the same grid, the same [-128, 127] range, so no number changes. uint8 activations with int8
  per-channel weights are onnxruntime's fast path on x86.
- Each conv whose output feeds exactly one quantizer is emitted as DequantizeLinear -> Conv -> QuantizeLinear with
  that quantizer's scale (the next layer's input scale): onnxruntime fuses it into one QLinearConv. A ReLU after it
  becomes Clip(q, 128, 255) on the uint8 codes, which is exact: rounding and saturation are monotone and map 0 to
  the zero-point, so Q(relu(y)) = max(Q(y), 128). (onnxruntime only drops a ReLU before Q when the zero-point is
  the type's minimum, i.e. uint8 zp 0, whose range would no longer saturate at 127 like the model's.)
- The ZeroPad2d before a strided conv becomes the conv's own padding (the zero-point is real 0).
- ConvTranspose with kernel == stride (the deblocks) is a 1x1 conv to out * k * k channels followed by
  DepthToSpace (exact), because onnxruntime does not fuse QDQ ConvTranspose on CPU. DepthToSpace and the
  concatenation of the deblocks run on uint8 codes (one shared scale: the next layer's input quantizer).
- A conv whose output feeds several quantizers with different scales (a backbone block's output feeding the next
  block and its deblock; the head's shared conv feeding five branches, each with its own input scale) stays one
  integer conv: its output channels are repeated once per consumer grid s_j, each copy's per-channel weight scales
  and bias multiplied by S / s_j for the one output scale S, so each copy holds round(y / s_j), exactly the codes
  the model makes; a Split hands each consumer its copy. (Requantizing one uint8 output to another grid would round
  twice.) The repeated channels cost MACs: k grids, k times the conv.
- Only the head's last convs, whose FP32 outputs are the network's outputs, compute in FP32: DequantizeLinear on
  their INT8 input, weights that are the INT8 codes times their scales (an integer kernel would round the outputs to
  8 bits; ConvInteger and MatMulInteger, which would not, measured slower here). With their 1-4 output channels
  they run as a MatMul (one SGEMM) into C*k*k rows per pixel followed by Col2Im, not as onnxruntime's k x k FP32
  Conv, which costs as much for 4 output channels as for 16 and reorders its input and output.
  An output layer kept with FP32 weights but an INT8 input (QuantConfig.output_layers_int8_input) runs the same way
  with its FP32 weights, so the conv before it still ends in QuantizeLinear and stays a QLinearConv. (An output layer
  kept wholly in FP32 needs an FP32 input: the conv before it then computes in FP32 too, several times slower.)
  `int8_layer_report` says for each layer which way it runs.

Numbers agree with the torch fake-quant model up to accumulation order and the requantization's own rounding
(onnxruntime rounds the bias to int32 at scale s_x * s_w and requantizes in FP32): a code may differ by one step
where the value sits at a rounding tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..quant.modules import QuantLayer
from ..quant.quantizer import quantize_to_int
from .onnx_qdq import INPUT_NAME, is_dense_layer

OPSET = 18  # Col2Im
ZERO_POINT = 128  # uint8 zero-point: symmetric int8 code q <-> uint8 code q + 128
FP32 = None  # the "form" of a value needed in FP32; a float scale names a uint8 grid


@dataclass
class _Op:
    name: str
    kind: str  # "input", "conv", "concat"
    inputs: list[str]
    layer: nn.Module | None = None
    pad: int = 0  # a ZeroPad2d right before the conv
    relu: bool = False


def _trace(model) -> tuple[list[_Op], list[tuple[str, str]]]:
    """The dense part as a list of ops in execution order, plus (graph output name, op name) pairs, from the model's
    topology (models/topology.py)."""
    from ..models.topology import INPUT, Layer, network_topology

    topology = network_topology(model, is_layer=is_dense_layer)

    def tensor(name: str) -> str:
        return INPUT_NAME if name == INPUT else name

    ops = [_Op(INPUT_NAME, "input", [])]
    for node in topology.nodes:
        if not isinstance(node, Layer):
            ops.append(_Op(node.name, "concat", [tensor(s) for s in node.sources]))
        elif node.norm is not None:
            raise ValueError(f"{node.norm}: unsupported layer BatchNorm2d in the dense part (not folded)")
        else:
            ops.append(_Op(node.name, "conv", [tensor(node.source)], model.get_submodule(node.name), node.pad,
                           node.relu))
    return ops, [(output.name, output.layer) for output in topology.outputs]


def _plan(model):
    """(ops, outputs, wants): wants[op] is the set of forms (FP32 or a uint8 grid's scale) its consumers read."""
    ops, outputs = _trace(model)
    wants: dict[str, set] = {op.name: set() for op in ops}
    for _, name in outputs:
        wants[name].add(FP32)
    for op in reversed(ops):  # consumers come after producers: walk backwards to collect every request
        if op.kind == "conv":
            wants[op.inputs[0]].add(_input_form(op.layer))
        elif op.kind == "concat":
            for src in op.inputs:
                wants[src] |= wants[op.name]
    return ops, outputs, wants


def _input_form(layer: nn.Module):
    """The grid a layer reads its input on: the input quantizer's scale, or FP32 for a float layer."""
    if not isinstance(layer, QuantLayer):
        return FP32
    if not (layer.input_quantizer.enabled and (layer.weight_quantizer.enabled or layer.float_weight)):
        raise ValueError("a quantized layer with a disabled quantizer is not supported by the onnxruntime INT8 graph")
    if layer.input_channel_scale is not None:
        raise ValueError("per-input-channel scaling (first layers) is not supported in the dense part")
    return float(layer.input_quantizer.scale.detach().cpu())


def _conv_attributes(conv: nn.Module, pad: int) -> dict:
    if isinstance(conv, nn.ConvTranspose2d):
        raise AssertionError("transposed convs are rewritten before this point")
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"unsupported conv padding {conv.padding!r} / {conv.padding_mode}")
    ph, pw = conv.padding[0] + pad, conv.padding[1] + pad
    return {"kernel_shape": list(conv.kernel_size), "strides": list(conv.stride), "dilations": list(conv.dilation),
            "group": conv.groups, "pads": [ph, pw, ph, pw]}


def _is_pixel_shuffle_transpose(conv: nn.ConvTranspose2d) -> bool:
    k = conv.kernel_size
    return (k[0] == k[1] == conv.stride[0] == conv.stride[1] and conv.padding == (0, 0)
            and conv.output_padding == (0, 0) and conv.groups == 1 and conv.dilation == (1, 1))


class _Builder:
    def __init__(self):
        self.nodes, self.initializers, self._count = [], [], 0
        self.constants: dict[tuple, str] = {}

    def fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}#{self._count}"

    def constant(self, array: np.ndarray, base: str) -> str:
        from onnx import numpy_helper

        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.constants:
            name = self.fresh(base)
            self.initializers.append(numpy_helper.from_array(array, name))
            self.constants[key] = name
        return self.constants[key]

    def node(self, op: str, inputs: list[str], base: str, **attributes) -> str:
        from onnx import helper

        out = self.fresh(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attributes))
        return out

    def activation_grid(self, scale: float) -> tuple[str, str]:
        return self.constant(np.float32(scale), "act_scale"), self.constant(np.uint8(ZERO_POINT), "act_zp")

    def quantize(self, x: str, scale: float, base: str) -> str:
        return self.node("QuantizeLinear", [x, *self.activation_grid(scale)], f"{base}/q")

    def dequantize(self, q: str, scale: float, base: str) -> str:
        return self.node("DequantizeLinear", [q, *self.activation_grid(scale)], f"{base}/dq")

    def relu_codes(self, q: str, base: str) -> str:
        return self.node("Clip", [q, self.constant(np.uint8(ZERO_POINT), "relu_lo"),
                                  self.constant(np.uint8(255), "relu_hi")], f"{base}/relu")


def _layer_weights(layer: nn.Module):
    """(weight, bias, int8 codes, per-channel weight scales) with the weight as a conv (out, in, kh, kw); codes and
    scales are None for a layer with FP32 weights. A transposed conv with kernel == stride k is turned into its 1x1
    conv to out * k * k channels."""
    conv = layer.layer if isinstance(layer, QuantLayer) else layer
    weight = conv.weight.detach().cpu().float()
    bias = conv.bias.detach().cpu().float() if conv.bias is not None else torch.zeros(
        weight.shape[1] if isinstance(conv, nn.ConvTranspose2d) else weight.shape[0])
    codes = scales = None
    if isinstance(layer, QuantLayer) and not layer.float_weight:
        wq = layer.weight_quantizer
        codes = quantize_to_int(weight, wq.amax.detach().cpu(), wq.qrange, wq.axis).numpy()
        scales = wq.scale.detach().cpu().float().numpy()
    if isinstance(conv, nn.ConvTranspose2d):
        k = conv.kernel_size[0]
        cin, cout = weight.shape[:2]

        def as_1x1(w):  # (in, out, k, k) -> (out * k * k, in, 1, 1): channel c * k * k + a * k + b, DepthToSpace CRD
            return np.ascontiguousarray(np.asarray(w).transpose(1, 2, 3, 0).reshape(cout * k * k, cin, 1, 1))

        weight = torch.from_numpy(as_1x1(weight.numpy()))
        bias = bias.repeat_interleave(k * k)
        if codes is not None:
            codes, scales = as_1x1(codes), np.repeat(scales, k * k)
    return weight.numpy(), bias.numpy(), codes, scales


def dense_part_quantized(model) -> bool:
    """Whether any layer of backbone_2d + dense_head is an INT8 (quantized) layer."""
    return any(isinstance(m, QuantLayer) for part in (model.backbone_2d, model.dense_head) for m in part.modules())


def input_code_scale(model) -> float | None:
    """The scale of the one uint8 grid every consumer of the dense part's input reads it on (the first conv's input
    quantizer), or None when the input is also read in FP32 or on several grids. With a scale, the graph can take
    the BEV map as uint8 codes (`input_codes`), quantized where it is made: for a pillar model, the pillar
    features before the scatter, a few thousand rows instead of the whole map, and a 4x smaller canvas."""
    if not dense_part_quantized(model):
        return None
    return _single_grid(_plan(model)[2][INPUT_NAME])


def _single_grid(forms: set) -> float | None:
    """The scale when a value is read on exactly one uint8 grid (and not in FP32), else None."""
    return next(iter(forms)) if len(forms) == 1 and FP32 not in forms else None


def to_input_codes(x: torch.Tensor, scale: float) -> torch.Tensor:
    """uint8 codes (zero-point 128) of `x` on the grid of `scale`, as the model's input quantizer rounds (half to
    even, clipped to the int8 range [-128, 127])."""
    return (torch.clamp(torch.round(x / scale), -128, 127) + ZERO_POINT).to(torch.uint8)


def export_dense_ort_int8(model, input_codes: bool = False) -> bytes:
    """onnxruntime's integer graph of an INT8 model's dense part (see the module docstring); same input and output
    names and shapes as export_dense_onnx. `input_codes`: the input is the BEV map as uint8 codes on the grid of
    `input_code_scale(model)` (see to_input_codes) instead of FP32."""
    import onnx
    from onnx import TensorProto, helper

    if not dense_part_quantized(model):
        raise ValueError("the onnxruntime INT8 graph needs a quantized model; an FP32 model uses export_dense_onnx")
    ops, outputs, wants = _plan(model)
    code_scale = _single_grid(wants[INPUT_NAME]) if input_codes else None
    if input_codes and code_scale is None:
        raise ValueError("this model's dense input is not read on one uint8 grid, so it cannot be given as codes")
    b = _Builder()
    tensors: dict[tuple[str, object], str] = {}  # (op name, form) -> tensor name

    for op in ops:
        forms = wants[op.name]
        if op.kind == "input" and code_scale is not None:
            tensors[op.name, code_scale] = op.name
        elif op.kind == "input":
            for form in forms:
                tensors[op.name, form] = op.name if form is FP32 else b.quantize(op.name, form, op.name)
        elif op.kind == "concat":
            for form in forms:
                parts = [tensors[src, form] for src in op.inputs]
                tensors[op.name, form] = b.node("Concat", parts, op.name, axis=1)
        else:
            _emit_conv(b, op, forms, tensors)

    graph_outputs = []
    for out_name, op_name in outputs:
        b.nodes.append(helper.make_node("Identity", [tensors[op_name, FP32]], [out_name], name=f"{out_name}/out"))
        layer = next(op for op in ops if op.name == op_name).layer
        channels = (layer.layer if isinstance(layer, QuantLayer) else layer).out_channels
        graph_outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT,
                                                           [1, channels, "head_height", "head_width"]))
    channels, height, width, _ = model.config.bev_input_geometry()
    graph = helper.make_graph(
        b.nodes, "lidar_ptq_dense_ort_int8",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT if code_scale is None else TensorProto.UINT8,
                                       [1, channels, height, width])],
        graph_outputs, b.initializers,
    )
    graph_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                    producer_name="lidar-ptq")
    onnx.checker.check_model(graph_model, full_check=True)
    return graph_model.SerializeToString()


def _emit_conv(b: _Builder, op: _Op, forms: set, tensors: dict) -> None:
    layer = op.layer
    conv = layer.layer if isinstance(layer, QuantLayer) else layer
    in_form = _input_form(layer)
    x = tensors[op.inputs[0], in_form]
    weight, bias, codes, scales = _layer_weights(layer)
    pixel_shuffle = 0
    if isinstance(conv, nn.ConvTranspose2d):
        if not _is_pixel_shuffle_transpose(conv):
            raise ValueError(f"{op.name}: only ConvTranspose2d with kernel == stride (no padding, groups 1) is "
                             "supported")
        pixel_shuffle = conv.kernel_size[0]
        attributes = {"kernel_shape": [1, 1], "strides": [1, 1], "dilations": [1, 1], "group": 1,
                      "pads": [0, 0, 0, 0]}
        if op.pad:
            raise ValueError(f"{op.name}: padding before a transposed conv is not supported")
    else:
        attributes = _conv_attributes(conv, op.pad)
    grids = sorted(f for f in forms if f is not FP32)
    if in_form is not FP32 and FP32 not in forms and codes is not None:
        # Integer output: Q right after the conv, which onnxruntime fuses into QLinearConv; ReLU on the codes. With
        # several consumer grids s_j the conv's output channels are repeated once per grid, the copy for grid s_j
        # with its weight scales and bias multiplied by S / s_j, where S = s_0 is the one output scale: that copy's
        # codes are then round(y / s_j), exactly the model's. Split hands each consumer its copy.
        out_scale = grids[0]
        ratios = [out_scale / g for g in grids]
        codes = np.concatenate([codes] * len(grids))
        scales = np.concatenate([scales.astype(np.float64) * r for r in ratios])
        bias = np.concatenate([bias.astype(np.float64) * r for r in ratios])
        y = b.node("Conv", [b.dequantize(x, in_form, op.name), _weight_dq(b, op.name, codes, scales),
                            b.constant(bias.astype(np.float32), f"{op.name}.bias")], op.name, **attributes)
        q = b.quantize(y, out_scale, op.name)
        if pixel_shuffle > 1:
            q = b.node("DepthToSpace", [q], f"{op.name}/d2s", blocksize=pixel_shuffle, mode="CRD")
        if op.relu:
            q = b.relu_codes(q, op.name)
        if len(grids) == 1:
            tensors[op.name, out_scale] = q
            return
        sizes = b.constant(np.full(len(grids), conv.out_channels, np.int64), "split_sizes")
        from onnx import helper

        parts = [b.fresh(f"{op.name}/grid{j}") for j in range(len(grids))]
        b.nodes.append(helper.make_node("Split", [q, sizes], parts, name=b.fresh(f"{op.name}/split"), axis=1))
        for grid, part in zip(grids, parts):
            tensors[op.name, grid] = part
        return
    # FP32 output (the network outputs, or a float layer): DequantizeLinear -> Conv, what the model computes.
    if in_form is not FP32 and forms == {FP32} and not op.relu and not pixel_shuffle and _output_conv_as_gemm(conv,
                                                                                                          op.pad):
        gemm_weight = weight if codes is None else codes.astype(np.float32) * scales.astype(np.float32).reshape(
            -1, 1, 1, 1)
        y = _output_conv_gemm_col2im(b, op, b.dequantize(x, in_form, op.name), gemm_weight, bias)
        tensors[op.name, FP32] = y
        return
    x_float = x if in_form is FP32 else b.dequantize(x, in_form, op.name)
    if codes is None:
        w_float = b.constant(weight.astype(np.float32), f"{op.name}.weight")
    else:
        w_float = _weight_dq(b, op.name, codes, scales)
    y = b.node("Conv", [x_float, w_float, b.constant(bias.astype(np.float32), f"{op.name}.bias")], op.name,
               **attributes)
    if pixel_shuffle > 1:
        y = b.node("DepthToSpace", [y], f"{op.name}/d2s", blocksize=pixel_shuffle, mode="CRD")
    if op.relu:
        y = b.node("Relu", [y], f"{op.name}/relu")
    for form in forms:
        tensors[op.name, form] = y if form is FP32 else b.quantize(y, form, op.name)


OUTPUT_CONV_MAX_CHANNELS = 16


def _output_conv_as_gemm(conv: nn.Module, pad: int) -> bool:
    """A k x k "same" conv with few output channels, stride 1, no dilation or groups (the head's output convs).
    onnxruntime's FP32 Conv costs about as much for 1-4 output channels as for 16, and needs its input reordered to
    its blocked layout, so these run as a GEMM plus Col2Im (below)."""
    k = conv.kernel_size if isinstance(conv, nn.Conv2d) else (0, 0)
    return (isinstance(conv, nn.Conv2d) and conv.out_channels <= OUTPUT_CONV_MAX_CHANNELS and conv.groups == 1
            and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1) and k[0] == k[1] > 1
            and k[0] % 2 == 1 and pad == 0 and tuple(conv.padding) == ((k[0] - 1) // 2,) * 2)


def _output_conv_gemm_col2im(b: _Builder, op: _Op, x: str, weight: np.ndarray, bias: np.ndarray) -> str:
    """The same k x k conv as one GEMM into C*k*k rows per pixel (every input pixel's contribution
    to each of the k*k output pixels it reaches), then Col2Im, which adds those contributions where they land, plus
    the bias. Exact up to the order of the FP32 sums. Col2Im's block (i, j) of input pixel p lands on output pixel
    p - (i, j) + pad, so the block holds the conv's tap (k-1-i, k-1-j): the kernel flipped. `weight`: the INT8 codes
    times their per-channel scales, as DequantizeLinear would give, or the layer's FP32 weights."""
    weight = np.asarray(weight, np.float32)
    out_channels, in_channels, k, _ = weight.shape
    # (C, Cin, k, k) flipped -> (C * k * k, Cin), row c * k * k + i * k + j (Col2Im's channel order)
    flipped = weight[:, :, ::-1, ::-1].transpose(0, 2, 3, 1).reshape(out_channels * k * k, in_channels)
    # As MatMul on the NCHW map seen as (Cin, H*W): the result is already Col2Im's (C*k*k, H*W) layout, and
    # onnxruntime runs it as one SGEMM without the blocked-layout reorders a 1x1 Conv gets.
    shape = b.node("Shape", [x], f"{op.name}/shape", start=2)  # (H, W) of the input, also the output's
    rows = b.node("Reshape", [x, b.constant(np.array([1, in_channels, -1], np.int64), "gemm_rows")],
                  f"{op.name}/rows")
    columns = b.node("MatMul", [b.constant(np.ascontiguousarray(flipped), f"{op.name}.gemm_weight"), rows],
                     f"{op.name}/gemm")
    pad = (k - 1) // 2
    y = b.node("Col2Im", [columns, shape, b.constant(np.array([k, k], np.int64), "col_block")], f"{op.name}/col2im",
               pads=[pad, pad, pad, pad])
    return b.node("Add", [y, b.constant(bias.astype(np.float32).reshape(1, -1, 1, 1), f"{op.name}.bias")],
                  f"{op.name}/bias")


def _weight_dq(b: _Builder, name: str, codes: np.ndarray, scales: np.ndarray) -> str:
    """Per-output-channel int8 weights, zero-point 0, dequantized for the conv (folded into QLinearConv by
    onnxruntime)."""
    return b.node("DequantizeLinear", [b.constant(codes.astype(np.int8), f"{name}.weight_int8"),
                                       b.constant(scales.astype(np.float32), f"{name}.weight_scale"),
                                       b.constant(np.zeros(len(scales), np.int8), f"{name}.weight_zp")],
                  f"{name}.weight/dq", axis=0)


def int8_layer_report(model) -> dict[str, str]:
    """Per conv of the dense part: 'integer' (fused into QLinearConv) or why it keeps an FP32 conv."""
    ops, outputs, wants = _plan(model)
    network_outputs = {op_name for _, op_name in outputs}
    report = {}
    for op in ops:
        if op.kind != "conv":
            continue
        forms = wants[op.name]
        if _input_form(op.layer) is FP32:
            report[op.name] = "fp32 layer (not quantized)"
        elif getattr(op.layer, "float_weight", False):
            report[op.name] = "int8 input, fp32 weights" + (" (network output)" if op.name in network_outputs else "")
        elif FP32 in forms:
            report[op.name] = ("fp32 output (network output)" if op.name in network_outputs
                               else "fp32 output (feeds an fp32 layer: computed in fp32)")
        elif len(forms) > 1:
            report[op.name] = f"integer, output repeated for {len(forms)} consumer grids"
        else:
            report[op.name] = "integer"
    return report
