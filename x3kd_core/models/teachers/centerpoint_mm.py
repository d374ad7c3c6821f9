"""A layer-for-layer mirror of mmdet3d 1.4's CenterPoint-pillar, in plain PyTorch (no mmcv).

It exists so that the OpenMMLab model zoo's CenterPoint-pillar checkpoints can serve as x3kd's
LiDAR teacher without mmcv / mmdet3d at run time (:mod:`x3kd_core.convert.mmdet3d` maps their
state dict onto this module). Every part computes what its mmdet3d counterpart computes:

* :func:`hard_voxelize` — mmcv's CPU hard voxelisation (``Voxelization``, deterministic): points
  are visited in input order; a pillar is created on its first point while fewer than
  ``max_voxels`` exist, and keeps at most ``max_num_points`` points (later ones are dropped).
  Pillars come out in order of their first point; coordinates are (z, y, x).
* :class:`MMPillarFeatureNet` — ``PillarFeatureNet(legacy=False)``: raw point features, offset
  to the pillar's point mean (x, y, z), offset to the pillar centre (x, y, z), padded slots set
  to zero, then ``PFNLayer`` s (Linear, BatchNorm1d, ReLU, max over the ``max_num_points`` slots).
  The max runs over the padded slots too (as in mmdet3d): a pillar with fewer points than
  ``max_num_points`` also sees ReLU(BN(0)).
* the scatter (``PointPillarsScatter``): canvas ``(B, C, N_y, N_x)``, row = y, column = x.
* :class:`MMSecond`, :class:`MMSecondFpn`, :class:`MMCenterHead` — ``SECOND``, ``SECONDFPN``,
  ``CenterHead`` / ``SeparateHead`` with the same module names as mmdet3d, so a checkpoint's keys
  map by prefix alone.
* :meth:`CenterPointMM.predict` — ``CenterPointBBoxCoder.decode`` (per task group: top-K per
  class, then top-K over the group) and the test-time NMS (``circle`` or ``rotate``).

Layouts. Inside, tensors keep mmdet3d's ``(B, C, N_y, N_x)``; what leaves through
:meth:`CenterPointMM.forward` is transposed to x3kd's ``(B, C, N_x, N_y)`` (a transpose, exact).
Points are taken in the frame the source model was trained in (for the nuScenes zoo models, the
LIDAR_TOP sensor frame, x3kd's ego frame rotated and shifted; see the README).

One file on purpose (issue 14): it is one model, the mirror of one mmdet3d architecture, whose
module names must line up with the checkpoint's keys as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x3kd_core.config import ConfigError
from x3kd_core.models.heads.center_head import HeadOutputs
from x3kd_core.structures import DETECTION_CLASSES, Boxes3D

__all__ = [
    "CenterPointMMConfig",
    "CenterPointMM",
    "HardVoxels",
    "hard_voxelize",
    "rotated_bev_iou",
    "COMMON_HEADS",
]

#: SeparateHead branches of every task group other than the heatmap: name -> channels (mmdet3d's
#: ``common_heads`` for nuScenes: reg, height, dim, rot, vel).
COMMON_HEADS: tuple[tuple[str, int], ...] = (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))

#: Heatmap logit given to x3kd classes that no task group of the source model predicts.
_ABSENT_CLASS_LOGIT = -30.0


@dataclass(frozen=True)
class CenterPointMMConfig:
    """Everything an mmdet3d CenterPoint-pillar config fixes about the network and its decoding.

    Geometry: point_cloud_range (x_min, y_min, z_min, x_max, y_max, z_max) m; voxel_size (m) of a
        pillar (its z extent spans the whole range); out_size_factor: pillar -> head stride.
    Voxelisation: max_num_points per pillar; max_voxels (training, testing).
    Network: point_channels (5: x, y, z, intensity, time lag); pfn_channels; backbone_* (SECOND);
        neck_* (SECONDFPN; upsample strides < 1 are strided convs); share_conv_channels,
        head_conv_channels, head_convs (convs per SeparateHead branch, the last one included),
        final_kernel; *_bn_eps.
    Tasks: class names of each task group (mmdet3d's ``tasks``), names from DETECTION_CLASSES.
    Decoding (``test_cfg``): max_num (top-K), score_threshold, post_center_range, nms_type,
        nms_iou_threshold / pre_max_size / post_max_size (rotate), min_radius per task (circle:
        suppress when the squared centre distance is <= this number, as mmdet3d does).
    Provenance: source (the mmdet3d config name), sweeps (LiDAR frames the source model was
        trained with: keyframe + sweeps, 10 on nuScenes).
    """

    point_cloud_range: tuple[float, float, float, float, float, float] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    voxel_size: tuple[float, float, float] = (0.2, 0.2, 8.0)
    max_num_points: int = 20
    max_voxels: tuple[int, int] = (30000, 40000)
    point_channels: int = 5
    pfn_channels: tuple[int, ...] = (64,)
    pfn_bn_eps: float = 1e-3
    backbone_channels: tuple[int, ...] = (64, 128, 256)
    backbone_layers: tuple[int, ...] = (3, 5, 5)
    backbone_strides: tuple[int, ...] = (2, 2, 2)
    neck_channels: tuple[int, ...] = (128, 128, 128)
    neck_upsample_strides: tuple[float, ...] = (0.5, 1.0, 2.0)
    bn_eps: float = 1e-3
    share_conv_channels: int = 64
    head_conv_channels: int = 64
    head_convs: int = 2
    final_kernel: int = 3
    head_bn_eps: float = 1e-5
    tasks: tuple[tuple[str, ...], ...] = (
        ("car",), ("truck", "construction_vehicle"), ("bus", "trailer"), ("barrier",),
        ("motorcycle", "bicycle"), ("pedestrian", "traffic_cone"),
    )
    out_size_factor: int = 4
    max_num: int = 500
    score_threshold: float = 0.1
    post_center_range: tuple[float, float, float, float, float, float] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    nms_type: Literal["rotate", "circle"] = "rotate"
    nms_iou_threshold: float = 0.2
    pre_max_size: int = 1000
    post_max_size: int = 83
    min_radius: tuple[float, ...] = (4.0, 12.0, 10.0, 1.0, 0.85, 0.175)
    source: str = ""
    sweeps: int = 10

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for t, names in enumerate(self.tasks):
            if not names:
                raise ConfigError(f"tasks[{t}] has no class")
            for name in names:
                if name not in DETECTION_CLASSES:
                    raise ConfigError(
                        f"tasks[{t}] class '{name}' is not a nuScenes detection class; "
                        f"x3kd's classes are {list(DETECTION_CLASSES)}"
                    )
                if name in seen:
                    raise ConfigError(f"class '{name}' is in task {seen[name]} and task {t}")
                seen[name] = t
        if len(self.min_radius) != len(self.tasks):
            raise ConfigError(f"min_radius has {len(self.min_radius)} entries, tasks has {len(self.tasks)}")
        n = len(self.backbone_channels)
        for name in ("backbone_layers", "backbone_strides", "neck_channels", "neck_upsample_strides"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"{name} has {len(getattr(self, name))} entries, backbone_channels has {n}")
        # Every neck branch must land on the same stride: the head's out_size_factor.
        cumulative = 1
        for k, (s, up) in enumerate(zip(self.backbone_strides, self.neck_upsample_strides)):
            cumulative *= s
            if abs(cumulative / up - self.out_size_factor) > 1e-6:
                raise ConfigError(
                    f"neck branch {k}: backbone stride {cumulative} / upsample {up} != out_size_factor "
                    f"{self.out_size_factor}"
                )
        for axis in range(2):
            cells = (self.point_cloud_range[axis + 3] - self.point_cloud_range[axis]) / self.voxel_size[axis]
            if abs(cells - round(cells)) > 1e-4 or round(cells) % self.out_size_factor:
                raise ConfigError(f"range / voxel_size along axis {axis} = {cells} is not a multiple of "
                                  f"out_size_factor {self.out_size_factor}")

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """(N_x, N_y, N_z) pillars, computed in float32 as mmcv does."""
        rng = np.asarray(self.point_cloud_range, dtype=np.float32)
        vs = np.asarray(self.voxel_size, dtype=np.float32)
        return tuple(int(v) for v in np.round((rng[3:] - rng[:3]) / vs))  # type: ignore[return-value]

    @property
    def class_names(self) -> tuple[str, ...]:
        """All classes, task group by task group (mmdet3d's label order)."""
        return tuple(name for names in self.tasks for name in names)

    @property
    def bev_cell_m(self) -> float:
        """Edge of one head cell (m): voxel size times out_size_factor."""
        return self.voxel_size[0] * self.out_size_factor


# ------------------------------------------------------------------------------ voxelisation


@dataclass
class HardVoxels:
    """Output of :func:`hard_voxelize` for one cloud (mmcv's ``Voxelization`` outputs).

    voxels: (M, max_num_points, C) point features, zero in unused slots.
    coors: (M, 3) int32 (z, y, x) pillar indices. num_points: (M,) int32, in [1, max_num_points].
    """

    voxels: Tensor
    coors: Tensor
    num_points: Tensor


def hard_voxelize(points: Tensor, config: CenterPointMMConfig, training: bool = False) -> HardVoxels:
    """mmcv's deterministic hard voxelisation of one cloud, vectorised.

    Args:
        points: (P, C) with x, y, z (m) first. Non-finite coordinates are dropped (mmcv's C++
            leaves them undefined).
        config: range, voxel size, max_num_points, max_voxels (index 0 when ``training``, else 1).

    Cell index = floor((p - range_min) / voxel_size) in float32, kept when 0 <= index < grid.
    """
    rng = torch.tensor(config.point_cloud_range[:3], dtype=torch.float32, device=points.device)
    vs = torch.tensor(config.voxel_size, dtype=torch.float32, device=points.device)
    gx, gy, gz = config.grid_shape
    max_points = config.max_num_points
    max_voxels = config.max_voxels[0 if training else 1]
    xyz = points[:, :3].float()
    cell = torch.floor((xyz - rng) / vs)
    grid = torch.tensor([gx, gy, gz], dtype=cell.dtype, device=points.device)
    valid = torch.isfinite(xyz).all(dim=1) & ((cell >= 0) & (cell < grid)).all(dim=1)
    index = torch.nonzero(valid).squeeze(1)
    cell = cell[index].long()
    flat = (cell[:, 2] * gy + cell[:, 1]) * gx + cell[:, 0]
    uniq, inverse = torch.unique(flat, return_inverse=True)
    order = torch.arange(flat.shape[0], device=points.device)
    first = torch.full((uniq.shape[0],), flat.shape[0], dtype=torch.long, device=points.device)
    first = first.scatter_reduce(0, inverse, order, reduce="amin")
    # Voxels are numbered by their first point, and only the first max_voxels of them exist.
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(first.shape[0], device=points.device)
    voxel_of_point = rank[inverse]
    # Slot of a point inside its voxel: how many earlier points share the voxel.
    sorted_voxel, perm = torch.sort(voxel_of_point, stable=True)
    counts = torch.bincount(sorted_voxel, minlength=first.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(voxel_of_point)
    slot[perm] = torch.arange(perm.shape[0], device=points.device) - starts[sorted_voxel]
    keep = (voxel_of_point < max_voxels) & (slot < max_points)
    num_voxels = min(int(first.shape[0]), max_voxels)
    voxels = points.new_zeros(num_voxels, max_points, points.shape[1])
    voxels[voxel_of_point[keep], slot[keep]] = points[index[keep]]
    coors = torch.zeros(num_voxels, 3, dtype=torch.int32, device=points.device)
    coors[voxel_of_point[keep]] = cell[keep].flip(1).int()
    num_points = counts[:num_voxels].clamp(max=max_points).int()
    return HardVoxels(voxels=voxels, coors=coors, num_points=num_points)


# ------------------------------------------------------------------------------ network


class _PFNLayer(nn.Module):
    """mmdet3d ``PFNLayer`` (mode 'max'): Linear (no bias), BatchNorm1d, ReLU, max over slots."""

    def __init__(self, in_channels: int, out_channels: int, eps: float, last_layer: bool) -> None:
        super().__init__()
        self.last_layer = last_layer
        units = out_channels if last_layer else out_channels // 2
        self.linear = nn.Linear(in_channels, units, bias=False)
        self.norm = nn.BatchNorm1d(units, eps=eps, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """x (M, S, C_in) -> (M, 1, C_out) if last else (M, S, C_out)."""
        x = self.norm(self.linear(x).permute(0, 2, 1).contiguous()).permute(0, 2, 1).contiguous()
        x = F.relu(x)
        x_max = x.max(dim=1, keepdim=True).values
        if self.last_layer:
            return x_max
        return torch.cat([x, x_max.repeat(1, x.shape[1], 1)], dim=2)


class MMPillarFeatureNet(nn.Module):
    """mmdet3d ``PillarFeatureNet`` (with_cluster_center, with_voxel_center, no distance, legacy=False).

    Input of the first layer: C point features + 3 offsets to the pillar mean + 3 offsets to the
    pillar centre (z centre = range z_min + voxel z / 2 for the single z layer).
    """

    def __init__(self, config: CenterPointMMConfig) -> None:
        super().__init__()
        self.config = config
        channels = [config.point_channels + 6, *config.pfn_channels]
        self.pfn_layers = nn.ModuleList(
            _PFNLayer(channels[i], channels[i + 1], config.pfn_bn_eps, last_layer=i == len(channels) - 2)
            for i in range(len(channels) - 1)
        )

    def forward(self, voxels: Tensor, num_points: Tensor, coors: Tensor) -> Tensor:
        """voxels (M, S, C), num_points (M,), coors (M, 4) (batch, z, y, x) -> (M, C_out)."""
        cfg = self.config
        vx, vy, vz = cfg.voxel_size
        x0, y0, z0 = (vx / 2 + cfg.point_cloud_range[0], vy / 2 + cfg.point_cloud_range[1],
                      vz / 2 + cfg.point_cloud_range[2])
        mean = voxels[:, :, :3].sum(dim=1, keepdim=True) / num_points.type_as(voxels).view(-1, 1, 1)
        f_cluster = voxels[:, :, :3] - mean
        dtype = voxels.dtype
        f_center = torch.stack(
            [
                voxels[:, :, 0] - (coors[:, 3].to(dtype).unsqueeze(1) * vx + x0),
                voxels[:, :, 1] - (coors[:, 2].to(dtype).unsqueeze(1) * vy + y0),
                voxels[:, :, 2] - (coors[:, 1].to(dtype).unsqueeze(1) * vz + z0),
            ],
            dim=2,
        )
        features = torch.cat([voxels, f_cluster, f_center], dim=-1)
        slots = torch.arange(voxels.shape[1], device=voxels.device).view(1, -1)
        features = features * (num_points.view(-1, 1).int() > slots).unsqueeze(-1).type_as(features)
        for layer in self.pfn_layers:
            features = layer(features)
        return features.squeeze(1)


def _bn2d(channels: int, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=0.01)


class MMSecond(nn.Module):
    """mmdet3d ``SECOND``: per stage a 3x3 conv of stride s then ``layers`` 3x3 convs, each BN + ReLU.

    ``blocks[i]`` is an ``nn.Sequential`` of (conv, bn, relu) triples, so checkpoint keys are
    ``blocks.i.(3k).weight`` (conv) and ``blocks.i.(3k+1).*`` (BN).
    """

    def __init__(self, config: CenterPointMMConfig) -> None:
        super().__init__()
        in_filters = [config.pfn_channels[-1], *config.backbone_channels[:-1]]
        blocks = []
        for c_in, c_out, n, s in zip(in_filters, config.backbone_channels, config.backbone_layers, config.backbone_strides):
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=False),
                                       _bn2d(c_out, config.bn_eps), nn.ReLU(inplace=True)]
            for _ in range(n):
                layers += [nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), _bn2d(c_out, config.bn_eps),
                           nn.ReLU(inplace=True)]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


class MMSecondFpn(nn.Module):
    """mmdet3d ``SECONDFPN`` (use_conv_for_no_stride): per stage a deconv (stride > 1) or a conv of
    kernel = stride = round(1 / s) (s <= 1), BN, ReLU; the branches are concatenated."""

    def __init__(self, config: CenterPointMMConfig) -> None:
        super().__init__()
        deblocks = []
        for c_in, c_out, s in zip(config.backbone_channels, config.neck_channels, config.neck_upsample_strides):
            if s > 1:
                k = int(round(s))
                up: nn.Module = nn.ConvTranspose2d(c_in, c_out, k, stride=k, bias=False)
            else:
                k = int(np.round(1 / s))
                up = nn.Conv2d(c_in, c_out, k, stride=k, bias=False)
            deblocks.append(nn.Sequential(up, _bn2d(c_out, config.bn_eps), nn.ReLU(inplace=True)))
        self.deblocks = nn.ModuleList(deblocks)

    def forward(self, feats: list[Tensor]) -> Tensor:
        return torch.cat([d(x) for d, x in zip(self.deblocks, feats)], dim=1)


class _ConvModule(nn.Module):
    """mmcv ``ConvModule`` with a norm: conv (no bias), ``bn``, ReLU (keys ``conv.*``, ``bn.*``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class _SeparateHead(nn.Module):
    """mmdet3d ``SeparateHead``: per branch (head_convs - 1) ConvModules then a biased conv."""

    def __init__(self, config: CenterPointMMConfig, num_classes: int) -> None:
        super().__init__()
        self.branches = tuple(n for n, _ in COMMON_HEADS) + ("heatmap",)
        for name, channels in (*COMMON_HEADS, ("heatmap", num_classes)):
            layers: list[nn.Module] = []
            c_in = config.share_conv_channels
            for _ in range(config.head_convs - 1):
                layers.append(_ConvModule(c_in, config.head_conv_channels, config.final_kernel, config.head_bn_eps))
                c_in = config.head_conv_channels
            layers.append(nn.Conv2d(config.head_conv_channels, channels, config.final_kernel,
                                    padding=config.final_kernel // 2, bias=True))
            self.add_module(name, nn.Sequential(*layers))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {name: getattr(self, name)(x) for name in self.branches}


class MMCenterHead(nn.Module):
    """mmdet3d ``CenterHead``: a shared 3x3 ConvModule, then one SeparateHead per task group."""

    def __init__(self, config: CenterPointMMConfig) -> None:
        super().__init__()
        self.shared_conv = _ConvModule(sum(config.neck_channels), config.share_conv_channels, 3, config.head_bn_eps)
        self.task_heads = nn.ModuleList(_SeparateHead(config, len(names)) for names in config.tasks)

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        x = self.shared_conv(x)
        return [head(x) for head in self.task_heads]


# ------------------------------------------------------------------------------ the detector


@dataclass
class MMBevDetectorOutputs:
    """Outputs of :class:`CenterPointMM`, in x3kd's layout plus the raw per-task maps.

    Fields:
        bev_features: (B, C_bev, N_x, N_y) the neck output (X-FD, X-AT).
        head: task groups merged into one :class:`HeadOutputs` on (N_x, N_y) (X-OD): heatmap
            channels in DETECTION_CLASSES order (absent classes at logit -30); every regression
            map taken, cell by cell, from the task group with the highest heatmap logit there.
        task_outputs: per task group, mmdet3d's dict (reg, height, dim, rot, vel, heatmap), each
            (B, C, N_y, N_x) exactly as mmdet3d's CenterHead returns it (decoding, parity).
        neck: (B, C_bev, N_y, N_x) mmdet3d's neck output (parity).
    """

    bev_features: Tensor
    head: HeadOutputs
    task_outputs: list[dict[str, Tensor]] = field(default_factory=list)
    neck: Optional[Tensor] = None


class CenterPointMM(nn.Module):
    """mmdet3d CenterPoint-pillar: hard voxels -> PillarFeatureNet -> scatter -> SECOND -> SECONDFPN -> CenterHead.

    Submodules are named as in the mmdet3d checkpoint without its ``pts_`` prefix:
    ``voxel_encoder``, ``backbone``, ``neck``, ``bbox_head``. The model runs in eval mode as a
    frozen teacher; training it is mmdet3d's job (:meth:`loss` says so).
    """

    def __init__(self, config: CenterPointMMConfig) -> None:
        super().__init__()
        self.config = config
        self.voxel_encoder = MMPillarFeatureNet(config)
        self.backbone = MMSecond(config)
        self.neck = MMSecondFpn(config)
        self.bbox_head = MMCenterHead(config)
        labels = {name: (t, c) for t, names in enumerate(config.tasks) for c, name in enumerate(names)}
        self._class_slots = [labels.get(name) for name in DETECTION_CLASSES]

    @property
    def bev_channels(self) -> int:
        return sum(self.config.neck_channels)

    def pseudo_image(self, points: list[Tensor]) -> Tensor:
        """B clouds (P_b, C) -> the scattered pillar features (B, C_pfn, N_y, N_x)."""
        cfg = self.config
        voxels, coors, nums = [], [], []
        for b, cloud in enumerate(points):
            if cloud.ndim != 2 or cloud.shape[1] != cfg.point_channels:
                raise ValueError(f"point cloud {b} has shape {tuple(cloud.shape)}, expected (P, {cfg.point_channels})")
            hv = hard_voxelize(cloud.float(), cfg, training=self.training)
            voxels.append(hv.voxels)
            coors.append(F.pad(hv.coors, (1, 0), value=b))
            nums.append(hv.num_points)
        feats = self.voxel_encoder(torch.cat(voxels), torch.cat(nums), torch.cat(coors))
        coor = torch.cat(coors).long()
        gx, gy, _ = cfg.grid_shape
        canvas = feats.new_zeros(len(points), feats.shape[1], gy * gx)
        canvas[coor[:, 0], :, coor[:, 2] * gx + coor[:, 3]] = feats
        return canvas.view(len(points), feats.shape[1], gy, gx)

    def forward(self, lidar_points: list[Tensor]) -> MMBevDetectorOutputs:
        """lidar_points: B tensors (P_b, point_channels) in the source model's frame."""
        neck = self.neck(self.backbone(self.pseudo_image(lidar_points)))
        tasks = self.bbox_head(neck)
        return MMBevDetectorOutputs(
            bev_features=neck.transpose(-1, -2), head=self.merged_head(tasks), task_outputs=tasks, neck=neck
        )

    def merged_head(self, tasks: list[dict[str, Tensor]]) -> HeadOutputs:
        """Task groups -> one x3kd :class:`HeadOutputs` (see :class:`MMBevDetectorOutputs`)."""
        heat = tasks[0]["heatmap"]
        B, _, n_y, n_x = heat.shape
        absent = heat.new_full((B, 1, n_y, n_x), _ABSENT_CLASS_LOGIT)
        heatmap = torch.cat([absent if slot is None else tasks[slot[0]]["heatmap"][:, slot[1]:slot[1] + 1]
                             for slot in self._class_slots], dim=1)
        best = torch.stack([t["heatmap"].max(dim=1).values for t in tasks], dim=1).argmax(dim=1, keepdim=True)

        def pick(name: str) -> Tensor:
            stacked = torch.stack([t[name] for t in tasks], dim=1)  # (B, T, C, N_y, N_x)
            index = best.unsqueeze(2).expand(B, 1, stacked.shape[2], n_y, n_x)
            return stacked.gather(1, index).squeeze(1)

        tr = lambda x: x.transpose(-1, -2)  # noqa: E731 - (N_y, N_x) -> (N_x, N_y)
        return HeadOutputs(heatmap=tr(heatmap), offset=tr(pick("reg")), height=tr(pick("height")),
                           log_size=tr(pick("dim")), rot=tr(pick("rot")), velocity=tr(pick("vel")))

    def loss(self, *args, **kwargs):  # noqa: D401 - uniform teacher interface
        raise NotImplementedError("a converted mmdet3d CenterPoint is a frozen teacher; fine-tune it in mmdet3d")

    # -------------------------------------------------------------------- decoding

    def decode(self, outputs: MMBevDetectorOutputs) -> list[list[dict[str, Tensor]]]:
        """mmdet3d ``CenterPointBBoxCoder.decode`` per task group (before NMS).

        Returns: per task, per sample, ``bboxes`` (N, 9) x, y, z_centre, dx, dy, dz, yaw, vx, vy;
        ``scores`` (N,); ``labels`` (N,) within the task group.
        """
        cfg = self.config
        out = []
        post = torch.tensor(cfg.post_center_range)
        for task in outputs.task_outputs:
            heat = task["heatmap"].sigmoid()
            B, n_cls, H, W = heat.shape
            K = cfg.max_num
            top_scores, top_inds = torch.topk(heat.reshape(B, n_cls, -1), K)
            top_inds = top_inds % (H * W)
            ys_all = (top_inds.float() / torch.tensor(W, dtype=torch.float)).int().float()
            xs_all = (top_inds % W).int().float()
            score, ind = torch.topk(top_scores.reshape(B, -1), K)
            clses = (ind / torch.tensor(K, dtype=torch.float)).int()
            inds = top_inds.reshape(B, -1).gather(1, ind)
            ys = ys_all.reshape(B, -1).gather(1, ind)
            xs = xs_all.reshape(B, -1).gather(1, ind)

            def at(name: str) -> Tensor:
                m = task[name]
                return m.permute(0, 2, 3, 1).reshape(B, H * W, m.shape[1]).gather(
                    1, inds.unsqueeze(2).expand(B, K, m.shape[1]))

            reg = at("reg")
            xs = (xs.unsqueeze(2) + reg[:, :, 0:1]) * cfg.out_size_factor * cfg.voxel_size[0] + cfg.point_cloud_range[0]
            ys = (ys.unsqueeze(2) + reg[:, :, 1:2]) * cfg.out_size_factor * cfg.voxel_size[1] + cfg.point_cloud_range[1]
            rot = at("rot")
            yaw = torch.atan2(rot[:, :, 0:1], rot[:, :, 1:2])
            boxes = torch.cat([xs, ys, at("height"), torch.exp(at("dim")), yaw, at("vel")], dim=2)
            keep = (score > cfg.score_threshold)
            keep &= (boxes[..., :3] >= post[:3]).all(2) & (boxes[..., :3] <= post[3:]).all(2)
            out.append([{"bboxes": boxes[b, keep[b]], "scores": score[b, keep[b]], "labels": clses[b, keep[b]].long()}
                        for b in range(B)])
        return out

    @torch.no_grad()
    def predict_raw(self, outputs: MMBevDetectorOutputs) -> list[dict[str, Tensor]]:
        """Decoded + NMS'd boxes as mmdet3d returns them, per sample: ``bboxes`` (N, 9) with z at
        the box CENTRE (mmdet3d then moves it to the bottom), ``scores``, ``labels`` (index into
        :attr:`CenterPointMMConfig.class_names`)."""
        cfg = self.config
        decoded = self.decode(outputs)
        post = torch.tensor(cfg.post_center_range)
        per_sample: list[list[dict[str, Tensor]]] = [[] for _ in decoded[0]]
        offset = 0
        for t, task in enumerate(decoded):
            for b, det in enumerate(task):
                boxes, scores, labels = det["bboxes"], det["scores"], det["labels"]
                if cfg.nms_type == "circle":
                    keep = _circle_nms(boxes[:, :2], scores, cfg.min_radius[t], cfg.post_max_size)
                else:
                    above = scores >= cfg.score_threshold
                    boxes, scores, labels = boxes[above], scores[above], labels[above]
                    keep = _rotate_nms(boxes, scores, cfg.nms_iou_threshold, cfg.pre_max_size, cfg.post_max_size)
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
                if cfg.nms_type == "rotate":
                    inside = (boxes[:, :3] >= post[:3]).all(1) & (boxes[:, :3] <= post[3:]).all(1)
                    boxes, scores, labels = boxes[inside], scores[inside], labels[inside]
                per_sample[b].append({"bboxes": boxes, "scores": scores, "labels": labels + offset})
            offset += len(cfg.tasks[t])
        return [{k: torch.cat([d[k] for d in dets]) for k in ("bboxes", "scores", "labels")} for dets in per_sample]

    @torch.no_grad()
    def predict(self, outputs: MMBevDetectorOutputs) -> list[Boxes3D]:
        """Boxes in the source model's frame, one :class:`Boxes3D` per sample (labels in
        DETECTION_CLASSES, z at the box centre)."""
        names = self.config.class_names
        to_x3kd = np.array([DETECTION_CLASSES.index(n) for n in names], dtype=np.int64)
        result = []
        for det in self.predict_raw(outputs):
            b = det["bboxes"].double().cpu().numpy()
            result.append(Boxes3D(center=b[:, 0:3], size_lwh=b[:, 3:6], yaw=b[:, 6], velocity=b[:, 7:9],
                                  label=to_x3kd[det["labels"].cpu().numpy()],
                                  score=det["scores"].double().cpu().numpy()))
        return result


def _circle_nms(center_xy: Tensor, scores: Tensor, threshold: float, post_max_size: int) -> Tensor:
    """mmdet3d ``circle_nms``: greedy by score, drop boxes whose SQUARED centre distance to a kept
    one is <= ``threshold``; at most ``post_max_size`` kept."""
    xy = center_xy.detach().cpu().numpy()
    order = np.argsort(scores.detach().cpu().numpy(), kind="quicksort")[::-1]
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for rank, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[rank + 1:]
        d2 = ((xy[i] - xy[rest]) ** 2).sum(1)
        suppressed[rest[d2 <= threshold]] = True
    return torch.as_tensor(np.asarray(keep[:post_max_size], dtype=np.int64))


def _bev_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, >=7) boxes -> (N, 4, 2) BEV footprint corners (x, y, dx, dy, yaw from columns 0, 1, 3, 4, 6)."""
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    hx, hy = boxes[:, 3] / 2, boxes[:, 4] / 2
    local = np.stack([np.stack([hx, hy], 1), np.stack([-hx, hy], 1), np.stack([-hx, -hy], 1), np.stack([hx, -hy], 1)], 1)
    rot = np.stack([np.stack([c, -s], 1), np.stack([s, c], 1)], 1)  # (N, 2, 2)
    return np.einsum("nij,nkj->nki", rot, local) + boxes[:, None, 0:2]


def rotated_bev_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact IoU of rotated BEV footprints (shapely polygons), boxes as (N, >=7) -> (N_a, N_b).

    (Kept for tests and tools; :func:`_rotate_nms` computes only the rows it needs.)
    """
    import shapely

    pa = shapely.polygons(_bev_corners(a))
    pb = shapely.polygons(_bev_corners(b))
    inter = shapely.area(shapely.intersection(pa[:, None], pb[None, :]))
    union = shapely.area(pa)[:, None] + shapely.area(pb)[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def _rotate_nms(boxes: Tensor, scores: Tensor, threshold: float, pre_max_size: int, post_max_size: int) -> Tensor:
    """mmdet3d ``nms_bev`` (mmcv ``nms_rotated``): greedy by score over the top ``pre_max_size``,
    suppress IoU >= ``threshold``, at most ``post_max_size`` kept. IoU in float64 (mmcv: float32).

    Only the rows of kept boxes are computed, and the loop stops at ``post_max_size`` kept boxes
    (mmcv finishes the loop and truncates afterwards: the same result).
    """
    import shapely

    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(scores, descending=True, stable=True).indices[:pre_max_size]
    polygons = shapely.polygons(_bev_corners(boxes[order].double().cpu().numpy()))
    areas = shapely.area(polygons)
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == post_max_size:
            break
        rest = np.nonzero(~suppressed[i + 1:])[0] + i + 1
        if len(rest):
            inter = shapely.area(shapely.intersection(polygons[i], polygons[rest]))
            iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
            suppressed[rest[iou >= threshold]] = True  # mmcv suppresses at >= (nms_rotated_cpu.cpp)
    return order[torch.as_tensor(keep, dtype=torch.long)]
