"""lidar_ptq_ros: the thin ROS 2 layer over lidar_ptq_core. It converts messages and calls the library, nothing more."""
