"""The checkpoint file format: crash-safe files that load with ``torch.load(weights_only=True)``.

Training writes them (:mod:`x3kd_core.train.engine`) and deployment reads them
(:mod:`x3kd_core.experiment.loader`); this module is the format both share, so reading one does not
import the training code.

A checkpoint is a plain dict: tensors, numbers, strings, bools, ``None`` and lists / tuples /
dicts of those. No pickled classes, so loading never executes code from the file and a checkpoint
stays readable after the Python classes that wrote it are renamed. Configs are therefore stored
as plain dicts (``x3kd_core.config.to_dict``) and RNG states as integer tensors.

Writing is atomic: the bytes go to a temporary file in the same directory, are flushed and
fsync'ed, and only then does ``os.replace`` move them over the target. The file it replaces is
kept as ``<name>.prev.pt``. A crash (or an exception, or a full disk) in the middle of a write
therefore never destroys the last good checkpoint; :func:`latest_checkpoint` falls back to the
previous file if the newest is missing or unreadable.

Keys the engine writes (see ``x3kd_core.train.engine``), all required by :func:`load_checkpoint`:

=================  ==========================================================================
``format``          ``CHECKPOINT_FORMAT`` (int)
``kind``            model kind, e.g. ``"BevStudent"`` (str); checked against ``expected_kind``
``config``          the model's config as a plain dict, or ``None``
``model``           ``model.state_dict()``
=================  ==========================================================================
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

_LOG = logging.getLogger("x3kd.train")

#: Bumped when the layout of the dict changes incompatibly.
CHECKPOINT_FORMAT = 1

#: Suffix of the copy of the previous checkpoint kept beside the newest one.
PREV_SUFFIX = ".prev"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


# ----------------------------------------------------------------------------------------------
# saving


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError naming the first value ``torch.load(weights_only=True)`` would refuse.

    Checked before writing so that a bad state fails at save time, with a key path, instead of
    producing a file that only fails when someone tries to resume from it.
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Tensor, torch.Size,
                                           torch.dtype, torch.device)):
        return
    if isinstance(value, (dict, OrderedDict)):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: dict key {key!r} of type {type(key).__name__} is not a str/int")
            _check_plain(item, f"{where}.{key}" if where else str(key))
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where or '<root>'}: {type(value).__module__}.{type(value).__qualname__} cannot be stored in a "
        "weights_only checkpoint; convert it to tensors / numbers / strings / dicts / lists first"
    )


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable (POSIX); not supported on every platform/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def previous_path(path: str | Path) -> Path:
    """``run/last.pt`` -> ``run/last.prev.pt``: where :func:`save_checkpoint` keeps the old file."""
    path = Path(path)
    return path.with_name(path.stem + PREV_SUFFIX + path.suffix)


def save_checkpoint(path: str | Path, state: dict, keep_previous: bool = True) -> Path:
    """Atomically write ``state`` to ``path``; the replaced file is kept as ``<stem>.prev<suffix>``.

    Args:
        path: target file, e.g. ``runs/x/last.pt``; parent directories are created.
        state: plain dict (see module docstring); validated before anything is written.
        keep_previous: move an existing ``path`` to :func:`previous_path` instead of overwriting it.

    Raises:
        TypeError: ``state`` holds something ``weights_only`` loading would refuse (key path named).
        Any error from writing (full disk, ...) propagates; ``path`` and its previous copy are then
        unchanged and the temporary file is removed.
    """
    path = Path(path)
    _check_plain(state, "")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.exists():
            # Between these two renames only the .prev file exists; latest_checkpoint() handles it.
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


# ----------------------------------------------------------------------------------------------
# loading


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict of ``path`` (tensors on the CPU), checked to be an x3kd checkpoint of
    this :data:`CHECKPOINT_FORMAT`; its ``kind`` is not checked (see :func:`load_checkpoint`).

    Raises:
        CheckpointError: missing, corrupt or truncated file, or not an x3kd checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refusals are UnpicklingErrors too; their message says which global it was.
        raise CheckpointError(
            f"checkpoint {path} is corrupt or holds objects that weights_only loading refuses: {err}"
        ) from None
    except Exception as err:  # arbitrary bytes fail anywhere in the unpickler (IndexError, ...)
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or "kind" not in state or "model" not in state:
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not an x3kd checkpoint (no 'kind'/'model' entries; found {keys})")
    fmt = state.get("format")
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {fmt!r}, this code reads format {CHECKPOINT_FORMAT}")
    return state


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in value:
            out.update(_flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        if not value and prefix:
            out[prefix] = {}
        return out
    if isinstance(value, tuple):
        value = list(value)  # a YAML list and a dataclass tuple are the same config value
    return {prefix: value}


def config_differences(stored: dict | None, expected: dict | None) -> list[tuple[str, Any, Any]]:
    """Key paths whose values differ, as ``(key, stored_value, expected_value)``, sorted by key.

    A key present on one side only shows ``"<missing>"`` on the other.
    """
    a, b = _flatten(stored or {}), _flatten(expected or {})
    missing = "<missing>"
    return [
        (key, a.get(key, missing), b.get(key, missing))
        for key in sorted(set(a) | set(b))
        if a.get(key, missing) != b.get(key, missing)
    ]


def _format_diffs(diffs: list[tuple[str, Any, Any]], limit: int = 3) -> str:
    shown = ", ".join(f"{k}: checkpoint {a!r} vs expected {b!r}" for k, a, b in diffs[:limit])
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return shown + more


def check_state_dict_fits(state_dict: dict, model: nn.Module, where: str = "checkpoint") -> None:
    """Raise CheckpointError naming the first missing/unexpected key or the first shape mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    for key, tensor in state_dict.items():
        if key in own and tuple(tensor.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{where}: parameter '{key}' has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(own[key].shape)} in the model"
            )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {missing[:3]}" + (" ..." if len(missing) > 3 else ""))
        if unexpected:
            parts.append(f"not in the model: {unexpected[:3]}" + (" ..." if len(unexpected) > 3 else ""))
        raise CheckpointError(f"{where}: state dict keys differ; " + "; ".join(parts))


