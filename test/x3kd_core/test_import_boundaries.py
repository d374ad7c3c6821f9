"""Import boundaries: deployment loads models without training code, x3kd_core never imports ROS.

Each check runs in a fresh interpreter (``sys.modules`` of the test process already holds
everything), and names the modules that crossed the boundary.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from x3kd_core.paths import REPO_ROOT

#: Module prefixes a model loaded for inference must not pull in.
TRAINING = ("x3kd_core.train", "x3kd_core.experiment.run", "x3kd_core.experiment.teachers",
            "x3kd_core.distill.x_", "x3kd_core.distill.losses", "x3kd_core.distill.teacher_cache")
#: Module prefixes x3kd_core must not pull in.
ROS = ("x3kd_ros", "rclpy")


def _loaded_after(code: str) -> list[str]:
    """Sorted ``sys.modules`` of a fresh interpreter after running ``code``."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _crossing(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if m.startswith(prefixes)]


def _tiny_checkpoint(kind: str, model_yaml: str, path: Path) -> Path:
    from x3kd_core.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from x3kd_core.config import from_dict, to_dict
    from x3kd_core.experiment import ExperimentConfig, build_task

    grid = yaml.safe_load((REPO_ROOT / "config/model/student_tiny.yaml").read_text())["grid"]
    model = yaml.safe_load((REPO_ROOT / model_yaml).read_text())
    exp = from_dict(ExperimentConfig, {"kind": kind, "model": model, "grid": grid, "train": {"max_steps": 1}})
    torch.manual_seed(0)
    task = build_task(exp)
    return save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "kind": type(task).__name__, "config": to_dict(exp),
                                  "model": task.state_dict()}, keep_previous=False)


def test_loading_models_for_inference_imports_no_training_and_no_ros(tmp_path):
    student = _tiny_checkpoint("student", "config/model/student_tiny.yaml", tmp_path / "student.pt")
    lidar = _tiny_checkpoint("lidar", "config/model/lidar_tiny.yaml", tmp_path / "lidar.pt")
    modules = _loaded_after(f"""
import numpy as np
import x3kd_core, x3kd_core.inference
from x3kd_core.inference import Predictor, TeacherPredictor
p = Predictor.from_checkpoint({str(student)!r}, device="cpu")
t = TeacherPredictor.from_checkpoint({str(lidar)!r}, "lidar", device="cpu")
from x3kd_core.structures import Boxes3D
assert isinstance(t.predict(np.zeros((0, 5), np.float32)), Boxes3D) and p.image_hw == (48, 128)
""")
    assert "x3kd_core.experiment.loader" in modules  # the check ran the real loading path
    assert _crossing(modules, TRAINING) == []
    assert _crossing(modules, ROS) == []


def test_importing_every_x3kd_core_module_imports_no_ros():
    modules = _loaded_after("""
import importlib, pkgutil
import x3kd_core
for info in pkgutil.walk_packages(x3kd_core.__path__, "x3kd_core."):
    try:
        importlib.import_module(info.name)
    except ImportError as err:  # an optional extra (onnxruntime, mmdet3d) that is not installed
        if (err.name or "").startswith("x3kd"):
            raise
""")
    assert "x3kd_core.cli" in modules and "x3kd_core.demo" in modules
    assert _crossing(modules, ROS) == []


def test_no_x3kd_core_source_names_ros_modules():
    """The static side of the boundary: no import statement of x3kd_ros / rclpy anywhere in x3kd_core."""
    offenders = []
    for path in sorted((REPO_ROOT / "x3kd_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(REPO_ROOT)}:{node.lineno} {n}" for n in names if n.startswith(ROS)]
    assert offenders == []


def test_x3kd_bag_without_x3kd_ros_says_how_to_install_it(monkeypatch, capsys):
    import importlib.metadata

    from x3kd_core import cli

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kwargs: [])
    assert cli.main(["bag", "write", "--dataroot", "d", "--out", "b"]) == 2
    err = capsys.readouterr().err
    assert "x3kd bag: error: 'x3kd bag' is a ROS 2 command of the x3kd_ros package" in err
    assert "install x3kd_ros" in err


def test_x3kd_bag_comes_from_the_x3kd_ros_entry_point(capsys):
    from x3kd_core import cli

    for argv, expected in ((["bag", "--help"], "{write,eval}"), (["bag", "write", "--help"], "--dataroot")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 0
        assert expected in capsys.readouterr().out
