"""Named splits of simulated frames, generated on demand and cached on disk.

Each split draws its seeds from its own range, so train, val, calib and test never share a scene:
frame i of a split has seed SPLIT_SEED_OFFSETS[split] + i, and each range is FRAMES_PER_SPLIT seeds wide.

What each split is for:
  train  training the FP32 models;
  val    every choice: presets, settings, which stages stay, which rows get committed;
  calib  calibration frames, and held-out calibration frames for checks inside a recipe;
  test   headline figures only (README, docs/BENCHMARKS.md), computed once per committed checkpoint. Never use it
         to choose anything: a setting picked by its test score makes the test figures as optimistic as val's.

Cache layout: <root>/sim/<config fingerprint>/<split>/<index>.npz, root = $LIDAR_PTQ_CACHE or ~/.cache/lidar_ptq.
The fingerprint hashes every config value and the generator version, so a changed config never returns stale
frames. Files are written atomically: a crash leaves either a complete frame or none. A 64-beam frame takes about
2 MB (points are kept as float32, uncompressed, because they are what quantization is measured on).
"""

from __future__ import annotations

import multiprocessing
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from ..detections import GroundTruth
from ..io_utils import atomic_path, default_cache_root, write_bytes_atomic
from .config import SimConfig
from .frame import SimFrame, generate_frame
from .scene import CLASS_NAMES

SPLIT_SEED_OFFSETS = {"train": 0, "val": 1_000_000, "calib": 2_000_000, "test": 3_000_000}
FRAMES_PER_SPLIT = 1_000_000  # seed ranges never overlap


def split_seed(split: str, index: int) -> int:
    if split not in SPLIT_SEED_OFFSETS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLIT_SEED_OFFSETS)}")
    if not 0 <= index < FRAMES_PER_SPLIT:
        raise ValueError(f"frame index {index} outside 0..{FRAMES_PER_SPLIT - 1}")
    return SPLIT_SEED_OFFSETS[split] + index


def split_frame_id(split: str, index: int) -> str:
    split_seed(split, index)  # validates
    return f"{split}_{index:06d}"


def save_frame(path, frame: SimFrame, fingerprint: str = "") -> None:
    gt = frame.gt
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f, frame_id=np.array(frame.frame_id), fingerprint=np.array(fingerprint), points=frame.points,
            boxes=gt.boxes, labels=gt.labels, num_points=gt.num_points, ignore=gt.ignore,
        )


def load_frame(path, fingerprint: str | None = None) -> SimFrame:
    """Read a cached frame; ValueError if it is unreadable or was made with another config."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if fingerprint is not None and str(data["fingerprint"]) != fingerprint:
                raise ValueError(f"{path}: made with another simulator config")
            gt = GroundTruth(data["boxes"], data["labels"], CLASS_NAMES, data["num_points"], data["ignore"])
            points = data["points"]
            if points.dtype != np.float32 or points.ndim != 2 or points.shape[1] != 4:
                raise ValueError(f"{path}: points are not (N, 4) float32")
            return SimFrame(str(data["frame_id"]), points, gt)
    except (zipfile.BadZipFile, KeyError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable cached frame ({exc})") from None


class SimDataset:
    """Frames start .. start + num_frames - 1 of one split: len(), [i] -> SimFrame, iteration.

    Frames are generated when first asked for and cached (unless cache=False); `prepare` makes all missing frames
    up front, optionally in worker processes. `generated` counts frames this object had to simulate.
    """

    def __init__(self, split: str, num_frames: int, config: SimConfig | None = None, *, start: int = 0,
                 cache: bool = True, cache_dir: str | os.PathLike | None = None):
        if num_frames < 0:
            raise ValueError("num_frames must be >= 0")
        split_seed(split, start)
        if num_frames:
            split_seed(split, start + num_frames - 1)
        self.split, self.start, self.num_frames = split, start, num_frames
        self.config = config if config is not None else SimConfig()
        self.fingerprint = self.config.fingerprint()
        root = Path(cache_dir) if cache_dir is not None else default_cache_root()
        self.cache_dir = root / "sim" / self.fingerprint / split if cache else None
        self.generated = 0

    def __len__(self) -> int:
        return self.num_frames

    def _index(self, i: int) -> int:
        if not -self.num_frames <= i < self.num_frames:
            raise IndexError(f"frame {i} out of range for {self.num_frames} frames")
        return self.start + (i % self.num_frames)

    def seed(self, i: int) -> int:
        return split_seed(self.split, self._index(i))

    def frame_id(self, i: int) -> str:
        return split_frame_id(self.split, self._index(i))

    def frame_path(self, i: int) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{self._index(i):06d}.npz"

    def __getitem__(self, i: int) -> SimFrame:
        path = self.frame_path(i)
        if path is not None and path.exists():
            try:
                return load_frame(path, self.fingerprint)
            except (ValueError, FileNotFoundError):
                pass  # damaged, foreign or just removed: make it again
        frame = generate_frame(self.config, self.seed(i), self.frame_id(i))
        self.generated += 1
        if path is not None:
            self._write_config_note()
            save_frame(path, frame, self.fingerprint)
        return frame

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def missing(self) -> list[int]:
        """Indices (0-based, into this dataset) of frames not in the cache yet."""
        if self.cache_dir is None:
            return list(range(len(self)))
        return [i for i in range(len(self)) if not self.frame_path(i).exists()]

    def prepare(self, num_workers: int = 0, progress: bool = True) -> int:
        """Generate every frame missing from the cache; returns how many were made. No-op without a cache."""
        if self.cache_dir is None:
            return 0
        todo = self.missing()
        if not todo:
            return 0
        self._write_config_note()
        jobs = [(self.config, self.seed(i), self.frame_id(i), str(self.frame_path(i)), self.fingerprint) for i in todo]
        bar = tqdm(total=len(jobs), desc=f"sim {self.split}", unit="frame", disable=not progress)
        try:
            if num_workers > 1 and len(jobs) > 1:
                # The platform's default start method (fork on Linux, like torch's DataLoader): spawn would re-run
                # the caller's main module in every worker, which breaks scripts without a __main__ guard.
                with multiprocessing.get_context().Pool(min(num_workers, len(jobs))) as pool:
                    for _ in pool.imap_unordered(_make_and_store, jobs):
                        bar.update()
            else:
                for job in jobs:
                    _make_and_store(job)
                    bar.update()
        finally:
            bar.close()
        self.generated += len(jobs)
        return len(jobs)

    def _write_config_note(self) -> None:
        """A human-readable copy of the config beside the frames, so a cache folder explains itself."""
        note = self.cache_dir.parent / "config.yaml"
        if not note.exists():
            write_bytes_atomic(note, yaml.safe_dump(_plain(self.config.to_dict()), sort_keys=False).encode())


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _make_and_store(job) -> None:
    config, seed, frame_id, path, fingerprint = job
    save_frame(path, generate_frame(config, seed, frame_id), fingerprint)


def generation_time(config: SimConfig, seeds) -> float:
    """Mean seconds to generate one frame over `seeds` (no cache involved)."""
    seeds = list(seeds)
    started = time.perf_counter()
    for seed in seeds:
        generate_frame(config, seed)
    return (time.perf_counter() - started) / max(len(seeds), 1)
