"""CenterPoint models: forward shapes, OpenPCDet state_dict parity, checkpoint I/O. Tiny configs, CPU only."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lidar_ptq_core.models.centerpoint import CenterPoint, build_centerpoint, sparse_conv_algo_for
from lidar_ptq_core.models.checkpoint import (
    import_openpcdet_checkpoint,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from lidar_ptq_core.models.config import CenterPointConfig, load_model_config
from lidar_ptq_core.voxelize import collate_voxels, voxelize

torch.set_num_threads(min(2, torch.get_num_threads()))
pytestmark = [  # third-party noise from spconv and its build helper
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning"),
    pytest.mark.filterwarnings("ignore:'locale.getdefaultlocale':DeprecationWarning"),
]

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = REPO / "config" / "models"
CLASSES = ["Car", "Truck", "Pedestrian", "Cyclist"]

HEAD_DICT = {
    "center": {"out_channels": 2, "num_conv": 2},
    "center_z": {"out_channels": 1, "num_conv": 2},
    "dim": {"out_channels": 3, "num_conv": 2},
    "rot": {"out_channels": 2, "num_conv": 2},
}

TINY_PILLAR = {
    "name": "tiny_pillar",
    "class_names": CLASSES,
    "num_point_features": 4,
    "voxelization": {
        "point_cloud_range": [-12.8, -12.8, -3.0, 12.8, 12.8, 3.0],
        "voxel_size": [0.8, 0.8, 6.0],
        "max_points_per_voxel": 8,
        "max_voxels": 2000,
    },
    "vfe": {"type": "PillarVFE", "num_filters": [8, 16]},
    "backbone_3d": None,
    "map_to_bev": {"type": "PointPillarScatter", "num_bev_features": 16},
    "backbone_2d": {
        "layer_nums": [1, 1],
        "layer_strides": [1, 2],
        "num_filters": [16, 16],
        "upsample_strides": [1, 2],
        "num_upsample_filters": [8, 8],
    },
    "dense_head": {
        "class_names_each_head": [["Car", "Truck"], ["Pedestrian", "Cyclist"]],
        "shared_conv_channel": 8,
        "feature_map_stride": 1,
        "head_dict": HEAD_DICT,
    },
}

TINY_VOXEL = {
    "name": "tiny_voxel",
    "class_names": CLASSES,
    "num_point_features": 4,
    "voxelization": {
        "point_cloud_range": [-12.8, -12.8, -3.0, 12.8, 12.8, 3.0],
        "voxel_size": [0.4, 0.4, 0.25],
        "max_points_per_voxel": 4,
        "max_voxels": 4000,
    },
    "vfe": {"type": "MeanVFE"},
    "backbone_3d": {"type": "VoxelResBackBone8x", "channels": [4, 8, 8, 8], "num_res_blocks": [1, 1, 1, 1],
                    "out_channels": 8},
    "map_to_bev": {"type": "HeightCompression", "num_bev_features": 8},  # 24 z voxels -> depth 1
    "backbone_2d": {
        "layer_nums": [1],
        "layer_strides": [1],
        "num_filters": [8],
        "upsample_strides": [2],
        "num_upsample_filters": [8],
    },
    "dense_head": {
        "class_names_each_head": [CLASSES],
        "shared_conv_channel": 8,
        "feature_map_stride": 4,
        "head_dict": {**HEAD_DICT, "vel": {"out_channels": 2, "num_conv": 2}},
    },
}


def random_frame(seed, n=300):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-12, -12, -2.5], [12, 12, 2.5], (n, 3))
    return np.concatenate([xyz, rng.uniform(0, 1, (n, 1))], axis=1).astype(np.float32)


def make_batch(config: CenterPointConfig):
    frames = [random_frame(0), np.zeros((0, 4), np.float32)]  # second frame is empty
    return collate_voxels([voxelize(f, config.voxelization) for f in frames])


def randomize_batchnorm(model):
    """Non-trivial running statistics, so eval outputs depend on every buffer."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


