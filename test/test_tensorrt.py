"""The TensorRT path without TensorRT: the ONNX it consumes (onnx checker, polygraphy, Q/DQ rules), the engine cache
(with a fake toolkit standing in for TensorRT: these tests check the cache's logic, never an engine), and the one
clear error where tensorrt is not importable (backend, Detector, `lidar-ptq build-engine`)."""

import hashlib
import importlib.util
import warnings

import numpy as np
import pytest

from lidar_ptq_core.export.validate import validate_tensorrt_onnx
from lidar_ptq_core.runtime.tensorrt_backend import (
    BuildOptions,
    EngineCache,
    EngineKey,
    TensorRTUnavailable,
    build_engine,
    pack_engine,
    unpack_engine,
)

pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAVE_POLYGRAPHY = importlib.util.find_spec("polygraphy") is not None
needs_no_tensorrt = pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed: the missing-tensorrt error "
                                                             "cannot happen here")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    """A tiny INT8 pillar model exported as a bundle with `lidar-ptq export`."""
    from lidar_ptq_core import cli
    from lidar_ptq_core.quant import method_config
    from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint, save_quantized_checkpoint

    from test_models import TINY_PILLAR
    from test_quant import FAST, calibration_batches, tiny_model

    model = tiny_model(TINY_PILLAR)
    batches = calibration_batches(model, 2)
    qmodel, report = quantize_centerpoint(model, batches, "sparse-grid", method_config("sparse-grid", **FAST),
                                          progress=False)
    folder = tmp_path_factory.mktemp("trt")
    checkpoint = save_quantized_checkpoint(qmodel, report, folder / "q.safetensors")
    bundle = folder / "q.lptq"
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(bundle)]) == 0
    return bundle


@pytest.fixture(scope="module")
def dense_onnx(int8_bundle):
    from lidar_ptq_core.export.bundle import read_bundle

    return read_bundle(int8_bundle).read_part("dense.onnx")


# -- the ONNX TensorRT consumes -------------------------------------------------------------------------------------
def test_exported_int8_graph_passes_the_tensorrt_rules(dense_onnx):
    report = validate_tensorrt_onnx(dense_onnx)
    assert report.quantized and report.opset == 13
    assert report.inputs == {"bev": [1, 16, 32, 32]}
    assert len(report.int8_convs) > 10 and report.fp32_convs == []
    assert report.qdq_pairs >= len(report.int8_convs)
    assert "INT8 QDQ graph" in report.summary()


@pytest.mark.skipif(not HAVE_POLYGRAPHY, reason="polygraphy is not installed (requirements.txt installs it)")
def test_polygraphy_inspects_the_graph(dense_onnx):
    report = validate_tensorrt_onnx(dense_onnx)
    assert report.polygraphy is not None and report.notes == []
    assert "bev" in report.polygraphy and "Graph Output" in report.polygraphy and "QuantizeLinear" in report.polygraphy


def test_fp32_graph_is_valid_without_qdq():
    from lidar_ptq_core.export.onnx_qdq import export_dense_onnx

    from test_models import TINY_PILLAR
    from test_quant import tiny_model

    report = validate_tensorrt_onnx(export_dense_onnx(tiny_model(TINY_PILLAR)))
    assert not report.quantized and report.int8_convs == [] and len(report.fp32_convs) > 10
    assert BuildOptions().precision(report.quantized) == "fp16"


def _edited(data: bytes, change) -> bytes:
    import onnx

    model = onnx.load_from_string(data)
    change(model.graph)
    return model.SerializeToString()


def _first(graph, op_type, where=lambda node: True):
    return next(node for node in graph.node if node.op_type == op_type and where(node))


def _set_constant(graph, name, array):
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(array, name))
            return
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(array))
            return
    raise KeyError(name)


def _weight_dq(graph):
    producers = {out: node for node in graph.node for out in node.output}
    conv = _first(graph, "Conv")
    return conv, producers[conv.input[1]], producers


def test_nonzero_zero_point_is_rejected(dense_onnx):
    def change(graph):
        node = _first(graph, "QuantizeLinear")
        _set_constant(graph, node.input[2], np.array(3, dtype=np.int8))

    with pytest.raises(ValueError, match="dense.onnx: QuantizeLinear .*zero-point must be 0"):
        validate_tensorrt_onnx(_edited(dense_onnx, change))


def test_missing_weight_dequantize_is_rejected(dense_onnx):
    def change(graph):
        conv, weight_dq, producers = _weight_dq(graph)
        weight = producers[weight_dq.input[0]].input[0]  # the FP32 weight in front of its Q/DQ pair
        conv.input[1] = weight

    with pytest.raises(ValueError, match="input is quantized but its weight .* DequantizeLinear"):
        validate_tensorrt_onnx(_edited(dense_onnx, change))


