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

Offline sources (`lidar-ptq detect`, `check`, `compare`) go through `frame_sequence` (a bag, a folder of frames sorted
by name, one file, or the sim) and `iter_sweep_windows` (each frame with the frames just before it), and each model
turns a window into its points with `WindowPreparer`, so that a multi-sweep model sees there what the node and
calibration give it. Stamps: a bag's message timestamps; a folder's from nuScenes-style file names (`..__<16-digit
microseconds>`) or `--sweep-period` seconds between files (0.05 for nuScenes' 20 Hz sweeps); files without either
and the sim stay single sweeps (time lag 0), said once. Offline sources carry no poses: no motion compensation.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

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


# -- offline sources: frames in recording order with their stamps --------------------------------------------------
POINT_FILE_SUFFIXES = (".bin", ".pcd")
# nuScenes names each sweep file after its stamp in microseconds: ..._LIDAR_TOP__1532402927647951.pcd.bin
FILE_NAME_STAMP = re.compile(r"__(\d{16})$")


@dataclass(frozen=True)
class SequenceFrame:
    """One frame of a source: its position, names, stamp in seconds (None: the source has none) and a loader
    returning its PointCloud (a file is read only when a window needs it)."""

    index: int
    frame_id: str
    where: str
    stamp: float | None
    load: Callable[[], object]


@dataclass(frozen=True)
class StampedCloud:
    stamp: float | None
    where: str
    cloud: object  # a PointCloud with every field the source has


@dataclass(frozen=True)
class SweepWindow:
    """A frame and up to count - 1 frames before it, oldest first (the frame itself last)."""

    sweeps: tuple[StampedCloud, ...]

    @property
    def newest(self) -> StampedCloud:
        return self.sweeps[-1]


class FrameSequence:
    """The frames of one source in recording order. `stamps` says where their stamps come from (None: nowhere)."""

    def __init__(self, description: str, frames: Callable[[], Iterator[SequenceFrame]], count: Callable[[], int],
                 stamps: str | None):
        self.description = description
        self._frames, self._count, self.stamps = frames, count, stamps
        self._length: int | None = None

    def __iter__(self) -> Iterator[SequenceFrame]:
        return self._frames()

    def __len__(self) -> int:
        if self._length is None:
            self._length = self._count()
        return self._length


def file_name_stamps(files, sweep_period: float | None = None) -> tuple[list[float] | None, str | None]:
    """(stamps in seconds, where they come from) for files in recording order: `sweep_period` seconds apart when
    given, else the nuScenes-style stamps in their names when every name has one, else (None, None)."""
    if sweep_period is not None:
        if isinstance(sweep_period, bool) or not math.isfinite(sweep_period) or sweep_period <= 0:
            raise ValueError(f"--sweep-period must be a number of seconds > 0, got {sweep_period!r}")
        return [i * float(sweep_period) for i in range(len(files))], f"--sweep-period {sweep_period:g} s"
    matches = [FILE_NAME_STAMP.search(Path(f).name.split(".")[0]) for f in files]
    if files and all(matches):
        return [int(m.group(1)) * 1e-6 for m in matches], "stamps in the file names"
    return None, None


def frame_sequence(source: str, topic: str | None = None, sweep_period: float | None = None, *,
                   sim_config: str = "default", sim_split: str = "val", sim_frames: int = 0) -> FrameSequence:
    """The frames of `source`: a rosbag2 bag (stamps: message timestamps; `sweep_period` is refused, a bag has
    its own), a folder of .bin / .pcd files sorted by name, one such file, or 'sim' (`sim_frames` frames of split
    `sim_split`; no stamps)."""
    from .pointcloud import PointCloud, is_bag_path, iter_bag_frames, pointcloud2_topics, read_points

    if source == "sim":
        if sweep_period is not None:
            raise ValueError("--sweep-period is for folders of sequential frames; the sim frames are independent")
        from .sim import SimDataset, load_sim_config

        dataset = SimDataset(sim_split, sim_frames, load_sim_config(sim_config))
        dataset.prepare(num_workers=1, progress=False)

        def sim_frames_iter():
            for i in range(len(dataset)):
                yield SequenceFrame(i, dataset.frame_id(i), f"sim {sim_split} frame {i}", None,
                                    lambda i=i: PointCloud(dataset[i].points, ("x", "y", "z", "intensity")))

        return FrameSequence(f"the sim {sim_split} split ({sim_config} sensor)", sim_frames_iter,
                             lambda: len(dataset), None)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"point cloud source {source!r} is neither 'sim' nor an existing folder, file or bag")
    if is_bag_path(path):
        if sweep_period is not None:
            raise ValueError(f"--sweep-period is for folders of frames; bag {path} has its own message stamps")
        if not pointcloud2_topics(path):
            raise ValueError(f"{path}: the bag holds no sensor_msgs/msg/PointCloud2 topic")
        stem = path.name.split(".")[0]

        def bag_frames():
            for i, frame in enumerate(iter_bag_frames(path, topic)):
                yield SequenceFrame(i, f"{stem}_{i:06d}", f"{path} message {i}", frame.timestamp_ns * 1e-9,
                                    lambda frame=frame: frame.cloud)

        return FrameSequence(f"bag {path}", bag_frames, lambda: sum(1 for _ in iter_bag_frames(path, topic)),
                             "bag message stamps")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(POINT_FILE_SUFFIXES))
        if not files:
            raise ValueError(f"{path}: no .bin or .pcd point cloud files")
        stamps, origin = file_name_stamps(files, sweep_period)

        def folder_frames():
            for i, file in enumerate(files):
                yield SequenceFrame(i, file.name.split(".")[0], str(file), None if stamps is None else stamps[i],
                                    lambda file=file: read_points(file))

        return FrameSequence(f"files in {path}", folder_frames, lambda: len(files), origin)

    def single_frame():
        yield SequenceFrame(0, path.name.split(".")[0], str(path), None, lambda: read_points(path))

    return FrameSequence(f"the single file {path}", single_frame, lambda: 1, None)


