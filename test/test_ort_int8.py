"""onnxruntime's integer graph of a quantized CenterPoint's dense part (tiny models): which kernels onnxruntime runs,
read from its own profile, and how close the numbers stay to the torch fake-quant model."""

import json

import numpy as np
import pytest
import torch

from lidar_ptq_core.export.onnx_ort_int8 import export_dense_ort_int8, int8_layer_report
from lidar_ptq_core.export.onnx_qdq import output_names
from lidar_ptq_core.quant import method_config
from lidar_ptq_core.quant.quantizer import TensorQuantizer
from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint
from lidar_ptq_core.runtime.ort_profile import parse_profile, profile_session

from test_models import TINY_PILLAR
from test_quant import FAST, calibration_batches, tiny_model

pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

FP32_CONV_KERNELS = {"Conv", "FusedConv", "ConvTranspose", "NchwcConv"}


@pytest.fixture(scope="module")
def quantized():
    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 3)
    qmodel, _ = quantize_centerpoint(model, batches[:2], "sparse-grid", method_config("sparse-grid", **FAST),
                                     progress=False)
    # Consumers of one tensor calibrated alike here; give two of them their own grid (smaller: values clip), as
    # learned step sizes do, so a conv output feeds several grids (the next block and its deblock; the branches).
    for name, factor in (("backbone_2d.blocks.1.1", 0.8), ("dense_head.heads_list.0.center.0.0", 0.7)):
        quantizer = qmodel.get_submodule(name).input_quantizer
        quantizer.set_amax(quantizer.amax.detach() * factor)
    bev = qmodel.bev_features(batches[2]).detach()
    qmodel.test_batch = batches[2]
    return qmodel, bev


def test_integer_graph_runs_qlinearconv_and_fp32_conv_only_for_the_output_convs(quantized):
    qmodel, bev = quantized
    report = int8_layer_report(qmodel)
    integer = [name for name, how in report.items() if how.startswith("integer")]
    outputs = [name for name, how in report.items() if how == "fp32 output (network output)"]
    # Every dense layer is INT8 here; only the head's last convs (the network outputs) keep an FP32 conv.
    assert len(integer) + len(outputs) == len(report)
    assert len(outputs) == len(output_names(qmodel))
    assert any("repeated for" in report[name] for name in integer)  # the shared conv feeds several grids
    assert any("deblocks" in name for name in integer)  # ConvTranspose as 1x1 conv + DepthToSpace
    profile = profile_session(export_dense_ort_int8(qmodel), {"bev": bev.numpy()}, runs=2, threads=1)
    assert profile.by_op["QLinearConv"]["calls"] == 2 * len(integer)
    fp32_convs = {node: v for node, v in profile.by_node.items() if v["op"] in FP32_CONV_KERNELS}
    # Node names are the layer names the graph was built with: no FP32 conv is left; the output convs each run as
    # a MatMul (`/gemm`) whose columns Col2Im adds up.
    assert not fp32_convs
    gemms = {node.split("#")[0] for node, v in profile.by_node.items() if v["op"] == "MatMul"}
    assert sorted(gemms) == sorted(n + "/gemm" for n in outputs)
    assert profile.by_op["Col2Im"]["calls"] == 2 * len(outputs)
    assert "QLinearConv" in profile.table()


def _outputs(qmodel, bev):
    with torch.no_grad():
        return [t.numpy() for task in qmodel.dense(bev) for t in task.values()]


def _without_quantizers(qmodel, bev):
    quantizers = [m for m in qmodel.modules() if isinstance(m, TensorQuantizer)]
    for q in quantizers:
        q.enabled = False
    try:
        return _outputs(qmodel, bev)
    finally:
        for q in quantizers:
            q.enabled = True


