"""Training loop end to end on a tiny pillar model: loss falls, checkpoints resume, weights export and detect."""

import json

import numpy as np
import pytest
import torch

from lidar_ptq_core.models.centerpoint import build_centerpoint
from lidar_ptq_core.models.checkpoint import save_checkpoint
from lidar_ptq_core.models.config import CenterPointConfig, load_model_config
from lidar_ptq_core.runtime import Detector
from lidar_ptq_core.sim import generate_frame, load_sim_config
from lidar_ptq_core.training.train import TrainConfig, _batch_indices, train


def tiny_pillar_config() -> CenterPointConfig:
    data = load_model_config("config/models/sim_pillar.yaml").to_dict()
    data["voxelization"].update(point_cloud_range=[-40.96, -40.96, -3.0, 40.96, 40.96, 3.0],
                                voxel_size=[0.64, 0.64, 6.0])
    data["vfe"]["num_filters"] = [8]
    data["map_to_bev"]["num_bev_features"] = 8
    data["backbone_2d"].update(layer_nums=[1, 1], layer_strides=[2, 2], num_filters=[8, 16],
                               upsample_strides=[1, 2], num_upsample_filters=[8, 8])
    data["dense_head"].update(shared_conv_channel=8, feature_map_stride=2)
    return CenterPointConfig.from_dict(data)


class TinyDataset:
    def __init__(self, n=3):
        cfg = load_sim_config("default")
        self.frames = [generate_frame(cfg, seed) for seed in range(n)]

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, i):
        return self.frames[i]


@pytest.fixture(scope="module")
def dataset():
    torch.set_num_threads(2)
    return TinyDataset()


def test_batch_order_is_a_function_of_seed_and_step():
    a = [_batch_indices(5, 2, 0, s).tolist() for s in range(6)]
    assert a == [_batch_indices(5, 2, 0, s).tolist() for s in range(6)]
    assert sorted(sum(a[:2], []) + [a[2][0]]) == [0, 1, 2, 3, 4], "one epoch visits every frame once"


def test_train_resume_and_export(tmp_path, dataset):
    cfg = TrainConfig(steps=6, batch_size=1, lr=3e-3, checkpoint_every=3, log_every=1)
    torch.manual_seed(0)
    model = build_centerpoint(tiny_pillar_config())
    train(model, dataset, TrainConfig(**{**cfg.__dict__, "steps": 6}), tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) for r in log)
    assert log[-1]["loss"] < log[0]["loss"], "six steps on three frames must reduce the loss"

    # Interrupt after 3 steps, resume in a fresh model: same step count, state restored from train_state.pt.
    torch.manual_seed(0)
    first = build_centerpoint(tiny_pillar_config())
    calls = []

    def stop_at_3(step):
        calls.append(step)
        if step == 3:
            # A crash two steps after the checkpoint: those log lines must not survive the resume.
            with (tmp_path / "resumed" / "log.jsonl").open("a") as log:
                log.write('{"step": 4, "loss": 1.0}\n{"step": 5, "loss": 1.0}\n')
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(first, dataset, cfg, tmp_path / "resumed", progress=False, on_checkpoint=stop_at_3)
    state = torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)
    assert state["step"] == 3
    second = build_centerpoint(tiny_pillar_config())
    train(second, dataset, cfg, tmp_path / "resumed", progress=False)
    assert torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)["step"] == 6
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]

    with pytest.raises(ValueError, match="another training config"):
        train(build_centerpoint(tiny_pillar_config()), dataset, TrainConfig(steps=9), tmp_path / "resumed",
              progress=False)

    # Export -> load -> detect gives the same boxes as the trained model.
    path = save_checkpoint(second, tmp_path / "tiny.safetensors")
    det_a = Detector(second).detect(dataset[0].points)
    det_b = Detector.from_checkpoint(path).detect(dataset[0].points)
    np.testing.assert_allclose(det_a.boxes, det_b.boxes, atol=1e-5)
    assert det_a.class_names == ("Car", "Truck", "Pedestrian", "Cyclist")