# --- forward ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_dict", [TINY_PILLAR, TINY_VOXEL], ids=["pillar", "voxel"])
def test_forward_shapes_train_and_eval(config_dict):
    config = CenterPointConfig.from_dict(config_dict)
    torch.manual_seed(0)
    model = build_centerpoint(config)
    batch = make_batch(config)
    _, height, width = config.bev_geometry()
    geometry = model.head_geometry
    assert geometry.feature_map_size == (height, width)

    model.train()
    outputs = model(batch)
    assert len(outputs) == len(config.dense_head.class_names_each_head)
    for task, classes in zip(outputs, config.dense_head.class_names_each_head):
        expected = {"hm": len(classes), **{k: v.out_channels for k, v in config.dense_head.head_dict.items()}}
        assert {k: tuple(v.shape) for k, v in task.items()} == {k: (2, c, height, width) for k, c in expected.items()}
    loss = sum(v.square().mean() for task in outputs for v in task.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.no_grad():
        outputs = model(batch)
    assert all(torch.isfinite(v).all() for task in outputs for v in task.values())
    # Frames do not leak into each other: each frame alone gives its slice of the batch output.
    for index, frame in enumerate([random_frame(0), np.zeros((0, 4), np.float32)]):
        with torch.no_grad():
            alone = model(collate_voxels([voxelize(frame, config.voxelization)]))
        for task_batch, task_alone in zip(outputs, alone):
            for name in task_batch:
                torch.testing.assert_close(task_batch[name][index : index + 1], task_alone[name], atol=1e-5, rtol=1e-5)


def test_pillar_map_size_and_hm_bias_init():
    config = CenterPointConfig.from_dict(TINY_PILLAR)
    model = build_centerpoint(config)
    assert config.head_geometry().feature_map_size == (32, 32)  # 25.6 m / 0.8 m, stride 1
    for head in model.dense_head.heads_list:
        assert torch.all(head.hm[-1].bias == -2.19)
        assert torch.all(head.center[-1].bias == 0)


def test_voxel_model_uses_native_sparse_conv_on_cpu():
    import spconv.pytorch as spconv
    from spconv.pytorch.conv import SparseConvolution

    assert sparse_conv_algo_for("cpu") == spconv.ConvAlgo.Native
    assert sparse_conv_algo_for("cuda") is None
    config = CenterPointConfig.from_dict(TINY_VOXEL)
    model = build_centerpoint(config)
    convs = [m for m in model.modules() if isinstance(m, SparseConvolution)]
    assert convs and all(m.algo == spconv.ConvAlgo.Native for m in convs)
    assert config.sparse_shape == (25, 64, 64)
    assert config.head_geometry().feature_map_size == (16, 16)  # 64 / 8 * 2


# --- configs ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sim_pillar", "sim_voxel", "waymo_centerpoint_pillar_1x",
                                  "nuscenes_centerpoint_voxel0075_res3d"])
def test_shipped_configs_load_and_round_trip(name):
    config = load_model_config(MODEL_CONFIGS / f"{name}.yaml")
    assert CenterPointConfig.from_dict(yaml.safe_load(config.to_yaml())) == config


def test_sim_configs_cover_the_benchmark():
    for name in ("sim_pillar", "sim_voxel"):
        config = load_model_config(MODEL_CONFIGS / f"{name}.yaml")
        pcr = config.voxelization.point_cloud_range
        assert config.class_names == tuple(CLASSES) and config.num_point_features == 4
        assert pcr[0] <= -76.8 and pcr[3] >= 76.8 and pcr[2] <= -2.5 and pcr[5] >= 2.5
        _ = config.voxelization.grid_size  # whole number of voxels, else raises


