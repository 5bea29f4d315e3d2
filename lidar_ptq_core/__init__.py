"""lidar_ptq_core: offline library for INT8 lidar 3D detection (no ROS import anywhere in this package)."""

__version__ = "0.1.0"
