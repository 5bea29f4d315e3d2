"""`lidar-ptq` command line: one subcommand per module in lidar_ptq_core.commands, each thin over the library."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

# name -> module under lidar_ptq_core.commands exposing `add_arguments(parser)` and `run(args) -> int`.
# Modules are imported lazily so that `lidar-ptq sim` never pays for importing torch.
COMMANDS = {
    "sim": "Generate synthetic lidar frames with ground truth, or render one scene.",
    "voxelize": "Voxelize a point cloud file and report what was kept and dropped.",
    "train": "Train a CenterPoint on the synthetic benchmark (resumable).",
    "import-openpcdet": "Convert an OpenPCDet CenterPoint .pth into a lidar-ptq .safetensors checkpoint.",
    "quantize": "INT8 post-training quantization (LiDAR-PTQ or a baseline) from a sim split, frames or a bag.",
    "export": "Write a checkpoint (FP32 or INT8) as a .lptq bundle: checkpoint + dense part as (QDQ) ONNX.",
    "detect": "Run a detector on a point cloud file; print, save or draw the boxes.",
    "check": ("Compare a sample of frames (file, folder, bag) with what a model expects; name each mismatch and its "
              "fix."),
    "compare": ("Compare two models (FP32 vs INT8, checkpoints or bundles) on frames without labels: boxes "
                "reproduced by frame, class and range, the worst frames drawn, PASS/FAIL."),
    "eval": "Evaluate predictions against ground truth (centre-distance AP and BEV IoU AP by range).",
    "inspect": "Show what a .lptq bundle holds (model, classes, decoding, quantization, parts) after checking it.",
    "build-engine": "Build (and cache) the TensorRT engine of a bundle's dense part; --check validates its ONNX.",
    "bench": "Engine speed: FP32 and INT8 on torch and onnxruntime side by side, per stage (medians, p90).",
    "demo": "The embedded default job: drive -> calibration bag -> INT8 -> bundle -> detector node, FP32 vs INT8.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lidar-ptq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=name)
        _command_module(name).add_arguments(p)
    return parser


def _command_module(name: str):
    return importlib.import_module(f"lidar_ptq_core.commands.{name.replace('-', '_')}")


def main(argv: list[str] | None = None) -> int:
    if argv is None and hasattr(signal, "SIGPIPE"):
        # Piped into `head` and the like: stop quietly like other command-line tools, no BrokenPipeError traceback.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    try:
        return int(_command_module(args._module).run(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:  # bad input: say what is wrong, no traceback
        print(f"lidar-ptq {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