def test_full_config_geometry_matches_openpcdet():
    waymo = load_model_config(MODEL_CONFIGS / "waymo_centerpoint_pillar_1x.yaml")
    assert waymo.voxelization.grid_size == (468, 468, 1)
    assert waymo.head_geometry().feature_map_size == (468, 468)
    nus = load_model_config(MODEL_CONFIGS / "nuscenes_centerpoint_voxel0075_res3d.yaml")
    assert nus.sparse_shape == (41, 1440, 1440)
    assert nus.bev_input_geometry() == (256, 180, 180, 8)
    assert nus.head_geometry().feature_map_size == (180, 180)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(typo=1), "unknown keys in model config: ['typo']"),
        (lambda d: d["vfe"].update(num_filter=[4]), "unknown keys in vfe"),
        (lambda d: d["dense_head"]["head_dict"]["dim"].update(channels=3), "unknown keys in dense_head.head_dict.dim"),
        (lambda d: d["voxelization"].update(voxel_sizes=1), "unknown keys in voxelization"),
        (lambda d: d.update(post_processing={"nms": {"kind": "circle"}}), "unknown keys in post_processing.nms"),
        (lambda d: d["dense_head"].update(feature_map_stride=2), "output stride is 1"),
        (lambda d: d["map_to_bev"].update(num_bev_features=32), "must equal the last vfe.num_filters"),
        (lambda d: d["dense_head"].update(class_names_each_head=[["Car"]]), "exactly once"),
        (lambda d: d["backbone_2d"].update(upsample_strides=[1, 1]), "cannot be concatenated"),
    ],
)
def test_config_errors_are_clear(mutate, message):
    data = copy.deepcopy(TINY_PILLAR)
    mutate(data)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        CenterPointConfig.from_dict(data)


def test_voxel_config_checks_bev_depth():
    data = copy.deepcopy(TINY_VOXEL)
    data["map_to_bev"]["num_bev_features"] = 16
    with pytest.raises(ValueError, match="8 x 1 = 8"):
        CenterPointConfig.from_dict(data)


# --- OpenPCDet state_dict parity --------------------------------------------------------------------------------
# Written from OpenPCDet's CenterPoint sources, independently of lidar_ptq_core.models: the key -> shape list an
# OpenPCDet model_state has for the two reference configs.


def bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def openpcdet_bev_backbone(input_channels, layer_nums, layer_strides, num_filters, upsample_strides, up_filters):
    keys = {}
    c_in = [input_channels, *num_filters[:-1]]
    for i, (n, f) in enumerate(zip(layer_nums, num_filters)):
        # Sequential: 0 ZeroPad2d, 1 conv, 2 bn, 3 relu, then (conv, bn, relu) * n
        keys[f"backbone_2d.blocks.{i}.1.weight"] = (f, c_in[i], 3, 3)
        keys.update(bn(f"backbone_2d.blocks.{i}.2", f))
        for k in range(n):
            keys[f"backbone_2d.blocks.{i}.{4 + 3 * k}.weight"] = (f, f, 3, 3)
            keys.update(bn(f"backbone_2d.blocks.{i}.{5 + 3 * k}", f))
        s = upsample_strides[i]
        keys[f"backbone_2d.deblocks.{i}.0.weight"] = (f, up_filters[i], s, s)  # ConvTranspose2d: (in, out, k, k)
        keys.update(bn(f"backbone_2d.deblocks.{i}.1", up_filters[i]))
    return keys


def openpcdet_center_head(input_channels, tasks, heads, shared=64):
    keys = {"dense_head.shared_conv.0.weight": (shared, input_channels, 3, 3),
            "dense_head.shared_conv.0.bias": (shared,)}
    keys.update(bn("dense_head.shared_conv.1", shared))
    for t, classes in enumerate(tasks):
        for name, out in [*heads.items(), ("hm", len(classes))]:
            p = f"dense_head.heads_list.{t}.{name}"
            keys[f"{p}.0.0.weight"] = (shared, shared, 3, 3)
            keys[f"{p}.0.0.bias"] = (shared,)  # USE_BIAS_BEFORE_NORM: True
            keys.update(bn(f"{p}.0.1", shared))
            keys[f"{p}.1.weight"] = (out, shared, 3, 3)
            keys[f"{p}.1.bias"] = (out,)
    return keys


def openpcdet_waymo_pillar_keys():
    keys = {"global_step": (1,)}
    keys["vfe.pfn_layers.0.linear.weight"] = (32, 11)  # 5 point features + 3 cluster + 3 centre offsets -> 64 / 2
    keys.update(bn("vfe.pfn_layers.0.norm", 32))
    keys["vfe.pfn_layers.1.linear.weight"] = (64, 64)
    keys.update(bn("vfe.pfn_layers.1.norm", 64))
    keys.update(openpcdet_bev_backbone(64, [3, 5, 5], [1, 2, 2], [64, 128, 256], [1, 2, 4], [128, 128, 128]))
    keys.update(openpcdet_center_head(384, [["Vehicle", "Pedestrian", "Cyclist"]],
                                      {"center": 2, "center_z": 1, "dim": 3, "rot": 2}))
    return keys


