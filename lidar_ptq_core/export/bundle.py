"""The `.lptq` bundle: one file a robot runs.

Container: a ZIP archive (readable by every platform's tools: `unzip -l model.lptq` lists it) holding
`manifest.json` first, then named parts such as `dense.onnx` and `encoder.safetensors`. Binary parts are STORED,
not compressed, so a reader takes their bytes straight from the file without inflating; JSON, YAML and text parts
are deflated. The manifest records every part's sha256 and size, so a bundle that was cut short, bit-flipped or had
a part swapped is refused with one message naming the file and the part, instead of failing later inside a runtime.

Manifest (a JSON object; format_version 2, which reads version 1 bundles too):
  format          "lidar-ptq-bundle"
  format_version  2 (1: no runtime or parity sections)
  created         UTC ISO 8601 time, e.g. "2025-01-31T12:00:00Z"
  model           the model config as plain data (CenterPointConfig.to_dict()); must parse with CenterPointConfig
  class_names     the detected classes, equal to model["class_names"]
  voxelization    equal to model["voxelization"]
  decode          score threshold, top-K, NMS: equal to model["post_processing"]
  quantization    null for FP32, else {"method": str, "summary": {...}} (further keys allowed)
  tools           {"python": ..., "torch": ..., "onnx": ..., "onnxruntime": ..., "lidar-ptq": ...}, those installed
  parts           {name: {"sha256": 64 lowercase hex, "size": bytes, "media_type": str, "role": str}}
  runtime         optional: which shipped graph runs where (export/export_bundle.py runtime_plan): the head output
                  names, the BEV map the dense graphs take, and per engine the parts it runs
  parity          optional: the shipped graphs against the torch model on calibration frames at export
                  (export/parity.py): per-output errors, box agreement, the thresholds and whether they held

class_names, voxelization and decode repeat sections of `model` so that a reader (or a person with `unzip -p`) finds
them without knowing the model config's layout; read_bundle checks that they agree with `model`.
"""

from __future__ import annotations

import collections
import copy
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import zipfile
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

from ..io_utils import atomic_path
from ..models.config import CenterPointConfig

BUNDLE_FORMAT = "lidar-ptq-bundle"
BUNDLE_FORMAT_VERSION = 2  # the version written
READABLE_FORMAT_VERSIONS = (1, 2)  # the versions read_bundle accepts
BUNDLE_SUFFIX = ".lptq"
MANIFEST_NAME = "manifest.json"

# Tool name in the manifest -> the distribution whose installed version is recorded (metadata only, never imported).
TOOL_DISTRIBUTIONS = {"torch": "torch", "onnx": "onnx", "onnxruntime": "onnxruntime", "lidar-ptq": "lidar_ptq"}

# Part file suffix -> media type recorded when the caller names none.
PART_MEDIA_TYPES = {
    ".onnx": "application/x-onnx",
    ".safetensors": "application/x-safetensors",
    ".json": "application/json",
    ".yaml": "application/yaml",
    ".txt": "text/plain",
}
DEFAULT_MEDIA_TYPE = "application/octet-stream"
# Small textual parts are deflated; everything else is stored so that it can be read in place.
DEFLATED_MEDIA_TYPES = frozenset({"application/json", "application/yaml", "text/plain"})

# A plain file name: unpacking a bundle can never write outside the folder it is unpacked into.
PART_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}\Z")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}\Z")
SHA256_SHOWN = 16  # hex digits of a digest quoted in messages
READ_CHUNK_BYTES = 1 << 20

