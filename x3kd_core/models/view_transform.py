"""Camera-aware depth estimation and the lift-splat view transform (LSS / BEVDepth).

For every camera feature map at stride ``s`` (16 here) the depth net predicts a categorical
distribution over ``D`` depth bins and a context vector per feature cell. The *lift* takes their
outer product, one feature per frustum point (cell centre ray x bin depth); the *splat* sums those
into the BEV grid (:mod:`x3kd_core.ops.bev_pool`). ``LiftSplat(bev_pool=...)`` picks how:
``"depth_context"`` (default) pools depth and context without forming their outer product
(:func:`~x3kd_core.ops.bev_pool.bev_pool_depth_context`, ~25x faster forward + backward at the paper's
scale on CPU); ``"outer_product"`` forms it and scatters it with
:func:`~x3kd_core.ops.bev_pool.bev_pool` (the reference; equal to float rounding).

Frustum geometry (pixel convention of OpenCV / nuScenes: integer pixel coordinates are pixel
centres, pixel ``i`` covers ``[i - 0.5, i + 0.5)``): feature cell ``(r, c)`` covers pixels
``r*s .. r*s + s - 1``, so its ray goes through ``(u, v) = (c*s + (s-1)/2, r*s + (s-1)/2)``.
Depth bin ``k`` covers ``[d_min + k*step, d_min + (k+1)*step)`` metres of camera z and is lifted at
its centre. A point is ``cam_to_ego @ (d * K^-1 [u, v, 1])``. Image augmentation (resize, crop,
flip) is supported by passing the already-adjusted ``K`` -- nothing here assumes a fixed K.

Camera awareness (BEVDepth): depth from a single image is ambiguous in scale, and the right
answer depends on focal length and mounting. A small MLP on the normalised intrinsics and the
camera-to-ego pose produces per-channel gates for the depth and context branches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from x3kd_core.config import BevGridConfig, ConfigError
from x3kd_core.ops.bev_pool import (
    bev_pool,
    bev_pool_depth_context,
    precompute_bev_geometry,
    precompute_depth_context_geometry,
)

__all__ = [
    "DepthBinsConfig",
    "DepthNetConfig",
    "CameraAwareDepthNet",
    "DepthNetOutputs",
    "LiftSplat",
    "ViewTransformOutputs",
    "NUM_CAMERA_PARAMS",
    "camera_parameters",
    "frustum_pixel_centers",
    "unproject_frustum",
    "BevPoolMode",
]

#: How :class:`LiftSplat` pools lifted features into BEV (see the module docstring).
BevPoolMode = Literal["outer_product", "depth_context"]


@dataclass(frozen=True)
class DepthBinsConfig:
    """Uniform depth bins along the camera's optical axis (camera z, m).

    Bin ``k`` covers ``[min_m + k * step_m, min_m + (k + 1) * step_m)``; ``num_bins`` bins in all.
    The paper's setting is 2..58 step 0.5 (112 bins).
    """

    min_m: float = 2.0
    max_m: float = 58.0
    step_m: float = 0.5

    def __post_init__(self) -> None:
        if not self.min_m > 0:
            raise ConfigError(f"min_m must be > 0 (in front of the camera), got {self.min_m}")
        if not self.step_m > 0:
            raise ConfigError(f"step_m must be > 0, got {self.step_m}")
        if not self.max_m > self.min_m:
            raise ConfigError(f"max_m must be > min_m, got {self.min_m}..{self.max_m}")
        bins = (self.max_m - self.min_m) / self.step_m
        if abs(bins - round(bins)) > 1e-6:
            raise ConfigError(f"depth span {self.max_m - self.min_m} m is not a whole number of {self.step_m} m bins")

    @property
    def num_bins(self) -> int:
        return int(round((self.max_m - self.min_m) / self.step_m))

    def centers(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(D,) bin centre depths (m)."""
        k = torch.arange(self.num_bins, device=device, dtype=dtype)
        return self.min_m + (k + 0.5) * self.step_m

    def bin_index(self, depth_m: torch.Tensor) -> torch.Tensor:
        """Bin of each depth (same shape, int64); -1 where outside ``[min_m, max_m)`` or not finite."""
        idx = torch.floor((depth_m - self.min_m) / self.step_m)
        valid = torch.isfinite(idx) & (idx >= 0) & (idx < self.num_bins)
        return torch.where(valid, idx, torch.full_like(idx, -1)).long()


