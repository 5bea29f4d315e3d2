"""TensorRT backend: the bundle's dense part (backbone_2d + head, TensorRT QDQ ONNX) as a TensorRT engine.

UNVERIFIED: TensorRT cannot be installed on the machines this project is developed and tested on (no GPU, NVIDIA's
wheels need CUDA), so `TensorRTToolkit` and `TensorRTBackend` have never run. They are written against the standard
TensorRT 10 Python API (`trt.Builder`, `trt.OnnxParser`, `BuilderFlag.INT8` / `FP16`, `build_serialized_network`,
`trt.Runtime.deserialize_cuda_engine`, `set_tensor_address` + `execute_async_v3`). What is tested here: the ONNX
they consume (export/validate.py), the engine cache (`EngineCache`, with a fake toolkit injected) and the one error
raised where tensorrt is not importable.

- Build: the ONNX is parsed into a network (explicit batch, the only mode in TensorRT 10), built with the INT8 flag
  when the graph holds Q/DQ nodes (explicit quantization: the scales come from the graph, no calibrator) and FP16
  for the layers left unquantized (`fp16=False` keeps them FP32).
- Cache: one file per (ONNX sha256, TensorRT version, GPU name, compute capability, precision), under `cache_dir`
  (default `$LIDAR_PTQ_CACHE/engines`, i.e. `~/.cache/lidar_ptq/engines`). Each file is a small header (magic, JSON
  metadata: the key and the engine's sha256) followed by the serialized engine. A file whose header, key or digest
  does not match, or that TensorRT refuses to deserialize (another TensorRT or driver), is rebuilt with a warning,
  never a crash. Writes are atomic (a temporary file renamed into place).
- Run: the encoder (PFN + scatter, or the spconv sparse backbone of the voxel model) stays in torch on the GPU; its
  BEV map is handed to the engine by device pointer, the engine is enqueued (`execute_async_v3`) on a CUDA stream of
  its own, ordered against torch's current stream by events, and its outputs stay on the GPU: the host waits only
  when decoding reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from ..io_utils import default_cache_root

ENGINE_MAGIC = b"LPTQTRT1"
ENGINE_SUFFIX = ".engine"
DEFAULT_WORKSPACE_MB = 1024
INSTALL_HINT = ("pip install 'lidar_ptq[tensorrt]' (TensorRT 10, NVIDIA's wheels) on a machine with an NVIDIA GPU and "
                "CUDA, or use JetPack's TensorRT on a Jetson")


class TensorRTUnavailable(ValueError):
    """TensorRT (or a CUDA GPU) is missing. A ValueError, so that the CLI reports it as one line with exit code 2."""


def import_tensorrt():
    """The tensorrt module, or TensorRTUnavailable saying what is missing and what to do."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"backend 'tensorrt' needs the tensorrt Python package, which is not importable here ({exc}); it cannot "
            f"be installed on these CPU machines. Install it with {INSTALL_HINT}; here use 'onnxruntime' or 'torch'"
        ) from None
    return tensorrt


def tensorrt_importable() -> bool:
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


def default_engine_dir() -> Path:
    return default_cache_root() / "engines"


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = True  # FP16 for the layers not quantized to INT8 (and the whole graph of an FP32 model)
    workspace_mb: int = DEFAULT_WORKSPACE_MB  # TensorRT's workspace memory pool limit; not part of the cache key

    def precision(self, quantized: bool) -> str:
        return "+".join((["int8"] if quantized else []) + (["fp16"] if self.fp16 else ["fp32"]))


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine is only valid for: the graph, the TensorRT that built it, the GPU, the precision."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7" (Orin), "9.0" (H100), ...
    precision: str  # "int8+fp16", "int8+fp32", "fp16", "fp32"

    def file_name(self) -> str:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower() or "gpu"
        sm = self.compute_capability.replace(".", "")
        return (f"dense-{self.onnx_sha256[:16]}-trt{self.tensorrt_version}-{gpu[:40]}-sm{sm}-"
                f"{self.precision.replace('+', '-')}{ENGINE_SUFFIX}")


def pack_engine(key: EngineKey, engine: bytes) -> bytes:
    """Cache file contents: magic, header length (uint32 LE), JSON header, serialized engine."""
    header = json.dumps({"key": asdict(key), "engine_sha256": hashlib.sha256(engine).hexdigest(),
                         "engine_size": len(engine)}, sort_keys=True).encode()
    return ENGINE_MAGIC + struct.pack("<I", len(header)) + header + engine


