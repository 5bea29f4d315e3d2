"""Model-agnostic INT8 post-training quantization (TensorRT semantics) with LiDAR-PTQ and its baselines.

Works on torch modules; never imports lidar_ptq_core.models. A model recipe (lidar_ptq_core/recipes/) describes a
model to it through a QuantTarget.
"""

from .api import QuantReport, QuantTarget, load_quantized_state, quantize
from .config import METHODS, QuantConfig, method_config
from .equalize import EqualizationPair
from .prepare import QuantLayout, quant_wrappers

__all__ = ["EqualizationPair", "METHODS", "QuantConfig", "QuantLayout", "QuantReport", "QuantTarget",
           "load_quantized_state", "method_config", "quant_wrappers", "quantize"]
