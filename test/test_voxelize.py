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
        _ = VoxelConfig((0, 0, 0, 1, 1, 1), (0.3, 0.3, 1), 4, 10).grid_size
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


# --- The vectorized implementation against the previous one, bit for bit -------------------------------------------

import dataclasses  # noqa: E402

import lidar_ptq_core.voxelize as voxelize_module  # noqa: E402
from lidar_ptq_core.config_files import resolve_config  # noqa: E402
from lidar_ptq_core.models.config import load_model_config  # noqa: E402
from lidar_ptq_core.voxelize import first_cell_mate, stable_argsort  # noqa: E402


def reference_voxelize(points, config):
    """The voxelize of before the speed work (np.unique + two stable argsorts), kept only as the reference the fast
    one must match exactly: (features, coords, num_points, report fields as a dict)."""
    points = np.asarray(points).astype(np.float32, copy=False)
    nx, ny, nz = config.grid_size
    finite = np.isfinite(points).all(axis=1)
    pts = points[finite]
    lower = np.asarray(config.point_cloud_range[:3], np.float64)
    size = np.asarray(config.voxel_size, np.float64)
    idx = np.floor((pts[:, :3].astype(np.float64) - lower) / size).astype(np.int64)
    in_range = ((idx >= 0) & (idx < np.array([nx, ny, nz]))).all(axis=1)
    pts, idx = pts[in_range], idx[in_range]

    linear = (idx[:, 2] * ny + idx[:, 1]) * nx + idx[:, 0]
    unique_ids, first_index, inverse = np.unique(linear, return_index=True, return_inverse=True)
    order_of_unique = np.argsort(first_index, kind="stable")
    rank_of_unique = np.empty_like(order_of_unique)
    rank_of_unique[order_of_unique] = np.arange(len(order_of_unique))
    voxel_of_point = rank_of_unique[inverse]
    num_occupied = len(unique_ids)
    num_voxels = min(num_occupied, config.max_voxels)

    keep_voxel = voxel_of_point < num_voxels
    pts, voxel_of_point = pts[keep_voxel], voxel_of_point[keep_voxel]
    point_order = np.argsort(voxel_of_point, kind="stable")
    sorted_voxels = voxel_of_point[point_order]
    counts = np.bincount(sorted_voxels, minlength=num_voxels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if num_voxels else np.zeros(0, np.int64)
    slot_sorted = np.arange(len(sorted_voxels)) - starts[sorted_voxels] if len(sorted_voxels) else sorted_voxels
    slot = np.empty_like(slot_sorted)
    slot[point_order] = slot_sorted
    fits = slot < config.max_points_per_voxel

    features = np.zeros((num_voxels, config.max_points_per_voxel, points.shape[1]), np.float32)
    features[voxel_of_point[fits], slot[fits]] = pts[fits]
    kept_linear = unique_ids[order_of_unique[:num_voxels]]
    coords = np.stack([kept_linear // (nx * ny), (kept_linear // nx) % ny, kept_linear % nx], axis=1).astype(np.int32)
    report = dict(
        num_input_points=len(points),
        dropped_nonfinite=int((~finite).sum()),
        dropped_out_of_range=int((~in_range).sum()),
        dropped_over_voxel_cap=int((~keep_voxel).sum()),
        dropped_over_point_cap=int((~fits).sum()),
        num_voxels=num_voxels,
        voxels_over_cap=num_occupied - num_voxels,
    )
    return features, coords.reshape(-1, 3), np.minimum(counts, config.max_points_per_voxel).astype(np.int32), report


def assert_same_as_reference(points, cfg):
    v = voxelize(points, cfg)
    features, coords, num_points, report = reference_voxelize(points, cfg)
    for got, want in ((v.features, features), (v.coords, coords), (v.num_points, num_points)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    # Bitwise too: -0.0 stays -0.0, NaN payloads cannot occur (non-finite points are dropped).
    assert v.features.tobytes() == features.tobytes()
    got_report = dataclasses.asdict(v.report)
    assert got_report == report and all(type(value) is int for value in got_report.values())
    assert v.grid_size == cfg.grid_size
    return v


def model_voxel_config(name):
    return load_model_config(resolve_config(name, "models")).voxelization


def random_cloud(rng, cfg, n, channels=4, cells=None):
    """A cloud over the range and a margin around it, with points clustered into `cells` spots (to overflow
    max_points_per_voxel), points exactly on cell faces and the range edges, -0.0, NaN and inf in any column."""
    lo, hi = np.array(cfg.point_cloud_range[:3]), np.array(cfg.point_cloud_range[3:])
    margin = 0.1 * (hi - lo)
    pts = rng.uniform(lo - margin, hi + margin, (n, 3))
    if cells:
        centres = rng.uniform(lo, hi, (cells, 3))
        clustered = rng.random(n) < 0.6
        pts[clustered] = centres[rng.integers(0, cells, clustered.sum())] + rng.normal(0, 0.05, (clustered.sum(), 3))
    size = np.array(cfg.voxel_size)
    on_face = rng.random(n) < 0.05  # exactly on cell boundaries (including the lower and upper range edges)
    pts[on_face] = lo + size * rng.integers(0, np.array(cfg.grid_size) + 1, (on_face.sum(), 3))
    cloud = np.concatenate([pts, rng.uniform(0, 1, (n, channels - 3))], axis=1).astype(np.float32)
    cloud[rng.random(n) < 0.01, 0] = -0.0
    for value in (np.nan, np.inf, -np.inf):
        rows = rng.random(n) < 0.01
        cloud[rows, rng.integers(0, channels, rows.sum())] = value
    return cloud


SMALL_CAPS = VoxelConfig((-10.0, -10.0, -3.0, 10.0, 10.0, 3.0), (0.5, 0.5, 1.0), 3, 60)
EQUIVALENCE_CONFIGS = {
    "pillars": PILLARS,
    "voxels": VOXELS,
    "small_caps": SMALL_CAPS,
    "sim_pillar": model_voxel_config("sim_pillar"),
    "sim_voxel": model_voxel_config("sim_voxel"),
    "waymo_pillar": model_voxel_config("waymo_centerpoint_pillar_1x"),
    "nuscenes_voxel": model_voxel_config("nuscenes_centerpoint_voxel0075_res3d"),  # 83M cells: the sorting path
}


FIRST_CELL_MATE_METHODS = ["auto", "hashed", "sorting"]  # auto: dense table for pillar grids, hashed for 3D grids


@pytest.mark.parametrize("method", FIRST_CELL_MATE_METHODS)
@pytest.mark.parametrize("name", list(EQUIVALENCE_CONFIGS))
def test_same_output_as_reference(name, method, monkeypatch):
    monkeypatch.setattr(voxelize_module, "FIRST_CELL_MATE_METHOD", method)
    cfg = EQUIVALENCE_CONFIGS[name]
    rng = np.random.default_rng([list(EQUIVALENCE_CONFIGS).index(name), FIRST_CELL_MATE_METHODS.index(method)])
    reports = []
    for n, channels, cells in ((3000, 4, None), (4000, 5, 30), (2500, 3, 4), (1, 4, None), (2, 4, 1)):
        reports.append(assert_same_as_reference(random_cloud(rng, cfg, n, channels, cells), cfg).report)
    assert sum(r.dropped_nonfinite for r in reports) > 0 and sum(r.dropped_out_of_range for r in reports) > 0
    assert sum(r.dropped_over_point_cap for r in reports) > 0
    if cfg is SMALL_CAPS:
        assert sum(r.voxels_over_cap for r in reports) > 0 and sum(r.dropped_over_voxel_cap for r in reports) > 0


@pytest.mark.parametrize("method", FIRST_CELL_MATE_METHODS)
@pytest.mark.parametrize("cfg", [PILLARS, VOXELS, SMALL_CAPS], ids=["pillars", "voxels", "small_caps"])
def test_degenerate_clouds_same_as_reference(cfg, method, monkeypatch):
    monkeypatch.setattr(voxelize_module, "FIRST_CELL_MATE_METHOD", method)
    lo = np.array(cfg.point_cloud_range[:3], np.float32)
    clouds = [
        np.zeros((0, 4), np.float32),  # empty
        np.array([[0, 0, 0, 1]], np.float32),  # one point
        np.array([[np.nan, 0, 0, 1]], np.float32),  # one non-finite point
        np.array([[100, 0, 0, 1]], np.float32),  # one out-of-range point
        np.full((50, 4), np.nan, np.float32),  # nothing finite
        np.tile(np.append(lo, 1).astype(np.float32), (40, 1)),  # every point in one voxel (the lower corner)
        np.tile(np.float32([[0, 0, 0, 1], [0, 0, 0, 2]]), (7, 1)),  # two alternating points, one voxel
        np.arange(4 * 200, dtype=np.float32).reshape(200, 4) * 0.01,  # a diagonal line of cells
        np.zeros((5, 6), np.float64),  # float64 input, 6 channels
    ]
    for cloud in clouds:
        assert_same_as_reference(cloud, cfg)


def test_overflow_of_both_caps_same_as_reference():
    rng = np.random.default_rng(3)
    cfg = VoxelConfig((0.0, 0.0, 0.0, 8.0, 8.0, 2.0), (1.0, 1.0, 1.0), 4, 20)  # 128 cells, at most 20 voxels kept
    cloud = np.concatenate([rng.uniform(0, 8, (3000, 2)), rng.uniform(0, 2, (3000, 1)), rng.random((3000, 1))], 1)
    v = assert_same_as_reference(cloud.astype(np.float32), cfg)
    r = v.report
    assert r.num_voxels == 20 and r.voxels_over_cap > 50
    assert r.dropped_over_voxel_cap > 0 and r.dropped_over_point_cap > 0


def test_sim_frame_same_as_reference():
    from lidar_ptq_core.sim import generate_frame, load_sim_config

    points = generate_frame(load_sim_config("default"), seed=3).points
    for name in ("sim_pillar", "sim_voxel"):
        assert_same_as_reference(points, EQUIVALENCE_CONFIGS[name])


@pytest.mark.parametrize("upper", [1, 2, 255, 256, 257, 65535, 65536, 65537, 1 << 24, (1 << 32) + 5, 1 << 40])
def test_stable_argsort_matches_numpy(upper):
    rng = np.random.default_rng(upper % 1000)
    for n, distinct in ((0, 1), (1, 1), (500, 3), (5000, upper)):
        keys = rng.integers(0, min(upper, distinct), n).astype(np.intp)
        if n:
            keys[0] = upper - 1
        np.testing.assert_array_equal(stable_argsort(keys, upper), np.argsort(keys, kind="stable"))


@pytest.mark.parametrize("num_cells", [1, 7, 300, 80_000, 6_291_456, 82_944_000])
def test_first_cell_mate_methods_agree(num_cells):
    rng = np.random.default_rng(num_cells)
    for n in (0, 1, 5, 3000):
        cells = rng.integers(0, min(num_cells, 3 * n + 1), n).astype(np.intp)  # repeats, and slots shared by cells
        cells[::3] = rng.integers(0, num_cells, len(cells[::3]))
        _, first_of_unique, inverse = np.unique(cells, return_index=True, return_inverse=True)
        expected = first_of_unique[inverse.reshape(-1)]
        methods = ["hashed", "sorting"] + (["dense"] if num_cells <= 1 << 20 else [])
        for method in methods:
            np.testing.assert_array_equal(first_cell_mate(cells, num_cells, method), expected, err_msg=method)
    with pytest.raises(ValueError, match="unknown first_cell_mate method"):
        first_cell_mate(cells, num_cells, "bogus")


def test_hashed_first_cell_mate_resolves_shared_slots():
    """Cells sharing a hash slot: every point of the cells that lost the slot must still find its own first point."""
    rng = np.random.default_rng(11)
    cells = rng.integers(0, 1 << 40, 200).astype(np.intp).repeat(3)  # 200 cells, 600 points, 1024 slots
    rng.shuffle(cells)
    bits = int(2 * len(cells) - 1).bit_length()
    slots = (cells.astype(np.uint64) * voxelize_module._FIBONACCI) >> np.uint64(64 - bits)
    assert len(np.unique(slots)) < len(np.unique(cells)), "the test needs cells sharing a slot"
    _, first_of_unique, inverse = np.unique(cells, return_index=True, return_inverse=True)
    np.testing.assert_array_equal(first_cell_mate(cells, 1 << 40, "hashed"), first_of_unique[inverse.reshape(-1)])
