"""Running a detector: points -> voxels -> network (backend) -> decoded Detections."""

from .detector import Detector, bundled_checkpoint

__all__ = ["Detector", "bundled_checkpoint"]
