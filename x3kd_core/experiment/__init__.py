"""Experiments: one YAML file in ``config/train/`` -> a trained, evaluated model; and back from its checkpoint.

One job per module, in the order data flows through them:

==================  ==================================================================================
:mod:`.paths`        where experiment files and data are found (repository root, search folders)
:mod:`.config`       the schema: :class:`ExperimentConfig` and its sections, cross-checked (one BEV grid)
:mod:`.load`         reading an experiment YAML and ``--set key.path=value`` overrides
:mod:`.data`         loader configs, the nuScenes tables and the augmented train split
:mod:`.build`        kind -> model (:func:`build_model`) and its training task (:func:`build_task`)
:mod:`.loader`       a checkpoint -> its bare model (:func:`load_model`): what deployment imports
:mod:`.teachers`     frozen / cached teachers and the distillation around a student
:mod:`.evaluate`     scoring a task on the validation split
:mod:`.run`          one training run: build, train (the engine), evaluate, write ``metrics.json``
==================  ==================================================================================

The names below are importable from the package (``from x3kd_core.experiment import
load_experiment``); each is imported from its module on first use, so that loading a model for
inference (``.loader``) imports neither the training run nor the training engine.
"""

from __future__ import annotations

from x3kd_core.lazy_exports import lazy_exports

#: Public name -> the module of this package that defines it.
_EXPORTS: dict[str, str] = {
    "REPO_ROOT": "paths",
    "resolve_dataroot": "paths",
    "ModelKind": "config",
    "DETECTION_KINDS": "config",
    "MODEL_CONFIG_TYPES": "config",
    "TASK_KINDS": "config",
    "DataConfig": "config",
    "EvalConfig": "config",
    "TeachersConfig": "config",
    "ExperimentConfig": "config",
    "grid_differences": "config",
    "apply_override": "load",
    "load_experiment": "load",
    "loader_config": "data",
    "open_nuscenes": "data",
    "build_train_dataset": "data",
    "build_model": "build",
    "build_task": "build",
    "task_from_checkpoint": "build",
    "load_model": "loader",
    "build_distillation": "teachers",
    "build_training_task": "teachers",
    "teacher_cache_key": "teachers",
    "evaluate_task": "evaluate",
    "headline": "evaluate",
    "ExperimentResult": "run",
    "train_experiment": "run",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
