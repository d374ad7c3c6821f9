"""One experiment = one YAML file in ``config/train/``: model, data, augmentation, optimisation.

    x3kd train --experiment config/train/student_tiny.yaml --out runs/student_tiny \
        --set train.max_steps=50 --set data.dataroot=data/synth_small

An :class:`ExperimentConfig` names the model ``kind`` and its ``model`` config (a path to a
``config/model/*.yaml`` file, or the mapping inline), the ONE BEV ``grid`` of the experiment, the
dataset and splits, the training augmentation and the :class:`~x3kd_core.config.TrainConfig`.

One BEV grid. Every BEV tensor of x3kd (student, teachers, distillation) lives on the experiment's
``grid``; the teachers' model configs have no grid of their own and are built on it. A student
model config carries a grid (the student is usable on its own); it must equal the experiment's,
and a teacher checkpoint used for distillation must have been trained on the same grid. Any
disagreement is a :class:`ConfigError` naming both key paths.

Paths inside an experiment (``model``, ``model.camera``) are looked up relative to the working
directory, then to the folders above the experiment file (so ``config/model/x.yaml`` works from
``config/train/`` in a checkout and in an installed ``share/`` tree), then to the repository root.
``data.dataroot`` is relative to the working directory (falling back to the repository root).

Checkpoints written by :func:`train_experiment` store the whole experiment as their ``config``
(plain dict), so a checkpoint alone rebuilds its model (:func:`task_from_checkpoint`,
:class:`x3kd_core.inference.Predictor`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from x3kd_core.config import BevGridConfig, ConfigError, from_dict, to_dict
from x3kd_core.data.augment import AugmentConfig, AugmentedDataset
from x3kd_core.distill.config import DistillConfig
from x3kd_core.structures import CAMERA_NAMES
from x3kd_core.config import TrainConfig

__all__ = [
    "ModelKind",
    "DataConfig",
    "EvalConfig",
    "TeachersConfig",
    "ExperimentConfig",
    "MODEL_CONFIG_TYPES",
    "TASK_KINDS",
    "load_experiment",
    "apply_override",
    "build_model",
    "build_task",
    "loader_config",
    "build_train_dataset",
    "evaluate_task",
    "train_experiment",
    "build_distillation",
    "build_training_task",
    "teacher_cache_key",
    "task_from_checkpoint",
    "ExperimentResult",
    "headline",
    "grid_differences",
    "resolve_dataroot",
    "DETECTION_KINDS",
]

_LOG = logging.getLogger("x3kd.experiment")

REPO_ROOT = Path(__file__).resolve().parent.parent

ModelKind = Literal["lidar", "radar", "student", "camera_radar", "instance_seg"]

#: Kinds whose model is evaluated with nuScenes detection metrics (the rest: instance masks).
DETECTION_KINDS = ("lidar", "radar", "student", "camera_radar")

#: Image size loaded for kinds that never look at the images (the loader always reads them).
_UNUSED_IMAGE_HW = (16, 32)


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


def _resolve_path(path: str, search: Sequence[Path] = ()) -> Path:
    """First existing file among path (absolute), CWD/path, <each search dir>/path, REPO_ROOT/path."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in (Path.cwd(), *search, REPO_ROOT):
        if (base / p).is_file():
            return base / p
    return p  # not found: the caller reports it


