"""The training loop for CenterPoint on the synthetic benchmark: deterministic, checkpointed, resumable.

A run lives in one output folder:
  train_state.pt        model + optimizer + scheduler + step, saved every `checkpoint_every` steps (atomic);
                        loaded with torch.load(weights_only=True), so no pickle code runs on resume
  log.jsonl             one line per logged step (losses, learning rate, seconds per step)
  model.safetensors     the final FP32 weights + model.yaml, written by the checkpoint module when training ends
The data order depends only on the seed and the step, so an interrupted run resumes where it stopped and ends with the
same weights it would have reached without the interruption (up to floating-point non-determinism of the kernels).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..config_files import build_config
from ..detections import GroundTruth
from ..io_utils import atomic_path
from ..voxelize import voxelize_clouds
from .augment import AugmentConfig, augment_scene
from .losses import gather_at_index, heatmap_focal_loss, regression_l1_loss
from .targets import build_task_targets

BOX_HEADS = ("center", "center_z", "dim", "rot")  # concatenated in this order = the 8-dim regression target


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 6000
    batch_size: int = 2
    lr: float = 3e-3
    weight_decay: float = 0.01
    pct_start: float = 0.4  # one-cycle warm-up fraction
    div_factor: float = 10.0
    grad_clip: float = 10.0
    checkpoint_every: int = 200
    log_every: int = 20
    seed: int = 0
    cls_weight: float = 1.0
    loc_weight: float = 2.0
    code_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    max_objects: int = 256
    min_radius: int = 2
    gaussian_overlap: float = 0.1
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return build_config(cls, data, label="training config")


def frame_targets(model_config, points: np.ndarray, gt: GroundTruth, train: TrainConfig, rng) -> tuple:
    """One training sample: the augmented points and the per-task targets of the detectable boxes."""
    keep = ~gt.ignore  # boxes with too few points are left out of the targets: they cannot be learned from
    boxes, names = gt.boxes[keep], [gt.class_names[i] for i in gt.labels[keep]]
    points, boxes = augment_scene(points[:, : model_config.num_point_features], boxes, train.augment, rng)
    geometry = model_config.head_geometry()
    class_index = {name: i for i, name in enumerate(geometry.class_names)}
    labels = np.array([class_index.get(n, -1) for n in names], np.int64)
    targets = []
    for task in geometry.task_class_names:
        targets.append(
            build_task_targets(
                boxes,
                labels,
                [class_index[n] for n in task],
                geometry,
                max_objects=train.max_objects,
                min_radius=train.min_radius,
                min_overlap=train.gaussian_overlap,
                rot_order=model_config.post_processing.rot_order,
            )
        )
    return points, targets


def collate_targets(per_frame: Sequence[list[dict]]) -> list[dict[str, torch.Tensor]]:
    tasks = len(per_frame[0])
    return [
        {key: torch.from_numpy(np.stack([frame[t][key] for frame in per_frame])) for key in per_frame[0][t]}
        for t in range(tasks)
    ]


def centerpoint_loss(outputs: list[dict], targets: list[dict], train: TrainConfig) -> tuple[torch.Tensor, dict]:
    code_weights = torch.tensor(train.code_weights, dtype=torch.float32)
    total = torch.zeros(())
    parts = {}
    for t, (out, tgt) in enumerate(zip(outputs, targets)):
        hm_loss = heatmap_focal_loss(out["hm"], tgt["heatmap"])
        pred = torch.cat([gather_at_index(out[name], tgt["index"]) for name in BOX_HEADS], dim=-1)
        loc_loss = regression_l1_loss(pred, tgt["reg"], tgt["mask"], code_weights)
        total = total + train.cls_weight * hm_loss + train.loc_weight * loc_loss
        parts[f"hm{t}"] = float(hm_loss.detach())
        parts[f"loc{t}"] = float(loc_loss.detach())
    return total, parts


def train(
    model: torch.nn.Module,
    dataset,
    train_config: TrainConfig,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> Path:
    """Train `model` (a CenterPoint) on `dataset` (indexable: item -> object with .points and .gt).
    Returns the path of the final training state; the caller exports weights from the model."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / "train_state.pt"
    model_config = model.config
    torch.manual_seed(train_config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=train_config.lr,
        total_steps=train_config.steps,
        pct_start=train_config.pct_start,
        div_factor=train_config.div_factor,
        cycle_momentum=False,
    )
    step = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("train_config") != _config_record(train_config):
            raise ValueError(f"{state_path} was written with another training config; use a new output folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        _drop_log_after(out_dir / "log.jsonl", step)
    if step >= train_config.steps:
        return state_path

    model.train()
    bar = tqdm(total=train_config.steps, initial=step, desc="train", disable=not progress, dynamic_ncols=True)
    log = (out_dir / "log.jsonl").open("a")
    t0 = time.perf_counter()
    while step < train_config.steps:
        indices = _batch_indices(len(dataset), train_config.batch_size, train_config.seed, step)
        rng = np.random.default_rng([train_config.seed, step])
        samples = [dataset[int(i)] for i in indices]
        prepared = [frame_targets(model_config, s.points, s.gt, train_config, rng) for s in samples]
        batch, _ = voxelize_clouds([p[0] for p in prepared], model_config.voxelization,
                                   model_config.num_point_features)
        targets = collate_targets([p[1] for p in prepared])
        outputs = model(batch)
        loss, parts = centerpoint_loss(outputs, targets, train_config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if step % train_config.log_every == 0 or step == train_config.steps:
            record = {"step": step, "loss": float(loss.detach()), "grad_norm": float(grad_norm),
                      "lr": scheduler.get_last_lr()[0], "sec": round(time.perf_counter() - t0, 1), **parts}
            log.write(json.dumps(record) + "\n")
            log.flush()
        if step % train_config.checkpoint_every == 0 or step == train_config.steps:
            _save_state(state_path, model, optimizer, scheduler, step, train_config)
            if on_checkpoint:
                on_checkpoint(step)
    bar.close()
    log.close()
    return state_path


def _batch_indices(num_frames: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Frames of `step`: epochs are seeded permutations, so the order is a pure function of (seed, step)."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_frames)
        perm = np.random.default_rng([seed, 7919, epoch]).permutation(num_frames)
        out.extend(perm[offset : offset + batch_size - len(out)])
    return np.array(out)


def _drop_log_after(log_path: Path, step: int) -> None:
    """Forget log lines of steps after the checkpoint being resumed: they are about to be run again."""
    if not log_path.exists():
        return
    lines = log_path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        with atomic_path(log_path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))


def _config_record(train_config: TrainConfig) -> str:
    return json.dumps(asdict(train_config), sort_keys=True)


def _save_state(path, model, optimizer, scheduler, step, train_config) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "train_config": _config_record(train_config),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
