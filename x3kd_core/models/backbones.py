"""Image backbone (torchvision ResNet) and a neck that fuses its stages into one feature map.

The student's view transform lifts one feature map per camera. Like BEVDepth we take it at
stride 16 and let it see stride-32 context by fusing the two deepest ResNet stages: the stride-32
map is upsampled x2 and concatenated with the stride-16 map before a 3x3 fusion conv. At small
input sizes (64 x 176 on the CPU benchmark) stride 16 leaves 4 x 11 rays per camera, too few to
cover the BEV grid, so the neck can also output stride 8: then ResNet stage 2 (stride 8) is
fused too, with stages 3 and 4 upsampled onto it.

Weights: optional ImageNet initialisation from a local state-dict file, or from torchvision's
weights API when the checkpoint is already in the torch hub cache. Nothing is downloaded at run
time (training machines may have no network); a missing file fails with the path to put it at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from x3kd_core.config import ConfigError

__all__ = [
    "BackboneConfig",
    "NeckConfig",
    "NECK_STRIDES",
    "ResNetBackbone",
    "BackboneFeatures",
    "FusionNeck",
    "TORCHVISION_WEIGHTS",
]

#: Value of ``BackboneConfig.pretrained_weights`` meaning "torchvision's ImageNet weights, from the
#: local torch hub cache only".
TORCHVISION_WEIGHTS = "torchvision"

_RESNETS = {
    "resnet18": (torchvision.models.resnet18, "ResNet18_Weights.IMAGENET1K_V1"),
    "resnet34": (torchvision.models.resnet34, "ResNet34_Weights.IMAGENET1K_V1"),
    "resnet50": (torchvision.models.resnet50, "ResNet50_Weights.IMAGENET1K_V1"),
}


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet image backbone.

    name: torchvision architecture.
    pretrained_weights: None (random init), a path to a torchvision ResNet state dict (``.pth``),
        or ``"torchvision"`` for torchvision's ImageNet weights taken from the local hub cache
        (never downloaded at run time).
    frozen_bn: replace BatchNorm by FrozenBatchNorm2d (fixed statistics and affine; the usual
        choice with pretrained weights and small per-GPU batches).
    """

    name: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    pretrained_weights: Optional[str] = None
    frozen_bn: bool = False


#: Output strides the neck supports (pixels per feature cell).
NECK_STRIDES = (8, 16)


@dataclass(frozen=True)
class NeckConfig:
    """Fuses the backbone stages from ``out_stride`` to 32 into one map of ``out_channels`` at
    ``out_stride`` (8: stages 2, 3, 4; 16: stages 3, 4)."""

    out_channels: int = 256
    out_stride: int = 16

    def __post_init__(self) -> None:
        if self.out_channels <= 0:
            raise ConfigError(f"out_channels must be > 0, got {self.out_channels}")
        if self.out_stride not in NECK_STRIDES:
            raise ConfigError(f"out_stride must be one of {NECK_STRIDES}, got {self.out_stride}")


@dataclass
class BackboneFeatures:
    """Backbone outputs for a batch of images (N_img = B * N_cam).

    Fields:
        stride8: (N_img, C8, H/8, W/8) output of ResNet stage 2.
        stride16: (N_img, C16, H/16, W/16) output of ResNet stage 3.
        stride32: (N_img, C32, H/32, W/32) output of ResNet stage 4.
    """

    stride8: torch.Tensor
    stride16: torch.Tensor
    stride32: torch.Tensor


def _cached_torchvision_state_dict(name: str) -> dict:
    weights = torchvision.models.get_weight(_RESNETS[name][1])
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise FileNotFoundError(
            f"pretrained_weights='{TORCHVISION_WEIGHTS}' needs {cached} (downloads are disabled at run "
            f"time); fetch {weights.url} there, or set pretrained_weights to a local .pth path"
        )
    return torch.load(cached, map_location="cpu", weights_only=True)


