"""Detection heads on BEV features."""

from x3kd_core.models.heads.center_head import (
    CenterHead,
    CenterHeadConfig,
    CenterHeadLossWeights,
    HeadOutputs,
    bev_nms,
    gaussian_focal_loss,
)
from x3kd_core.models.heads.targets import HeadTargets, draw_gaussian, encode_targets, gaussian_radius

__all__ = [
    "CenterHead",
    "CenterHeadConfig",
    "CenterHeadLossWeights",
    "HeadOutputs",
    "HeadTargets",
    "bev_nms",
    "draw_gaussian",
    "encode_targets",
    "gaussian_focal_loss",
    "gaussian_radius",
]
