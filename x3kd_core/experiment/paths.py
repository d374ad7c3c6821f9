"""Where an experiment's files and data are found (through :mod:`x3kd_core.paths`).

Paths inside an experiment (``model``, ``model.camera``) are looked up relative to the working
directory, then to the folders above the experiment file (so ``config/model/x.yaml`` works from
``config/train/`` in a checkout and in an installed ``share/`` tree), then to the repository root.
``data.dataroot`` is relative to the working directory (falling back to the repository root).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml

from x3kd_core.config import ConfigError
from x3kd_core.paths import REPO_ROOT, resolve_path

__all__ = ["REPO_ROOT", "resolve_path", "read_yaml", "expand_camera_radar", "resolve_dataroot"]


def read_yaml(path: Path, key: str) -> dict:
    """The mapping in YAML file ``path``; errors name the config ``key`` that pointed to it."""
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


def expand_camera_radar(model: dict, search: Sequence[Path]) -> dict:
    """camera_radar model mappings may name their ``camera`` / ``radar`` parts by path."""
    out = dict(model)
    for part in ("camera", "radar"):
        if isinstance(out.get(part), str):
            out[part] = read_yaml(resolve_path(out[part], search), f"model.{part}")
    return out


def resolve_dataroot(dataroot: str) -> Path:
    """``dataroot`` as given when it exists (or is absolute), else under the repository root."""
    p = Path(dataroot).expanduser()
    if p.is_absolute() or p.exists() or not (REPO_ROOT / p).exists():
        return p
    return REPO_ROOT / p
