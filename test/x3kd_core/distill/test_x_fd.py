"""X-FD: GT foreground maps at the right cells, weighted-mean golden value, zero at equality,
gradients (student yes, frozen teacher no), optimisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from x3kd_core.config import BevGridConfig
from x3kd_core.distill import freeze_teacher
from x3kd_core.distill.config import XFDConfig
from x3kd_core.distill.x_fd import XFDLoss, bev_foreground_map, build_bev_adapter, teacher_foreground_map
from x3kd_core.structures import Boxes3D

# 16 x 16 cells of 0.8 m; cell i covers x in [-6.4 + 0.8 i, -6.4 + 0.8 (i + 1)), centre -6.0 + 0.8 i.
GRID = BevGridConfig(x_range_m=(-6.4, 6.4), y_range_m=(-6.4, 6.4), cell_size_m=0.8)


def _boxes(*specs) -> Boxes3D:
    """specs: (x, y, length, width, yaw)."""
    if not specs:
        return Boxes3D.empty()
    return Boxes3D(
        center=[(s[0], s[1], 0.0) for s in specs], size_lwh=[(s[2], s[3], 1.5) for s in specs],
        yaw=[s[4] for s in specs], velocity=np.zeros((len(specs), 2)), label=[0] * len(specs),
        score=np.ones(len(specs)),
    )


def _cells(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in torch.nonzero(mask > 0.5).tolist()}


def test_box_footprint_marks_exactly_the_cells_whose_centres_are_inside():
    # Box centred (2.0, -1.2), 4.0 m long, 2.0 m wide. Heading +x: x in [0, 4] holds the cell
    # centres 0.4 .. 3.6 (i = 8..12), y in [-2.2, -0.2] holds -2.0, -1.2, -0.4 (j = 5..7).
    fg = bev_foreground_map([_boxes((2.0, -1.2, 4.0, 2.0, 0.0))], GRID, "gt_box")
    assert fg.shape == (1, 1, 16, 16) and fg.dtype == torch.float32
    assert _cells(fg[0, 0]) == {(i, j) for i in range(8, 13) for j in range(5, 8)}
    # Turned by 90 deg the footprint runs along y: x in [1, 3] (i = 9..11), y in [-3.2, 0.8] (j = 4..8).
    fg = bev_foreground_map([_boxes((2.0, -1.2, 4.0, 2.0, math.pi / 2))], GRID, "gt_box")
    assert _cells(fg[0, 0]) == {(i, j) for i in range(9, 12) for j in range(4, 9)}
    assert set(torch.unique(fg).tolist()) == {0.0, 1.0}


def test_foreground_weights_larger_inside_the_box_than_outside():
    box = _boxes((2.0, -1.2, 4.0, 2.0, 0.0))
    inside = [(i, j) for i in range(8, 13) for j in range(5, 8)]
    loss = XFDLoss(4, 4, background_weight=0.05, foreground_weight=1.0)
    w_box = loss.weight_map(bev_foreground_map([box], GRID, "gt_box"))[0, 0]
    assert all(float(w_box[c]) == pytest.approx(1.05) for c in inside)
    assert float(w_box[7, 6]) == pytest.approx(0.05) and float(w_box[10, 8]) == pytest.approx(0.05)
    assert float(w_box[0, 0]) == pytest.approx(0.05)

    fg = bev_foreground_map([box], GRID, "gt_gaussian")[0, 0]
    w = loss.weight_map(fg[None, None])[0, 0]
    assert float(fg[10, 6]) == 1.0  # the centre cell
    # Decays monotonically from the centre along the heading (x) and across it (y).
    along = [float(fg[i, 6]) for i in range(10, 16)]
    across = [float(fg[10, j]) for j in range(6, 12)]
    assert all(a > b for a, b in zip(along, along[1:]))
    assert all(a > b for a, b in zip(across, across[1:]))
    # sigma_l = 4.0 m / 4 = 1 m: cell (12, 6) has its centre 1.6 m ahead of the box centre, on the axis.
    assert float(fg[12, 6]) == pytest.approx(math.exp(-0.5 * (1.6 / 1.0) ** 2), rel=1e-5)
    outside = torch.ones(16, 16, dtype=torch.bool)
    for c in inside:
        outside[c] = False
    assert float(w[~outside].mean()) > 5 * float(w[outside].mean())
    assert float(w[0, 0]) == pytest.approx(0.05)  # far away: background weight only


def test_small_objects_and_grid_borders():
    # A 0.5 m pedestrian between cell centres still marks its own cell.
    fg = bev_foreground_map([_boxes((0.05, 0.05, 0.5, 0.5, 0.3))], GRID, "gt_box")
    assert _cells(fg[0, 0]) == {(8, 8)}
    # A box centred outside the grid marks only the cells of its footprint inside it.
    fg = bev_foreground_map([_boxes((7.0, 0.4, 4.0, 1.0, 0.0))], GRID, "gt_box")  # x in [5, 9]
    assert _cells(fg[0, 0]) == {(14, 8), (15, 8)}
    # Empty samples and batches.
    fg = bev_foreground_map([_boxes(), _boxes((0.4, 0.4, 1.0, 1.0, 0.0))], GRID, "gt_gaussian")
    assert float(fg[0].sum()) == 0.0 and float(fg[1].max()) == 1.0
    with pytest.raises(ValueError, match="unknown foreground mode"):
        bev_foreground_map([_boxes((0.4, 0.4, 1.0, 1.0, 0.0))], GRID, "disc")


def test_teacher_heatmap_foreground():
    logits = torch.full((1, 3, 4, 4), -20.0)
    logits[0, 2, 1, 1] = 0.0
    logits[0, 0, 1, 1] = -1.0
    fg = teacher_foreground_map(logits)
    assert fg.shape == (1, 1, 4, 4)
    assert float(fg[0, 0, 1, 1]) == pytest.approx(0.5)
    assert float(fg[0, 0, 0, 0]) < 1e-8


def test_weighted_mean_golden_value():
    loss = XFDLoss(2, 2, adapter="conv1x1", foreground_weight=1.0, background_weight=0.5)
    teacher = torch.zeros(1, 2, 1, 2)
    adapted = torch.tensor([[[[1.0, 3.0]], [[1.0, 3.0]]]])  # squared errors 1 (cell 0) and 9 (cell 1)
    fg = torch.tensor([[[[1.0, 0.0]]]])  # weights 1.5 and 0.5
    out = loss.loss_from_adapted(adapted, teacher, fg)
    expected = (1.5 * 1 * 2 + 0.5 * 9 * 2) / (2 * (1.5 + 0.5))
    assert float(out["feature"]) == pytest.approx(expected)
    assert float(out["stat/fg_mse"]) == pytest.approx(1.0) and float(out["stat/bg_mse"]) == pytest.approx(9.0)
    assert float(out["stat/fg_cells"]) == 1.0
    smooth = XFDLoss(2, 2, loss="smooth_l1", smooth_l1_beta=1.0, background_weight=0.5)
    # smooth-L1: 0.5 at |d| = 1, 2.5 at |d| = 3.
    expected = (1.5 * 0.5 * 2 + 0.5 * 2.5 * 2) / (2 * 2.0)
    assert float(smooth.loss_from_adapted(adapted, teacher, fg)["feature"]) == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["mse", "smooth_l1"])
def test_zero_at_equality_positive_otherwise(kind):
    torch.manual_seed(0)
    teacher = torch.randn(2, 6, 16, 16).relu()
    fg = bev_foreground_map([_boxes((2.0, -1.2, 4.0, 2.0, 0.0)), _boxes()], GRID)
    loss = XFDLoss(6, 6, adapter="conv1x1", loss=kind)
    with torch.no_grad():  # identity adapter: student features == teacher features
        loss.adapter.weight.copy_(torch.eye(6)[:, :, None, None])
        loss.adapter.bias.zero_()
    with torch.no_grad():
        assert float(loss(teacher.clone(), teacher, fg)["feature"]) == 0.0
    student = teacher.clone()
    student[1, :, 0, 0] += 1.0  # a background cell of the sample without boxes
    with torch.no_grad():
        assert float(loss(student, teacher, fg)["feature"]) > 1e-4


def test_shape_errors_are_named():
    loss = XFDLoss(4, 6, adapter="conv1x1")
    with pytest.raises(ValueError, match="teacher_channels"):
        loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 5, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="foreground must be"):
        loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 6, 8, 8), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="adapter kind"):
        build_bev_adapter(4, 6, "mlp")


def test_gradients_reach_student_and_adapter_never_the_frozen_teacher():
    torch.manual_seed(0)
    teacher = freeze_teacher(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()))
    teacher_bev = teacher(torch.randn(2, 3, 16, 16))
    student_bev = torch.randn(2, 4, 16, 16, requires_grad=True)
    loss = XFDLoss.from_config(XFDConfig(adapter_channels=8), student_channels=4, teacher_channels=6)
    fg = bev_foreground_map([_boxes((2.0, -1.2, 4.0, 2.0, 0.0)), _boxes()], GRID)
    loss(student_bev, teacher_bev, fg)["feature"].backward()
    assert student_bev.grad is not None and float(student_bev.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in loss.adapter.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_optimisation_lowers_the_loss_fivefold():
    # "Student": a small conv net on fixed inputs; teacher: fixed random post-ReLU features that
    # are a (hidden) function of the same inputs. Measured at this seed: 0.275 -> 0.026 (10.4x)
    # after 50 steps; asserted: 5x.
    torch.manual_seed(0)
    inputs = torch.randn(2, 5, 16, 16)
    teacher = freeze_teacher(nn.Sequential(nn.Conv2d(5, 6, 3, padding=1), nn.ReLU()))
    teacher_bev = teacher(inputs)
    student = nn.Sequential(nn.Conv2d(5, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
    loss = XFDLoss(8, 6, adapter="conv_block", adapter_channels=16)
    fg = bev_foreground_map([_boxes((2.0, -1.2, 4.0, 2.0, 0.0)), _boxes((-3.0, 3.0, 4.5, 1.9, 1.0))], GRID)
    opt = torch.optim.Adam(list(student.parameters()) + list(loss.parameters()), lr=1e-2)
    with torch.no_grad():
        first = float(loss(student(inputs), teacher_bev, fg)["feature"])
    for _ in range(50):
        opt.zero_grad()
        loss(student(inputs), teacher_bev, fg)["feature"].backward()
        opt.step()
    loss.eval()
    with torch.no_grad():
        last = float(loss(student(inputs), teacher_bev, fg)["feature"])
    assert last < first / 5, (first, last)
