"""One description of the network (models/topology.py) gives the reconstruction blocks, the equalization pairs, the
ONNX output names, the integer graph's ops and the BatchNorms to fold; each must equal what the hand-written code
gave before (frozen in test/data/topology_expected.json from the old functions, for both sim models, both full-size
configs and three backbone/head variants of sim_pillar the shipped configs do not exercise, all built with random
weights)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from torch import nn

from lidar_ptq_core.config_files import resolve_config
from lidar_ptq_core.models.centerpoint import build_centerpoint
from lidar_ptq_core.models.config import load_model_config
from lidar_ptq_core.models.topology import INPUT, Concat, Layer, network_topology

EXPECTED = json.loads((Path(__file__).parent / "data" / "topology_expected.json").read_text())
SHIPPED = ["sim_pillar", "sim_voxel", "waymo_centerpoint_pillar_1x", "nuscenes_centerpoint_voxel0075_res3d"]
# Variants of sim_pillar the shipped configs do not exercise: (backbone_2d, vfe, dense_head) fields replaced.
VARIANTS = {
    "variant_one_level_no_deblocks": (
        {"layer_nums": (1,), "layer_strides": (1,), "num_filters": (32,), "upsample_strides": (),
         "num_upsample_filters": ()},
        {}, {"feature_map_stride": 1}),
    "variant_final_deblock_two_pfn_layers": (
        {"upsample_strides": (1, 2, 4, 2), "num_upsample_filters": (16, 16, 16, 48)},
        {"num_filters": (16, 32)}, {"feature_map_stride": 1}),
    "variant_downsampling_deblock_two_tasks": (
        {"layer_strides": (1, 2, 2), "upsample_strides": (0.5, 1, 2)},
        {}, {"class_names_each_head": (("Car", "Truck"), ("Pedestrian", "Cyclist"))}),
}


def variant_config(name: str):
    backbone, vfe, head = VARIANTS[name]
    config = load_model_config(resolve_config("sim_pillar", "models"))
    return replace(config, backbone_2d=replace(config.backbone_2d, **backbone), vfe=replace(config.vfe, **vfe),
                   dense_head=replace(config.dense_head, **head))


@pytest.fixture(scope="module", params=SHIPPED + list(VARIANTS))
def built(request):
    name = request.param
    config = variant_config(name) if name in VARIANTS else resolve_config(name, "models")
    return name, build_centerpoint(config)


def _fold_batchnorms(module: nn.Module) -> None:
    """BatchNorm2d -> Identity, as folding leaves a quantized model (the integer graph reads only those)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            _fold_batchnorms(child)


def test_reconstruction_blocks_and_equalization_pairs_are_the_hand_written_ones(built):
    from lidar_ptq_core.recipes.centerpoint import equalization_pairs, first_layers, reconstruction_blocks

    name, model = built
    assert first_layers(model) == EXPECTED[name]["first_layers"]
    assert reconstruction_blocks(model) == EXPECTED[name]["blocks"]
    pairs = [[p.producer, [list(c) for c in p.consumers]] for p in equalization_pairs(model)]
    assert pairs == EXPECTED[name]["pairs"]


def test_fold_pairs_are_the_ones_attribute_sniffing_found(built):
    """The BatchNorms wired outside sequential containers come from the modules' own layer_norms() declarations;
    they equal what the recipe found before by looking for linear/norm and conv1/bn1 attributes."""
    from lidar_ptq_core.recipes.centerpoint import fold_pairs

    name, model = built
    assert [list(p) for p in fold_pairs(model)] == EXPECTED[name]["fold_pairs"]
    assert EXPECTED[name]["fold_pairs"], "every config has a PFN or sparse residual BatchNorm"


def test_output_names_are_the_heads_in_order(built):
    from lidar_ptq_core.export.onnx_qdq import output_names

    name, model = built
    assert output_names(model) == EXPECTED[name]["outputs"]
    expected = [f"{t}.{h}" for t, head in enumerate(model.dense_head.heads_list) for h in head.head_names]
    assert output_names(model) == expected


