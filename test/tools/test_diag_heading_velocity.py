"""tools/diag_heading_velocity.py: heading / velocity errors per class, moving vs standing, on a
submission made from the tiny dataset's own ground truth with known faults put in."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _ground_truth_submission(dataroot: str, version: str, split: str) -> dict:
    """A submission holding every ground-truth box of ``split`` with score 1 (devkit loaders)."""
    from nuscenes import NuScenes
    from nuscenes.eval.common.loaders import get_samples_of_custom_split, load_gt_of_sample_tokens
    from nuscenes.eval.detection.data_classes import DetectionBox

    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    gt = load_gt_of_sample_tokens(nusc, get_samples_of_custom_split(split, nusc), DetectionBox, verbose=False)
    results = {}
    for token in gt.sample_tokens:
        rows = []
        for b in gt[token]:
            row = b.serialize()
            row["detection_score"] = 1.0
            rows.append(row)
        results[token] = rows
    meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    return {"meta": meta, "results": results}


def _rotate_yaw(rotation: list[float], angle: float) -> list[float]:
    """[w, x, y, z] of the box's rotation followed by ``angle`` about +z."""
    w, x, y, z = rotation
    c, s = math.cos(angle / 2), math.sin(angle / 2)
    return [c * w - s * z, c * x - s * y, c * y + s * x, c * z + s * w]


def _run(tmp_path: Path, dataroot: str, version: str, submission: dict) -> dict:
    path = tmp_path / "results_nusc.json"
    path.write_text(json.dumps(submission, default=lambda a: a.tolist()))  # devkit boxes hold numpy arrays
    out = tmp_path / "diag.json"
    subprocess.run([sys.executable, str(TOOLS / "diag_heading_velocity.py"), "--dataroot", dataroot, "--version",
                    version, "--split", "synth_val", "--results", str(path), "--json", str(out)],
                   check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def test_ground_truth_scores_zero_and_flipped_cars_score_pi(tiny_dataset, tmp_path):
    dataroot, version = tiny_dataset
    sub = _ground_truth_submission(str(dataroot), version, "synth_val")
    clean = _run(tmp_path, str(dataroot), version, sub)
    assert clean["mean_yaw_err"] == pytest.approx(0.0, abs=1e-6)
    assert clean["mean_vel_err"] == pytest.approx(0.0, abs=1e-6)
    assert any(key.startswith("car/") for key in clean["rows"]), clean["rows"].keys()

    # Every car turned round (heading + pi) and every moving car's velocity reversed.
    for rows in sub["results"].values():
        for row in rows:
            if row["detection_name"] == "car":
                row["rotation"] = _rotate_yaw(row["rotation"], math.pi)
                row["velocity"] = [-row["velocity"][0], -row["velocity"][1]]
    faulty = _run(tmp_path, str(dataroot), version, sub)
    car = faulty["rows"]["car/all"]
    assert car["yaw_err"] == pytest.approx(math.pi, abs=1e-4)
    assert car["flips"] == 1.0
    # With each moving car's heading taken from its (reversed) velocity, the flip stays: the what-if
    # only chooses between yaw and yaw + pi by the prediction's own motion.
    assert car["yaw_err_motion_heading"] == pytest.approx(math.pi, abs=1e-4)
    moving = faulty["rows"]["car/moving"]
    assert moving["n"] > 0 and moving["vel_backwards"] == 1.0
    assert moving["speed_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert moving["vel_err"] > 1.0  # twice the speed of cars faster than 0.5 m/s
    others = [r for key, r in faulty["rows"].items() if not key.startswith("car/") and r["n"]]
    assert others and all(r["yaw_err"] == pytest.approx(0.0, abs=1e-6) for r in others)
