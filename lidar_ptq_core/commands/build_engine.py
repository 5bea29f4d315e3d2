"""`lidar-ptq build-engine --bundle model.lptq`: build (or find in the cache) the TensorRT engine of a bundle's dense
part, nothing else. The ONNX is validated first (onnx checker, polygraphy, TensorRT's Q/DQ rules), which needs no
TensorRT; `--check` stops there. The build itself is UNVERIFIED here: TensorRT cannot be installed on these machines,
where the command exits with code 2 and says so."""

from __future__ import annotations

import argparse


def add_arguments(parser) -> None:
    from ..runtime.tensorrt_backend import DEFAULT_WORKSPACE_MB

    parser.add_argument("--bundle", required=True, help="a lidar-ptq bundle (.lptq) from `lidar-ptq export`")
    parser.add_argument("--cache-dir", default=None,
                        help="engine cache folder (default: $LIDAR_PTQ_CACHE/engines, i.e. ~/.cache/lidar_ptq/engines)")
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                        help="let TensorRT run the layers that are not INT8 in FP16 (default: on)")
    parser.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB,
                        help=f"TensorRT workspace memory pool limit in MiB (default {DEFAULT_WORKSPACE_MB})")
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching engine is cached")
    parser.add_argument("--check", action="store_true",
                        help="only validate the bundle's dense.onnx for TensorRT (no TensorRT needed)")


def run(args) -> int:
    from ..export.bundle import read_bundle
    from ..export.export_bundle import DENSE_PART
    from ..export.validate import validate_tensorrt_onnx
    from ..runtime.tensorrt_backend import BuildOptions, EngineCache, TensorRTToolkit

    if args.workspace_mb <= 0:
        raise ValueError(f"--workspace-mb must be > 0, got {args.workspace_mb}")
    bundle = read_bundle(args.bundle, verify=True)
    if DENSE_PART not in bundle.manifest.parts:
        raise ValueError(f"{args.bundle}: the bundle has no {DENSE_PART} part")
    onnx_bytes = bundle.read_part(DENSE_PART)
    validation = validate_tensorrt_onnx(onnx_bytes, f"{args.bundle}:{DENSE_PART}")
    print(f"{DENSE_PART}: {validation.summary()}")
    for note in validation.notes:
        print(f"note: {note}")
    if args.check:
        return 0
    cache = EngineCache(TensorRTToolkit(), args.cache_dir)  # TensorRTUnavailable (exit 2) where tensorrt is missing
    options = BuildOptions(fp16=args.fp16, workspace_mb=args.workspace_mb)
    _, path, status = cache.get(onnx_bytes, options, validation.quantized, force=args.force)
    print(f"{status} {path} ({options.precision(validation.quantized)})")
    return 0
