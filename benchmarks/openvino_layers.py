#!/usr/bin/env python
"""Where OpenVINO departs from the fake-quant model on the QDQ graph, and what the export's int8 Concat changes.

Part 1, the INT8 checkpoints on a few sim val frames: the largest |difference| of each head output to torch fake-quant
for the QDQ graph as the exporter writes it (Concat -> QuantizeLinear) and as exported (a Concat of int8 codes,
export/onnx_qdq.py quantize_concat_inputs), on OpenVINO's CPU plugin with f32 and with its default precision hint,
and on onnxruntime for scale; plus, for the exporter's graph, the INT8 codes of every activation quantizer seen as
extra graph outputs (which also changes what OpenVINO fuses: read it as a hint, the head outputs as the measure).
Part 2, a graph of nothing but inputs -> Concat -> Q/DQ -> Conv with random weights, against onnx's reference
evaluator, in both forms and with 1 to 3 inputs: the smallest case of the fault.

    ./dev run python benchmarks/openvino_layers.py

Writes docs/benchmarks/openvino_layers.txt and .json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def compile_openvino(data: bytes, precision: str | None, threads: int):
    import openvino

    core = openvino.Core()
    config = {"INFERENCE_NUM_THREADS": threads}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    return core.compile_model(core.read_model(data, b""), "CPU", config)


def with_quantizer_outputs(data: bytes) -> tuple[bytes, list[str]]:
    """The graph with every activation QuantizeLinear's int8 codes as an extra output."""
    import onnx

    model = onnx.load_from_string(data)
    names = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and "input_quantizer" in n.name]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT8, None))
    return model.SerializeToString(), names


def quantizer_of(output_name: str, module_names: list[str]) -> str:
    """'/dense_head/heads_list.0/hm/hm.0/hm.0.0/input_quantizer/QuantizeLinear_output_0' -> the module's name."""
    parts = output_name.strip("/").split("/")
    found = [m for m in module_names if m.endswith(f".{parts[-3]}.input_quantizer") and all(p in m for p in parts[:-2])]
    return found[0] if len(found) == 1 else output_name


def model_part(name: str, frames: int, threads: int) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from lidar_ptq_core.export.onnx_qdq import export_dense_onnx, output_names
    from lidar_ptq_core.quant.quantizer import TensorQuantizer
    from lidar_ptq_core.recipes.centerpoint import load_any_checkpoint
    from lidar_ptq_core.runtime import Detector, bundled_checkpoint
    from lidar_ptq_core.sim import SimDataset, load_sim_config
    from lidar_ptq_core.voxelize import voxelize_clouds

    model = load_any_checkpoint(bundled_checkpoint(name)).eval()
    graphs = {"exporter's graph (Concat -> Q)": export_dense_onnx(model, int8_concats=False),
              "exported graph (int8 Concat)": export_dense_onnx(model)}
    runs = {}
    for graph_label, data in graphs.items():
        runs[f"onnxruntime, {graph_label}"] = ("ort", ort.InferenceSession(data, providers=["CPUExecutionProvider"]))
        for precision in ("f32", None):
            label = f"OpenVINO {precision or 'default precision'}, {graph_label}"
            runs[label] = ("ov", compile_openvino(data, precision, threads))
    observed, observed_names = with_quantizer_outputs(graphs["exporter's graph (Concat -> Q)"])
    observed_model = compile_openvino(observed, "f32", threads)
    codes = {}
    hooks = [module.register_forward_hook(lambda m, i, o, key=key: codes.__setitem__(key, torch.round(o / m.scale)))
             for key, module in model.named_modules()
             if isinstance(module, TensorQuantizer) and key.endswith("input_quantizer")]
    heads = output_names(model)
    worst = {label: dict.fromkeys(heads, 0.0) for label in runs}
    code_share = {}
    frames_done = SimDataset("val", frames, load_sim_config("default"))
    frames_done.prepare(num_workers=1, progress=False)
    detector = Detector(model)
    for index in range(len(frames_done)):
        points = detector.prepare_points(frames_done[index].points, "val frame")
        with torch.inference_mode():
            batch, _ = voxelize_clouds([points], model.config.voxelization, model.config.num_point_features)
            bev = model.bev_features(batch)
            reference = [t.numpy() for task in model.dense(bev) for t in task.values()]
        x = bev.numpy()
        for label, (kind, runner) in runs.items():
            outputs = runner.run(None, {"bev": x}) if kind == "ort" else [
                runner({0: x})[runner.output(h)] for h in heads]
            for head, got, want in zip(heads, outputs, reference):
                worst[label][head] = max(worst[label][head], float(np.abs(got - want).max()))
        result = observed_model({0: x})
        for tensor in observed_names:
            key = quantizer_of(tensor, list(codes))
            want = codes[key].numpy().astype(np.int64)
            got = np.asarray(result[observed_model.output(tensor)]).astype(np.int64)
            share, steps = code_share.get(key, (0.0, 0))
            code_share[key] = (max(share, float(np.mean(got != want))), max(steps, int(np.abs(got - want).max())))
    for hook in hooks:
        hook.remove()
    return {"frames": frames, "worst_abs_diff": worst,
            "codes_observed": {k: {"share_differing": v[0], "max_steps": v[1]} for k, v in code_share.items()}}


