"""LiDAR teacher: CenterPoint on pillars (PointPillars encoder, SECOND-FPN BEV backbone, CenterHead),
and what the radar detector shares with it (:class:`SecondFpn`, :class:`BevDetector`).

The teacher's BEV features are compared cell by cell with the student's (X-FD, X-AT) and its head
outputs likewise (X-OD), so :class:`LidarDetector` produces them on EXACTLY the student's BEV grid
(the same :class:`~x3kd_core.config.BevGridConfig`): ``bev_features[b, :, i, j]`` describes the
cell x in ``[x_min + i * cell, x_min + (i + 1) * cell)``, y likewise with ``j``.

Pillars may be finer than the BEV cell (``cell = stride * pillar``); the backbone then brings the
pillar image down to the grid. Every resampling in the backbone uses ``kernel == stride`` (a
strided conv for down-, a transposed conv for upsampling), so each output cell is computed from /
written to exactly the input cells inside it and no half-cell shift appears, unlike SECOND's 3x3
stride-2 convs whose output centres sit half an input cell off the cell centres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from x3kd_core.config import BevGridConfig, ConfigError
from x3kd_core.models.heads.center_head import CenterHead, CenterHeadConfig, HeadOutputs
from x3kd_core.models.teachers.centerpoint_mm import CenterPointMM, CenterPointMMConfig
from x3kd_core.models.teachers.pillars import PillarEncoder
from x3kd_core.structures import Boxes3D

__all__ = [
    "BevBackboneConfig",
    "SecondFpn",
    "LidarDetectorConfig",
    "LidarDetector",
    "BevDetectorOutputs",
    "BevDetector",
    "LIDAR_POINT_CHANNELS",
]

#: LiDAR point layout: x, y, z (m, ego), intensity, time_lag_s.
LIDAR_POINT_CHANNELS = 5


@dataclass(frozen=True)
class BevBackboneConfig:
    """SECOND-FPN style 2D BEV backbone.

    stage_channels / stage_strides / stage_blocks: one entry per stage. A stage downsamples its
        input by ``stage_strides[k]`` (1 = keep), then applies ``stage_blocks[k]`` 3x3
        conv-BN-ReLU. The first stage's input is the pillar pseudo-image.
    upsample_channels: per stage, width of its branch resampled to the output grid; the output is
        the concatenation of all branches (``sum(upsample_channels)`` channels).
    """

    stage_channels: tuple[int, ...] = (64, 128, 256)
    stage_strides: tuple[int, ...] = (1, 2, 2)
    stage_blocks: tuple[int, ...] = (3, 5, 5)
    upsample_channels: tuple[int, ...] = (128, 128, 128)

    def __post_init__(self) -> None:
        n = len(self.stage_channels)
        if n == 0:
            raise ConfigError("stage_channels needs at least one stage")
        for name in ("stage_strides", "stage_blocks", "upsample_channels"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"{name} has {len(getattr(self, name))} entries, stage_channels has {n}")
        if any(s < 1 for s in self.stage_strides) or any(b < 0 for b in self.stage_blocks):
            raise ConfigError("stage_strides must be >= 1 and stage_blocks >= 0")
        if any(c < 1 for c in self.stage_channels + self.upsample_channels):
            raise ConfigError("channels must be >= 1")

    @property
    def out_channels(self) -> int:
        return sum(self.upsample_channels)


def _conv_bn_relu(conv: nn.Module, channels: int) -> nn.Sequential:
    # BN momentum 0.1 (PyTorch's default) rather than CenterPoint's 0.01: eval-mode statistics must
    # catch up with the weights within the few hundred steps of a CPU training run.
    return nn.Sequential(conv, nn.BatchNorm2d(channels, eps=1e-3, momentum=0.1), nn.ReLU(inplace=True))


class SecondFpn(nn.Module):
    """Multi-stage 2D conv backbone whose branches are resampled to one output stride and concatenated.

    Args:
        in_channels: width of the input BEV image.
        config: stages, see :class:`BevBackboneConfig`.
        output_stride: the output is the input downsampled by this integer factor (the pillar
            stride, so that the output lies on the BEV grid). Every stage's cumulative stride must
            divide it or be divisible by it.

    Shapes: (B, in_channels, S * N_x, S * N_y) -> (B, sum(upsample_channels), N_x, N_y), S = output_stride.
    The input sides must be multiples of the largest cumulative stride.
    """

    def __init__(self, in_channels: int, config: BevBackboneConfig, output_stride: int) -> None:
        super().__init__()
        self.config = config
        self.output_stride = output_stride
        self.stages = nn.ModuleList()
        self.branches = nn.ModuleList()
        c_in, cumulative = in_channels, 1
        self.cumulative_strides: list[int] = []
        for c, s, n, c_up in zip(
            config.stage_channels, config.stage_strides, config.stage_blocks, config.upsample_channels
        ):
            cumulative *= s
            self.cumulative_strides.append(cumulative)
            first = (
                nn.Conv2d(c_in, c, kernel_size=s, stride=s, bias=False)
                if s > 1
                else nn.Conv2d(c_in, c, kernel_size=3, padding=1, bias=False)
            )
            layers = [_conv_bn_relu(first, c)]
            layers += [_conv_bn_relu(nn.Conv2d(c, c, 3, padding=1, bias=False), c) for _ in range(n)]
            self.stages.append(nn.Sequential(*layers))
            if cumulative == output_stride:
                branch = nn.Conv2d(c, c_up, kernel_size=1, bias=False)
            elif output_stride % cumulative == 0:
                f = output_stride // cumulative
                branch = nn.Conv2d(c, c_up, kernel_size=f, stride=f, bias=False)
            elif cumulative % output_stride == 0:
                f = cumulative // output_stride
                branch = nn.ConvTranspose2d(c, c_up, kernel_size=f, stride=f, bias=False)
            else:
                raise ConfigError(
                    f"backbone stage cumulative stride {cumulative} and output stride {output_stride} "
                    "must divide one another"
                )
            self.branches.append(_conv_bn_relu(branch, c_up))
            c_in = c
        self.max_stride = max(self.cumulative_strides)
        self.out_channels = config.out_channels

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, S*N_x, S*N_y) -> (B, C_out, N_x, N_y)."""
        if x.shape[-2] % self.max_stride or x.shape[-1] % self.max_stride:
            raise ValueError(f"BEV input {tuple(x.shape[-2:])} is not a multiple of the backbone stride {self.max_stride}")
        outs = []
        for stage, branch in zip(self.stages, self.branches):
            x = stage(x)
            outs.append(branch(x))
        return torch.cat(outs, dim=1)


