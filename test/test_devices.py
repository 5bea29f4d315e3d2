"""`--device` for quantize, detect and bench: one clear error where the GPU is missing, the same results on the CPU,
and (where a CUDA GPU exists) the GPU path against the CPU one."""

import numpy as np
import pytest
import torch

from lidar_ptq_core import cli
from lidar_ptq_core.devices import batch_to, resolve_device

HAVE_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA GPU here (torch.cuda.is_available() is False); "
                                "benchmarks/gpu_check.py runs the GPU path on a GPU machine")
needs_no_cuda = pytest.mark.skipif(HAVE_CUDA, reason="a CUDA GPU is present: the missing-GPU error cannot be shown")


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if HAVE_CUDA else "cpu")
    assert resolve_device(None).type == ("cuda" if HAVE_CUDA else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="not supported"):
        resolve_device("meta")


@needs_no_cuda
def test_asking_for_a_missing_gpu_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        resolve_device("cuda")
    assert cli.main(["quantize", "--device", "cuda", "--out", str(tmp_path / "x.safetensors"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA GPU" in err and "--device cpu" in err and "Traceback" not in err
    assert cli.main(["detect", str(tmp_path / "none.bin"), "--device", "cuda:1"]) == 2
    assert not (tmp_path / "x.safetensors").exists()


def test_batch_to_moves_tensors_only():
    batch = {"voxels": torch.zeros(2, 3), "batch_size": 1}
    moved = batch_to(batch, "cpu")
    assert moved["batch_size"] == 1 and torch.equal(moved["voxels"], batch["voxels"])


def _frames(tmp_path, count=3):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        pts = np.concatenate([rng.uniform(-12, 12, (400, 2)), rng.uniform(-2, 2, (400, 1)),
                              rng.uniform(0, 1, (400, 1))], axis=1).astype(np.float32)
        pts.tofile(frames / f"{i:06d}.bin")
    return frames


def _tiny_checkpoint(tmp_path):
    from lidar_ptq_core.models.centerpoint import build_centerpoint
    from lidar_ptq_core.models.checkpoint import save_checkpoint

    from test_train import tiny_pillar_config

    torch.manual_seed(0)
    return save_checkpoint(build_centerpoint(tiny_pillar_config()), tmp_path / "tiny.safetensors")


def test_quantize_with_device_cpu_equals_the_default_on_this_machine(tmp_path, capsys):
    """--device cpu is the same computation as before: the same INT8 tensors bit for bit as the default (auto, which
    is the CPU on a machine without a GPU), and the command says where the network ran."""
    from safetensors.torch import load_file

    if HAVE_CUDA:
        pytest.skip("auto picks the GPU here; the CPU/GPU comparison is test_gpu_quantization_matches_the_cpu")
    ckpt, frames = _tiny_checkpoint(tmp_path), _frames(tmp_path)
    outs = []
    for device in ("cpu", "auto"):
        out = tmp_path / f"int8_{device}.safetensors"
        assert cli.main(["quantize", "--checkpoint", str(ckpt), "--calib", str(frames), "--frames", "2", "--method",
                         "lidar-ptq-fast", "--device", device, "--out", str(out), "--quiet"]) == 0
        assert "network on cpu" in capsys.readouterr().out
        outs.append(load_file(str(out)))
    assert outs[0].keys() == outs[1].keys()
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_backends_report_their_device_and_the_torch_split_equals_the_model():
    from lidar_ptq_core.models.centerpoint import build_centerpoint
    from lidar_ptq_core.runtime.backends import OnnxRuntimeBackend, TorchBackend
    from lidar_ptq_core.voxelize import voxelize_clouds

    from test_train import tiny_pillar_config

    model = build_centerpoint(tiny_pillar_config()).eval()
    backend = TorchBackend(model)
    assert backend.device == torch.device("cpu") and OnnxRuntimeBackend(model).device == torch.device("cpu")
    points = np.random.default_rng(1).uniform(-10, 10, (300, 4)).astype(np.float32)
    batch = voxelize_clouds([points], model.config.voxelization, 4)[0]
    with torch.no_grad():
        direct = model(batch)
        split = backend.dense(backend.bev_input(batch))
    for a, b in zip(direct, split):
        assert all(torch.equal(a[k], b[k]) for k in a)


@needs_cuda
def test_gpu_quantization_matches_the_cpu(tmp_path):
    """lidar-ptq-fast on the GPU and on the CPU from the same frames: the same layout and nearly the same ranges
    (float sums differ in order between devices, so not bit for bit), and the GPU model's outputs match the CPU
    model's."""
    from lidar_ptq_core.models.checkpoint import load_checkpoint
    from lidar_ptq_core.quant import method_config
    from lidar_ptq_core.recipes.centerpoint import quantize_centerpoint
    from lidar_ptq_core.voxelize import voxelize_clouds

    ckpt, frames = _tiny_checkpoint(tmp_path), _frames(tmp_path)
    clouds = [np.fromfile(p, np.float32).reshape(-1, 4) for p in sorted(frames.iterdir())]
    results = {}
    for device in ("cpu", "cuda"):
        model = load_checkpoint(ckpt, device=device)
        batches = [batch_to(voxelize_clouds([c], model.config.voxelization, 4)[0], device) for c in clouds]
        qmodel, _ = quantize_centerpoint(model, batches, "lidar-ptq-fast", method_config("lidar-ptq-fast"),
                                         progress=False)
        with torch.no_grad():
            results[device] = (qmodel.state_dict(), [{k: v.cpu() for k, v in t.items()} for t in qmodel(batches[0])])
    cpu_state, gpu_state = results["cpu"][0], results["cuda"][0]
    assert cpu_state.keys() == gpu_state.keys()
    for key in cpu_state:
        assert torch.allclose(cpu_state[key].float(), gpu_state[key].float().cpu(), rtol=1e-3, atol=1e-4), key
    for cpu_task, gpu_task in zip(results["cpu"][1], results["cuda"][1]):
        for head in cpu_task:
            assert torch.allclose(cpu_task[head], gpu_task[head], atol=2e-2), head
