"""The work folder of a quantization (`quantize(..., work_dir=)`): the state after every stage, so that a stopped run
resumes where it stopped and a rerun that changes only later settings resumes after the stages they do not touch.

Each stage has a fingerprint: a SHA-256 chained from a hash of every byte of the FP32 weights, of the calibration
data and of the target's description, through each stage's name and settings (quant/stages.py STAGE_SETTINGS) up to
that stage. Files, each self-contained (its safetensors metadata holds the stages done, their fingerprints, the report
and the RNG state at that point):
  state.safetensors          after the last stage done
  state_<stage>.safetensors  after each stage but the reconstruction blocks (the FP32 reference weights are
                             state_calibration's)
  progress.json              the same record as state.safetensors's, for people
A rerun restores the file that reaches furthest with fingerprints equal to its own, and says so in one line.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..io_utils import atomic_path, write_json_atomic
from .stages import FP32_REFERENCE_STAGE, QuantRun, Stage

WORK_FORMAT = "lidar-ptq-quant-work/2"  # /1 (unversioned): first 4096 bytes of each tensor hashed; refused


def _hash_value(digest, value) -> None:
    """Every byte of tensors and arrays (with dtype and shape), in a nested batch (dicts in key order)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous()
        digest.update(f"tensor {value.dtype} {tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())  # 1-D: 0-dim tensors too
    elif isinstance(value, np.ndarray):
        digest.update(f"array {value.dtype} {value.shape};".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            digest.update(f"{key!r}:".encode())
            _hash_value(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"list {len(value)};".encode())
        for item in value:
            _hash_value(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def _describe_target(target) -> str:
    """What the target says about the model, beside its code: blocks, layers, pairs, residual add types."""
    return json.dumps({
        "fold_pairs": [list(p) for p in target.fold_pairs],
        "add_types": [f"{t.__module__}.{t.__qualname__}" for t in target.add_types],
        "first_layers": list(target.first_layers),
        "blocks": list(target.blocks),
        "equalization_pairs": [repr(p) for p in target.equalization_pairs],
        "task_hook": type(target.task_hook).__qualname__ if target.task_hook is not None else None,
    }, sort_keys=True)


def fingerprints(model: nn.Module, batches, target, config, stages: list[Stage]) -> dict[str, str]:
    """Stage name -> SHA-256 (hex) of the FP32 model, the data, the target and the settings of that stage and all
    before it."""
    base = hashlib.sha256(WORK_FORMAT.encode())
    for key, value in model.state_dict().items():
        base.update(f"{key}:".encode())
        _hash_value(base, value)
    base.update(b"calibration batches:")
    _hash_value(base, list(batches))
    base.update(_describe_target(target).encode())
    settings = config.to_dict()
    chain, result = base.hexdigest(), {}
    for stage in stages:
        link = {"previous": chain, "stage": stage.name, "settings": {k: settings[k] for k in stage.settings}}
        chain = hashlib.sha256(json.dumps(link, sort_keys=True, default=str).encode()).hexdigest()
        result[stage.name] = chain
    return result


def _describe_stages(names: list[str], stages: list[Stage]) -> str:
    """'calibration, grid_search, adaround (2 of 13 blocks)': the reconstruction blocks counted, not listed."""
    kind = {s.name: s.kind for s in stages}
    blocks_done = [n for n in names if kind[n] == "adaround"]
    blocks = sum(1 for s in stages if s.kind == "adaround")
    parts = [name for name in names if kind[name] != "adaround"]
    if blocks_done:
        parts.insert(names.index(blocks_done[0]), f"adaround ({len(blocks_done)} of {blocks} blocks)")
    return ", ".join(parts)


class WorkFolder:
    """Saves the state after each stage (nothing without a folder) and restores a rerun's finished stages."""

    def __init__(self, folder: str | Path | None, fingerprints: dict[str, str], log: Callable[[str], None]):
        self.dir = Path(folder) if folder else None
        self.fingerprints = fingerprints
        self.log = log
        self.done: list[str] = []
        self.resumed = ""  # the line said on resuming, also kept in the report

    # -- restore

    def _candidates(self) -> list[Path]:
        return [self.dir / "state.safetensors", *sorted(self.dir.glob("state_*.safetensors"))]

    def _read(self, path: Path) -> dict | None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata() or {}
        except Exception:  # a damaged or foreign file is not a saved stage
            return None
        return metadata

    def _valid_stages(self, metadata: dict, stages: list[Stage]) -> int:
        """How many stages of this run the file holds (0 when it belongs to other weights, data or settings)."""
        done = json.loads(metadata.get("done", "[]"))
        saved = json.loads(metadata.get("fingerprints", "{}"))
        names = [s.name for s in stages]
        if done != names[: len(done)] or any(saved.get(n) != self.fingerprints[n] for n in done):
            return 0
        return len(done)

    def restore(self, run: QuantRun, stages: list[Stage]) -> list[str]:
        """Load the furthest valid state into run (model, report, RNG, FP32 reference weights); the stages done."""
        if self.dir is None or not self.dir.is_dir():
            return []
        best, best_path, older = None, None, False
        for path in self._candidates():
            if not path.is_file():
                continue
            metadata = self._read(path)
            if metadata is None:
                continue
            if metadata.get("format") != WORK_FORMAT:
                older = True
                continue
            count = self._valid_stages(metadata, stages)
            if count and (best is None or count > len(json.loads(best["done"]))):
                best, best_path = metadata, path
        if best is not None and FP32_REFERENCE_STAGE in json.loads(best["done"]):
            reference = self.dir / f"state_{FP32_REFERENCE_STAGE}.safetensors"
            meta = self._read(reference) if reference.is_file() else None
            if meta is None or meta.get("format") != WORK_FORMAT or not self._valid_stages(meta, stages):
                best = None  # without the FP32 reference weights the remaining stages cannot match a fresh run
        if best is None:
            if any(p.is_file() for p in self._candidates()):
                why = ("was made by an older version (another resume format)" if older else
                       "holds stages of other FP32 weights, calibration data or settings")
                self.log(f"work folder {self.dir} {why}: starting over")
            return []
        from safetensors.torch import load_file

        run.model.load_state_dict(load_file(str(best_path)), strict=True)
        run.fp32_state = load_file(str(self.dir / f"state_{FP32_REFERENCE_STAGE}.safetensors"))
        report = json.loads(best["report"])
        for key in ("layers", "stages", "sensitivity"):
            getattr(run.report, key).clear()
            getattr(run.report, key).update(report.get(key, {}))
        run.report.equalization_max_abs_error = report.get("equalization_max_abs_error", 0.0)
        torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(best["rng"])), dtype=torch.uint8))
        self.done = json.loads(best["done"])
        names = [s.name for s in stages]
        what = _describe_stages(self.done, stages)
        if len(self.done) == len(names):
            self.resumed = f"resuming from {self.dir}: every stage done ({what}); nothing to run"
        else:
            self.resumed = f"resuming from {self.dir}: {what} done; starting at {names[len(self.done)]}"
        self.log(self.resumed)
        return list(self.done)

    # -- save

    def save(self, run: QuantRun, stage: Stage) -> None:
        self.done.append(stage.name)
        if self.dir is None:
            return
        from safetensors.torch import save_file

        record = {"format": WORK_FORMAT, "done": self.done,
                  "fingerprints": {n: self.fingerprints[n] for n in self.done}, "report": run.report.to_dict()}
        metadata = {"format": WORK_FORMAT, "done": json.dumps(record["done"]),
                    "fingerprints": json.dumps(record["fingerprints"]),
                    "report": json.dumps(record["report"], default=str),
                    "rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
        state = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
        self.dir.mkdir(parents=True, exist_ok=True)
        names = ["state.safetensors"] + ([f"state_{stage.name}.safetensors"] if stage.snapshot else [])
        for name in names:
            with atomic_path(self.dir / name) as tmp:
                save_file(state, str(tmp), metadata=metadata)
        write_json_atomic(self.dir / "progress.json", record)
