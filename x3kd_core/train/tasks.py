"""Training tasks: adapters that give each model the engine's ``training_losses(batch)`` protocol.

A task owns one model and knows which fields of a :class:`~x3kd_core.structures.Batch` it reads:

==================  =======================================  ==========================================
task                model                                     inputs
==================  =======================================  ==========================================
:class:`LidarTask`   LidarDetector (teacher)                  ``lidar_points``
:class:`RadarTask`   RadarDetector                            ``radar_points``
:class:`StudentTask` CameraStudent                            ``images``, ``intrinsics``, ``cam_to_ego``
:class:`CameraRadarTask` CameraRadarStudent                   the above + ``radar_points``
:class:`InstanceSegTask` InstanceSegmenter (teacher)          ``images``, ``instance_masks``, ``boxes``
==================  =======================================  ==========================================

Every task has ``training_losses(batch) -> dict[str, Tensor]`` (named, already weighted terms
whose sum is optimised) and ``predict(batch)``: ego-frame :class:`Boxes3D` per sample for the
detectors, per-camera :class:`InstancePredictions` for the segmenter.

Distillation hook (camera students). :class:`StudentTask` takes an optional ``distill`` module
and a dict of frozen ``teachers``. Per step the teachers run under ``torch.no_grad`` in eval mode
(:func:`run_teachers`), then ``distill(student_outputs, teacher_outputs, batch)`` returns named
loss terms that are added to the student's own. Teachers are NOT registered submodules: they stay
out of the task's ``state_dict`` (a student checkpoint holds the student and the distillation
module only, e.g. X-FD's adapter), out of the optimiser and out of DDP; :meth:`StudentTask._apply`
still moves them with ``.to(device)``. ``distill`` IS registered (its trainable parts train with
the student).

The state-dict prefix of the deployable camera model is ``student.`` in both camera tasks, which
is what :class:`x3kd_core.inference.Predictor` loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

from x3kd_core.distill.frozen import freeze_teacher
from x3kd_core.distill.teacher_cache import CachedTeacher
from x3kd_core.models.camera_radar import CameraRadarStudent
from x3kd_core.models.student import CameraStudent, StudentOutputs
from x3kd_core.models.teachers.instance_seg import (
    InstancePredictions,
    InstanceSegmenter,
    instance_map_to_targets,
)
from x3kd_core.models.teachers.lidar import BevDetectorOutputs, LidarDetector
from x3kd_core.models.teachers.radar import RadarDetector
from x3kd_core.structures import Batch, Boxes3D

__all__ = [
    "STUDENT_PREFIX",
    "LidarTask",
    "RadarTask",
    "StudentTask",
    "CameraRadarTask",
    "InstanceSegTask",
    "run_teachers",
    "MaskMetricAccumulator",
    "InstanceMaskMetrics",
]

#: State-dict prefix of the deployable camera(+radar) model inside a camera task.
STUDENT_PREFIX = "student."


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _merge(losses: dict[str, Tensor], extra: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    clash = sorted(set(losses) & set(extra))
    if clash:
        raise KeyError(f"{source} returns loss terms {clash} that the model already returns")
    out = dict(losses)
    out.update(extra)
    return out


# ------------------------------------------------------------------------------------------ teachers
class _PointDetectorTask(nn.Module):
    """Training of a BEV detector that reads one point field of the batch (``points_field``)."""

    points_field: str

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    @property
    def config(self):
        return self.detector.config

    def outputs(self, batch: Batch) -> BevDetectorOutputs:
        return self.detector(getattr(batch, self.points_field))

    def training_losses(self, batch: Batch) -> dict[str, Tensor]:
        return self.detector.loss(self.outputs(batch), batch.boxes)

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Boxes3D]:
        return self.detector.predict(self.outputs(batch.to(_device_of(self))))


class LidarTask(_PointDetectorTask):
    """LiDAR teacher training: CenterPoint losses of ``LidarDetector`` on ``batch.lidar_points``."""

    points_field = "lidar_points"

    def __init__(self, detector: LidarDetector) -> None:
        super().__init__(detector)


class RadarTask(_PointDetectorTask):
    """Radar-only detector training on ``batch.radar_points``."""

    points_field = "radar_points"

    def __init__(self, detector: RadarDetector) -> None:
        super().__init__(detector)


# ---------------------------------------------------------------------------------------- students
@torch.no_grad()
def run_teachers(teachers: Mapping[str, nn.Module], batch: Batch) -> dict[str, Any]:
    """Outputs of frozen teachers on a batch, by teacher name (eval mode, no autograd).

    What each teacher type returns: ``LidarDetector`` -> :class:`BevDetectorOutputs` from the LiDAR
    points; ``RadarDetector`` -> the same from the radar points; ``InstanceSegmenter`` -> its
    dense per-class masks ``(B, N_cam, 10, H, W)`` (:meth:`InstanceSegmenter.mask_targets`);
    a :class:`~x3kd_core.distill.teacher_cache.CachedTeacher` -> the stored outputs of
    ``batch.tokens`` (same types), without running anything.
    """
    out: dict[str, Any] = {}
    for name, teacher in teachers.items():
        teacher.eval()
        if isinstance(teacher, CachedTeacher):
            out[name] = teacher(batch.tokens, batch.images.device)
        elif isinstance(teacher, LidarDetector):
            out[name] = teacher(batch.lidar_points)
        elif isinstance(teacher, RadarDetector):
            out[name] = teacher(batch.radar_points)
        elif isinstance(teacher, InstanceSegmenter):
            out[name] = teacher.mask_targets(batch.images)
        else:
            raise TypeError(f"teacher '{name}': no rule for running a {type(teacher).__name__}")
    return out


class _CameraTask(nn.Module):
    """Shared code of the camera students (distillation hook, unregistered frozen teachers)."""

    student: nn.Module

    def __init__(self, student: nn.Module, distill: Optional[nn.Module], teachers: Optional[Mapping[str, nn.Module]]) -> None:
        super().__init__()
        self.student = student
        self.distill = distill
        teachers = {name: freeze_teacher(teacher) for name, teacher in (teachers or {}).items()}
        # A plain dict on purpose: see the module docstring (not in state_dict / optimiser / DDP).
        self.__dict__["teachers"] = teachers
        if distill is not None and not teachers:
            raise ValueError("a distill module needs at least one teacher")

    @property
    def config(self):
        return self.student.config if hasattr(self.student, "config") else None

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for teacher in self.teachers.values():
            teacher._apply(fn, *args, **kwargs)
        return self

    def outputs(self, batch: Batch) -> StudentOutputs:
        raise NotImplementedError

    def training_losses(self, batch: Batch) -> dict[str, Tensor]:
        outputs = self.outputs(batch)
        losses = self.student.loss(outputs, batch)
        if self.distill is not None:
            teacher_outputs = run_teachers(self.teachers, batch)
            losses = _merge(losses, self.distill(outputs, teacher_outputs, batch), "distill")
        return losses

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Boxes3D]:
        return self.student.predict(self.outputs(batch.to(_device_of(self.student))))


class StudentTask(_CameraTask):
    """Camera-only student: detection + depth losses (+ distillation terms when ``distill`` is given).

    Args:
        student: the camera student.
        distill: optional module ``distill(student_outputs, teacher_outputs, batch) -> dict[str,
            Tensor]`` (named, weighted terms), e.g. X3KD's X-IS / X-FD / X-OD losses.
        teachers: frozen teachers by name (e.g. ``{"lidar": LidarDetector, "instance_seg":
            InstanceSegmenter}``); their outputs reach ``distill`` under the same names.
    """

    def __init__(self, student: CameraStudent, distill: Optional[nn.Module] = None,
                 teachers: Optional[Mapping[str, nn.Module]] = None) -> None:
        super().__init__(student, distill, teachers)

    def outputs(self, batch: Batch) -> StudentOutputs:
        return self.student(batch.images, batch.intrinsics, batch.cam_to_ego)


class CameraRadarTask(_CameraTask):
    """Camera + radar student (:class:`CameraRadarStudent`); same losses and hooks as StudentTask."""

    def __init__(self, student: CameraRadarStudent, distill: Optional[nn.Module] = None,
                 teachers: Optional[Mapping[str, nn.Module]] = None) -> None:
        super().__init__(student, distill, teachers)

    def outputs(self, batch: Batch) -> StudentOutputs:
        return self.student(batch.images, batch.intrinsics, batch.cam_to_ego, batch.radar_points)


# ----------------------------------------------------------------------------------- instance seg
class InstanceSegTask(nn.Module):
    """2D instance-segmentation teacher training (Mask R-CNN losses on every camera)."""

    def __init__(self, segmenter: InstanceSegmenter) -> None:
        super().__init__()
        self.segmenter = segmenter

    @property
    def config(self):
        return self.segmenter.config

    def training_losses(self, batch: Batch) -> dict[str, Tensor]:
        if batch.instance_masks is None:
            raise ValueError("instance-segmentation training needs Batch.instance_masks (a synthetic dataset)")
        return self.segmenter.loss(batch.images, batch.instance_masks, batch.boxes)

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[list[InstancePredictions]]:
        """``result[b][n]``: the instances found in camera n of sample b."""
        return self.segmenter.predict(batch.images.to(_device_of(self)))


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
