"""`lidar-ptq train`: train a CenterPoint on the synthetic benchmark; resumable, checkpointed, logged."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from ..config_files import load_yaml, resolve_config


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="sim_pillar", help="model config name (config/models) or YAML path")
    parser.add_argument("--train-config", default=None, help="training config name (config/train) or YAML; "
                        "default: the one named like the model")
    parser.add_argument("--sim", default="default", help="simulator config (config/sim)")
    parser.add_argument("--frames", type=int, default=None, help="distinct training frames (default: from the config)")
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--out", required=True, help="run folder (resumed if it holds a train_state.pt)")
    parser.add_argument("--export", default=None, help="also copy the final weights to this .safetensors path")
    parser.add_argument("--workers", type=int, default=2, help="processes for generating missing sim frames")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run folder")


def run(args) -> int:
    from ..models.centerpoint import build_centerpoint
    from ..models.checkpoint import save_checkpoint
    from ..models.config import load_model_config
    from ..sim import SimDataset, load_sim_config
    from ..training.train import TrainConfig, train

    torch.set_num_threads(args.threads)
    model_path = resolve_config(args.model, "models")
    train_data = load_yaml(resolve_config(args.train_config or model_path.stem, "train"))
    num_frames = int(args.frames or train_data.pop("frames", 2000))
    train_data.pop("frames", None)
    if args.steps:
        train_data["steps"] = args.steps
    train_config = TrainConfig.from_dict(train_data)
    out = Path(args.out)
    if args.no_resume and (out / "train_state.pt").exists():
        raise ValueError(f"{out} already holds a run; choose another --out or drop --no-resume")

    dataset = SimDataset("train", num_frames, load_sim_config(args.sim))
    dataset.prepare(num_workers=args.workers)
    model = build_centerpoint(load_model_config(model_path))
    start = time.time()
    train(model, dataset, train_config, out)
    final = save_checkpoint(model, out / "model.safetensors")
    print(f"training at step {train_config.steps} of {train_config.steps} ({num_frames} frames); this invocation took "
          f"{time.time() - start:.0f} s -> {final}")
    if args.export:
        Path(args.export).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final, args.export)
        print(f"exported {args.export}")
    return 0
