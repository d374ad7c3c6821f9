"""`x3kd train`: end to end on the tiny dataset, resume, and exit status 2 with the key path."""

from __future__ import annotations

import json

import pytest
import torch

from x3kd_core.cli import main
from x3kd_core.paths import REPO_ROOT

STUDENT_TINY = str(REPO_ROOT / "config" / "train" / "student_tiny.yaml")


def test_train_student_tiny_end_to_end(tiny_dataset, tmp_path, capsys):
    dataroot, _ = tiny_dataset
    out = tmp_path / "run"
    args = ["train", "--experiment", STUDENT_TINY, "--out", str(out), "--device", "cpu",
            "--set", f"data.dataroot={dataroot}", "--set", "train.max_steps=2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "finished at step 2/2" in printed and "mAP=" in printed and "NDS=" in printed

    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["kind"] == "StudentTask" and state["step"] == 2
    assert state["config"]["kind"] == "student" and state["config"]["data"]["dataroot"] == str(dataroot)
    report = json.loads((out / "metrics.json").read_text())
    assert report["step"] == 2 and report["finished"] is True and report["kind"] == "student"
    assert report["eval_split"] == "synth_val" and report["metrics"]["num_samples"] == 3
    metrics = report["metrics"]
    assert 0.0 <= metrics["mAP"] <= 1.0 and 0.0 <= metrics["NDS"] <= 1.0
    assert set(report["last_losses"]) >= {"heatmap", "depth", "loss"}
    assert (out / "results_nusc.json").is_file() or any(out.glob("eval/*/results_nusc.json"))

    # --resume on a finished run trains nothing more and evaluates the same weights again.
    assert main(args + ["--resume"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["step"] == 2
    assert again["metrics"]["mAP"] == metrics["mAP"] and again["metrics"]["NDS"] == metrics["NDS"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", "unknown key train.lrr"),
        ("model.head.shared_channel=8", "unknown key model.head.shared_channel"),
        ("grid.cell_size_m=0.8", "model.grid.cell_size_m = 1.6 but grid.cell_size_m = 0.8"),
        ("train.batch_size=zero", "train.batch_size: expected an integer"),
        ("augment.image.flip_prob=2", "flip_prob must be in [0, 1]"),
    ],
)
def test_bad_config_exits_2_naming_the_key(override, message, tmp_path, capsys):
    code = main(["train", "--experiment", STUDENT_TINY, "--out", str(tmp_path / "x"), "--set", override])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("x3kd train: error:") and message in err
    assert not (tmp_path / "x" / "last.pt").exists()


def test_missing_experiment_file_and_dataroot_exit_2(tmp_path, capsys):
    assert main(["train", "--experiment", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert main(["train", "--experiment", STUDENT_TINY, "--set", f"data.dataroot={tmp_path / 'no_data'}"]) == 2
    assert "data.dataroot" in capsys.readouterr().err


@pytest.mark.parametrize("schedule", [["train.eval_every_epochs=1"],
                                      ["train.eval_every_epochs=0", "train.eval_every_steps=1"]])
def test_validation_during_training_is_logged_and_reused_at_the_end(tiny_dataset, tmp_path, schedule):
    dataroot, _ = tiny_dataset
    out = tmp_path / "run"
    # 3 train samples in batches of 2 (last partial batch dropped): one step per epoch, so there
    # is a validation after each step and the one at step 2 is the final one (by epochs or by
    # steps: the learning-curve option must reach the experiment's validation too).
    sets = [a for item in schedule for a in ("--set", item)]
    assert main(["train", "--experiment", STUDENT_TINY, "--out", str(out), "--device", "cpu",
                 "--set", f"data.dataroot={dataroot}", "--set", "train.max_steps=2", *sets]) == 0
    rows = (out / "val.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,mAP,NDS") and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert (out / "eval" / "epoch_002" / "metrics_summary.json").is_file()
    assert not (out / "eval" / "final").exists()  # the final-step validation was reused
    report = json.loads((out / "metrics.json").read_text())
    assert float(rows[2].split(",")[2]) == pytest.approx(report["metrics"]["mAP"])
    assert float(rows[2].split(",")[3]) == pytest.approx(report["metrics"]["NDS"])


def test_distill_and_teachers_flags_become_overrides():
    from x3kd_core.cli import UserError, distill_overrides, teacher_overrides

    assert distill_overrides("x-is,X_OD") == ["distill.x_is.enabled=true", "distill.x_fd.enabled=false",
                                              "distill.x_at.enabled=false", "distill.x_od.enabled=true"]
    assert distill_overrides("none") == ["distill=null"] and len(distill_overrides("all")) == 4
    assert teacher_overrides("lidar=a.pt, instance-seg=b.pt,cache=c") == [
        "teachers.lidar=a.pt", "teachers.instance_seg=b.pt", "teachers.cache=c"]
    with pytest.raises(UserError, match="unknown component.*x_xx"):
        distill_overrides("x-xx")
    with pytest.raises(UserError, match="name=path"):
        teacher_overrides("camera=a.pt")


def test_train_model_student_with_distill_flags(tiny_dataset, tiny_teachers, tmp_path, capsys):
    """`x3kd train --model student --distill x-od --teachers lidar=...`: the student distils X-OD only."""
    dataroot, _ = tiny_dataset
    args = ["train", "--experiment", str(REPO_ROOT / "config" / "train" / "student_tiny.yaml"), "--out", str(tmp_path / "r"),
            "--distill", "x-od", "--teachers", f"lidar={tiny_teachers['lidar']}", "--device", "cpu",
            "--set", f"data.dataroot={dataroot}", "--set", "train.max_steps=1", "--set", "data.lidar_sweeps=3"]
    assert main(args) == 0
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert report["distill"] == ["x_od"] and "x_od/heatmap" in report["last_losses"]
    assert "x_fd/feature" not in report["last_losses"]
    # X-OD's diagnostics reach the training log with the losses, and stay out of the summed loss.
    header = (tmp_path / "r" / "train.csv").read_text().splitlines()[0].split(",")
    assert "stat/x_od/heatmap_mae" in header and "x_od/heatmap" in header
    assert main(["train", "--model", "student", "--experiment", "x.yaml"]) == 2
    assert "exactly one of --experiment" in capsys.readouterr().err
