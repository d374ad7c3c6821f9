"""X3KD distillation: the four components, the module that combines them, and frozen teachers.

==========================  ==================================================================================
:mod:`.config`               typed configs of the components (:class:`DistillConfig` and one per component)
:mod:`.x_is`                 X-IS: perspective-view image features <- 2D instance-segmentation teacher's masks
:mod:`.x_fd`                 X-FD: BEV features <- LiDAR teacher's BEV features
:mod:`.x_at`                 X-AT: BEV features vs the LiDAR teacher's, through a discriminator
:mod:`.x_od`                 X-OD: dense head outputs <- LiDAR teacher's head outputs
:mod:`.losses`               :class:`DistillationLosses` (every enabled term, weighted) and
                             :class:`TaskDistillation` (them behind the camera tasks' hook)
:mod:`.frozen`               :func:`freeze_teacher`: the one way a teacher is frozen
:mod:`.teacher_cache`        teacher outputs computed once and read back from disk
==========================  ==================================================================================

The names below are importable from the package (``from x3kd_core.distill import
DistillationLosses``); each is imported from its module on first use, so that reading a
:class:`DistillConfig` (every experiment does, including a checkpoint loaded for inference) does
not import the loss modules.
"""

from __future__ import annotations

from x3kd_core.lazy_exports import lazy_exports

#: Public name -> the module of this package that defines it.
_EXPORTS: dict[str, str] = {
    "DistillConfig": "config",
    "XISConfig": "config",
    "XFDConfig": "config",
    "XATConfig": "config",
    "XODConfig": "config",
    "XISHead": "x_is",
    "XISLoss": "x_is",
    "downsample_masks": "x_is",
    "XFDLoss": "x_fd",
    "bev_foreground_map": "x_fd",
    "teacher_foreground_map": "x_fd",
    "build_bev_adapter": "x_fd",
    "XATLoss": "x_at",
    "BevDiscriminator": "x_at",
    "XATContext": "x_at",
    "DiscriminatorStep": "x_at",
    "make_discriminator_optimizer": "x_at",
    "make_discriminator_step": "x_at",
    "XODLoss": "x_od",
    "soft_target_loss": "x_od",
    "DistillationLosses": "losses",
    "TaskDistillation": "losses",
    "STAT_PREFIX": "losses",
    "split_stats": "losses",
    "freeze_teacher": "frozen",
    "is_frozen": "frozen",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
