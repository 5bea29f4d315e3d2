"""The bundle is the engine (issue 19): a bundle ships every graph a backend runs, loading one builds none, a pillar
bundle runs with numpy + onnxruntime where torch cannot be imported, and export checks the shipped graphs against
the torch model (parity), refusing a bundle whose graphs disagree."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lidar_ptq_core import cli
from lidar_ptq_core.export.bundle import read_bundle
from lidar_ptq_core.runtime import Detector
from lidar_ptq_core.runtime.detector import bundled_bundle

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO = Path(__file__).resolve().parents[1]
SHIPPED = "sim_pillar_int8.lptq"
# Makes `import torch` / `import spconv` fail in a child process, as on a robot with only the runtime installed.
NO_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "spconv", "torchvision"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None
    sys.meta_path.insert(0, NoTorch())
""")


def sim_frame():
    from lidar_ptq_core.sim import generate_frame, load_sim_config

    return generate_frame(load_sim_config("default"), 0).points


def run_without_torch(code: str) -> dict:
    """Run `code` in a child python where torch cannot be imported; it prints one JSON line last."""
    child = subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code)], cwd=REPO, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def test_the_shipped_bundle_holds_every_graph_its_backends_run():
    bundle = read_bundle(bundled_bundle(SHIPPED))
    runtime = bundle.manifest.runtime
    assert runtime["onnxruntime"] == {"encoder": "pillar_encoder.onnx", "dense": "dense_ort_int8.onnx"}
    assert runtime["tensorrt"]["dense"] == "dense.onnx"
    assert runtime["bev"]["dtype"] == "uint8" and runtime["bev"]["background"] == 128 and runtime["bev"]["scale"] > 0
    roles = {name: part["role"] for name, part in bundle.manifest.parts.items()}
    assert roles == {"model.safetensors": "checkpoint", "dense.onnx": "dense-qdq",
                     "dense_ort_int8.onnx": "dense-ort-int8", "pillar_encoder.onnx": "pillar-encoder"}
    parity = bundle.manifest.parity
    assert parity["checked"] and parity["passed"] and parity["frames"] == 4 and not parity["failures"]
    # Its output layers are FP32, so auto runs it on OpenVINO on the CPU, and export checked that engine too.
    assert runtime["cpu"]["auto"] == "openvino"
    assert set(parity["graphs"]) == {"pillar_encoder.onnx", "dense_ort_int8.onnx", "dense.onnx",
                                     "dense.onnx on openvino"}
    assert parity["boxes"]["openvino"]["reference_recall"] >= 0.95
    assert all(out["error"] <= parity["thresholds"]["max_error"] for graph in parity["graphs"].values()
               for out in graph.values())
    assert parity["boxes"]["onnxruntime"]["reference_recall"] >= 0.95


def test_loading_a_bundle_builds_no_graph(monkeypatch):
    """Every graph builder raises: the bundle still loads on onnxruntime and detects like the torch model."""
    from lidar_ptq_core.export import onnx_ort_int8, onnx_qdq, pillar_encoder

    def refuse(*args, **kwargs):
        raise AssertionError("a graph was built while loading a bundle")

    for module, name in ((onnx_ort_int8, "export_dense_ort_int8"), (onnx_qdq, "export_dense_onnx"),
                         (pillar_encoder, "export_pillar_encoder")):
        monkeypatch.setattr(module, name, refuse)
    detector = Detector.from_bundle(bundled_bundle(SHIPPED), "onnxruntime", threads=1)
    assert detector.backend.name == "onnxruntime" and detector.model is None
    points = sim_frame()
    got = detector.detect(points)
    want = Detector.from_checkpoint("sim_pillar_int8").detect(points)
    assert_same_boxes(got, want)


def assert_same_boxes(got, want, min_score=0.3):
    """The confident boxes agree one to one: same classes, centres within 5 cm, scores within 0.02."""
    got, want = got.select(got.scores >= min_score), want.select(want.scores >= min_score)
    assert len(want) > 5, "a sim frame has objects"
    assert len(got) == len(want)
    order_got, order_want = np.argsort(-got.scores, kind="stable"), np.argsort(-want.scores, kind="stable")
    np.testing.assert_array_equal(got.labels[order_got], want.labels[order_want])
    np.testing.assert_allclose(got.boxes[order_got, :6], want.boxes[order_want, :6], atol=0.05)
    np.testing.assert_allclose(got.scores[order_got], want.scores[order_want], atol=0.02)


