"""The experiment schema: one YAML file in ``config/train/`` as typed, cross-checked configs.

    x3kd train --experiment config/train/student_tiny.yaml --out runs/student_tiny \
        --set train.max_steps=50 --set data.dataroot=data/synth_small

An :class:`ExperimentConfig` names the model ``kind`` and its ``model`` config (a path to a
``config/model/*.yaml`` file, or the mapping inline), the ONE BEV ``grid`` of the experiment, the
dataset and splits, the training augmentation and the :class:`~x3kd_core.config.TrainConfig`.

One BEV grid. Every BEV tensor of x3kd (student, teachers, distillation) lives on the experiment's
``grid``; the teachers' model configs have no grid of their own and are built on it. A student
model config carries a grid (the student is usable on its own); it must equal the experiment's,
and a BEV teacher checkpoint used for distillation must have been trained on the same grid. Any
disagreement is a :class:`ConfigError` naming both key paths.

This module only describes and checks; reading files and ``--set`` is :mod:`.load`, building is
:mod:`.build`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import numpy as np

from x3kd_core.config import BevGridConfig, ConfigError, TrainConfig, from_dict
from x3kd_core.data.augment import AugmentConfig
from x3kd_core.distill.config import DistillConfig
from x3kd_core.experiment.paths import expand_camera_radar, read_yaml, resolve_path
from x3kd_core.structures import CAMERA_NAMES

__all__ = [
    "ModelKind",
    "DETECTION_KINDS",
    "MODEL_CONFIG_TYPES",
    "TASK_KINDS",
    "UNUSED_IMAGE_HW",
    "DataConfig",
    "EvalConfig",
    "TeachersConfig",
    "ExperimentConfig",
    "grid_differences",
]

ModelKind = Literal["lidar", "radar", "student", "camera_radar", "instance_seg"]

#: Kinds whose model is evaluated with nuScenes detection metrics (the rest: instance masks).
DETECTION_KINDS = ("lidar", "radar", "student", "camera_radar")

#: Image size loaded for kinds that never look at the images (the loader always reads them).
UNUSED_IMAGE_HW = (16, 32)


def _model_config_types() -> dict[str, type]:
    from x3kd_core.models.camera_radar import CameraRadarConfig
    from x3kd_core.models.student import StudentConfig
    from x3kd_core.models.teachers.instance_seg import InstanceSegConfig
    from x3kd_core.models.teachers.lidar import LidarDetectorConfig
    from x3kd_core.models.teachers.radar import RadarDetectorConfig

    return {
        "lidar": LidarDetectorConfig,
        "radar": RadarDetectorConfig,
        "student": StudentConfig,
        "camera_radar": CameraRadarConfig,
        "instance_seg": InstanceSegConfig,
    }


MODEL_CONFIG_TYPES = _model_config_types()

#: Task class name (also the checkpoint ``kind``) of each model kind.
TASK_KINDS: dict[str, str] = {
    "lidar": "LidarTask",
    "radar": "RadarTask",
    "student": "StudentTask",
    "camera_radar": "CameraRadarTask",
    "instance_seg": "InstanceSegTask",
}


@dataclass(frozen=True)
class DataConfig:
    """Dataset of an experiment (nuScenes format: real nuScenes or the synthetic generator's).

    dataroot / version / train_split / val_split: where and what (custom split names come from
        ``<dataroot>/<version>/splits.json``).
    cameras: camera channels in camera-axis order.
    image_hw: network input per camera (H, W); None takes the model's (students), or a token size
        for LiDAR / radar models that never read images. Required for instance_seg.
    resize_scale / crop_bottom_fraction: the loader's resize-then-crop policy
        (:class:`x3kd_core.data.nuscenes.LoaderConfig`); the Predictor applies the same policy.
    lidar_sweeps / radar_sweeps / radar_filter / min_box_points: as in LoaderConfig.
    max_train_samples: train on the first N samples of the train split only (quick runs).
    """

    dataroot: str = "data/synth_small"
    version: str = "v1.0-synth"
    train_split: str = "synth_train"
    val_split: str = "synth_val"
    cameras: tuple[str, ...] = CAMERA_NAMES
    image_hw: Optional[tuple[int, int]] = None
    resize_scale: Optional[float] = None
    crop_bottom_fraction: float = 0.0
    lidar_sweeps: int = 1
    radar_sweeps: int = 3
    radar_filter: Literal["default", "none"] = "default"
    min_box_points: int = 1
    max_train_samples: Optional[int] = None

    def __post_init__(self) -> None:
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ConfigError(f"max_train_samples must be >= 1 or null, got {self.max_train_samples}")
        if self.image_hw is not None and min(self.image_hw) <= 0:
            raise ConfigError(f"image_hw must be positive, got {self.image_hw}")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation on ``data.val_split`` after training (and every ``train.eval_every_epochs``).

    batch_size: samples per forward pass.
    mask_iou_threshold / mask_score_threshold: instance_seg matching IoU and the score cut-off of
        its recall / precision (see :class:`x3kd_core.eval.instance_masks.InstanceMaskMetrics`).
    """

    batch_size: int = 4
    mask_iou_threshold: float = 0.5
    mask_score_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.mask_iou_threshold <= 1.0:
            raise ConfigError(f"mask_iou_threshold must be in (0, 1], got {self.mask_iou_threshold}")


@dataclass(frozen=True)
class TeachersConfig:
    """Frozen teachers of a distilled camera student: ``last.pt`` files of earlier ``x3kd train`` runs.

    lidar / radar / instance_seg: checkpoint paths (null = none). Each must come from a run of
        that kind (or ``x3kd convert``); the BEV teachers on the SAME grid as this experiment
        (checked when loading; the 2D instance_seg teacher's grid is not used).
    bev_teacher: which BEV teacher feeds X-FD / X-AT / X-OD (``lidar``; ``radar`` for the paper's
        radar variant). The instance_seg teacher feeds X-IS.
    cache: null = run the teachers every step; a folder = read their outputs from
        ``<cache>/<teacher>/`` (:mod:`x3kd_core.distill.teacher_cache`), built there on first use
        over ``data.train_split`` and reused while checkpoint, split and inputs match (a cache
        built from anything else is an error, never overwritten). Cached outputs belong to the
        un-augmented samples: with a cached BEV teacher ``augment.bev`` must be off, with a
        cached instance_seg teacher ``augment.image`` must be off. Build it before launching
        several processes on it (``x3kd ablate`` does).
    """

    lidar: Optional[str] = None
    radar: Optional[str] = None
    instance_seg: Optional[str] = None
    bev_teacher: Literal["lidar", "radar"] = "lidar"
    cache: Optional[str] = None

    def required(self, distill: DistillConfig) -> dict[str, str]:
        """Teacher name -> why it is needed, for the enabled components."""
        enabled = set(distill.enabled_components)
        out = {}
        bev_users = sorted(enabled & {"x_fd", "x_at", "x_od"})
        if bev_users:
            out[self.bev_teacher] = "distill." + "/".join(bev_users)
        if "x_is" in enabled:
            out["instance_seg"] = "distill.x_is"
        return out


@dataclass(frozen=True)
class ExperimentConfig:
    """A complete training experiment (see the module docstring).

    kind: which model is trained. model: its config (path or mapping; typed after loading:
    LidarDetectorConfig, RadarDetectorConfig, StudentConfig, CameraRadarConfig or
    InstanceSegConfig). grid: THE BEV grid. train: optimisation. data / augment / eval: see their
    classes. distill: X3KD distillation (camera students only; null = none; ``{}`` = all four
    components with their defaults, see :class:`x3kd_core.distill.config.DistillConfig`);
    teachers: the checkpoints it distils from. name: free text for logs (default: the file name).
    """

    kind: ModelKind
    model: Any
    grid: BevGridConfig
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: Optional[DistillConfig] = None
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    name: str = ""

    def __post_init__(self) -> None:
        model_type = MODEL_CONFIG_TYPES[self.kind]
        model = self.model
        if isinstance(model, str):
            model = read_yaml(resolve_path(model), "model")
        if isinstance(model, dict):
            if self.kind == "camera_radar":
                model = expand_camera_radar(model, ())
            model = from_dict(model_type, model, "model")
        if not isinstance(model, model_type):
            raise ConfigError(f"model: expected a path or a mapping for {model_type.__name__}, got {type(model).__name__}")
        object.__setattr__(self, "model", model)

        student_grid, grid_key = None, ""
        if self.kind == "student":
            student_grid, grid_key = model.grid, "model.grid"
        elif self.kind == "camera_radar":
            student_grid, grid_key = model.camera.grid, "model.camera.grid"
        if student_grid is not None and student_grid != self.grid:
            raise ConfigError(f"{grid_differences(student_grid, self.grid, grid_key, 'grid')} "
                              "(one BEV grid per experiment: make them equal)")
        model_hw = self.model_image_hw
        if model_hw is not None and self.data.image_hw is not None and tuple(self.data.image_hw) != tuple(model_hw):
            key = "model.image_hw" if self.kind == "student" else "model.camera.image_hw"
            raise ConfigError(f"data.image_hw {list(self.data.image_hw)} differs from {key} {list(model_hw)}")
        if self.kind == "instance_seg" and self.data.image_hw is None:
            raise ConfigError("data.image_hw is required for kind instance_seg")
        if self.distill is not None:
            if self.kind not in ("student", "camera_radar"):
                raise ConfigError(f"distill: only camera students are distilled, not kind {self.kind}")
            required = self.teachers.required(self.distill)
            for name, why in required.items():
                if getattr(self.teachers, name) is None:
                    raise ConfigError(f"teachers.{name}: a checkpoint is required by {why}")
            if self.teachers.cache is not None:
                if self.teachers.bev_teacher in required and self.augment.bev.enabled:
                    raise ConfigError("teachers.cache: cached BEV-teacher outputs belong to un-augmented samples, "
                                      "but augment.bev is on (set augment.bev={} or teachers.cache=null)")
                if "instance_seg" in required and self.augment.image.enabled:
                    raise ConfigError("teachers.cache: cached instance-seg masks belong to un-augmented images, "
                                      "but augment.image is on (set augment.image={} or teachers.cache=null)")

    @property
    def model_image_hw(self) -> Optional[tuple[int, int]]:
        """The network input size the model itself fixes (students), else None."""
        if self.kind == "student":
            return tuple(self.model.image_hw)
        if self.kind == "camera_radar":
            return tuple(self.model.camera.image_hw)
        return None

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) the loader produces for this experiment."""
        if self.data.image_hw is not None:
            return tuple(self.data.image_hw)
        return self.model_image_hw or UNUSED_IMAGE_HW

    @property
    def is_detection(self) -> bool:
        return self.kind in DETECTION_KINDS


def grid_differences(a: BevGridConfig, b: BevGridConfig, key_a: str, key_b: str) -> str:
    """'model.grid.cell_size_m = 0.8 but grid.cell_size_m = 1.6' for the first differing field."""
    for f in dataclasses.fields(BevGridConfig):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if tuple(np.atleast_1d(va)) != tuple(np.atleast_1d(vb)):
            return f"{key_a}.{f.name} = {_fmt(va)} but {key_b}.{f.name} = {_fmt(vb)}"
    return f"{key_a} differs from {key_b}"


def _fmt(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)
