"""Typed configuration: frozen dataclasses loaded from YAML.

Every config is a frozen dataclass. :func:`from_dict` builds one from plain data and rejects
unknown keys, missing keys and wrong types with the full key path (``model.bev.cell_size_m``),
so a typo in a YAML file fails loudly instead of silently falling back to a default.

Hand-written rather than taken from a library: the validation we need (key paths, frozen
dataclasses, no extra dependency on a config framework) is ~100 lines.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Type, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type. The message names the key path."""


def _check_value(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(arg, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: {value!r} matches none of {tp}: " + "; ".join(errors))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(_check_value(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported config type {tp}")


def from_dict(cls: Type[T], data: dict, path: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``, validating every key recursively.

    Raises:
        ConfigError: naming the key path of the first unknown, missing or ill-typed value, or of a
            value rejected by the dataclass' own ``__post_init__`` checks.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown key {where}{unknown[0]} (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key {key_path}")
            continue
        kwargs[name] = _check_value(hints[name], data[name], key_path)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path + ': ' if path else ''}{err}") from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path or cls.__name__}: {err}") from None


def to_dict(config: Any) -> dict:
    """Frozen dataclass -> plain dict (tuples become lists) suitable for YAML or JSON."""

    def convert(v):
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [convert(x) for x in v]
        return v

    return convert(config)


def load_yaml(cls: Type[T], path: str | Path) -> T:
    """Read a YAML file into the frozen dataclass ``cls`` (see :func:`from_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return from_dict(cls, data or {})
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _positive(path: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{path} must be > 0, got {value}")


@dataclass(frozen=True)
class BevGridConfig:
    """The BEV grid shared by every model (ONE source of truth for ranges and cell size).

    x_range_m / y_range_m: (min, max) in the ego frame (m); cell_size_m: square cell edge (m);
    z_range_m: vertical extent considered by the view transform and pillars (m).
    """

    x_range_m: tuple[float, float] = (-51.2, 51.2)
    y_range_m: tuple[float, float] = (-51.2, 51.2)
    z_range_m: tuple[float, float] = (-3.0, 5.0)  # ego frame (ground ~0 m), not LiDAR frame
    cell_size_m: float = 0.8

    def __post_init__(self) -> None:
        _positive("cell_size_m", self.cell_size_m)
        for name in ("x_range_m", "y_range_m", "z_range_m"):
            lo, hi = getattr(self, name)
            if not hi > lo:
                raise ConfigError(f"{name} must have max > min, got {(lo, hi)}")
        for name in ("x_range_m", "y_range_m"):
            lo, hi = getattr(self, name)
            cells = (hi - lo) / self.cell_size_m
            if abs(cells - round(cells)) > 1e-6:
                raise ConfigError(f"{name} span {hi - lo} m is not a whole number of {self.cell_size_m} m cells")

    # Layout convention for every BEV tensor in x3kd: (B, C, N_x, N_y); cell [i, j] covers
    # x in [x_min + i * cell, x_min + (i + 1) * cell) and likewise for y with j.

    @property
    def size_xy(self) -> tuple[int, int]:
        """(num_x_cells, num_y_cells)."""
        return (
            int(round((self.x_range_m[1] - self.x_range_m[0]) / self.cell_size_m)),
            int(round((self.y_range_m[1] - self.y_range_m[0]) / self.cell_size_m)),
        )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run: the ``train:`` section of an experiment and the
    input of :func:`x3kd_core.train.engine.run_training`. It lives here, not in the engine, so that
    reading an experiment (or a checkpoint's stored experiment) does not import the training code.

    Length: ``epochs`` and/or ``max_steps`` (optimiser steps); with both, whichever ends first.
    ``batch_size`` is the global batch (split over torchrun processes).

    LR schedule (``lr`` is the peak): ``warmup_steps`` optimiser steps first, then
      - ``cosine``: linear warmup from lr/warmup_steps to lr, cosine decay to ``min_lr_ratio * lr``;
      - ``onecycle``: cosine ramp from lr/25 to lr, cosine decay to lr/25/1e4 (Smith's one-cycle,
        without momentum cycling);
      - ``constant``: linear warmup, then lr.

    Weight decay (decoupled, AdamW) applies to weights with >= 2 dims; biases and norm scales
    (1-dim) get none unless ``decay_norm_and_bias``.

    ``amp``: autocast to ``amp_dtype`` with a GradScaler for float16; only effective on CUDA (on
    the CPU the run is float32 and a log line says so). ``grad_clip_norm``: clip the global L2
    gradient norm (logged as ``grad_norm``). ``deterministic``: deterministic kernels where PyTorch
    has them (warn-only where it has not). ``ckpt_every_steps``: 0 = only at the end / on stop.
    ``eval_every_epochs``: 0 = only at the end (if a ``val_fn`` is given); ``eval_every_steps``:
    also every this many optimiser steps (0 = never; a learning curve). ``log_every``: one
    train.csv row (the mean over the steps since the previous row) every this many steps and at
    every checkpoint.
    """

    out_dir: str = "runs/train"
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    decay_norm_and_bias: bool = False
    optimizer: Literal["adamw"] = "adamw"
    scheduler: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip_norm: float | None = None
    amp: bool = False
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    seed: int = 0
    deterministic: bool = True
    shuffle: bool = True
    num_workers: int = 0
    log_every: int = 10
    ckpt_every_steps: int = 0
    eval_every_epochs: int = 1
    eval_every_steps: int = 0
    find_unused_parameters: bool = False
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.epochs is None and self.max_steps is None:
            raise ConfigError("set epochs or max_steps (or both)")
        for name in ("epochs", "max_steps", "batch_size", "log_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        for name in ("warmup_steps", "num_workers", "ckpt_every_steps", "eval_every_epochs", "eval_every_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ConfigError(f"grad_clip_norm must be > 0 or null, got {self.grad_clip_norm}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be in [0, 1), got {self.betas}")

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimiser steps of the whole run, given the global batches per epoch."""
        limits = []
        if self.epochs is not None:
            limits.append(self.epochs * batches_per_epoch)
        if self.max_steps is not None:
            limits.append(self.max_steps)
        return min(limits)
