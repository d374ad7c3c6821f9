"""Camera + radar student: the camera student with radar BEV features fused before its BEV encoder.

    images -> backbone -> neck -> lift-splat        camera BEV (B, C_ctx, N_x, N_y)
    radar points -> RadarBevEncoder                 radar BEV  (B, C_radar, N_x, N_y), 0 where empty
    concat -> BevEncoder(C_ctx + C_radar -> C_bev)  bev_features (the X-FD / X-AT stage)
    -> CenterHead                                   head outputs (X-OD, detection)

Fusing *before* the BEV encoder (rather than after it, with a 1x1 conv) lets the encoder's 3x3
residual blocks spread the few, exact radar returns over the camera's depth-smeared features of
the same object; both maps live on the one experiment grid, so the concat is cell-aligned by
construction. The outputs are :class:`~x3kd_core.models.student.StudentOutputs`, so the student's
losses, decoding and every distillation term apply unchanged.

The camera part IS a :class:`~x3kd_core.models.student.CameraStudent` (backbone, neck, view
transform, head, ``loss`` / ``predict``) whose BEV encoder is widened; the forward is the
student's, with the radar BEV as its ``extra_bev``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from x3kd_core.config import ConfigError
from x3kd_core.models.bev_encoder import BevEncoder
from x3kd_core.models.student import CameraStudent, StudentConfig, StudentOutputs
from x3kd_core.models.teachers.radar import RadarBevEncoder, RadarEncoderConfig
from x3kd_core.structures import Batch, Boxes3D

__all__ = ["CameraRadarConfig", "CameraRadarStudent"]


@dataclass(frozen=True)
class CameraRadarConfig:
    """camera: the camera student (its grid is the fusion grid); radar: the radar pillar encoder."""

    camera: StudentConfig
    radar: RadarEncoderConfig

    def __post_init__(self) -> None:
        if self.radar.pillar_size_m > self.camera.grid.cell_size_m:
            raise ConfigError(
                f"radar.pillar_size_m {self.radar.pillar_size_m} is larger than the grid cell "
                f"{self.camera.grid.cell_size_m} m"
            )

    @property
    def grid(self):
        return self.camera.grid


class CameraRadarStudent(nn.Module):
    """Camera student + radar BEV encoder, fused by concatenation before the BEV encoder."""

    def __init__(self, *, camera: CameraStudent, radar: RadarBevEncoder) -> None:
        super().__init__()
        expected = camera.view_transform.out_channels + radar.out_channels
        first_conv = next(m for m in camera.bev_encoder.modules() if isinstance(m, nn.Conv2d))
        if first_conv.in_channels != expected:
            raise ValueError(
                f"camera.bev_encoder takes {first_conv.in_channels} channels, fusion gives {expected} "
                "(build with CameraRadarStudent.from_config)"
            )
        self.camera = camera
        self.radar = radar

    @classmethod
    def from_config(cls, config: CameraRadarConfig) -> "CameraRadarStudent":
        camera = CameraStudent.from_config(config.camera)
        radar = RadarBevEncoder(config.radar, config.camera.grid)
        # The student's encoder was built for camera features only; widen its input for the concat.
        camera.bev_encoder = BevEncoder.from_config(
            config.camera.bev_encoder, camera.view_transform.out_channels + radar.out_channels
        )
        return cls(camera=camera, radar=radar)

    @property
    def head(self):
        return self.camera.head

    def forward(
        self, images: torch.Tensor, intrinsics: torch.Tensor, cam_to_ego: torch.Tensor, radar_points: list[torch.Tensor]
    ) -> StudentOutputs:
        """Args: as :meth:`CameraStudent.forward`, plus radar_points: B tensors (Q_b, 7) x, y, z (m,
        ego), rcs, vx, vy (m/s), time_lag_s."""
        return self.camera(images, intrinsics, cam_to_ego, extra_bev=self.radar(radar_points))

    def loss(self, outputs: StudentOutputs, batch: Batch) -> dict[str, torch.Tensor]:
        """The camera student's losses (detection head terms + LiDAR depth)."""
        return self.camera.loss(outputs, batch)

    @torch.no_grad()
    def predict(self, outputs: StudentOutputs) -> list[Boxes3D]:
        return self.camera.predict(outputs)
