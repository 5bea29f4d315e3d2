import numpy as np
import pytest

from lidar_ptq_core.voxelize import VoxelConfig, collate_voxels, voxelize

PILLARS = VoxelConfig((-10.0, -10.0, -3.0, 10.0, 10.0, 3.0), (0.5, 0.5, 6.0), 8, 2000)
VOXELS = VoxelConfig((-10.0, -10.0, -3.0, 10.0, 10.0, 3.0), (0.25, 0.25, 0.5), 5, 5000)


def brute_force_voxels(points, cfg):
    """Reference: a dict of voxel -> points, in input order, ignoring the caps."""
    lo, size = np.array(cfg.point_cloud_range[:3]), np.array(cfg.voxel_size)
    grid = np.array(cfg.grid_size)
    out = {}
    for p in points:
        if not np.isfinite(p).all():
            continue
        idx = np.floor((p[:3].astype(np.float64) - lo) / size).astype(int)
        if (idx < 0).any() or (idx >= grid).any():
            continue
        out.setdefault((idx[2], idx[1], idx[0]), []).append(p)
    return out


def test_grid_size_and_config_validation():
    assert PILLARS.grid_size == (40, 40, 1)
    assert VOXELS.grid_size == (80, 80, 12)
    with pytest.raises(ValueError, match="whole number"):
        VoxelConfig((0, 0, 0, 1, 1, 1), (0.3, 0.3, 1), 4, 10).grid_size
    with pytest.raises(ValueError, match="min < max"):
        VoxelConfig((1, 0, 0, 0, 1, 1), (0.5, 0.5, 1), 4, 10)
    with pytest.raises(ValueError, match="unknown keys in voxelization"):
        VoxelConfig.from_dict({"point_cloud_range": [0, 0, 0, 1, 1, 1], "voxel_size": [1, 1, 1],
                               "max_points_per_voxel": 1, "max_voxels": 1, "max_voxel": 3})


@pytest.mark.parametrize("cfg", [PILLARS, VOXELS], ids=["pillars", "voxels"])
def test_matches_brute_force(cfg):
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-12, 12, (3000, 3)), rng.uniform(0, 1, (3000, 1))], axis=1).astype(np.float32)
    pts[:, 2] = rng.uniform(-4, 4, 3000)
    v = voxelize(pts, cfg)
    ref = brute_force_voxels(pts, cfg)
    assert len(v) == len(ref)
    for feat, coord, n in zip(v.features, v.coords, v.num_points):
        expected = np.array(ref[tuple(coord)])[: cfg.max_points_per_voxel]
        assert n == len(expected)
        np.testing.assert_array_equal(feat[:n], expected)
        assert not feat[n:].any(), "padding must be zero"
    # Voxels come in order of their first point.
    assert [tuple(c) for c in v.coords] == list(ref.keys())
    r = v.report
    assert r.num_kept_points == int(v.num_points.sum())
    assert r.num_input_points == 3000 and r.dropped_out_of_range > 0


def test_upper_edge_and_nonfinite_points_are_dropped():
    pts = np.array(
        [
            [10.0, 0.0, 0.0, 1.0],  # exactly on x_max: must not give index 40
            [0.0, 10.0, 0.0, 1.0],  # exactly on y_max
            [0.0, 0.0, 3.0, 1.0],  # exactly on z_max
            [np.nextafter(np.float32(10.0), np.float32(0)), 0.0, 0.0, 1.0],  # just inside
            [-10.0, -10.0, -3.0, 1.0],  # exactly on the lower corner: inside
            [np.nan, 0.0, 0.0, 1.0],
            [0.0, np.inf, 0.0, 1.0],
            [0.0, 0.0, 0.0, np.nan],  # non-finite feature
        ],
        np.float32,
    )
    v = voxelize(pts, PILLARS)
    assert len(v) == 2
    assert (v.coords >= 0).all() and (v.coords < np.array([1, 40, 40])).all()
    assert sorted(map(tuple, v.coords.tolist())) == [(0, 0, 0), (0, 20, 39)]
    assert v.report.dropped_nonfinite == 3 and v.report.dropped_out_of_range == 3


def test_empty_cloud():
    v = voxelize(np.zeros((0, 4), np.float32), PILLARS)
    assert len(v) == 0 and v.features.shape == (0, 8, 4) and v.coords.shape == (0, 3)
    assert v.report.num_voxels == 0 and v.report.num_input_points == 0
    batch = collate_voxels([v, voxelize(np.array([[0, 0, 0, 1]], np.float32), PILLARS)])
    assert batch["voxel_coords"].tolist() == [[1, 0, 20, 20]] and batch["batch_size"] == 2


def test_caps_are_deterministic_and_reported():
    cfg = VoxelConfig((0.0, 0.0, 0.0, 4.0, 1.0, 1.0), (1.0, 1.0, 1.0), 2, 3)
    # Voxel x=2 appears first, then x=0, x=3, x=1 (over the cap of 3 voxels).
    xs = [2.5, 2.6, 0.5, 2.7, 3.5, 1.5, 0.6, 1.6, 0.7]
    pts = np.array([[x, 0.5, 0.5, i] for i, x in enumerate(xs)], np.float32)
    v = voxelize(pts, cfg)
    assert v.coords[:, 2].tolist() == [2, 0, 3]
    assert v.num_points.tolist() == [2, 2, 1]
    assert v.features[0, :, 3].tolist() == [0, 1]  # first two points of voxel 2; point 3 is over the point cap
    assert v.features[1, :, 3].tolist() == [2, 6]
    r = v.report
    assert (r.voxels_over_cap, r.dropped_over_voxel_cap, r.dropped_over_point_cap) == (1, 2, 2)
    assert r.num_kept_points == 5
    v2 = voxelize(pts.copy(), cfg)
    np.testing.assert_array_equal(v.features, v2.features)
    np.testing.assert_array_equal(v.coords, v2.coords)


def test_real_kitti_frames_through_both_voxelizers(kitti_frames):
    from lidar_ptq_core.pointcloud import read_points

    pillar_cfg = VoxelConfig((0.0, -39.68, -3.0, 69.12, 39.68, 1.0), (0.16, 0.16, 4.0), 32, 16000)
    voxel_cfg = VoxelConfig((-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), (0.075, 0.075, 0.2), 10, 60000)
    for path in kitti_frames:
        cloud = read_points(path)
        for cfg in (pillar_cfg, voxel_cfg):
            v = voxelize(cloud.points, cfg)
            nx, ny, nz = cfg.grid_size
            assert len(v) > 1000, f"{path.name}: a real frame fills many voxels"
            assert (v.coords >= 0).all() and (v.coords < np.array([nz, ny, nx])).all()
            assert len(np.unique(v.coords, axis=0)) == len(v), "each voxel once"
            r = v.report
            assert r.num_input_points == len(cloud.points)
            assert r.num_kept_points == int(v.num_points.sum()) > 0.5 * len(cloud.points)
            assert r.dropped_nonfinite == 0 and r.voxels_over_cap == 0
            # Every kept point lies inside its voxel.
            lo, size = np.array(cfg.point_cloud_range[:3]), np.array(cfg.voxel_size)
            first = v.features[:, 0, :3]
            cell = np.floor((first - lo) / size).astype(int)[:, ::-1]
            np.testing.assert_array_equal(cell, v.coords)
