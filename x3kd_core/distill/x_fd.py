"""X-FD: cross-modal feature distillation on the BEV grid (camera student -> LiDAR teacher).

After the view transform, the student's BEV features (B, C_s, N_x, N_y) are mapped by a small
adaptation layer to the teacher's width C_t and regressed onto the LiDAR teacher's BEV features
of the same cells (both models share one :class:`~x3kd_core.config.BevGridConfig`). The adapter
belongs to the student at training time only; it gives the student's features the freedom to
differ from the teacher's by a learned (near-)linear map rather than forcing them equal.

The regression concentrates on objects: each cell's weight is
``background_weight + foreground_weight * fg`` where ``fg`` in [0, 1] comes from the ground-truth
boxes' BEV footprints (:func:`bev_foreground_map`) or from the teacher's heatmap
(:func:`teacher_foreground_map`).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x3kd_core.config import BevGridConfig
from x3kd_core.distill.config import XFDConfig
from x3kd_core.structures import Boxes3D

__all__ = ["build_bev_adapter", "bev_foreground_map", "teacher_foreground_map", "XFDLoss"]


def build_bev_adapter(
    in_channels: int, out_channels: int, kind: Literal["conv1x1", "conv_block"] = "conv1x1", hidden_channels: int = 128
) -> nn.Module:
    """Student BEV (B, in_channels, N_x, N_y) -> (B, out_channels, N_x, N_y), resolution kept.

    ``conv1x1``: one 1x1 conv (a per-cell linear map). ``conv_block``: 3x3 conv-BN-ReLU to
    ``hidden_channels`` then a 1x1 conv. No activation at the end: a linear output can reach any
    target (the LiDAR teacher's features are post-ReLU, other teachers' need not be).
    """
    if kind == "conv1x1":
        return nn.Conv2d(in_channels, out_channels, 1)
    if kind == "conv_block":
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, out_channels, 1),
        )
    raise ValueError(f"unknown adapter kind {kind!r} (conv1x1, conv_block)")


def bev_foreground_map(
    boxes: list[Boxes3D],
    grid: BevGridConfig,
    mode: Literal["gt_box", "gt_gaussian"] = "gt_gaussian",
    device: torch.device | str = "cpu",
) -> Tensor:
    """Foreground map (B, 1, N_x, N_y) in [0, 1] from ground-truth boxes (ego frame).

    A cell is described by its centre ``(x_min + (i + 0.5) cell, y_min + (j + 0.5) cell)``
    (the grid convention of :class:`BevGridConfig`), expressed in each box's own frame as
    ``(u, v)`` (u along the heading, v across it):

    * ``gt_box``: 1 where ``|u| <= length / 2`` and ``|v| <= width / 2`` (the rotated footprint);
    * ``gt_gaussian``: ``exp(-(u^2 / sigma_l^2 + v^2 / sigma_w^2) / 2)`` with ``sigma = extent / 4``
      (0.14 at the footprint's edge midpoints), floored at half a cell so sub-cell objects still
      mark their cell.

    Boxes are merged by max. The cell holding a box's centre is always 1, so objects smaller than a
    cell (pedestrians, cones on a coarse grid) are never missed. Parts outside the grid are clipped.

    Args:
        boxes: B Boxes3D (ego frame); may be empty.
        grid: the BEV grid of student and teacher.
        mode: footprint shape, see above.

    Returns:
        float32 (B, 1, N_x, N_y) on ``device``.
    """
    n_x, n_y = grid.size_xy
    cell = grid.cell_size_m
    x0, y0 = grid.x_range_m[0], grid.y_range_m[0]
    out = np.zeros((len(boxes), 1, n_x, n_y), dtype=np.float32)
    for b, sample in enumerate(boxes):
        for k in range(len(sample)):
            cx, cy = float(sample.center[k, 0]), float(sample.center[k, 1])
            length, width = float(sample.size_lwh[k, 0]), float(sample.size_lwh[k, 1])
            yaw = float(sample.yaw[k])
            # Window: the footprint's circumscribed circle (1.5x for the gaussian tails) plus a cell.
            reach = 0.5 * math.hypot(length, width) * (1.5 if mode == "gt_gaussian" else 1.0) + cell
            i0 = max(0, int(math.floor((cx - reach - x0) / cell)))
            i1 = min(n_x, int(math.ceil((cx + reach - x0) / cell)) + 1)
            j0 = max(0, int(math.floor((cy - reach - y0) / cell)))
            j1 = min(n_y, int(math.ceil((cy + reach - y0) / cell)) + 1)
            if i0 < i1 and j0 < j1:
                xs = x0 + (np.arange(i0, i1) + 0.5) * cell - cx
                ys = y0 + (np.arange(j0, j1) + 0.5) * cell - cy
                dx, dy = xs[:, None], ys[None, :]
                c, s = math.cos(yaw), math.sin(yaw)
                u = c * dx + s * dy
                v = -s * dx + c * dy
                if mode == "gt_box":
                    value = ((np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)).astype(np.float32)
                elif mode == "gt_gaussian":
                    sigma_l = max(length / 4.0, cell / 2.0)
                    sigma_w = max(width / 4.0, cell / 2.0)
                    value = np.exp(-0.5 * ((u / sigma_l) ** 2 + (v / sigma_w) ** 2)).astype(np.float32)
                else:
                    raise ValueError(f"unknown foreground mode {mode!r} (gt_box, gt_gaussian)")
                np.maximum(out[b, 0, i0:i1, j0:j1], value, out=out[b, 0, i0:i1, j0:j1])
            ci, cj = math.floor((cx - x0) / cell), math.floor((cy - y0) / cell)
            if 0 <= ci < n_x and 0 <= cj < n_y:
                out[b, 0, ci, cj] = 1.0
    return torch.from_numpy(out).to(device)


def teacher_foreground_map(teacher_heatmap_logits: Tensor) -> Tensor:
    """Teacher heatmap logits (B, K, N_x, N_y) -> (B, 1, N_x, N_y): max-class probability (detached)."""
    return torch.sigmoid(teacher_heatmap_logits.detach().float()).amax(dim=1, keepdim=True)


class XFDLoss(nn.Module):
    """Foreground-weighted BEV feature regression through an adaptation layer.

    Formula (``a = adapter(f_s)`` (B, C_t, N_x, N_y); ``f_t`` teacher features, detached;
    ``w = background_weight + foreground_weight * fg`` (B, 1, N_x, N_y); ``ell`` = squared error
    (``mse``) or smooth-L1 with ``beta`` (``smooth_l1``), element-wise):

        feature = sum_{b,c,i,j} w_{b,i,j} * ell(a_{b,c,i,j} - f_t_{b,c,i,j}) / (C_t * sum_{b,i,j} w_{b,i,j})

    a weighted per-element mean: 0 iff the adapted features equal the teacher's wherever w > 0.

    Default weight in the total objective: 1.0 (see :class:`~x3kd_core.distill.config.XFDConfig`).

    Args:
        student_channels / teacher_channels: C_s, C_t.
        adapter / adapter_channels: see :func:`build_bev_adapter`.
        loss / smooth_l1_beta: the element-wise regression loss.
        foreground_weight / background_weight: the cell weights above.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        *,
        adapter: Literal["conv1x1", "conv_block"] = "conv_block",
        adapter_channels: int = 128,
        loss: Literal["mse", "smooth_l1"] = "mse",
        smooth_l1_beta: float = 1.0,
        foreground_weight: float = 1.0,
        background_weight: float = 0.05,
    ) -> None:
        super().__init__()
        if loss not in ("mse", "smooth_l1"):
            raise ValueError(f"unknown X-FD loss {loss!r} (mse, smooth_l1)")
        self.adapter = build_bev_adapter(student_channels, teacher_channels, adapter, adapter_channels)
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.loss = loss
        self.smooth_l1_beta = smooth_l1_beta
        self.foreground_weight = foreground_weight
        self.background_weight = background_weight

    @classmethod
    def from_config(cls, config: XFDConfig, student_channels: int, teacher_channels: int) -> "XFDLoss":
        return cls(
            student_channels,
            teacher_channels,
            adapter=config.adapter,
            adapter_channels=config.adapter_channels,
            loss=config.loss,
            smooth_l1_beta=config.smooth_l1_beta,
            foreground_weight=config.foreground_weight,
            background_weight=config.background_weight,
        )

    def weight_map(self, foreground: Tensor) -> Tensor:
        """fg (B, 1, N_x, N_y) in [0, 1] -> cell weights (B, 1, N_x, N_y)."""
        return self.background_weight + self.foreground_weight * foreground.detach().float()

    def forward(self, student_bev: Tensor, teacher_bev: Tensor, foreground: Tensor) -> dict[str, Tensor]:
        """Args:
            student_bev: (B, C_s, N_x, N_y) student BEV features.
            teacher_bev: (B, C_t, N_x, N_y) teacher BEV features (detached here).
            foreground: (B, 1, N_x, N_y) in [0, 1], from :func:`bev_foreground_map` or
                :func:`teacher_foreground_map`.

        Returns: see :meth:`loss_from_adapted`.
        """
        return self.loss_from_adapted(self.adapter(student_bev), teacher_bev, foreground)

    def loss_from_adapted(self, adapted: Tensor, teacher_bev: Tensor, foreground: Tensor) -> dict[str, Tensor]:
        """The loss on already adapted student features ``adapted`` (B, C_t, N_x, N_y), so that
        X-AT can share one adapter forward with X-FD.

        Returns:
            ``feature`` (scalar, unweighted) and detached diagnostics: ``stat/fg_cells`` (cells
            with fg >= 0.5, per sample), ``stat/fg_mse`` / ``stat/bg_mse`` (plain mean squared
            error over the cells with fg >= 0.5 / < 0.5; 0 where there are none).
        """
        target = teacher_bev.detach().float()
        adapted = adapted.float()
        if adapted.shape != target.shape:
            raise ValueError(
                f"adapted student BEV {tuple(adapted.shape)} and teacher BEV {tuple(target.shape)} differ: "
                "same grid and teacher_channels?"
            )
        if foreground.shape != (adapted.shape[0], 1, *adapted.shape[2:]):
            raise ValueError(f"foreground must be (B, 1, N_x, N_y) = {(adapted.shape[0], 1, *adapted.shape[2:])}, "
                             f"got {tuple(foreground.shape)}")
        diff = adapted - target
        if self.loss == "mse":
            elem = diff * diff
        else:
            elem = F.smooth_l1_loss(adapted, target, reduction="none", beta=self.smooth_l1_beta)
        w = self.weight_map(foreground)
        loss = (w * elem).sum() / (w.sum() * adapted.shape[1]).clamp_min(1e-6)
        with torch.no_grad():
            per_cell = (diff * diff).mean(dim=1, keepdim=True)
            fg = foreground >= 0.5
            n_fg, n_bg = fg.sum(), (~fg).sum()
            fg_mse = torch.where(n_fg > 0, (per_cell * fg).sum() / n_fg.clamp_min(1), per_cell.new_zeros(()))
            bg_mse = torch.where(n_bg > 0, (per_cell * ~fg).sum() / n_bg.clamp_min(1), per_cell.new_zeros(()))
        return {
            "feature": loss,
            "stat/fg_cells": n_fg.float() / adapted.shape[0],
            "stat/fg_mse": fg_mse,
            "stat/bg_mse": bg_mse,
        }
