"""`lidar-ptq export --checkpoint Q --out model.lptq`: a checkpoint (FP32 or INT8) as a deployable bundle."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="bundled name or .safetensors (FP32 or INT8 fake-quant)")
    parser.add_argument("--out", required=True, help="bundle to write (.lptq)")


def run(args) -> int:
    from ..export.bundle import read_bundle
    from ..export.export_bundle import export_bundle
    from ..runtime import bundled_checkpoint

    if not args.out.endswith(".lptq"):
        raise ValueError(f"--out must end in .lptq, got {args.out}")
    path = export_bundle(bundled_checkpoint(args.checkpoint), args.out)
    bundle = read_bundle(path)
    quant = bundle.manifest.quantization
    print(f"wrote {path}: {bundle.config.name}, {'INT8 ' + quant['method'] if quant else 'FP32'}, parts "
          + ", ".join(f"{n} ({e['size'] / 1e6:.1f} MB)" for n, e in bundle.manifest.parts.items()))
    return 0