def openpcdet_nuscenes_voxel_keys():
    keys = {"global_step": (1,)}
    b = "backbone_3d"
    keys[f"{b}.conv_input.0.weight"] = (16, 3, 3, 3, 5)  # spconv 2.x: (out, kz, ky, kx, in)
    keys.update(bn(f"{b}.conv_input.1", 16))

    def res_block(p, c):
        keys.update({f"{p}.conv1.weight": (c, 3, 3, 3, c), f"{p}.conv1.bias": (c,),
                     f"{p}.conv2.weight": (c, 3, 3, 3, c), f"{p}.conv2.bias": (c,)})
        keys.update(bn(f"{p}.bn1", c))
        keys.update(bn(f"{p}.bn2", c))

    res_block(f"{b}.conv1.0", 16)
    res_block(f"{b}.conv1.1", 16)
    for stage, (c_in, c) in zip((2, 3, 4), ((16, 32), (32, 64), (64, 128))):
        keys[f"{b}.conv{stage}.0.0.weight"] = (c, 3, 3, 3, c_in)
        keys.update(bn(f"{b}.conv{stage}.0.1", c))
        res_block(f"{b}.conv{stage}.1", c)
        res_block(f"{b}.conv{stage}.2", c)
    keys[f"{b}.conv_out.0.weight"] = (128, 3, 1, 1, 128)
    keys.update(bn(f"{b}.conv_out.1", 128))
    keys.update(openpcdet_bev_backbone(256, [5, 5], [1, 2], [128, 256], [1, 2], [256, 256]))
    tasks = [["car"], ["truck", "construction_vehicle"], ["bus", "trailer"], ["barrier"], ["motorcycle", "bicycle"],
             ["pedestrian", "traffic_cone"]]
    keys.update(openpcdet_center_head(512, tasks, {"center": 2, "center_z": 1, "dim": 3, "rot": 2, "vel": 2}))
    return keys


# Hand-checked entries and totals (counted from the OpenPCDet architecture, independently of the generators above).
HAND_TABLE = {
    "waymo_centerpoint_pillar_1x": (179, {
        "vfe.pfn_layers.0.linear.weight": (32, 11),
        "vfe.pfn_layers.1.norm.running_var": (64,),
        "backbone_2d.blocks.0.1.weight": (64, 64, 3, 3),
        "backbone_2d.blocks.1.1.weight": (128, 64, 3, 3),
        "backbone_2d.blocks.2.16.weight": (256, 256, 3, 3),
        "backbone_2d.deblocks.0.0.weight": (64, 128, 1, 1),
        "backbone_2d.deblocks.2.0.weight": (256, 128, 4, 4),
        "dense_head.shared_conv.0.weight": (64, 384, 3, 3),
        "dense_head.heads_list.0.hm.0.0.weight": (64, 64, 3, 3),
        "dense_head.heads_list.0.hm.1.weight": (3, 64, 3, 3),
        "dense_head.heads_list.0.rot.1.bias": (2,),
    }),
    "nuscenes_centerpoint_voxel0075_res3d": (558, {
        "backbone_3d.conv_input.0.weight": (16, 3, 3, 3, 5),
        "backbone_3d.conv1.0.conv1.weight": (16, 3, 3, 3, 16),
        "backbone_3d.conv1.0.conv1.bias": (16,),
        "backbone_3d.conv2.0.0.weight": (32, 3, 3, 3, 16),
        "backbone_3d.conv4.2.bn2.running_mean": (128,),
        "backbone_3d.conv_out.0.weight": (128, 3, 1, 1, 128),
        "backbone_2d.blocks.0.1.weight": (128, 256, 3, 3),
        "backbone_2d.deblocks.1.0.weight": (256, 256, 2, 2),
        "dense_head.shared_conv.0.weight": (64, 512, 3, 3),
        "dense_head.heads_list.5.hm.1.weight": (2, 64, 3, 3),
        "dense_head.heads_list.5.vel.1.weight": (2, 64, 3, 3),
    }),
}

