"""DistillationLosses (all components together), freeze_teacher and split_stats, with the real tiny
student and LiDAR teacher where it is cheap."""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from x3kd_core.config import BevGridConfig, from_dict, load_yaml
from x3kd_core.distill import DistillationLosses, TaskDistillation, freeze_teacher, is_frozen, split_stats
from x3kd_core.distill.config import DistillConfig, XATConfig, XFDConfig, XISConfig, XODConfig
from x3kd_core.models.heads.center_head import HeadOutputs
from x3kd_core.models.student import CameraStudent, StudentConfig, StudentOutputs
from x3kd_core.models.teachers.instance_seg import InstanceSegConfig, InstanceSegmenter
from x3kd_core.models.teachers.lidar import LidarDetector, LidarDetectorConfig
from x3kd_core.structures import Batch, Boxes3D
from x3kd_core.train.tasks import StudentTask

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config" / "model"
GRID = BevGridConfig(x_range_m=(-6.4, 6.4), y_range_m=(-6.4, 6.4), z_range_m=(-3.0, 3.0), cell_size_m=0.8)
B, N, C_IMG, C_S = 2, 2, 8, 12
TERMS = {"x_is/mask", "x_fd/feature", "x_at/gen", "x_od/heatmap", "x_od/regression"}
_HEAD_CH = {"heatmap": 10, "offset": 2, "height": 1, "log_size": 3, "rot": 2, "velocity": 2}


@pytest.fixture(scope="module")
def lidar_teacher() -> LidarDetector:
    torch.manual_seed(0)
    return freeze_teacher(LidarDetector(load_yaml(LidarDetectorConfig, CONFIG_DIR / "lidar_tiny.yaml"), GRID))


@pytest.fixture(scope="module")
def teacher_out(lidar_teacher):
    return lidar_teacher([_cloud(0), _cloud(1)])


def _cloud(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(600, 3, generator=g) * torch.tensor([12.0, 12.0, 3.0]) - torch.tensor([6.0, 6.0, 2.0])
    return torch.cat([xyz, torch.rand(600, 1, generator=g), torch.zeros(600, 1)], dim=1)


def _boxes() -> list[Boxes3D]:
    car = Boxes3D(center=[(2.0, -1.2, -0.8)], size_lwh=[(4.5, 1.9, 1.6)], yaw=[0.3], velocity=[(1.0, 0.0)],
                  label=[0], score=[1.0])
    return [car, Boxes3D.empty()]


def _student_outputs(seed: int = 1) -> StudentOutputs:
    g = torch.Generator().manual_seed(seed)
    n = GRID.size_xy[0]
    head = HeadOutputs(**{k: torch.randn(B, c, n, n, generator=g).requires_grad_(True) for k, c in _HEAD_CH.items()})
    return StudentOutputs(
        image_features=torch.randn(B, N, C_IMG, 3, 8, generator=g).requires_grad_(True),
        depth_logits=torch.zeros(B, N, 4, 3, 8),
        depth_probs=torch.full((B, N, 4, 3, 8), 0.25),
        bev_features=torch.randn(B, C_S, n, n, generator=g).requires_grad_(True),
        head=head,
    )


def _teacher_masks() -> torch.Tensor:
    masks = torch.zeros(B, N, 10, 48, 128)
    masks[0, 1, 0, 16:40, 32:80] = 0.9
    masks[1, 0, 8, 0:20, 100:110] = 0.7
    return masks


def _distill(config: DistillConfig, teacher: LidarDetector, seed: int = 0) -> DistillationLosses:
    torch.manual_seed(seed)
    return DistillationLosses(config, grid=GRID, image_channels=C_IMG, student_bev_channels=C_S,
                              teacher_bev_channels=teacher.bev_channels)


def test_all_terms_named_finite_and_gradients_reach_student_never_teacher(lidar_teacher, teacher_out):
    distill = _distill(DistillConfig(), lidar_teacher)
    student = _student_outputs()
    losses = distill(student, teacher_out, _teacher_masks(), _boxes())
    terms, stats = split_stats(losses)
    assert set(terms) == TERMS
    assert stats and all(k.split("/")[1] in {"x_is", "x_fd", "x_at", "x_od"} for k in stats)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert all(not v.requires_grad for v in stats.values())
    assert all(float(v.detach()) > 0 for v in terms.values())
    sum(terms.values()).backward()
    for name, t in [("image_features", student.image_features), ("bev_features", student.bev_features)] + [
        (k, getattr(student.head, k)) for k in _HEAD_CH
    ]:
        assert t.grad is not None and float(t.grad.abs().sum()) > 0, name
    assert all(p.grad is not None for p in distill.parameters())  # X-IS head, X-FD adapter
    assert all(p.grad is None for p in lidar_teacher.parameters())
    # The discriminator is neither a parameter nor in the state dict of the training module.
    disc = {id(p) for p in distill.x_at.discriminator.parameters()}
    assert not disc & {id(p) for p in distill.parameters()}
    assert not any("discriminator" in k for k in distill.state_dict())
    assert all(p.grad is None for p in distill.x_at.discriminator.parameters())


def test_weights_scale_their_terms(lidar_teacher, teacher_out):
    base = _distill(DistillConfig(), lidar_teacher)(_student_outputs(), teacher_out, _teacher_masks(), _boxes())
    doubled_cfg = DistillConfig(
        x_is=XISConfig(weight=2.0), x_fd=XFDConfig(weight=2.0), x_at=XATConfig(weight=0.2),
        x_od=XODConfig(heatmap_weight=2.0, regression_weight=0.5),
    )
    doubled = _distill(doubled_cfg, lidar_teacher)(_student_outputs(), teacher_out, _teacher_masks(), _boxes())
    for name in TERMS:
        assert float(doubled[name].detach()) == pytest.approx(2 * float(base[name].detach()), rel=1e-5), name


@pytest.mark.parametrize("off", ["x_is", "x_fd", "x_at", "x_od"])
def test_each_component_can_be_switched_off(lidar_teacher, teacher_out, off):
    cfg = from_dict(DistillConfig, {off: {"enabled": False}})
    distill = _distill(cfg, lidar_teacher)
    losses = distill(_student_outputs(), teacher_out, _teacher_masks(), _boxes())
    assert {k.split("/")[0] for k in split_stats(losses)[0]} == {"x_is", "x_fd", "x_at", "x_od"} - {off}
    assert not any(k.startswith(f"stat/{off}/") for k in losses)
    children = dict(distill.named_children())
    assert ("x_is_head" in children) == (off != "x_is")
    assert ("x_fd" in children) == (off != "x_fd")
    # X-AT always brings its own adapter (sharing X-FD's let the two fight over it, issue 12).
    assert ("x_at_adapter" in children) == (off != "x_at")
    assert (distill.x_at is None) == (off == "x_at")


def test_x_at_trains_its_own_adapter_never_x_fds(lidar_teacher, teacher_out):
    distill = _distill(DistillConfig(), lidar_teacher)
    losses = distill(_student_outputs(), teacher_out, _teacher_masks(), _boxes())
    losses["x_at/gen"].backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in distill.x_at_adapter.parameters())
    assert all(p.grad is None for p in distill.x_fd.adapter.parameters())


