"""Rebuilding a trained model from its checkpoint, for inference: models + this loader, no training code.

A checkpoint of ``x3kd train`` (:func:`x3kd_core.experiment.run.train_experiment`) records the
task it holds (``kind``: ``StudentTask``, ``LidarTask``, ...) and the whole experiment
(``config``, a plain dict). :func:`load_model` reads the file once, maps the recorded kind to the
model kind, builds that bare model (:func:`~x3kd_core.experiment.build.build_model`) and loads the
weights stored under the task's prefix (:data:`MODEL_PREFIX`). The Predictor, ``x3kd export`` and
the ROS nodes load models this way; training wraps the result in its task
(:func:`~x3kd_core.experiment.build.task_from_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from torch import nn

from x3kd_core import checkpoint as checkpoint_format
from x3kd_core.checkpoint import CheckpointError, check_state_dict_fits
from x3kd_core.config import ConfigError, from_dict
from x3kd_core.experiment.build import build_model
from x3kd_core.experiment.config import TASK_KINDS, ExperimentConfig

__all__ = ["MODEL_PREFIX", "load_model"]

#: State-dict prefix of the model inside each kind's training task (:mod:`x3kd_core.train.tasks`).
MODEL_PREFIX: dict[str, str] = {
    "lidar": "detector.",
    "radar": "detector.",
    "student": "student.",
    "camera_radar": "student.",
    "instance_seg": "segmenter.",
}

#: Prefix of the training-only distillation modules (X-FD adapters, ...) in a camera task.
_TRAINING_ONLY_PREFIX = "distill."

#: Config fields that name pretrained weights loaded when a model is built.
_PRETRAINED_FIELDS = ("pretrained_weights", "pretrained_backbone")

_KIND_OF_TASK = {task: kind for kind, task in TASK_KINDS.items()}


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


def load_model(path: str | os.PathLike, kinds: Sequence[str] = tuple(TASK_KINDS)) -> tuple[nn.Module, ExperimentConfig]:
    """The bare model of a ``x3kd train`` checkpoint (weights loaded, CPU, train mode) and its experiment.

    The file is read once, and the model is built without the pretrained weights its config may
    name (``backbone.pretrained_weights``, ``pretrained_backbone``): the checkpoint's weights
    replace them, so loading them would be wasted time, and the file (or torch hub cache) they
    name need not exist where the checkpoint is deployed. The returned config keeps them.

    Args:
        path: ``last.pt`` of a run. kinds: model kinds accepted (e.g. ``("student", "camera_radar")``).

    Raises:
        CheckpointError: unreadable file, a kind not in ``kinds``, a stored experiment that no
            longer loads, or weights that do not fit (the first key or shape named).
    """
    state = checkpoint_format.read_checkpoint(path)
    recorded = state["kind"]
    kind = _KIND_OF_TASK.get(recorded)
    if kind not in kinds:
        raise CheckpointError(f"{path}: not a checkpoint of kind {', '.join(kinds)} ({path} holds a '{recorded}' "
                              f"model, expected '{' or '.join(TASK_KINDS[k] for k in kinds)}')")
    try:
        exp = from_dict(ExperimentConfig, state["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: its stored experiment config no longer loads: {err}") from None
    if exp.kind != kind:
        raise CheckpointError(f"{path}: holds a '{recorded}' model but its stored experiment is of kind {exp.kind}")
    model = build_model(_without_pretrained(exp))
    prefix = MODEL_PREFIX[kind]
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    # Distillation modules are training-only; anything else outside the model is a misfit.
    stray = [k for k in state["model"] if not k.startswith(prefix) and not k.startswith(_TRAINING_ONLY_PREFIX)]
    if stray:
        raise CheckpointError(f"{path}: state dict keys differ; not in the {kind} model: {stray[:3]}"
                              + (" ..." if len(stray) > 3 else ""))
    check_state_dict_fits(weights, model, where=f"{path} ({prefix}*)")
    model.load_state_dict(weights)
    return model, exp
