"""Combining the X3KD components for training: every enabled term, weighted, from one set of outputs.

:class:`DistillationLosses` holds the enabled components (and their trainable student-side parts:
the X-IS mask head, the X-FD / X-AT adapters) and computes every enabled term from the student's
outputs, the frozen teachers' outputs and the ground-truth boxes. It returns a named dict of
already *weighted* scalar terms (``x_is/mask``, ``x_fd/feature``, ``x_at/gen``, ``x_od/heatmap``,
``x_od/regression``) plus detached diagnostics under ``stat/<component>/...``.

What the training engine (:mod:`x3kd_core.train.engine`) does with a loss dict: it sums every
entry whose name does not start with ``stat/`` into the optimised loss, and logs every entry,
``stat/`` ones included, by name in ``train.csv``. In the camera tasks (:mod:`x3kd_core.train.tasks`)
the distillation diagnostics take another route today: :class:`TaskDistillation` returns the loss
terms only and keeps the ``stat/`` entries of the last step, which :meth:`TaskDistillation.stats_step`
(an engine extra step) hands to the log after the optimiser step.

Use: ``StudentTask(student, distill=TaskDistillation(losses), teachers={"lidar": ..., "instance_seg": ...})``
with teachers frozen by :func:`x3kd_core.distill.frozen.freeze_teacher`, and
``extra_steps=[distill.discriminator_step(), distill.stats_step()]`` when X-AT is enabled (the
discriminator and its optimiser live in that step, not in the model; see :mod:`~x3kd_core.distill.x_at`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from torch import Tensor, nn

from x3kd_core.config import BevGridConfig
from x3kd_core.distill.config import DistillConfig
from x3kd_core.distill.x_at import DiscriminatorStep, XATLoss, make_discriminator_step
from x3kd_core.distill.x_fd import XFDLoss, bev_foreground_map, build_bev_adapter, teacher_foreground_map
from x3kd_core.distill.x_is import XISHead, XISLoss
from x3kd_core.distill.x_od import XODLoss
from x3kd_core.structures import DETECTION_CLASSES, Boxes3D

if TYPE_CHECKING:  # annotations only: importing the models here would pull in torchvision et al.
    from x3kd_core.models.student import StudentOutputs
    from x3kd_core.models.teachers.lidar import BevDetectorOutputs

__all__ = ["DistillationLosses", "TaskDistillation", "STAT_PREFIX", "split_stats"]

#: Names starting with this are detached diagnostics, not loss terms.
STAT_PREFIX = "stat/"


def split_stats(losses: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a loss dict into (loss terms, ``stat/`` diagnostics): what is optimised and what is
    only reported (the engine itself leaves ``stat/`` names out of the optimised sum)."""
    terms = {k: v for k, v in losses.items() if not k.startswith(STAT_PREFIX)}
    stats = {k: v for k, v in losses.items() if k.startswith(STAT_PREFIX)}
    return terms, stats


def _prefixed(component: str, losses: dict[str, Tensor], weights: dict[str, float]) -> dict[str, Tensor]:
    out = {}
    for name, value in losses.items():
        if name.startswith(STAT_PREFIX):
            out[f"{STAT_PREFIX}{component}/{name[len(STAT_PREFIX):]}"] = value.detach()
        else:
            out[f"{component}/{name}"] = weights[name] * value
    return out


