"""bev_pool fast path vs. the per-point reference loop, gradients, range filtering, empty input."""

import pytest
import torch

from x3kd_core.config import BevGridConfig
from x3kd_core.ops.bev_pool import bev_pool, bev_pool_reference, precompute_bev_geometry

GRID = BevGridConfig(x_range_m=(-4.0, 4.0), y_range_m=(-3.0, 5.0), z_range_m=(-1.0, 2.0), cell_size_m=1.0)


def _random_frustum(shape, dtype=torch.float32, seed=0):
    """Points spread over a box 1.5x larger than the grid so a fair share is out of range."""
    gen = torch.Generator().manual_seed(seed)
    lo = torch.tensor([-6.0, -5.0, -2.5], dtype=dtype)
    hi = torch.tensor([6.0, 7.0, 3.5], dtype=dtype)
    u = torch.rand(*shape, 3, generator=gen, dtype=dtype)
    return lo + u * (hi - lo)


def test_fast_matches_reference_on_random_input():
    B, N, D, H, W, C = 2, 3, 4, 3, 5, 7
    points = _random_frustum((B, N, D, H, W))
    features = torch.randn(B, N, D, H, W, C, generator=torch.Generator().manual_seed(1))
    geometry = precompute_bev_geometry(points, GRID)
    fast = bev_pool(features, geometry)
    ref = bev_pool_reference(features, points, GRID)
    assert fast.shape == (B, C, 8, 8)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)
    # A real fraction of points must be dropped and several points must share cells, else the
    # comparison above would not exercise filtering or summation.
    total = B * N * D * H * W
    assert 0.2 * total < geometry.num_kept < 0.8 * total
    assert torch.unique(geometry.kept_cell_index).numel() < geometry.num_kept
    assert torch.all(geometry.kept_cell_index < geometry.num_cells)
    dropped = torch.ones(total, dtype=torch.bool)
    dropped[geometry.kept_index] = False
    assert torch.all(geometry.row_index[dropped] >= geometry.num_cells)


def test_cell_convention_and_out_of_range_points_ignored():
    # One point per case, in a (B=1, N=1, D=1, H=1, W=6) frustum.
    points = torch.tensor(
        [
            [-3.5, -2.5, 0.0],   # cell [0, 0]
            [3.99, 4.99, 1.9],   # cell [7, 7] (last cell; max edges are exclusive)
            [4.0, 0.0, 0.0],     # x == x_max: dropped
            [0.0, -3.01, 0.0],   # y < y_min: dropped
            [0.0, 0.0, 2.0],     # z == z_max: dropped
            [float("nan"), 0.0, 0.0],  # non-finite: dropped
        ]
    ).reshape(1, 1, 1, 1, 6, 3)
    features = torch.arange(1.0, 7.0).reshape(1, 1, 1, 1, 6, 1)
    geometry = precompute_bev_geometry(points, GRID)
    out = bev_pool(features, geometry)
    assert geometry.num_kept == 2
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 0, 0] = 1.0
    expected[0, 0, 7, 7] = 2.0
    assert torch.equal(out, expected)
    assert torch.equal(bev_pool_reference(features, points, GRID), expected)


def test_points_of_second_batch_element_stay_in_second_map():
    points = torch.zeros(2, 1, 1, 1, 1, 3)
    points[1, ..., 0] = 2.5  # sample 1 lands in x cell 6, sample 0 in x cell 4
    features = torch.tensor([3.0, 5.0]).reshape(2, 1, 1, 1, 1, 1)
    out = bev_pool(features, precompute_bev_geometry(points, GRID))
    assert out[0, 0, 4, 3] == 3.0 and out[1, 0, 6, 3] == 5.0
    assert out.sum() == 8.0


def test_gradcheck_float64():
    B, N, D, H, W, C = 1, 2, 3, 2, 2, 2
    points = _random_frustum((B, N, D, H, W), dtype=torch.float64, seed=3)
    geometry = precompute_bev_geometry(points, GRID)
    assert geometry.num_kept > 0
    features = torch.randn(B, N, D, H, W, C, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: bev_pool(f, geometry), (features,))


def test_gradient_is_one_for_kept_points_and_zero_for_dropped():
    points = _random_frustum((1, 2, 3, 2, 4), seed=5)
    features = torch.randn(1, 2, 3, 2, 4, 3, requires_grad=True)
    geometry = precompute_bev_geometry(points, GRID)
    bev_pool(features, geometry).sum().backward()
    kept = torch.zeros(features.shape[:-1]).flatten()
    kept[geometry.kept_index] = 1.0
    assert torch.equal(features.grad, kept.reshape(features.shape[:-1])[..., None].expand_as(features))


@pytest.mark.parametrize("case", ["all_out_of_range", "zero_depth_bins"])
def test_empty_input_gives_zeros(case):
    if case == "all_out_of_range":
        points = torch.full((2, 1, 2, 2, 2, 3), 100.0)
    else:
        points = torch.zeros(2, 1, 0, 2, 2, 3)
    features = torch.ones(*points.shape[:-1], 4, requires_grad=True)
    geometry = precompute_bev_geometry(points, GRID)
    out = bev_pool(features, geometry)
    assert geometry.num_kept == 0
    assert out.shape == (2, 4, 8, 8) and torch.count_nonzero(out) == 0
    out.sum().backward()
    assert torch.count_nonzero(features.grad) == 0


def test_mismatched_features_rejected():
    geometry = precompute_bev_geometry(torch.zeros(1, 1, 2, 2, 2, 3), GRID)
    with pytest.raises(ValueError, match="leading dims"):
        bev_pool(torch.zeros(1, 1, 3, 2, 2, 4), geometry)
