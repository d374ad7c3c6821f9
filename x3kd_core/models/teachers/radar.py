"""Radar BEV encoder (for camera+radar students) and a radar-only CenterPoint-style detector.

:class:`RadarBevEncoder` output contract (what a camera+radar fusion consumes):
``(B, C_radar, N_x, N_y)`` float on the shared BEV grid (same layout as every BEV tensor),
``C_radar = config.pillar_channels[-1]``, every value >= 0, and **exactly 0 in every cell that
holds no radar point** (after range filtering and optional motion compensation): there is no
conv or bias after the scatter, so radar's sparsity reaches the fusion intact. The converse does
not hold exactly (a ReLU may zero every channel of a real return); a fusion that needs the exact
"has a return" mask gets it from :meth:`RadarBevEncoder.occupancy` (points per cell).

Multi-sweep radar points (nuScenes accumulates ~6 sweeps) arrive in the keyframe's ego frame
with their ``time_lag_s``. With ``motion_compensate`` the encoder moves every point by its
ego-motion-compensated velocity times its time lag (``x += vx * lag``), so returns of a moving
object from older sweeps land where the object is at the keyframe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from x3kd_core.config import BevGridConfig, ConfigError
from x3kd_core.models.heads.center_head import CenterHead, CenterHeadConfig
from x3kd_core.models.teachers.lidar import BevBackboneConfig, BevDetector, SecondFpn
from x3kd_core.models.teachers.pillars import PillarEncoder, pillar_stride, voxelize

__all__ = [
    "RadarEncoderConfig",
    "RadarBevEncoder",
    "RadarDetectorConfig",
    "RadarDetector",
    "RADAR_POINT_CHANNELS",
]

#: Radar point layout: x, y, z (m, ego), rcs (dBsm), vx, vy (m/s, ego-motion compensated), time_lag_s.
RADAR_POINT_CHANNELS = 7


@dataclass(frozen=True)
class RadarEncoderConfig:
    """Radar pillars.

    pillar_size_m: pillar edge (m), dividing the BEV cell; finer pillars are max-pooled to the cell.
    pillar_channels: widths of the pillar feature net; the encoder outputs ``pillar_channels[-1]``.
    motion_compensate: shift each point by (vx, vy) * time_lag_s before voxelising.
    """

    pillar_size_m: float = 0.8
    pillar_channels: tuple[int, ...] = (32,)
    motion_compensate: bool = True

    def __post_init__(self) -> None:
        if not self.pillar_channels or min(self.pillar_channels) < 1:
            raise ConfigError("pillar_channels needs at least one layer, each >= 1 wide")


class RadarBevEncoder(nn.Module):
    """Radar points -> sparse BEV features (B, C_radar, N_x, N_y); see the module docstring."""

    def __init__(self, config: RadarEncoderConfig, grid: BevGridConfig) -> None:
        super().__init__()
        self.config = config
        self.grid = grid
        self.pillars = PillarEncoder(
            grid=grid,
            pillar_size_m=config.pillar_size_m,
            point_channels=RADAR_POINT_CHANNELS,
            feature_channels=config.pillar_channels,
        )
        self.stride = pillar_stride(grid, config.pillar_size_m)
        self.out_channels = self.pillars.out_channels

    def _prepare(self, radar_points: list[Tensor]) -> list[Tensor]:
        out = []
        for b, pts in enumerate(radar_points):
            if pts.ndim != 2 or pts.shape[1] != RADAR_POINT_CHANNELS:
                raise ValueError(f"radar cloud {b} has shape {tuple(pts.shape)}, expected (Q, {RADAR_POINT_CHANNELS})")
            if self.config.motion_compensate:
                pts = pts.clone()
                pts[:, 0:2] += pts[:, 4:6] * pts[:, 6:7]
            out.append(pts)
        return out

    def forward(self, radar_points: list[Tensor]) -> Tensor:
        """radar_points: B tensors (Q_b, 7) -> (B, C_radar, N_x, N_y), >= 0, exactly 0 in empty cells."""
        image = self.pillars(self._prepare(radar_points))
        if self.stride > 1:
            # Max keeps "0 = empty": the features are >= 0 (ReLU) and empty pillars are exactly 0.
            image = F.max_pool2d(image, kernel_size=self.stride, stride=self.stride)
        return image

    @torch.no_grad()
    def occupancy(self, radar_points: list[Tensor]) -> Tensor:
        """(B, 1, N_x, N_y) float: number of radar points per BEV cell (after the same filtering)."""
        pillars = voxelize(self._prepare(radar_points), self.grid, self.grid.cell_size_m)
        n_x, n_y = pillars.grid_size_xy
        out = torch.zeros(pillars.batch_size * n_x * n_y, device=pillars.coords.device)
        flat = (pillars.coords[:, 0] * n_x + pillars.coords[:, 1]) * n_y + pillars.coords[:, 2]
        out[flat] = pillars.num_points.float()
        return out.view(pillars.batch_size, 1, n_x, n_y)


@dataclass(frozen=True)
class RadarDetectorConfig:
    """Radar-only detector: encoder (also the camera+radar student's radar branch), BEV backbone, head.

    The backbone runs on the encoder's output, which is already on the BEV grid, so its output
    stride is 1 (stages that downsample are upsampled back).
    """

    encoder: RadarEncoderConfig = field(default_factory=RadarEncoderConfig)
    backbone: BevBackboneConfig = field(
        default_factory=lambda: BevBackboneConfig(
            stage_channels=(64, 128), stage_strides=(1, 2), stage_blocks=(2, 2), upsample_channels=(64, 64)
        )
    )
    head: CenterHeadConfig = field(default_factory=CenterHeadConfig)


class RadarDetector(BevDetector):
    """Radar points -> RadarBevEncoder -> SECOND-FPN (stride 1) -> CenterHead."""

    def __init__(self, config: RadarDetectorConfig, grid: BevGridConfig) -> None:
        super().__init__()
        self.config = config
        self.grid = grid
        self.encoder = RadarBevEncoder(config.encoder, grid)
        self.backbone = SecondFpn(self.encoder.out_channels, config.backbone, output_stride=1)
        self._check_backbone_stride("BEV grid", *grid.size_xy)
        self.head = CenterHead(config.head, self.backbone.out_channels, grid)

    def bev(self, radar_points: list[Tensor]) -> Tensor:
        """radar_points: B tensors (Q_b, 7) x, y, z, rcs, vx, vy, time_lag_s -> (B, C_bev, N_x, N_y)."""
        return self.backbone(self.encoder(radar_points))