class DistillationLosses(nn.Module):
    """All enabled X3KD terms, weighted, from the student's and the teachers' outputs.

    Submodules (only those of enabled components exist; all are student-side, trained with it):
    ``x_is_head`` (:class:`XISHead`), ``x_fd`` (:class:`XFDLoss`, holds X-FD's BEV adapter),
    ``x_at_adapter`` (X-AT's own adapter, ``config.x_at.adapter``), and the stateless
    ``x_is_loss`` / ``x_od``. The X-AT discriminator is deliberately *not* a submodule; reach it
    through :attr:`x_at` and train it with :meth:`discriminator_step`.

    Args:
        config: which components, their weights and parameters.
        grid: the BEV grid of student and teacher (for the GT foreground maps of X-FD).
        image_channels: C of the student's ``image_features`` (X-IS head input).
        student_bev_channels / teacher_bev_channels: C_s / C_t of the BEV features.
        num_classes: K of the heatmaps and of the teacher masks.
    """

    def __init__(
        self,
        config: DistillConfig,
        *,
        grid: BevGridConfig,
        image_channels: int,
        student_bev_channels: int,
        teacher_bev_channels: int,
        num_classes: int = len(DETECTION_CLASSES),
    ) -> None:
        super().__init__()
        self.config = config
        self.grid = grid
        if config.x_is.enabled:
            self.x_is_head = XISHead.from_config(config.x_is, image_channels, num_classes)
            self.x_is_loss = XISLoss.from_config(config.x_is)
        if config.x_fd.enabled:
            self.x_fd = XFDLoss.from_config(config.x_fd, student_bev_channels, teacher_bev_channels)
        # A tuple is not registered by nn.Module: the discriminator stays out of this module's
        # parameters, state_dict and .to() (see x_at's module docstring).
        self._x_at: tuple[XATLoss, ...] = ()
        if config.x_at.enabled:
            self.x_at_adapter = build_bev_adapter(student_bev_channels, teacher_bev_channels,
                                                  config.x_at.adapter, config.x_at.adapter_channels)
            self._x_at = (XATLoss.from_config(config.x_at, teacher_bev_channels),)
        if config.x_od.enabled:
            self.x_od = XODLoss.from_config(config.x_od)

    @classmethod
    def from_models(cls, config: DistillConfig, student: nn.Module, lidar_teacher: nn.Module,
                    grid: BevGridConfig) -> "DistillationLosses":
        """Channel counts read off a :class:`~x3kd_core.models.student.CameraStudent` and a
        :class:`~x3kd_core.models.teachers.lidar.LidarDetector` (or any teacher with ``bev_channels``)."""
        return cls(
            config,
            grid=grid,
            image_channels=student.neck.out_channels,
            student_bev_channels=student.bev_encoder.out_channels,
            teacher_bev_channels=lidar_teacher.bev_channels,
            num_classes=student.head.config.num_classes if hasattr(student.head, "config") else len(DETECTION_CLASSES),
        )

    @property
    def x_at(self) -> XATLoss | None:
        """The X-AT loss (holding the discriminator and the context), None when X-AT is off."""
        return self._x_at[0] if self._x_at else None

    def discriminator_step(
        self, *, wrap_module: Callable[[nn.Module], nn.Module] | None = None
    ) -> DiscriminatorStep:
        """The engine ``extra_steps`` entry that trains the discriminator (with its own optimiser
        built from ``config.x_at``).

        Raises:
            RuntimeError: X-AT is disabled.
        """
        if self.x_at is None:
            raise RuntimeError("X-AT is disabled in this DistillConfig: there is no discriminator to train")
        return make_discriminator_step(self.x_at, config=self.config.x_at, wrap_module=wrap_module)

    def forward(
        self,
        student: "StudentOutputs",
        teacher: "BevDetectorOutputs | None" = None,
        teacher_masks: Tensor | None = None,
        gt_boxes: list[Boxes3D] | None = None,
    ) -> dict[str, Tensor]:
        """Every enabled term.

        Args:
            student: :class:`~x3kd_core.models.student.StudentOutputs` (uses ``image_features``
                (B, N_cam, C, h, w), ``bev_features`` (B, C_s, N_x, N_y), ``head``).
            teacher: LiDAR teacher's :class:`~x3kd_core.models.teachers.lidar.BevDetectorOutputs`
                (``bev_features`` (B, C_t, N_x, N_y), ``head``); needed by X-FD, X-AT, X-OD.
            teacher_masks: (B, N_cam, K, H, W) in [0, 1] from ``InstanceSegmenter.mask_targets``;
                needed by X-IS.
            gt_boxes: B Boxes3D (ego frame); needed by X-FD with a ``gt_*`` foreground.

        Returns:
            Weighted scalar terms ``x_is/mask``, ``x_fd/feature``, ``x_at/gen``, ``x_od/heatmap``,
            ``x_od/regression`` (those enabled) and detached ``stat/<component>/<name>`` values.
            In training mode X-AT also records this batch's maps for the discriminator step.

        Raises:
            ValueError: an enabled component's input is missing.
        """
        cfg = self.config
        out: dict[str, Tensor] = {}
        needs_teacher = [n for n in ("x_fd", "x_at", "x_od") if getattr(cfg, n).enabled]
        if needs_teacher and teacher is None:
            raise ValueError(f"{', '.join(needs_teacher)} enabled but no LiDAR teacher outputs were given")

        if cfg.x_is.enabled:
            if teacher_masks is None:
                raise ValueError("x_is enabled but no teacher_masks were given")
            logits = self.x_is_head(student.image_features)
            out.update(_prefixed("x_is", self.x_is_loss(logits, teacher_masks), {"mask": cfg.x_is.weight}))

        if cfg.x_fd.enabled:
            adapted = self.x_fd.adapter(student.bev_features)
            if cfg.x_fd.foreground == "teacher_heatmap":
                fg = teacher_foreground_map(teacher.head.heatmap)
            else:
                if gt_boxes is None:
                    raise ValueError(f"x_fd.foreground={cfg.x_fd.foreground!r} needs gt_boxes")
                fg = bev_foreground_map(gt_boxes, self.grid, cfg.x_fd.foreground, adapted.device)
            terms = self.x_fd.loss_from_adapted(adapted, teacher.bev_features, fg)
            out.update(_prefixed("x_fd", terms, {"feature": cfg.x_fd.weight}))

        if cfg.x_at.enabled:
            terms = self.x_at(self.x_at_adapter(student.bev_features), teacher.bev_features, record=self.training)
            out.update(_prefixed("x_at", terms, {"gen": cfg.x_at.weight}))

        if cfg.x_od.enabled:
            terms = self.x_od(student.head, teacher.head)
            weights = {"heatmap": cfg.x_od.heatmap_weight, "regression": cfg.x_od.regression_weight}
            out.update(_prefixed("x_od", terms, weights))
        return out