@dataclass
class BevDetectorOutputs:
    """Output of a BEV teacher (LiDAR or radar).

    Fields:
        bev_features: (B, C_bev, N_x, N_y) the backbone's BEV features, on the BEV grid (X-FD, X-AT).
        head: the CenterHead's dense outputs on the same grid (X-OD, decoding, loss).
    """

    bev_features: Tensor
    head: HeadOutputs


class BevDetector(nn.Module):
    """What every BEV teacher shares: points -> :meth:`bev` (per sensor) -> CenterHead on the grid.

    A subclass builds ``self.backbone`` (a :class:`SecondFpn`) and ``self.head`` (a CenterHead) in
    its ``__init__(config, grid)`` and defines :meth:`bev`; ``forward``, ``loss``, ``predict`` and
    ``from_config`` are the same for all of them.
    """

    backbone: SecondFpn
    head: CenterHead

    @classmethod
    def from_config(cls, config, grid: BevGridConfig):
        return cls(config, grid)

    @property
    def bev_channels(self) -> int:
        """C_bev of ``bev_features``."""
        return self.backbone.out_channels

    def bev(self, points: list[Tensor]) -> Tensor:
        """B point clouds -> bev_features (B, C_bev, N_x, N_y)."""
        raise NotImplementedError

    def forward(self, points: list[Tensor]) -> BevDetectorOutputs:
        bev = self.bev(points)
        return BevDetectorOutputs(bev_features=bev, head=self.head(bev))

    def loss(self, outputs: BevDetectorOutputs, boxes: list[Boxes3D]) -> dict[str, Tensor]:
        """CenterHead losses (named terms) against B ground-truth Boxes3D."""
        return self.head.loss(outputs.head, self.head.get_targets(boxes))

    @torch.no_grad()
    def predict(self, outputs: BevDetectorOutputs) -> list[Boxes3D]:
        """Decoded boxes (ego frame), one Boxes3D per sample."""
        return self.head.predict(outputs.head)

    def _check_backbone_stride(self, what: str, n_x: int, n_y: int) -> None:
        if n_x % self.backbone.max_stride or n_y % self.backbone.max_stride:
            raise ConfigError(f"{what} {n_x} x {n_y} is not divisible by the backbone's total stride "
                              f"{self.backbone.max_stride}")


