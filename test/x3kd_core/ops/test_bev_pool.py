"""bev_pool fast path vs. the per-point reference loop, gradients, range filtering, empty input;
bev_pool_depth_context (no outer product) vs. both, its custom backward, determinism, dtypes."""

import pytest
import torch

from x3kd_core.config import BevGridConfig
from x3kd_core.ops.bev_pool import (
    bev_pool,
    bev_pool_depth_context,
    bev_pool_reference,
    precompute_bev_geometry,
    precompute_depth_context_geometry,
)

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


# --- bev_pool_depth_context: depth (B, N, D, H, W) and context (B, N, C, H, W) pooled separately ---


def _outer(depth, context):
    """(B, N, D, H, W, C) lifted features, as LiftSplat's outer-product path forms them."""
    return depth.unsqueeze(-1) * context.permute(0, 1, 3, 4, 2).unsqueeze(2)


def _ray_frustum(shape, dtype=torch.float32, seed=0):
    """Frustum points on rays: each pixel's D points lie on one segment, so consecutive depth bins
    often share a cell (several points per (cell, pixel) pair, as with real cameras)."""
    B, N, D, H, W = shape
    gen = torch.Generator().manual_seed(seed)
    start = torch.rand(B, N, 1, H, W, 3, generator=gen, dtype=dtype) * 4.0 - 2.0
    direction = torch.randn(B, N, 1, H, W, 3, generator=gen, dtype=dtype)
    direction[..., 2] *= 0.2
    t = torch.linspace(0.0, 1.0, D, dtype=dtype).view(1, 1, D, 1, 1, 1) * 3.0
    return start + t * direction / direction.norm(dim=-1, keepdim=True)


