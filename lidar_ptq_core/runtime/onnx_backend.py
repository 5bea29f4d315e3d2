"""A pillar bundle on onnxruntime with numpy alone (no torch, no spconv): the bundle's pillar encoder graph, a numpy
scatter onto the BEV canvas, the bundle's dense graph. Nothing is built here: the graphs are the bundle's parts, as
checksummed and checked for parity at export (lidar_ptq_core/export/export_bundle.py), and the manifest's `runtime`
section says which part runs where and what the BEV map holds (FP32 features, or uint8 codes with their
zero-point as the empty cells' value).

Batches are numpy dicts (voxelize.stack_voxels: voxels, voxel_num_points, voxel_coords, batch_size) and head outputs
numpy arrays, which decode.py takes as they are.
"""

from __future__ import annotations

import numpy as np

from ..export.bundle import Bundle

RUNTIME_ENGINE = "onnxruntime"


def runtime_section(bundle: Bundle) -> dict:
    """The manifest's description of the shipped graphs; bundles from before graphs were shipped have none."""
    section = bundle.manifest.runtime
    if not section:
        raise ValueError(f"{bundle.path}: this bundle ships no runtime graphs (written by an older lidar-ptq); "
                         "export it again with `lidar-ptq export`")
    return section


CPU_ENGINES = ("onnxruntime", "openvino")


def cpu_engine_of(bundle: Bundle) -> str:
    """The engine `auto` runs `bundle` on without TensorRT, as export chose it (export_bundle.cpu_engine_choice);
    onnxruntime for bundles written before the choice was recorded. The manifest is untrusted: another value is an
    error naming it."""
    cpu = (bundle.manifest.runtime or {}).get("cpu") or {}
    choice = cpu.get("auto", "onnxruntime") if isinstance(cpu, dict) else cpu
    if choice not in CPU_ENGINES:
        raise ValueError(f"{bundle.path}: manifest runtime.cpu.auto must be one of {CPU_ENGINES}, got {choice!r}")
    return choice


def scatter_to_canvas(features: np.ndarray, coords: np.ndarray, batch_size: int, shape: tuple[int, int, int],
                      background) -> np.ndarray:
    """Pillar features (M, C) at their (batch, z, y, x) cells of a (B, C, H, W) canvas filled with `background`
    (0, or the zero-point when the features are uint8 codes). Written as (B, H*W, C) rows and transposed once."""
    channels, height, width = shape
    canvas = np.full((batch_size, height * width, channels), background, dtype=features.dtype)
    cells = coords[:, 2].astype(np.intp) * width + coords[:, 3]
    canvas[coords[:, 0], cells] = features
    return np.ascontiguousarray(canvas.transpose(0, 2, 1)).reshape(batch_size, channels, height, width)


class OnnxRuntimeBackend:
    """The onnxruntime backend of a pillar bundle: head outputs from numpy + onnxruntime alone (backends.py
    TorchEncoderOnnxBackend is the same engine behind a torch model's encoder). Same call interface as the torch-side
    backends: `bev_input(batch)`, `dense(bev)`, `backend(batch)`; `takes_numpy` tells the Detector to hand it numpy
    batches."""

    name = RUNTIME_ENGINE
    takes_numpy = True

    def __init__(self, bundle: Bundle, threads: int | None = None, config_entries: dict | None = None):
        """`config_entries`: onnxruntime session config entries over ort_profile.session_options' (for benchmarks
        comparing them: the node and the library use none)."""
        import onnxruntime as ort

        from .ort_profile import session_options

        section = runtime_section(bundle)
        plan = section[RUNTIME_ENGINE]
        if plan.get("encoder") is None:
            raise ValueError(f"{bundle.path}: a {bundle.config.vfe.type} model's encoder is not a shipped graph; "
                             "voxel bundles need torch and spconv for their sparse part")
        parts = bundle.read_parts([plan["encoder"], plan["dense"]])
        options = session_options(threads, config_entries=config_entries)
        self.encoder = ort.InferenceSession(parts[plan["encoder"]], options, providers=["CPUExecutionProvider"])
        self.session = ort.InferenceSession(parts[plan["dense"]], options, providers=["CPUExecutionProvider"])
        self.graph_parts = {"encoder": plan["encoder"], "dense": plan["dense"]}
        bev = section["bev"]
        self.bev_shape = tuple(int(v) for v in bev["shape"])
        self.bev_dtype = np.dtype(bev["dtype"])
        self.background = self.bev_dtype.type(bev["background"])
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [name.split(".", 1) for name in section["outputs"]]
        self.num_tasks = 1 + max(int(task) for task, _ in self.outputs)
        self.empty_features = np.zeros((0, self.bev_shape[0]), self.bev_dtype)

    def encode(self, batch: dict) -> np.ndarray:
        """(M, C) pillar features, or uint8 codes, of the batch's pillars."""
        if len(batch["voxel_coords"]) == 0:  # onnxruntime's reductions over an empty axis are not worth the risk
            return self.empty_features
        return self.encoder.run(None, {"voxels": batch["voxels"], "num_points": batch["voxel_num_points"],
                                       "coords": batch["voxel_coords"]})[0]

    def bev_input(self, batch: dict) -> np.ndarray:
        return scatter_to_canvas(self.encode(batch), batch["voxel_coords"], int(batch["batch_size"]), self.bev_shape,
                                 self.background)

    def dense(self, bev: np.ndarray) -> list[dict]:
        bev = np.asarray(bev)
        if bev.dtype != self.bev_dtype:
            raise ValueError(f"the dense graph takes a {self.bev_dtype} BEV map, got {bev.dtype}")
        frames = [self.session.run(None, {self.input_name: bev[i: i + 1]}) for i in range(bev.shape[0])]
        results = [{} for _ in range(self.num_tasks)]
        for index, (task, head) in enumerate(self.outputs):
            results[int(task)][head] = np.concatenate([f[index] for f in frames])
        return results

    def __call__(self, batch: dict) -> list[dict]:
        return self.dense(self.bev_input(batch))