def iter_sweep_windows(sequence: FrameSequence, count: int, picks=None) -> Iterator[tuple[SequenceFrame, SweepWindow]]:
    """(frame, window) for every frame of `sequence` (or only the indices in `picks`), in order: the frame with up
    to count - 1 frames just before it. A sequence without stamps gives one-frame windows. Frames no window needs
    are not loaded."""
    count = count if sequence.stamps is not None else 1
    picked = None if picks is None else set(int(i) for i in picks)
    recent: deque = deque(maxlen=max(1, count))
    previous = None
    for frame in sequence:
        if picked is not None and not any(frame.index <= c < frame.index + count for c in picked):
            continue
        if previous is not None and frame.index != previous + 1:
            recent.clear()  # a gap: the frames kept belong to another window
        previous = frame.index
        recent.append(StampedCloud(frame.stamp, frame.where, frame.load()))
        if picked is None or frame.index in picked:
            yield frame, SweepWindow(tuple(recent))


class WindowPreparer:
    """A model's points for one frame: prepared by `prepare` (a pointcloud/features.PointPreparer: the model's
    feature rule and input settings) and, for a multi-sweep model, accumulated over its window (SweepAccumulator,
    no poses). Takes a SweepWindow or a single cloud; `where` names a single cloud. Each sweep is prepared once
    while it stays in the windows."""

    def __init__(self, model_config, prepare, *, z_offset: float = 0.0, notify: Callable[[str], None] | None = None):
        self.model_config = model_config
        self.prepare = prepare
        self.z_offset = float(z_offset)
        self.notify = notify or getattr(prepare, "notify", None)
        sweeps = getattr(model_config, "sweeps", None) or SweepConfig()
        self.accumulates = sweeps.accumulates
        if self.accumulates and hasattr(prepare, "noted"):
            prepare.noted.add(TIME_LAG_FEATURE)  # accumulation writes it: no "filled with zeros" note
        self.warned_without_poses = False
        self.last_sweep_count = 1
        self._prepared: dict[int, tuple[StampedCloud, np.ndarray]] = {}

    def __call__(self, item, where: str = "point cloud") -> np.ndarray:
        if not isinstance(item, SweepWindow):
            self.last_sweep_count = 1
            return self.prepare(item, where)
        if not self.accumulates or len(item.sweeps) == 1 or any(s.stamp is None for s in item.sweeps):
            self.last_sweep_count = 1
            points = self.prepare(item.newest.cloud, item.newest.where)
            if self.accumulates:  # one sweep: its time lag is 0 whatever the file held
                accumulator = SweepAccumulator.for_model(self.model_config, notify=lambda text: None)
                points = accumulator.add(points, 0.0)
            return points
        accumulator = SweepAccumulator.for_model(self.model_config, z_offset=self.z_offset, notify=self.notify)
        accumulator.warned_without_poses = self.warned_without_poses  # the note on missing poses once per run
        prepared = {}
        for sweep in item.sweeps:
            cached = self._prepared.get(id(sweep))
            points = cached[1] if cached is not None and cached[0] is sweep else self.prepare(sweep.cloud, sweep.where)
            prepared[id(sweep)] = (sweep, points)
            out = accumulator.add(points, sweep.stamp)
        self._prepared = prepared  # only the sweeps of the last window are kept
        self.warned_without_poses = accumulator.warned_without_poses
        self.last_sweep_count = accumulator.last_sweep_count
        return out


def _sweep_config(model_or_sweeps) -> SweepConfig:
    if isinstance(model_or_sweeps, SweepConfig):
        return model_or_sweeps
    return getattr(model_or_sweeps, "sweeps", None) or SweepConfig()


def single_sweep_note(model_config, sequence: FrameSequence) -> str | None:
    """The one note a multi-sweep model (a model config or its SweepConfig) gets on a source without stamps (None:
    nothing to say)."""
    sweeps = _sweep_config(model_config)
    if not sweeps.accumulates or sequence.stamps is not None:
        return None
    return (f"the model takes {sweeps.count} accumulated sweeps but {sequence.description} has no sweep stamps: "
            "single sweeps (time lag 0); give --sweep-period SECONDS for a folder of sequential frames, or a bag")


def describe_accumulation(model_config, sequence: FrameSequence) -> str:
    """What a source's frames become for the model (a model config or its SweepConfig), for a command's source line
    ('' for a single-sweep model)."""
    sweeps = _sweep_config(model_config)
    if not sweeps.accumulates or sequence.stamps is None:
        return ""
    return (f", each with up to {sweeps.count - 1} frames before it within {sweeps.max_time_lag:g} s as accumulated "
            f"sweeps ({sequence.stamps}; no poses: not motion compensated)")
