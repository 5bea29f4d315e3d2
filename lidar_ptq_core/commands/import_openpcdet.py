"""`lidar-ptq import-openpcdet MODEL.pth --config NAME --out FILE.safetensors`: convert an OpenPCDet CenterPoint
checkpoint into this project's checkpoint format. The .pth is read with torch.load(weights_only=True), so no pickled
code runs, and every tensor must match the model key for key and shape for shape."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("pth", help="OpenPCDet checkpoint (.pth with `model_state`, or a bare state dict)")
    parser.add_argument("--config", required=True,
                        help="model config name (config/models, e.g. waymo_centerpoint_pillar_1x) or YAML path")
    parser.add_argument("--out", required=True, help="output .safetensors (weights + embedded config)")


def run(args) -> int:
    from ..config_files import resolve_config
    from ..models.checkpoint import import_openpcdet_checkpoint, save_checkpoint

    if not args.out.endswith(".safetensors"):
        raise ValueError(f"--out must end in .safetensors, got {args.out}")
    model = import_openpcdet_checkpoint(args.pth, resolve_config(args.config, "models"))
    count = sum(p.numel() for p in model.state_dict().values())
    save_checkpoint(model, args.out)
    print(f"imported {args.pth} into {model.config.name} ({count:,} values) -> {args.out}")
    return 0