def test_integer_graph_matches_the_torch_fake_quant_model(quantized):
    import onnxruntime as ort

    qmodel, bev = quantized
    session = ort.InferenceSession(export_dense_ort_int8(qmodel), providers=["CPUExecutionProvider"])
    got = session.run(None, {"bev": bev.numpy()})
    fake_quant = _outputs(qmodel, bev)
    unquantized = _without_quantizers(qmodel, bev)  # same weights and graph, no activation/weight rounding
    assert [o.name for o in session.get_outputs()] == output_names(qmodel)
    for name, ort_int8, fq, fp in zip(output_names(qmodel), got, fake_quant, unquantized):
        assert ort_int8.shape == fq.shape, name
        # Same codes except where a value sits at a rounding tie: onnxruntime sums in int32 and requantizes in FP32
        # (bias rounded to int32 at s_x * s_w), torch sums FP32 products. A flipped code moves its layer's output by
        # one step, which later layers spread. So: an order of magnitude below INT8 rounding's own effect on the
        # outputs, and most values identical to FP32 precision.
        ort_error = np.abs(ort_int8 - fq).mean()
        quantization_error = np.abs(fq - fp).mean()
        assert ort_error <= 0.1 * quantization_error, (name, ort_error, quantization_error)
        assert np.median(np.abs(ort_int8 - fq)) <= 1e-4 * max(np.abs(fq).max(), 1.0), name
        if name.endswith(".hm"):  # heatmap probabilities, what decoding thresholds
            sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
            assert np.abs(sigmoid(ort_int8) - sigmoid(fq)).max() <= 0.02, name


def test_onnxruntime_backend_builds_the_integer_graph_for_an_int8_model(quantized):
    from lidar_ptq_core.runtime.backends import OnnxRuntimeBackend

    qmodel, bev = quantized
    backend = OnnxRuntimeBackend(qmodel, b"not used for an INT8 model")
    assert backend.graph == "ort-int8"
    assert backend.dense(bev)[0]["hm"].shape == _outputs(qmodel, bev)[output_names(qmodel).index("0.hm")].shape
    qdq = OnnxRuntimeBackend(qmodel, graph="given")  # the TensorRT QDQ graph, exported here
    assert qdq.graph == "qdq"
    with pytest.raises(ValueError, match="graph must be one of"):
        OnnxRuntimeBackend(qmodel, graph="tensorrt")


def test_integer_graph_takes_the_pillar_map_as_uint8_codes_scattered_from_quantized_pillars(quantized):
    # Quantizing the pillar features before the scatter is exact: the empty cells hold the code of 0 (128).
    from lidar_ptq_core.export.onnx_ort_int8 import ZERO_POINT, input_code_scale, to_input_codes
    from lidar_ptq_core.runtime.backends import OnnxRuntimeBackend

    qmodel, bev = quantized
    scale = input_code_scale(qmodel)
    assert scale == pytest.approx(float(qmodel.backbone_2d.blocks[0][1].input_quantizer.scale))
    backend = OnnxRuntimeBackend(qmodel)
    assert backend.code_scale == scale
    codes = backend.bev_input(qmodel.test_batch)
    assert codes.dtype == torch.uint8 and codes.shape == bev.shape
    assert torch.equal(codes, to_input_codes(bev, scale))
    assert (codes == ZERO_POINT).float().mean() > 0.5  # mostly empty cells
    # the codes are the model's own input quantization: dequantized, they equal its fake-quantized input
    fake = qmodel.backbone_2d.blocks[0][1].input_quantizer(bev)
    assert torch.allclose((codes.float() - ZERO_POINT) * scale, fake, atol=1e-6)
    from_codes, from_float = backend.dense(codes), backend.dense(bev)
    for head in from_codes[0]:
        assert torch.equal(from_codes[0][head], from_float[0][head])
    graph_input = __import__("onnx").load_from_string(backend.onnx_bytes).graph.input[0]
    assert graph_input.type.tensor_type.elem_type == __import__("onnx").TensorProto.UINT8


def test_integer_graph_keeps_an_fp32_input_when_the_first_conv_is_kept_in_float():
    from lidar_ptq_core.export.onnx_ort_int8 import input_code_scale
    from lidar_ptq_core.runtime.backends import OnnxRuntimeBackend

    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 2)
    config = method_config("max", keep_float=("backbone_2d.blocks.0.1",), **FAST)
    qmodel, _ = quantize_centerpoint(model, batches[:1], "max", config, progress=False)
    assert input_code_scale(qmodel) is None
    with pytest.raises(ValueError, match="cannot be given as codes"):
        export_dense_ort_int8(qmodel, input_codes=True)
    backend = OnnxRuntimeBackend(qmodel)
    assert backend.code_scale is None and backend.bev_input(batches[1]).dtype == torch.float32
    assert backend(batches[1])[0]["hm"].shape == qmodel(batches[1])[0]["hm"].shape


def test_integer_graph_refuses_an_fp32_model():
    with pytest.raises(ValueError, match="needs a quantized model"):
        export_dense_ort_int8(tiny_model(TINY_PILLAR))


