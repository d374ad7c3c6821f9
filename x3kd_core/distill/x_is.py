"""X-IS: cross-task distillation from a 2D instance-segmentation teacher, in the perspective view.

The student gets an auxiliary head on its stride-16 image features (before the view transform)
that predicts, per camera, a foreground map for each of the K classes; it learns the teacher's
per-class masks (``InstanceSegmenter.mask_targets``: ``score * mask probability``, max over the
teacher's instances of that class). The gradient reaches the image backbone directly, without
passing through the ambiguous depth / view transformation, which is the point of X-IS in the
paper. The head exists at training time only; the deployed student never runs it.

Simplification (ours): the paper's student head is an instance-segmentation head; here it is a
dense per-class (semantic) foreground head, which needs no proposal matching and uses exactly the
dense, fixed-shape target the teacher module provides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x3kd_core.distill.config import SoftTargetLoss, XISConfig
from x3kd_core.distill.x_od import soft_target_loss

__all__ = ["XISHead", "XISLoss", "downsample_masks"]

#: Initial foreground logit of the head: logit(0.01). Foreground pixels are rare, so starting the
#: head near "background everywhere" avoids a large, noisy first loss (RetinaNet's prior init).
_PRIOR_LOGIT = -4.595


class XISHead(nn.Module):
    """Auxiliary per-class foreground head on the student's perspective-view features.

    ``num_convs`` x (3x3 conv, BN, ReLU) with ``hidden_channels``, then a 1x1 conv to K logits.

    Shapes: image_features (B, N_cam, C, h, w) -> logits (B, N_cam, K, h, w) at the feature
    resolution (stride 16); ``sigmoid`` gives the foreground probability of each class.
    """

    def __init__(self, in_channels: int, num_classes: int = 10, hidden_channels: int = 64, num_convs: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(c, hidden_channels, 3, padding=1, bias=False), nn.BatchNorm2d(hidden_channels),
                       nn.ReLU(inplace=True)]
            c = hidden_channels
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, num_classes, 1)
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.constant_(self.out.bias, _PRIOR_LOGIT)
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, config: XISConfig, in_channels: int, num_classes: int = 10) -> "XISHead":
        return cls(in_channels, num_classes, config.hidden_channels, config.num_convs)

    def forward(self, image_features: Tensor) -> Tensor:
        """image_features (B, N_cam, C, h, w) -> logits (B, N_cam, K, h, w)."""
        if image_features.ndim != 5:
            raise ValueError(f"image_features must be (B, N_cam, C, h, w), got {tuple(image_features.shape)}")
        B, N, C, h, w = image_features.shape
        logits = self.out(self.body(image_features.reshape(B * N, C, h, w)))
        return logits.reshape(B, N, self.num_classes, h, w)


def downsample_masks(masks: Tensor, size_hw: tuple[int, int]) -> Tensor:
    """Teacher masks (B, N_cam, K, H, W) in [0, 1] -> (B, N_cam, K, h, w) by area averaging.

    Area interpolation keeps each feature cell's value equal to the fraction (soft: the mean
    probability) of its pixels that are foreground, so small objects survive as partial values
    instead of vanishing (nearest) or aliasing (bilinear).
    """
    if masks.ndim != 5:
        raise ValueError(f"teacher masks must be (B, N_cam, K, H, W), got {tuple(masks.shape)}")
    B, N, K, H, W = masks.shape
    h, w = int(size_hw[0]), int(size_hw[1])
    if (H, W) == (h, w):
        return masks.float()
    out = F.interpolate(masks.reshape(B * N, K, H, W).float(), size=(h, w), mode="area")
    return out.reshape(B, N, K, h, w)


class XISLoss(nn.Module):
    """Cross-task mask distillation loss (stateless; no parameters).

    Formula (``s``: head logits (B, N_cam, K, h, w); ``m``: teacher masks (B, N_cam, K, H, W) in
    [0, 1]; ``t = area_downsample(m, (h, w))``; ``ell``: :func:`~x3kd_core.distill.x_od.soft_target_loss`):

        mask = sum_{b,n,k,i,j} ell(s, t) / max(1, sum_{b,n,k,i,j} t)

    i.e. normalised by the teacher's foreground mass (the soft number of foreground cells), as
    focal losses are normalised by their positives. 0 when ``sigmoid(s) == t`` (``qfl``, ``kl``,
    ``mse``; ``bce`` is then minimal). Teacher masks are detached.

    Default weight in the total objective: 1.0 (see :class:`~x3kd_core.distill.config.XISConfig`).

    Args:
        loss: kind of soft-target loss; focal_beta: ``beta`` of ``qfl``.
    """

    def __init__(self, loss: SoftTargetLoss = "qfl", focal_beta: float = 2.0) -> None:
        super().__init__()
        self.loss = loss
        self.focal_beta = focal_beta

    @classmethod
    def from_config(cls, config: XISConfig) -> "XISLoss":
        return cls(config.loss, config.focal_beta)

    def forward(self, logits: Tensor, teacher_masks: Tensor) -> dict[str, Tensor]:
        """Args:
            logits: (B, N_cam, K, h, w) from :class:`XISHead`.
            teacher_masks: (B, N_cam, K, H, W) in [0, 1] (any H, W; usually the image size).

        Returns:
            ``mask`` (scalar, unweighted) and detached diagnostics ``stat/target_fg`` (fraction of
            target cells >= 0.5) and ``stat/iou`` (IoU of ``p >= 0.5`` with ``t >= 0.5``; 1 when
            both are empty).
        """
        if logits.shape[:3] != teacher_masks.shape[:3]:
            raise ValueError(
                f"head logits {tuple(logits.shape)} and teacher masks {tuple(teacher_masks.shape)} disagree "
                "on (B, N_cam, K)"
            )
        target = downsample_masks(teacher_masks.detach(), logits.shape[-2:])
        loss = soft_target_loss(logits, target, self.loss, self.focal_beta).sum() / target.sum().clamp_min(1.0)
        with torch.no_grad():
            pred_fg = torch.sigmoid(logits.float()) >= 0.5
            tgt_fg = target >= 0.5
            union = (pred_fg | tgt_fg).sum().float()
            inter = (pred_fg & tgt_fg).sum().float()
            # torch.where instead of an `if`: no host sync on the GPU.
            iou = torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))
        return {"mask": loss, "stat/target_fg": tgt_fg.float().mean(), "stat/iou": iou}