EXPECTED_KEYS = {
    "waymo_centerpoint_pillar_1x": openpcdet_waymo_pillar_keys,
    "nuscenes_centerpoint_voxel0075_res3d": openpcdet_nuscenes_voxel_keys,
}


def fake_openpcdet_state(expected: dict) -> dict:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in expected.items():
        if key.endswith("num_batches_tracked") or key == "global_step":
            state[key] = torch.tensor(7, dtype=torch.long).reshape(shape)
        else:
            state[key] = torch.randn(shape, generator=gen)
    return state


@pytest.fixture(scope="module", params=sorted(EXPECTED_KEYS))
def full_model(request):
    name = request.param
    return name, build_centerpoint(MODEL_CONFIGS / f"{name}.yaml")


def test_full_models_have_openpcdet_keys_and_shapes(full_model):
    name, model = full_model
    expected = EXPECTED_KEYS[name]()
    total, table = HAND_TABLE[name]
    assert len(expected) == total
    assert {k: expected[k] for k in table} == table
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(actual)) == [] and sorted(set(actual) - set(expected)) == []
    assert actual == expected


def test_openpcdet_pth_imports_strictly(full_model, tmp_path):
    name, model = full_model
    state = fake_openpcdet_state(EXPECTED_KEYS[name]())
    model.load_state_dict(state, strict=True)
    pth = tmp_path / "checkpoint_epoch_30.pth"
    torch.save({"epoch": 30, "it": 1234, "model_state": state, "optimizer_state": {"step": torch.tensor(3)},
                "version": "pcdet+0.6.0"}, pth)
    imported = import_openpcdet_checkpoint(pth, model.config)
    for key in ("dense_head.shared_conv.0.weight", "backbone_2d.blocks.0.1.weight"):
        assert torch.equal(imported.state_dict()[key], state[key])
    assert not imported.training


def test_openpcdet_import_converts_spconv1_weight_layout(tmp_path):
    config = CenterPointConfig.from_dict(TINY_VOXEL)
    state = {k: v.clone() for k, v in build_centerpoint(config).state_dict().items()}
    original = state["backbone_3d.conv2.0.0.weight"].clone()  # (8, 3, 3, 3, 4)
    state["backbone_3d.conv2.0.0.weight"] = original.permute(1, 2, 3, 4, 0).contiguous()  # spconv 1.x (k,k,k,in,out)
    torch.save(state, tmp_path / "bare.pth")  # a bare state dict is accepted too
    imported = import_openpcdet_checkpoint(tmp_path / "bare.pth", config)
    assert torch.equal(imported.state_dict()["backbone_3d.conv2.0.0.weight"], original)


