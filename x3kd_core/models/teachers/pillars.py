"""Pillar voxelisation, a PointNet-style pillar feature net and the scatter to a BEV pseudo-image.

Shared by the LiDAR teacher and the radar encoder. Pure PyTorch (no spconv / mmcv ops), and
*dynamic*: every in-range point is kept and belongs to exactly one pillar, no pillar is truncated
to a maximum number of points and no pillar is dropped for a pillar budget. That removes the two
hyper-parameters (max points, max pillars) that silently change a PointPillars model between
datasets, and it costs nothing on these sparse clouds.

Pillar grid: the BEV range of the :class:`~x3kd_core.config.BevGridConfig` cut into square pillars
of ``pillar_size_m``, which must divide the BEV cell (``cell_size_m = stride * pillar_size_m``), so
that every BEV cell holds exactly ``stride x stride`` pillars and pillar ``[i, j]`` lies in cell
``[i // stride, j // stride]``. Same layout convention as every BEV tensor: ``(B, C, N_x, N_y)``,
pillar ``[i, j]`` covers x in ``[x_min + i * p, x_min + (i + 1) * p)`` and y likewise with ``j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from x3kd_core.config import BevGridConfig, ConfigError


def pillar_stride(grid: BevGridConfig, pillar_size_m: float) -> int:
    """Number of pillars along one edge of a BEV cell (an integer >= 1), or ConfigError."""
    if not pillar_size_m > 0:
        raise ConfigError(f"pillar_size_m must be > 0, got {pillar_size_m}")
    ratio = grid.cell_size_m / pillar_size_m
    stride = int(round(ratio))
    if stride < 1 or abs(ratio - stride) > 1e-6:
        raise ConfigError(
            f"pillar_size_m {pillar_size_m} must divide the BEV cell {grid.cell_size_m} m a whole number of times"
        )
    return stride


@dataclass
class Pillars:
    """A batch of non-empty pillars and the points in them (all in-range points of all samples).

    Fields:
        coords: (M, 3) int64 (batch index, i_x, i_y) of each non-empty pillar, sorted by
            (batch, i_x, i_y).
        num_points: (M,) int64 number of points in each pillar (>= 1).
        point_pillar: (P_in,) int64 index into ``coords`` of each kept point's pillar.
        point_features: (P_in, C_point) float the kept points' raw features (as given, in the
            order of the input clouds concatenated over the batch, out-of-range points removed).
        point_batch: (P_in,) int64 batch index of each kept point.
        pillar_mean_xyz: (M, 3) mean x, y, z (m) of each pillar's points.
        pillar_center_xy: (M, 2) x, y (m) of each pillar's centre.
        batch_size: B.
        grid_size_xy: (N_x_pillars, N_y_pillars).
    """

    coords: Tensor
    num_points: Tensor
    point_pillar: Tensor
    point_features: Tensor
    point_batch: Tensor
    pillar_mean_xyz: Tensor
    pillar_center_xy: Tensor
    batch_size: int
    grid_size_xy: tuple[int, int]

    @property
    def num_pillars(self) -> int:
        return int(self.coords.shape[0])


def voxelize(points: list[Tensor], grid: BevGridConfig, pillar_size_m: float) -> Pillars:
    """Assign points to pillars on the BEV range of ``grid`` (dynamic voxelisation).

    Args:
        points: B tensors (P_b, C_point) whose first three columns are x, y, z (m, ego frame);
            the remaining columns are carried along untouched.
        grid: BEV range; points with x or y outside ``[min, max)`` or z outside
            ``z_range_m = [min, max)``, or any non-finite coordinate, are dropped.
        pillar_size_m: pillar edge (m); must divide ``grid.cell_size_m``.

    Returns:
        :class:`Pillars` for the kept points. Works with empty clouds (M = 0).
    """
    pillar_stride(grid, pillar_size_m)  # validates the divisibility
    if not points:
        raise ValueError("voxelize needs at least one (possibly empty) point cloud")
    n_x = grid.size_xy[0] * pillar_stride(grid, pillar_size_m)
    n_y = grid.size_xy[1] * pillar_stride(grid, pillar_size_m)
    x_min, x_max = grid.x_range_m
    y_min, y_max = grid.y_range_m
    z_min, z_max = grid.z_range_m
    device = points[0].device
    channels = points[0].shape[1]

    kept_points, kept_batch = [], []
    for b, cloud in enumerate(points):
        if cloud.ndim != 2 or cloud.shape[1] != channels or channels < 3:
            raise ValueError(f"point cloud {b} has shape {tuple(cloud.shape)}, expected (P, {channels}) with C >= 3")
        xyz = cloud[:, :3]
        inside = (
            torch.isfinite(xyz).all(dim=1)
            & (xyz[:, 0] >= x_min) & (xyz[:, 0] < x_max)
            & (xyz[:, 1] >= y_min) & (xyz[:, 1] < y_max)
            & (xyz[:, 2] >= z_min) & (xyz[:, 2] < z_max)
        )
        kept = cloud[inside].float()
        kept_points.append(kept)
        kept_batch.append(torch.full((kept.shape[0],), b, dtype=torch.long, device=device))
    feats = torch.cat(kept_points, dim=0)
    batch_idx = torch.cat(kept_batch, dim=0)

    # floor() then clamp: a point a rounding error below x_max must not land in pillar n_x.
    ix = torch.floor((feats[:, 0] - x_min) / pillar_size_m).long().clamp_(0, n_x - 1)
    iy = torch.floor((feats[:, 1] - y_min) / pillar_size_m).long().clamp_(0, n_y - 1)
    flat = (batch_idx * n_x + ix) * n_y + iy
    unique_flat, point_pillar, num_points = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)

    coords = torch.stack(
        [unique_flat // (n_x * n_y), (unique_flat // n_y) % n_x, unique_flat % n_y], dim=1
    )
    num_pillars = unique_flat.shape[0]
    sum_xyz = torch.zeros(num_pillars, 3, dtype=feats.dtype, device=device)
    sum_xyz.index_add_(0, point_pillar, feats[:, :3])
    mean_xyz = sum_xyz / num_points.clamp(min=1).unsqueeze(1).to(feats.dtype)
    center_xy = torch.stack(
        [
            x_min + (coords[:, 1].to(feats.dtype) + 0.5) * pillar_size_m,
            y_min + (coords[:, 2].to(feats.dtype) + 0.5) * pillar_size_m,
        ],
        dim=1,
    )
    return Pillars(
        coords=coords,
        num_points=num_points,
        point_pillar=point_pillar,
        point_features=feats,
        point_batch=batch_idx,
        pillar_mean_xyz=mean_xyz,
        pillar_center_xy=center_xy,
        batch_size=len(points),
        grid_size_xy=(n_x, n_y),
    )


def decorate_points(pillars: Pillars) -> Tensor:
    """Per-point input of the pillar feature net (PointPillars' decoration).

    Returns:
        (P_in, C_point + 5): the raw point features, then x, y, z minus the pillar's point mean
        (m), then x, y minus the pillar centre (m).
    """
    xyz = pillars.point_features[:, :3]
    to_mean = xyz - pillars.pillar_mean_xyz[pillars.point_pillar]
    to_center = xyz[:, :2] - pillars.pillar_center_xy[pillars.point_pillar]
    return torch.cat([pillars.point_features, to_mean, to_center], dim=1)


class PillarFeatureNet(nn.Module):
    """PointNet over the points of each pillar: (Linear -> BatchNorm -> ReLU) per point, max per pillar.

    With several layers, every layer but the last sees its per-point output concatenated with the
    pillar-wise max (as in PointPillars), so points learn from their pillar's context.

    Args:
        in_channels: C_point + 5 (see :func:`decorate_points`).
        channels: output width of each layer; the pillar feature is ``channels[-1]`` wide.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        if not channels:
            raise ConfigError("pillar feature net needs at least one layer")
        self.layers = nn.ModuleList()
        c_in = in_channels
        for k, c_out in enumerate(channels):
            last = k == len(channels) - 1
            # Intermediate layers emit c_out // 2 so that [point, max] concatenated is c_out wide.
            width = c_out if last else c_out // 2
            self.layers.append(
                nn.Sequential(nn.Linear(c_in, width, bias=False), nn.BatchNorm1d(width, eps=1e-3, momentum=0.1), nn.ReLU())
            )
            c_in = 2 * width
        self.out_channels = channels[-1]

    def forward(self, point_inputs: Tensor, point_pillar: Tensor, num_pillars: int) -> Tensor:
        """point_inputs (P_in, C_in), point_pillar (P_in,) -> pillar features (M, C_out), all >= 0."""
        x = point_inputs
        for k, layer in enumerate(self.layers):
            if x.shape[0] > 1 or not self.training:
                y = layer(x)
            else:
                # BatchNorm1d cannot normalise 0 or 1 sample in training; use its running statistics then.
                lin, bn, act = layer
                y = act(nn.functional.batch_norm(lin(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))
            pooled = _scatter_max(y, point_pillar, num_pillars)
            if k == len(self.layers) - 1:
                return pooled
            x = torch.cat([y, pooled[point_pillar]], dim=1)
        raise AssertionError("unreachable")


def _scatter_max(values: Tensor, index: Tensor, num_groups: int) -> Tensor:
    """values (P, C), index (P,) in [0, num_groups) -> (num_groups, C) group-wise max (0 if empty)."""
    out = values.new_zeros(num_groups, values.shape[1])
    if values.shape[0] == 0:
        return out
    return out.scatter_reduce(0, index.unsqueeze(1).expand_as(values), values, reduce="amax", include_self=False)


def scatter_to_bev(pillar_features: Tensor, pillars: Pillars) -> Tensor:
    """Pillar features (M, C) -> pseudo-image (B, C, N_x_pillars, N_y_pillars), zero at empty pillars."""
    n_x, n_y = pillars.grid_size_xy
    channels = pillar_features.shape[1]
    canvas = pillar_features.new_zeros(pillars.batch_size * n_x * n_y, channels)
    flat = (pillars.coords[:, 0] * n_x + pillars.coords[:, 1]) * n_y + pillars.coords[:, 2]
    canvas = canvas.index_copy(0, flat, pillar_features)
    return canvas.view(pillars.batch_size, n_x, n_y, channels).permute(0, 3, 1, 2).contiguous()


class PillarEncoder(nn.Module):
    """Points -> pillar pseudo-image: :func:`voxelize`, :func:`decorate_points`, PillarFeatureNet, scatter.

    Args:
        grid: BEV range (and cell size, which ``pillar_size_m`` must divide).
        pillar_size_m: pillar edge (m).
        point_channels: C_point of the input clouds (5 for LiDAR, 7 for radar).
        feature_channels: widths of the pillar feature net layers.
    """

    def __init__(
        self, *, grid: BevGridConfig, pillar_size_m: float, point_channels: int, feature_channels: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.grid = grid
        self.pillar_size_m = pillar_size_m
        self.stride = pillar_stride(grid, pillar_size_m)
        self.point_channels = point_channels
        self.feature_net = PillarFeatureNet(point_channels + 5, feature_channels)
        self.out_channels = self.feature_net.out_channels

    @property
    def grid_size_xy(self) -> tuple[int, int]:
        """(N_x_pillars, N_y_pillars) = BEV grid size times the pillar stride."""
        return (self.grid.size_xy[0] * self.stride, self.grid.size_xy[1] * self.stride)

    def forward(self, points: list[Tensor]) -> Tensor:
        """points: B tensors (P_b, point_channels) -> (B, C, N_x_pillars, N_y_pillars), zero where empty."""
        for b, cloud in enumerate(points):
            if cloud.ndim != 2 or cloud.shape[1] != self.point_channels:
                raise ValueError(f"point cloud {b} has shape {tuple(cloud.shape)}, expected (P, {self.point_channels})")
        pillars = voxelize(points, self.grid, self.pillar_size_m)
        pillar_feats = self.feature_net(decorate_points(pillars), pillars.point_pillar, pillars.num_pillars)
        return scatter_to_bev(pillar_feats, pillars)