def test_a_pillar_bundle_runs_where_torch_cannot_be_imported():
    """A child process that cannot import torch or spconv loads the shipped bundle, detects on a sim frame and gets
    the boxes of the torch fake-quant model in this process."""
    result = run_without_torch(f"""
        import json, sys
        from lidar_ptq_core.runtime import Detector
        from lidar_ptq_core.sim import generate_frame, load_sim_config
        try:
            import torch
            blocked = False
        except ImportError:
            blocked = True
        detector = Detector.load({SHIPPED!r}, "auto", threads=1)
        found = detector.detect(generate_frame(load_sim_config("default"), 0).points)
        print(json.dumps({{"blocked": blocked, "torch_loaded": "torch" in sys.modules, "backend": detector.backend.name,
                          "boxes": found.boxes.tolist(), "scores": found.scores.tolist(),
                          "labels": found.labels.tolist()}}))
    """)
    assert result["blocked"] and not result["torch_loaded"] and result["backend"] == "onnxruntime"
    from lidar_ptq_core.detections import Detections

    want = Detector.from_checkpoint("sim_pillar_int8").detect(sim_frame())
    got = Detections(np.array(result["boxes"], np.float32).reshape(-1, 7), np.array(result["scores"], np.float32),
                     np.array(result["labels"], np.int64), want.class_names)
    assert_same_boxes(got, want)


def test_the_detector_node_runs_the_shipped_bundle_where_torch_cannot_be_imported():
    """The node with its shipped defaults (the INT8 bundle on 'auto'; num_threads set, which once meant torch's)
    starts and answers a cloud without torch."""
    pytest.importorskip("rclpy")
    result = run_without_torch("""
        import json, sys
        import rclpy
        from rclpy.parameter import Parameter
        from lidar_ptq_core.pointcloud import PointCloud
        from lidar_ptq_core.sim import generate_frame, load_sim_config
        from lidar_ptq_ros.conversions import pointcloud_to_msg
        from lidar_ptq_ros.detector_node import DetectorNode
        from rclpy.serialization import deserialize_message
        from std_msgs.msg import Header
        from vision_msgs.msg import Detection3DArray

        context = rclpy.Context()
        rclpy.init(context=context)
        node = DetectorNode(context=context, parameter_overrides=[Parameter("score_threshold", value=0.3),
                                                                  Parameter("num_threads", value=1)])
        published = []
        # keep what the node publishes (the serialized Detection3DArray), without a subscriber
        node._detections_pub.publish = lambda data: published.append(deserialize_message(data, Detection3DArray))
        try:
            points = generate_frame(load_sim_config("default"), 0).points[:, :4]
            node._process(pointcloud_to_msg(PointCloud(points, ("x", "y", "z", "intensity")),
                                            Header(frame_id="lidar")))
        finally:
            node.destroy_node()
            rclpy.shutdown(context=context)
        print(json.dumps({"torch_loaded": "torch" in sys.modules, "backend": node.detector.backend.name,
                          "detections": len(published[0].detections),
                          "classes": sorted({d.results[0].hypothesis.class_id for d in published[0].detections})}))
    """)
    assert not result["torch_loaded"] and result["backend"] == "onnxruntime"
    want = Detector.from_checkpoint("sim_pillar_int8").detect(sim_frame())
    assert result["detections"] == int((want.scores >= 0.3).sum()) > 5 and "Car" in result["classes"]


# -- parity at export ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_int8_checkpoint(tmp_path_factory):
    from lidar_ptq_core.quant import method_config
    from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint, save_quantized_checkpoint

    from test_models import TINY_PILLAR
    from test_quant import FAST, calibration_batches, tiny_model

    model = tiny_model(TINY_PILLAR)
    qmodel, report = quantize_centerpoint(model, calibration_batches(model, 2), "sparse-grid",
                                          method_config("sparse-grid", **FAST), progress=False)
    return save_quantized_checkpoint(qmodel, report, tmp_path_factory.mktemp("tiny") / "tiny_int8.safetensors")


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory):
    """Three random frames as KITTI .bin files: a --parity-source folder."""
    from test_models import random_frame

    folder = tmp_path_factory.mktemp("frames")
    for seed in range(3):
        random_frame(seed + 10, 800).tofile(folder / f"{seed:06d}.bin")
    return folder


def export_args(checkpoint, out, frames, *extra):
    return ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--parity-frames", "3",
            "--parity-source", str(frames), *extra]


