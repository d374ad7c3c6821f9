"""Training tasks: named finite losses, loss decrease on a fixed batch, the distillation hook,
experiment configs (one grid)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from x3kd_core.config import ConfigError
from x3kd_core.experiment import build_model, build_task, load_experiment, loader_config
from x3kd_core.models.teachers.instance_seg import MASK_RCNN_LOSS_NAMES, InstancePredictions
from x3kd_core.models.teachers.lidar import BevDetectorOutputs, LidarDetector
from x3kd_core.paths import REPO_ROOT
from x3kd_core.structures import Boxes3D
from x3kd_core.train.tasks import StudentTask, run_teachers

TRAIN_CONFIGS = REPO_ROOT / "config" / "train"
HEAD_TERMS = {"heatmap", "offset", "height", "size", "rot", "velocity"}


@pytest.fixture(scope="module")
def nusc(tiny_dataset):
    from nuscenes.nuscenes import NuScenes

    dataroot, version = tiny_dataset
    return NuScenes(version=version, dataroot=str(dataroot), verbose=False)


def _experiment(name: str, tiny_dataset, *extra: str):
    dataroot, _ = tiny_dataset
    return load_experiment(TRAIN_CONFIGS / f"{name}.yaml", [f"data.dataroot={dataroot}", *extra])


def _batch(exp, nusc, n: int = 2):
    from x3kd_core.data.nuscenes import NuScenesSource, collate_samples

    source = NuScenesSource(nusc.dataroot, loader_config(exp, exp.data.train_split, training=True), nusc=nusc)
    return collate_samples([source.load_sample(t) for t in source.sample_tokens[:n]])


EXPECTED_TERMS = {
    "lidar_tiny": HEAD_TERMS,
    "radar_tiny": HEAD_TERMS,
    "student_tiny": HEAD_TERMS | {"depth"},
    "camera_radar_tiny": HEAD_TERMS | {"depth"},
    "instance_seg_tiny": set(MASK_RCNN_LOSS_NAMES),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_TERMS))
def test_task_losses_are_named_finite_and_decrease_on_a_fixed_batch(name, tiny_dataset, nusc):
    torch.manual_seed(0)
    # Two cameras and one sample keep Mask R-CNN and the students fast; the LiDAR / radar models
    # do not read images at all.
    exp = _experiment(name, tiny_dataset, "data.cameras=[CAM_FRONT, CAM_BACK]")
    task = build_task(exp)
    batch = _batch(exp, nusc, n=1)
    assert len(batch.boxes[0]) > 0  # a batch with objects, or the regression terms are 0
    task.train()
    optimizer = torch.optim.Adam([p for p in task.parameters() if p.requires_grad], lr=2e-3)

    def total() -> tuple[dict, torch.Tensor]:
        torch.manual_seed(1)  # the same RPN / RoI sampling for Mask R-CNN at every evaluation
        losses = task.training_losses(batch)
        return losses, sum(losses.values())

    losses, first = total()
    assert set(losses) == EXPECTED_TERMS[name]
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert first.item() > 0.1  # a real loss, not an empty-target zero
    for _ in range(4):
        optimizer.zero_grad()
        _, loss = total()
        loss.backward()
        optimizer.step()
    _, last = total()
    # Measured at this seed: the total falls to 0.2 (LiDAR, radar) - 0.6 (camera student) of its start.
    assert last.item() < 0.75 * first.item(), f"{name}: loss {first.item():.4f} -> {last.item():.4f}"

    task.eval()
    preds = task.predict(batch)
    assert len(preds) == 1
    if name == "instance_seg_tiny":
        assert len(preds[0]) == 2 and isinstance(preds[0][0], InstancePredictions)
    else:
        assert all(isinstance(p, Boxes3D) for p in preds)


class _DummyDistill(nn.Module):
    """A stand-in for X3KD's losses: feature MSE to the LiDAR teacher through a 1x1 adapter."""

    def __init__(self, c_student: int, c_teacher: int) -> None:
        super().__init__()
        self.adapter = nn.Conv2d(c_student, c_teacher, 1)
        self.seen: dict = {}

    def forward(self, student_outputs, teacher_outputs, batch):
        self.seen = teacher_outputs
        teacher = teacher_outputs["lidar"]
        return {"x_fd/feature": ((self.adapter(student_outputs.bev_features) - teacher.bev_features) ** 2).mean()}