def test_per_tensor_weight_scale_is_rejected(dense_onnx):
    def change(graph):
        _, weight_dq, producers = _weight_dq(graph)
        weight_q = producers[weight_dq.input[0]]
        for node in (weight_q, weight_dq):
            _set_constant(graph, node.input[1], np.array(0.01, dtype=np.float32))
            _set_constant(graph, node.input[2], np.array(0, dtype=np.int8))
            del node.attribute[:]

    with pytest.raises(ValueError, match="weight scales must be per output channel"):
        validate_tensorrt_onnx(_edited(dense_onnx, change))


def test_lone_quantize_is_rejected(dense_onnx):
    from onnx import helper

    def change(graph):  # Q -> Identity -> DQ: the pair is broken, TensorRT would not fuse it
        _, weight_dq, producers = _weight_dq(graph)
        weight_q = producers[weight_dq.input[0]]
        identity = helper.make_node("Identity", [weight_q.output[0]], ["between_q_and_dq"], name="between")
        graph.node.insert(list(graph.node).index(weight_q) + 1, identity)
        weight_dq.input[0] = "between_q_and_dq"

    with pytest.raises(ValueError, match="must feed DequantizeLinear nodes only"):
        validate_tensorrt_onnx(_edited(dense_onnx, change))


def test_garbage_is_not_onnx():
    with pytest.raises(ValueError, match="model.onnx: not a valid ONNX model"):
        validate_tensorrt_onnx(b"not onnx at all", "model.onnx")


# -- the missing-tensorrt error -------------------------------------------------------------------------------------
@needs_no_tensorrt
def test_backend_without_tensorrt_is_one_clear_error(dense_onnx):
    from lidar_ptq_core.runtime.backends import resolve_backend, tensorrt_unavailable
    from lidar_ptq_core.runtime.tensorrt_backend import TensorRTBackend

    from test_models import TINY_PILLAR
    from test_quant import tiny_model

    with pytest.raises(TensorRTUnavailable, match="needs the tensorrt Python package.*not importable"):
        TensorRTBackend(tiny_model(TINY_PILLAR), dense_onnx)
    assert isinstance(tensorrt_unavailable(), TensorRTUnavailable)
    assert resolve_backend("auto") == "onnxruntime"


@needs_no_tensorrt
def test_detector_from_bundle_tensorrt_without_tensorrt(int8_bundle):
    from lidar_ptq_core.runtime import Detector

    with pytest.raises(ValueError, match="tensorrt Python package.*cannot be installed on these CPU machines"):
        Detector.from_bundle(int8_bundle, backend="tensorrt")
    assert Detector.from_bundle(int8_bundle).backend.name == "onnxruntime"  # auto without tensorrt


@needs_no_tensorrt
def test_build_engine_command_without_tensorrt(int8_bundle, tmp_path, capsys):
    from lidar_ptq_core import cli

    code = cli.main(["build-engine", "--bundle", str(int8_bundle), "--cache-dir", str(tmp_path / "engines")])
    out, err = capsys.readouterr()
    assert code == 2
    assert "dense.onnx: INT8 QDQ graph" in out  # validated before TensorRT is needed
    assert err.startswith("lidar-ptq build-engine: error: backend 'tensorrt' needs the tensorrt Python package")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "engines").exists()


def test_build_engine_check_only_and_bad_input(int8_bundle, tmp_path, capsys):
    from lidar_ptq_core import cli

    assert cli.main(["build-engine", "--bundle", str(int8_bundle), "--check"]) == 0
    assert "INT8 QDQ graph" in capsys.readouterr().out
    assert cli.main(["build-engine", "--bundle", str(tmp_path / "none.lptq")]) == 2
    assert cli.main(["build-engine", "--bundle", str(int8_bundle), "--workspace-mb", "0"]) == 2
    assert "--workspace-mb must be > 0" in capsys.readouterr().err


# -- the engine cache, with a fake toolkit ----------------------------------------------------------------------------
class FakeToolkit:
    """Stands in for TensorRTToolkit: 'engines' are the bytes it 'built', records what it was asked."""

    def __init__(self, version="10.3.0", gpu="Orin (nvgpu)", capability="8.7", refuse=()):
        self.version, self.gpu, self.capability = version, gpu, capability
        self.refuse = set(refuse)  # serialized engines this 'TensorRT' cannot deserialize
        self.builds, self.loads = [], []

    def identity(self):
        return {"tensorrt_version": self.version, "gpu_name": self.gpu, "compute_capability": self.capability}

    def build(self, onnx_bytes, options, quantized):
        self.builds.append((options, quantized))
        return f"engine:{self.version}:{self.gpu}:{options.precision(quantized)}:".encode() + onnx_bytes[:8]

    def deserialize(self, data):
        self.loads.append(data)
        if data in self.refuse:
            return None
        return ("engine", data)


ONNX = b"fake onnx bytes"


