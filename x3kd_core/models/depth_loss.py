"""BEVDepth-style explicit depth supervision from LiDAR.

The keyframe LiDAR sweep (time_lag 0) is projected into every camera. Each feature cell at the
depth net's stride takes the *minimum* depth of the points that fall into it (the nearest
surface is what the camera sees; farther returns in the same cell are usually occluded from the
camera or come from the LiDAR's different viewpoint). That depth's bin is a one-hot target and
the loss is the cross-entropy of the predicted depth distribution on cells that have a return;
cells without one are not supervised.

Cell assignment follows :mod:`x3kd_core.models.view_transform`: pixel ``i`` covers
``[i - 0.5, i + 0.5)``, so cell ``c`` at stride ``s`` covers ``u`` in ``[c*s - 0.5, (c+1)*s - 0.5)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from x3kd_core.models.view_transform import DepthBinsConfig

__all__ = ["lidar_depth_targets", "depth_loss", "KEYFRAME_TIME_LAG_S"]

#: LiDAR points with time_lag_s at most this are from the keyframe sweep (later sweeps are >= 0.05 s).
KEYFRAME_TIME_LAG_S = 1e-3


def lidar_depth_targets(
    lidar_points: list[torch.Tensor],
    intrinsics: torch.Tensor,
    cam_to_ego: torch.Tensor,
    feature_hw: tuple[int, int],
    stride: int,
    bins: DepthBinsConfig,
) -> torch.Tensor:
    """Depth-bin target per feature cell.

    Args:
        lidar_points: B tensors (P_b, 5): x, y, z (m, ego frame), intensity, time_lag_s; only the
            keyframe sweep (time_lag_s <= 1 ms) is used.
        intrinsics: (B, N_cam, 3, 3) K for the images the features came from (pixels).
        cam_to_ego: (B, N_cam, 4, 4).
        feature_hw: (h, w) feature map size; the image is (h * stride, w * stride).
        stride: pixels per feature cell.
        bins: depth bins along camera z.

    Returns:
        (B, N_cam, h, w) int64 bin index of the nearest return per cell, -1 where the cell has no
        return inside the bin range.
    """
    with torch.no_grad(), torch.autocast(intrinsics.device.type, enabled=False):
        return _lidar_depth_targets(lidar_points, intrinsics, cam_to_ego, feature_hw, stride, bins)


def _lidar_depth_targets(lidar_points, intrinsics, cam_to_ego, feature_hw, stride, bins) -> torch.Tensor:
    # fp32 throughout (no autocast): fp16 pixel coordinates are only 0.5 px precise at u ~ 700.
    B, N = intrinsics.shape[:2]
    h, w = feature_hw
    device = intrinsics.device
    targets = torch.full((B, N, h, w), -1, dtype=torch.long, device=device)
    ego_to_cam = torch.linalg.inv(cam_to_ego.double()).float()  # (B, N, 4, 4)
    for b in range(B):
        pts = lidar_points[b].to(device=device, dtype=torch.float32)
        pts = pts[pts[:, 4] <= KEYFRAME_TIME_LAG_S, :3]
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
        min_depth = torch.full((N * h * w,), float("inf"), device=device)
        min_depth = min_depth.scatter_reduce(0, flat[valid], depth[valid], reduce="amin", include_self=True)
        targets[b] = bins.bin_index(min_depth).view(N, h, w)
    return targets


def depth_loss(depth_logits: torch.Tensor, target_bins: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over cells with a target.

    Args:
        depth_logits: (B, N_cam, D, h, w) unnormalised depth scores.
        target_bins: (B, N_cam, h, w) int64, -1 = unsupervised cell.

    Returns:
        Scalar; 0 (still connected to the graph) when no cell has a target.
    """
    B, N, D, h, w = depth_logits.shape
    logits = depth_logits.permute(0, 1, 3, 4, 2).reshape(-1, D)
    target = target_bins.reshape(-1)
    mask = target >= 0
    if not bool(mask.any()):
        return depth_logits.sum() * 0.0
    return F.cross_entropy(logits[mask].float(), target[mask])