def unpack_engine(data: bytes, key: EngineKey) -> bytes:
    """The serialized engine of a cache file written for `key`; ValueError saying why it is not usable."""
    start = len(ENGINE_MAGIC) + 4
    if len(data) < start or not data.startswith(ENGINE_MAGIC):
        raise ValueError("not a lidar-ptq engine cache file")
    (header_size,) = struct.unpack("<I", data[len(ENGINE_MAGIC):start])
    try:
        header = json.loads(data[start:start + header_size])
    except (ValueError, UnicodeDecodeError):
        raise ValueError("its header is not JSON") from None
    if not isinstance(header, dict) or header.get("key") != asdict(key):
        found = header.get("key") if isinstance(header, dict) else None
        raise ValueError(f"it was built for {found}, not {asdict(key)}")
    engine = data[start + header_size:]
    if len(engine) != header.get("engine_size") or hashlib.sha256(engine).hexdigest() != header.get("engine_sha256"):
        raise ValueError("its engine bytes do not match their recorded size and sha256 (cut short or damaged)")
    return engine


class EngineCache:
    """Engines built once per key and reused. `toolkit` builds and deserializes (TensorRTToolkit, or a fake in the
    tests): identity() -> {tensorrt_version, gpu_name, compute_capability}, build(onnx, options, quantized) -> bytes,
    deserialize(bytes) -> engine (raising, or returning None, when it cannot)."""

    def __init__(self, toolkit, cache_dir: str | os.PathLike | None = None):
        self.toolkit = toolkit
        self.directory = Path(cache_dir).expanduser() if cache_dir is not None else default_engine_dir()

    def key(self, onnx_bytes: bytes, options: BuildOptions, quantized: bool) -> EngineKey:
        identity = self.toolkit.identity()
        return EngineKey(onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
                         tensorrt_version=str(identity["tensorrt_version"]), gpu_name=str(identity["gpu_name"]),
                         compute_capability=str(identity["compute_capability"]),
                         precision=options.precision(quantized))

    def path(self, key: EngineKey) -> Path:
        return self.directory / key.file_name()

    def load(self, key: EngineKey):
        """(engine, None) from the cache, or (None, why) when there is no usable file for `key`."""
        path = self.path(key)
        if not path.is_file():
            return None, None
        try:
            engine = self.toolkit.deserialize(unpack_engine(path.read_bytes(), key))
        except Exception as exc:  # any damaged or foreign file means: build again
            return None, f"{path}: {exc}"
        if engine is None:
            return None, f"{path}: TensorRT could not deserialize it (another TensorRT version or GPU driver?)"
        return engine, None

    def get(self, onnx_bytes: bytes, options: BuildOptions = BuildOptions(), quantized: bool = True,
            force: bool = False):
        """(engine, path, status): status "cached" (loaded), "built" (no cache file) or "rebuilt" (the cached file
        was unusable, with a warning, or `force`)."""
        from ..io_utils import write_bytes_atomic

        key = self.key(onnx_bytes, options, quantized)
        path = self.path(key)
        status = "built"
        if force:
            status = "rebuilt" if path.exists() else "built"
        else:
            engine, why = self.load(key)
            if engine is not None:
                return engine, path, "cached"
            if why is not None:
                warnings.warn(f"rebuilding the TensorRT engine: the cached one is unusable: {why}", RuntimeWarning,
                              stacklevel=2)
                status = "rebuilt"
        serialized = self.toolkit.build(onnx_bytes, options, quantized)
        write_bytes_atomic(path, pack_engine(key, serialized))
        engine = self.toolkit.deserialize(serialized)
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize the engine it has just built ({path})")
        return engine, path, status


