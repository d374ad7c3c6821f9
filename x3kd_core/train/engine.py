"""The model-agnostic training loop: seeded, resumable to the bit, single- or multi-process.

The engine knows nothing about detection or distillation. It drives any ``nn.Module`` through a
small protocol:

* **Main loss.** ``model.training_losses(batch) -> dict[str, Tensor]`` (or a ``loss_fn(model,
  batch)`` given to :class:`Trainer`): named scalar terms, already weighted. The optimised loss is
  the sum of the terms whose names do not start with ``stat/``; names that do are diagnostics
  (e.g. X-FD's foreground MSE) that are logged but never summed or back-propagated. Every entry is
  logged under its own name, plus the optimised sum as ``loss``. Every trainable
  parameter that this loss updates must live inside ``model`` (teachers are frozen:
  ``requires_grad=False`` parameters are left out of the optimiser). The engine calls
  ``model.train()``; a frozen teacher inside ``model`` whose BatchNorm must stay in eval mode
  should override ``train()`` (or live outside ``model``, e.g. in a ``loss_fn`` closure).
* **Extra steps** (optional, e.g. the X-AT discriminator update): callables ``extra(batch, step)
  -> dict[str, float]`` run after each main optimiser step, in order; ``step`` is the number of
  main steps done (1-based). An extra step owns its module and optimiser, zeroes its own grads,
  and uses ``distributed.wrap_ddp`` for its module under torchrun. If it has
  ``state_dict()``/``load_state_dict()`` its state goes into the checkpoint under
  ``extra[<its name attribute, or extra_<index>>]``. What it returns is logged by name.
* **Validation** (optional): ``val_fn(model, epochs_done) -> dict[str, float]``, run by rank 0
  in ``model.eval()`` and ``torch.no_grad()`` every ``eval_every_epochs`` epochs and at the end.

Exact resume. A checkpoint holds the model, optimiser, LR scheduler, GradScaler, extra-step
states, the step / epoch / batch index within the epoch, and every rank's Python, NumPy and torch
(CPU and CUDA) RNG states. The sample order of epoch ``e`` is a function of ``(seed, e)``
(``distributed.ShardedBatchSampler``), a resumed epoch skips the batches already done without
loading them, and the data randomness of every batch (augmentation drawn from the global
Python / NumPy / torch RNGs inside ``__getitem__``) is seeded from its position
(:class:`PositionSeededDataset`), in the main process or in any DataLoader worker alike. So on the
CPU, training 2N steps gives bit-identical parameters to training N steps, stopping (or crashing
after a checkpoint at N) and resuming for N more, with any ``num_workers`` - see
``test/x3kd_core/train/test_engine.py``. (A dataset with its own private generator must seed it
itself; the engine only controls the global RNGs.)

Entry point for the CLI: :func:`run_training` (joins a torchrun job if launched by one).

One file on purpose (issue 14): it is one training loop (:class:`Trainer`) with the seeding,
RNG-state and device helpers that its bit-exact resume depends on; split, that contract would be
spread over several files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from x3kd_core.config import TrainConfig, to_dict
from x3kd_core.train import distributed as xdist
from x3kd_core.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from x3kd_core.train.logging import MetricLogger

_LOG = logging.getLogger("x3kd.train")

LossFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
ExtraStep = Callable[[Any, int], Mapping[str, float]]
ValFn = Callable[[nn.Module, int], Mapping[str, float]]

#: Name of the rolling checkpoint in ``out_dir`` (its previous version: ``last.prev.pt``).
LAST_CHECKPOINT = "last.pt"


# ----------------------------------------------------------------------------------------------
# learning rate


def lr_factor(config: TrainConfig, step: int, total_steps: int) -> float:
    """Multiplier of ``config.lr`` for the optimiser step with 0-based index ``step``."""
    warm = config.warmup_steps

    def cos_between(start: float, end: float, t: float) -> float:
        t = min(max(t, 0.0), 1.0)
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))

    if config.scheduler == "onecycle":
        first = 1.0 / 25.0
        if step < warm:
            return cos_between(first, 1.0, step / warm)
        return cos_between(1.0, first / 1e4, (step - warm) / max(1, total_steps - 1 - warm))
    if step < warm:
        return (step + 1) / warm
    if config.scheduler == "constant":
        return 1.0
    return cos_between(1.0, config.min_lr_ratio, (step - warm) / max(1, total_steps - warm))


# ----------------------------------------------------------------------------------------------
# seeding and RNG state


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Call before building the model, too."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batch_seed(seed: int, rank: int, epoch: int, batch: int) -> int:
    """Seed of the data randomness (augmentation) of one local batch: a function of position only."""
    return (seed * 1_000_003 + rank * 7_919 + epoch * 104_729 + batch * 15_485_863) % 2**31


class PositionSeededDataset(Dataset):
    """Fetches each batch with the global RNGs seeded by :func:`batch_seed`, then puts them back.

    So a sample's random augmentation depends on (seed, rank, epoch, batch index), never on which
    DataLoader worker loaded it or on what ran before: a mid-epoch resume reproduces it exactly,
    with or without workers, and the model's own randomness (dropout; main-process RNG) is not
    disturbed by data loading. Reached through the DataLoader's batched ``__getitems__`` path.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list:
        inner = getattr(self.dataset, "__getitems__", None)
        if not isinstance(indices, xdist.BatchIndices):
            return inner(indices) if inner else [self.dataset[i] for i in indices]
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        seed_everything(batch_seed(self.seed, indices.rank, indices.epoch, indices.batch))
        try:
            plain = list(indices)
            return inner(plain) if inner else [self.dataset[i] for i in plain]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker with (loader generator draw + worker_id); derive the others from it.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def rng_state(device: torch.device) -> dict:
    """All global RNG states of this process as tensors / numbers (weights_only-safe)."""
    version, py_state, gauss = random.getstate()
    kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python_version": int(version),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_kind": str(kind),
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()),
                     state["python_gauss"]))
    np.random.set_state((state["numpy_kind"], state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device):
    """Deterministic kernels for the duration of training; the previous global flags come back after.

    warn_only: an op without a deterministic implementation (some CUDA scatter/index_add paths)
    warns instead of failing the run.
    """
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if enabled:
        if device.type == "cuda":
            # Needed by cuBLAS for deterministic matmuls; only effective before its first use.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]


# ----------------------------------------------------------------------------------------------
# helpers


def move_to_device(obj: Any, device: torch.device) -> Any:
    """Tensors and objects with a ``.to(device)`` method (e.g. ``structures.Batch``) are moved;
    dicts, lists and tuples are walked; anything else (strings, numbers, None) is returned as is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device) for v in obj)
    to = getattr(obj, "to", None)
    if callable(to):
        return to(device)
    return obj


class _LossModule(nn.Module):
    """Puts the loss computation inside ``forward`` so DDP's gradient hooks see it."""

    def __init__(self, model: nn.Module, loss_fn: LossFn | None) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Mapping[str, torch.Tensor]:
        if self.loss_fn is not None:
            return self.loss_fn(self.model, batch)
        return self.model.training_losses(batch)


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 or config.decay_norm_and_bias else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _extra_name(extra: Any, index: int) -> str:
    return str(getattr(extra, "name", None) or f"extra_{index}")


@dataclass(frozen=True)
class TrainResult:
    """What :meth:`Trainer.fit` did. ``finished``: reached the configured length (not stopped early)."""

    step: int
    epoch: int
    total_steps: int
    finished: bool
    checkpoint: Path | None
    last_losses: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    #: step this process started from (0 for a fresh run, the checkpoint's step after --resume)
    start_step: int = 0
    #: seconds of fit() over every process of the run (this one's wall_s plus what the checkpoint it
    #: resumed from had recorded); equals wall_s for a run done in one go
    total_wall_s: float = 0.0


# ----------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """Trains ``model`` on ``train_dataset`` as configured; see the module docstring for the protocol.

    Args:
        model: the module to train; moved to ``device``. Its ``state_dict`` is what checkpoints hold.
        train_dataset: map-style dataset (``__len__``, ``__getitem__``).
        collate_fn: list of samples -> batch (anything :func:`move_to_device` can move).
        config: optimisation settings.
        device: training device; ignored when ``dist`` is given (its device is used).
        loss_fn: ``loss_fn(model, batch) -> dict[str, Tensor]``; default ``model.training_losses``.
        extra_steps: callables run after every main step (see module docstring).
        val_fn: ``val_fn(model, epochs_done) -> dict[str, float]``, rank 0 only.
        dist: process-group context from ``distributed.init_distributed``; None = single process.
        kind: model kind stored in / checked against checkpoints (default: the model's class name).
        model_config: plain-dict model config stored in checkpoints and compared on resume
            (default: ``to_dict(model.config)`` if the model has a dataclass ``config``).
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        collate_fn: Callable[[list], Any] | None,
        config: TrainConfig,
        device: str | torch.device = "cpu",
        *,
        loss_fn: LossFn | None = None,
        extra_steps: Sequence[ExtraStep] = (),
        val_fn: ValFn | None = None,
        dist: xdist.DistContext | None = None,
        kind: str | None = None,
        model_config: dict | None = None,
    ) -> None:
        self.config = config
        self.ctx = dist or xdist.DistContext(device=torch.device(device))
        self.device = self.ctx.device
        self.out_dir = Path(config.out_dir)
        self.model = model.to(self.device)
        if loss_fn is None and not callable(getattr(model, "training_losses", None)):
            raise TypeError(f"{type(model).__name__} has no training_losses(batch) method and no loss_fn was given")
        self.kind = kind or type(model).__name__
        if model_config is None and is_dataclass(getattr(model, "config", None)):
            model_config = to_dict(model.config)
        self.model_config = model_config
        self.extra_steps = list(extra_steps)
        names = [_extra_name(e, i) for i, e in enumerate(self.extra_steps)]
        if len(set(names)) != len(names):
            raise ValueError(f"extra steps need distinct names, got {names}")
        self.val_fn = val_fn

        self.sampler = xdist.ShardedBatchSampler(
            len(train_dataset), config.batch_size, self.ctx.rank, self.ctx.world_size,
            seed=config.seed, shuffle=config.shuffle,
        )
        # A dedicated generator: creating a loader iterator then never draws from the global torch
        # RNG, which would make a resumed run's RNG stream differ from the uninterrupted one.
        self._loader_gen = torch.Generator()
        self.loader = DataLoader(
            PositionSeededDataset(train_dataset, config.seed),
            batch_sampler=self.sampler,
            collate_fn=collate_fn,
            num_workers=config.num_workers,
            worker_init_fn=_seed_worker,
            generator=self._loader_gen,
            pin_memory=self.device.type == "cuda",
        )
        self.batches_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = config.total_steps(self.batches_per_epoch)

        self.loss_module = xdist.wrap_ddp(_LossModule(self.model, loss_fn), self.ctx,
                                          find_unused_parameters=config.find_unused_parameters)
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, config), lr=config.lr, betas=config.betas)
        total = self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(self.config, step, total)
        )
        self.amp_enabled = config.amp and self.device.type == "cuda"
        if config.amp and not self.amp_enabled:
            _LOG.warning("amp requested but training on %s: autocast/GradScaler are CUDA-only here, "
                         "training in float32", self.device)
        self.amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_enabled and self.amp_dtype == torch.float16)

        self.step = 0  # optimiser steps done
        self._wall_before_s = 0.0  # fit() seconds of earlier processes of this run (from the checkpoint)
        self._fit_t0 = time.perf_counter()
        self.epoch = 0  # index of the current epoch
        self.batch_in_epoch = 0  # global batches of the current epoch done
        self.logger: MetricLogger | None = None
        self._lr_used = config.lr

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / LAST_CHECKPOINT

    def state_dict(self, finished: bool) -> dict:
        """The full resumable state (call on every rank: it gathers the RNG states)."""
        rngs = xdist.all_gather_objects(rng_state(self.device), self.ctx)
        extra = {}
        for i, e in enumerate(self.extra_steps):
            if callable(getattr(e, "state_dict", None)):
                extra[_extra_name(e, i)] = e.state_dict()
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": self.kind,
            "config": self.model_config,
            "train_config": to_dict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "extra": extra,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "total_steps": self.total_steps,
            "world_size": self.ctx.world_size,
            "finished": finished,
            "rng": rngs,
            "train_wall_s": self._wall_before_s + (time.perf_counter() - self._fit_t0),
        }

    def _on_main(self, fn: Callable[[], None], what: str) -> None:
        """Run ``fn`` on rank 0 only; every rank waits for it and raises if it failed.

        A plain barrier would leave the other ranks waiting for the collective timeout when rank 0
        fails (full disk, a bug in val_fn); sharing a success flag makes them fail at once.
        """
        error: BaseException | None = None
        if self.ctx.is_main:
            try:
                fn()
            except Exception as err:  # re-raised below, after the others were told
                error = err
        if self.ctx.is_distributed:
            ok = xdist.all_reduce_mean(torch.tensor([0.0 if error else 1.0]), self.ctx)
            if error is None and ok.item() < 1.0:
                raise RuntimeError(f"rank 0 failed during {what}; see its log")
        if error is not None:
            raise error

    def save(self, finished: bool) -> Path:
        state = self.state_dict(finished)  # collective: every rank takes part
        self._on_main(lambda: save_checkpoint(self.checkpoint_path, state), "checkpoint writing")
        return self.checkpoint_path

    def load(self, path: str | Path) -> dict:
        """Restore everything from a checkpoint written by :meth:`save` (on every rank)."""
        state = load_checkpoint(path, self.kind, self.model_config, model=self.model)
        saved_cfg = state.get("train_config") or {}
        if saved_cfg.get("batch_size") != self.config.batch_size:
            raise CheckpointError(
                f"{path}: saved with batch_size {saved_cfg.get('batch_size')}, resuming with "
                f"{self.config.batch_size}; the position within the epoch would be wrong. Start a new "
                "out_dir instead."
            )
        for key in ("seed", "shuffle", "lr", "scheduler", "warmup_steps"):
            if key in saved_cfg and saved_cfg[key] != to_dict(self.config)[key]:
                _LOG.warning("resuming with %s=%r (checkpoint: %r): not an exact continuation",
                             key, getattr(self.config, key), saved_cfg[key])
        if state["total_steps"] != self.total_steps:
            _LOG.warning("run length changed from %d to %d steps; the LR schedule follows the new length",
                         state["total_steps"], self.total_steps)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for i, e in enumerate(self.extra_steps):
            name = _extra_name(e, i)
            if callable(getattr(e, "load_state_dict", None)):
                if name not in state["extra"]:
                    raise CheckpointError(f"{path}: no state for extra step '{name}' (has {sorted(state['extra'])})")
                e.load_state_dict(state["extra"][name])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        # Checkpoints written before this field existed: their earlier time is unknown (counted as 0).
        self._wall_before_s = float(state.get("train_wall_s", 0.0))
        rngs = state["rng"]
        if len(rngs) == self.ctx.world_size:
            set_rng_state(rngs[self.ctx.rank], self.device)
        else:
            _LOG.warning("checkpoint has RNG states of %d processes, this job has %d: re-seeding",
                         len(rngs), self.ctx.world_size)
            seed_everything(self.config.seed + self.ctx.rank + 1000 * self.step)
        return state

    # -- one step ------------------------------------------------------------------------------

    def _train_step(self, batch: Any) -> tuple[dict[str, float], float | None]:
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp_enabled):
            losses = self.loss_module(batch)
        if not isinstance(losses, Mapping) or not losses:
            raise TypeError(f"training losses must be a non-empty dict of scalar tensors, got {type(losses).__name__}")
        for name, value in losses.items():
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise TypeError(f"loss term '{name}' must be a scalar tensor, got {getattr(value, 'shape', value)!r}")
        terms = {name: value.float().reshape(()) for name, value in losses.items()}
        # Names starting with "stat/" are logged diagnostics (e.g. discriminator accuracy), not
        # loss terms: they never enter the optimised total.
        loss_names = [n for n in terms if not n.startswith("stat/")]
        if not loss_names:
            raise TypeError("training losses hold only 'stat/' diagnostics, no loss term")
        total = torch.stack([terms[n] for n in loss_names]).sum()
        finite = torch.isfinite(total).float().reshape(1)
        if self.ctx.is_distributed:
            # Agree before backward: a rank that stopped alone would leave the others hanging.
            finite = xdist.all_reduce_mean(finite, self.ctx)
        if finite.item() < 1.0:
            bad = [n for n, v in terms.items() if not torch.isfinite(v)]
            raise FloatingPointError(f"non-finite loss at step {self.step + 1}: terms {bad or '(on another rank)'}")
        self._lr_used = float(self.optimizer.param_groups[0]["lr"])
        self.scaler.scale(total).backward()
        grad_norm = None
        if cfg.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        values = {name: float(v.detach()) for name, v in terms.items()}
        values["loss"] = float(total.detach())
        return values, grad_norm

    def _validate(self, epochs_done: int) -> None:
        assert self.val_fn is not None and self.logger is not None
        val_fn, logger = self.val_fn, self.logger

        def run() -> None:
            self.model.eval()
            try:
                with torch.no_grad():
                    metrics = {k: float(v) for k, v in val_fn(self.model, epochs_done).items()}
            finally:
                self.model.train()
            _LOG.info("validation at step %d: %s", self.step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            logger.log_val(self.step, self.epoch, metrics)

        self._on_main(run, "validation")

    def _epoch_done(self) -> bool:
        return self.batch_in_epoch == self.batches_per_epoch

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, resume: bool | str | Path = True, stop_at_step: int | None = None) -> TrainResult:
        """Train until ``total_steps`` (or ``stop_at_step``), checkpointing as configured.

        Args:
            resume: True: continue from ``out_dir/last.pt`` (or its ``.prev`` copy) if there is one;
                a path: continue from that checkpoint (must exist); False: start fresh.
            stop_at_step: stop (with a checkpoint) once this many steps are done, e.g. to fit a
                time slot; a later ``fit()`` continues exactly.
        """
        cfg = self.config
        t_start = self._fit_t0 = time.perf_counter()
        self._wall_before_s = 0.0
        resume_from: Path | None = None
        if resume is True:
            resume_from = latest_checkpoint(self.checkpoint_path)
        elif resume:
            resume_from = Path(resume)
            if not resume_from.is_file():
                raise CheckpointError(f"checkpoint not found: {resume_from}")
        elif self.checkpoint_path.exists():
            _LOG.warning("starting fresh in %s; the existing %s will be replaced", self.out_dir, LAST_CHECKPOINT)

        with deterministic_mode(cfg.deterministic, self.device):
            if resume_from is not None:
                self.load(resume_from)
                _LOG.info("resumed from %s at step %d (epoch %d, batch %d)", resume_from, self.step,
                          self.epoch, self.batch_in_epoch)
            else:
                seed_everything(cfg.seed + self.ctx.rank)
            # Rows after the resume step (all rows, for a fresh start) belong to a run that is
            # being redone or replaced; the logger drops them.
            self.logger = MetricLogger(self.out_dir, enabled=self.ctx.is_main, resume_step=self.step,
                                       tensorboard=cfg.tensorboard)
            start_step = self.step
            try:
                result = self._loop(stop_at_step, t_start)
            finally:
                self.logger.close()
            return replace(result, start_step=start_step, total_wall_s=self._wall_before_s + result.wall_s)

    def _loop(self, stop_at_step: int | None, t_start: float) -> TrainResult:
        cfg = self.config
        end = self.total_steps if stop_at_step is None else min(stop_at_step, self.total_steps)
        if self._epoch_done():
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        if self.step >= end:
            _LOG.info("nothing to do: at step %d of %d", self.step, end)
            return TrainResult(self.step, self.epoch, self.total_steps, self.step >= self.total_steps,
                               self.checkpoint_path if self.checkpoint_path.exists() else None,
                               wall_s=time.perf_counter() - t_start)
        if self.ctx.is_main:
            _LOG.info("training %s on %s x%d: %d samples/epoch in %d global batches of %d, steps %d -> %d of %d",
                      self.kind, self.device, self.ctx.world_size, self.sampler.num_samples,
                      self.batches_per_epoch, cfg.batch_size, self.step, end, self.total_steps)
        show_bar = self.ctx.is_main and sys.stderr.isatty() and not os.environ.get("CI")
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.total_steps, initial=self.step, disable=not show_bar, desc="train",
                       dynamic_ncols=True)
        except ImportError:  # pragma: no cover - tqdm is a dependency; the loop does not need it
            bar = None

        self.model.train()
        sums: dict[str, float] = {}
        window_steps, window_t0 = 0, time.perf_counter()
        last: dict[str, float] = {}
        saved_at = -1
        progress_t = time.perf_counter()
        try:
            while self.step < end:
                self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
                # Worker base seeds from position only (batches are re-seeded anyway, see
                # PositionSeededDataset; this covers randomness outside __getitems__).
                self._loader_gen.manual_seed(batch_seed(cfg.seed, self.ctx.rank, self.epoch, self.batch_in_epoch))
                for batch in self.loader:
                    batch = move_to_device(batch, self.device)
                    values, grad_norm = self._train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    if grad_norm is not None:
                        values["grad_norm"] = grad_norm
                    for extra in self.extra_steps:
                        for name, v in (extra(batch, self.step) or {}).items():
                            values[name] = float(v)
                    for name, v in values.items():
                        sums[name] = sums.get(name, 0.0) + v
                    window_steps += 1
                    if bar is not None:
                        bar.update(1)

                    ckpt_due = self.step == end or (cfg.ckpt_every_steps > 0
                                                    and self.step % cfg.ckpt_every_steps == 0)
                    # Closing the log window at checkpoints too: a run resumed from one then logs
                    # the same rows as the uninterrupted run.
                    if self.step % cfg.log_every == 0 or ckpt_due:
                        last = self._log(sums, window_steps, time.perf_counter() - window_t0)
                        if show_bar and bar is not None:
                            bar.set_postfix(loss=f"{last['loss']:.4g}", lr=f"{last['lr']:.3g}")
                        elif self.ctx.is_main and (time.perf_counter() - progress_t >= PROGRESS_EVERY_S
                                                   or self.step >= end):
                            _LOG.info("%s", progress_line(self.step, self.total_steps, last, cfg.batch_size,
                                                          self.ctx.world_size))
                            progress_t = time.perf_counter()
                        sums, window_steps, window_t0 = {}, 0, time.perf_counter()

                    if self.val_fn is not None:
                        epochs_done = self.epoch + int(self._epoch_done())
                        due = (self._epoch_done() and cfg.eval_every_epochs > 0
                               and epochs_done % cfg.eval_every_epochs == 0)
                        due = due or (cfg.eval_every_steps > 0 and self.step % cfg.eval_every_steps == 0)
                        if due or self.step == self.total_steps:
                            self._validate(epochs_done)
                    if ckpt_due:
                        self.save(finished=self.step >= self.total_steps)
                        saved_at = self.step
                    if self.step >= end:
                        break
                if self._epoch_done():
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        finally:
            if bar is not None:
                bar.close()
        return TrainResult(
            step=self.step,
            epoch=self.epoch,
            total_steps=self.total_steps,
            finished=self.step >= self.total_steps,
            checkpoint=self.checkpoint_path if saved_at >= 0 else None,
            last_losses=last,
            wall_s=time.perf_counter() - t_start,
        )

    def _log(self, sums: dict[str, float], steps: int, seconds: float) -> dict[str, float]:
        """Average the window's values (over steps, then ranks) and write one row on rank 0."""
        names = list(sums)
        means = torch.tensor([sums[n] / steps for n in names], dtype=torch.float64)
        means = xdist.all_reduce_mean(means, self.ctx)
        row = {"lr": self._lr_used}  # the LR of the logged (last) step, before the scheduler moved on
        # Loss terms first (model order), then the total, then anything else.
        row.update({n: float(m) for n, m in zip(names, means.tolist())})
        row["sec_per_step"] = seconds / steps
        assert self.logger is not None
        self.logger.log_train(self.step, self.epoch, row)
        return row


