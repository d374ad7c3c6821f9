"""Dense CenterPoint-style training targets: gaussian class heatmaps plus per-object regression.

Encoding (decoded again by :meth:`x3kd_core.models.heads.center_head.CenterHead.predict`):
a box centred at ego (x, y) has continuous cell coordinates
``u = (x - x_min) / cell``, ``v = (y - y_min) / cell``; its cell is ``(i, j) = (floor(u), floor(v))``
and its sub-cell offset ``(u - i, v - j)`` in [0, 1) cells. The class heatmap gets a gaussian peak
of exactly 1 at cell (i, j), whose radius follows CenterNet from the box footprint in cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from x3kd_core.config import BevGridConfig
from x3kd_core.structures import Boxes3D

__all__ = ["HeadTargets", "gaussian_radius", "draw_gaussian", "encode_targets"]


@dataclass
class HeadTargets:
    """Training targets for a batch of B samples, objects padded to M per sample.

    Fields (M = the largest object count in the batch, capped at ``max_objects``; may be 0):
        heatmap: (B, K, N_x, N_y) float gaussian class heatmaps in [0, 1], exactly 1 at object cells.
        index: (B, M) int64 flat cell ``i * N_y + j`` of each object (0 in padding).
        mask: (B, M) bool, True for real objects, False for padding.
        label: (B, M) int64 class index (0 in padding).
        offset: (B, M, 2) sub-cell centre offset (u - i, v - j) in cells, in [0, 1).
        height: (B, M, 1) box-centre z (m).
        log_size: (B, M, 3) log of length, width, height (log m).
        rot: (B, M, 2) sin(yaw), cos(yaw).
        velocity: (B, M, 2) vx, vy (m/s); 0 where unknown.
        velocity_mask: (B, M) bool, True for real objects whose vx and vy are both finite.
    """

    heatmap: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor
    label: torch.Tensor
    offset: torch.Tensor
    height: torch.Tensor
    log_size: torch.Tensor
    rot: torch.Tensor
    velocity: torch.Tensor
    velocity_mask: torch.Tensor

    @property
    def num_objects(self) -> int:
        return int(self.mask.sum())


def gaussian_radius(length_cells: float, width_cells: float, min_overlap: float) -> float:
    """CenterNet heatmap radius (cells) for an object footprint of ``length x width`` cells.

    The largest shift r of both box corners that still leaves IoU >= ``min_overlap`` with the
    original footprint, taken as the minimum over three cases (derived here, as in CornerNet):
    a box of the same size moved by r in x and y; a box shrunk by r on every side; a box grown by
    r on every side. Each case is a quadratic in r; we take its relevant root.
    """
    a, b, o = float(length_cells), float(width_cells), float(min_overlap)
    s = a + b
    # Moved by (r, r): (a - r)(b - r)(1 + o) >= 2 o a b -> smaller root.
    c1 = a * b * (1.0 - o) / (1.0 + o)
    r1 = (s - math.sqrt(max(s * s - 4.0 * c1, 0.0))) / 2.0
    # Shrunk by r per side: (a - 2r)(b - 2r) >= o a b -> smaller root.
    r2 = (2.0 * s - math.sqrt(max(4.0 * s * s - 16.0 * (1.0 - o) * a * b, 0.0))) / 8.0
    # Grown by r per side: a b >= o (a + 2r)(b + 2r) -> positive root.
    r3 = (-2.0 * o * s + math.sqrt(4.0 * o * o * s * s + 16.0 * o * (1.0 - o) * a * b)) / (8.0 * o)
    return min(r1, r2, r3)


def draw_gaussian(heatmap: np.ndarray, i: int, j: int, radius: int) -> None:
    """Max-merge a gaussian (sigma = (2 * radius + 1) / 6 cells, peak 1) at cell [i, j] in place.

    Args:
        heatmap: (N_x, N_y) float array of one class.
        i, j: peak cell along x and y.
        radius: half-size of the square window (cells); the window is clipped at the map border.
    """
    sigma = (2 * radius + 1) / 6.0
    n_x, n_y = heatmap.shape
    i0, i1 = max(0, i - radius), min(n_x, i + radius + 1)
    j0, j1 = max(0, j - radius), min(n_y, j + radius + 1)
    di = np.arange(i0, i1)[:, None] - i
    dj = np.arange(j0, j1)[None, :] - j
    gauss = np.exp(-(di * di + dj * dj) / (2.0 * sigma * sigma))
    np.maximum(heatmap[i0:i1, j0:j1], gauss, out=heatmap[i0:i1, j0:j1])


def encode_targets(
    boxes: list[Boxes3D],
    grid: BevGridConfig,
    num_classes: int,
    gaussian_overlap: float,
    min_radius_cells: int,
    max_objects: int,
    device: torch.device | str = "cpu",
) -> HeadTargets:
    """Encode ground-truth boxes (ego frame) of B samples into :class:`HeadTargets`.

    Boxes whose centre lies outside the grid's x/y range are skipped (z is not checked: the
    heatmap is 2D). Per sample at most ``max_objects`` boxes are kept, in their given order.

    Raises:
        ValueError: a label is >= ``num_classes``.
    """
    n_x, n_y = grid.size_xy
    cell = grid.cell_size_m
    batch = len(boxes)
    kept: list[Boxes3D] = []
    for sample_boxes in boxes:
        if len(sample_boxes) and int(sample_boxes.label.max()) >= num_classes:
            raise ValueError(f"box label {int(sample_boxes.label.max())} >= num_classes {num_classes}")
        u = (sample_boxes.center[:, 0] - grid.x_range_m[0]) / cell
        v = (sample_boxes.center[:, 1] - grid.y_range_m[0]) / cell
        inside = (u >= 0) & (u < n_x) & (v >= 0) & (v < n_y)
        kept.append(sample_boxes[np.flatnonzero(inside)[:max_objects]])
    m = max((len(b) for b in kept), default=0)

    heatmap = np.zeros((batch, num_classes, n_x, n_y), dtype=np.float32)
    index = np.zeros((batch, m), dtype=np.int64)
    mask = np.zeros((batch, m), dtype=bool)
    label = np.zeros((batch, m), dtype=np.int64)
    offset = np.zeros((batch, m, 2), dtype=np.float32)
    height = np.zeros((batch, m, 1), dtype=np.float32)
    log_size = np.zeros((batch, m, 3), dtype=np.float32)
    rot = np.zeros((batch, m, 2), dtype=np.float32)
    velocity = np.zeros((batch, m, 2), dtype=np.float32)
    velocity_mask = np.zeros((batch, m), dtype=bool)
    for b, sample_boxes in enumerate(kept):
        n = len(sample_boxes)
        if n == 0:
            continue
        u = (sample_boxes.center[:, 0] - grid.x_range_m[0]) / cell
        v = (sample_boxes.center[:, 1] - grid.y_range_m[0]) / cell
        ci = np.floor(u).astype(np.int64)
        cj = np.floor(v).astype(np.int64)
        for k in range(n):
            length_cells, width_cells = sample_boxes.size_lwh[k, :2] / cell
            radius = gaussian_radius(length_cells, width_cells, gaussian_overlap)
            radius = max(int(min_radius_cells), int(radius))
            draw_gaussian(heatmap[b, sample_boxes.label[k]], int(ci[k]), int(cj[k]), radius)
        index[b, :n] = ci * n_y + cj
        mask[b, :n] = True
        label[b, :n] = sample_boxes.label
        offset[b, :n, 0] = u - ci
        offset[b, :n, 1] = v - cj
        height[b, :n, 0] = sample_boxes.center[:, 2]
        log_size[b, :n] = np.log(np.maximum(sample_boxes.size_lwh, 1e-3))
        rot[b, :n, 0] = np.sin(sample_boxes.yaw)
        rot[b, :n, 1] = np.cos(sample_boxes.yaw)
        finite = np.isfinite(sample_boxes.velocity).all(axis=1)
        velocity[b, :n] = np.where(finite[:, None], sample_boxes.velocity, 0.0)
        velocity_mask[b, :n] = finite

    def t(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device)

    return HeadTargets(
        heatmap=t(heatmap),
        index=t(index),
        mask=t(mask),
        label=t(label),
        offset=t(offset),
        height=t(height),
        log_size=t(log_size),
        rot=t(rot),
        velocity=t(velocity),
        velocity_mask=t(velocity_mask),
    )