def test_export_records_parity_and_inspect_shows_it(tiny_int8_checkpoint, frame_folder, tmp_path, capsys):
    out = tmp_path / "tiny.lptq"
    assert cli.main(export_args(tiny_int8_checkpoint, out, frame_folder)) == 0
    parity = read_bundle(out).manifest.parity
    assert parity["passed"] and parity["frames"] == 3 and "3 of 3 files" in parity["source"]
    assert parity["graphs"]["pillar_encoder.onnx"]["pillar_features"]["max_abs"] <= 1  # codes: one step at most
    capsys.readouterr()
    assert cli.main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "parity        passed on 3 of 3 files" in shown
    assert "  dense_ort_int8.onnx: 10 outputs, worst " in shown  # two tasks of five heads
    assert "  pillar_encoder.onnx: 1 outputs" in shown
    assert ("runtime       onnxruntime: pillar_encoder.onnx -> scatter (numpy) -> dense_ort_int8.onnx; "
            "tensorrt: encoder in torch -> dense.onnx; BEV map uint8") in shown


def corrupt_first_weight_scale(graph: bytes) -> bytes:
    """The integer graph with its first conv's weight scales tripled: a plausible export bug."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(graph)
    for index, init in enumerate(model.graph.initializer):
        if ".weight_scale#" in init.name:  # the first conv's per-channel weight scales
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3, init.name))
            return model.SerializeToString()
    raise AssertionError("no weight scale in the integer graph")


def test_export_refuses_a_bundle_whose_graph_disagrees(tiny_int8_checkpoint, frame_folder, tmp_path, monkeypatch,
                                                       capsys):
    from lidar_ptq_core.export import onnx_ort_int8

    real = onnx_ort_int8.export_dense_ort_int8
    monkeypatch.setattr(onnx_ort_int8, "export_dense_ort_int8",
                        lambda *args, **kwargs: corrupt_first_weight_scale(real(*args, **kwargs)))
    out = tmp_path / "bad.lptq"
    assert cli.main(export_args(tiny_int8_checkpoint, out, frame_folder)) == 2
    error = capsys.readouterr().err
    assert error.startswith("lidar-ptq export: error: the bundle's graphs disagree with the torch model, bundle not "
                            "written: dense_ort_int8.onnx output 0.")
    assert error.count("\n") == 1 and not out.exists()
    assert list(tmp_path.iterdir()) == [], "the draft checked for parity is gone"
    # The thresholds are flags: loosened, the same graph is written, and its parity says what it measured.
    assert cli.main(export_args(tiny_int8_checkpoint, out, frame_folder, "--parity-max-error", "1e9",
                                "--parity-min-agreement", "0")) == 0
    parity = read_bundle(out).manifest.parity
    assert parity["passed"] and max(o["error"] for o in parity["graphs"]["dense_ort_int8.onnx"].values()) > 0.02


def test_parity_frames_zero_records_no_check(tiny_int8_checkpoint, tmp_path, capsys):
    out = tmp_path / "unchecked.lptq"
    assert cli.main(["export", "--checkpoint", str(tiny_int8_checkpoint), "--out", str(out),
                     "--parity-frames", "0"]) == 0
    assert read_bundle(out).manifest.parity == {"checked": False}
    capsys.readouterr()
    assert cli.main(["inspect", str(out)]) == 0
    assert "parity        not checked (exported with --parity-frames 0)" in capsys.readouterr().out
    assert cli.main(["export", "--checkpoint", str(tiny_int8_checkpoint), "--out", str(out),
                     "--parity-frames", "-1"]) == 2
    assert capsys.readouterr().err == "lidar-ptq export: error: --parity-frames must be >= 0, got -1\n"


def test_a_bundle_whose_encoder_is_not_shipped_says_it_needs_torch_and_spconv(tmp_path):
    """A voxel bundle's sparse encoder is no graph (its runtime section names none): without torch, loading it on
    onnxruntime is one clear error. Made here from the shipped bundle with that entry emptied."""
    from lidar_ptq_core.export.bundle import write_bundle

    shipped = read_bundle(bundled_bundle(SHIPPED))
    manifest = shipped.manifest
    manifest.runtime["onnxruntime"]["encoder"] = None
    path = write_bundle(tmp_path / "no_encoder.lptq", manifest, shipped.read_parts())
    result = run_without_torch(f"""
        import json
        from lidar_ptq_core.runtime import Detector
        try:
            Detector.from_bundle({str(path)!r}, "onnxruntime")
            print(json.dumps({{"error": None}}))
        except ValueError as exc:
            print(json.dumps({{"error": str(exc)}}))
    """)
    assert result["error"].startswith(f"{path}: a voxel bundle runs its sparse encoder in torch + spconv, which do "
                                      "not import here (No module named ")


def test_a_bundle_from_before_shipped_graphs_asks_to_be_exported_again(tmp_path):
    from lidar_ptq_core.config_files import resolve_config
    from lidar_ptq_core.export.bundle import BundleManifest, write_bundle
    from lidar_ptq_core.models.config import load_model_config

    manifest = BundleManifest.for_model(load_model_config(resolve_config("sim_pillar", "models")))
    manifest.format_version = 1
    path = write_bundle(tmp_path / "old.lptq", manifest, {"dense.onnx": b"graph"})
    with pytest.raises(ValueError, match=r"old\.lptq: this bundle ships no runtime graphs \(written by an older "
                                         r"lidar-ptq\); export it again with `lidar-ptq export`"):
        Detector.from_bundle(path, "onnxruntime")


# -- the CPU engine auto picks ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_float_outputs_checkpoint(tmp_path_factory):
    """Output layers kept in FP32: onnxruntime's integer graph must compute the convs before them in FP32."""
    from lidar_ptq_core.quant import method_config
    from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint, save_quantized_checkpoint

    from test_models import TINY_PILLAR
    from test_quant import FAST, calibration_batches, tiny_model

    model = tiny_model(TINY_PILLAR)
    config = method_config("sparse-max", keep_float_outputs=True, **FAST)
    qmodel, report = quantize_centerpoint(model, calibration_batches(model, 2), "sparse-max", config, progress=False)
    return save_quantized_checkpoint(qmodel, report, tmp_path_factory.mktemp("tinyf") / "tiny_float_out.safetensors")


