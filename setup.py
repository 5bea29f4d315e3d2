"""ament_python package: installs with colcon in a ROS 2 workspace and with plain pip into a venv."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "lidar_ptq_ros"

setup(
    name="lidar_ptq",
    version="0.1.0",
    description="INT8 post-training quantization (LiDAR-PTQ) and deployment of CenterPoint lidar 3D detectors, "
                "with a ROS 2 node",
    packages=find_packages(include=["lidar_ptq_core", "lidar_ptq_core.*", "lidar_ptq_ros", "lidar_ptq_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
        (f"share/{PACKAGE}/checkpoints", glob("checkpoints/*.safetensors") + glob("checkpoints/*.lptq")),
        # Fast DDS profile (shared memory for large clouds, UDP on loopback only), named by
        # FASTDDS_DEFAULT_PROFILES_FILE.
        (f"share/{PACKAGE}/config/dds", glob("config/dds/*.xml")),
    ]
    # Library configs (simulator, models) install beside the ROS parameters, one folder per kind.
    + [(f"share/{PACKAGE}/{folder}", glob(f"{folder}/*.yaml")) for folder in sorted(glob("config/*/"))],
    python_requires=">=3.10",
    install_requires=["numpy", "PyYAML", "safetensors", "tqdm", "rosbags", "matplotlib", "scipy"],
    # TensorRT backend (runtime/tensorrt_backend.py, `lidar-ptq build-engine`): an NVIDIA GPU machine only; never
    # installed or run on the project's CPU machines. On a Jetson, JetPack's TensorRT takes the place of the wheel.
    extras_require={"tensorrt": ["tensorrt>=10", "polygraphy>=0.49"]},
    zip_safe=True,
    maintainer="lidar-ptq",
    maintainer_email="dev@lidar-ptq.invalid",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "lidar-ptq = lidar_ptq_core.cli:main",
            "detector_node = lidar_ptq_ros.detector_node:main",
            "calibration_recorder = lidar_ptq_ros.calibration_recorder:main",
            "cloud_player = lidar_ptq_ros.cloud_player:main",
        ],
        # `lidar-ptq demo` runs the node chain through this plugin hook; the core never imports lidar_ptq_ros.
        "lidar_ptq.demo": ["node-chain = lidar_ptq_ros.demo_chain:run_demo"],
    },
)
