"""The teachers of a distilled experiment: loading, checking, caching, and the task around them.

:func:`build_training_task` is what a training run builds: the plain task, or a fresh student with
its frozen (or cached) teachers and the :class:`~x3kd_core.distill.TaskDistillation` module.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from x3kd_core.config import ConfigError, to_dict
from x3kd_core.experiment.build import build_model, build_task
from x3kd_core.experiment.config import ExperimentConfig, grid_differences
from x3kd_core.experiment.data import loader_config, open_nuscenes
from x3kd_core.experiment.paths import resolve_dataroot, resolve_path

__all__ = ["build_distillation", "teacher_cache_key", "cached_teacher", "build_training_task"]

_LOG = logging.getLogger("x3kd.experiment")


def build_distillation(exp: ExperimentConfig, student: nn.Module, device: str | torch.device | None = None):
    """Frozen teachers (loaded from ``exp.teachers``) and the :class:`TaskDistillation` module.

    Returns:
        (distill, teachers, extra_steps): the module for the task's hook, teachers by name, and
        the engine extra steps (X-AT discriminator update when enabled; distillation diagnostics).

    Raises:
        ConfigError: a BEV teacher trained on another grid (key paths named).
        CheckpointError: a teacher checkpoint that is missing, unreadable or of the wrong kind.
    """
    from x3kd_core.distill.frozen import freeze_teacher
    from x3kd_core.distill.losses import DistillationLosses, TaskDistillation
    from x3kd_core.experiment.loader import load_model
    from x3kd_core.models.camera_radar import CameraRadarStudent
    from x3kd_core.train.distributed import init_distributed, wrap_ddp

    assert exp.distill is not None
    teachers: dict[str, nn.Module] = {}
    bev_channels: dict[str, int] = {}
    for name in exp.teachers.required(exp.distill):
        path = resolve_path(getattr(exp.teachers, name))
        model, texp = load_model(path, kinds=(name,))
        # A 2D teacher has no BEV output, so the grid recorded with it (a converted one has x3kd's
        # default) is not compared.
        if name != "instance_seg" and texp.grid != exp.grid:
            raise ConfigError(f"teachers.{name}: {path} was trained with "
                              f"{grid_differences(texp.grid, exp.grid, 'grid', 'this experiment grid')}")
        if hasattr(model, "bev_channels"):
            bev_channels[name] = model.bev_channels
        if exp.teachers.cache is not None:
            # A cached teacher was run on its own inputs (its sweeps), so no sweeps check here.
            teachers[name] = cached_teacher(exp, name, path, model, texp, device)
            continue
        # A teacher fed other inputs than it was trained on is silently worse: refuse.
        sweeps = {"lidar": "lidar_sweeps", "radar": "radar_sweeps"}.get(name)
        if sweeps and getattr(texp.data, sweeps) != getattr(exp.data, sweeps):
            raise ConfigError(f"data.{sweeps} = {getattr(exp.data, sweeps)} but teachers.{name} ({path}) was "
                              f"trained with {getattr(texp.data, sweeps)}")
        if name == "instance_seg" and tuple(texp.image_hw) != tuple(exp.image_hw):
            _LOG.warning("teachers.instance_seg was trained on %s images, the student sees %s",
                         texp.image_hw, exp.image_hw)
        teachers[name] = freeze_teacher(model)
    camera = student.camera if isinstance(student, CameraRadarStudent) else student
    losses = DistillationLosses(
        exp.distill,
        grid=exp.grid,
        image_channels=camera.neck.out_channels,
        student_bev_channels=camera.bev_encoder.out_channels,
        teacher_bev_channels=bev_channels.get(exp.teachers.bev_teacher, camera.bev_encoder.out_channels),
        num_classes=camera.head.config.num_classes,
    )
    distill = TaskDistillation(losses, bev_teacher=exp.teachers.bev_teacher, mask_teacher="instance_seg")
    extra_steps: list = []
    if losses.x_at is not None:
        # Under torchrun the discriminator's gradients are averaged over ranks (wrapped lazily,
        # once the process group exists).
        extra_steps.append(distill.discriminator_step(wrap_module=lambda m: wrap_ddp(m, init_distributed(device))))
    return distill, teachers, extra_steps


def teacher_cache_key(exp: ExperimentConfig, name: str, checkpoint: Path, texp: ExperimentConfig):
    """The :class:`~x3kd_core.distill.teacher_cache.CacheKey` of teacher ``name`` on ``exp``'s train split."""
    from x3kd_core.distill.teacher_cache import CacheKey, file_sha256

    images = name == "instance_seg"
    return CacheKey(
        teacher=name,
        checkpoint_sha256=file_sha256(checkpoint),
        dataroot=str(resolve_dataroot(exp.data.dataroot).resolve()),
        version=exp.data.version,
        split=exp.data.train_split,
        image_hw=tuple(exp.image_hw) if images else (0, 0),
        lidar_sweeps=0 if images else texp.data.lidar_sweeps,
        radar_sweeps=0 if images else texp.data.radar_sweeps,
        grid=to_dict(exp.grid),
        resize_scale=exp.data.resize_scale if images else None,
        crop_bottom_fraction=exp.data.crop_bottom_fraction if images else 0.0,
    )


def cached_teacher(exp: ExperimentConfig, name: str, checkpoint: Path, model: nn.Module,
                    texp: ExperimentConfig, device=None) -> nn.Module:
    """The :class:`CachedTeacher` of ``name`` under ``teachers.cache`` (built first when absent)."""
    from x3kd_core.data.nuscenes import NuScenesDataset, NuScenesSource, collate_samples
    from x3kd_core.distill.teacher_cache import CachedTeacher, TeacherCacheError, build_teacher_cache

    key = teacher_cache_key(exp, name, checkpoint, texp)
    folder = Path(exp.teachers.cache) / name
    if (folder / "meta.json").is_file():
        try:
            return CachedTeacher(folder, expect=key)
        except TeacherCacheError as err:
            raise ConfigError(f"teachers.cache: {err} (delete it or choose another teachers.cache)") from None
    nusc = open_nuscenes(exp)
    config = loader_config(exp, exp.data.train_split, training=False, teacher=(name, texp))
    source = NuScenesSource(nusc.dataroot, config, nusc=nusc)
    loader = torch.utils.data.DataLoader(NuScenesDataset(source), batch_size=4, shuffle=False,
                                         collate_fn=collate_samples)
    _LOG.info("building the %s teacher cache in %s (%d samples)", name, folder, len(source))
    build_teacher_cache(model, key, loader, folder, device=device or "cpu")
    return CachedTeacher(folder, expect=key)


def build_training_task(exp: ExperimentConfig, device: str | torch.device | None = None) -> tuple[nn.Module, list]:
    """The task :func:`~x3kd_core.experiment.run.train_experiment` trains, and the engine ``extra_steps`` it needs.

    Without ``exp.distill``: :func:`build_task` and no extra steps. With it: a fresh student, its
    frozen (or cached) teachers and distillation module from :func:`build_distillation`, the
    task around them (reach them as ``task.teachers`` / ``task.distill``) and the distillation's
    extra steps (X-AT discriminator update, diagnostics).
    """
    if exp.distill is None:
        return build_task(exp), []
    student = build_model(exp)
    distill, teachers, extra_steps = build_distillation(exp, student, device)
    return build_task(exp, student, distill=distill, teachers=teachers), extra_steps
