"""Network backends behind the Detector: voxel batch in, head outputs (one dict per task) out. Pre- and
post-processing (voxelize, decode) are the Detector's and shared by all of them.

- torch: the reference; FP32, or INT8 as fake quantization (FP32 kernels on INT8-exact values).
- onnxruntime over a torch model (TorchEncoderOnnxBackend, also importable from here as OnnxRuntimeBackend): the
  encoder (PFN + scatter, or the sparse backbone) in torch, the dense part in onnxruntime. A bundle ships its graphs
  and they run as they are: a pillar bundle entirely without torch (runtime/onnx_backend.py OnnxRuntimeBackend), a
  voxel bundle's dense graph here (graph="shipped"). Built from a model instead (benchmarks, experiments): an FP32
  model runs its dense ONNX, an INT8 model onnxruntime's integer graph (export/onnx_ort_int8.py): onnxruntime
  fuses it into QLinearConv (uint8 activations, int8 weights). Its input is the BEV map as uint8 codes: a pillar
  model's features are quantized with the first conv's input scale before the scatter (exact: the empty cells hold
  the code of 0), so neither the FP32 map nor a QuantizeLinear over it is ever made. The bundle's dense.onnx stays
  TensorRT's QDQ graph (zero-point 0), which onnxruntime would only run as FP32 kernels around the Q/DQ pairs;
  graph="given" runs it anyway, for comparison.
- tensorrt (runtime/tensorrt_backend.py, UNVERIFIED: TensorRT is not installable on these machines, so it has never
  run): the encoder in torch on the GPU, the bundle's QDQ dense.onnx as a cached TensorRT engine (INT8 + FP16). Where
  tensorrt is not importable, asking for it raises one clear error (TensorRTUnavailable, a ValueError).
- openvino (runtime/openvino_backend.py, an optional install: requirements-openvino.txt): the encoder in torch, the
  bundle's QDQ dense.onnx on OpenVINO's CPU plugin (INT8 kernels). `auto` picks it for a bundle whose export chose it
  (export_bundle.cpu_engine_choice: INT8 convs that feed FP32 layers, which onnxruntime can only run in FP32).
"""

from __future__ import annotations

import numpy as np

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt", "openvino")


class TorchBackend:
    name = "torch"

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device  # batches are moved here (CPU voxelization, GPU network)

    def bev_input(self, batch: dict):
        """What `dense` takes: the BEV map."""
        return self.model.bev_features(self._on_device(batch))

    def dense(self, bev) -> list[dict]:
        return self.model.dense(bev.to(self.device))

    def __call__(self, batch: dict) -> list[dict]:
        return self.model(self._on_device(batch))

    def _on_device(self, batch: dict) -> dict:
        if self.device.type == "cpu":
            return batch
        from ..devices import batch_to

        return batch_to(batch, self.device)


ORT_GRAPHS = ("auto", "given", "shipped")


