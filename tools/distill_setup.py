"""Shared set-up of the distillation tools (bench_distill_step.py, diag_x_at.py,
diag_grid_alignment.py): the x3kd_small experiment with exactly some components, and its task."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, also without an install
from x3kd_core.paths import REPO_ROOT  # noqa: E402

from x3kd_core.cli import distill_overrides  # noqa: E402
from x3kd_core.experiment import ExperimentConfig, build_training_task, load_experiment  # noqa: E402

X3KD_SMALL = REPO_ROOT / "config" / "train" / "x3kd_small.yaml"


def component_experiment(components: Optional[Sequence[str]], cache: Optional[str],
                         experiment: str | Path = X3KD_SMALL) -> ExperimentConfig:
    """``experiment`` without augmentation, one step, exactly ``components`` enabled (None: no
    distillation), teachers read from ``cache`` when given (then with the student's 1 LiDAR sweep)."""
    overrides = ["augment.image={}", "augment.bev={}", "train.epochs=null", "train.max_steps=1",
                 *distill_overrides(",".join(components) if components else "none")]
    if cache:
        overrides += [f"teachers.cache={cache}", "data.lidar_sweeps=1"]
    return load_experiment(experiment, overrides)


def trained_task(exp: ExperimentConfig, checkpoint: str, *, student_only: bool = False) -> torch.nn.Module:
    """The training task of ``exp`` with the weights of a run's ``last.pt``, in eval mode.

    student_only: load only the ``student.`` weights (a run trained without ``exp``'s
    distillation modules); otherwise every weight must fit.
    """
    task, _ = build_training_task(exp)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    if student_only:
        task.load_state_dict({k: v for k, v in state.items() if k.startswith("student.")}, strict=False)
    else:
        task.load_state_dict(state, strict=True)
    return task.eval()