class TensorRTToolkit:
    """UNVERIFIED (never run: TensorRT is not installable here). The TensorRT 10 calls behind EngineCache."""

    def __init__(self, device: int = 0):
        import torch

        self.trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise TensorRTUnavailable("backend 'tensorrt' needs a CUDA GPU, and torch sees none "
                                      "(torch.cuda.is_available() is False)")
        self.device = torch.device("cuda", device)
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)  # kept alive as long as the engines it deserialized

    def identity(self) -> dict:
        import torch

        major, minor = torch.cuda.get_device_capability(self.device)
        return {"tensorrt_version": self.trt.__version__, "gpu_name": torch.cuda.get_device_name(self.device),
                "compute_capability": f"{major}.{minor}"}

    def build(self, onnx_bytes: bytes, options: BuildOptions, quantized: bool) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if int(trt.__version__.split(".")[0]) < 10:  # TensorRT 8.x needs explicit batch asked for; 10 has no other
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ValueError(f"TensorRT's ONNX parser refused the dense part: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
        if quantized and hasattr(trt.BuilderFlag, "INT8"):
            config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales from the Q/DQ nodes, no calibrator
        if options.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError("TensorRT failed to build the engine (its log above says why)")
        return bytes(serialized)

    def deserialize(self, data: bytes):
        return self.runtime.deserialize_cuda_engine(data)


def build_engine(onnx_bytes: bytes, cache_dir=None, options: BuildOptions = BuildOptions(), force: bool = False,
                 toolkit=None):
    """Validate the ONNX, then build (or find in the cache) its engine: (engine, path, status, validation).
    TensorRTUnavailable where tensorrt or a GPU is missing (after the validation, which needs neither)."""
    from ..export.validate import validate_tensorrt_onnx

    validation = validate_tensorrt_onnx(onnx_bytes)
    cache = EngineCache(toolkit if toolkit is not None else TensorRTToolkit(), cache_dir)
    engine, path, status = cache.get(onnx_bytes, options, validation.quantized, force=force)
    return engine, path, status, validation


class TensorRTBackend:
    """UNVERIFIED (never run: TensorRT is not installable here). Same interface as OnnxRuntimeBackend: `dense(bev)`
    and `__call__(batch)` -> head outputs per task. The model (its encoder runs in torch) must be on the GPU."""

    name = "tensorrt"

    def __init__(self, model, onnx_bytes: bytes, cache_dir=None, options: BuildOptions = BuildOptions(),
                 toolkit=None):
        import torch

        from ..export.onnx_qdq import INPUT_NAME, output_names

        toolkit = toolkit if toolkit is not None else TensorRTToolkit()
        self.engine, self.engine_path, self.engine_status, self.validation = build_engine(
            onnx_bytes, cache_dir, options, toolkit=toolkit)
        self.model = model
        self.device = next(model.parameters()).device
        if self.device.type != "cuda":
            raise ValueError(f"TensorRTBackend: the model is on {self.device}; load it on the GPU (device='cuda')")
        trt = toolkit.trt
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)  # execute_async_v3 wants a stream other than the default
        self.input_name = INPUT_NAME
        self.outputs = [name.split(".", 1) for name in output_names(model)]
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        self.buffers = {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ValueError(f"TensorRTBackend: tensor {name!r} has a dynamic shape {shape}; the dense part is "
                                 "exported for a fixed BEV size")
            dtype = dtypes.get(self.engine.get_tensor_dtype(name))
            if dtype is None:
                raise ValueError(f"TensorRTBackend: tensor {name!r} has type {self.engine.get_tensor_dtype(name)}, "
                                 "expected float32 or float16")
            self.buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        missing = {INPUT_NAME, *output_names(model)} - set(self.buffers)
        if missing:
            raise ValueError(f"TensorRTBackend: the engine lacks the tensors {sorted(missing)}")

    def dense(self, bev):
        """Enqueues the engine on the backend's own CUDA stream, ordered after the caller's stream (which made
        `bev`) and before it again (which reads the outputs): no host synchronization here."""
        import torch

        caller = torch.cuda.current_stream(self.device)
        bev = bev.to(self.device, torch.float32)
        self.stream.wait_stream(caller)  # bev is complete before the engine reads it
        bev.record_stream(self.stream)
        frames = []
        with torch.cuda.stream(self.stream):
            for frame in range(bev.shape[0]):  # the engine is built for one frame, like the ONNX graph
                self.buffers[self.input_name].copy_(bev[frame:frame + 1])
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise RuntimeError("TensorRT: execute_async_v3 failed")
                # Copies on the same stream: after the engine, and before the next frame overwrites the buffers.
                frames.append([self.buffers[f"{task}.{head}"].float().clone() for task, head in self.outputs])
        caller.wait_stream(self.stream)  # whatever the caller enqueues next sees the outputs
        results = [{} for _ in self.model.dense_head.heads_list]
        for index, (task, head) in enumerate(self.outputs):
            parts = [f[index] for f in frames]
            for part in parts:
                part.record_stream(caller)  # allocated on self.stream, used on the caller's
            results[int(task)][head] = torch.cat(parts)
        return results

    def bev_input(self, batch: dict):
        """What `dense` takes: the FP32 BEV map (the QDQ engine quantizes it itself)."""
        return self.model.bev_features(batch)

    def __call__(self, batch: dict) -> list[dict]:
        return self.dense(self.bev_input(batch))
