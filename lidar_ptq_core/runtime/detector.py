"""`Detector`: a checkpoint plus its config, `detect(points) -> Detections`. Backends (runtime/backends.py: torch,
onnxruntime, and TensorRT in runtime/tensorrt_backend.py, unverified here) run the network behind the same call.

A pillar bundle on onnxruntime runs with numpy and onnxruntime alone (runtime/onnx_backend.py): this module imports
torch only where a torch model or a torch backend is asked for, so `Detector.from_bundle` works where torch and spconv
are not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config_files import data_roots
from ..decode import decode_batch
from ..detections import Detections
from ..pointcloud.features import PointPreparer
from ..voxelize import voxelize_clouds


def bundled_checkpoint(name: str = "sim_pillar") -> Path:
    """A .safetensors path as given, or a checkpoint shipped with the project (checkpoints/<name>.safetensors)."""
    path = Path(name)
    if path.suffix == ".safetensors" or path.exists():
        return path
    roots = data_roots("checkpoints")
    for root in roots:
        if (root / f"{name}.safetensors").is_file():
            return root / f"{name}.safetensors"
    available = sorted({p.stem for root in roots for p in root.glob("*.safetensors")})
    raise FileNotFoundError(f"no bundled checkpoint {name!r}; available: {available}")


def bundled_bundle(name: str) -> Path:
    """A .lptq path that exists, or a bundle shipped with the project by file name (checkpoints/sim_pillar_int8.lptq:
    the node's default model)."""
    path = Path(name)
    if path.exists() or path.parent != Path("."):
        return path
    for root in data_roots("checkpoints"):
        if (root / path.name).is_file():
            return root / path.name
    return path  # reading it gives the not-found error with the name as given


class Detector:
    def __init__(self, model=None, backend=None, config=None):
        """`backend` runs the network on a voxel batch (runtime/backends.py); default: `model` (a torch module) in
        torch. A backend without a torch model (`model` None: a bundle's graphs) needs the model `config`."""
        if model is None and (backend is None or config is None):
            raise ValueError("a Detector without a torch model needs a backend and the model config")
        if model is not None:
            from .backends import TorchBackend

            self.model = model.eval()
            self.backend = backend or TorchBackend(self.model)
            self.config = model.config
            self.device = next(model.parameters()).device
        else:
            self.model, self.backend, self.config, self.device = None, backend, config, "cpu"
        self.geometry = self.config.head_geometry()
        self.last_voxel_report = None  # what voxelization kept and dropped in the last frame detected
        # The model config's rule for missing point features (zeros + one warning, or an error): pointcloud/features.py
        self.prepare_points = PointPreparer(self.config.point_features)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path = "sim_pillar", device: str = "cpu") -> "Detector":
        """FP32 or INT8 (fake-quant) checkpoint; the quantized one runs through the same voxelize and decode."""
        from ..recipes.centerpoint import load_any_checkpoint

        return cls(load_any_checkpoint(bundled_checkpoint(str(checkpoint)), device=device))

    @classmethod
    def from_bundle(cls, path: str | Path, backend: str = "auto", threads: int | None = None,
                    engine_cache: str | Path | None = None, device: str = "cpu") -> "Detector":
        """A `.lptq` bundle on a backend: onnxruntime, torch, tensorrt (UNVERIFIED here: needs TensorRT and a CUDA
        GPU; the engine is built on first use and cached in `engine_cache`, default ~/.cache/lidar_ptq/engines),
        openvino (the QDQ dense graph on OpenVINO's CPU plugin, requirements-openvino.txt), or auto: tensorrt where
        tensorrt imports and CUDA is available, else the CPU engine export chose for this bundle (onnxruntime, or
        OpenVINO for a bundle whose INT8 convs feed FP32 layers: runtime.cpu in its manifest) where it is installed,
        else onnxruntime."""
        from .backends import resolve_backend, tensorrt_unavailable

        if backend == "auto" and tensorrt_unavailable() is not None:
            backend = cls.auto_cpu_engine(path)
        backend = resolve_backend(backend)
        if backend == "onnxruntime":
            return cls._on_onnxruntime(bundled_bundle(str(path)), threads)
        from ..export.export_bundle import DENSE_PART, load_bundle_model  # torch from here on

        if backend == "tensorrt":
            error = tensorrt_unavailable()
            if error is not None:
                raise error
            from .tensorrt_backend import TensorRTBackend

            model, bundle = load_bundle_model(path, device="cuda")
            return cls(model, TensorRTBackend(model, bundle.read_part(DENSE_PART), cache_dir=engine_cache))
        if backend == "openvino":
            from .openvino_backend import OpenVinoBackend, import_openvino

            import_openvino()  # its one clear error before the bundle is loaded
            model, bundle = load_bundle_model(bundled_bundle(str(path)))
            return cls(model, OpenVinoBackend(model, bundle.read_part(DENSE_PART), threads))
        from ..devices import resolve_device

        return cls(load_bundle_model(path, device=resolve_device(device))[0])  # torch: the checkpoint, fake-quant

    @staticmethod
    def auto_cpu_engine(path: str | Path) -> str:
        """The CPU engine `auto` runs the bundle at `path` on: its recorded choice where that engine imports here
        (OpenVINO also needs torch, for the encoder), else onnxruntime."""
        import importlib.util

        from ..export.bundle import read_bundle
        from .onnx_backend import cpu_engine_of

        def importable(module: str) -> bool:
            try:
                return importlib.util.find_spec(module) is not None
            except ImportError:  # a finder that refuses the name (a runtime-only install)
                return False

        choice = cpu_engine_of(read_bundle(bundled_bundle(str(path)), verify=False))
        if choice == "openvino" and not (importable("openvino") and importable("torch")):
            return "onnxruntime"
        return choice

    @classmethod
    def _on_onnxruntime(cls, path: Path, threads: int | None) -> "Detector":
        """The bundle's shipped graphs on onnxruntime, nothing built: a pillar bundle entirely (numpy +
        onnxruntime), a voxel bundle's dense graph behind its sparse encoder in torch + spconv."""
        from ..export.bundle import read_bundle
        from .onnx_backend import OnnxRuntimeBackend, runtime_section

        bundle = read_bundle(path)
        section = runtime_section(bundle)
        plan = section["onnxruntime"]
        if plan.get("encoder") is not None:
            return cls(backend=OnnxRuntimeBackend(bundle, threads), config=bundle.config)
        try:
            import spconv.pytorch  # noqa: F401  (the sparse encoder's kernels)
            import torch  # noqa: F401
        except ImportError as exc:
            raise ValueError(f"{path}: a voxel bundle runs its sparse encoder in torch + spconv, which do not import "
                             f"here ({exc}); only pillar bundles run with numpy + onnxruntime alone") from None
        from ..export.export_bundle import load_bundle_model
        from .backends import TorchEncoderOnnxBackend

        model, bundle = load_bundle_model(path)  # the encoder runs on the CPU, beside the CPU provider
        return cls(model, TorchEncoderOnnxBackend(model, bundle.read_part(plan["dense"]), threads, graph="shipped",
                                             code_scale=section["bev"]["scale"]))

    @classmethod
    def load(cls, source: str | Path, backend: str = "auto", threads: int | None = None,
             device: str = "cpu") -> "Detector":
        """A bundle (.lptq) or a checkpoint (bundled name or .safetensors, FP32 or INT8). `device` (auto, cpu,
        cuda, cuda:N; devices.resolve_device) is where torch runs the network: checkpoints and the torch backend
        (resolved there, so that a bundle on onnxruntime never imports torch)."""
        from ..devices import resolve_device

        if str(source).endswith(".lptq"):
            return cls.from_bundle(bundled_bundle(str(source)), backend, threads, device=device)
        if backend not in ("auto", "torch"):
            raise ValueError(f"backend {backend!r} needs a bundle (lidar-ptq export); a checkpoint runs in torch")
        return cls.from_checkpoint(source, device=resolve_device(device))

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.geometry.class_names

    @property
    def evaluation_region(self) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max): the area this detector sees, for restricting evaluation to it."""
        pcr = self.config.voxelization.point_cloud_range
        return pcr[0], pcr[1], pcr[3], pcr[4]

    def detect(self, points: np.ndarray) -> Detections:
        return self.detect_batch([points])[0]

    def detect_batch(self, clouds: list[np.ndarray]) -> list[Detections]:
        """Points (N, C) in the model's feature order (x, y, z, intensity, ...; missing trailing features are
        filled by the config's rule) or PointClouds (features by name) -> Detections per cloud."""
        clouds = [self.prepare_points(c, "points passed to Detector.detect") for c in clouds]
        if getattr(self.backend, "takes_numpy", False):  # the torch-free runtime: numpy batch, numpy outputs
            batch, reports = voxelize_clouds(clouds, self.config.voxelization, self.config.num_point_features,
                                             as_numpy=True)
            outputs = self.backend(batch)
        else:
            outputs, reports = self._torch_outputs(clouds)
        self.last_voxel_report = reports[-1]
        return decode_batch(outputs, self.geometry, self.config.post_processing)

    def _torch_outputs(self, clouds: list[np.ndarray]):
        import torch

        with torch.inference_mode():
            batch, reports = voxelize_clouds(clouds, self.config.voxelization, self.config.num_point_features)
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            return self.backend(batch), reports