class TaskDistillation(nn.Module):
    """:class:`DistillationLosses` behind the camera tasks' hook (``x3kd_core.train.tasks``).

    ``StudentTask`` calls ``distill(student_outputs, teacher_outputs, batch)`` with the frozen
    teachers' outputs by name (``run_teachers``) and merges the returned dict into its training
    losses. That dict holds the weighted loss terms and the detached ``stat/`` diagnostics side by
    side: the engine sums only the names without the ``stat/`` prefix and logs every name, so the
    diagnostics travel the same way as the losses (there is no second channel).

    Args:
        losses: the distillation terms.
        bev_teacher: name of the BEV teacher in ``teacher_outputs`` (``'lidar'``; ``'radar'`` for
            the paper's radar variant); its :class:`BevDetectorOutputs` feed X-FD / X-AT / X-OD.
        mask_teacher: name of the instance-segmentation teacher, whose output is its dense
            ``(B, N_cam, K, H, W)`` masks (``InstanceSegmenter.mask_targets``); feeds X-IS.
    """

    def __init__(self, losses: DistillationLosses, *, bev_teacher: str = "lidar",
                 mask_teacher: str = "instance_seg") -> None:
        super().__init__()
        self.losses = losses
        self.bev_teacher = bev_teacher
        self.mask_teacher = mask_teacher

    @property
    def x_at(self) -> XATLoss | None:
        return self.losses.x_at

    def discriminator_step(self, **kwargs) -> DiscriminatorStep:
        """See :meth:`DistillationLosses.discriminator_step`."""
        return self.losses.discriminator_step(**kwargs)

    def forward(self, student_outputs, teacher_outputs, batch) -> dict[str, Tensor]:
        """Args: student_outputs: StudentOutputs; teacher_outputs: {teacher name: output};
        batch: the :class:`~x3kd_core.structures.Batch` (its ``boxes`` feed X-FD's foreground).

        Returns: what :meth:`DistillationLosses.forward` returns: weighted loss terms and detached
        ``stat/`` diagnostics (see :func:`split_stats`)."""
        enabled = set(self.losses.config.enabled_components)
        needs = {self.bev_teacher: bool(enabled & {"x_fd", "x_at", "x_od"}), self.mask_teacher: "x_is" in enabled}
        missing = [name for name, needed in needs.items() if needed and name not in teacher_outputs]
        if missing:
            raise KeyError(f"teacher outputs {missing} needed by the enabled components are missing "
                           f"(got {sorted(teacher_outputs)})")
        out = self.losses(
            student_outputs,
            teacher_outputs.get(self.bev_teacher),
            teacher_outputs.get(self.mask_teacher),
            batch.boxes,
        )
        return out

