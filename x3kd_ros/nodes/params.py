"""Node parameters: declared with a description and a constraint, read-only, all checked
before a node builds anything.

A node lists its parameters as :class:`ParamSpec` (name, default, description, constraint text,
check) and calls :func:`declare_parameters`. Every parameter is declared with a
``ParameterDescriptor`` (so ``ros2 param describe`` shows the description and the constraint)
and read-only (a node does not rebuild its subscriptions at run time). Bad values raise
:class:`ParameterError` listing *every* offending parameter with its value and what was
expected, and ``main()`` exits with code 2. Doubles accept integers (``-p score_threshold:=0``
works; rclpy alone would refuse it). Devices (:func:`resolve_device`) and config files
(:func:`resolve_config_file`) named by parameters are resolved here too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterUninitializedException,
)

from x3kd_core.paths import REPO_ROOT, find_file
from x3kd_ros.share import share_dir

__all__ = [
    "ParameterError",
    "ParamSpec",
    "declare_parameters",
    "one_of",
    "in_range",
    "non_empty",
    "same_length",
    "check_device",
    "resolve_device",
    "config_search_dirs",
    "resolve_config_file",
]


class ParameterError(ValueError):
    """One or more node parameters are invalid; the text names each parameter, value and rule."""


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter.

    Fields:
        name: parameter name (dots group them: ``sync.slop_s``).
        default: default value; its Python type fixes the parameter type (bool, int, float, str,
            or a non-empty list of str / float / int).
        description: shown by ``ros2 param describe``; say the unit.
        constraints: the rule in words (``ParameterDescriptor.additional_constraints``).
        check: returns an error text for a bad value, None for a good one.
    """

    name: str
    default: Any
    description: str
    constraints: str = ""
    check: Optional[Callable[[Any], Optional[str]]] = None


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "integer"
    if isinstance(default, float):
        return "double"
    if isinstance(default, str):
        return "string"
    if isinstance(default, (list, tuple)) and default:
        return _kind(default[0]) + "_array"
    raise TypeError(f"unsupported parameter default {default!r} (use bool, int, float, str or a non-empty list)")


def _coerce(kind: str, value: Any) -> Any:
    """The value as the spec's Python type; raises ValueError with a readable reason."""
    if kind == "double":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if kind == "double_array":
        values = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else None
        if values is None or any(isinstance(v, (bool, str)) for v in values):
            raise ValueError(f"expected a list of numbers, got {value!r}")
        return [float(v) for v in values]
    if kind.endswith("_array"):
        return list(value)
    return value


def declare_parameters(node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare ``specs`` on ``node`` (read-only, with descriptors), read and check them.

    Returns:
        name -> value (doubles as float, arrays as lists).

    Raises:
        ParameterError: listing every parameter whose override has the wrong type or fails its check.
    """
    values: dict[str, Any] = {}
    errors: list[str] = []
    for spec in specs:
        kind = _kind(spec.default)
        descriptor = ParameterDescriptor(
            name=spec.name,
            description=spec.description,
            additional_constraints=spec.constraints,
            read_only=True,
            # Numbers are checked here instead, so that an integer given for a double is accepted.
            dynamic_typing=kind in ("double", "double_array"),
        )
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        try:
            node.declare_parameter(spec.name, default, descriptor)
            raw = node.get_parameter(spec.name).value
        except (InvalidParameterTypeException, InvalidParameterValueException, ParameterUninitializedException) as err:
            reason = str(err).split(": ")[0] if isinstance(err, InvalidParameterTypeException) else str(err)
            errors.append(f"{spec.name}: expected {kind.replace('_', ' ')} (default {spec.default!r}); {reason}")
            continue
        try:
            value = _coerce(kind, raw)
        except ValueError as err:
            errors.append(f"{spec.name} = {raw!r}: {err}")
            continue
        problem = spec.check(value) if spec.check is not None else None
        if problem:
            errors.append(f"{spec.name} = {value!r}: {problem}")
            continue
        values[spec.name] = value
    if errors:
        raise ParameterError(
            f"node {node.get_fully_qualified_name()}: invalid parameters:\n  - " + "\n  - ".join(errors)
        )
    return values


def one_of(*choices: str) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v in choices else f"must be one of {', '.join(repr(c) for c in choices)}"


def in_range(low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[Any], Optional[str]]:
    """Check ``low <(=) v <(=) high`` (None = unbounded), element-wise for lists."""

    def check(value):
        for v in value if isinstance(value, list) else [value]:
            if not math.isfinite(float(v)):
                return "must be finite"
            if low is not None and (v <= low if low_open else v < low):
                return f"must be {'>' if low_open else '>='} {low}"
            if high is not None and (v >= high if high_open else v > high):
                return f"must be {'<' if high_open else '<='} {high}"
        return None

    return check


def non_empty(value) -> Optional[str]:
    if isinstance(value, list):
        if not value:
            return "must not be empty"
        if any(not str(v).strip() for v in value):
            return "must not contain empty strings"
        if len(set(value)) != len(value):
            return "must not repeat an entry"
        return None
    return None if str(value).strip() else "must not be empty"


def same_length(other_name: str, expected: int) -> Callable[[Any], Optional[str]]:
    return lambda v: None if len(v) == expected else f"needs one entry per {other_name} ({expected}), got {len(v)}"


def check_device(text: str) -> Optional[str]:
    """Error text for a device string that cannot be used on this machine, else None."""
    try:
        resolve_device(text)
    except ParameterError as err:
        return str(err)
    return None


def resolve_device(text: str):
    """``"auto"`` -> CUDA when available else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Raises:
        ParameterError: an unknown device, or CUDA asked for where there is none.
    """
    import torch

    from x3kd_core.inference import default_device

    text = str(text).strip().lower()
    if text in ("", "auto"):
        return default_device()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ParameterError(f"unknown device {text!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ParameterError(f"device {text!r} is not supported (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(f"device {text!r} asked for, but CUDA is not available here (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ParameterError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def config_search_dirs() -> list[Path]:
    """Folders a relative config file name is looked up in: the working directory, the installed
    package's ``share/x3kd_ros/config/ros`` and this checkout's ``config/ros``."""
    share = share_dir()
    return [Path.cwd(), *([share / "config" / "ros"] if share is not None else []), REPO_ROOT / "config" / "ros"]


def resolve_config_file(path: str) -> Path:
    """An absolute path as is; a relative one in :func:`config_search_dirs` order (first hit).

    Raises:
        ParameterError: not found anywhere (the folders tried are named).
    """
    candidate = Path(os.path.expanduser(path))
    folders = [] if candidate.is_absolute() else config_search_dirs()
    found = find_file(candidate, folders)
    if found is not None:
        return found if candidate.is_absolute() else found.resolve()
    if candidate.is_absolute():
        raise ParameterError(f"file not found: {candidate}")
    raise ParameterError(f"file {path!r} not found (looked in {', '.join(str(f) for f in folders)})")