def _read_yaml(path: Path, key: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{key}: config file not found: {path}")
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise ConfigError(f"{key}: {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: {path} must hold a mapping")
    return data


# --------------------------------------------------------------------------------------- configs
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
        its recall / precision (see :class:`x3kd_core.train.tasks.InstanceMaskMetrics`).
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
        that kind on the SAME grid as this experiment (checked when loading).
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
            model = _read_yaml(_resolve_path(model), "model")
        if isinstance(model, dict):
            if self.kind == "camera_radar":
                model = _expand_camera_radar(model, ())
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
        return self.model_image_hw or _UNUSED_IMAGE_HW

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


def _expand_camera_radar(model: dict, search: Sequence[Path]) -> dict:
    """camera_radar model mappings may name their ``camera`` / ``radar`` parts by path."""
    out = dict(model)
    for part in ("camera", "radar"):
        if isinstance(out.get(part), str):
            out[part] = _read_yaml(_resolve_path(out[part], search), f"model.{part}")
    return out


# ------------------------------------------------------------------------------- loading + --set
def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``key.path=value`` to the plain experiment dict (value parsed as YAML).

    Raises:
        ConfigError: no '=' or an intermediate key that is not a mapping (the path is named).
            Unknown keys are reported later, by the typed loading, with their full path.
    """
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    key, _, text = assignment.partition("=")
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set {assignment!r}: empty key in {key!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML: {err}") from None
    node = raw
    for depth, k in enumerate(keys[:-1]):
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(keys[:depth + 1])} is {child!r}, not a mapping")
        node = child
    node[keys[-1]] = value


def load_experiment(path: str | os.PathLike, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML, expand model paths, apply ``--set`` overrides, validate.

    Raises:
        ConfigError: naming the key path of the first problem (file, unknown key, type, grid).
    """
    path = Path(path)
    raw = _read_yaml(path, "experiment")
    search = list(path.resolve().parent.parents)[:3]
    search = [path.resolve().parent, *search]
    kind = raw.get("kind")
    for assignment in overrides:
        if assignment.partition("=")[0].strip() == "kind":
            apply_override(raw, assignment)
            kind = raw.get("kind")
    # Model files are read into the dict first, so `--set model.head.score_threshold=0.2` reaches them.
    if isinstance(raw.get("model"), str):
        raw["model"] = _read_yaml(_resolve_path(raw["model"], search), "model")
    if kind == "camera_radar" and isinstance(raw.get("model"), dict):
        raw["model"] = _expand_camera_radar(raw["model"], search)
    for assignment in overrides:
        apply_override(raw, assignment)
    raw.setdefault("name", path.stem)
    return from_dict(ExperimentConfig, raw)


# ------------------------------------------------------------------------------------- building
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


def resolve_dataroot(dataroot: str) -> Path:
    p = Path(dataroot).expanduser()
    if p.is_absolute() or p.exists() or not (REPO_ROOT / p).exists():
        return p
    return REPO_ROOT / p


def loader_config(exp: ExperimentConfig, split: str, *, training: bool):
    """The :class:`LoaderConfig` of ``split`` for this experiment.

    Training keeps only GT boxes inside the grid (targets outside it cannot be encoded); masks are
    read for instance segmentation only; the synthetic depth maps are never needed (the student is
    supervised by LiDAR depth, as on real nuScenes).
    """
    from x3kd_core.data.nuscenes import LoaderConfig

    d = exp.data
    return LoaderConfig(
        version=d.version,
        split=split,
        cameras=tuple(d.cameras),
        image_hw=exp.image_hw,
        resize_scale=d.resize_scale,
        crop_bottom_fraction=d.crop_bottom_fraction,
        lidar_sweeps=d.lidar_sweeps,
        radar_sweeps=d.radar_sweeps,
        radar_filter=d.radar_filter,
        load_masks=exp.kind == "instance_seg",
        load_depth=False,
        box_range=exp.grid if training else None,
        min_box_points=d.min_box_points,
    )


def _nuscenes(exp: ExperimentConfig):
    from nuscenes.nuscenes import NuScenes

    root = resolve_dataroot(exp.data.dataroot)
    if not (root / exp.data.version / "sample.json").is_file():
        raise FileNotFoundError(f"data.dataroot: no nuScenes tables '{exp.data.version}' under {root}")
    return NuScenes(version=exp.data.version, dataroot=str(root), verbose=False)


def build_train_dataset(exp: ExperimentConfig, nusc=None) -> torch.utils.data.Dataset:
    """Train split as a dataset of Samples (first ``max_train_samples`` only, if set), augmented."""
    from x3kd_core.data.nuscenes import NuScenesDataset, NuScenesSource

    nusc = nusc or _nuscenes(exp)
    source = NuScenesSource(nusc.dataroot, loader_config(exp, exp.data.train_split, training=True), nusc=nusc)
    dataset: torch.utils.data.Dataset = NuScenesDataset(source)
    if exp.data.max_train_samples is not None and exp.data.max_train_samples < len(dataset):
        dataset = torch.utils.data.Subset(dataset, list(range(exp.data.max_train_samples)))
    if exp.augment.enabled:
        dataset = AugmentedDataset(dataset, exp.augment)
    return dataset


def _teacher_model(task: nn.Module) -> nn.Module:
    return getattr(task, "detector", None) or task.segmenter


def build_distillation(exp: ExperimentConfig, student: nn.Module, device: str | torch.device | None = None):
    """Frozen teachers (loaded from ``exp.teachers``) and the :class:`TaskDistillation` module.

    Returns:
        (distill, teachers, extra_steps): the module for the task's hook, teachers by name, and
        the engine extra steps (X-AT discriminator update when enabled; distillation diagnostics).

    Raises:
        ConfigError: a teacher trained on another grid (key paths named).
        CheckpointError: a teacher checkpoint that is missing, unreadable or of the wrong kind.
    """
    from x3kd_core.distill import DistillationLosses, TaskDistillation, freeze_teacher
    from x3kd_core.models.camera_radar import CameraRadarStudent
    from x3kd_core.train.distributed import init_distributed, wrap_ddp

    assert exp.distill is not None
    teachers: dict[str, nn.Module] = {}
    bev_channels: dict[str, int] = {}
    for name in exp.teachers.required(exp.distill):
        path = _resolve_path(getattr(exp.teachers, name))
        task, texp = task_from_checkpoint(path, kinds=(name,))
        if texp.grid != exp.grid:
            raise ConfigError(f"teachers.{name}: {path} was trained with "
                              f"{grid_differences(texp.grid, exp.grid, 'grid', 'this experiment grid')}")
        model = _teacher_model(task)
        if hasattr(model, "bev_channels"):
            bev_channels[name] = model.bev_channels
        if exp.teachers.cache is not None:
            # A cached teacher was run on its own inputs (its sweeps), so no sweeps check here.
            teachers[name] = _cached_teacher(exp, name, path, model, texp, device)
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
    extra_steps.append(distill.stats_step())
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


def _cached_teacher(exp: ExperimentConfig, name: str, checkpoint: Path, model: nn.Module,
                    texp: ExperimentConfig, device=None) -> nn.Module:
    """The :class:`CachedTeacher` of ``name`` under ``teachers.cache`` (built first when absent)."""
    from x3kd_core.data.nuscenes import LoaderConfig, NuScenesDataset, NuScenesSource, collate_samples
    from x3kd_core.distill.teacher_cache import CachedTeacher, TeacherCacheError, build_teacher_cache

    key = teacher_cache_key(exp, name, checkpoint, texp)
    folder = Path(exp.teachers.cache) / name
    if (folder / "meta.json").is_file():
        try:
            return CachedTeacher(folder, expect=key)
        except TeacherCacheError as err:
            raise ConfigError(f"teachers.cache: {err} (delete it or choose another teachers.cache)") from None
    images = name == "instance_seg"
    nusc = _nuscenes(exp)
    config = LoaderConfig(
        version=exp.data.version, split=exp.data.train_split, cameras=tuple(exp.data.cameras),
        image_hw=tuple(exp.image_hw) if images else _UNUSED_IMAGE_HW,
        resize_scale=exp.data.resize_scale if images else None,
        crop_bottom_fraction=exp.data.crop_bottom_fraction if images else 0.0,
        lidar_sweeps=texp.data.lidar_sweeps, radar_sweeps=texp.data.radar_sweeps, radar_filter=texp.data.radar_filter,
        load_masks=False, load_depth=False,
    )
    source = NuScenesSource(nusc.dataroot, config, nusc=nusc)
    loader = torch.utils.data.DataLoader(NuScenesDataset(source), batch_size=4, shuffle=False,
                                         collate_fn=collate_samples)
    _LOG.info("building the %s teacher cache in %s (%d samples)", name, folder, len(source))
    build_teacher_cache(model, key, loader, folder, device=device or "cpu")
    return CachedTeacher(folder, expect=key)


def build_training_task(exp: ExperimentConfig, device: str | torch.device | None = None) -> tuple[nn.Module, list]:
    """The task :func:`train_experiment` trains, and the engine ``extra_steps`` it needs.

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


# ------------------------------------------------------------------------------------ evaluation
def _val_loader(exp: ExperimentConfig, nusc):
    from x3kd_core.data.nuscenes import NuScenesDataset, NuScenesSource, collate_samples

    source = NuScenesSource(nusc.dataroot, loader_config(exp, exp.data.val_split, training=False), nusc=nusc)
    loader = torch.utils.data.DataLoader(NuScenesDataset(source), batch_size=exp.eval.batch_size, shuffle=False,
                                         collate_fn=collate_samples)
    return source, loader


@torch.no_grad()
def evaluate_task(task: nn.Module, exp: ExperimentConfig, out_dir: str | os.PathLike, nusc=None) -> dict:
    """Evaluate ``task`` on ``exp.data.val_split``; returns a JSON-ready dict of metrics.

    Detection kinds: nuScenes mAP / NDS / TP errors by nuscenes-devkit (submission and devkit
    outputs go to ``out_dir``). instance_seg: :class:`~x3kd_core.train.tasks.InstanceMaskMetrics`.
    The task is put in eval mode for the call and restored afterwards.
    """
    from x3kd_core.eval.detection import boxes_to_submission, evaluate, write_submission
    from x3kd_core.train.tasks import MaskMetricAccumulator

    nusc = nusc or _nuscenes(exp)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source, loader = _val_loader(exp, nusc)
    was_training = task.training
    task.eval()
    t0 = time.perf_counter()
    try:
        if exp.is_detection:
            results: dict[str, list[dict]] = {}
            for batch in loader:
                for token, boxes, pose in zip(batch.tokens, task.predict(batch), batch.ego_to_global.numpy()):
                    results[token] = boxes_to_submission(token, boxes, pose)
            meta = {"use_camera": exp.kind in ("student", "camera_radar"), "use_lidar": exp.kind == "lidar",
                    "use_radar": exp.kind in ("radar", "camera_radar"), "use_map": False, "use_external": False}
            path = write_submission(results, out_dir / "results_nusc.json", meta)
            infer_s = time.perf_counter() - t0
            metrics = evaluate(nusc.dataroot, nusc.version, exp.data.val_split, path, out_dir, nusc=nusc)
            out = metrics.to_dict()
            out["classes_present"] = metrics.classes_present
        else:
            acc = MaskMetricAccumulator(exp.eval.mask_iou_threshold, exp.eval.mask_score_threshold,
                                        exp.model.min_instance_area_px)
            for batch in loader:
                preds = task.predict(batch)
                for b, per_cam in enumerate(preds):
                    for n, pred in enumerate(per_cam):
                        acc.add(pred, batch.instance_masks[b, n], batch.boxes[b].label)
            infer_s = time.perf_counter() - t0
            out = acc.result().to_dict()
    finally:
        task.train(was_training)
    out["num_samples"] = len(source)
    out["inference_s"] = infer_s
    return out


def headline(kind: str, metrics: dict) -> dict[str, float]:
    """The few numbers logged per validation and printed in summaries."""
    if kind in DETECTION_KINDS:
        return {k: float(metrics[k]) for k in ("mAP", "NDS", "mATE", "mASE", "mAOE")}
    return {k: float(metrics[k]) for k in ("mask_ap", "matched_miou", "gt_best_miou", "recall", "precision")}


# -------------------------------------------------------------------------------------- training
@dataclass
class ExperimentResult:
    """What :func:`train_experiment` did: the engine's result plus the final evaluation."""

    out_dir: Path
    checkpoint: Optional[Path]
    step: int
    total_steps: int
    finished: bool
    train_wall_s: float
    last_losses: dict
    metrics: dict
    metrics_path: Path


def train_experiment(
    exp: ExperimentConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool | str = False,
    device: str | torch.device | None = None,
    stop_at_step: Optional[int] = None,
    source_path: str = "",
) -> ExperimentResult:
    """Build, train through :func:`~x3kd_core.train.engine.run_training`, evaluate, write metrics.json.

    ``out_dir`` (default ``exp.train.out_dir``) receives ``last.pt``, the engine's logs, the
    evaluation files and ``metrics.json``. Validation during training runs every
    ``train.eval_every_epochs`` epochs and every ``train.eval_every_steps`` steps (0: none; rows in
    ``val.csv``); the final evaluation always runs (on rank 0).
    """
    from x3kd_core.data.nuscenes import collate_samples
    from x3kd_core.train.engine import run_training, seed_everything

    out = Path(out_dir or exp.train.out_dir)
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, out_dir=str(out)))
    seed_everything(exp.train.seed)  # the model's initialisation is part of the run's seed
    nusc = _nuscenes(exp)
    task, extra_steps = build_training_task(exp, device)
    dataset = build_train_dataset(exp, nusc)
    cached: dict[str, Any] = {}

    def val_fn(model: nn.Module, epochs_done: int) -> dict[str, float]:
        metrics = evaluate_task(model, exp, out / "eval" / f"epoch_{epochs_done:03d}", nusc=nusc)
        cached["metrics"] = metrics
        return headline(exp.kind, metrics)

    use_val = exp.train.eval_every_epochs > 0 or exp.train.eval_every_steps > 0
    result = run_training(
        task, dataset, collate_samples, exp.train, device=device, val_fn=val_fn if use_val else None,
        extra_steps=extra_steps,
        resume=resume, stop_at_step=stop_at_step, kind=type(task).__name__, model_config=to_dict(exp),
    )
    rank = int(os.environ.get("RANK", "0"))
    metrics: dict = {}
    if rank == 0:
        # The engine validates at the final step of a finished run; reuse that instead of repeating it.
        if result.finished and "metrics" in cached:
            metrics = cached["metrics"]
        else:
            task.to(torch.device(device) if device is not None else next(task.parameters()).device)
            metrics = evaluate_task(task, exp, out / "eval" / "final", nusc=nusc)
    report = {
        "experiment": exp.name,
        "source": source_path,
        "kind": exp.kind,
        "distill": list(exp.distill.enabled_components) if exp.distill is not None else [],
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "step": result.step,
        "total_steps": result.total_steps,
        "finished": result.finished,
        "train_wall_s": result.wall_s,
        "train_samples": len(dataset),
        "eval_split": exp.data.val_split,
        "headline": headline(exp.kind, metrics) if metrics else {},
        "last_losses": result.last_losses,
        "metrics": metrics,
    }
    metrics_path = out / "metrics.json"
    if rank == 0:
        with open(metrics_path, "w") as fh:
            json.dump(report, fh, indent=2, allow_nan=False, default=_json_default)
    return ExperimentResult(
        out_dir=out, checkpoint=result.checkpoint, step=result.step, total_steps=result.total_steps,
        finished=result.finished, train_wall_s=result.wall_s, last_losses=result.last_losses, metrics=metrics,
        metrics_path=metrics_path,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------------------------- checkpoints
#: Config fields that name pretrained weights loaded when a model is built.
_PRETRAINED_FIELDS = ("pretrained_weights", "pretrained_backbone")


def _without_pretrained(value: Any) -> Any:
    """``value`` (a config dataclass tree) with every :data:`_PRETRAINED_FIELDS` entry set to None."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return value
    changes = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        new = None if f.name in _PRETRAINED_FIELDS else _without_pretrained(item)
        if new is not item:
            changes[f.name] = new
    return dataclasses.replace(value, **changes) if changes else value


def task_from_checkpoint(path: str | os.PathLike, kinds: Sequence[str] = tuple(TASK_KINDS)) -> tuple[nn.Module, ExperimentConfig]:
    """Rebuild the task stored in a checkpoint written by :func:`train_experiment` (weights loaded, CPU).

    The file is read once, and the model is built without the pretrained weights its config may
    name (``backbone.pretrained_weights``, ``pretrained_backbone``): the checkpoint's weights
    replace them, so loading them would be wasted time, and the file (or torch hub cache) they
    name need not exist where the checkpoint is deployed. The returned config keeps them.

    Args:
        path: ``last.pt`` of a run. kinds: model kinds accepted (e.g. ``("student", "camera_radar")``).

    Raises:
        CheckpointError: unreadable file, a kind not in ``kinds``, or weights that do not fit.
    """
    from x3kd_core.checkpoint import CheckpointError, check_state_dict_fits, load_checkpoint

    try:
        state = load_checkpoint(path, tuple(TASK_KINDS[kind] for kind in kinds))
    except CheckpointError as err:
        if "holds a" not in str(err):
            raise
        raise CheckpointError(f"{path}: not a checkpoint of kind {', '.join(kinds)} ({err})") from None
    try:
        exp = from_dict(ExperimentConfig, state["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: its stored experiment config no longer loads: {err}") from None
    task = build_task(_without_pretrained(exp))
    # Distillation modules (X-FD adapters, ...) are training-only: the rebuilt task has none.
    weights = {k: v for k, v in state["model"].items() if not k.startswith("distill.")}
    check_state_dict_fits(weights, task, where=str(path))
    task.load_state_dict(weights)
    return task, exp