def test_nothing_enabled_is_an_empty_dict_and_no_parameters(lidar_teacher):
    distill = _distill(DistillConfig.none(), lidar_teacher)
    assert distill(_student_outputs()) == {}
    assert list(distill.parameters()) == []
    with pytest.raises(RuntimeError, match="X-AT is disabled"):
        distill.discriminator_step()


def test_context_is_filled_in_training_mode_only(lidar_teacher, teacher_out):
    distill = _distill(DistillConfig(), lidar_teacher)
    distill.eval()
    distill(_student_outputs(), teacher_out, _teacher_masks(), _boxes())
    assert not distill.x_at.context.filled
    distill.train()
    distill(_student_outputs(), teacher_out, _teacher_masks(), _boxes())
    pair = distill.x_at.context.take()
    assert pair.teacher_bev.shape == pair.student_bev.shape == (B, lidar_teacher.bev_channels, 16, 16)
    assert torch.equal(pair.teacher_bev, teacher_out.bev_features)
    step = distill.discriminator_step()
    distill(_student_outputs(), teacher_out, _teacher_masks(), _boxes())
    assert 0.0 <= step(None, 1)["x_at/disc_acc"] <= 1.0


def test_missing_inputs_are_named(lidar_teacher, teacher_out):
    distill = _distill(DistillConfig(), lidar_teacher)
    with pytest.raises(ValueError, match="no LiDAR teacher outputs"):
        distill(_student_outputs(), None, _teacher_masks(), _boxes())
    with pytest.raises(ValueError, match="teacher_masks"):
        distill(_student_outputs(), teacher_out, None, _boxes())
    with pytest.raises(ValueError, match="gt_boxes"):
        distill(_student_outputs(), teacher_out, _teacher_masks(), None)
    # The teacher-heatmap foreground needs no boxes.
    cfg = from_dict(DistillConfig, {"x_fd": {"foreground": "teacher_heatmap"}})
    losses = _distill(cfg, lidar_teacher)(_student_outputs(), teacher_out, _teacher_masks(), None)
    assert "x_fd/feature" in losses