class TorchEncoderOnnxBackend:
    """onnxruntime for the dense part behind a torch model's encoder. (A pillar bundle runs without torch:
    runtime/onnx_backend.py OnnxRuntimeBackend.)"""

    name = "onnxruntime"

    def __init__(self, model, onnx_bytes: bytes | None = None, threads: int | None = None, graph: str = "auto",
                 code_scale: float | None = None):
        """`graph` "auto": for an INT8 model onnxruntime's integer graph built from the model (onnx_bytes, the
        bundle's TensorRT QDQ graph, is not used), for an FP32 model `onnx_bytes` (exported here when None).
        "given": run `onnx_bytes` as it is. "shipped": run `onnx_bytes`, a bundle's graph for onnxruntime, as it is;
        `code_scale` is the grid of its uint8 input (the manifest's runtime.bev.scale), None for an FP32 input."""
        import onnxruntime as ort
        import torch

        from ..export.onnx_ort_int8 import dense_part_quantized, export_dense_ort_int8, input_code_scale
        from ..export.onnx_qdq import INPUT_NAME, export_dense_onnx, is_dense_layer
        from ..models.topology import network_topology
        from .ort_profile import session_options

        if graph not in ORT_GRAPHS:
            raise ValueError(f"graph must be one of {ORT_GRAPHS}, got {graph!r}")
        quantized = dense_part_quantized(model)
        self.code_scale = None  # the input's uint8 grid when the graph takes codes
        if graph == "shipped":
            if onnx_bytes is None:
                raise ValueError('graph "shipped" needs the bundle\'s graph bytes')
            self.code_scale = code_scale
            self.graph = "ort-int8" if code_scale is not None or quantized else "fp32"
        elif graph == "auto" and quantized:
            self.code_scale = input_code_scale(model)
            onnx_bytes = export_dense_ort_int8(model, input_codes=self.code_scale is not None)
            self.graph = "ort-int8"
        else:
            if onnx_bytes is None:
                onnx_bytes = export_dense_onnx(model)
            self.graph = "qdq" if quantized else "fp32"
        self.onnx_bytes = onnx_bytes
        self.session = ort.InferenceSession(onnx_bytes, session_options(threads), providers=["CPUExecutionProvider"])
        self.model = model
        self.device = torch.device("cpu")  # the CPU execution provider
        self.input_name = INPUT_NAME
        topology = network_topology(model, is_layer=is_dense_layer)
        self.outputs = [output.name.split(".", 1) for output in topology.outputs]  # (task, head) in graph order
        self.tasks = 1 + max(int(task) for task, _ in self.outputs)
        # A zero-filled scatter (pillar) passes channels one to one, so the encoder's features can become codes
        # before it, with the zero point as the empty cells' code; after height compression they cannot.
        self.codes_before_scatter = bool(topology.bev_producers)

    def bev_input(self, batch: dict):
        """What `dense` takes: the BEV map, FP32 or, for the integer graph, uint8 codes."""
        if self.code_scale is None:
            return self.model.bev_features(batch)
        from ..export.onnx_ort_int8 import ZERO_POINT, to_input_codes

        encoded = self.model.encode(batch)
        if self.codes_before_scatter:
            return self.model.map_to_bev_module(to_input_codes(encoded, self.code_scale), batch["voxel_coords"],
                                                int(batch["batch_size"]), background=ZERO_POINT)
        return to_input_codes(self.model.to_bev(encoded, batch), self.code_scale)

    def dense(self, bev) -> list[dict]:
        """Head outputs of a BEV map: FP32, or uint8 codes from bev_input (an FP32 map is quantized here when the
        graph takes codes)."""
        import torch
        if self.code_scale is not None and bev.dtype != torch.uint8:
            from ..export.onnx_ort_int8 import to_input_codes

            bev = to_input_codes(bev, self.code_scale)
        bev = bev.detach().cpu().numpy()
        if bev.dtype != np.uint8:
            bev = bev.astype(np.float32, copy=False)
        results = [{} for _ in range(self.tasks)]
        frames = []
        for frame in range(bev.shape[0]):  # the graph is exported for one frame
            frames.append(self.session.run(None, {self.input_name: bev[frame : frame + 1]}))
        for index, (task, head) in enumerate(self.outputs):
            results[int(task)][head] = torch.from_numpy(np.concatenate([f[index] for f in frames]))
        return results

    def __call__(self, batch: dict) -> list[dict]:
        return self.dense(self.bev_input(batch))


OnnxRuntimeBackend = TorchEncoderOnnxBackend  # the name benchmarks and experiments build it by


def tensorrt_unavailable() -> ValueError | None:
    """The error that asking for backend 'tensorrt' raises here (tensorrt not importable, or no CUDA GPU), or None
    where both are present."""
    from .tensorrt_backend import TensorRTUnavailable, import_tensorrt

    try:
        import_tensorrt()
    except TensorRTUnavailable as exc:
        return exc
    import torch  # only where tensorrt imports: the torch-free runtime never gets here
    if not torch.cuda.is_available():
        return TensorRTUnavailable("backend 'tensorrt' needs a CUDA GPU, and torch sees none "
                                   "(torch.cuda.is_available() is False)")
    return None


def resolve_backend(backend: str) -> str:
    """'auto' -> 'tensorrt' where tensorrt imports and a CUDA GPU is present, else 'onnxruntime'; others as given.
    (Detector.from_bundle first turns 'auto' into the bundle's own CPU engine where TensorRT is missing.)"""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "tensorrt" if tensorrt_unavailable() is None else "onnxruntime"
    return backend