class ResNetBackbone(nn.Module):
    """torchvision ResNet up to stage 4 (no pooling / fc), returning stages 2, 3 and 4."""

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.channels_stride8 = _stage_channels(resnet.layer2)
        self.channels_stride16 = _stage_channels(resnet.layer3)
        self.channels_stride32 = _stage_channels(resnet.layer4)

    @classmethod
    def from_config(cls, config: BackboneConfig) -> "ResNetBackbone":
        build, _ = _RESNETS[config.name]
        norm_layer = FrozenBatchNorm2d if config.frozen_bn else nn.BatchNorm2d
        resnet = build(weights=None, norm_layer=norm_layer)
        if config.pretrained_weights is not None:
            if config.pretrained_weights == TORCHVISION_WEIGHTS:
                state = _cached_torchvision_state_dict(config.name)
            else:
                path = Path(config.pretrained_weights)
                if not path.is_file():
                    raise FileNotFoundError(f"backbone.pretrained_weights: no such file {path}")
                state = torch.load(path, map_location="cpu", weights_only=True)
            # The classifier is not part of the backbone; everything else must match exactly.
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = resnet.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise ValueError(
                    f"{config.pretrained_weights} does not fit {config.name}: "
                    f"missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        return cls(resnet)

    def forward(self, images: torch.Tensor) -> BackboneFeatures:
        """images: (N_img, 3, H, W) normalised RGB -> :class:`BackboneFeatures`."""
        x = self.stem(images)
        c8 = self.layer2(self.layer1(x))
        c16 = self.layer3(c8)
        c32 = self.layer4(c16)
        return BackboneFeatures(stride8=c8, stride16=c16, stride32=c32)


def _stage_channels(stage: nn.Sequential) -> int:
    """Output channels of a ResNet stage (Bottleneck blocks end in conv3, BasicBlocks in conv2)."""
    last = stage[-1]
    return int(last.conv3.out_channels if hasattr(last, "conv3") else last.conv2.out_channels)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class FusionNeck(nn.Module):
    """Backbone stages from ``out_stride`` to 32 -> one map at ``out_stride``.

    Each input gets a 1x1 lateral projection to ``out_channels``; the coarser ones are upsampled
    (bilinear) to the finest map's exact size (odd sizes included) and the concatenation is fused
    by a 3x3 conv. Parameter names for stride 16 (``lateral16``, ``lateral32``, ``fuse``) are the
    same whether or not stride 8 is used; stride 8 adds ``lateral8``.
    """

    def __init__(
        self,
        in_channels_stride16: int,
        in_channels_stride32: int,
        out_channels: int,
        in_channels_stride8: int | None = None,
    ) -> None:
        """``in_channels_stride8``: channels of ResNet stage 2; when given, the output is at stride 8."""
        super().__init__()
        self.out_channels = out_channels
        self.out_stride = 16 if in_channels_stride8 is None else 8
        self.lateral8 = None if in_channels_stride8 is None else _conv_bn_relu(in_channels_stride8, out_channels, 1)
        self.lateral16 = _conv_bn_relu(in_channels_stride16, out_channels, 1)
        self.lateral32 = _conv_bn_relu(in_channels_stride32, out_channels, 1)
        num_levels = 2 if in_channels_stride8 is None else 3
        self.fuse = _conv_bn_relu(num_levels * out_channels, out_channels, 3)

    @classmethod
    def from_config(cls, config: NeckConfig, backbone: ResNetBackbone) -> "FusionNeck":
        return cls(
            backbone.channels_stride16,
            backbone.channels_stride32,
            config.out_channels,
            in_channels_stride8=backbone.channels_stride8 if config.out_stride == 8 else None,
        )

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        """-> (N_img, out_channels, H/out_stride, W/out_stride)."""
        levels = [self.lateral16(features.stride16), self.lateral32(features.stride32)]
        if self.lateral8 is not None:
            levels.insert(0, self.lateral8(features.stride8))
        size = levels[0].shape[-2:]
        levels = [levels[0]] + [
            nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in levels[1:]
        ]
        return self.fuse(torch.cat(levels, dim=1))