# Manifest key -> the JSON types it accepts, in the order the manifest is written.
MANIFEST_KEY_TYPES = {
    "format": (str,),
    "format_version": (int,),
    "created": (str,),
    "model": (dict,),
    "class_names": (list,),
    "voxelization": (dict,),
    "decode": (dict,),
    "quantization": (dict, type(None)),
    "tools": (dict,),
    "parts": (dict,),
}
# Keys a manifest may hold (written from format_version 2 on), after the required ones.
OPTIONAL_MANIFEST_KEY_TYPES = {"runtime": (dict,), "parity": (dict,)}
PART_ENTRY_TYPES = {"sha256": (str,), "size": (int,), "media_type": (str,), "role": (str,)}
QUANTIZATION_KEY_TYPES = {"method": (str,), "summary": (dict,)}
# Manifest key -> the model config section it repeats.
MODEL_SECTIONS = {"class_names": "class_names", "voxelization": "voxelization", "decode": "post_processing"}
JSON_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object", list: "a list", type(None): "null",
                   float: "a number", bool: "a boolean"}


def utc_now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def tool_versions() -> dict[str, str]:
    """Versions of the tools that made a bundle, for telling later why two bundles differ. Read from installed
    metadata: importing torch or onnxruntime just to ask its version would cost seconds."""
    versions = {"python": platform.python_version()}
    for tool, distribution in TOOL_DISTRIBUTIONS.items():
        try:
            versions[tool] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def check_part_name(name) -> str:
    """Refuse names that are not plain file names ('/', '..', absolute paths, hidden files) and the manifest's."""
    if isinstance(name, str) and name.lower() == MANIFEST_NAME:
        raise ValueError(f"part name {name!r} is reserved for the manifest")
    if not isinstance(name, str) or not PART_NAME_PATTERN.match(name):
        raise ValueError(
            f"part name {name!r} is not a plain file name (letters, digits, '.', '_', '-'; no '/', "
            "not starting with '.' or '-', at most 255 characters)"
        )
    return name


def _json_type(value) -> str:
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _check_type(what: str, value, types: tuple[type, ...]) -> None:
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        expected = " or ".join(JSON_TYPE_NAMES[t] for t in types)
        raise ValueError(f"{what} must be {expected}, got {_json_type(value)}")


def _check_keys(what: str, data: Mapping, key_types: Mapping, allow_unknown: bool = False) -> None:
    missing = [k for k in key_types if k not in data]
    if missing:
        raise ValueError(f"{what} is missing required keys {missing}")
    unknown = sorted(set(data) - set(key_types))
    if unknown and not allow_unknown:
        raise ValueError(f"{what} has unknown keys {unknown}; expected {list(key_types)}")
    for key, types in key_types.items():
        _check_type(f"{what} {key!r}", data[key], types)


def _check_format_version(version) -> None:
    if isinstance(version, int) and not isinstance(version, bool) and version in READABLE_FORMAT_VERSIONS:
        return
    readable = ", ".join(str(v) for v in READABLE_FORMAT_VERSIONS)
    newer = isinstance(version, int) and not isinstance(version, bool) and version > max(READABLE_FORMAT_VERSIONS)
    raise ValueError(
        f"unsupported format_version {version!r}{' (written by a newer lidar-ptq?)' if newer else ''}; "
        f"this lidar-ptq reads format_version {readable}"
    )