#: Seconds between progress lines in the log when no progress bar is shown (not a TTY, or CI).
PROGRESS_EVERY_S = 30.0


def progress_line(step: int, total_steps: int, row: dict[str, float], batch_size: int, world_size: int = 1) -> str:
    """One human-readable progress line: step, share done, loss, lr, samples/s and ETA.

    ``row`` is a logged row (``loss``, ``lr``, ``sec_per_step`` of the last log window); the ETA
    assumes the remaining steps cost what the last window's did.
    """
    sec = float(row.get("sec_per_step", float("nan")))
    rate = batch_size * world_size / sec if sec > 0 else float("nan")
    eta_s = max(total_steps - step, 0) * sec if sec > 0 else float("nan")
    eta = "?" if eta_s != eta_s else f"{int(eta_s // 60)}m{int(eta_s % 60):02d}s"
    return (f"step {step}/{total_steps} ({100.0 * step / max(total_steps, 1):.0f}%) "
            f"loss {row.get('loss', float('nan')):.4g} lr {row.get('lr', float('nan')):.3g} "
            f"{rate:.2f} samples/s ETA {eta}")


# ----------------------------------------------------------------------------------------------
# entry point for the CLI


def run_training(
    model: nn.Module,
    train_dataset: Dataset,
    collate_fn: Callable[[list], Any] | None,
    config: TrainConfig,
    *,
    device: str | torch.device | None = None,
    loss_fn: LossFn | None = None,
    extra_steps: Sequence[ExtraStep] = (),
    val_fn: ValFn | None = None,
    resume: bool | str | Path = True,
    stop_at_step: int | None = None,
    kind: str | None = None,
    model_config: dict | None = None,
) -> TrainResult:
    """Train ``model``: single process, or one rank of a ``torchrun`` job when launched by torchrun.

    What the CLI does: ``seed_everything(config.seed)``, build the model, dataset and collate
    function, then call this. Under ``torchrun --nproc_per_node K`` every process runs the same
    command; this joins the process group (NCCL on CUDA, Gloo on CPU), gives each process its
    GPU, and leaves the group at the end. ``device`` None picks CUDA when available. The other
    arguments are :class:`Trainer`'s / :meth:`Trainer.fit`'s.

    Returns:
        :class:`TrainResult`; the weights are in ``model`` and in ``<out_dir>/last.pt``.
    """
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    ctx = xdist.init_distributed(device)
    try:
        trainer = Trainer(model, train_dataset, collate_fn, config, loss_fn=loss_fn, extra_steps=extra_steps,
                          val_fn=val_fn, dist=ctx, kind=kind, model_config=model_config)
        return trainer.fit(resume=resume, stop_at_step=stop_at_step)
    finally:
        if owns_group:
            xdist.cleanup_distributed()
