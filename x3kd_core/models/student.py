"""The camera-only BEV student of X3KD (BEVDepth / Lift-Splat style).

    images (B, N_cam, 3, H, W)
      -> ResNet (stages 2/3, 4) -> FusionNeck        image_features (B, N_cam, C, H/s, W/s)     [X-IS]
      -> CameraAwareDepthNet -> lift -> BEV sum pool  depth_probs (B, N_cam, D, H/s, W/s)
      -> BevEncoder                                   bev_features (B, C_bev, N_x, N_y)          [X-FD, X-AT]
      -> CenterHead                                   head outputs                               [X-OD]

Built from a typed :class:`StudentConfig` by :meth:`CameraStudent.from_config`, or from explicit
parts with :meth:`CameraStudent.__init__`. ``forward`` returns named fields so that each
distillation loss picks the stage it needs. ``s`` is the neck's output stride
(``neck.out_stride``: 16 as in BEVDepth, or 8 for small inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from x3kd_core.config import BevGridConfig, ConfigError
from x3kd_core.models.backbones import BackboneConfig, FusionNeck, NeckConfig, ResNetBackbone
from x3kd_core.models.bev_encoder import BevEncoder, BevEncoderConfig
from x3kd_core.models.depth_loss import DepthTargetConfig, depth_loss, lidar_depth_targets
from x3kd_core.models.heads.center_head import CenterHead, CenterHeadConfig, HeadOutputs
from x3kd_core.models.view_transform import (
    BevPoolMode,
    CameraAwareDepthNet,
    DepthBinsConfig,
    DepthNetConfig,
    LiftSplat,
)
from x3kd_core.structures import Batch, Boxes3D

__all__ = ["FEATURE_STRIDE", "StudentConfig", "StudentOutputs", "CameraStudent"]

#: Input sizes must be multiples of this (pixels), whatever the neck's output stride.
FEATURE_STRIDE = 16


@dataclass(frozen=True)
class StudentConfig:
    """Everything that defines a student's architecture and its own (non-distillation) losses.

    Every section is required in YAML (a model file states its whole architecture); fields
    inside a section have defaults.

    image_hw: (H, W) network input per camera (pixels); both must be multiples of 16.
    depth_loss_weight: weight of the LiDAR depth cross-entropy in :meth:`CameraStudent.loss`.
    use_depth_supervision: add that term at all (BEVDepth) or not (plain LSS).
    depth_target: how LiDAR returns become the per-cell depth target (nearest return or the
        distribution of all returns; which sweeps).
    bev_pool: how the view transform pools into BEV: "depth_context" (default; never forms the depth
        x context outer product; ~25x faster pooling on CPU at the paper's scale) or "outer_product"
        (the original path); equal to float rounding, see :mod:`x3kd_core.models.view_transform`.
    """

    image_hw: tuple[int, int]
    backbone: BackboneConfig
    neck: NeckConfig
    depth_bins: DepthBinsConfig
    depth_net: DepthNetConfig
    bev_encoder: BevEncoderConfig
    head: CenterHeadConfig
    grid: BevGridConfig
    depth_loss_weight: float = 3.0
    use_depth_supervision: bool = True
    depth_target: DepthTargetConfig = DepthTargetConfig()
    bev_pool: BevPoolMode = "depth_context"

    def __post_init__(self) -> None:
        H, W = self.image_hw
        if H <= 0 or W <= 0 or H % FEATURE_STRIDE or W % FEATURE_STRIDE:
            raise ConfigError(f"image_hw must be positive multiples of {FEATURE_STRIDE}, got {self.image_hw}")
        if self.depth_loss_weight < 0:
            raise ConfigError(f"depth_loss_weight must be >= 0, got {self.depth_loss_weight}")

    @property
    def feature_stride(self) -> int:
        """Pixels per cell of the lifted image features (the neck's output stride)."""
        return self.neck.out_stride

    @property
    def feature_hw(self) -> tuple[int, int]:
        """(h, w) of the lifted image features."""
        return (self.image_hw[0] // self.feature_stride, self.image_hw[1] // self.feature_stride)


@dataclass
class StudentOutputs:
    """Fields (h, w = H/s, W/s at the neck's stride s; D depth bins; N_x, N_y the BEV grid):
    image_features: (B, N_cam, C_neck, h, w) perspective-view features (input of X-IS).
    depth_logits: (B, N_cam, D, h, w) unnormalised depth scores (for the depth loss).
    depth_probs: (B, N_cam, D, h, w) softmax of depth_logits over D.
    bev_features: (B, C_bev, N_x, N_y) BEV encoder output (compared with the LiDAR teacher by X-FD/X-AT).
    head: the CenterHead's dense outputs (X-OD, detection loss, decoding).
    """

    image_features: torch.Tensor
    depth_logits: torch.Tensor
    depth_probs: torch.Tensor
    bev_features: torch.Tensor
    head: HeadOutputs


class CameraStudent(nn.Module):
    """Multi-camera 3D detector: backbone -> neck -> lift-splat -> BEV encoder -> CenterHead."""

    def __init__(
        self,
        *,
        backbone: ResNetBackbone,
        neck: FusionNeck,
        view_transform: LiftSplat,
        bev_encoder: BevEncoder,
        head: CenterHead,
        depth_loss_weight: float,
        use_depth_supervision: bool,
        depth_target: DepthTargetConfig = DepthTargetConfig(),
        config: StudentConfig | None = None,
    ) -> None:
        """Assemble a student from built parts. ``config`` is only recorded (checkpoints store
        ``to_dict(model.config)``); :meth:`from_config` passes the one the parts were built from."""
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.neck = neck
        self.view_transform = view_transform
        self.bev_encoder = bev_encoder
        self.head = head
        self.depth_loss_weight = depth_loss_weight
        self.use_depth_supervision = use_depth_supervision
        self.depth_target = depth_target

    @classmethod
    def from_config(cls, config: StudentConfig) -> "CameraStudent":
        backbone = ResNetBackbone.from_config(config.backbone)
        neck = FusionNeck.from_config(config.neck, backbone)
        depth_net = CameraAwareDepthNet.from_config(config.depth_net, neck.out_channels, config.depth_bins)
        view_transform = LiftSplat(
            depth_net, config.depth_bins, config.grid, config.feature_stride, bev_pool=config.bev_pool
        )
        bev_encoder = BevEncoder.from_config(config.bev_encoder, view_transform.out_channels)
        head = CenterHead(config.head, bev_encoder.out_channels, config.grid)
        return cls(
            backbone=backbone,
            neck=neck,
            view_transform=view_transform,
            bev_encoder=bev_encoder,
            head=head,
            depth_loss_weight=config.depth_loss_weight,
            use_depth_supervision=config.use_depth_supervision,
            depth_target=config.depth_target,
            config=config,
        )

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, cam_to_ego: torch.Tensor,
                extra_bev: Optional[torch.Tensor] = None) -> StudentOutputs:
        """Args:
        images: (B, N_cam, 3, H, W) ImageNet-normalised RGB.
        intrinsics: (B, N_cam, 3, 3) K of exactly these (resized / cropped / flipped) images, pixels.
        cam_to_ego: (B, N_cam, 4, 4) camera -> ego transforms (m).
        extra_bev: (B, C_extra, N_x, N_y) features of another sensor on the same grid, concatenated
            to the camera BEV before the BEV encoder (which must then take C_ctx + C_extra
            channels; see :class:`~x3kd_core.models.camera_radar.CameraRadarStudent`).
        """
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be (B, N_cam, 3, H, W), got {tuple(images.shape)}")
        B, N, _, H, W = images.shape
        if tuple(intrinsics.shape) != (B, N, 3, 3) or tuple(cam_to_ego.shape) != (B, N, 4, 4):
            raise ValueError(
                f"for images {tuple(images.shape)} expected intrinsics {(B, N, 3, 3)} and cam_to_ego "
                f"{(B, N, 4, 4)}, got {tuple(intrinsics.shape)} and {tuple(cam_to_ego.shape)}"
            )
        if H % FEATURE_STRIDE or W % FEATURE_STRIDE:
            raise ValueError(f"image size {(H, W)} must be a multiple of {FEATURE_STRIDE}")
        feats = self.neck(self.backbone(images.reshape(B * N, 3, H, W)))
        _, C, h, w = feats.shape
        image_features = feats.reshape(B, N, C, h, w)
        vt = self.view_transform(image_features, intrinsics, cam_to_ego, (H, W))
        bev = vt.bev if extra_bev is None else torch.cat([vt.bev, extra_bev.to(vt.bev.dtype)], dim=1)
        bev_features = self.bev_encoder(bev)
        return StudentOutputs(
            image_features=image_features,
            depth_logits=vt.depth_logits,
            depth_probs=vt.depth_probs,
            bev_features=bev_features,
            head=self.head(bev_features),
        )

    def depth_targets(self, outputs: StudentOutputs, batch: Batch) -> torch.Tensor:
        """LiDAR depth targets for ``outputs``: (B, N_cam, h, w) bins (-1 = no return) or
        (B, N_cam, D, h, w) distributions, see :func:`x3kd_core.models.depth_loss.lidar_depth_targets`."""
        h, w = outputs.depth_logits.shape[-2:]
        return lidar_depth_targets(
            batch.lidar_points,
            batch.intrinsics.to(outputs.depth_logits.device),
            batch.cam_to_ego.to(outputs.depth_logits.device),
            (h, w),
            self.view_transform.stride,
            self.view_transform.bins,
            self.depth_target,
        )

    def loss(self, outputs: StudentOutputs, batch: Batch) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms: the head's terms plus ``'depth'`` (when depth
        supervision is on). The training objective is their sum."""
        targets = self.head.get_targets(batch.boxes)
        losses = dict(self.head.loss(outputs.head, targets))
        if self.use_depth_supervision:
            if "depth" in losses:
                raise KeyError("the head already returns a loss named 'depth'")
            target_bins = self.depth_targets(outputs, batch)
            losses["depth"] = self.depth_loss_weight * depth_loss(outputs.depth_logits, target_bins)
        return losses

    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Forward on ``batch`` and :meth:`loss` (the training engine's protocol)."""
        return self.loss(self(batch.images, batch.intrinsics, batch.cam_to_ego), batch)

    @torch.no_grad()
    def predict(self, outputs: StudentOutputs) -> list[Boxes3D]:
        """Decode the head outputs into one :class:`Boxes3D` (ego frame) per sample."""
        return self.head.predict(outputs.head)