def test_openpcdet_import_reports_every_mismatch(tmp_path):
    config = CenterPointConfig.from_dict(TINY_PILLAR)
    state = dict(build_centerpoint(config).state_dict())
    del state["vfe.pfn_layers.0.linear.weight"]
    state["dense_head.extra.weight"] = torch.zeros(3)
    state["backbone_2d.blocks.0.1.weight"] = torch.zeros(1, 2, 3, 3)
    torch.save({"model_state": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        import_openpcdet_checkpoint(tmp_path / "bad.pth", config)
    text = str(err.value)
    assert "missing (1): vfe.pfn_layers.0.linear.weight" in text
    assert "unexpected (1): dense_head.extra.weight" in text
    assert "backbone_2d.blocks.0.1.weight: checkpoint (1, 2, 3, 3) vs model (16, 16, 3, 3)" in text


class NotATensor:  # any pickled class instance must be refused, never constructed
    pass


def test_openpcdet_import_never_unpickles_objects(tmp_path):
    config = CenterPointConfig.from_dict(TINY_PILLAR)
    torch.save({"model_state": {}, "payload": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only"):
        import_openpcdet_checkpoint(tmp_path / "evil.pth", config)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as tensors only"):
        import_openpcdet_checkpoint(tmp_path / "garbage.pth", config)
    with pytest.raises(FileNotFoundError):
        import_openpcdet_checkpoint(tmp_path / "absent.pth", config)


# --- native checkpoints -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_dict", [TINY_PILLAR, TINY_VOXEL], ids=["pillar", "voxel"])
def test_safetensors_round_trip_gives_identical_outputs(config_dict, tmp_path):
    config = CenterPointConfig.from_dict(config_dict)
    torch.manual_seed(3)
    model = randomize_batchnorm(build_centerpoint(config)).eval()
    batch = make_batch(config)
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    assert read_checkpoint_config(path) == config
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left behind
    loaded = load_checkpoint(path)
    assert isinstance(loaded, CenterPoint) and not loaded.training
    with torch.no_grad():
        before, after = model(batch), loaded(batch)
    for task_a, task_b in zip(before, after):
        for name in task_a:
            assert torch.equal(task_a[name], task_b[name]), name


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a lidar-ptq-centerpoint/1 checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors")


def test_model_outputs_decode_per_frame():
    from lidar_ptq_core.decode import decode_batch

    config = CenterPointConfig.from_dict(TINY_PILLAR)
    torch.manual_seed(0)
    model = build_centerpoint(config).eval()
    with torch.no_grad():
        outputs = model(make_batch(config))
    frames = decode_batch(outputs, model.head_geometry, config.post_processing)
    assert len(frames) == 2
    for det in frames:
        assert det.class_names == tuple(CLASSES) and det.boxes.shape[1] == 7
        assert len(det) <= config.post_processing.max_boxes


@pytest.mark.parametrize("config_dict", [TINY_PILLAR, TINY_VOXEL], ids=["pillar", "voxel"])
def test_named_stages_chain_to_forward(config_dict):
    """encode -> to_bev -> dense is forward, stage by stage, so each stage can be called or replaced alone."""
    torch.manual_seed(0)
    model = CenterPoint(CenterPointConfig.from_dict(copy.deepcopy(config_dict)),
                        sparse_conv_algo=sparse_conv_algo_for("cpu")).eval()
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(-12, 12, (3000, 2)), rng.uniform(-2.5, 2.5, (3000, 1)),
                             rng.uniform(0, 1, (3000, 1))], axis=1).astype(np.float32)
    batch = collate_voxels([voxelize(points, model.config.voxelization)])
    with torch.no_grad():
        chained = model.dense(model.to_bev(model.encode(batch), batch))
        direct = model(batch)
    for a, b in zip(chained, direct):
        for key in a:
            assert torch.equal(a[key], b[key])


def test_one_typed_builder_reads_every_section():
    """Model, decode, voxelization, training and quantization configs all go through config_files.build_config."""
    from lidar_ptq_core.config_files import build_config
    from lidar_ptq_core.models.config import MeanVFEConfig, PillarVFEConfig

    data = copy.deepcopy(TINY_VOXEL)
    data["vfe"] = {"type": "PillarVFE"}
    with pytest.raises(ValueError, match="a PillarVFE model takes no backbone_3d"):
        CenterPointConfig.from_dict(data)
    data["vfe"] = {"type": "Pillars"}
    with pytest.raises(ValueError, match=r"vfe.type must be one of \['MeanVFE', 'PillarVFE'\]"):
        CenterPointConfig.from_dict(data)
    data = copy.deepcopy(TINY_PILLAR)
    data["voxelization"]["max_voxels"] = "many"
    with pytest.raises(ValueError, match="voxelization.max_voxels: expected an integer"):
        CenterPointConfig.from_dict(data)
    data = copy.deepcopy(TINY_PILLAR)
    del data["dense_head"]
    with pytest.raises(ValueError, match=r"model config is missing \['dense_head'\]"):
        CenterPointConfig.from_dict(data)
    config = CenterPointConfig.from_dict(copy.deepcopy(TINY_VOXEL))
    assert isinstance(config.vfe, MeanVFEConfig) and config.backbone_3d.channels == (4, 8, 8, 8)
    assert build_config(PillarVFEConfig, {"type": "PillarVFE", "num_filters": [8]}, "vfe").num_filters == (8,)
