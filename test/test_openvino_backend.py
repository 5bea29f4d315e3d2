"""The openvino backend (runtime/openvino_backend.py): the bundle's QDQ dense.onnx on OpenVINO's CPU plugin. Tests
that run OpenVINO skip, saying why, where openvino does not import (pip install -r requirements-openvino.txt)."""

import importlib.util
import sys

import numpy as np
import pytest

from lidar_ptq_core.export.concat_pattern import concat_then_quantize_graph, graph_inputs

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino is not installed (pip install -r requirements-openvino.txt)")


def openvino_outputs(data: bytes, feeds: dict) -> np.ndarray:
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(core.read_model(data, b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})
    ordered = {index: feeds[next(n for n in port.get_names() if n in feeds)]
               for index, port in enumerate(compiled.inputs)}
    return compiled(ordered)[compiled.outputs[0]]


@needs_openvino
def test_openvino_computes_the_int8_concat_graph_as_the_onnx_reference_does():
    from onnx import load_from_string
    from onnx.reference import ReferenceEvaluator
    from onnx.version_converter import convert_version

    from lidar_ptq_core.export.onnx_qdq import quantize_concat_inputs

    data = quantize_concat_inputs(concat_then_quantize_graph())
    feeds = graph_inputs(data)
    # onnx's reference evaluator implements QuantizeLinear from opset 19: the same graph, converted.
    reference = ReferenceEvaluator(convert_version(load_from_string(data), 19)).run(None, feeds)[0]
    got = openvino_outputs(data, feeds)
    assert np.abs(got - reference).max() <= 1e-4 * np.abs(reference).max()


def test_asking_for_openvino_where_it_does_not_import_says_how_to_install_it(monkeypatch):
    from lidar_ptq_core.runtime.openvino_backend import OpenVinoUnavailable, import_openvino, openvino_unavailable

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(OpenVinoUnavailable, match="requirements-openvino.txt"):
        import_openvino()
    assert isinstance(openvino_unavailable(), ValueError)  # the CLI prints a ValueError as one line


def test_a_graph_with_a_quantizer_after_a_concat_is_refused():
    from lidar_ptq_core.runtime.openvino_backend import check_concats_quantized_as_codes

    with pytest.raises(ValueError, match="export the bundle again"):
        check_concats_quantized_as_codes(concat_then_quantize_graph())


@needs_openvino
def test_the_shipped_bundle_on_openvino_finds_the_boxes_onnxruntime_finds():
    import torch

    from lidar_ptq_core.agreement import detection_agreement
    from lidar_ptq_core.runtime import Detector
    from lidar_ptq_core.sim import generate_frame, load_sim_config
    from lidar_ptq_core.voxelize import voxelize_clouds

    openvino = Detector.from_bundle("sim_pillar_int8.lptq", backend="openvino", threads=2)
    assert openvino.backend.name == "openvino"
    onnxruntime = Detector.from_bundle("sim_pillar_int8.lptq", backend="onnxruntime", threads=2)
    frames = [generate_frame(load_sim_config("default"), seed).points for seed in (0, 1)]
    reference = [onnxruntime.detect(points) for points in frames]
    got = [openvino.detect(points) for points in frames]
    agreement = detection_agreement(reference, got, openvino.class_names)
    assert agreement["reference_boxes"] > 20
    assert agreement["reference_recall"] >= 0.97 and agreement["other_precision"] >= 0.97, agreement

    model = openvino.model  # head outputs against the fake-quant model on the same BEV map
    with torch.inference_mode():
        batch, _ = voxelize_clouds([openvino.prepare_points(frames[0], "test")], model.config.voxelization,
                                   model.config.num_point_features)
        bev = model.bev_features(batch)
        want = model.dense(bev)
        have = openvino.backend.dense(bev)
    for task_want, task_have in zip(want, have):
        for head, value in task_want.items():
            diff = (task_have[head] - value).abs()
            # INT8 on the same grids: a near-tie may round the other way, which moves a few outputs, no more.
            assert float(diff.median()) <= 1e-4 * max(float(value.abs().max()), 1.0), head
            assert float(diff.max()) <= 0.1 * max(float(value.abs().max()), 1e-3), head


@needs_openvino
def test_lidar_ptq_detect_runs_a_bundle_on_openvino(tmp_path, capsys):
    from lidar_ptq_core import cli
    from lidar_ptq_core.sim import generate_frame, load_sim_config

    frame = tmp_path / "000000.bin"
    generate_frame(load_sim_config("default"), 0).points.astype(np.float32).tofile(frame)
    out = tmp_path / "boxes"
    assert cli.main(["detect", str(frame), "--bundle", "sim_pillar_int8.lptq", "--backend", "openvino",
                     "--out", str(out), "--quiet"]) == 0
    from lidar_ptq_core.boxfile import read_detections

    (box_file,) = out.glob("*.json")
    _, detections = read_detections(box_file)
    assert len(detections) > 5  # a sim frame holds dozens of objects
