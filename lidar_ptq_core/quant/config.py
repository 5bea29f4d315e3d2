"""Quantization settings as data: one frozen dataclass, built from YAML or a method preset plus overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Mapping

from .calibrators import CALIBRATORS


@dataclass(frozen=True)
class QuantConfig:
    method: str = "lidar-ptq"  # name recorded in the report
    # Random draws: the histogram calibrators' samples and QDrop's drops only. The lidar-ptq presets draw none (max
    # calibration, fixed frame order, reconstruction from round-to-nearest): another seed gives the same model.
    seed: int = 0
    # -- which layers
    keep_float: tuple[str, ...] = ()  # module names left in FP32 (each is named in the report)
    # The layers that make the network's outputs (the target names them: CenterPoint's heads' last convs) stay in
    # FP32: a fraction of a percent of the compute, while their INT8 rounding lands directly on box sizes, offsets and
    # class scores (sim pillar, val: BEV IoU mAP -0.72 -> -0.28 with lidar-ptq-fast; docs/QUANTIZATION.md).
    keep_float_outputs: bool = False
    # With keep_float_outputs: the output layers keep FP32 weights but still read INT8 (their input quantizer stays
    # on), so the layer before each one makes INT8 codes and stays an integer conv in the CPU engine. With an FP32
    # input there, those layers (the heads' hidden 3x3 convs) compute in FP32 and the sim pillar's dense part ran
    # 1.7x slower (docs/benchmarks/engine_speed.txt).
    output_layers_int8_input: bool = False
    # -- activation calibration
    calibrator: str = "max"  # max | percentile | entropy | mse
    percentile: float = 99.99
    active_sites_only: bool = True  # sparsity-based: statistics over non-empty sites only
    samples_per_batch: int = 20000  # |x| values kept per batch and quantizer for the histogram calibrators
    input_channel_scaling: bool = True  # per-channel input scales folded into the first layers (the first-layer trap)
    # 1: every input channel spans [-1, 1] and the spread moves into the weights; < 1 balances activations and
    # weights (quant/calibrate.py apply_input_channel_scaling)
    input_channel_alpha: float = 1.0
    # Cross-layer channel equalization (quant/equalize.py) over the pairs the task target names: per-channel ranges
    # move from activations (per-tensor scales) into weights (per-channel scales), exact in FP32.
    equalize_channels: bool = False
    # 0: ranges stay in the activations, 1: all into the weights. 0.3 measured best on the sim pillar model (0.5:
    # 70.5 mAP, 0.3: 70.8 with the full preset; docs/BENCHMARKS.md)
    equalization_alpha: float = 0.3
    equalization_frames: int = 32
    # Pairs whose consumers all keep FP32 weights (output_layers_int8_input): their weights have no grid to spoil, so
    # the producer's channels can be balanced fully (1: every channel spans the widest one's range) for the INT8
    # input they read.
    equalization_alpha_fp32_consumers: float = 1.0
    # One input scale for all layers that read the same tensor (quant/share.py): the integer engine then makes that
    # tensor once instead of once per consumer's grid. Grid search and TGPL choose the shared scale jointly.
    share_input_quantizers: bool = False
    # -- grid search of clip ratios (LiDAR-PTQ): per layer, the ratio of amax minimising the layer's output error
    grid_search: bool = True
    grid_ratios: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
    grid_search_frames: int = 32
    # -- TGPL: learned activation step sizes against the task loss at the final output, all quantizers on
    tgpl: bool = True
    tgpl_steps: int = 200
    tgpl_frames: int = 32  # calibration frames the steps cycle through
    tgpl_lr: float = 2e-3  # relative to each amax
    # "constant", or "cosine" (decays to 0: the result is less the last step's frame and more the average)
    tgpl_schedule: str = "constant"
    tgpl_weight: float = 1.0
    # The task hook's pseudo-labels (the recipe builds the hook from these): FP32 detections with at least this score,
    # at most this many per frame. Also used by the task loss of the reconstruction and by every held-out check.
    tgpl_score_threshold: float = 0.3
    tgpl_top_k: int = 100
    output_mse_weight: float = 0.0  # squared error of every raw output; for models without a task hook
    # -- block reconstruction with adaptive rounding
    adaround: bool = True
    adaround_steps: int = 300
    adaround_frames: int = 32
    adaround_lr: float = 1e-2
    adaround_reg_weight: float = 0.01
    adaround_beta: tuple[float, float] = (20.0, 2.0)
    adaround_warmup: float = 0.2  # fraction of steps without the rounding regulariser
    learn_activation_scales: bool = False  # learn the block's input step sizes beside the rounding (BRECQ/QDrop)
    activation_drop_prob: float = 0.0  # QDrop: during reconstruction, keep this fraction of activations in FP32
    task_loss_every: int = 10  # add the task-loss hook's loss (TGPL) at the final output every N reconstruction steps
    task_loss_weight: float = 1.0
    # Held-out check: each reconstructed block must lower the network's task loss (or, without a task hook, the output
    # squared error) on this many calibration frames not used for reconstruction, else it keeps round-to-nearest.
    adaround_check_frames: int = 8
    # Held-out check of the grid search and of TGPL: each keeps its result only if the network's task loss (or,
    # without a task hook, the output squared error) on the last this-many calibration frames went down, else the
    # activation ranges go back to what they were. 0: no check. On few calibration frames a stage can fit those
    # frames and lose mAP on others; the held-out loss ranks models as their mAP does (benchmarks/heldout_rank.py).
    # With fewer calibration frames than the stages use plus these, the check sees frames the stage saw too.
    stage_check_frames: int = 0
    # -- empirical bias correction (quant/bias_correction.py): each layer's bias absorbs the mean shift of its output
    # channels, INT8 against FP32 on this many calibration frames, layer by layer; after every stage that sets ranges
    # or weights. Checked on held-out frames like the grid search when stage_check_frames is set.
    bias_correction: bool = False
    bias_correction_frames: int = 4
    # -- output correction (quant/output_correction.py): each output layer's bias absorbs the mean INT8 - FP32 shift
    # of its channels at the sites the task hook names (a detector's pseudo-label centres), on this many frames;
    # checked on held-out frames like bias correction when stage_check_frames is set.
    output_correction: bool = False
    output_correction_frames: int = 32
    # -- last: every bias on its int32 grid s_x * s_w, as integer kernels add it (quant/bias.py)
    int32_bias: bool = True
    # -- report
    sensitivity_frames: int = 4

    def __post_init__(self) -> None:
        if self.calibrator not in CALIBRATORS:
            raise ValueError(f"calibrator must be one of {CALIBRATORS}, got {self.calibrator!r}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        ratios = tuple(float(r) for r in self.grid_ratios)
        if not ratios or any(not 0 < r <= 1.5 for r in ratios):
            raise ValueError(f"grid_ratios must be non-empty, each in (0, 1.5], got {self.grid_ratios}")
        object.__setattr__(self, "grid_ratios", ratios)
        object.__setattr__(self, "keep_float", tuple(str(n) for n in self.keep_float))
        object.__setattr__(self, "adaround_beta", tuple(float(b) for b in self.adaround_beta))
        if self.share_input_quantizers and self.learn_activation_scales:
            raise ValueError("share_input_quantizers does not support learn_activation_scales (per-block learning "
                             "would move a scale that other blocks read)")
        if not 0 <= self.input_channel_alpha <= 1:
            raise ValueError(f"input_channel_alpha must be in [0, 1], got {self.input_channel_alpha}")
        if not 0 <= self.equalization_alpha <= 1:
            raise ValueError(f"equalization_alpha must be in [0, 1], got {self.equalization_alpha}")
        if self.tgpl_schedule not in ("constant", "cosine"):
            raise ValueError(f"tgpl_schedule must be 'constant' or 'cosine', got {self.tgpl_schedule!r}")
        if not 0 <= self.activation_drop_prob < 1:
            raise ValueError(f"activation_drop_prob must be in [0, 1), got {self.activation_drop_prob}")
        if not 0 <= self.tgpl_score_threshold <= 1:
            raise ValueError(f"tgpl_score_threshold must be in [0, 1], got {self.tgpl_score_threshold}")
        if int(self.tgpl_top_k) < 1:
            raise ValueError(f"tgpl_top_k must be >= 1, got {self.tgpl_top_k}")
        for name in ("grid_search_frames", "adaround_frames", "tgpl_steps", "tgpl_frames", "equalization_frames",
                     "adaround_steps", "task_loss_every", "adaround_check_frames", "stage_check_frames",
                     "bias_correction_frames", "output_correction_frames"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "QuantConfig":
        from ..config_files import build_config

        return build_config(cls, data, "quantization")


_NAIVE = dict(active_sites_only=False, input_channel_scaling=False, grid_search=False, tgpl=False, adaround=False)
METHODS: dict[str, dict] = {
    # Naive calibrators as TensorRT / pytorch-quantization apply them: all sites, no first-layer fix.
    "max": dict(_NAIVE, calibrator="max"),
    "percentile": dict(_NAIVE, calibrator="percentile"),
    "entropy": dict(_NAIVE, calibrator="entropy"),
    "mse": dict(_NAIVE, calibrator="mse"),
    # LiDAR-PTQ and its ablation steps.
    "lidar-ptq": dict(share_input_quantizers=True, equalize_channels=True),
    # The same stages with small budgets: minutes on a 2-core CPU (the demo's default); quality below the full run.
    "lidar-ptq-quick": dict(share_input_quantizers=True, equalize_channels=True, equalization_frames=8,
                            grid_search_frames=8, tgpl_steps=30, tgpl_frames=8, adaround_frames=8, adaround_steps=40,
                            task_loss_every=10, adaround_check_frames=4, sensitivity_frames=2, stage_check_frames=8),
    # Seconds, not minutes: sparsity-based MSE ranges instead of max + grid search, and bias correction instead of
    # TGPL and reconstruction (docs/BENCHMARKS.md "A 20-second recipe"); checked on 8 held-out frames.
    "lidar-ptq-fast": dict(share_input_quantizers=True, equalize_channels=True, equalization_frames=8,
                           calibrator="mse", grid_search=False, tgpl=False, adaround=False, bias_correction=True,
                           bias_correction_frames=8, stage_check_frames=8, sensitivity_frames=0),
    "sparse-max": dict(grid_search=False, tgpl=False, adaround=False),
    "sparse-grid": dict(tgpl=False, adaround=False),
    "sparse-grid-tgpl": dict(adaround=False),
    # Reconstruction baselines: all-site MSE initialisation, block reconstruction, no TGPL.
    "brecq": dict(active_sites_only=False, calibrator="mse", grid_search=False, tgpl=False, task_loss_every=0,
                  adaround_check_frames=0),
    "qdrop": dict(active_sites_only=False, calibrator="mse", grid_search=False, tgpl=False, task_loss_every=0,
                  learn_activation_scales=True, activation_drop_prob=0.5, adaround_check_frames=0),
}


def method_config(method: str, **overrides) -> QuantConfig:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    return replace(QuantConfig(method=method, **METHODS[method]), **overrides)


def parse_settings(items) -> dict:
    """['tgpl_top_k=50', 'grid_ratios=[0.5, 1.0]'] -> {'tgpl_top_k': 50, 'grid_ratios': [0.5, 1.0]}: values read as
    YAML, as in a --config file (QuantConfig.from_dict checks the keys and kinds)."""
    import yaml

    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad setting {item!r}: expected key=value")
        try:
            settings[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"bad value in setting {item!r}: {exc}") from None
    return settings