def _depth_context(shape, channels, dtype=torch.float32, seed=1, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    depth = torch.randn(*shape, generator=gen, dtype=dtype).softmax(dim=2)
    B, N, D, H, W = shape
    context = torch.randn(B, N, channels, H, W, generator=gen, dtype=dtype)
    return depth.requires_grad_(requires_grad), context.requires_grad_(requires_grad)


@pytest.mark.parametrize("frustum", ["random", "rays"])
def test_depth_context_matches_reference_and_outer_product_op(frustum):
    shape, C = (2, 3, 6, 3, 4), 5
    points = _random_frustum(shape) if frustum == "random" else _ray_frustum(shape)
    depth, context = _depth_context(shape, C)
    geometry = precompute_bev_geometry(points, GRID)
    pool_geometry = precompute_depth_context_geometry(geometry)
    out = bev_pool_depth_context(depth, context, pool_geometry)
    assert out.shape == (2, C, 8, 8) and out.is_contiguous()
    assert torch.allclose(out, bev_pool_reference(_outer(depth, context), points, GRID), atol=1e-5, rtol=0)
    assert torch.allclose(out, bev_pool(_outer(depth, context), geometry), atol=1e-5, rtol=0)
    total = depth.numel()
    assert 0.1 * total < geometry.num_kept < 0.9 * total
    if frustum == "rays":  # pairs with several points are merged into one nonzero
        assert pool_geometry.num_pairs < geometry.num_kept
        assert int(pool_geometry.pair_lengths.max()) > 1
    assert int(pool_geometry.pair_lengths.sum()) == geometry.num_kept


@pytest.mark.parametrize("frustum", ["random", "rays"])
def test_depth_context_gradients_match_outer_product_op(frustum):
    shape, C = (2, 2, 5, 3, 3), 4
    points = _random_frustum(shape, seed=2) if frustum == "random" else _ray_frustum(shape, seed=2)
    geometry = precompute_bev_geometry(points, GRID)
    pool_geometry = precompute_depth_context_geometry(geometry)
    grad_out = torch.randn(2, C, 8, 8, generator=torch.Generator().manual_seed(4))
    grads = []
    for new in (True, False):
        depth, context = _depth_context(shape, C, requires_grad=True)
        if new:
            out = bev_pool_depth_context(depth, context, pool_geometry)
        else:
            out = bev_pool(_outer(depth, context), geometry)
        (out * grad_out).sum().backward()
        grads.append((depth.grad, context.grad))
    (gd_new, gc_new), (gd_old, gc_old) = grads
    assert torch.allclose(gd_new, gd_old, atol=1e-5, rtol=0)
    assert torch.allclose(gc_new, gc_old, atol=1e-5, rtol=0)
    assert torch.count_nonzero(gd_new) > 0 and torch.count_nonzero(gc_new) > 0


@pytest.mark.parametrize("frustum", ["random", "rays"])
def test_depth_context_gradcheck_float64(frustum):
    shape, C = (2, 2, 3, 2, 2), 2
    points = (_random_frustum if frustum == "random" else _ray_frustum)(shape, dtype=torch.float64, seed=3)
    pool_geometry = precompute_depth_context_geometry(precompute_bev_geometry(points, GRID))
    assert pool_geometry.num_pairs > 0
    depth, context = _depth_context(shape, C, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda d, c: bev_pool_depth_context(d, c, pool_geometry), (depth, context), eps=1e-6, atol=1e-8
    )


def test_depth_context_batch_elements_stay_apart():
    points = torch.zeros(2, 1, 2, 1, 1, 3)
    points[1, ..., 0] = 2.5  # sample 1 lands in x cell 6, sample 0 in x cell 4 (both y cell 3)
    depth = torch.tensor([[0.25, 0.75], [0.5, 0.125]]).view(2, 1, 2, 1, 1)
    context = torch.tensor([[2.0, -1.0], [4.0, 8.0]]).view(2, 1, 2, 1, 1)
    pool_geometry = precompute_depth_context_geometry(precompute_bev_geometry(points, GRID))
    assert pool_geometry.num_pairs == 2  # both depth bins of a pixel share one (cell, pixel) pair
    out = bev_pool_depth_context(depth, context, pool_geometry)
    expected = torch.zeros(2, 2, 8, 8)
    expected[0, :, 4, 3] = torch.tensor([2.0, -1.0])  # (0.25 + 0.75) * context
    expected[1, :, 6, 3] = torch.tensor([4.0, 8.0]) * 0.625
    assert torch.equal(out, expected)


@pytest.mark.parametrize("case", ["all_out_of_range", "zero_depth_bins"])
def test_depth_context_empty_geometry_gives_zeros(case):
    D = 2 if case == "all_out_of_range" else 0
    points = torch.full((2, 1, D, 2, 3, 3), 100.0)
    depth = torch.ones(2, 1, D, 2, 3, requires_grad=True)
    context = torch.ones(2, 1, 4, 2, 3, requires_grad=True)
    pool_geometry = precompute_depth_context_geometry(precompute_bev_geometry(points, GRID))
    assert pool_geometry.num_pairs == 0
    out = bev_pool_depth_context(depth, context, pool_geometry)
    assert out.shape == (2, 4, 8, 8) and torch.count_nonzero(out) == 0
    out.sum().backward()
    assert depth.grad.shape == depth.shape and torch.count_nonzero(depth.grad) == 0
    assert context.grad.shape == context.shape and torch.count_nonzero(context.grad) == 0


def test_depth_context_is_bitwise_reproducible():
    shape, C = (2, 3, 8, 4, 5), 6
    pool_geometry = precompute_depth_context_geometry(precompute_bev_geometry(_ray_frustum(shape, seed=7), GRID))
    results = []
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    for deterministic in (False, True):  # no op of the path is refused in deterministic mode
        torch.use_deterministic_algorithms(deterministic)
        try:
            depth, context = _depth_context(shape, C, requires_grad=True)
            out = bev_pool_depth_context(depth, context, pool_geometry)
            out.pow(2).sum().backward()
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
        results.append((out.detach(), depth.grad, context.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    again = precompute_depth_context_geometry(precompute_bev_geometry(_ray_frustum(shape, seed=7), GRID))
    assert torch.equal(again.point_index, pool_geometry.point_index)
    assert torch.equal(again.col_indices, pool_geometry.col_indices)


def test_depth_context_half_precision_inputs_compute_in_float32():
    shape, C = (1, 2, 4, 3, 3), 3
    points = _ray_frustum(shape, seed=8)
    pool_geometry = precompute_depth_context_geometry(precompute_bev_geometry(points, GRID))
    depth, context = _depth_context(shape, C)
    context_bf16 = context.to(torch.bfloat16).requires_grad_(True)
    depth.requires_grad_(True)
    out = bev_pool_depth_context(depth, context_bf16, pool_geometry)
    assert out.dtype == torch.float32  # promoted, as depth_probs * context is on the old path
    ref = bev_pool_reference(_outer(depth.detach(), context_bf16.detach().float()), points, GRID)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    out.sum().backward()
    assert depth.grad.dtype == torch.float32 and context_bf16.grad.dtype == torch.bfloat16


def test_depth_context_shape_mismatch_rejected():
    pool_geometry = precompute_depth_context_geometry(precompute_bev_geometry(torch.zeros(1, 1, 2, 2, 2, 3), GRID))
    with pytest.raises(ValueError, match="depth must be"):
        bev_pool_depth_context(torch.zeros(1, 1, 3, 2, 2), torch.zeros(1, 1, 4, 2, 2), pool_geometry)
    with pytest.raises(ValueError, match="context must be"):
        bev_pool_depth_context(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 4, 2, 3), pool_geometry)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_depth_context_cuda_matches_cpu_and_is_reproducible():
    shape, C = (2, 3, 8, 4, 5), 6
    points = _ray_frustum(shape, seed=9)
    cpu_geometry = precompute_depth_context_geometry(precompute_bev_geometry(points, GRID))
    cuda_geometry = precompute_depth_context_geometry(precompute_bev_geometry(points.cuda(), GRID))
    grad_out = torch.randn(2, C, 8, 8, generator=torch.Generator().manual_seed(5))
    results = {}
    runs = (("cpu", cpu_geometry, "cpu"), ("cuda", cuda_geometry, "cuda"), ("cuda2", cuda_geometry, "cuda"))
    for name, geometry, device in runs:
        depth, context = _depth_context(shape, C)
        depth = depth.to(device).requires_grad_(True)
        context = context.to(device).requires_grad_(True)
        out = bev_pool_depth_context(depth, context, geometry)
        (out * grad_out.to(device)).sum().backward()
        results[name] = [t.detach().cpu() for t in (out, depth.grad, context.grad)]
    for a, b in zip(results["cpu"], results["cuda"]):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
    for a, b in zip(results["cuda"], results["cuda2"]):
        assert torch.equal(a, b)
