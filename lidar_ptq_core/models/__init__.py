"""CenterPoint models (pillar and voxel) with OpenPCDet-compatible module names and state_dict keys.

Modules: config (YAML dataclasses, grid arithmetic; no torch), vfe, backbone3d (spconv), map_to_bev, backbone2d,
head, centerpoint (the network and `build_centerpoint`), checkpoint (safetensors I/O, OpenPCDet import). Decoding of
the head outputs is lidar_ptq_core.decode. Only the config is imported here, so reading a config needs no torch.
"""

from .config import CenterPointConfig, load_model_config

__all__ = ["CenterPointConfig", "load_model_config"]
