"""Reading an experiment: its YAML file, the model files it names, and ``--set key.path=value``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import yaml

from x3kd_core.config import ConfigError, from_dict
from x3kd_core.experiment.config import ExperimentConfig
from x3kd_core.experiment.paths import expand_camera_radar, read_yaml, resolve_path

__all__ = ["apply_override", "load_experiment"]


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
    raw = read_yaml(path, "experiment")
    search = list(path.resolve().parent.parents)[:3]
    search = [path.resolve().parent, *search]
    kind = raw.get("kind")
    for assignment in overrides:
        if assignment.partition("=")[0].strip() == "kind":
            apply_override(raw, assignment)
            kind = raw.get("kind")
    # Model files are read into the dict first, so `--set model.head.score_threshold=0.2` reaches them.
    if isinstance(raw.get("model"), str):
        raw["model"] = read_yaml(resolve_path(raw["model"], search), "model")
    if kind == "camera_radar" and isinstance(raw.get("model"), dict):
        raw["model"] = expand_camera_radar(raw["model"], search)
    for assignment in overrides:
        apply_override(raw, assignment)
    raw.setdefault("name", path.stem)
    return from_dict(ExperimentConfig, raw)