def test_cache_builds_once_then_loads(tmp_path):
    toolkit = FakeToolkit()
    cache = EngineCache(toolkit, tmp_path)
    engine, path, status = cache.get(ONNX, BuildOptions(), quantized=True)
    assert status == "built" and len(toolkit.builds) == 1 and path.is_file()
    assert engine == ("engine", b"engine:10.3.0:Orin (nvgpu):int8+fp16:" + ONNX[:8])
    again, path2, status2 = cache.get(ONNX, BuildOptions(), quantized=True)
    assert (again, path2, status2) == (engine, path, "cached") and len(toolkit.builds) == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left
    assert path.name.startswith(f"dense-{hashlib.sha256(ONNX).hexdigest()[:16]}-trt10.3.0-orin-nvgpu-sm87-int8-fp16")


def test_cache_without_a_folder_uses_the_cache_roots_engines(tmp_path, monkeypatch):
    monkeypatch.setenv("LIDAR_PTQ_CACHE", str(tmp_path))
    assert EngineCache(FakeToolkit()).directory == tmp_path / "engines"


def test_key_covers_onnx_tensorrt_gpu_and_precision(tmp_path):
    def key(onnx=ONNX, fp16=True, quantized=True, **toolkit):
        return EngineCache(FakeToolkit(**toolkit), tmp_path).key(onnx, BuildOptions(fp16=fp16), quantized)

    base = key()
    variants = [key(onnx=ONNX + b"!"), key(version="10.4.0"), key(gpu="NVIDIA H100"), key(capability="9.0"),
                key(fp16=False), key(quantized=False)]
    assert len({base.file_name()} | {v.file_name() for v in variants}) == 1 + len(variants)
    assert key(fp16=True).precision == "int8+fp16" and key(fp16=False, quantized=False).precision == "fp32"
    assert key() == base  # the workspace size is not part of it: same engine, built with more or less scratch memory
    assert EngineCache(FakeToolkit(), tmp_path).key(ONNX, BuildOptions(workspace_mb=64), True) == base


def test_other_tensorrt_or_gpu_builds_its_own_engine(tmp_path):
    first = FakeToolkit()
    EngineCache(first, tmp_path).get(ONNX)
    upgraded = FakeToolkit(version="10.4.0")
    _, path, status = EngineCache(upgraded, tmp_path).get(ONNX)
    assert status == "built" and len(upgraded.builds) == 1 and len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign_key", "bad_header"])
def test_unusable_cache_file_is_rebuilt_with_a_warning(tmp_path, damage):
    toolkit = FakeToolkit()
    cache = EngineCache(toolkit, tmp_path)
    _, path, _ = cache.get(ONNX)
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00" * 40)
    elif damage == "truncated":
        path.write_bytes(data[:-3])
    elif damage == "foreign_key":  # a file renamed from another GPU's engine
        other = EngineKey(hashlib.sha256(ONNX).hexdigest(), "10.3.0", "NVIDIA H100", "9.0", "int8+fp16")
        path.write_bytes(pack_engine(other, b"h100 engine"))
    else:
        path.write_bytes(data[:8] + b"\xff\xff\x00\x00" + data[12:])
    with pytest.warns(RuntimeWarning, match="rebuilding the TensorRT engine: the cached one is unusable"):
        engine, path2, status = cache.get(ONNX)
    assert status == "rebuilt" and path2 == path and len(toolkit.builds) == 2
    assert unpack_engine(path.read_bytes(), cache.key(ONNX, BuildOptions(), True)) == engine[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get(ONNX)[2] == "cached"


def test_engine_tensorrt_refuses_to_deserialize_is_rebuilt(tmp_path):
    toolkit = FakeToolkit()
    cache = EngineCache(toolkit, tmp_path)
    _, path, _ = cache.get(ONNX)
    key = cache.key(ONNX, BuildOptions(), True)
    stale = unpack_engine(path.read_bytes(), key)
    toolkit.refuse.add(stale)  # e.g. the driver changed under the same TensorRT version
    toolkit.build = lambda onnx, options, quantized: b"fresh engine"
    with pytest.warns(RuntimeWarning, match="could not deserialize"):
        engine, _, status = cache.get(ONNX)
    assert status == "rebuilt" and engine == ("engine", b"fresh engine")


def test_force_rebuilds_and_failed_build_keeps_the_old_file(tmp_path):
    toolkit = FakeToolkit()
    cache = EngineCache(toolkit, tmp_path)
    _, path, _ = cache.get(ONNX)
    before = path.read_bytes()
    assert cache.get(ONNX, force=True)[2] == "rebuilt" and len(toolkit.builds) == 2

    def fail(*args):
        raise RuntimeError("builder ran out of memory")

    toolkit.build = fail
    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get(ONNX, force=True)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_build_engine_validates_before_building(dense_onnx, tmp_path):
    toolkit = FakeToolkit()
    engine, path, status, validation = build_engine(dense_onnx, tmp_path, BuildOptions(fp16=False), toolkit=toolkit)
    assert status == "built" and validation.quantized and toolkit.builds == [(BuildOptions(fp16=False), True)]
    assert path.name.endswith("-int8-fp32.engine")
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        build_engine(b"junk", tmp_path, toolkit=toolkit)
    assert len(toolkit.builds) == 1
