"""Fixtures of the x3kd_ros node tests: private rclpy contexts, spinning helpers, tiny checkpoints.

The checkpoints are untrained (seeded random initialisation) CI-size models written exactly as
``x3kd train`` writes them, so the nodes load them through the real ``Predictor`` /
``task_from_checkpoint`` path. What they detect is noise, which is all the node tests need: they
compare the nodes' published boxes with the same model called directly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest
import rclpy
import torch
import yaml
from rclpy.context import Context

from x3kd_core.paths import REPO_ROOT
from x3kd_ros.nodes.spin import spin_until as _node_spin_until

SPIN_DEADLINE_S = 20.0


@pytest.fixture
def ros_context(ros_network):
    """A private rclpy context (in the session's localhost-only domain), shut down after the test."""
    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        context.try_shutdown()


def _spin_until(executor, condition: Callable[[], bool], deadline_s: float = SPIN_DEADLINE_S) -> bool:
    """Spin ``executor`` until ``condition()`` holds or ``deadline_s`` passes; returns the condition."""
    return _node_spin_until(executor, condition, deadline_s)


def _spin_for(executor, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.02)


# Test modules are imported in importlib mode (setup.cfg), so they cannot import this file: the
# helpers are handed out as fixtures.
@pytest.fixture
def spin_until():
    """``spin_until(executor, condition, deadline_s=20)`` -> bool: spin until ``condition()`` holds."""
    return _spin_until


@pytest.fixture
def spin_for():
    """``spin_for(executor, seconds)``: spin for a fixed time (to see that nothing more arrives)."""
    return _spin_for


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def wait_until():
    """``wait_until(condition, timeout_s)`` -> bool: poll ``condition()`` every 10 ms, for nodes spun
    on another thread or in another process (no executor to spin here)."""
    return _wait_until


def _write_tiny_checkpoint(kind: str, model_yaml: str, path: Path, seed: int = 0) -> Path:
    """A ``last.pt``-format checkpoint of an untrained ``kind`` model on the tiny student's BEV grid."""
    from x3kd_core.config import from_dict, to_dict
    from x3kd_core.experiment import ExperimentConfig, build_task
    from x3kd_core.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    grid = yaml.safe_load((REPO_ROOT / "config/model/student_tiny.yaml").read_text())["grid"]
    model = yaml.safe_load((REPO_ROOT / model_yaml).read_text())
    exp = from_dict(ExperimentConfig, {"kind": kind, "model": model, "grid": grid, "train": {"max_steps": 1},
                                       "name": f"{kind}_tiny_untrained"})
    torch.manual_seed(seed)
    task = build_task(exp)
    state = {"format": CHECKPOINT_FORMAT, "kind": type(task).__name__, "config": to_dict(exp),
             "model": task.state_dict()}
    return save_checkpoint(path, state, keep_previous=False)


@pytest.fixture(scope="session")
def student_checkpoint(tmp_path_factory) -> Path:
    return _write_tiny_checkpoint("student", "config/model/student_tiny.yaml",
                                 tmp_path_factory.mktemp("ckpt") / "student_tiny.pt")


@pytest.fixture(scope="session")
def lidar_checkpoint(tmp_path_factory) -> Path:
    return _write_tiny_checkpoint("lidar", "config/model/lidar_tiny.yaml",
                                 tmp_path_factory.mktemp("ckpt") / "lidar_tiny.pt")


@pytest.fixture(scope="session")
def radar_checkpoint(tmp_path_factory) -> Path:
    return _write_tiny_checkpoint("radar", "config/model/radar_tiny.yaml",
                                 tmp_path_factory.mktemp("ckpt") / "radar_tiny.pt")