def test_parse_profile_sums_kernel_events_per_op_and_node(tmp_path):
    events = [
        {"cat": "Session", "name": "model_run", "dur": 900},
        {"cat": "Node", "name": "conv_a_kernel_time", "dur": 300, "args": {"op_name": "QLinearConv"}},
        {"cat": "Node", "name": "conv_a_fence_before", "dur": 1, "args": {"op_name": "QLinearConv"}},
        {"cat": "Node", "name": "conv_b_kernel_time", "dur": 100, "args": {"op_name": "QLinearConv"}},
        {"cat": "Node", "name": "out_kernel_time", "dur": 200, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv_a_kernel_time", "dur": 500, "args": {"op_name": "QLinearConv"}},
    ]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    profile = parse_profile(path, runs=2)
    assert profile.op_types() == {"QLinearConv", "Conv"}
    assert profile.by_op["QLinearConv"] == {"calls": 3, "ms": 0.9}
    assert profile.by_node["conv_a"] == {"op": "QLinearConv", "calls": 2, "ms": 0.8}
    assert profile.ms_per_run("Conv") == pytest.approx(0.1) and profile.ms_per_run("Gemm") == 0.0


def test_session_options_keep_worker_threads_from_spinning():
    # Spinning workers steal the cores from the torch encoder and decode that run between sessions.
    from lidar_ptq_core.runtime.ort_profile import session_options

    options = session_options(threads=2)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


def test_integer_graph_of_a_model_with_float_output_layers_matches_its_fake_quant_model():
    import onnxruntime as ort

    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 2)
    config = method_config("sparse-max", keep_float_outputs=True, **FAST)
    qmodel, report = quantize_centerpoint(model, batches[:1], "sparse-max", config, progress=False)
    layers = int8_layer_report(qmodel)
    assert sorted(n for n, how in layers.items() if how == "fp32 layer (not quantized)") == sorted(
        report.layout["kept_float"])
    bev = qmodel.bev_features(batches[1]).detach()
    session = ort.InferenceSession(export_dense_ort_int8(qmodel), providers=["CPUExecutionProvider"])
    got = session.run(None, {"bev": bev.numpy()})
    for name, ort_int8, fq in zip(output_names(qmodel), got, _outputs(qmodel, bev)):
        assert np.median(np.abs(ort_int8 - fq)) <= 1e-4 * max(np.abs(fq).max(), 1.0), name


def test_float_output_layers_reading_int8_keep_the_convs_before_them_integer_and_match_fake_quant():
    # Kept wholly in FP32, an output layer needs an FP32 input, so the conv before it computes in FP32 (several times
    # slower); with output_layers_int8_input only its weights are FP32 and every other conv stays a QLinearConv.
    import onnxruntime as ort

    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 2)
    config = method_config("sparse-max", keep_float_outputs=True, output_layers_int8_input=True, **FAST)
    qmodel, report = quantize_centerpoint(model, batches[:1], "sparse-max", config, progress=False)
    assert report.layout["kept_float"] == [] and report.layout["float_weights"]
    layers = int8_layer_report(qmodel)
    float_weight = sorted(n for n, how in layers.items() if how.startswith("int8 input, fp32 weights"))
    assert float_weight == sorted(report.layout["float_weights"])
    assert all(how.startswith("integer") for n, how in layers.items() if n not in float_weight)
    for name in float_weight:  # the FP32 weights themselves, not their INT8 grid
        wrapper = qmodel.get_submodule(name)
        assert torch.equal(wrapper.quantized_weight(), wrapper.layer.weight)
        assert not torch.equal(wrapper.weight_quantizer(wrapper.layer.weight), wrapper.layer.weight)
    bev = qmodel.bev_features(batches[1]).detach()
    graph = export_dense_ort_int8(qmodel)
    profile = profile_session(graph, {"bev": bev.numpy()}, runs=1, threads=1)
    assert not {node for node, v in profile.by_node.items() if v["op"] in FP32_CONV_KERNELS}
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    for name, ort_int8, fq in zip(output_names(qmodel), session.run(None, {"bev": bev.numpy()}),
                                  _outputs(qmodel, bev)):
        assert np.median(np.abs(ort_int8 - fq)) <= 1e-4 * max(np.abs(fq).max(), 1.0), name


def test_output_layers_int8_input_needs_keep_float_outputs():
    model = tiny_model(TINY_PILLAR)
    config = method_config("sparse-max", output_layers_int8_input=True, **FAST)
    with pytest.raises(ValueError, match="keep_float_outputs"):
        quantize_centerpoint(model, calibration_batches(model, 1), "sparse-max", config, progress=False)