@dataclass(frozen=True)
class DepthNetConfig:
    """Depth / context net on the neck features.

    mid_channels: width of the shared trunk and of the camera MLP.
    context_channels: C of the lifted features (and so of the raw BEV map).
    num_res_blocks: 3x3 residual blocks in the depth branch (depth needs more spatial context
        than the context branch).
    camera_aware: gate the branches with an MLP on intrinsics and extrinsics (BEVDepth); when
        false the net sees image features only (plain LSS).
    """

    mid_channels: int = 256
    context_channels: int = 80
    num_res_blocks: int = 2
    camera_aware: bool = True

    def __post_init__(self) -> None:
        for name in ("mid_channels", "context_channels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.num_res_blocks < 0:
            raise ConfigError(f"num_res_blocks must be >= 0, got {self.num_res_blocks}")


#: Length of the per-camera vector from :func:`camera_parameters`.
NUM_CAMERA_PARAMS = 16


def camera_parameters(intrinsics: torch.Tensor, cam_to_ego: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Per-camera calibration vector fed to the camera MLP.

    Args:
        intrinsics: (..., 3, 3) K (pixels) for images of ``image_hw``.
        cam_to_ego: (..., 4, 4).
        image_hw: (H, W) pixels.

    Returns:
        (..., 16): fx/W, fy/H, cx/W, cy/H (resolution independent), the 9 entries of the
        camera-to-ego rotation and its translation (m), all O(1) so no input normalisation layer is
        needed (a BatchNorm here would make the output depend on which cameras share a batch).
    """
    H, W = image_hw
    k = torch.stack(
        [intrinsics[..., 0, 0] / W, intrinsics[..., 1, 1] / H, intrinsics[..., 0, 2] / W, intrinsics[..., 1, 2] / H],
        dim=-1,
    )
    rot = cam_to_ego[..., :3, :3].flatten(-2)
    trans = cam_to_ego[..., :3, 3]
    return torch.cat([k, rot, trans], dim=-1)


def frustum_pixel_centers(
    feature_hw: tuple[int, int], stride: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(h, w, 2) pixel coordinates (u right, v down) of the ray through each feature cell's centre."""
    h, w = feature_hw
    offset = (stride - 1) / 2.0
    v = torch.arange(h, device=device, dtype=dtype) * stride + offset
    u = torch.arange(w, device=device, dtype=dtype) * stride + offset
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def unproject_frustum(
    intrinsics: torch.Tensor,
    cam_to_ego: torch.Tensor,
    depth_m: torch.Tensor,
    feature_hw: tuple[int, int],
    stride: int,
) -> torch.Tensor:
    """Ego-frame positions of all frustum points.

    Args:
        intrinsics: (B, N_cam, 3, 3) K for the (augmented) input images (pixels).
        cam_to_ego: (B, N_cam, 4, 4).
        depth_m: (D,) camera-z depths (m) of the bins.
        feature_hw: (h, w) of the feature map.
        stride: pixels per feature cell.

    Returns:
        (B, N_cam, D, h, w, 3) x, y, z in the ego frame (m).
    """
    B, N = intrinsics.shape[:2]
    pix = frustum_pixel_centers(feature_hw, stride, intrinsics.device, intrinsics.dtype)  # (h, w, 2)
    homog = torch.cat([pix, torch.ones_like(pix[..., :1])], dim=-1)  # (h, w, 3)
    # Solve rather than invert explicitly: well conditioned for any K, also a flipped one.
    rays = torch.linalg.solve(intrinsics, homog.reshape(-1, 3).T.expand(B, N, 3, homog[..., 0].numel()))
    rays = rays.transpose(-1, -2)  # (B, N, h*w, 3), z == 1
    pts_cam = depth_m.view(1, 1, -1, 1, 1) * rays.unsqueeze(2)  # (B, N, D, h*w, 3)
    rot = cam_to_ego[..., :3, :3]
    trans = cam_to_ego[..., :3, 3]
    pts_ego = torch.einsum("bnij,bndpj->bndpi", rot, pts_cam) + trans[:, :, None, None, :]
    return pts_ego.reshape(B, N, depth_m.numel(), feature_hw[0], feature_hw[1], 3)


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class _CameraGate(nn.Module):
    """Calibration vector -> per-channel gates in (0, 2) for the depth and context branches.

    The last layers start at zero so the gates start at exactly 1 (identity): camera awareness
    is learned as a correction, and a randomly initialised MLP cannot scramble early training.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(NUM_CAMERA_PARAMS, channels),
            nn.ReLU(inplace=True),
            nn.Linear(channels, channels),
            nn.ReLU(inplace=True),
        )
        self.to_depth = nn.Linear(channels, channels)
        self.to_context = nn.Linear(channels, channels)
        for layer in (self.to_depth, self.to_context):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, camera_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.mlp(camera_params)
        depth_gate = 2.0 * torch.sigmoid(self.to_depth(h))
        context_gate = 2.0 * torch.sigmoid(self.to_context(h))
        return depth_gate[..., None, None], context_gate[..., None, None]


@dataclass
class DepthNetOutputs:
    """Per-image outputs of :class:`CameraAwareDepthNet` (N_img = B * N_cam).

    Fields:
        depth_logits: (N_img, D, h, w) unnormalised scores over depth bins.
        context: (N_img, C_ctx, h, w) features to lift.
    """

    depth_logits: torch.Tensor
    context: torch.Tensor


class CameraAwareDepthNet(nn.Module):
    """Shared 3x3 trunk, then a depth branch (residual blocks -> D logits) and a context branch
    (1x1 -> C_ctx), each gated per channel by the camera MLP when ``camera_aware``."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        context_channels: int,
        num_depth_bins: int,
        num_res_blocks: int = 2,
        camera_aware: bool = True,
    ) -> None:
        super().__init__()
        self.num_depth_bins = num_depth_bins
        self.context_channels = context_channels
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
        )
        self.camera_gate = _CameraGate(mid_channels) if camera_aware else None
        self.depth_branch = nn.Sequential(
            *[_ResBlock(mid_channels) for _ in range(num_res_blocks)],
            nn.Conv2d(mid_channels, num_depth_bins, 1),
        )
        self.context_branch = nn.Conv2d(mid_channels, context_channels, 1)

    @classmethod
    def from_config(cls, config: DepthNetConfig, in_channels: int, bins: DepthBinsConfig) -> "CameraAwareDepthNet":
        return cls(
            in_channels=in_channels,
            mid_channels=config.mid_channels,
            context_channels=config.context_channels,
            num_depth_bins=bins.num_bins,
            num_res_blocks=config.num_res_blocks,
            camera_aware=config.camera_aware,
        )

    def forward(self, features: torch.Tensor, camera_params: torch.Tensor) -> DepthNetOutputs:
        """features: (N_img, C_in, h, w); camera_params: (N_img, 16) from :func:`camera_parameters`."""
        x = self.trunk(features)
        if self.camera_gate is not None:
            depth_gate, context_gate = self.camera_gate(camera_params.to(x.dtype))
            depth_in, context_in = x * depth_gate, x * context_gate
        else:
            depth_in = context_in = x
        return DepthNetOutputs(depth_logits=self.depth_branch(depth_in), context=self.context_branch(context_in))


