"""Reproducible runs (issue 10): the same command on the same commit and data gives the same numbers.

The check a user makes by hand: regenerate the world from its config into a fresh folder, train
the same experiment again, and compare. At tiny scale: two independently generated copies of the
tiny world must have the same fingerprint, and `x3kd train --result` on each must give the same
losses (to float precision) and the same metrics (to 1e-3). A training step that depended on
anything but the seed, the data and the thread count (dict order, an unseeded generator, a
non-deterministic kernel) would break the equality of the logged losses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from x3kd_core.cli import main
from x3kd_core.data.fingerprint import GENERATOR_CONFIG_FILENAME, dataset_fingerprint
from x3kd_core.paths import REPO_ROOT

STUDENT_TINY = str(REPO_ROOT / "config" / "train" / "student_tiny.yaml")


def _train(dataroot: Path, out: Path, result: Path) -> dict:
    args = ["train", "--experiment", STUDENT_TINY, "--out", str(out), "--device", "cpu",
            "--set", f"data.dataroot={dataroot}", "--set", "train.max_steps=6", "--set", "train.log_every=2",
            "--result", str(result)]
    assert main(args) == 0
    return json.loads(result.read_text())


def test_rerun_on_regenerated_data_gives_the_same_numbers(tiny_dataset, tmp_path):
    dataroot, version = tiny_dataset
    # A second, independent generation of the same world (what a fresh clone would do).
    from x3kd_core.config import load_yaml
    from x3kd_core.data.synthetic import SynthConfig, generate_dataset

    again = tmp_path / "regenerated"
    generate_dataset(load_yaml(SynthConfig, REPO_ROOT / "config" / "data" / "synthetic_tiny.yaml"), again)
    fp1, fp2 = dataset_fingerprint(dataroot, version), dataset_fingerprint(again, version)
    assert fp1 == fp2 and fp1["generator_config"] is True and len(fp1["sha256_16"]) == 16

    threads = torch.get_num_threads()
    first = _train(dataroot, tmp_path / "run1", tmp_path / "r1.json")
    second = _train(again, tmp_path / "run2", tmp_path / "r2.json")
    for rec in (first, second):
        assert rec["dataset"]["sha256_16"] == fp1["sha256_16"] and rec["torch_threads"] == threads
        assert rec["steps"] == 6 and "--result" in rec["command"] and rec["git_commit"]
    assert set(first["last_losses"]) >= {"heatmap", "depth", "loss"}
    for name, value in first["last_losses"].items():
        if name != "sec_per_step":
            assert second["last_losses"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    for name, value in first["metrics"].items():
        assert second["metrics"][name] == pytest.approx(value, abs=1e-3), name


def test_fingerprint_changes_with_the_tables_and_the_generator_config(tiny_dataset, tmp_path):
    dataroot, version = tiny_dataset
    copy = tmp_path / "copy"
    (copy / version).mkdir(parents=True)
    for f in (dataroot / version).glob("*.json"):
        shutil.copy(f, copy / version / f.name)
    no_config = dataset_fingerprint(copy, version)
    assert no_config["generator_config"] is False
    shutil.copy(dataroot / GENERATOR_CONFIG_FILENAME, copy / GENERATOR_CONFIG_FILENAME)
    assert dataset_fingerprint(copy, version) == dataset_fingerprint(dataroot, version)
    scene = copy / version / "scene.json"
    scene.write_text(scene.read_text().replace('"name"', '"name" ', 1))
    assert dataset_fingerprint(copy, version)["sha256_16"] != dataset_fingerprint(dataroot, version)["sha256_16"]
    with pytest.raises(FileNotFoundError, match="no nuScenes tables"):
        dataset_fingerprint(tmp_path / "empty", version)
