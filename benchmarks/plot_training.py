#!/usr/bin/env python
"""Plot training curves (loss parts and learning rate) from one or more runs' log.jsonl into a PNG.

    ./dev run python benchmarks/plot_training.py docs/training/sim_pillar_log.jsonl docs/training/sim_voxel_log.jsonl \
        --out docs/training_curves.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lidar_ptq_core.io_utils import atomic_path  # noqa: E402


def read_log(run: Path) -> list[dict]:
    path = run / "log.jsonl" if run.is_dir() else run
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or log.jsonl files)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fig, (ax_loss, ax_parts, ax_lr) = plt.subplots(1, 3, figsize=(16, 4.5))
    for run in args.runs:
        log = read_log(run)
        name = run.name if run.is_dir() else run.stem.removesuffix("_log")
        steps = [r["step"] for r in log]
        ax_loss.plot(steps, [r["loss"] for r in log], label=name, alpha=0.8)
        for key in sorted(k for k in log[0] if k.startswith(("hm", "loc"))):
            ax_parts.plot(steps, [r[key] for r in log], label=f"{name} {key}", alpha=0.8)
        ax_lr.plot(steps, [r["lr"] for r in log], label=name)
    titles = ((ax_loss, "total loss"), (ax_parts, "heatmap focal (hm) / box L1 (loc)"), (ax_lr, "learning rate"))
    for ax, title in titles:
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_yscale("log")
    ax_parts.set_yscale("log")
    fig.tight_layout()
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
