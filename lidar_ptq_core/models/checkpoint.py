"""Model weights on disk.

Native format: ONE safetensors file (e.g. `model.safetensors`) holding the state_dict, with the model's YAML config
embedded in the safetensors metadata under "config" (and "format": CHECKPOINT_FORMAT). One file means the weights
and the config they belong to are written in one atomic replace and can never drift apart. `read_checkpoint_config`
gets the config back without loading tensors.

OpenPCDet import: `.pth` files are read with torch.load(weights_only=True) only, so no arbitrary object is ever
unpickled; the state dict must match the model key for key and shape for shape. spconv 1.x sparse-conv weights
(kz, ky, kx, in, out) are permuted to spconv 2.x (out, kz, ky, kx, in) on the way in.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..io_utils import atomic_path
from .centerpoint import CenterPoint, build_centerpoint
from .config import CenterPointConfig, model_config_from_yaml

CHECKPOINT_FORMAT = "lidar-ptq-centerpoint/1"


def write_state_with_metadata(module: torch.nn.Module, path: str | Path, metadata: Mapping[str, str]) -> Path:
    """Write a module's state_dict and string metadata to one safetensors file, atomically."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=dict(metadata))
    return path


def save_checkpoint(model: CenterPoint, path: str | Path) -> Path:
    """Write the model's weights and config to `path` (a .safetensors file), atomically."""
    return write_state_with_metadata(model, path, {"format": CHECKPOINT_FORMAT, "config": model.config.to_yaml()})


def read_checkpoint_metadata(path: str | Path) -> dict:
    """The metadata of a safetensors file, without loading tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_checkpoint_config(path: str | Path) -> CenterPointConfig:
    path = Path(path)
    metadata = read_checkpoint_metadata(path)
    if metadata.get("format") != CHECKPOINT_FORMAT or "config" not in metadata:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (metadata format {metadata.get('format')!r})")
    return model_config_from_yaml(metadata["config"])


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", sparse_conv_algo="auto") -> CenterPoint:
    """Build the model from the embedded config and load its weights strictly. Returned in eval mode."""
    config = read_checkpoint_config(path)
    model = build_centerpoint(config, device=device, sparse_conv_algo=sparse_conv_algo)
    load_state_dict_checked(model, load_file(str(path)), source=str(path))
    return model.eval()


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise ValueError listing every missing, unexpected and shape-mismatched key, if any."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"{source} does not match the model"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                shown = items[:20] + ([f"... {len(items) - 20} more"] if len(items) > 20 else [])
                parts.append(f"{title} ({len(items)}): " + ", ".join(shown))
        raise ValueError("; ".join(parts))


def load_state_dict_checked(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict"):
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True)
    return model


def _sparse_conv_weight_keys(model: torch.nn.Module) -> set[str]:
    conv_module = sys.modules.get("spconv.pytorch.conv")
    if conv_module is None:  # spconv never imported: the model has no sparse convs (and importing it is slow)
        return set()
    SparseConvolution = conv_module.SparseConvolution
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, SparseConvolution)}


def _adapt_spconv1_weights(model: torch.nn.Module, state: dict) -> dict:
    """spconv 1.x stored sparse-conv weights as (k..., in, out); spconv 2.x wants (out, k..., in)."""
    expected = model.state_dict()
    for key in _sparse_conv_weight_keys(model) & set(state):
        value = state[key]
        if value.dim() == 5 and tuple(value.shape) != tuple(expected[key].shape):
            permuted = value.permute(4, 0, 1, 2, 3)
            if tuple(permuted.shape) == tuple(expected[key].shape):
                state[key] = permuted.contiguous()
    return state


def read_openpcdet_state_dict(pth_path: str | Path) -> dict[str, torch.Tensor]:
    """The `model_state` of an OpenPCDet checkpoint (or the file's dict itself if it is a bare state dict)."""
    pth_path = Path(pth_path)
    if not pth_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {pth_path}")
    try:
        data = torch.load(pth_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as exc:
        raise ValueError(
            f"{pth_path}: cannot be read as tensors only (torch.load weights_only=True refused it or the file is "
            f"damaged); arbitrary pickled objects are never loaded: {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from exc
    if not isinstance(data, Mapping):
        raise ValueError(f"{pth_path}: expected a dict, got {type(data).__name__}")
    state = data["model_state"] if "model_state" in data else data
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{pth_path}: model_state is not a mapping of names to tensors")
    return dict(state)


def import_openpcdet_checkpoint(
    pth_path: str | Path, config: CenterPointConfig | str | Path, device: torch.device | str = "cpu",
    sparse_conv_algo="auto",
) -> CenterPoint:
    """Build the model of `config` (a config or model YAML path) and load an OpenPCDet CenterPoint checkpoint into
    it strictly. Raises ValueError listing missing / unexpected / mismatched keys. Returned in eval mode."""
    state = read_openpcdet_state_dict(pth_path)
    model = build_centerpoint(config, device=device, sparse_conv_algo=sparse_conv_algo)
    load_state_dict_checked(model, _adapt_spconv1_weights(model, state), source=str(pth_path))
    return model.eval()
