"""Finding and reading the YAML configuration files that ship with the project (config/<kind>/<name>.yaml)."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Mapping

import yaml


def data_roots(folder: str) -> list[Path]:
    """Where a top-level project folder (config/, checkpoints/) is found: the source tree (editable installs, CI),
    then the ament share folder an installed package puts it in."""
    return [Path(__file__).resolve().parents[1] / folder, Path(sys.prefix) / "share" / "lidar_ptq_ros" / folder]


def config_roots() -> list[Path]:
    return data_roots("config")


def resolve_config(name_or_path: str | Path, kind: str) -> Path:
    """A path to an existing YAML file, or a bare name looked up as config/<kind>/<name>.yaml."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        return path
    for root in config_roots():
        candidate = root / kind / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    available = sorted({p.stem for root in config_roots() for p in (root / kind).glob("*.yaml")})
    raise FileNotFoundError(f"no {kind} config named {name_or_path!r}; available: {available}")


def load_yaml(path: str | Path) -> dict:
    """Safe-load a YAML mapping (never arbitrary Python objects); an empty file is an empty mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level")
    return data


def check_keys(section: str, data, cls, required: tuple[str, ...] = ()) -> dict:
    """Validate a YAML mapping against the fields of dataclass `cls`: unknown or missing keys are errors that name the
    section, so a typo in a config file never passes silently."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{section} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown keys in {section}: {sorted(unknown)}; expected some of {sorted(known)}")
    missing = set(required) - set(data)
    if missing:
        raise ValueError(f"{section} is missing {sorted(missing)}")
    return dict(data)