@dataclass(kw_only=True)
class BundleManifest:
    """The manifest, typed. from_dict validates a manifest read from a file; to_dict gives the JSON object written."""

    format: str = BUNDLE_FORMAT
    format_version: int = BUNDLE_FORMAT_VERSION
    created: str = field(default_factory=utc_now_iso)
    model: dict
    class_names: list[str]
    voxelization: dict
    decode: dict
    quantization: dict | None = None
    tools: dict[str, str] = field(default_factory=tool_versions)
    parts: dict[str, dict] = field(default_factory=dict)  # filled by write_bundle
    runtime: dict | None = None
    parity: dict | None = None

    @classmethod
    def for_model(cls, config: CenterPointConfig, quantization: Mapping | None = None) -> "BundleManifest":
        """The manifest of a bundle of `config`'s model; `quantization` is {"method", "summary"} or None (FP32)."""
        model = config.to_dict()
        return cls(
            model=model,
            **{key: copy.deepcopy(model[section]) for key, section in MODEL_SECTIONS.items()},
            quantization=None if quantization is None else copy.deepcopy(dict(quantization)),
        )

    @classmethod
    def from_dict(cls, data) -> "BundleManifest":
        if not isinstance(data, Mapping):
            raise ValueError(f"manifest must be a JSON object, got {_json_type(data)}")
        if "format" in data and data["format"] != BUNDLE_FORMAT:
            raise ValueError(f"unknown format {data['format']!r}; expected {BUNDLE_FORMAT!r}")
        if "format_version" in data:
            _check_format_version(data["format_version"])
        _check_keys("manifest", data, MANIFEST_KEY_TYPES, allow_unknown=True)
        unknown = sorted(set(data) - set(MANIFEST_KEY_TYPES) - set(OPTIONAL_MANIFEST_KEY_TYPES))
        if unknown:
            raise ValueError(f"manifest has unknown keys {unknown}; expected {list(MANIFEST_KEY_TYPES)} and "
                             f"optionally {list(OPTIONAL_MANIFEST_KEY_TYPES)}")
        for key, types in OPTIONAL_MANIFEST_KEY_TYPES.items():
            if key in data:
                _check_type(f"manifest {key!r}", data[key], types)
        try:
            datetime.datetime.fromisoformat(data["created"])
        except ValueError:
            raise ValueError(f"manifest 'created' is not an ISO 8601 time: {data['created']!r}") from None
        for i, name in enumerate(data["class_names"]):
            _check_type(f"manifest 'class_names'[{i}]", name, (str,))
        for tool, version in data["tools"].items():
            _check_type(f"manifest 'tools' {tool!r}", version, (str,))
        if data["quantization"] is not None:
            _check_keys("manifest 'quantization'", data["quantization"], QUANTIZATION_KEY_TYPES, allow_unknown=True)
        for name, entry in data["parts"].items():
            check_part_name(name)
            _check_type(f"manifest part {name!r}", entry, (dict,))
            _check_keys(f"manifest part {name!r}", entry, PART_ENTRY_TYPES)
            if not SHA256_PATTERN.match(entry["sha256"]):
                raise ValueError(f"manifest part {name!r} sha256 must be 64 lowercase hex digits")
            if entry["size"] < 0:
                raise ValueError(f"manifest part {name!r} size must be >= 0, got {entry['size']}")
        keys = [*MANIFEST_KEY_TYPES, *(key for key in OPTIONAL_MANIFEST_KEY_TYPES if key in data)]
        return cls(**{key: copy.deepcopy(data[key]) for key in keys})

    def to_dict(self) -> dict:
        """The JSON object; optional sections that are None are left out (a version 1 manifest reads back equal)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)
                if f.name in MANIFEST_KEY_TYPES or getattr(self, f.name) is not None}


def check_model_sections(manifest: BundleManifest) -> CenterPointConfig:
    """Parse the manifest's model config and check that the sections repeated beside it agree with it.

    Network-level checks plug in here once the export code exists: the weights in `encoder.safetensors` against the
    shapes the config builds, the ONNX graph inputs against the voxel grid and feature counts, the head outputs
    against the classes. Until then a bundle is checked as a container and as a config, not as a network.
    """
    try:
        config = CenterPointConfig.from_dict(manifest.model)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"the model config in the manifest does not parse: {exc}") from None
    model = config.to_dict()
    for key, section in MODEL_SECTIONS.items():
        if getattr(manifest, key) != model[section]:
            raise ValueError(
                f"manifest {key!r} disagrees with the model config's {section!r}: "
                f"{getattr(manifest, key)} vs {model[section]}"
            )
    return config


# -- writing ---------------------------------------------------------------------------------------------------------

def _draft_from_mapping(manifest: Mapping) -> dict:
    """A manifest given as a dict may leave out what the writer knows: format, version, time, tools, parts."""
    draft = copy.deepcopy(dict(manifest))
    draft.setdefault("format", BUNDLE_FORMAT)
    draft.setdefault("format_version", BUNDLE_FORMAT_VERSION)
    draft.setdefault("created", utc_now_iso())
    draft.setdefault("tools", tool_versions())
    draft.setdefault("parts", {})
    return draft


def _part_entry(name: str, data: bytes, declared: Mapping) -> dict:
    """sha256 and size from the bytes; media type and role as declared, else from the suffix and the stem."""
    media_type = declared.get("media_type") or PART_MEDIA_TYPES.get(Path(name).suffix.lower(), DEFAULT_MEDIA_TYPE)
    role = declared.get("role") or name.split(".")[0]
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "media_type": media_type, "role": role}


def _zip_time(created: str) -> tuple[int, int, int, int, int, int]:
    """Member timestamps are the manifest's creation time (UTC), so identical inputs give identical archives."""
    moment = datetime.datetime.fromisoformat(created)
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc)
    return max(moment, datetime.datetime(1980, 1, 1, tzinfo=moment.tzinfo)).timetuple()[:6]  # ZIP starts in 1980