def test_student_distillation_hook_runs_frozen_teachers(tiny_dataset, nusc):
    torch.manual_seed(0)
    exp = _experiment("student_tiny", tiny_dataset)
    lidar_exp = _experiment("lidar_tiny", tiny_dataset)
    teacher = build_model(lidar_exp)
    assert isinstance(teacher, LidarDetector)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_model(exp)
    distill = _DummyDistill(student.bev_encoder.out_channels, teacher.bev_channels)
    task = StudentTask(student, distill=distill, teachers={"lidar": teacher})
    batch = _batch(exp, nusc)

    task.train()
    assert not teacher.training  # frozen BatchNorm statistics even when the task trains
    losses = task.training_losses(batch)
    assert set(losses) == HEAD_TERMS | {"depth", "x_fd/feature"}
    assert isinstance(distill.seen["lidar"], BevDetectorOutputs)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert distill.adapter.weight.grad is not None and distill.adapter.weight.grad.abs().sum() > 0
    # Teachers are not part of the task's state (checkpoints) but move with it.
    assert not any(k.startswith("teachers") or k.startswith("lidar") for k in task.state_dict())
    assert any(k.startswith("distill.adapter") for k in task.state_dict())
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_state[k])  # BatchNorm running stats untouched
    task.double()
    assert next(teacher.parameters()).dtype == torch.float64
    with pytest.raises(ValueError, match="at least one teacher"):
        StudentTask(student, distill=distill)


def test_run_teachers_rejects_unknown_teacher_types():
    with pytest.raises(TypeError, match="teacher 'x'"):
        run_teachers({"x": nn.Linear(1, 1)}, batch=None)


# ------------------------------------------------------------------------------------ experiments
def test_experiments_of_one_scale_share_one_grid():
    for scale in ("tiny", "small"):
        grids = {p.name: load_experiment(p).grid for p in sorted(TRAIN_CONFIGS.glob(f"*_{scale}.yaml"))}
        assert len(grids) >= 6, sorted(grids)  # lidar, radar, student, camera_radar, instance_seg, x3kd
        assert len(set(grids.values())) == 1, grids


