"""`lidar-ptq inspect FILE.lptq`: what a bundle holds, checked: model, classes, voxelization, decoding,
quantization, the tools that made it, which graph runs where, the parity of its graphs at export and its parts (every
part's sha256 is verified before anything is printed)."""

from __future__ import annotations

import json

from ..export.bundle import read_bundle
from ..export.parity import parity_lines

SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
SHA256_SHOWN = 12  # hex digits of each part's digest in the table
LABEL_WIDTH = 14


def add_arguments(parser) -> None:
    parser.add_argument("file", help="a lidar-ptq bundle (.lptq)")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")


def human_size(size: int) -> str:
    value, unit = float(size), SIZE_UNITS[0]
    for unit in SIZE_UNITS:
        if value < 1024 or unit == SIZE_UNITS[-1]:
            break
        value /= 1024
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def flat_items(data: dict, prefix: str = "") -> list[str]:
    """Nested settings as `key=value` with dotted keys: one line holds a section whatever keys it grows."""
    items = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            items += flat_items(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={value if isinstance(value, str) else json.dumps(value)}")
    return items


def describe(bundle) -> list[str]:
    manifest, config = bundle.manifest, bundle.config
    stages = [config.vfe.type] + ([config.backbone_3d.type] if config.backbone_3d else []) + [config.map_to_bev.type]
    quant = manifest.quantization
    rows = {
        "bundle": str(bundle.path),
        "format": f"{manifest.format} v{manifest.format_version}, created {manifest.created}",
        "model": f"{config.name} ({' + '.join(stages)}, {config.num_point_features} point features)",
        "classes": ", ".join(manifest.class_names),
        "voxelization": " ".join(flat_items(manifest.voxelization)),
        "decode": " ".join(flat_items(manifest.decode)),
        "quantization": "none (FP32)" if quant is None
        else " ".join([quant["method"] + ":"] + flat_items(quant["summary"])),
        "tools": ", ".join(f"{tool} {version}" for tool, version in manifest.tools.items()),
    }
    runtime = manifest.runtime
    if runtime:
        rows["runtime"] = "; ".join(
            f"{engine}: " + " -> ".join(filter(None, [runtime[engine]["encoder"] or "encoder in torch",
                                                      "scatter (numpy)" if runtime[engine]["encoder"] else None,
                                                      runtime[engine]["dense"]]))
            for engine in ("onnxruntime", "tensorrt")) + f"; BEV map {runtime['bev']['dtype']}"
        cpu = runtime.get("cpu")
        if isinstance(cpu, dict):  # bundles from before the choice was recorded run auto on onnxruntime
            rows["auto on CPU"] = f"{cpu.get('auto')} ({cpu.get('why', 'no reason recorded')})"
    lines = [f"{label:<{LABEL_WIDTH}}{text}" for label, text in rows.items()]
    if manifest.format_version >= 2:  # version 1 bundles predate the parity check
        lines += parity_lines(manifest.parity)
    parts = manifest.parts
    lines.append(f"parts ({len(parts)}, sha256 verified)")
    name_width = max([len("name")] + [len(n) for n in parts])
    role_width = max([len("role")] + [len(p["role"]) for p in parts.values()])
    lines.append(f"  {'name':<{name_width}}  {'role':<{role_width}}  {'size':>10}  sha256")
    for name, part in parts.items():
        lines.append(f"  {name:<{name_width}}  {part['role']:<{role_width}}  {human_size(part['size']):>10}  "
                     f"{part['sha256'][:SHA256_SHOWN]}")
    return lines


def run(args) -> int:
    bundle = read_bundle(args.file, verify=True)
    if args.json:
        print(json.dumps(bundle.manifest.to_dict(), indent=1))
    else:
        print("\n".join(describe(bundle)))
    return 0
