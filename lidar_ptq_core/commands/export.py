"""`lidar-ptq export --checkpoint Q --out model.lptq`: a checkpoint (FP32 or INT8) as a deployable bundle, with every
graph a backend runs and their parity against the checkpoint's torch model (export/parity.py)."""

from __future__ import annotations

from ..export.parity import DEFAULT_FRAMES, DEFAULT_MAX_ERROR, DEFAULT_MIN_AGREEMENT


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="bundled name or .safetensors (FP32 or INT8 fake-quant)")
    parser.add_argument("--out", required=True, help="bundle to write (.lptq)")
    parser.add_argument("--parity-frames", type=int, default=DEFAULT_FRAMES,
                        help=f"frames the shipped graphs run on against the torch model (default {DEFAULT_FRAMES}; "
                             "0: no check, recorded as such)")
    parser.add_argument("--parity-source", default="sim",
                        help="where those frames come from: 'sim' (calibration split), a folder of .bin / .pcd "
                             "files, a file or a rosbag2 bag (default sim)")
    parser.add_argument("--parity-topic", default=None, help="PointCloud2 topic when --parity-source is a bag")
    parser.add_argument("--parity-max-error", type=float, default=DEFAULT_MAX_ERROR,
                        help="largest error allowed per graph output: mean |difference| over mean |reference| "
                             f"(default {DEFAULT_MAX_ERROR:g})")
    parser.add_argument("--parity-min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                        help="smallest share of the torch model's boxes the onnxruntime runtime must reproduce, and "
                             f"of its boxes the torch model must have (default {DEFAULT_MIN_AGREEMENT:g})")


def run(args) -> int:
    from ..export.bundle import read_bundle
    from ..export.export_bundle import export_bundle
    from ..export.parity import ParitySettings, parity_lines
    from ..runtime import bundled_checkpoint

    if not args.out.endswith(".lptq"):
        raise ValueError(f"--out must end in .lptq, got {args.out}")
    settings = ParitySettings(frames=args.parity_frames, source=args.parity_source, topic=args.parity_topic,
                              max_error=args.parity_max_error, min_agreement=args.parity_min_agreement)
    path = export_bundle(bundled_checkpoint(args.checkpoint), args.out, parity=settings)
    bundle = read_bundle(path)
    quant = bundle.manifest.quantization
    print(f"wrote {path}: {bundle.config.name}, {'INT8 ' + quant['method'] if quant else 'FP32'}, parts "
          + ", ".join(f"{n} ({e['size'] / 1e6:.1f} MB)" for n, e in bundle.manifest.parts.items()))
    print("\n".join(parity_lines(bundle.manifest.parity)))
    return 0
