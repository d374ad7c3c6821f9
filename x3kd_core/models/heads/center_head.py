"""CenterPoint-style BEV detection head: forward / get_targets / loss / predict.

One task group for all K classes (CenterPoint splits classes over six heads; one shared heatmap
with K channels is simpler and is what X-OD distils). Every BEV tensor is (B, C, N_x, N_y) on the
grid of :class:`~x3kd_core.config.BevGridConfig`; the target encoding is described in
:mod:`x3kd_core.models.heads.targets`.

NMS choice (``predict``): peaks are first picked by a 3x3 max-pool on the class heatmaps, which
already removes most duplicates. What remains is suppressed per class by one of two rules:

* classes with ``nms_center_distance_m[k] > 0``: greedy centre-distance NMS (CenterPoint's
  "circle NMS"), meant for small objects (pedestrians, cones) whose footprint is below one cell,
  where two detections of the same object need not overlap at all so IoU cannot merge them;
* all other classes: ``torchvision.ops.batched_nms`` on the axis-aligned BEV box enclosing each
  rotated footprint. This over-estimates overlap for diagonal objects (the enclosing box is up to
  ~1.5x larger for a car at 45 deg), a deliberate trade for a dependency-free, any-device op;
  the default IoU threshold of 0.2 follows mmdet3d's CenterPoint nuScenes config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from x3kd_core.config import BevGridConfig
from x3kd_core.models.heads.targets import HeadTargets, encode_targets
from x3kd_core.structures import DETECTION_CLASSES, Boxes3D

__all__ = [
    "CenterHeadLossWeights",
    "CenterHeadConfig",
    "HeadOutputs",
    "CenterHead",
    "gaussian_focal_loss",
    "bev_nms",
]

#: Regression branches: name -> channels. Units: offset in cells, height in m (box-centre z),
#: log_size in log m (length, width, height), rot as (sin, cos) of yaw, velocity in m/s.
_REGRESSION_CHANNELS = {"offset": 2, "height": 1, "log_size": 3, "rot": 2, "velocity": 2}

#: exp() of larger predicted log sizes would give boxes of > 400 m; clamp before decoding.
_MAX_LOG_SIZE = 6.0


@dataclass(frozen=True)
class CenterHeadLossWeights:
    """Weight of each loss term (CenterPoint: 0.25 on box terms, 0.2 x 0.25 on velocity)."""

    heatmap: float = 1.0
    offset: float = 0.25
    height: float = 0.25
    size: float = 0.25
    rot: float = 0.25
    velocity: float = 0.05


def _default_center_distances() -> tuple[float, ...]:
    # Centre-distance NMS only for the classes with sub-cell footprints; 0 -> axis-aligned IoU NMS.
    small = {"pedestrian": 0.5, "traffic_cone": 0.5}
    return tuple(small.get(name, 0.0) for name in DETECTION_CLASSES)


@dataclass(frozen=True)
class CenterHeadConfig:
    """Configuration of :class:`CenterHead`.

    Architecture: shared_channels (3x3 conv + BN + ReLU on the BEV input), head_channels (one
    3x3 conv + BN + ReLU per branch before its output conv), heatmap_init_bias (heatmap logits
    bias at init; -2.19 = logit(0.1), the focal-loss prior).
    Targets: gaussian_overlap (CenterNet min IoU for the radius), min_radius_cells, max_objects
    (per sample; extra boxes are dropped).
    Loss: focal_alpha / focal_beta (CenterNet gaussian focal loss exponents), loss_weights.
    Decoding: top_k (peaks considered per sample), score_threshold, max_boxes (kept after NMS),
    nms_iou_threshold (axis-aligned BEV IoU), nms_center_distance_m (per class, in
    DETECTION_CLASSES order; > 0 selects centre-distance NMS with that radius in m).
    """

    num_classes: int = 10
    shared_channels: int = 64
    head_channels: int = 64
    heatmap_init_bias: float = -2.19
    gaussian_overlap: float = 0.1
    min_radius_cells: int = 2
    max_objects: int = 500
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    loss_weights: CenterHeadLossWeights = field(default_factory=CenterHeadLossWeights)
    top_k: int = 500
    score_threshold: float = 0.1
    max_boxes: int = 500
    nms_iou_threshold: float = 0.2
    nms_center_distance_m: tuple[float, ...] = field(default_factory=_default_center_distances)

    def __post_init__(self) -> None:
        for name in ("num_classes", "shared_channels", "head_channels", "max_objects", "top_k", "max_boxes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.gaussian_overlap < 1.0:
            raise ValueError(f"gaussian_overlap must be in (0, 1), got {self.gaussian_overlap}")
        if self.min_radius_cells < 0:
            raise ValueError(f"min_radius_cells must be >= 0, got {self.min_radius_cells}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {self.score_threshold}")
        if len(self.nms_center_distance_m) != self.num_classes:
            raise ValueError(
                f"nms_center_distance_m has {len(self.nms_center_distance_m)} entries, "
                f"expected num_classes = {self.num_classes}"
            )


@dataclass
class HeadOutputs:
    """Dense head outputs on the BEV grid.

    Fields:
        heatmap: (B, K, N_x, N_y) class heatmap logits (sigmoid -> centre probability).
        offset: (B, 2, N_x, N_y) sub-cell centre offset along x, y (cells).
        height: (B, 1, N_x, N_y) box-centre z (m).
        log_size: (B, 3, N_x, N_y) log of length, width, height (log m).
        rot: (B, 2, N_x, N_y) sin(yaw), cos(yaw) (not normalised; decoded with atan2).
        velocity: (B, 2, N_x, N_y) vx, vy (m/s).
    """

    heatmap: torch.Tensor
    offset: torch.Tensor
    height: torch.Tensor
    log_size: torch.Tensor
    rot: torch.Tensor
    velocity: torch.Tensor


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def gaussian_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """CenterNet focal loss on gaussian heatmaps, summed over all elements (normalise outside).

    Positives are cells where ``target == 1``: ``-(1 - p)^alpha log p``; every other cell is a
    negative down-weighted near peaks: ``-(1 - target)^beta p^alpha log(1 - p)``.
    Computed from logits with log-sigmoid, so saturated logits neither overflow nor need clamping.

    Args:
        logits: (B, K, N_x, N_y) heatmap logits.
        target: (B, K, N_x, N_y) gaussian heatmaps in [0, 1].

    Returns:
        scalar float32 tensor.
    """
    logits = logits.float()
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = log_p.exp()
    positive = target == 1
    pos = -((1.0 - p) ** alpha) * log_p
    neg = -((1.0 - target) ** beta) * (p ** alpha) * log_not_p
    return torch.where(positive, pos, neg).sum()


def _center_distance_nms(
    center_xy: torch.Tensor, score: torch.Tensor, radius_m: torch.Tensor
) -> torch.Tensor:
    """Greedy NMS of one class: drop a box whose centre is closer than ``radius_m`` to a
    higher-scoring kept box.

    Args: center_xy (N, 2) m, score (N,), radius_m (N,) m (the class radius, per box).
    Returns: kept indices (int64), by decreasing score.
    """
    order = torch.argsort(score, descending=True)
    xy = center_xy[order]
    close = torch.cdist(xy, xy) < radius_m[order][:, None]
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for rank in range(len(order)):
        if suppressed[rank]:
            continue
        keep.append(rank)
        suppressed |= close[rank]
    return order[torch.tensor(keep, dtype=torch.int64)]


def bev_nms(
    center_xy: torch.Tensor,
    size_lw: torch.Tensor,
    yaw: torch.Tensor,
    score: torch.Tensor,
    label: torch.Tensor,
    iou_threshold: float,
    center_distance_m: tuple[float, ...],
) -> torch.Tensor:
    """Per-class BEV NMS (see the module docstring for the two rules).

    Args:
        center_xy: (N, 2) box centres (m). size_lw: (N, 2) length, width (m). yaw: (N,) rad.
        score: (N,). label: (N,) int64 class index.
        iou_threshold: axis-aligned BEV IoU above which a lower-scoring box is dropped.
        center_distance_m: per class; > 0 selects centre-distance NMS with that radius (m).

    Returns:
        (N_kept,) int64 indices into the inputs, by decreasing score.
    """
    if len(score) == 0:
        return torch.zeros(0, dtype=torch.int64, device=score.device)
    radius = torch.as_tensor(center_distance_m, dtype=center_xy.dtype, device=center_xy.device)[label]
    by_distance = radius > 0
    kept = []
    iou_idx = torch.nonzero(~by_distance).squeeze(1)
    if len(iou_idx):
        cos, sin = torch.cos(yaw[iou_idx]).abs(), torch.sin(yaw[iou_idx]).abs()
        length, width = size_lw[iou_idx, 0], size_lw[iou_idx, 1]
        half = torch.stack([cos * length + sin * width, sin * length + cos * width], dim=1) / 2.0
        xy = center_xy[iou_idx]
        aabb = torch.cat([xy - half, xy + half], dim=1)
        kept.append(iou_idx[torchvision.ops.batched_nms(aabb, score[iou_idx], label[iou_idx], iou_threshold)])
    for cls in torch.unique(label[by_distance]).tolist():
        idx = torch.nonzero(by_distance & (label == cls)).squeeze(1)
        # A greedy loop over a few hundred boxes at most: cheaper on the CPU than as GPU launches.
        keep = _center_distance_nms(center_xy[idx].cpu(), score[idx].cpu(), radius[idx].cpu())
        kept.append(idx[keep.to(idx.device)])
    kept_all = torch.cat(kept)
    return kept_all[torch.argsort(score[kept_all], descending=True)]


class CenterHead(nn.Module):
    """Dense CenterPoint head on BEV features.

    Args:
        config: head configuration.
        in_channels: channels C of the BEV features given to :meth:`forward`.
        grid: the BEV grid the features live on (decodes cells to metres).
    """

    def __init__(self, config: CenterHeadConfig, in_channels: int, grid: BevGridConfig) -> None:
        super().__init__()
        self.config = config
        self.grid = grid
        self.shared = _conv_bn_relu(in_channels, config.shared_channels)
        channels = {"heatmap": config.num_classes, **_REGRESSION_CHANNELS}
        self.branches = nn.ModuleDict(
            {
                name: nn.Sequential(
                    _conv_bn_relu(config.shared_channels, config.head_channels),
                    nn.Conv2d(config.head_channels, out, 3, padding=1),
                )
                for name, out in channels.items()
            }
        )
        nn.init.constant_(self.branches["heatmap"][-1].bias, config.heatmap_init_bias)

    def forward(self, bev: torch.Tensor) -> HeadOutputs:
        """bev: (B, C, N_x, N_y) features -> :class:`HeadOutputs` on the same grid."""
        n_x, n_y = self.grid.size_xy
        if bev.dim() != 4 or bev.shape[2:] != (n_x, n_y):
            raise ValueError(f"bev must be (B, C, {n_x}, {n_y}), got {tuple(bev.shape)}")
        shared = self.shared(bev)
        return HeadOutputs(**{name: branch(shared) for name, branch in self.branches.items()})

    def get_targets(self, boxes: list[Boxes3D]) -> HeadTargets:
        """Ego-frame ground truth of B samples -> :class:`HeadTargets` on the head's device."""
        cfg = self.config
        return encode_targets(
            boxes,
            self.grid,
            num_classes=cfg.num_classes,
            gaussian_overlap=cfg.gaussian_overlap,
            min_radius_cells=cfg.min_radius_cells,
            max_objects=cfg.max_objects,
            device=self.branches["heatmap"][-1].weight.device,
        )

    def loss(self, outputs: HeadOutputs, targets: HeadTargets) -> dict[str, torch.Tensor]:
        """Weighted loss terms (the caller sums them; each is logged by name).

        Returns:
            {'heatmap', 'offset', 'height', 'size', 'rot', 'velocity'}: scalar tensors, already
            multiplied by ``config.loss_weights``. 'heatmap' is the gaussian focal loss over all
            cells divided by the number of objects in the batch; the regression terms are L1
            summed over components, averaged over objects (velocity over objects with a known
            velocity). Divisors are clamped to >= 1, so a batch with no objects gives finite
            terms (heatmap: negatives only; regressions: 0).
        """
        w = self.config.loss_weights
        num_objects = targets.mask.sum().clamp(min=1).float()
        heatmap = gaussian_focal_loss(
            outputs.heatmap, targets.heatmap, self.config.focal_alpha, self.config.focal_beta
        ) / num_objects

        def l1(pred_map: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            B, C = pred_map.shape[:2]
            index = targets.index[:, None, :].expand(B, C, targets.index.shape[1])
            pred = pred_map.reshape(B, C, -1).gather(2, index).transpose(1, 2).float()  # (B, M, C)
            # where(), not multiplication, so a NaN prediction at a padded slot cannot leak in.
            err = torch.where(mask[..., None], (pred - target).abs(), torch.zeros_like(pred))
            return err.sum() / mask.sum().clamp(min=1).float()

        return {
            "heatmap": w.heatmap * heatmap,
            "offset": w.offset * l1(outputs.offset, targets.offset, targets.mask),
            "height": w.height * l1(outputs.height, targets.height, targets.mask),
            "size": w.size * l1(outputs.log_size, targets.log_size, targets.mask),
            "rot": w.rot * l1(outputs.rot, targets.rot, targets.mask),
            "velocity": w.velocity * l1(outputs.velocity, targets.velocity, targets.velocity_mask),
        }

    @torch.no_grad()
    def predict(self, outputs: HeadOutputs) -> list[Boxes3D]:
        """Decode dense outputs into ego-frame boxes, one :class:`Boxes3D` per batch element.

        Steps: sigmoid; keep cells equal to their 3x3 max-pool (peaks); top ``top_k`` peaks over
        all classes and cells; drop scores <= ``score_threshold``; decode (centre from cell +
        offset, z from height, size = exp(log_size), yaw = atan2(sin, cos), velocity); per-class
        BEV NMS (module docstring); keep at most ``max_boxes`` by score. Decoding runs in float64
        on the CPU, on the few selected peaks only.
        """
        cfg = self.config
        grid = self.grid
        B, K, n_x, n_y = outputs.heatmap.shape
        scores = outputs.heatmap.float().sigmoid()
        peaks = F.max_pool2d(scores, kernel_size=3, stride=1, padding=1) == scores
        flat = (scores * peaks).reshape(B, -1)
        top_scores, top_index = flat.topk(min(cfg.top_k, flat.shape[1]), dim=1)
        results = []
        for b in range(B):
            above = top_scores[b] > cfg.score_threshold
            score = top_scores[b][above]
            index = top_index[b][above]
            cell = index % (n_x * n_y)

            def at_peaks(dense: torch.Tensor) -> torch.Tensor:
                """(B, C, N_x, N_y) -> (N_peaks, C) float64 CPU values at the selected cells."""
                return dense[b].reshape(dense.shape[1], -1)[:, cell].t().double().cpu()

            label = torch.div(index, n_x * n_y, rounding_mode="floor").cpu()
            i = torch.div(cell, n_y, rounding_mode="floor").cpu().double()
            j = (cell % n_y).cpu().double()
            offset = at_peaks(outputs.offset)
            x = (i + offset[:, 0]) * grid.cell_size_m + grid.x_range_m[0]
            y = (j + offset[:, 1]) * grid.cell_size_m + grid.y_range_m[0]
            z = at_peaks(outputs.height)[:, 0]
            size = at_peaks(outputs.log_size).clamp(max=_MAX_LOG_SIZE).exp()
            rot = at_peaks(outputs.rot)
            yaw = torch.atan2(rot[:, 0], rot[:, 1])
            velocity = at_peaks(outputs.velocity)
            score = score.double().cpu()
            center_xy = torch.stack([x, y], dim=1)
            keep = bev_nms(
                center_xy, size[:, :2], yaw, score, label, cfg.nms_iou_threshold, cfg.nms_center_distance_m
            )[: cfg.max_boxes].numpy()
            results.append(
                Boxes3D(
                    center=torch.stack([x, y, z], dim=1).numpy()[keep],
                    size_lwh=size.numpy()[keep],
                    yaw=yaw.numpy()[keep],
                    velocity=velocity.numpy()[keep],
                    label=label.numpy()[keep],
                    score=score.numpy()[keep],
                )
            )
        return results
