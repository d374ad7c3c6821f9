"""tools/rerun_ablation.sh: the X3KD ablation on another world, from an empty folder to the report
(issue 12), at smoke size: config/data/synthetic_tiny_other.yaml (another seed and camera
resolution than the tests' tiny world), one-step teachers, config/ablation/x3kd_tiny.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from x3kd_core.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "tools" / "rerun_ablation.sh"


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = ["bash", str(SCRIPT), "--world", "config/data/synthetic_tiny_other.yaml", "--out", str(out),
           "--plan", "config/ablation/x3kd_tiny.yaml",
           "--lidar-experiment", "config/train/lidar_tiny.yaml",
           "--instance-seg-experiment", "config/train/instance_seg_tiny.yaml",
           "--teacher-set", "train.max_steps=1", "--teacher-set", "train.epochs=null", "--device", "cpu", *extra]
    env = dict(os.environ, X3KD=f"{sys.executable} -m x3kd_core.cli")
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_from_an_empty_folder_to_the_report_on_another_world(tmp_path):
    out = tmp_path / "other_world"
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    world = yaml.safe_load((out / "world" / "synth_config.yaml").read_text())
    assert world["seed"] == 7 and world["image_width"] == 240  # the other world, not the tests' tiny one
    for teacher in ("lidar", "instance_seg"):
        assert (out / "teachers" / teacher / "last.pt").is_file()
        record = json.loads((out / "teachers" / f"{teacher}.json").read_text())
        assert record["dataset"]["dataroot"] == str(out / "world")
    for variant in ("baseline", "x3kd"):
        record = json.loads((out / "results" / variant / "seed0.json").read_text())
        assert record["dataset"]["dataroot"] == str(out / "world")
        assert f"teachers.lidar={out / 'teachers' / 'lidar' / 'last.pt'}" in record["overrides"]
        assert "--set data.dataroot=" in record["command"] and f"--results {out / 'results'}" in record["command"]
        assert record["steps"] == 2
    x3kd = json.loads((out / "results" / "x3kd" / "seed0.json").read_text())
    assert x3kd["distill"] == ["x_is", "x_fd", "x_at", "x_od"]
    assert (out / "teacher_cache" / "lidar").is_dir() and (out / "teacher_cache" / "instance_seg").is_dir()
    report = json.loads((out / "results" / "report.json").read_text())
    assert set(report["variants"]) == {"baseline", "x3kd"}
    assert (out / "results" / "report.png").stat().st_size > 1000

    # Run again: every step's output exists, so nothing is trained again.
    again = _run(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "x3kd_core.cli train" not in again.stderr and "data synth" not in again.stderr
    assert "0 runs to do" in again.stderr


def test_bad_arguments_are_named(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "--world and --out are required" in proc.stderr
    proc = subprocess.run(["bash", str(SCRIPT), "--world", "no/such.yaml", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no/such.yaml: no such file" in proc.stderr
    proc = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option --frobnicate" in proc.stderr