def test_x3kd_tiny_distils_from_teacher_checkpoints(tiny_dataset, tmp_path):
    """Teachers trained by train_experiment feed all four X3KD terms; the result deploys."""
    from x3kd_core.experiment import train_experiment
    from x3kd_core.inference import Predictor

    torch.manual_seed(0)
    lidar = train_experiment(_experiment("lidar_tiny", tiny_dataset, "train.max_steps=1"), tmp_path / "lidar",
                             device="cpu")
    seg = train_experiment(_experiment("instance_seg_tiny", tiny_dataset, "train.max_steps=1", "train.batch_size=1"),
                           tmp_path / "seg", device="cpu")
    teachers = [f"teachers.lidar={lidar.checkpoint}", f"teachers.instance_seg={seg.checkpoint}"]
    exp = _experiment("x3kd_tiny", tiny_dataset, "train.max_steps=2", *teachers)
    result = train_experiment(exp, tmp_path / "x3kd", device="cpu")
    assert result.step == 2
    terms = {"x_is/mask", "x_fd/feature", "x_at/gen", "x_od/heatmap", "x_od/regression"}
    assert terms | {"x_at/disc", "heatmap", "depth"} <= set(result.last_losses)
    assert all(math.isfinite(result.last_losses[t]) and result.last_losses[t] > 0 for t in terms)
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert "x_at_discriminator" in state["extra"]
    assert any(k.startswith("distill.losses.x_is_head") for k in state["model"])
    assert not any(k.startswith("teachers") for k in state["model"])  # teachers stay in their own files
    assert Predictor.from_checkpoint(result.checkpoint, device="cpu").experiment.distill is not None

    # A teacher from another grid, or fed other LiDAR sweeps than it was trained on, is refused.
    lidar_state = torch.load(lidar.checkpoint, map_location="cpu", weights_only=True)
    lidar_state["config"]["grid"]["x_range_m"] = [-32.0, 32.0]  # same weight shapes, other grid
    torch.save(lidar_state, tmp_path / "lidar_other_grid.pt")
    from x3kd_core.experiment import build_distillation

    bad = _experiment("x3kd_tiny", tiny_dataset, f"teachers.lidar={tmp_path / 'lidar_other_grid.pt'}", teachers[1])
    with pytest.raises(ConfigError, match=r"teachers\.lidar: .*grid\.x_range_m = \[-32\.0, 32\.0\] but this experiment grid\.x_range_m = \[-25\.6, 25\.6\]"):
        build_distillation(bad, build_model(bad))
    bad = _experiment("x3kd_tiny", tiny_dataset, "data.lidar_sweeps=1", *teachers)
    with pytest.raises(ConfigError, match=r"data\.lidar_sweeps = 1 but teachers\.lidar .* trained with 3"):
        build_distillation(bad, build_model(bad))
    with pytest.raises(ConfigError, match=r"teachers\.instance_seg: a checkpoint is required by distill\.x_is"):
        _experiment("x3kd_tiny", tiny_dataset, "teachers.instance_seg=null")
    exp = _experiment("x3kd_tiny", tiny_dataset, "teachers.instance_seg=null", "distill.x_is.enabled=false")
    assert exp.distill.enabled_components == ("x_fd", "x_at", "x_od")


def test_grid_mismatch_names_both_key_paths(tiny_dataset):
    with pytest.raises(ConfigError, match=r"model\.grid\.cell_size_m = 1\.6 but grid\.cell_size_m = 0\.8"):
        _experiment("student_tiny", tiny_dataset, "grid.cell_size_m=0.8")
    with pytest.raises(ConfigError, match=r"model\.camera\.grid\.x_range_m = \[-25\.6, 25\.6\] but grid\.x_range_m"):
        _experiment("camera_radar_tiny", tiny_dataset, "grid.x_range_m=[-32.0, 32.0]")
    with pytest.raises(ConfigError, match=r"data\.image_hw \[64, 128\] differs from model\.image_hw \[48, 128\]"):
        _experiment("student_tiny", tiny_dataset, "data.image_hw=[64, 128]")


def test_overrides_reach_model_files_and_bad_keys_name_their_path(tiny_dataset):
    exp = _experiment("student_tiny", tiny_dataset, "model.head.score_threshold=0.3", "train.lr=0.01")
    assert exp.model.head.score_threshold == 0.3 and exp.train.lr == 0.01
    # The teacher is built on the experiment's grid (its model file has none).
    exp = _experiment("lidar_tiny", tiny_dataset, "grid.cell_size_m=0.8")
    assert build_model(exp).grid.cell_size_m == 0.8
    with pytest.raises(ConfigError, match=r"unknown key model\.head\.score_thresh "):
        _experiment("student_tiny", tiny_dataset, "model.head.score_thresh=0.3")
    with pytest.raises(ConfigError, match=r"unknown key train\.lrr"):
        _experiment("lidar_tiny", tiny_dataset, "train.lrr=1")
    with pytest.raises(ConfigError, match=r"train\.lr.*expected a number"):
        _experiment("lidar_tiny", tiny_dataset, "train.lr=fast")
    with pytest.raises(ConfigError, match=r"--set kind.x: kind is 'lidar', not a mapping"):
        _experiment("lidar_tiny", tiny_dataset, "kind.x=1")
