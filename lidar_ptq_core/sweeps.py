"""Sweep accumulation for multi-sweep models, beside voxelization: the library, calibration and the detector node
share it.

A multi-sweep model (nuScenes CenterPoint: 10 sweeps) sees the current sweep together with the points of the sweeps
before it, each point carrying its sweep's time lag (current stamp - sweep stamp, seconds; 0 for the current sweep) in
the point feature the model config names `time_lag`. `SweepAccumulator` keeps the last sweeps and builds that cloud,
as Autoware's CenterPoint node does with its past-frame densification.

Motion compensation: with a pose per sweep (4x4 sensor-to-world, e.g. from an odometry topic or tf), each past sweep's
points are moved into the current sweep's sensor frame, so a parked car stays in one place across sweeps. Without
poses the past points stay where the sensor saw them, in a frame that has since moved: on a car at 10 m/s, a point
0.5 s old sits 5 m from where it now is, so static objects smear along the direction of travel and their boxes
stretch or split. At walking speed (1 m/s, 0.5 m over 0.5 s) it costs little; at road speed give poses. The
accumulator warns once when it accumulates without them.

Sweeps older than `max_time_lag` seconds are left out (the model saw no larger lags in training: at 10 Hz a 0.5 s
limit keeps 6 sweeps of 10). A stamp older than the newest kept sweep (a bag replayed from its start) empties the
history; a sweep with the newest kept sweep's stamp (the same message twice) replaces it.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

TIME_LAG_FEATURE = "time_lag"


@dataclass(frozen=True)
class SweepConfig:
    """A model config's `sweeps` section: how many sweeps the model sees at once (1: no accumulation) and the oldest
    sweep it takes, in seconds behind the current one."""

    count: int = 1
    max_time_lag: float = 0.5

    def __post_init__(self) -> None:
        count = self.count
        if isinstance(count, bool) or not isinstance(count, (int, float)) or count != int(count) or count < 1:
            raise ValueError(f"sweeps.count must be an integer >= 1, got {count!r}")
        lag = self.max_time_lag
        if isinstance(lag, bool) or not isinstance(lag, (int, float)) or not math.isfinite(lag) or lag <= 0:
            raise ValueError(f"sweeps.max_time_lag must be a number of seconds > 0, got {lag!r}")
        object.__setattr__(self, "count", int(count))
        object.__setattr__(self, "max_time_lag", float(lag))

    @property
    def accumulates(self) -> bool:
        return self.count > 1

    def to_dict(self) -> dict:
        return {"count": self.count, "max_time_lag": self.max_time_lag}


def pose_matrix(pose) -> np.ndarray | None:
    """A 4x4 rigid transform as float64, checked; None stays None."""
    if pose is None:
        return None
    matrix = np.asarray(pose, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise ValueError(f"a sweep pose must be a finite 4x4 sensor-to-world matrix, got shape {matrix.shape}")
    rotation = matrix[:3, :3]
    if not np.allclose(matrix[3], (0.0, 0.0, 0.0, 1.0)) or not np.allclose(rotation @ rotation.T, np.eye(3),
                                                                            atol=1e-4):
        raise ValueError("a sweep pose must be a rigid transform: orthonormal rotation, last row 0 0 0 1")
    return matrix


def pose_from_position_quaternion(position, quaternion) -> np.ndarray:
    """(x, y, z), (qx, qy, qz, qw) as in geometry_msgs/Pose -> 4x4 matrix (the quaternion is normalised)."""
    x, y, z, w = (float(v) for v in quaternion)
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if not math.isfinite(norm) or norm < 1e-9:
        raise ValueError(f"pose orientation {tuple(quaternion)} is not a usable quaternion")
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    matrix = np.eye(4)
    matrix[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    matrix[:3, 3] = [float(v) for v in position]
    return pose_matrix(matrix)


class SweepAccumulator:
    """The last `num_sweeps` sweeps as one cloud with each point's time lag.

    `add(points, stamp, pose=None)` takes a sweep (N, F) in the model's point-feature order (prepared by
    pointcloud/features.py), its stamp in seconds and optionally its 4x4 sensor-to-world pose, and returns the
    accumulated (M, F) float32 cloud: the current sweep first, then the older ones, newest first. Column
    `time_lag_column` (None: the model has no such feature) holds each point's time lag in seconds.

    `z_offset` is the input setting already added to z (pointcloud/features.InputSettings): poses describe the sensor
    frame before it, so compensation takes it off and puts it back. `notify` receives the one-time note that sweeps
    are accumulated without poses (default: warnings.warn)."""

    def __init__(self, num_sweeps: int, max_time_lag_s: float, time_lag_column: int | None = None, *,
                 z_offset: float = 0.0, notify: Callable[[str], None] | None = None):
        config = SweepConfig(num_sweeps, max_time_lag_s)  # the same checks as the config section
        self.num_sweeps, self.max_time_lag_s = config.count, config.max_time_lag
        if time_lag_column is not None and (isinstance(time_lag_column, bool) or int(time_lag_column) < 3):
            raise ValueError(f"time_lag_column must be a feature index after x, y, z, got {time_lag_column!r}")
        self.time_lag_column = None if time_lag_column is None else int(time_lag_column)
        self.z_offset = float(z_offset)
        self.notify = notify or (lambda text: warnings.warn(text, stacklevel=3))
        self.warned_without_poses = False
        self.last_sweep_count = 0  # sweeps in the cloud the last add returned
        self._history: deque = deque(maxlen=self.num_sweeps - 1)  # (stamp, points, pose), newest last

    @classmethod
    def for_model(cls, model_config, *, z_offset: float = 0.0, notify=None) -> "SweepAccumulator | None":
        """The accumulator a model config asks for (its `sweeps` section), or None for a single-sweep model."""
        sweeps = getattr(model_config, "sweeps", None) or SweepConfig()
        if not sweeps.accumulates:
            return None
        names = [f.name for f in model_config.point_features]
        column = names.index(TIME_LAG_FEATURE) if TIME_LAG_FEATURE in names else None
        return cls(sweeps.count, sweeps.max_time_lag, column, z_offset=z_offset, notify=notify)

    def __len__(self) -> int:
        """Past sweeps held (at most num_sweeps - 1)."""
        return len(self._history)

    def reset(self) -> None:
        self._history.clear()

    def add(self, points: np.ndarray, stamp: float, pose=None) -> np.ndarray:
        points = np.asarray(points, dtype=np.float32)
        if points.ndim != 2 or points.shape[1] < 3:
            raise ValueError(f"a sweep must be an (N, >= 3) array with x, y, z first; got {points.shape}")
        if self.time_lag_column is not None and points.shape[1] <= self.time_lag_column:
            raise ValueError(f"a sweep needs column {self.time_lag_column} for the time lag; it has "
                             f"{points.shape[1]} columns")
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise ValueError(f"a sweep stamp must be a finite number of seconds, got {stamp!r}")
        pose = pose_matrix(pose)
        if self._history and stamp < self._history[-1][0]:
            self._history.clear()  # time went backwards (a replay restarted): the old sweeps belong to another run
        elif self._history and stamp == self._history[-1][0]:
            self._history.pop()  # the same sweep again (a message delivered twice): it replaces the first copy
        current = points.copy()
        if self.time_lag_column is not None:
            current[:, self.time_lag_column] = 0.0
        parts = [current]
        for past_stamp, past_points, past_pose in reversed(self._history):
            lag = stamp - past_stamp
            if lag > self.max_time_lag_s + 1e-6:
                break  # older still from here on
            moved = past_points.copy()
            if pose is not None and past_pose is not None:
                self._compensate(moved, np.linalg.inv(pose) @ past_pose)
            elif not self.warned_without_poses:
                self.warned_without_poses = True
                self.notify(f"accumulating {self.num_sweeps} sweeps without poses: past sweeps are not motion "
                            f"compensated (at 10 m/s a point {self.max_time_lag_s:g} s old is "
                            f"{10 * self.max_time_lag_s:g} m off); give an odometry source (reported once)")
            if self.time_lag_column is not None:
                moved[:, self.time_lag_column] = lag
            parts.append(moved)
        if self.num_sweeps > 1:
            self._history.append((stamp, points.copy(), pose))
        self.last_sweep_count = len(parts)
        return np.concatenate(parts, axis=0) if len(parts) > 1 else current

    def _compensate(self, points: np.ndarray, past_to_current: np.ndarray) -> None:
        """Move x, y, z (in place) from a past sweep's sensor frame into the current one."""
        xyz = points[:, :3].astype(np.float64)
        xyz[:, 2] -= self.z_offset
        xyz = xyz @ past_to_current[:3, :3].T + past_to_current[:3, 3]
        xyz[:, 2] += self.z_offset
        points[:, :3] = xyz


class SweepDetector:
    """A Detector (runtime/detector.py) that sees accumulated sweeps: `detect(points, stamp, pose=None)`.

    Points are prepared by the detector's point-feature rule (x y z-only clouds get zeros, a PointCloud by name), then
    accumulated as the model config's `sweeps` section says (a single-sweep model: passed through)."""

    def __init__(self, detector, *, notify: Callable[[str], None] | None = None):
        self.detector = detector
        self.accumulator = SweepAccumulator.for_model(detector.config, notify=notify)
        self.last_points: np.ndarray | None = None  # the accumulated cloud of the last detect, for inspection

    @property
    def config(self):
        return self.detector.config

    @property
    def class_names(self):
        return self.detector.class_names

    def detect(self, points, stamp: float, pose=None):
        prepared = self.detector.prepare_points(points, "points passed to SweepDetector.detect")
        if self.accumulator is not None:
            prepared = self.accumulator.add(prepared, stamp, pose)
        self.last_points = prepared
        return self.detector.detect(prepared)
