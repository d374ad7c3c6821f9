"""BEV encoder: a small two-scale residual network on the splatted BEV map.

The raw lift-splat map is sparse and noisy (each camera ray smears its feature over depth); the
encoder mixes neighbouring cells and cameras before the detection head. Two scales as in
BEVDepth's BEV backbone + FPN, reduced: ``num_blocks`` residual blocks at full resolution, the same
number at half resolution with twice the channels (a receptive field spanning a bus or a
trailer), then the half-resolution map is upsampled and fused back. The output keeps the input
grid, (B, channels, N_x, N_y), because the teacher's BEV features, X-FD, X-AT and the head all
live on that grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from x3kd_core.config import ConfigError

__all__ = ["BevEncoderConfig", "BevEncoder"]


@dataclass(frozen=True)
class BevEncoderConfig:
    """channels: output (and full-resolution) width; num_blocks: residual blocks per scale (>= 1)."""

    channels: int = 128
    num_blocks: int = 2

    def __post_init__(self) -> None:
        if self.channels <= 0:
            raise ConfigError(f"channels must be > 0, got {self.channels}")
        if self.num_blocks < 1:
            raise ConfigError(f"num_blocks must be >= 1, got {self.num_blocks}")


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.shortcut(x) + self.body(x))


class BevEncoder(nn.Module):
    """(B, C_in, N_x, N_y) -> (B, channels, N_x, N_y)."""

    def __init__(self, in_channels: int, channels: int, num_blocks: int) -> None:
        super().__init__()
        self.out_channels = channels
        self.full_res = nn.Sequential(
            _BasicBlock(in_channels, channels),
            *[_BasicBlock(channels, channels) for _ in range(num_blocks - 1)],
        )
        self.half_res = nn.Sequential(
            _BasicBlock(channels, 2 * channels, stride=2),
            *[_BasicBlock(2 * channels, 2 * channels) for _ in range(num_blocks - 1)],
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(3 * channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    @classmethod
    def from_config(cls, config: BevEncoderConfig, in_channels: int) -> "BevEncoder":
        return cls(in_channels, config.channels, config.num_blocks)

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        full = self.full_res(bev)
        half = self.half_res(full)
        up = nn.functional.interpolate(half, size=full.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([full, up], dim=1))
