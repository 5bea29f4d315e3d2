"""`lidar-ptq bench` and lidar_ptq_core/bench.py on tiny models and one or two frames: what it runs and writes.
No assertion here is about speed (times depend on the machine and its load), only that times exist and are sane."""

import json

import numpy as np
import pytest
import yaml

from lidar_ptq_core import bench, cli
from lidar_ptq_core.detections import GroundTruth

from test_models import TINY_PILLAR, random_frame
from test_quant import tiny_model

pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    for seed in range(2):
        random_frame(seed, 800).tofile(folder / f"{seed:06d}.bin")
    return folder


@pytest.fixture(scope="module")
def fp32_checkpoint(tmp_path_factory):
    from lidar_ptq_core.models.checkpoint import save_checkpoint

    return save_checkpoint(tiny_model(TINY_PILLAR), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def _check_times(ms: dict, rows):
    assert list(ms) == list(rows)
    for key in rows:
        assert set(ms[key]) == set(bench.COLUMNS)
        for column, stats in ms[key].items():
            assert stats["median"] > 0 and stats["p90"] >= stats["median"] * 0.999, (key, column)
            assert stats["n"] >= 1


def test_bench_command_runs_every_row_on_a_folder(tmp_path, frames_dir, fp32_checkpoint, capsys):
    """A folder source (no ground truth): all seven rows, INT8 quantized here (no bundled <name>_int8 for a path),
    the peer calibrated on the folder; .txt and .json written with the rows, the stage keys, medians and p90."""
    stem = tmp_path / "out" / "speed"
    args = ["bench", "--fp32", str(fp32_checkpoint), "--source", str(frames_dir), "--frames", "2", "--repeats", "1",
            "--threads", "1", "--calib", str(frames_dir), "--calib-frames", "2", "--profile-runs", "1", "--out",
            str(stem), "--quiet"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    text = (tmp_path / "out" / "speed.txt").read_text()
    assert text in out
    for label in bench.ROWS.values():
        assert label in text
    assert "median (p90)" in text and "no mAP" in text and "quantize_static peer" in text
    assert "onnxruntime kernels, int8 ort integer (ours)" in text and "QLinearConv" in text
    result = json.loads((tmp_path / "out" / "speed.json").read_text())
    assert list(result["rows"]) == list(bench.ROWS) and result["stages"] == list(bench.COLUMNS)
    assert result["frames"] == 2 and result["repeats"] == 1 and result["accuracy"] is None
    _check_times(result["ms"], bench.ROWS)
    assert result["agreement_reference"] == "fp32-torch"
    assert set(result["agreement"]) == {"int8-torch", "int8-ort-qdq", "int8-ort", "int8-openvino",
                                        "ort-quantize-static"}
    assert result["agreement"]["int8-ort"]["frames"] == 2
    assert 0 <= result["output_difference"]["hm_prob_max_abs"] < 0.5
    assert set(result["kernels"]) == {"fp32-ort", "int8-ort-qdq", "int8-ort", "ort-quantize-static"}
    assert set(result["targets"]) >= {"dense_speedup_vs_fastest_fp32", "end_to_end_speedup_vs_fp32_torch"}
    # Each INT8 engine gets its speed-ups against the same FP32 rows of the same run.
    assert set(result["engine_speedups"]) == {"int8-ort", "int8-openvino"}
    assert result["engine_speedups"]["int8-ort"] == result["targets"]
    assert "int8 openvino QDQ graph (median): dense part" in text


def test_bench_command_with_an_int8_checkpoint_and_chosen_rows(tmp_path, frames_dir, fp32_checkpoint, capsys):
    from lidar_ptq_core.quant import method_config
    from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint, save_quantized_checkpoint
    from lidar_ptq_core.voxelize import voxelize_clouds

    model = tiny_model(TINY_PILLAR)
    batch = voxelize_clouds([random_frame(3, 800)], model.config.voxelization, 4)[0]
    qmodel, report = quantize_centerpoint(model, [batch], "max", method_config("max", sensitivity_frames=0),
                                          progress=False)
    int8 = save_quantized_checkpoint(qmodel, report, tmp_path / "tiny_int8.safetensors")
    stem = tmp_path / "rows"
    assert cli.main(["bench", "--fp32", str(fp32_checkpoint), "--int8", str(int8), "--source",
                     str(frames_dir / "000001.bin"), "--frames", "1", "--repeats", "2", "--threads", "1",
                     "--rows", "int8-ort,fp32-ort", "--profile-runs", "0", "--out", str(stem), "--quiet"]) == 0
    result = json.loads(stem.with_suffix(".json").read_text())
    assert list(result["rows"]) == ["fp32-ort", "int8-ort"]  # table order, whatever order was asked
    assert result["ms"]["int8-ort"]["total"]["n"] == 2 and result["kernels"] == {}
    _check_times(result["ms"], ["fp32-ort", "int8-ort"])
    assert result["agreement_reference"] == "fp32-ort" and list(result["agreement"]) == ["int8-ort"]
    assert "int8 ort integer (ours)" in capsys.readouterr().out


def test_bench_random_network_mode_is_timing_only(tmp_path, frames_dir, monkeypatch, capsys):
    """The waymo-pillar-random mode, on a tiny config: random weights, INT8 quantized here, no mAP even on a source
    with ground truth, and the output says so. Its point features beyond the frames' are zeros."""
    config = dict(TINY_PILLAR, num_point_features=5)
    path = tmp_path / "tiny5.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setitem(bench.RANDOM_MODELS, "tiny-random", str(path))
    assert cli.main(["bench", "--fp32", "tiny-random", "--source", str(frames_dir), "--frames", "1", "--repeats",
                     "1", "--threads", "1", "--calib", str(frames_dir), "--calib-frames", "1", "--rows",
                     "fp32-torch,int8-ort", "--profile-runs", "0", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    text = (tmp_path / "r.txt").read_text()
    assert "RANDOM weights" in text and "TIMING ONLY" in text and "missing columns are zeros" in text
    assert "quantized here with 'max'" in text and "no INT8-vs-FP32 box agreement" in text
    result = json.loads((tmp_path / "r.json").read_text())
    _check_times(result["ms"], ["fp32-torch", "int8-ort"])
    assert result["agreement"] == {} and result["accuracy"] is None


def test_run_bench_reports_map_only_with_ground_truth():
    model = tiny_model(TINY_PILLAR)
    rows = bench.build_rows(model, None, ["fp32-torch"], threads=1)
    clouds = [random_frame(4, 500)]
    without = bench.run_bench(rows, clouds, profile_runs=0)
    assert without.accuracy is None and without.agreement == {}
    gt = GroundTruth(np.array([[2.0, 1.0, 0.0, 4.0, 1.8, 1.5, 0.3]], np.float32), np.array([0]),
                     tuple(TINY_PILLAR["class_names"]))
    with_gt = bench.run_bench(rows, clouds, ground_truths=[gt], profile_runs=0)
    assert set(with_gt.accuracy["fp32-torch"]) == {"mAP", "bev_iou_mAP"}
    assert "IoU mAP" in with_gt.format() and "mAP" not in without.format()


def test_bench_rejects_bad_rows_and_missing_int8(tmp_path, frames_dir, fp32_checkpoint, capsys):
    with pytest.raises(ValueError, match="unknown rows"):
        bench.parse_rows("fp32-torch,int4")
    assert bench.parse_rows("int8-ort,fp32-torch") == ["fp32-torch", "int8-ort"]
    with pytest.raises(ValueError, match="need an INT8 model"):
        bench.build_rows(tiny_model(TINY_PILLAR), None, ["int8-ort"])
    assert cli.main(["bench", "--fp32", str(fp32_checkpoint), "--source", str(frames_dir), "--rows", "int4"]) == 2
    assert "unknown rows" in capsys.readouterr().err


def test_bench_on_real_kitti_frames(tmp_path, kitti_frames):
    """One real KITTI frame through FP32 and INT8 onnxruntime rows of a tiny model (the shipped models run on them
    in docs/BENCHMARKS.md); skips when ../shared/data is absent."""
    model = tiny_model(TINY_PILLAR)
    qmodel = bench.quantize_for_bench(model, [np.fromfile(kitti_frames[0], np.float32).reshape(-1, 4)])
    rows = bench.build_rows(model, qmodel, ["fp32-ort", "int8-ort"], threads=1)
    result = bench.run_bench(rows, [np.fromfile(kitti_frames[1], np.float32).reshape(-1, 4)], profile_runs=0)
    _check_times(result.ms, ["fp32-ort", "int8-ort"])
    txt, js = bench.write_result(result, tmp_path / "kitti.json")
    assert txt.name == "kitti.txt" and json.loads(js.read_text())["agreement"]["int8-ort"]["frames"] == 1


def test_bench_command_reads_a_bag(tmp_path, fp32_checkpoint):
    """A rosbag2 bag as the source (frames spread over the recording, as `lidar-ptq quantize` reads it)."""
    from lidar_ptq_core.pointcloud import PointCloud, write_bag_frames

    bag = tmp_path / "bag"
    clouds = [PointCloud(random_frame(seed, 600), ("x", "y", "z", "intensity")) for seed in range(3)]
    write_bag_frames(bag, [(1_000 + k, "lidar", c) for k, c in enumerate(clouds)])
    assert cli.main(["bench", "--fp32", str(fp32_checkpoint), "--source", str(bag), "--frames", "2", "--repeats",
                     "1", "--threads", "1", "--rows", "fp32-torch,fp32-ort", "--profile-runs", "0", "--out",
                     str(tmp_path / "b"), "--quiet"]) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["frames"] == 2 and "2 of 3 messages of bag" in result["header"][0]
    _check_times(result["ms"], ["fp32-torch", "fp32-ort"])


def test_settle_batchnorm_gives_a_random_network_its_own_statistics():
    """Running statistics re-estimated on the batches (weights untouched, eval mode after, momentum restored): each
    BatchNorm then normalises what it sees to zero mean and unit variance, as in a trained network."""
    import torch

    from lidar_ptq_core.models.centerpoint import CenterPoint, CenterPointConfig
    from lidar_ptq_core.voxelize import voxelize_clouds

    torch.manual_seed(0)
    model = CenterPoint(CenterPointConfig.from_dict(TINY_PILLAR)).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [voxelize_clouds([random_frame(seed, 600)], model.config.voxelization, 4)[0] for seed in range(3)]
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    momentum = norm.momentum
    seen = []
    hook = norm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    bench.settle_batchnorm(model, batches)
    hook.remove()
    assert not model.training and norm.momentum == momentum
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    inputs = torch.cat([x.transpose(0, 1).reshape(x.shape[1], -1) for x in seen], dim=1)
    torch.testing.assert_close(norm.running_mean, inputs.mean(dim=1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, inputs.var(dim=1), rtol=1e-3, atol=1e-6)
    assert int(norm.num_batches_tracked) == len(batches)
