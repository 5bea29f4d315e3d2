#!/usr/bin/env python
"""Pictures of the PTQ benchmark: mAP of every method beside FP32 for each sim model (docs/ptq_accuracy.png), and the
per-layer sensitivity of the LiDAR-PTQ report (docs/ptq_sensitivity_<model>.png). Reads docs/benchmarks/ only.

    ./dev run python benchmarks/plot_ptq.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lidar_ptq_core.benchmarking import file_stem, read_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "docs" / "benchmarks"
MODELS = ("sim_pillar", "sim_voxel")
# The row of each committed INT8 checkpoint (today's lidar-ptq preset), kept in the results file of the run that made
# it; the main file's own "lidar-ptq" row is the preset of the morning of 2026-11-30 (one input scale per tensor, no
# channel equalization) and is shown under that name.
COMMITTED_ROW = {model: (f"ptq_{model}_{'tgpl' if model == 'sim_pillar' else 'eq'}.jsonl",
                         "lidar-ptq:equalization_alpha=0.3") for model in MODELS}
EARLY_PRESET = "lidar-ptq, no equalization"


def committed_stem(model: str) -> str:
    """The file stem of the committed checkpoint's report and evaluation (named as ptq_accuracy.py names them)."""
    return file_stem(COMMITTED_ROW[model][1])


def read_rows(model: str) -> list[dict]:
    rows = read_jsonl(BENCH / f"ptq_{model}.jsonl")
    name, method = COMMITTED_ROW[model]
    committed = next((r for r in read_jsonl(BENCH / name) if r["method"] == method), None)
    if committed is not None:
        rows = [dict(r, method=EARLY_PRESET) if r["method"] == "lidar-ptq" else r for r in rows]
        rows.append(dict(committed, method="lidar-ptq"))
    qat = BENCH / f"qat_{model}.json"
    if qat.is_file():
        rows.append(json.loads(qat.read_text())["row"])
    return rows


def plot_accuracy(out: Path) -> None:
    fig, axes = plt.subplots(1, len(MODELS), figsize=(13, 4.8), sharey=True)
    for ax, model in zip(axes, MODELS):
        rows = read_rows(model)
        if not rows:
            ax.set_title(f"{model}: no results yet")
            continue
        fp32 = next((r for r in rows if r["method"] == "fp32"), None)
        names = [r["method"] for r in rows]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [100 * r["mAP"] for r in rows], 0.4, label="centre-distance mAP",
               color=["#888" if n == "fp32" else "#2a7" if n == "lidar-ptq" else "#49c" for n in names])
        ax.bar([i + 0.2 for i in x], [100 * r["mAP_by_range"].get("50m+", float("nan")) for r in rows], 0.4,
               label="mAP 50 m+", color="#dca", edgecolor="#a97")
        if fp32:
            for i, row in enumerate(rows):  # the difference to FP32 is what matters: write it on the bar
                if row["method"] != "fp32":
                    ax.text(i - 0.2, 100 * row["mAP"] + 1, f"{100 * (row['mAP'] - fp32['mAP']):+.1f}", ha="center",
                            fontsize=7)
            ax.axhline(100 * fp32["mAP"], color="#444", lw=0.8, ls="--")
            ax.axhline(100 * fp32["mAP"] - 0.5, color="#c44", lw=0.8, ls=":", label="FP32 - 0.5")
        ax.set_xticks(list(x), names, rotation=40, ha="right")
        ax.set_title(f"{model}: every layer INT8, 500 sim val frames")
        ax.set_ylim(0, 85)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("AP (%)")
    axes[-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def read_sensitivity(report_txt: Path) -> list[tuple[str, float]]:
    """(layer, output MSE with only that layer INT8) from a quantization report's table."""
    out = []
    lines = report_txt.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    for line in lines[start + 1:]:
        parts = line.split()
        if len(parts) >= 7 and parts[-1] != "-":
            out.append((parts[0], float(parts[-1])))
    return out


def plot_sensitivity(model: str, out: Path) -> bool:
    report = BENCH / f"ptq_{model}_{committed_stem(model)}_report.txt"
    if not report.is_file():
        report = BENCH / f"ptq_{model}_lidar-ptq_report.txt"
    if not report.is_file():
        return False
    layers = read_sensitivity(report)
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(layers) + 1.2))
    ax.barh(range(len(layers)), [v for _, v in layers], color="#49c")
    ax.set_yticks(range(len(layers)), [n for n, _ in layers], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("network output MSE with only this layer INT8 (log scale)")
    ax.set_title(f"{model}: per-layer sensitivity after LiDAR-PTQ")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def markdown_table(model: str) -> str:
    """The summary table of docs/BENCHMARKS.md for one model, from the benchmark's rows (and the peers')."""
    rows = read_rows(model)
    peers = BENCH / f"peers_{model}.jsonl"
    if peers.is_file():
        rows += [r for r in read_jsonl(peers) if r["method"] != "fp32"]
    fp32 = next((r for r in rows if r["method"] == "fp32"), None)
    lines = ["| method | mAP | vs FP32 | BEV IoU mAP | 0-30 m | 30-50 m | 50 m+ | calib frames | quant time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = "" if fp32 is None or r is fp32 else f"{100 * (r['mAP'] - fp32['mAP']):+.1f}"
        by_range = r["mAP_by_range"]
        bold = "**" if r["method"] == "lidar-ptq" else ""
        lines.append(f"| {bold}{r['method']}{bold} | {bold}{100 * r['mAP']:.1f}{bold} | {delta} | "
                     f"{100 * r['bev_iou_mAP']:.1f} | "
                     + " | ".join(f"{100 * by_range[k]:.1f}" for k in ("0-30m", "30-50m", "50m+"))
                     + f" | {r['calib_frames']} | {r['quant_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown instead of plotting")
    if parser.parse_args().markdown:
        for model in MODELS:
            print(f"\n{model}\n\n{markdown_table(model)}")
        return 0
    plot_accuracy(REPO / "docs" / "ptq_accuracy.png")
    print(f"wrote {REPO / 'docs' / 'ptq_accuracy.png'}")
    for model in MODELS:
        path = REPO / "docs" / f"ptq_sensitivity_{model}.png"
        if plot_sensitivity(model, path):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