def test_integer_graph_ops_are_the_hand_traced_ones(built):
    from lidar_ptq_core.export.onnx_ort_int8 import _trace

    name, model = built
    with pytest.raises(ValueError, match="BatchNorm2d"):  # an unfolded model has no integer graph
        _trace(model)
    folded = build_centerpoint(model.config)
    _fold_batchnorms(folded)
    ops, outputs = _trace(folded)
    assert [[o.name, o.kind, o.inputs, o.pad, o.relu] for o in ops] == EXPECTED[name]["ops"]
    assert [list(o) for o in outputs] == EXPECTED[name]["trace_outputs"]
    for op in ops[1:]:
        if op.kind == "conv":
            assert op.layer is folded.get_submodule(op.name)


def test_topology_of_sim_pillar_reads_like_the_network():
    """The dense part's data flow, spelled out for the tiny pillar model: 3 levels, each block's output feeding
    the next block and its deblock, the deblocks concatenated into the shared conv, which feeds every branch."""
    model = build_centerpoint(resolve_config("sim_pillar", "models"))
    topology = network_topology(model)
    assert [g.name for g in topology.encoder] == ["vfe.pfn_layers.0"]
    assert topology.bev_producers == ("vfe.pfn_layers.0.linear",)
    first = topology.layer("backbone_2d.blocks.0.1")
    assert first == Layer("backbone_2d.blocks.0.1", INPUT, pad=1, norm="backbone_2d.blocks.0.2", relu=True)
    concat = [n for n in topology.nodes if isinstance(n, Concat)]
    assert concat == [Concat("backbone_2d.concat", ("backbone_2d.deblocks.0.0", "backbone_2d.deblocks.1.0",
                                                    "backbone_2d.deblocks.2.0"))]
    assert topology.layer("dense_head.shared_conv.0").source == "backbone_2d.concat"
    readers = topology.readers()
    assert readers["backbone_2d.blocks.0.4"] == [("backbone_2d.blocks.1.1", None), ("backbone_2d.deblocks.0.0", None)]
    assert readers["backbone_2d.deblocks.1.0"] == [("dense_head.shared_conv.0", 1)]
    branches = [g for g in topology.groups if g.role == "branch"]
    assert [r for r, _ in readers["dense_head.shared_conv.0"]] == [g.layers[0] for g in branches]
    assert [(o.name, o.layer) for o in topology.outputs] == [
        (f"0.{h}", f"dense_head.heads_list.0.{h}.1") for h in ("center", "center_z", "dim", "rot", "hm")]
    last_convs = [topology.layer(o.layer) for o in topology.outputs]
    assert not any(layer.relu or layer.norm for layer in last_convs)


def test_unknown_module_in_the_dense_part_is_one_error():
    model = build_centerpoint(resolve_config("sim_pillar", "models"))
    model.backbone_2d.blocks[0][3] = nn.Sigmoid()
    with pytest.raises(ValueError, match=r"backbone_2d\.blocks\.0\.3: unsupported layer Sigmoid"):
        network_topology(model)


def test_a_quantized_model_has_the_same_topology_as_its_fp32_model():
    """The committed INT8 checkpoint (convs wrapped for quantization, BatchNorms folded) reads as the same network:
    the same blocks, first layer and outputs, and the integer graph's ops are the frozen ones."""
    from lidar_ptq_core.export.onnx_ort_int8 import _trace
    from lidar_ptq_core.export.onnx_qdq import output_names
    from lidar_ptq_core.quant.modules import QuantLayer
    from lidar_ptq_core.recipes.centerpoint import first_layers, load_quantized_checkpoint, reconstruction_blocks
    from lidar_ptq_core.runtime import bundled_checkpoint

    qmodel = load_quantized_checkpoint(bundled_checkpoint("sim_pillar_int8"))
    expected = EXPECTED["sim_pillar"]
    assert reconstruction_blocks(qmodel) == expected["blocks"]
    assert first_layers(qmodel) == expected["first_layers"]
    assert isinstance(qmodel.get_submodule(first_layers(qmodel)[0]), QuantLayer)
    assert output_names(qmodel) == expected["outputs"]
    ops, _ = _trace(qmodel)
    assert [[o.name, o.kind, o.inputs, o.pad, o.relu] for o in ops] == expected["ops"]


def test_an_unknown_bev_step_is_one_error():
    """The PFN's channels reach the BEV map one to one only through the zero-filled scatter: anything else there is
    not described."""
    model = build_centerpoint(resolve_config("sim_pillar", "models"))
    model.map_to_bev_module = nn.Identity()
    with pytest.raises(ValueError, match="map_to_bev_module: unsupported module Identity"):
        network_topology(model)