def test_auto_runs_a_bundle_with_fp32_output_layers_on_openvino_checked_at_export(
        tiny_float_outputs_checkpoint, tiny_int8_checkpoint, frame_folder, tmp_path):
    pytest.importorskip("openvino")
    out = tmp_path / "float_out.lptq"
    assert cli.main(export_args(tiny_float_outputs_checkpoint, out, frame_folder)) == 0
    manifest = read_bundle(out).manifest
    assert manifest.runtime["cpu"]["auto"] == "openvino" and "feed FP32 layers" in manifest.runtime["cpu"]["why"]
    # export checked the engine auto will run: its boxes and its outputs, beside onnxruntime's
    assert manifest.parity["passed"] and set(manifest.parity["boxes"]) == {"onnxruntime", "openvino"}
    assert "dense.onnx on openvino" in manifest.parity["graphs"]
    assert Detector.from_bundle(out, "auto", threads=1).backend.name == "openvino"
    assert Detector.from_bundle(out, "onnxruntime", threads=1).backend.name == "onnxruntime"  # asked for: as asked
    every_int8 = tmp_path / "int8.lptq"  # every conv integer in onnxruntime: auto stays there
    assert cli.main(export_args(tiny_int8_checkpoint, every_int8, frame_folder)) == 0
    assert read_bundle(every_int8).manifest.runtime["cpu"]["auto"] == "onnxruntime"
    assert Detector.from_bundle(every_int8, "auto", threads=1).backend.name == "onnxruntime"


def test_a_manifest_naming_an_unknown_cpu_engine_is_refused(tiny_int8_checkpoint, tmp_path):
    from lidar_ptq_core.export.bundle import write_bundle

    bundle = read_bundle(bundled_bundle(SHIPPED))
    manifest = bundle.manifest
    manifest.runtime = {**manifest.runtime, "cpu": {"auto": "cuda-magic"}}
    path = write_bundle(tmp_path / "odd.lptq", manifest, bundle.read_parts())
    with pytest.raises(ValueError, match="runtime.cpu.auto must be one of"):
        Detector.from_bundle(path, "auto")


def test_openvino_failing_parity_leaves_auto_on_onnxruntime_and_the_bundle_written(
        tiny_float_outputs_checkpoint, frame_folder, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from lidar_ptq_core.runtime.openvino_backend import OpenVinoBackend

    real_dense = OpenVinoBackend.dense

    def wrong(self, bev):  # an engine that computes wrongly: every output doubled
        return [{head: 2 * value for head, value in task.items()} for task in real_dense(self, bev)]

    monkeypatch.setattr(OpenVinoBackend, "dense", wrong)
    out = tmp_path / "refused_openvino.lptq"
    assert cli.main(export_args(tiny_float_outputs_checkpoint, out, frame_folder)) == 0
    manifest = read_bundle(out).manifest
    assert manifest.runtime["cpu"]["auto"] == "onnxruntime"
    assert manifest.runtime["cpu"]["why"].startswith("OpenVINO failed the parity check at export")
    assert manifest.parity["passed"] and manifest.parity["openvino_refused"]
    assert Detector.from_bundle(out, "auto", threads=1).backend.name == "onnxruntime"
