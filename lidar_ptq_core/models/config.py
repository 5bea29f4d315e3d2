"""CenterPoint model configuration: YAML <-> frozen dataclasses, validated on load, plus the grid arithmetic.

A model YAML has the top-level keys of `CenterPointConfig`; sections mirror OpenPCDet's MODEL sections (names in
snake_case). Unknown keys anywhere raise ValueError naming the section, so a typo never silently falls back to a
default. Importing this module does not import torch: backends and the trainer read the head geometry from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Mapping

import yaml

from ..config_files import build_config, load_yaml
from ..config_files import check_keys as _check_keys
from ..decode import DecodeConfig, HeadGeometry
from ..pointcloud.features import InputSettings, PointFeature, parse_point_features
from ..sweeps import SweepConfig
from ..voxelize import VoxelConfig

REQUIRED_BOX_HEADS = ("center", "center_z", "dim", "rot")
HEATMAP_HEAD = "hm"
VOXEL_BACKBONE_STRIDE = 8  # VoxelResBackBone8x: three stride-2 sparse convs


def _int_tuple(values, name: str, minimum: int = 1) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{name} must be a list of integers, got {values!r}")
    out = tuple(int(v) for v in values)
    if any(v < minimum for v in out) or any(float(v) != o for v, o in zip(values, out)):
        raise ValueError(f"{name} must be integers >= {minimum}, got {list(values)}")
    return out


@dataclass(frozen=True)
class PillarVFEConfig:
    """PillarVFE: per-point features -> PFN layers -> one feature vector per pillar."""

    num_filters: tuple[int, ...] = (64, 64)
    with_distance: bool = False  # append the point's distance from the sensor
    use_absolute_xyz: bool = True  # keep raw x, y, z (else only the extra point features)
    use_norm: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_filters", _int_tuple(self.num_filters, "vfe.num_filters"))
        if not self.num_filters:
            raise ValueError("vfe.num_filters needs at least one layer")
        if any(f % 2 for f in self.num_filters[:-1]):
            raise ValueError("vfe.num_filters before the last must be even (half go to the concatenated max)")

    type = "PillarVFE"


@dataclass(frozen=True)
class MeanVFEConfig:
    """MeanVFE: mean of the points in each voxel; no parameters."""

    type = "MeanVFE"


@dataclass(frozen=True)
class VoxelBackboneConfig:
    """VoxelResBackBone8x. OpenPCDet's layout is channels (16, 32, 64, 128), two residual blocks per stage,
    out_channels 128; the sim config shrinks them, which changes shapes but never key names."""

    channels: tuple[int, int, int, int] = (16, 32, 64, 128)  # conv1..conv4 (conv_input outputs channels[0])
    num_res_blocks: tuple[int, int, int, int] = (2, 2, 2, 2)  # SparseBasicBlocks in conv1..conv4
    out_channels: int = 128  # conv_out
    last_pad: int = 0  # conv_out padding, as OpenPCDet's LAST_PAD

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", _int_tuple(self.channels, "backbone_3d.channels"))
        object.__setattr__(self, "num_res_blocks", _int_tuple(self.num_res_blocks, "backbone_3d.num_res_blocks", 0))
        if len(self.channels) != 4 or len(self.num_res_blocks) != 4:
            raise ValueError("backbone_3d.channels and backbone_3d.num_res_blocks need 4 entries (conv1..conv4)")
        if int(self.out_channels) < 1 or int(self.last_pad) < 0:
            raise ValueError("backbone_3d.out_channels must be >= 1 and last_pad >= 0")
        object.__setattr__(self, "out_channels", int(self.out_channels))
        object.__setattr__(self, "last_pad", int(self.last_pad))

    type = "VoxelResBackBone8x"


MAP_TO_BEV_TYPES = ("PointPillarScatter", "HeightCompression")


@dataclass(frozen=True)
class MapToBEVConfig:
    type: str
    num_bev_features: int

    def __post_init__(self) -> None:
        if self.type not in MAP_TO_BEV_TYPES:
            raise ValueError(f"map_to_bev.type must be one of {MAP_TO_BEV_TYPES}, got {self.type!r}")
        object.__setattr__(self, "num_bev_features", int(self.num_bev_features))


@dataclass(frozen=True)
class BEVBackboneConfig:
    """BaseBEVBackbone. An upsample stride below 1 (e.g. 0.5) downsamples with a strided conv instead."""

    layer_nums: tuple[int, ...]
    layer_strides: tuple[int, ...]
    num_filters: tuple[int, ...]
    upsample_strides: tuple[float, ...] = ()
    num_upsample_filters: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_nums", _int_tuple(self.layer_nums, "backbone_2d.layer_nums", 0))
        object.__setattr__(self, "layer_strides", _int_tuple(self.layer_strides, "backbone_2d.layer_strides"))
        object.__setattr__(self, "num_filters", _int_tuple(self.num_filters, "backbone_2d.num_filters"))
        ups = tuple(float(v) for v in self.upsample_strides)
        if any(v <= 0 for v in ups):
            raise ValueError(f"backbone_2d.upsample_strides must be > 0, got {list(ups)}")
        object.__setattr__(self, "upsample_strides", tuple(int(v) if v >= 1 and v == int(v) else v for v in ups))
        object.__setattr__(
            self, "num_upsample_filters", _int_tuple(self.num_upsample_filters, "backbone_2d.num_upsample_filters")
        )
        if not (len(self.layer_nums) == len(self.layer_strides) == len(self.num_filters)) or not self.layer_nums:
            raise ValueError("backbone_2d.layer_nums, layer_strides and num_filters need the same, non-zero length")
        if len(self.upsample_strides) != len(self.num_upsample_filters):
            raise ValueError("backbone_2d.upsample_strides and num_upsample_filters need the same length")
        if len(self.upsample_strides) not in (0, len(self.layer_nums), len(self.layer_nums) + 1):
            raise ValueError("backbone_2d.upsample_strides needs one entry per level (plus an optional final one)")
        for s in self.upsample_strides:
            if s < 1 and abs(1 / s - round(1 / s)) > 1e-6:
                raise ValueError(f"backbone_2d upsample stride {s} < 1 must be 1 / integer")


@dataclass(frozen=True)
class SeparateHeadSpec:
    out_channels: int
    num_conv: int = 2

    def __post_init__(self) -> None:
        if int(self.out_channels) < 1 or int(self.num_conv) < 1:
            raise ValueError("head out_channels and num_conv must be >= 1")
        object.__setattr__(self, "out_channels", int(self.out_channels))
        object.__setattr__(self, "num_conv", int(self.num_conv))


@dataclass(frozen=True)
class CenterHeadConfig:
    """CenterHead: a shared conv, then per task one SeparateHead with the heads of `head_dict` plus `hm`
    (one channel per class of the task, `num_hm_conv` convs)."""

    class_names_each_head: tuple[tuple[str, ...], ...]
    head_dict: Mapping[str, SeparateHeadSpec]  # ordered: center, center_z, dim, rot[, vel]
    feature_map_stride: int  # out_size_factor: voxels per feature-map cell
    shared_conv_channel: int = 64
    use_bias_before_norm: bool = True
    num_hm_conv: int = 2
    init_bias: float = -2.19  # hm logit bias: sigmoid(-2.19) ~ 0.1 prior, CenterNet's focal-loss start

    def __post_init__(self) -> None:
        tasks = tuple(tuple(str(n) for n in task) for task in self.class_names_each_head)
        if not tasks or any(not t for t in tasks):
            raise ValueError("dense_head.class_names_each_head needs at least one task, each with a class")
        heads = {}
        for name, spec in dict(self.head_dict).items():
            if not isinstance(spec, SeparateHeadSpec):
                spec = SeparateHeadSpec(**_check_keys(f"dense_head.head_dict.{name}", spec, SeparateHeadSpec))
            heads[str(name)] = spec
        if HEATMAP_HEAD in heads:
            raise ValueError("dense_head.head_dict must not list 'hm': it is sized from the task classes")
        missing = [h for h in REQUIRED_BOX_HEADS if h not in heads]
        if missing:
            raise ValueError(f"dense_head.head_dict is missing heads {missing}")
        expected = {"center": 2, "center_z": 1, "dim": 3, "rot": 2, "vel": 2}
        for name, spec in heads.items():
            if name in expected and spec.out_channels != expected[name]:
                raise ValueError(f"head {name!r} needs out_channels {expected[name]}, got {spec.out_channels}")
        object.__setattr__(self, "class_names_each_head", tasks)
        object.__setattr__(self, "head_dict", heads)
        for name in ("feature_map_stride", "shared_conv_channel", "num_hm_conv"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"dense_head.{name} must be >= 1")
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "init_bias", float(self.init_bias))


@dataclass(frozen=True)
class CenterPointConfig:
    """A whole CenterPoint model: voxelization, the network stages and decoding."""

    name: str
    class_names: tuple[str, ...]
    num_point_features: int  # per point: x, y, z, then e.g. intensity
    voxelization: VoxelConfig
    vfe: PillarVFEConfig | MeanVFEConfig
    map_to_bev: MapToBEVConfig
    backbone_2d: BEVBackboneConfig
    dense_head: CenterHeadConfig
    post_processing: DecodeConfig = field(default_factory=DecodeConfig)
    backbone_3d: VoxelBackboneConfig | None = None
    source: str = ""  # provenance note, e.g. the OpenPCDet config this mirrors
    # Names of the per-point features in order and how a sensor lacking one is filled (pointcloud/features.py);
    # empty (old configs and checkpoints): x, y, z, intensity, then unnamed extras, filled with zeros.
    point_features: tuple[PointFeature, ...] = ()
    # Corrections for the sensor this checkpoint was calibrated on (recorded by `lidar-ptq quantize`).
    input_settings: InputSettings = field(default_factory=InputSettings)
    # How many sweeps the model sees at once, with their time lag in the `time_lag` feature (sweeps.py); 1: one.
    sweeps: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.class_names)
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"class_names must be non-empty and unique, got {list(names)}")
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "num_point_features", int(self.num_point_features))
        if self.num_point_features < 3:
            raise ValueError("num_point_features must be >= 3 (x, y, z first)")
        object.__setattr__(self, "point_features", parse_point_features(self.point_features, self.num_point_features))
        in_tasks = [n for task in self.dense_head.class_names_each_head for n in task]
        if sorted(in_tasks) != sorted(names):
            raise ValueError(
                f"dense_head.class_names_each_head {in_tasks} must list every class of class_names {list(names)} "
                "exactly once"
            )
        if isinstance(self.vfe, PillarVFEConfig):
            if self.backbone_3d is not None or self.map_to_bev.type != "PointPillarScatter":
                raise ValueError("a PillarVFE model takes no backbone_3d and map_to_bev.type PointPillarScatter")
            if self.voxelization.grid_size[2] != 1:
                raise ValueError(f"pillars need one voxel along z, the grid is {self.voxelization.grid_size}")
            if self.map_to_bev.num_bev_features != self.vfe.num_filters[-1]:
                raise ValueError("map_to_bev.num_bev_features must equal the last vfe.num_filters")
        else:
            if self.backbone_3d is None or self.map_to_bev.type != "HeightCompression":
                raise ValueError("a MeanVFE model needs backbone_3d and map_to_bev.type HeightCompression")
        self.bev_geometry()  # raises on inconsistent strides, sizes or feature counts

    # --- grid arithmetic -------------------------------------------------------------------------------------

    @property
    def sparse_shape(self) -> tuple[int, int, int]:
        """spconv input shape (z, y, x): one extra z layer, as OpenPCDet, so the z strides divide evenly."""
        nx, ny, nz = self.voxelization.grid_size
        return (nz + 1, ny, nx)

    def bev_input_geometry(self) -> tuple[int, int, int, int]:
        """(channels, height, width, stride in voxels) of the dense BEV map entering backbone_2d."""
        nx, ny, nz = self.voxelization.grid_size
        if self.backbone_3d is None:
            return self.map_to_bev.num_bev_features, ny, nx, 1
        depth, height, width = self.sparse_shape
        for pad in (1, 1, (0, 1, 1)):  # conv2, conv3, conv4: kernel 3, stride 2
            pads = pad if isinstance(pad, tuple) else (pad,) * 3
            depth, height, width = ((n + 2 * p - 3) // 2 + 1 for n, p in zip((depth, height, width), pads))
        p = self.backbone_3d.last_pad  # conv_out: kernel (3, 1, 1), stride (2, 1, 1)
        depth, height, width = (depth + 2 * p - 3) // 2 + 1, height + 2 * p, width + 2 * p
        if depth < 1:
            raise ValueError(f"z grid of {nz} voxels is too thin for VoxelResBackBone8x (conv_out depth {depth})")
        channels = self.backbone_3d.out_channels * depth
        if channels != self.map_to_bev.num_bev_features:
            raise ValueError(
                f"map_to_bev.num_bev_features must be backbone_3d.out_channels x BEV depth = "
                f"{self.backbone_3d.out_channels} x {depth} = {channels}, got {self.map_to_bev.num_bev_features}"
            )
        return channels, height, width, VOXEL_BACKBONE_STRIDE

    def bev_geometry(self) -> tuple[int, int, int]:
        """(channels, height, width) of the BEV feature map the head sees; checks every stride on the way."""
        _, height, width, _ = self.bev_input_geometry()
        bb = self.backbone_2d
        sizes = []
        for level, stride in enumerate(bb.layer_strides):
            height, width = (height - 1) // stride + 1, (width - 1) // stride + 1  # ZeroPad2d(1) + 3x3 conv
            if bb.upsample_strides:
                up = bb.upsample_strides[level]
                if up >= 1:
                    sizes.append((height * up, width * up))
                else:
                    k = round(1 / up)
                    sizes.append((height // k, width // k))
            else:
                sizes.append((height, width))
        if len(set(sizes)) != 1:
            raise ValueError(f"backbone_2d levels end at different sizes {sizes}; they cannot be concatenated")
        height, width = sizes[0]
        if len(bb.upsample_strides) > len(bb.layer_nums):
            height, width = height * bb.upsample_strides[-1], width * bb.upsample_strides[-1]
        # Levels are concatenated; a final extra deblock keeps the channel count.
        channels = sum(bb.num_upsample_filters[: len(bb.layer_nums)] if bb.upsample_strides else bb.num_filters)
        nx, ny, _ = self.voxelization.grid_size
        stride_x, stride_y = Fraction(nx, width), Fraction(ny, height)
        if stride_x != stride_y or stride_x.denominator != 1:
            raise ValueError(f"the {ny}x{nx} voxel grid maps to a {height}x{width} feature map: no whole stride")
        if int(stride_x) != self.dense_head.feature_map_stride:
            raise ValueError(
                f"dense_head.feature_map_stride is {self.dense_head.feature_map_stride} but the network's output "
                f"stride is {int(stride_x)} voxels"
            )
        return channels, height, width

    def head_geometry(self) -> HeadGeometry:
        """What decoding and target encoding need: range, voxel size, out_size_factor, map size, task classes."""
        _, height, width = self.bev_geometry()
        return HeadGeometry(
            point_cloud_range=self.voxelization.point_cloud_range,
            voxel_size=self.voxelization.voxel_size,
            out_size_factor=self.dense_head.feature_map_stride,
            feature_map_size=(height, width),
            task_class_names=self.dense_head.class_names_each_head,
        )

    # --- (de)serialisation ------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping) -> "CenterPointConfig":
        if isinstance(data, Mapping) and isinstance(data.get("point_features"), (list, tuple)):
            # Bare names are the short form of {name: ...}; the dataclass builder reads mappings.
            data = {**data, "point_features": [{"name": e} if isinstance(e, str) else e
                                               for e in data["point_features"]]}
        return build_config(cls, data, label="model config")

    def to_dict(self) -> dict:
        """Plain data (lists, dicts, numbers, strings) that from_dict reads back to an equal config."""
        vox, b3d = self.voxelization, self.backbone_3d
        out = {
            "name": self.name,
            "source": self.source,
            "class_names": list(self.class_names),
            "num_point_features": self.num_point_features,
            "voxelization": {
                "point_cloud_range": list(vox.point_cloud_range),
                "voxel_size": list(vox.voxel_size),
                "max_points_per_voxel": vox.max_points_per_voxel,
                "max_voxels": vox.max_voxels,
            },
            "vfe": {"type": self.vfe.type, **_plain(self.vfe)},
            "backbone_3d": None if b3d is None else {"type": b3d.type, **_plain(b3d)},
            "map_to_bev": _plain(self.map_to_bev),
            "backbone_2d": _plain(self.backbone_2d),
            "dense_head": {
                **_plain(self.dense_head),
                "class_names_each_head": [list(t) for t in self.dense_head.class_names_each_head],
                "head_dict": {k: _plain(v) for k, v in self.dense_head.head_dict.items()},
            },
            "post_processing": self.post_processing.to_dict(),
            "point_features": [f.to_plain() for f in self.point_features],
        }
        if not self.input_settings.is_identity:  # only checkpoints calibrated with corrections carry them
            out["input_settings"] = self.input_settings.to_dict()
        if self.sweeps.accumulates:  # single-sweep configs stay as they were written
            out["sweeps"] = self.sweeps.to_dict()
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def _plain(obj) -> dict:
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def load_model_config(path: str | Path) -> CenterPointConfig:
    """Read and validate a model YAML (e.g. config/models/sim_pillar.yaml)."""
    path = Path(path)
    data = load_yaml(path)
    try:
        return CenterPointConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def model_config_from_yaml(text: str) -> CenterPointConfig:
    return CenterPointConfig.from_dict(yaml.safe_load(text))
