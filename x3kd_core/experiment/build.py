"""Building an experiment's model and its training task: typed config -> explicit constructor.

:func:`build_model` is the one place that maps a model ``kind`` to its class (no registry of
strings); it imports only ``x3kd_core.models``, so deployment (:mod:`.loader`) uses it too.
:func:`build_task` wraps a model in its training task (:mod:`x3kd_core.train.tasks`, imported
only when called), and :func:`task_from_checkpoint` does both for a saved run.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from torch import nn

from x3kd_core.config import ConfigError
from x3kd_core.experiment.config import TASK_KINDS, ExperimentConfig

__all__ = ["build_model", "build_task", "task_from_checkpoint"]


def build_model(exp: ExperimentConfig) -> nn.Module:
    """The bare model of ``exp.kind`` on the experiment grid (randomly initialised)."""
    from x3kd_core.models.camera_radar import CameraRadarStudent
    from x3kd_core.models.student import CameraStudent
    from x3kd_core.models.teachers.instance_seg import InstanceSegmenter
    from x3kd_core.models.teachers.lidar import LidarDetector
    from x3kd_core.models.teachers.radar import RadarDetector

    try:
        if exp.kind == "lidar":
            return LidarDetector(exp.model, exp.grid)
        if exp.kind == "radar":
            return RadarDetector(exp.model, exp.grid)
        if exp.kind == "student":
            return CameraStudent.from_config(exp.model)
        if exp.kind == "camera_radar":
            return CameraRadarStudent.from_config(exp.model)
        return InstanceSegmenter(exp.model)
    except ConfigError as err:
        raise ConfigError(f"model: {err}") from None


def build_task(exp: ExperimentConfig, model: Optional[nn.Module] = None, *, distill: Optional[nn.Module] = None,
               teachers: Optional[dict[str, nn.Module]] = None) -> nn.Module:
    """The training task (``training_losses`` / ``predict``) around ``model`` (built if None)."""
    from x3kd_core.train import tasks

    model = build_model(exp) if model is None else model
    if exp.kind in ("student", "camera_radar"):
        cls = tasks.StudentTask if exp.kind == "student" else tasks.CameraRadarTask
        return cls(model, distill=distill, teachers=teachers)
    if distill is not None or teachers:
        raise ConfigError(f"kind {exp.kind}: distillation applies to camera students only")
    return {"lidar": tasks.LidarTask, "radar": tasks.RadarTask, "instance_seg": tasks.InstanceSegTask}[exp.kind](model)


def task_from_checkpoint(path: str | os.PathLike, kinds: Sequence[str] = tuple(TASK_KINDS)) -> tuple[nn.Module, ExperimentConfig]:
    """The training task of a checkpoint written by :func:`~x3kd_core.experiment.run.train_experiment`
    (weights loaded, CPU): :func:`~x3kd_core.experiment.loader.load_model` wrapped by :func:`build_task`.

    Distillation modules (X-FD adapters, ...) are training-only: the rebuilt task has none. The
    returned config keeps the pretrained-weight paths it names (see ``load_model``).

    Raises:
        CheckpointError: unreadable file, a kind not in ``kinds``, or weights that do not fit.
    """
    from x3kd_core.experiment.loader import load_model

    model, exp = load_model(path, kinds)
    return build_task(exp, model), exp