@dataclass(frozen=True)
class LidarDetectorConfig:
    """CenterPoint-pillar LiDAR teacher (the BEV grid itself comes from the shared BevGridConfig).

    pillar_size_m: pillar edge (m); must divide the BEV cell.
    pillar_channels: widths of the pillar feature net layers.
    backbone: SECOND-FPN stages; its output stride is the pillar stride (cell / pillar).
    head: CenterHead settings.
    """

    pillar_size_m: float = 0.2
    pillar_channels: tuple[int, ...] = (64,)
    backbone: BevBackboneConfig = field(default_factory=BevBackboneConfig)
    head: CenterHeadConfig = field(default_factory=CenterHeadConfig)
    #: When set, the detector IS an mmdet3d CenterPoint-pillar mirror (a converted zoo checkpoint,
    #: ``x3kd convert mmdet3d-centerpoint``) and the four fields above are unused.
    mmdet3d: Optional[CenterPointMMConfig] = None


class LidarDetector(BevDetector):
    """LiDAR points -> BEV features on the shared grid -> CenterHead.

    Args:
        config: model settings. grid: the BEV grid of the whole experiment (the student's).
    """

    def __init__(self, config: LidarDetectorConfig, grid: BevGridConfig) -> None:
        super().__init__()
        self.config = config
        self.grid = grid
        self.mirror: Optional[CenterPointMM] = None
        if config.mmdet3d is not None:
            _check_mirror_grid(config.mmdet3d, grid)
            self.mirror = CenterPointMM(config.mmdet3d)
            return
        self.pillars = PillarEncoder(
            grid=grid,
            pillar_size_m=config.pillar_size_m,
            point_channels=LIDAR_POINT_CHANNELS,
            feature_channels=config.pillar_channels,
        )
        self.backbone = SecondFpn(self.pillars.out_channels, config.backbone, output_stride=self.pillars.stride)
        self._check_backbone_stride("pillar grid", *self.pillars.grid_size_xy)
        self.head = CenterHead(config.head, self.backbone.out_channels, grid)

    @property
    def bev_channels(self) -> int:
        """C_bev of ``bev_features``."""
        if self.mirror is not None:
            return self.mirror.bev_channels
        return super().bev_channels

    def bev(self, lidar_points: list[Tensor]) -> Tensor:
        """lidar_points: B tensors (P_b, 5) -> bev_features (B, C_bev, N_x, N_y)."""
        if self.mirror is not None:
            return self.mirror(lidar_points).bev_features
        return self.backbone(self.pillars(lidar_points))

    def forward(self, lidar_points: list[Tensor]) -> BevDetectorOutputs:
        """lidar_points: B tensors (P_b, 5) x, y, z (m, ego), intensity, time_lag_s."""
        if self.mirror is not None:
            return self.mirror(lidar_points)  # type: ignore[return-value]  # same fields, plus the raw maps
        return super().forward(lidar_points)

    def loss(self, outputs: BevDetectorOutputs, boxes: list[Boxes3D]) -> dict[str, Tensor]:
        """CenterHead losses (named terms) against B ground-truth Boxes3D."""
        if self.mirror is not None:
            return self.mirror.loss()
        return super().loss(outputs, boxes)

    @torch.no_grad()
    def predict(self, outputs: BevDetectorOutputs) -> list[Boxes3D]:
        """Decoded boxes (ego frame), one Boxes3D per sample."""
        if self.mirror is not None:
            return self.mirror.predict(outputs)  # type: ignore[arg-type]
        return super().predict(outputs)


def _check_mirror_grid(config: CenterPointMMConfig, grid: BevGridConfig) -> None:
    """The mirror's head grid (its point range, cell = voxel x out_size_factor) must BE the
    experiment's BEV grid, or its features would not line up with the student's cell by cell."""
    pcr = config.point_cloud_range
    mine = ((pcr[0], pcr[3]), (pcr[1], pcr[4]), config.bev_cell_m)
    theirs = (tuple(grid.x_range_m), tuple(grid.y_range_m), grid.cell_size_m)
    close = all(abs(a - b) < 1e-6 for a, b in zip((*mine[0], *mine[1], mine[2]), (*theirs[0], *theirs[1], theirs[2])))
    if not close:
        raise ConfigError(
            f"the mmdet3d model's BEV grid (x {mine[0]}, y {mine[1]}, cell {mine[2]:g} m) differs from the "
            f"experiment grid (x {theirs[0]}, y {theirs[1]}, cell {theirs[2]:g} m); set grid: to the model's"
        )
