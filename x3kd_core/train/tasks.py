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
whose sum is optimised, and, from distillation, detached ``stat/`` diagnostics that the engine
logs without summing) and ``predict(batch)``: ego-frame :class:`Boxes3D` per sample for the
detectors, per-camera :class:`InstancePredictions` for the segmenter.

Distillation hook (camera students). :class:`StudentTask` takes an optional ``distill`` module
and a dict of frozen ``teachers``. Per step the teachers run under ``torch.no_grad`` in eval mode
(:func:`run_teachers`), then ``distill(student_outputs, teacher_outputs, batch)`` returns named
loss terms (and ``stat/`` diagnostics) that are merged into the student's own. Teachers are NOT
registered submodules: they stay out of the task's ``state_dict`` (a student checkpoint holds the student and the distillation
module only, e.g. X-FD's adapter), out of the optimiser and out of DDP; :meth:`StudentTask._apply`
still moves them with ``.to(device)``. ``distill`` IS registered (its trainable parts train with
the student).

The state-dict prefix of the deployable camera model is ``student.`` in both camera tasks, which
is what :class:`x3kd_core.inference.Predictor` loads.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from x3kd_core.distill.frozen import freeze_teacher
from x3kd_core.distill.teacher_cache import CachedTeacher
from x3kd_core.models.camera_radar import CameraRadarStudent
from x3kd_core.models.student import CameraStudent, StudentOutputs
from x3kd_core.models.teachers.instance_seg import InstancePredictions, InstanceSegmenter
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
