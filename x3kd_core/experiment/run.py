"""One training run of an experiment: build, train (the engine), evaluate, write ``metrics.json``.

Checkpoints written here store the whole experiment as their ``config`` (plain dict), so a
checkpoint alone rebuilds its model (:func:`x3kd_core.experiment.loader.load_model`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from x3kd_core.config import to_dict
from x3kd_core.experiment.config import ExperimentConfig
from x3kd_core.experiment.data import build_train_dataset, open_nuscenes
from x3kd_core.experiment.evaluate import evaluate_task, headline
from x3kd_core.experiment.teachers import build_training_task

__all__ = ["ExperimentResult", "train_experiment"]


@dataclass
class ExperimentResult:
    """What :func:`train_experiment` did: the engine's result plus the final evaluation."""

    out_dir: Path
    checkpoint: Optional[Path]
    step: int
    total_steps: int
    finished: bool
    train_wall_s: float  # fit() seconds over every process of the run (resumes included)
    last_losses: dict
    metrics: dict
    metrics_path: Path
    start_step: int = 0  # step this process started from (> 0 after a resume)


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
    nusc = open_nuscenes(exp)
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
        "train_wall_s": result.total_wall_s,
        "train_wall_s_this_process": result.wall_s,
        "start_step": result.start_step,
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
        finished=result.finished, train_wall_s=result.total_wall_s, last_losses=result.last_losses, metrics=metrics,
        metrics_path=metrics_path, start_step=result.start_step,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