def _write_member(archive: zipfile.ZipFile, name: str, data: bytes, compression: int, date_time) -> None:
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.compress_type = compression
    info.external_attr = 0o644 << 16  # rw-r--r-- when unpacked
    archive.writestr(info, data)


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (POSIX); best effort where a file system cannot sync a folder."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bundle(path: str | os.PathLike, manifest: BundleManifest | Mapping, parts: Mapping[str, bytes]) -> Path:
    """Write `parts` and their manifest to `path` as one bundle, atomically: a crash or an error leaves either the
    previous file or none, never half a bundle. The sha256 and size of every part are computed here; a part's
    media type and role come from `manifest.parts[name]` when given, else from its suffix and stem. Everything that
    read_bundle would refuse is refused here first, so a bundle that was written can always be read."""
    path = Path(path)
    draft = manifest.to_dict() if isinstance(manifest, BundleManifest) else _draft_from_mapping(manifest)
    declared = draft.get("parts") or {}
    for name, data in parts.items():
        check_part_name(name)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"part {name!r} must be bytes, got {type(data).__name__}")
    without_data = [name for name in declared if name not in parts]
    if without_data:
        raise ValueError(f"the manifest lists parts with no data: {without_data}")
    payloads = {name: bytes(data) for name, data in parts.items()}
    draft["parts"] = {name: _part_entry(name, data, declared.get(name, {})) for name, data in payloads.items()}
    final = BundleManifest.from_dict(draft)
    check_model_sections(final)

    manifest_bytes = (json.dumps(final.to_dict(), indent=1) + "\n").encode()
    date_time = _zip_time(final.created)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as stream:
            with zipfile.ZipFile(stream, "w") as archive:
                _write_member(archive, MANIFEST_NAME, manifest_bytes, zipfile.ZIP_STORED, date_time)
                for name, data in payloads.items():
                    deflate = final.parts[name]["media_type"] in DEFLATED_MEDIA_TYPES
                    _write_member(archive, name, data, zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED,
                                  date_time)
            stream.flush()
            os.fsync(stream.fileno())
    _fsync_directory(path.parent)
    return path


# -- reading ---------------------------------------------------------------------------------------------------------