def concat_repro() -> list[dict]:
    import numpy as np
    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnx.version_converter import convert_version

    from lidar_ptq_core.export.concat_pattern import concat_then_quantize_graph, graph_inputs
    from lidar_ptq_core.export.onnx_qdq import quantize_concat_inputs

    rows = []
    for branches in (1, 2, 3):
        original = concat_then_quantize_graph(branches=branches)
        for label, data in (("Concat -> Q/DQ -> Conv", original),
                            ("Q per input -> int8 Concat -> DQ -> Conv", quantize_concat_inputs(original))):
            feeds = graph_inputs(data)
            reference = ReferenceEvaluator(convert_version(onnx.load_from_string(data), 19)).run(None, feeds)[0]
            compiled = compile_openvino(data, "f32", 2)
            ordered = {i: feeds[next(n for n in p.get_names() if n in feeds)] for i, p in enumerate(compiled.inputs)}
            got = compiled(ordered)[compiled.outputs[0]]
            rows.append({"graph": label, "concat_inputs": branches,
                         "max_abs_diff": float(np.abs(got - reference).max()),
                         "reference_max": float(np.abs(reference).max())})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sim_pillar_int8", "sim_voxel_int8"])
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "openvino_layers"), help="output stem")
    args = parser.parse_args()

    import openvino
    import torch

    from lidar_ptq_core.io_utils import write_text_and_json

    torch.set_num_threads(args.threads)
    lines = [f"OpenVINO {openvino.__version__} (CPU) on the QDQ dense graph vs torch fake-quant; "
             f"./dev run python benchmarks/openvino_layers.py {' '.join(sys.argv[1:])}".rstrip()]
    results = {"models": {}, "concat_repro": concat_repro()}
    for name in args.models:
        part = results["models"][name] = model_part(name, args.frames, args.threads)
        lines += ["", f"{name}: largest |head output - fake-quant| over {part['frames']} sim val frames"]
        heads = list(next(iter(part["worst_abs_diff"].values())))
        lines.append(f"  {'engine, graph':<62}" + "".join(f"{h:>11}" for h in heads))
        for label, row in part["worst_abs_diff"].items():
            lines.append(f"  {label:<62}" + "".join(f"{row[h]:11.3g}" for h in heads))
        lines.append("  activation codes of the exporter's graph on OpenVINO f32, each quantizer an extra output "
                     "(largest share differing / largest difference in steps):")
        for key, value in part["codes_observed"].items():
            lines.append(f"    {key:<58}{value['share_differing']:9.5f}{value['max_steps']:5d}")
    lines += ["", "inputs -> ReLU -> Concat -> Q/DQ -> Conv, random weights, OpenVINO f32 vs onnx reference evaluator:"]
    for row in results["concat_repro"]:
        lines.append(f"  {row['graph']:<44} {row['concat_inputs']} input(s): max |diff| {row['max_abs_diff']:.3g} "
                     f"(outputs up to {row['reference_max']:.3g})")
    text = "\n".join(lines)
    write_text_and_json(args.out, text, results)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
