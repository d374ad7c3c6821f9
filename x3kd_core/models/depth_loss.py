"""BEVDepth-style explicit depth supervision from LiDAR.

LiDAR points (the keyframe sweep, or also earlier ego-motion-compensated sweeps up to
``max_time_lag_s``) are projected into every camera. Two target kinds
(:class:`DepthTargetConfig`):

- ``nearest`` (BEVDepth's rule): each feature cell takes the *minimum* depth of the points that
  fall into it, as a one-hot bin; the loss is the cross-entropy on cells with a return.
- ``distribution``: each cell's target is the histogram of the depth bins of *all* its points,
  normalised to sum to 1; the loss is the soft cross-entropy ``-sum_d p_d log q_d``. A feature
  cell covers many pixels (16 x 16 at stride 16): an object smaller than the cell shares it with
  the ground in front of it, and the nearest return is then the ground. The histogram keeps the
  object's returns in the target, and the lift spreads that cell's context over every depth that
  is really in it (measured on the synthetic benchmark: BENCHMARKS.md, "camera student regime").

Cells without a return are not supervised.

Cell assignment follows :mod:`x3kd_core.models.view_transform`: pixel ``i`` covers
``[i - 0.5, i + 0.5)``, so cell ``c`` at stride ``s`` covers ``u`` in ``[c*s - 0.5, (c+1)*s - 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from x3kd_core.config import ConfigError
from x3kd_core.models.view_transform import DepthBinsConfig

__all__ = ["DepthTargetConfig", "lidar_depth_targets", "depth_loss", "KEYFRAME_TIME_LAG_S"]

#: LiDAR points with time_lag_s at most this are from the keyframe sweep (later sweeps are >= 0.05 s).
KEYFRAME_TIME_LAG_S = 1e-3


@dataclass(frozen=True)
class DepthTargetConfig:
    """How LiDAR points become per-cell depth targets.

    kind: ``nearest`` (one-hot bin of the nearest return, BEVDepth) or ``distribution``
        (normalised histogram of all returns' bins).
    max_time_lag_s: use LiDAR points whose time_lag_s is at most this (s); the default takes the
        keyframe sweep only. Earlier sweeps need ``data.lidar_sweeps`` > 1 to be loaded at all;
        they are ego-motion compensated, but moving objects are smeared by their own motion.
    """

    kind: Literal["nearest", "distribution"] = "nearest"
    max_time_lag_s: float = KEYFRAME_TIME_LAG_S

    def __post_init__(self) -> None:
        if not self.max_time_lag_s >= 0:
            raise ConfigError(f"max_time_lag_s must be >= 0, got {self.max_time_lag_s}")


def lidar_depth_targets(
    lidar_points: list[torch.Tensor],
    intrinsics: torch.Tensor,
    cam_to_ego: torch.Tensor,
    feature_hw: tuple[int, int],
    stride: int,
    bins: DepthBinsConfig,
    target: DepthTargetConfig = DepthTargetConfig(),
) -> torch.Tensor:
    """Depth target per feature cell.

    Args:
        lidar_points: B tensors (P_b, 5): x, y, z (m, ego frame), intensity, time_lag_s; points
            with time_lag_s above ``target.max_time_lag_s`` are ignored.
        intrinsics: (B, N_cam, 3, 3) K for the images the features came from (pixels).
        cam_to_ego: (B, N_cam, 4, 4).
        feature_hw: (h, w) feature map size; the image is (h * stride, w * stride).
        stride: pixels per feature cell.
        bins: depth bins along camera z.
        target: which target (default: BEVDepth's nearest return of the keyframe sweep).

    Returns:
        ``nearest``: (B, N_cam, h, w) int64 bin index of the nearest return per cell, -1 where the
        cell has no return inside the bin range.
        ``distribution``: (B, N_cam, D, h, w) float32, per cell the share of its returns in each
        bin (sums to 1 over D), all zeros where the cell has no return inside the bin range.
    """
    with torch.no_grad(), torch.autocast(intrinsics.device.type, enabled=False):
        return _lidar_depth_targets(lidar_points, intrinsics, cam_to_ego, feature_hw, stride, bins, target)


def _lidar_depth_targets(lidar_points, intrinsics, cam_to_ego, feature_hw, stride, bins, target) -> torch.Tensor:
    # fp32 throughout (no autocast): fp16 pixel coordinates are only 0.5 px precise at u ~ 700.
    B, N = intrinsics.shape[:2]
    h, w = feature_hw
    D = bins.num_bins
    device = intrinsics.device
    if target.kind == "nearest":
        targets = torch.full((B, N, h, w), -1, dtype=torch.long, device=device)
    else:
        targets = torch.zeros((B, N, D, h, w), dtype=torch.float32, device=device)
    ego_to_cam = torch.linalg.inv(cam_to_ego.double()).float()  # (B, N, 4, 4)
    for b in range(B):
        pts = lidar_points[b].to(device=device, dtype=torch.float32)
        pts = pts[pts[:, 4] <= target.max_time_lag_s, :3]
        if pts.shape[0] == 0:
            continue
        cam = torch.einsum("nij,pj->npi", ego_to_cam[b, :, :3, :3], pts) + ego_to_cam[b, :, None, :3, 3]  # (N, P, 3)
        depth = cam[..., 2]
        uvw = torch.einsum("nij,npj->npi", intrinsics[b].float(), cam)
        safe = torch.where(depth > 1e-3, depth, torch.ones_like(depth))
        u = uvw[..., 0] / safe
        v = uvw[..., 1] / safe
        col = torch.floor((u + 0.5) / stride)
        row = torch.floor((v + 0.5) / stride)
        valid = (depth >= bins.min_m) & (depth < bins.max_m) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        cam_idx = torch.arange(N, device=device)[:, None].expand_as(depth)
        flat = (cam_idx * h + row.long().clamp(0, h - 1)) * w + col.long().clamp(0, w - 1)
        if target.kind == "nearest":
            min_depth = torch.full((N * h * w,), float("inf"), device=device)
            min_depth = min_depth.scatter_reduce(0, flat[valid], depth[valid], reduce="amin", include_self=True)
            targets[b] = bins.bin_index(min_depth).view(N, h, w)
        else:
            bin_idx = bins.bin_index(depth[valid])
            keep = bin_idx >= 0  # float rounding at max_m
            cell = flat[valid][keep]  # cam * h * w + row * w + col: the bin goes between cam and row
            index = (cam_idx[valid][keep] * D + bin_idx[keep]) * (h * w) + cell % (h * w)
            counts = torch.zeros(N * D * h * w, device=device)
            counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float32))
            counts = counts.view(N, D, h, w)
            total = counts.sum(dim=1, keepdim=True)
            targets[b] = counts / total.clamp(min=1.0)
    return targets


def depth_loss(depth_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over cells with a target.

    Args:
        depth_logits: (B, N_cam, D, h, w) unnormalised depth scores.
        targets: either (B, N_cam, h, w) int64 bins, -1 = unsupervised cell (``nearest``), or
            (B, N_cam, D, h, w) float per-cell distributions, all zeros = unsupervised cell
            (``distribution``; the soft cross-entropy ``-sum_d p_d log q_d``).

    Returns:
        Scalar; 0 (still connected to the graph) when no cell has a target.
    """
    B, N, D, h, w = depth_logits.shape
    logits = depth_logits.permute(0, 1, 3, 4, 2).reshape(-1, D)
    if targets.dim() == 5:
        if tuple(targets.shape) != (B, N, D, h, w):
            raise ValueError(f"distribution targets must be {(B, N, D, h, w)}, got {tuple(targets.shape)}")
        probs = targets.permute(0, 1, 3, 4, 2).reshape(-1, D)
        mask = probs.sum(dim=1) > 0
        if not bool(mask.any()):
            return depth_logits.sum() * 0.0
        log_q = F.log_softmax(logits[mask].float(), dim=1)
        return -(probs[mask] * log_q).sum(dim=1).mean()
    target = targets.reshape(-1)
    mask = target >= 0
    if not bool(mask.any()):
        return depth_logits.sum() * 0.0
    return F.cross_entropy(logits[mask].float(), target[mask])