def _open_archive(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise ValueError(f"{path}: not a lidar-ptq bundle: not a ZIP archive, or the file is truncated") from None


def _scan_member(path: Path, archive: zipfile.ZipFile, name: str, keep: bool) -> tuple[int, str, bytes | None]:
    """(size, sha256, bytes if `keep`) of one member, streamed so that verifying a large part holds none of it."""
    digest, size, chunks = hashlib.sha256(), 0, []
    try:
        with archive.open(name) as stream:
            while chunk := stream.read(READ_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                if keep:
                    chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        raise ValueError(f"{path}: part {name!r} is damaged or unreadable ({exc})") from None
    return size, digest.hexdigest(), b"".join(chunks) if keep else None


def _check_part(path: Path, name: str, entry: Mapping, size: int, sha256: str | None) -> None:
    if size != entry["size"]:
        raise ValueError(
            f"{path}: part {name!r} size mismatch: the manifest says {entry['size']} bytes, the archive holds {size}"
        )
    if sha256 is not None and sha256 != entry["sha256"]:
        raise ValueError(
            f"{path}: part {name!r} sha256 mismatch: the manifest says {entry['sha256'][:SHA256_SHOWN]}..., "
            f"the contents hash to {sha256[:SHA256_SHOWN]}..."
        )


def _read_manifest(path: Path, archive: zipfile.ZipFile) -> BundleManifest:
    try:
        raw = archive.read(MANIFEST_NAME)
    except KeyError:
        raise ValueError(f"{path}: no {MANIFEST_NAME} in the archive: not a lidar-ptq bundle") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        raise ValueError(f"{path}: {MANIFEST_NAME} is damaged or unreadable ({exc})") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path}: {MANIFEST_NAME} is not valid JSON ({exc})") from None
    try:
        return BundleManifest.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk: its manifest, its model config, and its parts read on demand. Every read checks the part's
    size and sha256 against the manifest, so damaged bytes never reach a runtime even if the file changed since."""

    path: Path
    manifest: BundleManifest
    config: CenterPointConfig

    @property
    def part_names(self) -> list[str]:
        return list(self.manifest.parts)

    def read_part(self, name: str) -> bytes:
        return self.read_parts([name])[name]

    def read_parts(self, names: list[str] | None = None) -> dict[str, bytes]:
        names = self.part_names if names is None else list(names)
        unknown = [n for n in names if n not in self.manifest.parts]
        if unknown:
            raise ValueError(f"{self.path}: no part named {unknown[0]!r}; the bundle holds {self.part_names}")
        out = {}
        with _open_archive(self.path) as archive:
            for name in names:
                if name not in archive.NameToInfo:
                    raise ValueError(f"{self.path}: part {name!r} is missing from the archive")
                size, sha256, data = _scan_member(self.path, archive, name, keep=True)
                _check_part(self.path, name, self.manifest.parts[name], size, sha256)
                out[name] = data
        return out


def read_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Open a bundle and check it: the container, the manifest, the model config, the parts' listing and sizes, and
    with `verify` every part's sha256 (streamed, nothing kept). Parts are read later with Bundle.read_part(s).
    Any problem is one ValueError naming the file and what is wrong (FileNotFoundError when there is no file).
    Network-level checks (config against weights and graphs) will hook in through check_model_sections."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bundle not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    with _open_archive(path) as archive:
        members = archive.namelist()
        repeated = sorted(name for name, count in collections.Counter(members).items() if count > 1)
        if repeated:
            raise ValueError(f"{path}: the archive holds {repeated} more than once")
        manifest = _read_manifest(path, archive)
        try:
            config = check_model_sections(manifest)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        present = set(members) - {MANIFEST_NAME}
        missing = [name for name in manifest.parts if name not in present]
        if missing:
            raise ValueError(f"{path}: parts listed in the manifest are missing from the archive: {missing}")
        unlisted = sorted(present - set(manifest.parts))
        if unlisted:
            raise ValueError(f"{path}: archive members not listed in the manifest: {unlisted}")
        for name, entry in manifest.parts.items():
            _check_part(path, name, entry, archive.getinfo(name).file_size, None)  # sizes from the directory: free
            if verify:
                size, sha256, _ = _scan_member(path, archive, name, keep=False)
                _check_part(path, name, entry, size, sha256)
    return Bundle(path=path, manifest=manifest, config=config)