@dataclass
class ViewTransformOutputs:
    """Fields:
    depth_logits: (B, N_cam, D, h, w); depth_probs: their softmax over D;
    context: (B, N_cam, C_ctx, h, w); bev: (B, C_ctx, N_x, N_y) sum-pooled lifted features.
    """

    depth_logits: torch.Tensor
    depth_probs: torch.Tensor
    context: torch.Tensor
    bev: torch.Tensor


class LiftSplat(nn.Module):
    """Depth net + lift (depth probs x context on the frustum) + splat (BEV sum pooling).

    ``bev_pool``: ``"depth_context"`` (default) or ``"outer_product"``, see the module docstring;
    both give the same BEV map and gradients to float rounding.
    """

    def __init__(
        self,
        depth_net: CameraAwareDepthNet,
        bins: DepthBinsConfig,
        grid: BevGridConfig,
        stride: int,
        bev_pool: BevPoolMode = "depth_context",
    ) -> None:
        super().__init__()
        if depth_net.num_depth_bins != bins.num_bins:
            raise ValueError(f"depth net predicts {depth_net.num_depth_bins} bins, config has {bins.num_bins}")
        if bev_pool not in get_args(BevPoolMode):
            raise ValueError(f"bev_pool must be one of {list(get_args(BevPoolMode))}, got {bev_pool!r}")
        self.bev_pool = bev_pool
        self.depth_net = depth_net
        self.bins = bins
        self.grid = grid
        self.stride = stride
        self.out_channels = depth_net.context_channels

    def forward(
        self,
        image_features: torch.Tensor,
        intrinsics: torch.Tensor,
        cam_to_ego: torch.Tensor,
        image_hw: tuple[int, int],
    ) -> ViewTransformOutputs:
        """Args:
        image_features: (B, N_cam, C, h, w) at ``stride``; intrinsics: (B, N_cam, 3, 3) for
        images of ``image_hw``; cam_to_ego: (B, N_cam, 4, 4).
        """
        B, N, C, h, w = image_features.shape
        if (h * self.stride, w * self.stride) != tuple(image_hw):
            raise ValueError(f"features {h}x{w} at stride {self.stride} do not tile images {image_hw}")
        geom_dtype = torch.float32
        intrinsics = intrinsics.to(geom_dtype)
        cam_to_ego = cam_to_ego.to(geom_dtype)
        cam_params = camera_parameters(intrinsics, cam_to_ego, image_hw).reshape(B * N, NUM_CAMERA_PARAMS)
        out = self.depth_net(image_features.reshape(B * N, C, h, w), cam_params)
        D = self.bins.num_bins
        depth_logits = out.depth_logits.reshape(B, N, D, h, w)
        depth_probs = depth_logits.softmax(dim=2)
        context = out.context.reshape(B, N, self.out_channels, h, w)
        # Geometry stays fp32 under autocast: fp16 would put 50 m points ~3 cm off and shift bins.
        with torch.no_grad(), torch.autocast(intrinsics.device.type, enabled=False):
            points = unproject_frustum(
                intrinsics, cam_to_ego, self.bins.centers(intrinsics.device, geom_dtype), (h, w), self.stride
            )
            geometry = precompute_bev_geometry(points, self.grid)
            if self.bev_pool == "depth_context":
                pool_geometry = precompute_depth_context_geometry(geometry)
        if self.bev_pool == "depth_context":
            bev = bev_pool_depth_context(depth_probs, context, pool_geometry)
        else:
            # (B, N, D, h, w, 1) * (B, N, 1, h, w, C) -> (B, N, D, h, w, C)
            lifted = depth_probs.unsqueeze(-1) * context.permute(0, 1, 3, 4, 2).unsqueeze(2)
            bev = bev_pool(lifted, geometry)
        return ViewTransformOutputs(depth_logits=depth_logits, depth_probs=depth_probs, context=context, bev=bev)
