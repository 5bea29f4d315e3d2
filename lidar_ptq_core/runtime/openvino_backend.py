"""OpenVINO (CPU plugin) for the dense part: the bundle's QDQ dense.onnx, the graph TensorRT builds, run as it is
behind the torch model's encoder. OpenVINO reads the Q/DQ pairs itself and runs the convs as INT8 kernels; nothing
is rebuilt or recalibrated here.

Two settings keep it the fake-quant model's arithmetic:
- INFERENCE_PRECISION_HINT f32: on CPUs with bfloat16 units (AVX512_BF16, AMX) OpenVINO's default runs everything
  that is not INT8 (the requantization, the head's FP32 outputs) in bfloat16; on the sim models that made the head
  outputs' distance to fake-quant two to three times larger (docs/benchmarks/openvino_layers.txt).
- the graph itself: a Concat of int8 codes rather than Concat -> QuantizeLinear (export/onnx_qdq.py
  quantize_concat_inputs), which OpenVINO 2026.4 computes wrongly. Bundles exported before that rewrite are refused.

openvino is an optional install (requirements-openvino.txt); where it does not import, asking for this backend
raises one ValueError that says how to install it.
"""

from __future__ import annotations

import numpy as np

INSTALL_HINT = "pip install -r requirements-openvino.txt"


class OpenVinoUnavailable(ValueError):
    """openvino does not import here."""


def import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise OpenVinoUnavailable(f"backend 'openvino' needs the openvino package, which does not import here "
                                  f"({exc}); install it with `{INSTALL_HINT}`") from None
    return openvino


def openvino_unavailable() -> OpenVinoUnavailable | None:
    """The error asking for backend 'openvino' raises here, or None where openvino imports."""
    try:
        import_openvino()
    except OpenVinoUnavailable as exc:
        return exc
    return None


def check_concats_quantized_as_codes(onnx_bytes: bytes) -> None:
    """ValueError for a graph with Concat -> QuantizeLinear (a bundle exported before quantize_concat_inputs):
    OpenVINO would run it, and wrongly."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    concats = {node.output[0]: node.name for node in graph.node if node.op_type == "Concat"}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in concats:
            raise ValueError(f"dense graph: Concat {concats[node.input[0]]!r} feeds a QuantizeLinear, which OpenVINO "
                             "computes wrongly; export the bundle again with this lidar-ptq (`lidar-ptq export`)")


class OpenVinoBackend:
    """The dense part on OpenVINO's CPU plugin behind a torch model's encoder (same call interface as the other
    backends: `bev_input(batch)`, `dense(bev)`, `backend(batch)`)."""

    name = "openvino"

    def __init__(self, model, onnx_bytes: bytes | None = None, threads: int | None = None):
        """`onnx_bytes`: the bundle's dense.onnx; None exports the model's QDQ graph here."""
        import torch

        from ..export.onnx_qdq import export_dense_onnx, output_names

        openvino = import_openvino()
        if onnx_bytes is None:
            onnx_bytes = export_dense_onnx(model)
        check_concats_quantized_as_codes(onnx_bytes)
        core = openvino.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(core.read_model(onnx_bytes, b""), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.model = model
        self.device = torch.device("cpu")
        self.names = output_names(model)
        self.ports = [self.compiled.output(name) for name in self.names]
        self.outputs = [name.split(".", 1) for name in self.names]

    def bev_input(self, batch: dict):
        """The FP32 BEV map the QDQ graph takes (its first QuantizeLinear quantizes it)."""
        return self.model.bev_features(batch)

    def dense(self, bev) -> list[dict]:
        import torch

        bev = np.ascontiguousarray(bev.detach().cpu().numpy(), dtype=np.float32)
        frames = []
        for frame in range(bev.shape[0]):  # the graph is exported for one frame
            results = self.request.infer({0: bev[frame: frame + 1]})
            frames.append([np.array(results[port]) for port in self.ports])  # copies: the request reuses its buffers
        heads = [{} for _ in self.model.dense_head.heads_list]
        for index, (task, head) in enumerate(self.outputs):
            heads[int(task)][head] = torch.from_numpy(np.concatenate([f[index] for f in frames]))
        return heads

    def __call__(self, batch: dict) -> list[dict]:
        return self.dense(self.bev_input(batch))
