"""Network backends behind the Detector: voxel batch in, head outputs (one dict per task) out. Pre- and
post-processing (voxelize, decode) are the Detector's and shared by all of them.

- torch: the reference; FP32, or INT8 as fake quantization (FP32 kernels on INT8-exact values).
- onnxruntime: the encoder (PFN + scatter, or the sparse backbone) in torch, the dense part as the bundle's ONNX
  graph. With a QDQ graph onnxruntime computes the same numbers; it does not yet fuse it into integer kernels
  (issue 7), so it is not faster yet.
- tensorrt: not installable on these machines; asking for it says so.
"""

from __future__ import annotations

import numpy as np
import torch

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


class TorchBackend:
    name = "torch"

    def __init__(self, model):
        self.model = model

    def __call__(self, batch: dict) -> list[dict]:
        return self.model(batch)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model, onnx_bytes: bytes, threads: int | None = None):
        import onnxruntime as ort

        from ..export.onnx_qdq import INPUT_NAME, output_names

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.model = model
        self.input_name = INPUT_NAME
        self.outputs = [name.split(".", 1) for name in output_names(model)]

    def __call__(self, batch: dict) -> list[dict]:
        bev = self.model.bev_features(batch).detach().cpu().numpy().astype(np.float32, copy=False)
        results = [{} for _ in self.model.dense_head.heads_list]
        frames = []
        for frame in range(bev.shape[0]):  # the graph is exported for one frame
            frames.append(self.session.run(None, {self.input_name: bev[frame : frame + 1]}))
        for index, (task, head) in enumerate(self.outputs):
            results[int(task)][head] = torch.from_numpy(np.concatenate([f[index] for f in frames]))
        return results


def tensorrt_unavailable() -> ValueError:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return ValueError("backend 'tensorrt' needs the tensorrt Python package, which is not importable here (it "
                          "cannot be installed on these CPU machines); use 'onnxruntime' or 'torch'")
    return ValueError("backend 'tensorrt': engine building is not implemented yet (issue 7); the bundle's dense.onnx "
                      "is TensorRT-ready QDQ ONNX for trtexec --int8 --fp16")