def load_checkpoint(
    path: str | Path,
    expected_kind: str | tuple[str, ...],
    expected_config: dict | None = None,
    model: nn.Module | None = None,
) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` and check it fits what the caller has.

    Args:
        path: checkpoint file.
        expected_kind: the model kind the caller builds (compared with ``state["kind"]``), or a
            tuple of kinds it accepts (the file is read once whichever it holds).
        expected_config: the caller's model config as a plain dict, or None to skip the check.
        model: the module the weights are meant for, or None. When given, every parameter and
            buffer shape is compared, and config differences that leave all shapes equal (a loss
            weight, a threshold) are only logged. Without a model any config difference is an
            error, because nothing shows it to be harmless.

    Returns:
        The checkpoint dict, tensors on the CPU. Nothing is loaded into ``model``.

    Raises:
        CheckpointError: missing file, corrupt/truncated file, not an x3kd checkpoint, wrong kind,
            or a config / shape mismatch (the message names the first key or parameter and both
            values / shapes).
    """
    path = Path(path)
    state = read_checkpoint(path)
    kinds = (expected_kind,) if isinstance(expected_kind, str) else tuple(expected_kind)
    if state["kind"] not in kinds:
        raise CheckpointError(f"{path} holds a '{state['kind']}' model, expected '{' or '.join(kinds)}'")
    diffs = config_differences(state.get("config"), expected_config) if expected_config is not None else []
    if model is not None:
        try:
            check_state_dict_fits(state["model"], model, where=str(path))
        except CheckpointError as err:
            cause = f"; config differences: {_format_diffs(diffs)}" if diffs else ""
            raise CheckpointError(f"{err}{cause}") from None
        if diffs:
            _LOG.warning("%s: config differs but all tensor shapes fit: %s", path, _format_diffs(diffs))
    elif diffs:
        raise CheckpointError(f"{path}: config mismatch at {_format_diffs(diffs)}")
    return state


def latest_checkpoint(path: str | Path) -> Path | None:
    """The newest readable file among ``path`` and its previous copy, or None if neither exists.

    Only the container is checked (it loads); kind/config checks are :func:`load_checkpoint`'s job.
    A corrupt newest file with a good previous one logs a warning and returns the previous one.
    """
    path = Path(path)
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            continue
        try:
            read_checkpoint(candidate)
        except CheckpointError as err:
            _LOG.warning("skipping unreadable checkpoint: %s", err)
            continue
        return candidate
    return None
