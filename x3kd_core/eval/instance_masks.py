"""Instance-mask metrics of the instance-segmentation teacher (mask AP, mIoU, recall, precision).

Predicted masks are compared per camera image with the ground-truth instance map that the
synthetic dataset renders; :class:`MaskMetricAccumulator` collects the matches image by image and
:meth:`MaskMetricAccumulator.result` pools them into one :class:`InstanceMaskMetrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from x3kd_core.models.teachers.instance_seg import InstancePredictions, instance_map_to_targets

__all__ = ["InstanceMaskMetrics", "MaskMetricAccumulator"]


@dataclass
class InstanceMaskMetrics:
    """Instance-mask quality over a split (all cameras), at mask IoU threshold ``iou_threshold``.

    Matching, per camera image: predictions in decreasing score order each take the unmatched
    ground-truth instance of the same class with the highest mask IoU, if that IoU reaches the
    threshold (COCO's greedy rule). Predicted masks are binarised at probability 0.5.

    Fields:
        mask_ap: area under the precision/recall curve of all predictions pooled over images and
            classes (all-point interpolation), i.e. a class-agnostic-pooled AP at ``iou_threshold``.
        matched_miou: mean mask IoU of the matched (true-positive) pairs, over all scores.
        gt_best_miou: mean over GT instances of the best IoU any prediction (score >=
            ``score_threshold``) of its class reaches (0 if none): localisation without a cut-off.
        recall / precision: at ``score_threshold``.
        num_gt / num_predictions: GT instances (visible area >= min_area_px) and predictions.
    """

    mask_ap: float
    matched_miou: float
    gt_best_miou: float
    recall: float
    precision: float
    num_gt: int
    num_predictions: int
    iou_threshold: float
    score_threshold: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class MaskMetricAccumulator:
    """Collects per-image matches; :meth:`result` gives :class:`InstanceMaskMetrics`."""

    def __init__(self, iou_threshold: float = 0.5, score_threshold: float = 0.5, min_area_px: int = 1) -> None:
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold
        self.min_area_px = min_area_px
        self._scores: list[float] = []
        self._tp: list[bool] = []
        self._matched_iou: list[float] = []
        self._best_iou: list[float] = []
        self._num_gt = 0
        self._tp_at_threshold = 0
        self._pred_at_threshold = 0

    def add(self, pred: InstancePredictions, instance_map: Tensor, box_labels: np.ndarray) -> None:
        """One camera image: predictions and the GT instance map (H, W) (index into boxes, -1 bg)."""
        gt = instance_map_to_targets(instance_map.cpu(), box_labels, self.min_area_px)
        gt_masks = gt.masks.bool().flatten(1)  # (G, H*W)
        gt_labels = (gt.labels - 1).tolist()
        pred_masks = (pred.masks.cpu() >= 0.5).flatten(1)  # (P, H*W)
        G, P = gt_masks.shape[0], pred_masks.shape[0]
        self._num_gt += G
        if G and P:
            inter = pred_masks.float() @ gt_masks.float().T
            union = pred_masks.sum(1, keepdim=True).float() + gt_masks.sum(1).float()[None] - inter
            iou = (inter / union.clamp(min=1)).numpy()
        else:
            iou = np.zeros((P, G))
        labels = pred.labels.cpu().tolist()
        scores = pred.scores.cpu().tolist()
        same_class = np.array([[labels[p] == gt_labels[g] for g in range(G)] for p in range(P)], dtype=bool).reshape(P, G)
        iou = np.where(same_class, iou, 0.0)
        taken = np.zeros(G, dtype=bool)
        for p in np.argsort(-np.asarray(scores), kind="stable"):
            candidates = np.where(taken, -1.0, iou[p])
            g = int(np.argmax(candidates)) if G else -1
            hit = G > 0 and candidates[g] >= self.iou_threshold
            if hit:
                taken[g] = True
                self._matched_iou.append(float(iou[p, g]))
            self._scores.append(float(scores[p]))
            self._tp.append(bool(hit))
            if scores[p] >= self.score_threshold:
                self._pred_at_threshold += 1
                self._tp_at_threshold += int(hit)
        confident = np.asarray(scores) >= self.score_threshold
        for g in range(G):
            self._best_iou.append(float(iou[confident, g].max()) if confident.any() else 0.0)

    def result(self) -> InstanceMaskMetrics:
        order = np.argsort(-np.asarray(self._scores), kind="stable")
        tp = np.asarray(self._tp, dtype=np.float64)[order]
        if self._num_gt and len(tp):
            cum_tp = np.cumsum(tp)
            recall = cum_tp / self._num_gt
            precision = cum_tp / np.arange(1, len(tp) + 1)
            # All-point interpolation: precision made monotone from the right, integrated over recall.
            precision = np.maximum.accumulate(precision[::-1])[::-1]
            ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
        else:
            ap = 0.0
        return InstanceMaskMetrics(
            mask_ap=ap,
            matched_miou=float(np.mean(self._matched_iou)) if self._matched_iou else 0.0,
            gt_best_miou=float(np.mean(self._best_iou)) if self._best_iou else 0.0,
            recall=self._tp_at_threshold / self._num_gt if self._num_gt else 0.0,
            precision=self._tp_at_threshold / self._pred_at_threshold if self._pred_at_threshold else 0.0,
            num_gt=self._num_gt,
            num_predictions=len(self._scores),
            iou_threshold=self.iou_threshold,
            score_threshold=self.score_threshold,
        )
