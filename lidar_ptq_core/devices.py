"""Which torch device a command runs its network on: `--device auto|cpu|cuda|cuda:N`, checked once, with one clear
error where the asked device does not exist (no silent fallback to the CPU: a user who asks for the GPU and gets hours
on the CPU has been lied to).

Only torch work moves: voxelization and decoding stay in numpy, onnxruntime sessions stay on the CPU provider.
"""

from __future__ import annotations

DEVICE_CHOICES_HELP = ("torch device for the network: auto (cuda where torch sees a GPU, else cpu), cpu, cuda or "
                       "cuda:N (default: %(default)s)")


def resolve_device(name: str | None = "auto"):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device; ValueError if the device does not exist here. A CUDA
    device comes with TF32 off (exact_fp32)."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"device {name!r} is not supported; expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: torch sees no CUDA GPU here (torch {torch.__version__}, "
                         f"torch.cuda.is_available() is False); use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {name!r}: torch sees {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    exact_fp32()
    return device


def exact_fp32(enabled: bool = True) -> None:
    """FP32 means FP32 on the GPU: torch lets cuDNN convolutions use TF32 (10-bit mantissa) by default on Ampere and
    later, which moved the sim pillar model's heatmap probabilities by up to 3e-3 against the CPU and flipped INT8
    rounding decisions (benchmarks/gpu_check.py). Quantization calibrates on these outputs, so the commands turn TF32
    off; `enabled=False` gives TF32 back (faster, for timing comparisons)."""
    import torch

    torch.backends.cudnn.allow_tf32 = not enabled
    torch.backends.cuda.matmul.allow_tf32 = not enabled


def batch_to(batch, device):
    """A voxel batch (dict of tensors and plain values) with its tensors on `device`."""
    import torch

    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def synchronize(device) -> None:
    """Wait for queued GPU work on `device` (for honest wall-clock timing); nothing on the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device) -> str:
    """'cpu' or 'cuda:0 (NVIDIA H200)'."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
