#!/usr/bin/env python
"""Where TGPL ended in each run: its recorded training loss at the first and last step, from a quantized
checkpoint's report (its metadata) or a work folder's progress.json (a run that has not finished).

TGPL's end state on the sim pillar model depends on the order of float sums (docs/QUANTIZATION.md, "Why the full
preset does not hold reliably"): the same calibration and grid search start every run at the same loss, and the
last step's loss then lands far apart. This prints those recorded numbers side by side; nothing is recomputed.

    ./dev run python benchmarks/tgpl_end_state.py OLD.safetensors runs/repro/sim_pillar_int8.work \\
        --labels "committed until 2026-12-04" "rerun, 2 threads" --out docs/benchmarks/tgpl_draw/tgpl_end_state.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lidar_ptq_core.io_utils import write_bytes_atomic
from lidar_ptq_core.models.checkpoint import read_checkpoint_metadata


def recorded_report(source: Path) -> dict:
    """The quantization report a checkpoint or a work folder recorded."""
    if source.is_dir():
        progress = source / "progress.json"
        if not progress.is_file():
            raise ValueError(f"{source}: a work folder has a progress.json; this one has none")
        return json.loads(progress.read_text())["report"]
    report = read_checkpoint_metadata(source).get("report")
    if not report:
        raise ValueError(f"{source}: no quantization report in its metadata (an FP32 checkpoint?)")
    return json.loads(report)


def tgpl_line(label: str, report: dict) -> str:
    provenance = report.get("provenance") or {}
    threads = provenance.get("threads", "not recorded")
    tgpl = (report.get("stages") or {}).get("tgpl")
    if not tgpl:
        return f"{label:<32} threads {threads!s:<13} no TGPL stage recorded"
    check = ""
    if "check_loss_before" in tgpl:
        check = f"   held-out check {tgpl['check_loss_before']:.4f} -> {tgpl['check_loss_after']:.4f}"
    return (f"{label:<32} threads {threads!s:<13} steps {tgpl.get('steps', '?'):>4}   loss first "
            f"{tgpl['loss_first']:.4f}   last {tgpl['loss_last']:.4f}{check}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, help="quantized .safetensors files or work folders")
    parser.add_argument("--labels", nargs="+", default=None, help="one name per source (default: the paths)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    labels = args.labels or [str(s) for s in args.sources]
    if len(labels) != len(args.sources):
        raise SystemExit(f"{len(args.sources)} sources but {len(labels)} labels")
    lines = ["TGPL's recorded training loss (the task loss at the final output on that step's calibration frame), "
             "first and last of its steps; from each run's own report"]
    for label, source in zip(labels, args.sources):
        lines.append(tgpl_line(label, recorded_report(source)) + f"   ({source.name})")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        write_bytes_atomic(args.out, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
