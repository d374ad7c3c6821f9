"""Lift-splat BEV pooling: sum the features of camera-frustum points into BEV grid cells.

The view transform of LSS / BEVDepth lifts every image feature column into ``D`` depth bins,
giving one feature vector per frustum point (B, N_cam, D, H, W, C), each with a 3D position in
the ego frame. Pooling sums all points that fall into the same BEV cell ("sum pooling"), dropping
points outside the x/y/z ranges of the :class:`~x3kd_core.config.BevGridConfig`.

Two steps, because the geometry changes far less often than the features (and even when it
changes per sample, the index work is shared by forward and backward):

1. :func:`precompute_bev_geometry` turns frustum point positions into one output row per point.
2. :func:`bev_pool` scatters features onto the grid with one ``index_add``.

Why ``index_add`` rather than the sort + cumsum trick of the LSS paper: cumsum over float32
features loses precision as prefix sums grow and needs a custom backward to be fast, while
``index_add`` is one vectorised kernel on every device whose backward (a gather) autograd already
provides; with ``torch.use_deterministic_algorithms(True)`` PyTorch switches it to a deterministic
kernel on CUDA. Dropped points are not filtered out of the features: they are sent to scratch rows
past the grid that are cut off afterwards. That skips copying the kept features (measured here on
CPU: ~2x faster forward and backward than gathering the kept rows first), and spreading the dropped
points over many scratch rows keeps GPU atomics from queueing on a single row.
:func:`bev_pool_reference` is a per-point Python loop the fast path is tested against.

Without the outer product (BEVPoolv2 idea, :func:`bev_pool_depth_context`)
--------------------------------------------------------------------------
:func:`bev_pool` needs the (B, N_cam, D, H, W, C) outer product of depth probabilities and context
features, which at the paper's scale is 38 M floats written and read once per step, and its
``index_add`` over half a million rows dominates the time. But a frustum point's feature is
``depth[p] * context[pixel(p)]``, so one BEV cell is

    out[cell] = sum over points p in cell of depth[p] * context[pixel(p)]
              = sum over pixels q of S[cell, q] * context[q],   S[cell, q] = sum of depth[p] over
                                                                the points of pixel q in cell,

a product of a sparse (cells x pixels) matrix and the dense (pixels x C) context map. Merging the
points of one (cell, pixel) pair (the consecutive depth bins of a ray inside one cell) leaves
~0.7 nonzeros per kept point. :func:`precompute_depth_context_geometry` derives the sparsity
pattern once per geometry (sorted CSR indices of S and of S^T, and the points of each pair), and the
autograd function :class:`DepthContextPool` does, per call:

* forward: S's values = segment sums of the depth probabilities of each pair's points (a gather and
  ``segment_reduce``), then ``S @ context`` (CSR x dense);
* backward: grad context = ``S^T @ grad_out`` (the transposed pattern is stored as its own CSR
  matrix, so no transposed sparse product is run); grad depth[p] = ``dot(grad_out[cell(p)],
  context[pixel(p)])``, the same for all points of a pair, evaluated only at S's nonzeros
  (``torch.sparse.sampled_addmm``) and gathered back to the points.

No (points x C) tensor is ever formed. Every step reduces each output element in one fixed order
(row-wise CSR products, per-segment sums, per-entry dot products, gathers; no atomics, no
scatter-add), so results are bitwise reproducible on CPU (tested, also under
``torch.use_deterministic_algorithms(True)``); on CUDA the same holds by construction (cuSPARSE
documents only its *transposed* SpMM as run-to-run variable, and S^T is stored, not transposed),
but had not been run on a GPU when this was written. Half-precision inputs (autocast) are computed in float32; the output has the
promoted dtype of depth and context, as the outer-product path does.

BEV layout everywhere in x3kd: (B, C, N_x, N_y); cell [i, j] covers
x in [x_min + i * cell, x_min + (i + 1) * cell) and y in [y_min + j * cell, y_min + (j + 1) * cell).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from x3kd_core.config import BevGridConfig

__all__ = [
    "BevPoolGeometry",
    "precompute_bev_geometry",
    "bev_pool",
    "bev_pool_reference",
    "DepthContextGeometry",
    "precompute_depth_context_geometry",
    "DepthContextPool",
    "bev_pool_depth_context",
]


#: Dropped points are spread over this many scratch rows (see module docstring).
_MAX_SCRATCH_ROWS = 1024


@dataclass
class BevPoolGeometry:
    """Where each frustum point lands on the BEV grid.

    Fields:
        row_index: (B * N_cam * D * H * W,) int64 output row of every frustum point, in the order
            of the features flattened to (B * N_cam * D * H * W, C). A point inside the grid goes to
            row ``b * N_x * N_y + i * N_y + j`` (its cell); a dropped point goes to a scratch row
            ``>= B * N_x * N_y`` that :func:`bev_pool` discards.
        kept_index: (P,) int64 flat indices (same flattening) of the P points inside the grid,
            ascending; P = 0 is allowed.
        frustum_shape: (B, N_cam, D, H, W) the features passed to :func:`bev_pool` must have.
        grid_size: (N_x, N_y) number of BEV cells along x and y.
        num_scratch_rows: number of scratch rows past the grid (>= 1).
    """

    row_index: torch.Tensor
    kept_index: torch.Tensor
    frustum_shape: tuple[int, int, int, int, int]
    grid_size: tuple[int, int]
    num_scratch_rows: int

    @property
    def batch_size(self) -> int:
        return self.frustum_shape[0]

    @property
    def num_cells(self) -> int:
        """B * N_x * N_y: the number of real (non-scratch) output rows."""
        return self.batch_size * self.grid_size[0] * self.grid_size[1]

    @property
    def num_kept(self) -> int:
        """Number of frustum points inside the grid (P)."""
        return int(self.kept_index.numel())

    @property
    def kept_cell_index(self) -> torch.Tensor:
        """(P,) flat cell ``b * N_x * N_y + i * N_y + j`` of each kept point."""
        return self.row_index[self.kept_index]

    def to(self, device: torch.device | str) -> "BevPoolGeometry":
        return BevPoolGeometry(
            row_index=self.row_index.to(device),
            kept_index=self.kept_index.to(device),
            frustum_shape=self.frustum_shape,
            grid_size=self.grid_size,
            num_scratch_rows=self.num_scratch_rows,
        )


def _check_points(points_ego: torch.Tensor) -> None:
    if points_ego.dim() != 6 or points_ego.shape[-1] != 3:
        raise ValueError(f"points_ego must be (B, N_cam, D, H, W, 3), got {tuple(points_ego.shape)}")


def precompute_bev_geometry(points_ego: torch.Tensor, grid: BevGridConfig) -> BevPoolGeometry:
    """Compute the BEV cell of every frustum point.

    Args:
        points_ego: (B, N_cam, D, H, W, 3) frustum point positions x, y, z in the ego frame (m).
            Any float dtype and device; the cell arithmetic runs in this dtype on this device.
        grid: the BEV grid; points with x, y outside ``[min, max)`` of the x/y ranges or z outside
            ``[z_min, z_max)`` are dropped, as are non-finite points.

    Returns:
        :class:`BevPoolGeometry` with indices on ``points_ego.device``.
    """
    _check_points(points_ego)
    B, N, D, H, W, _ = points_ego.shape
    n_x, n_y = grid.size_xy
    flat = points_ego.detach().reshape(-1, 3)
    num_points = flat.shape[0]
    # The same formula as bev_pool_reference, so both assign boundary points to the same cell.
    ix = torch.floor((flat[:, 0] - grid.x_range_m[0]) / grid.cell_size_m)
    iy = torch.floor((flat[:, 1] - grid.y_range_m[0]) / grid.cell_size_m)
    z = flat[:, 2]
    keep = (
        (ix >= 0) & (ix < n_x) & (iy >= 0) & (iy < n_y)
        & (z >= grid.z_range_m[0]) & (z < grid.z_range_m[1])
    )  # NaN compares false everywhere, so non-finite points are dropped here too.
    point = torch.arange(num_points, device=flat.device)
    points_per_sample = max(N * D * H * W, 1)
    batch = torch.div(point, points_per_sample, rounding_mode="floor")
    num_cells = B * n_x * n_y
    num_scratch = max(1, min(_MAX_SCRATCH_ROWS, num_points))
    # Clamp before the cast: dropped points may hold inf/NaN or huge values.
    ix = ix.clamp(0, n_x - 1).nan_to_num(0.0).long()
    iy = iy.clamp(0, n_y - 1).nan_to_num(0.0).long()
    cell = batch * (n_x * n_y) + ix * n_y + iy
    row_index = torch.where(keep, cell, num_cells + point % num_scratch)
    return BevPoolGeometry(
        row_index=row_index,
        kept_index=torch.nonzero(keep, as_tuple=False).squeeze(1),
        frustum_shape=(B, N, D, H, W),
        grid_size=(n_x, n_y),
        num_scratch_rows=num_scratch,
    )


def bev_pool(features: torch.Tensor, geometry: BevPoolGeometry) -> torch.Tensor:
    """Sum-pool frustum features into BEV cells (differentiable w.r.t. ``features``).

    Args:
        features: (B, N_cam, D, H, W, C) per-point features (e.g. depth probability x context).
        geometry: from :func:`precompute_bev_geometry` for the same (B, N_cam, D, H, W), on the
            same device as ``features``.

    Returns:
        (B, C, N_x, N_y) contiguous BEV features; cells no point falls into are zero.
    """
    if features.dim() != 6 or tuple(features.shape[:5]) != tuple(geometry.frustum_shape):
        raise ValueError(
            f"features must be (B, N_cam, D, H, W, C) with leading dims {geometry.frustum_shape}, "
            f"got {tuple(features.shape)}"
        )
    B = geometry.batch_size
    C = features.shape[-1]
    n_x, n_y = geometry.grid_size
    rows = features.reshape(-1, C)
    out = rows.new_zeros(geometry.num_cells + geometry.num_scratch_rows, C)
    # Out-of-place so the result stays in the autograd graph even when no point is kept.
    out = out.index_add(0, geometry.row_index, rows)
    return out[: geometry.num_cells].view(B, n_x, n_y, C).permute(0, 3, 1, 2).contiguous()


def bev_pool_reference(features: torch.Tensor, points_ego: torch.Tensor, grid: BevGridConfig) -> torch.Tensor:
    """Naive per-point loop with the same semantics as :func:`bev_pool`; for tests only (slow).

    Args:
        features: (B, N_cam, D, H, W, C).
        points_ego: (B, N_cam, D, H, W, 3) ego-frame positions (m).
        grid: the BEV grid.

    Returns:
        (B, C, N_x, N_y) summed features.
    """
    _check_points(points_ego)
    B, N, D, H, W, C = features.shape
    n_x, n_y = grid.size_xy
    out = features.new_zeros(B, C, n_x, n_y)
    for b in range(B):
        for n in range(N):
            for d in range(D):
                for h in range(H):
                    for w in range(W):
                        p = points_ego[b, n, d, h, w].detach()
                        if not bool(torch.isfinite(p).all()):
                            continue
                        ix = int(torch.floor((p[0] - grid.x_range_m[0]) / grid.cell_size_m))
                        iy = int(torch.floor((p[1] - grid.y_range_m[0]) / grid.cell_size_m))
                        z = float(p[2])
                        if not (0 <= ix < n_x and 0 <= iy < n_y):
                            continue
                        if not (grid.z_range_m[0] <= z < grid.z_range_m[1]):
                            continue
                        out[b, :, ix, iy] += features[b, n, d, h, w]
    return out


@dataclass
class DepthContextGeometry:
    """Sparsity pattern of the (cells x pixels) depth matrix S used by :func:`bev_pool_depth_context`.

    "Pixel" means a feature-map cell of one camera of one sample: pixel ``q = (b * N_cam + n) * H * W
    + h * W + w`` of the context flattened to (B * N_cam * H * W, C). A *pair* is one nonzero of S:
    a (cell, pixel) with at least one kept frustum point; pairs are ordered by cell, then pixel.

    Fields:
        point_index: (P,) int64 flat indices into depth (B * N_cam * D * H * W) of the kept points,
            grouped by pair (pair order), ascending within a pair.
        pair_lengths: (U,) int64 number of points of each pair (>= 1; sums to P).
        pair_of_frustum_point: (B * N_cam * D * H * W,) int64 pair of every frustum point, U for
            dropped ones (the backward gathers depth gradients with it, no scatter).
        crow_indices, col_indices: (num_cells + 1,), (U,) CSR indices of S (columns = pixels);
            int32 where all sizes fit, else int64.
        t_crow_indices, t_col_indices: (num_pixels + 1,), (U,) CSR indices of S^T (columns = cells).
        t_order: (U,) the pair stored at each nonzero of S^T (S^T's values = S's values[t_order]).
        frustum_shape: (B, N_cam, D, H, W) of the depth the geometry was built for.
        grid_size: (N_x, N_y).
    """

    point_index: torch.Tensor
    pair_lengths: torch.Tensor
    pair_of_frustum_point: torch.Tensor
    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    t_crow_indices: torch.Tensor
    t_col_indices: torch.Tensor
    t_order: torch.Tensor
    frustum_shape: tuple[int, int, int, int, int]
    grid_size: tuple[int, int]

    @property
    def num_cells(self) -> int:
        """B * N_x * N_y (rows of S)."""
        return self.frustum_shape[0] * self.grid_size[0] * self.grid_size[1]

    @property
    def num_pixels(self) -> int:
        """B * N_cam * H * W (columns of S)."""
        B, N, _, H, W = self.frustum_shape
        return B * N * H * W

    @property
    def num_pairs(self) -> int:
        """Nonzeros of S (U)."""
        return int(self.col_indices.numel())

    def to(self, device: torch.device | str) -> "DepthContextGeometry":
        moved = {
            f: getattr(self, f).to(device)
            for f in (
                "point_index", "pair_lengths", "pair_of_frustum_point", "crow_indices", "col_indices",
                "t_crow_indices", "t_col_indices", "t_order",
            )
        }
        return DepthContextGeometry(**moved, frustum_shape=self.frustum_shape, grid_size=self.grid_size)


def _csr_row_pointers(rows: torch.Tensor, num_rows: int, dtype: torch.dtype) -> torch.Tensor:
    """(num_rows + 1,) CSR row pointers of nonzeros with row indices ``rows`` (sorted by row)."""
    crow = torch.zeros(num_rows + 1, dtype=dtype, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=num_rows), 0)
    return crow


def precompute_depth_context_geometry(geometry: BevPoolGeometry) -> DepthContextGeometry:
    """Derive the sparse depth-matrix pattern of :func:`bev_pool_depth_context` from a
    :class:`BevPoolGeometry` (same device). Cost: two sorts of the kept points (once per geometry;
    forward and backward share it)."""
    B, N, D, H, W = geometry.frustum_shape
    hw = H * W
    num_pixels = B * N * hw
    kept = geometry.kept_index
    cell = geometry.row_index.index_select(0, kept)
    pixel = torch.div(kept, D * hw, rounding_mode="floor") * hw + kept % hw
    # Stable: the points of one pair keep their ascending (depth bin) order.
    key, order = torch.sort(cell * num_pixels + pixel, stable=True)
    point_index = kept.index_select(0, order)
    pair_key, pair_lengths = torch.unique_consecutive(key, return_counts=True)
    rows = torch.div(pair_key, num_pixels, rounding_mode="floor")
    cols = pair_key % num_pixels
    # Stable sort by pixel keeps the cells of one pixel ascending: S^T in CSR order.
    t_order = torch.sort(cols, stable=True).indices
    # int32 CSR indices where they fit: MKL and cuSPARSE then use them without a per-call copy.
    fits_int32 = max(geometry.num_cells, num_pixels, kept.numel()) < 2**31 - 1
    idx = torch.int32 if fits_int32 else torch.int64
    num_pairs = pair_key.numel()
    pair_of_frustum_point = torch.full_like(geometry.row_index, num_pairs)
    pair_of_frustum_point[point_index] = torch.repeat_interleave(
        torch.arange(num_pairs, device=kept.device), pair_lengths
    )
    return DepthContextGeometry(
        point_index=point_index,
        pair_lengths=pair_lengths,
        pair_of_frustum_point=pair_of_frustum_point,
        crow_indices=_csr_row_pointers(rows, geometry.num_cells, idx),
        col_indices=cols.to(idx),
        t_crow_indices=_csr_row_pointers(cols.index_select(0, t_order), num_pixels, idx),
        t_col_indices=rows.index_select(0, t_order).to(idx),
        t_order=t_order,
        frustum_shape=geometry.frustum_shape,
        grid_size=geometry.grid_size,
    )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    # The indices come from precompute_depth_context_geometry and are valid by construction. The
    # "sparse CSR support is in beta" notice is only about API stability; CSR x dense and SDDMM
    # are what this module is tested with.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class DepthContextPool(torch.autograd.Function):
    """BEV sum pooling of depth x context without forming their outer product (see module
    docstring). Use through :func:`bev_pool_depth_context`; inputs as documented there."""

    @staticmethod
    def forward(ctx, depth: torch.Tensor, context: torch.Tensor, geometry: DepthContextGeometry) -> torch.Tensor:
        B, N, D, H, W = geometry.frustum_shape
        C = context.shape[2]
        n_x, n_y = geometry.grid_size
        out_dtype = torch.promote_types(depth.dtype, context.dtype)
        cdt = _compute_dtype(out_dtype)
        with torch.autocast(depth.device.type, enabled=False):
            ctx_rows = context.to(cdt).permute(0, 1, 3, 4, 2).reshape(geometry.num_pixels, C)
            if geometry.num_pairs == 0:
                values = ctx_rows.new_zeros(0)
                out = ctx_rows.new_zeros(geometry.num_cells, C)
            else:
                point_depth = depth.to(cdt).reshape(-1).index_select(0, geometry.point_index)
                values = torch.segment_reduce(point_depth, "sum", lengths=geometry.pair_lengths)
                s = _csr(geometry.crow_indices, geometry.col_indices, values, (geometry.num_cells, geometry.num_pixels))
                out = s @ ctx_rows
        ctx.geometry = geometry
        ctx.depth_dtype, ctx.context_dtype = depth.dtype, context.dtype
        ctx.save_for_backward(values, ctx_rows)
        bev = out.view(B, n_x, n_y, C).permute(0, 3, 1, 2).contiguous()
        return bev.to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_bev: torch.Tensor):
        geometry: DepthContextGeometry = ctx.geometry
        values, ctx_rows = ctx.saved_tensors
        B, N, D, H, W = geometry.frustum_shape
        C = ctx_rows.shape[1]
        grad_depth = grad_context = None
        with torch.autocast(grad_bev.device.type, enabled=False):
            grad_rows = grad_bev.to(ctx_rows.dtype).permute(0, 2, 3, 1).reshape(geometry.num_cells, C)
            if ctx.needs_input_grad[0]:
                if geometry.num_pairs:
                    pattern = _csr(
                        geometry.crow_indices, geometry.col_indices, ctx_rows.new_zeros(geometry.num_pairs),
                        (geometry.num_cells, geometry.num_pixels),
                    )
                    # (U,) dot(grad_out[cell], context[pixel]) at S's nonzeros only.
                    pair_grad = torch.sparse.sampled_addmm(pattern, grad_rows, ctx_rows.T, beta=0.0).values()
                else:
                    pair_grad = ctx_rows.new_zeros(0)
                # One zero past the pairs for the dropped points; a gather, so no scatter is needed.
                pair_grad = torch.cat([pair_grad, pair_grad.new_zeros(1)])
                grad_flat = pair_grad.index_select(0, geometry.pair_of_frustum_point)
                grad_depth = grad_flat.view(B, N, D, H, W).to(ctx.depth_dtype)
            if ctx.needs_input_grad[1]:
                if geometry.num_pairs:
                    s_t = _csr(
                        geometry.t_crow_indices, geometry.t_col_indices, values.index_select(0, geometry.t_order),
                        (geometry.num_pixels, geometry.num_cells),
                    )
                    grad_ctx_rows = s_t @ grad_rows
                else:
                    grad_ctx_rows = ctx_rows.new_zeros(geometry.num_pixels, C)
                grad_context = grad_ctx_rows.view(B, N, H, W, C).permute(0, 1, 4, 2, 3).to(ctx.context_dtype)
        return grad_depth, grad_context, None


def bev_pool_depth_context(depth: torch.Tensor, context: torch.Tensor, geometry: DepthContextGeometry) -> torch.Tensor:
    """Sum-pool ``depth[..., None] * context`` into BEV cells without forming that outer product.

    Equal (to float rounding) to ``bev_pool(depth.unsqueeze(-1) * context.permute(0, 1, 3, 4, 2)
    .unsqueeze(2), geometry)`` for the :class:`BevPoolGeometry` ``geometry`` was derived from, and
    differentiable w.r.t. both inputs (first order only).

    Args:
        depth: (B, N_cam, D, H, W) per-point weights (depth probabilities).
        context: (B, N_cam, C, H, W) per-pixel features.
        geometry: from :func:`precompute_depth_context_geometry` for this (B, N_cam, D, H, W), on
            the same device as the inputs.

    Returns:
        (B, C, N_x, N_y) contiguous, dtype ``torch.promote_types(depth.dtype, context.dtype)``;
        cells no point falls into are zero.
    """
    B, N, D, H, W = geometry.frustum_shape
    if tuple(depth.shape) != (B, N, D, H, W):
        raise ValueError(f"depth must be (B, N_cam, D, H, W) = {geometry.frustum_shape}, got {tuple(depth.shape)}")
    if context.dim() != 5 or tuple(context.shape[:2]) != (B, N) or tuple(context.shape[3:]) != (H, W):
        raise ValueError(f"context must be (B, N_cam, C, H, W) with B, N_cam, H, W from {geometry.frustum_shape}, "
                         f"got {tuple(context.shape)}")
    return DepthContextPool.apply(depth, context, geometry)