def test_freeze_teacher_keeps_batchnorm_in_eval_under_a_training_parent():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    parent = nn.ModuleDict({"student": nn.Conv2d(3, 4, 3), "teacher": freeze_teacher(teacher)})
    assert is_frozen(teacher) and not is_frozen(parent["student"])
    stats_before = teacher[1].running_mean.clone(), teacher[1].running_var.clone()
    parent.train()
    teacher.train()  # also directly
    assert parent.training and parent["student"].training
    assert not teacher.training and not any(m.training for m in teacher.modules())
    x = torch.randn(2, 3, 8, 8) * 5 + 3
    y1, y2 = teacher(x), teacher(x)
    assert torch.equal(y1, y2)  # no dropout, no batch statistics
    assert torch.equal(teacher[1].running_mean, stats_before[0])
    assert torch.equal(teacher[1].running_var, stats_before[1])
    assert not y1.requires_grad and all(not p.requires_grad for p in teacher.parameters())
    parent.eval()
    parent.train(True)
    assert not teacher.training and is_frozen(teacher)
    # Still frozen after a deep copy and a pickle round trip (torch.save of a whole model).
    for clone in (copy.deepcopy(parent), pickle.loads(pickle.dumps(parent))):
        clone.train()
        assert is_frozen(clone["teacher"]) and clone["student"].training
    # An unfrozen BN in train mode would have moved its statistics on the same input.
    free = nn.BatchNorm2d(4)
    free(torch.randn(2, 4, 6, 6) * 5 + 3)
    assert not torch.equal(free.running_mean, torch.zeros(4))


def test_split_stats():
    losses = {"x_fd/feature": torch.tensor(1.0), "stat/x_fd/fg_cells": torch.tensor(3.0), "x_at/gen": torch.tensor(0.5)}
    terms, stats = split_stats(losses)
    assert terms.keys() == {"x_fd/feature", "x_at/gen"} and stats.keys() == {"stat/x_fd/fg_cells"}


def _rig(n_cam: int, image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole cameras at the ego origin, 1.5 m up, looking outwards at n_cam evenly spaced yaws."""
    h, w = image_hw
    K = torch.tensor([[w / 2.0, 0.0, w / 2.0], [0.0, w / 2.0, h / 2.0], [0.0, 0.0, 1.0]])
    # Camera axes (x right, y down, z forward) -> ego (x fwd, y left, z up) for a forward camera.
    base = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    poses = []
    for k in range(n_cam):
        yaw = 2 * math.pi * k / n_cam
        rz = torch.tensor([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
        pose = torch.eye(4)
        pose[:3, :3] = rz @ base
        pose[2, 3] = 1.5
        poses.append(pose)
    return K.expand(n_cam, 3, 3), torch.stack(poses)


def test_end_to_end_through_the_student_task_hook():
    """Real tiny student, LiDAR teacher and Mask R-CNN teacher, run by ``StudentTask`` through
    :class:`TaskDistillation`; then the discriminator and stats steps the engine would run."""
    torch.manual_seed(0)
    student_cfg = load_yaml(StudentConfig, CONFIG_DIR / "student_tiny.yaml")
    grid = student_cfg.grid
    student = CameraStudent.from_config(student_cfg)
    lidar = freeze_teacher(LidarDetector(load_yaml(LidarDetectorConfig, CONFIG_DIR / "lidar_tiny.yaml"), grid))
    segmenter = freeze_teacher(InstanceSegmenter(load_yaml(InstanceSegConfig, CONFIG_DIR / "instance_seg_tiny.yaml")))
    distill = TaskDistillation(DistillationLosses.from_models(DistillConfig(), student, lidar, grid))
    task = StudentTask(student, distill=distill, teachers={"lidar": lidar, "instance_seg": segmenter})
    n_cam, (H, W) = 2, student_cfg.image_hw
    K, pose = _rig(n_cam, (H, W))
    g = torch.Generator().manual_seed(3)
    xyz = torch.rand(2000, 3, generator=g) * torch.tensor([50.0, 50.0, 4.0]) - torch.tensor([25.0, 25.0, 3.0])
    batch = Batch(
        images=torch.randn(1, n_cam, 3, H, W, generator=g), intrinsics=K[None].clone(), cam_to_ego=pose[None],
        lidar_points=[torch.cat([xyz, torch.zeros(2000, 2)], dim=1)], radar_points=[torch.zeros(0, 7)],
        boxes=[Boxes3D(center=[(8.0, 1.0, -0.5)], size_lwh=[(4.5, 1.9, 1.6)], yaw=[0.0], velocity=[(0.0, 0.0)],
                       label=[0], score=[1.0])],
        ego_to_global=torch.eye(4, dtype=torch.float64)[None], tokens=["t0"],
    )
    task.train()
    losses = task.training_losses(batch)
    terms, stats = split_stats(losses)
    # One channel: the diagnostics come with the losses, detached, and stay out of the optimised sum.
    assert TERMS <= set(terms) and "stat/x_fd/fg_cells" in stats
    assert not any(v.requires_grad for v in stats.values())
    assert all(torch.isfinite(v) for v in losses.values())
    sum(terms.values()).backward()
    assert next(student.backbone.parameters()).grad is not None
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.neck.parameters())
    assert all(p.grad is None for p in lidar.parameters()) and all(p.grad is None for p in segmenter.parameters())
    assert any(k.startswith("distill.losses.x_is_head") for k in task.state_dict())
    out = distill.discriminator_step()(batch, 1)
    assert 0.0 <= out["x_at/disc_acc"] <= 1.0
    with pytest.raises(KeyError, match="instance_seg"):
        distill(task.outputs(batch), {"lidar": lidar(batch.lidar_points)}, batch)
