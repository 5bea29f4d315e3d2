#!/usr/bin/env python
"""Engine speed: FP32 and INT8 CenterPoint on torch and onnxruntime (CPU), per stage and end to end, in one run.

A thin wrapper over `lidar-ptq bench` (lidar_ptq_core/bench.py: the rows, how they are timed, agreement, profiles)
that writes to docs/benchmarks/engine_speed.txt and .json unless --out says otherwise; every other option is the
command's (`./dev run lidar-ptq bench --help`).

    ./dev run python benchmarks/bench_engine.py --frames 50 --repeats 2
"""

from __future__ import annotations

import sys
from pathlib import Path

from lidar_ptq_core import cli

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "engine_speed"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(OUT)]
    return cli.main(["bench", *argv])


if __name__ == "__main__":
    sys.exit(main())
