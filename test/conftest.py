"""Shared test setup. DDS discovery must stay on loopback: set before anything can import rclpy."""

import os
from pathlib import Path

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = os.environ.get("LIDAR_PTQ_TEST_DOMAIN_ID", "42")
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROS_LOG_DIR", str(REPO / "build" / "ros_log"))
os.environ.setdefault("AMENT_PREFIX_PATH", str(REPO / ".venv"))
# The shipped Fast DDS profile: shared memory carries large clouds between processes, UDP only on loopback. Set before
# any participant exists (Fast DDS reads it once per process); subprocesses inherit it.
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "dds" / "fastdds_loopback_shm.xml")

SHARED_KITTI = REPO.parent / "shared" / "data" / "kitti_frames"


@pytest.fixture(scope="session")
def kitti_frames() -> list[Path]:
    """The real KITTI Velodyne frames kept outside the repository (license: test inputs only)."""
    frames = sorted(SHARED_KITTI.glob("*.bin"))
    if not frames:
        pytest.skip(f"real KITTI frames not available: {SHARED_KITTI} is absent or empty")
    return frames
