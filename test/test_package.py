"""Package-level rules: the core library never imports ROS; shipped configs and checkpoints load."""

import ast
from pathlib import Path

import pytest

from lidar_ptq_core.config_files import config_roots, resolve_config

REPO = Path(__file__).resolve().parents[1]

CORE = Path(__file__).resolve().parents[1] / "lidar_ptq_core"
ROS_MODULES = {"rclpy", "sensor_msgs", "vision_msgs", "visualization_msgs", "geometry_msgs", "std_msgs",
               "builtin_interfaces", "lidar_ptq_ros", "launch", "launch_ros"}


def imported_top_level_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_library_imports_no_ros():
    offenders = {
        str(path.relative_to(CORE)): sorted(imported_top_level_modules(path) & ROS_MODULES)
        for path in CORE.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("kind", ["sim", "models", "train"])
def test_every_shipped_config_loads(kind):
    from lidar_ptq_core.config_files import load_yaml
    from lidar_ptq_core.models.config import load_model_config
    from lidar_ptq_core.sim import load_sim_config
    from lidar_ptq_core.training.train import TrainConfig

    files = sorted((config_roots()[0] / kind).glob("*.yaml"))
    assert files, f"no {kind} configs shipped"
    for path in files:
        if kind == "sim":
            load_sim_config(path)
        elif kind == "models":
            load_model_config(path)
        else:
            data = load_yaml(path)
            data.pop("frames")
            TrainConfig.from_dict(data)
            resolve_config(path.stem, "models")  # each training config trains a model config of the same name


def test_bundled_checkpoints_match_their_model_configs():
    from lidar_ptq_core.models.checkpoint import read_checkpoint_config
    from lidar_ptq_core.models.config import load_model_config
    from lidar_ptq_core.runtime import bundled_checkpoint

    for name in ("sim_pillar", "sim_voxel"):
        embedded = read_checkpoint_config(bundled_checkpoint(name))
        assert embedded == load_model_config(resolve_config(name, "models")), f"{name}: config drifted from weights"
    with pytest.raises(FileNotFoundError, match="available"):
        bundled_checkpoint("no_such_model")


# The committed INT8 checkpoints' recipes (docs/QUANTIZATION.md, "Choosing and reporting"): the pillar model's is
# lidar-ptq-fast with the settings of config/quantization/sim_pillar_int8.yaml (output layers in FP32), the voxel
# model's the full lidar-ptq preset with every layer INT8.
COMMITTED_RECIPES = {"sim_pillar_int8": "lidar-ptq-fast", "sim_voxel_int8": "lidar-ptq"}


@pytest.mark.parametrize("name", sorted(COMMITTED_RECIPES))
def test_bundled_int8_checkpoints_are_their_recipes_with_every_other_layer_int8(name):
    """The committed checkpoints: same model config as their FP32 source, made by their recipe (its YAML settings
    where it has one), every layer INT8 but the output layers that recipe keeps in FP32 (wholly, or their weights
    only), weights exactly on their INT8 grid, and they run."""
    import json

    import numpy as np
    import torch
    import yaml

    from lidar_ptq_core.models.config import load_model_config
    from lidar_ptq_core.quant import quant_wrappers
    from lidar_ptq_core.recipes.centerpoint import load_quantized_checkpoint, output_layers, read_metadata
    from lidar_ptq_core.runtime import Detector, bundled_checkpoint

    path = bundled_checkpoint(name)
    layout = json.loads(read_metadata(path)["layout"])
    model = load_quantized_checkpoint(path)
    assert model.quantization["method"] == COMMITTED_RECIPES[name]
    recipe = REPO / "config" / "quantization" / f"{name}.yaml"
    settings = yaml.safe_load(recipe.read_text()) if recipe.is_file() else {}
    for key, value in settings.items():
        assert model.quantization[key] == value, f"{name}: {key} is not its recipe's"
    float_outputs = sorted(output_layers(model)) if settings.get("keep_float_outputs") else []
    int8_input = settings.get("output_layers_int8_input", False)  # FP32 weights only: the layers stay wrapped
    assert sorted(layout["kept_float"]) == ([] if int8_input else float_outputs) and layout["quantized"]
    assert sorted(layout.get("float_weights", [])) == (float_outputs if int8_input else [])
    assert model.config == load_model_config(resolve_config(name.removesuffix("_int8"), "models"))
    for layer, wrapper in quant_wrappers(model).items():  # reconstruction stores its rounded weights; without it
        if hasattr(wrapper, "weight_quantizer") and model.quantization["adaround"]:  # they round as they run
            assert torch.equal(wrapper.quantized_weight(), wrapper.layer.weight.detach()), layer
    points = np.random.default_rng(0).uniform([-30, -30, -2, 0], [30, 30, 1, 1], (2000, 4)).astype(np.float32)
    assert len(Detector(model).detect(points).boxes) >= 0
