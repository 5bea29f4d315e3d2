"""Small file helpers: every file the tool writes goes through an atomic replace so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
CACHE_ENV = "LIDAR_PTQ_CACHE"


def default_cache_root() -> Path:
    """Where generated data and built engines are cached: $LIDAR_PTQ_CACHE, else ~/.cache/lidar_ptq."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lidar_ptq").expanduser()


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path, obj, indent: int | None = 1) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=indent) + "\n").encode())


def json_ready(obj):
    """A JSON-writable copy: NaN -> None (JSON has no NaN), numpy scalars -> Python numbers, tuples -> lists, keys as
    strings; recursively."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_text_and_json(stem, text: str, obj) -> tuple[Path, Path]:
    """A benchmark's output pair STEM.txt (the text and a newline) and STEM.json, each written atomically, folders made
    as needed."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    txt, js = stem.with_suffix(".txt"), stem.with_suffix(".json")
    write_bytes_atomic(txt, (text + "\n").encode())
    write_json_atomic(js, obj)
    return txt, js


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB pieces."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()
