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


def build_config(cls, data, section: str = "", label: str | None = None):
    """Build frozen dataclass `cls` from a YAML mapping, recursively and typed: the one builder for every config
    section (simulator, model, decode, training, quantization).

    Field annotations drive it: nested dataclasses, `X | None`, unions of dataclasses told apart by a `type` key
    (matched against each class's `type` class attribute), tuple[X, ...] and fixed tuples (lists become tuples),
    Mapping[str, X], and float / int / str / bool checked by kind. Unknown and missing keys are errors naming the
    section (`section` is the dotted path, `label` names the root in messages). Each dataclass's own __post_init__
    still checks values.
    """
    import dataclasses
    import typing

    where = section or label or cls.__name__
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    data = dict(data)
    declared_type = getattr(cls, "type", None)
    field_names = {f.name for f in dataclasses.fields(cls)}
    if "type" in data and "type" not in field_names and isinstance(declared_type, str):
        if data.pop("type") != declared_type:
            raise ValueError(f"{where}.type must be {declared_type!r}")
    required = tuple(f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    check_keys(where, data, cls, required)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, raw in data.items():
        values[name] = _build_value(hints[name], raw, f"{section}.{name}" if section else name)
    try:
        return cls(**values)
    except TypeError as exc:  # a list where a number belongs, a number where a list belongs, ...
        raise ValueError(f"{where}: {exc}") from exc


def _build_value(hint, value, where: str):
    import dataclasses
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            if len(options) < len(typing.get_args(hint)):
                return None
            raise ValueError(f"{where} must not be empty")
        if len(options) == 1:
            return _build_value(options[0], value, where)
        if all(dataclasses.is_dataclass(o) for o in options):
            kinds = {getattr(o, "type", None): o for o in options}
            kind = value.get("type") if isinstance(value, Mapping) else None
            if kind not in kinds:
                raise ValueError(f"{where}.type must be one of {sorted(k for k in kinds if k)}, got {kind!r}")
            return build_config(kinds[kind], value, where)
        return value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else build_config(hint, value, where)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_build_value(a, v, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    import collections.abc

    if origin in (collections.abc.Mapping, dict) or hint in (dict, Mapping):
        args = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else typing.Any
        return {str(k): _build_value(item, v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value
