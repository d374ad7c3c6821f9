"""Training augmentation that keeps images, calibration, points and boxes consistent.

Two independent families, both applied to a loaded :class:`~x3kd_core.structures.Sample`:

**Image augmentation** (per camera; BEVDepth's "ida"). A random scale about the image centre, a
random translation (the crop window moving over the scaled image; uncovered pixels are black) and
a random horizontal flip are composed into one 3x3 map ``A`` of homogeneous pixel coordinates
(original image -> augmented image, same pixel-centre convention as the loader: integer (u, v) is
the centre of a pixel). The image, the instance mask and the depth map are resampled with ``A``
(``cv2.warpAffine``, whose sample grid uses that convention), and the intrinsics become
``K' = A K``. Nothing else changes: a point that projected to ``p`` now projects to ``A p``, so the
lift-splat unprojection ``cam_to_ego @ (d K'^-1 [u', v', 1])`` of an augmented pixel is the
original pixel's ray. A flip makes ``K'[0, 0]`` negative; the view transform solves with K
instead of assuming a positive focal length, so this is exact (see
:mod:`x3kd_core.models.view_transform`).

**BEV augmentation** (per sample; BEVDepth's "bda" / mmdet3d's GlobalRotScaleTrans + flip). A
linear map ``M = s * Rz(theta) * F`` of the ego frame (F mirrors x and/or y) is applied to the
LiDAR and radar points (positions and radar velocities), the GT boxes (centre, size * s, yaw,
velocity) AND the camera poses: ``cam_to_ego' = M4 @ cam_to_ego``. So every camera frustum moves
with the scene and a pixel still looks at the same (moved) object. ``cam_to_ego'`` is then no
longer a rigid transform (scale, and a reflection when mirrored): invert it with
``np.linalg.inv`` / ``torch.linalg.inv``, not :func:`x3kd_core.geometry.invert_transform`.
``ego_to_global' = ego_to_global @ M4^-1`` keeps "global = ego_to_global @ ego" true for every
point (only evaluation uses it, and evaluation is never augmented).

Randomness comes from NumPy's global RNG by default, which the training engine seeds per batch
position (``PositionSeededDataset``), so augmented runs resume bit-exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import cv2
import numpy as np
import torch.utils.data

from x3kd_core import geometry
from x3kd_core.config import ConfigError
from x3kd_core.structures import Boxes3D, CameraRig, Sample

__all__ = [
    "ImageAugConfig",
    "BevAugConfig",
    "AugmentConfig",
    "image_aug_matrix",
    "bev_aug_matrix",
    "augment_images",
    "augment_bev",
    "transform_boxes",
    "SampleAugmenter",
    "AugmentedDataset",
]


def _check_range(name: str, lo_hi: tuple[float, float], low: float | None = None) -> None:
    lo, hi = lo_hi
    if hi < lo:
        raise ConfigError(f"{name} must be (min, max) with max >= min, got {lo_hi}")
    if low is not None and lo <= low:
        raise ConfigError(f"{name} must be > {low}, got {lo_hi}")


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {p}")


@dataclass(frozen=True)
class ImageAugConfig:
    """Random per-camera image augmentation (defaults: off).

    scale_range: (min, max) resize factor about the image centre, drawn uniformly (1 = none).
        BEVDepth draws about +-6 % around its base scale.
    translate_frac: the crop window moves by up to this fraction of the width / height in each
        direction (uniform, rounded to whole pixels so an unscaled image is shifted, not resampled).
    flip_prob: probability of a horizontal flip.
    """

    scale_range: tuple[float, float] = (1.0, 1.0)
    translate_frac: float = 0.0
    flip_prob: float = 0.0

    def __post_init__(self) -> None:
        _check_range("scale_range", self.scale_range, low=0.0)
        if not 0.0 <= self.translate_frac < 0.5:
            raise ConfigError(f"translate_frac must be in [0, 0.5), got {self.translate_frac}")
        _check_prob("flip_prob", self.flip_prob)

    @property
    def enabled(self) -> bool:
        return self.scale_range != (1.0, 1.0) or self.translate_frac > 0 or self.flip_prob > 0


@dataclass(frozen=True)
class BevAugConfig:
    """Random per-sample augmentation of the ego frame (defaults: off).

    rotate_range_deg: (min, max) rotation about +z (deg), uniform. BEVDepth: (-22.5, 22.5).
    scale_range: (min, max) isotropic scale of the scene, uniform. BEVDepth: (0.95, 1.05).
    flip_x_prob: probability of mirroring x (front <-> back); flip_y_prob: y (left <-> right).
    """

    rotate_range_deg: tuple[float, float] = (0.0, 0.0)
    scale_range: tuple[float, float] = (1.0, 1.0)
    flip_x_prob: float = 0.0
    flip_y_prob: float = 0.0

    def __post_init__(self) -> None:
        _check_range("rotate_range_deg", self.rotate_range_deg)
        _check_range("scale_range", self.scale_range, low=0.0)
        _check_prob("flip_x_prob", self.flip_x_prob)
        _check_prob("flip_y_prob", self.flip_y_prob)

    @property
    def enabled(self) -> bool:
        return (self.rotate_range_deg != (0.0, 0.0) or self.scale_range != (1.0, 1.0)
                or self.flip_x_prob > 0 or self.flip_y_prob > 0)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation of an experiment: image (per camera) and BEV (per sample) parts."""

    image: ImageAugConfig = field(default_factory=ImageAugConfig)
    bev: BevAugConfig = field(default_factory=BevAugConfig)

    @property
    def enabled(self) -> bool:
        return self.image.enabled or self.bev.enabled


# ------------------------------------------------------------------------------------------ image
def image_aug_matrix(
    image_hw: tuple[int, int], scale: float = 1.0, translate_xy: tuple[float, float] = (0.0, 0.0), flip: bool = False
) -> np.ndarray:
    """(3, 3) map of homogeneous pixel coordinates, original -> augmented image (same size).

    Order: scale by ``scale`` about the image centre, shift by ``translate_xy`` (pixels; the
    content moves right / down for positive values), then mirror ``u -> W - 1 - u`` if ``flip``.
    With the pixel-centre convention the image centre is ((W - 1) / 2, (H - 1) / 2).
    """
    H, W = image_hw
    cu, cv = (W - 1) / 2.0, (H - 1) / 2.0
    scale_about_centre = np.array([[scale, 0.0, cu * (1.0 - scale)], [0.0, scale, cv * (1.0 - scale)], [0.0, 0.0, 1.0]])
    shift = np.array([[1.0, 0.0, translate_xy[0]], [0.0, 1.0, translate_xy[1]], [0.0, 0.0, 1.0]])
    mirror = np.array([[-1.0, 0.0, W - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) if flip else np.eye(3)
    return mirror @ shift @ scale_about_centre


def _warp(image: np.ndarray, affine: np.ndarray, out_hw: tuple[int, int], interpolation: int, fill: float) -> np.ndarray:
    H, W = out_hw
    return cv2.warpAffine(image, affine[:2], (W, H), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=fill)


def augment_images(sample: Sample, affines: np.ndarray) -> Sample:
    """Apply one pixel map per camera to a sample's images, masks, depth maps and intrinsics.

    Args:
        sample: images (N_cam, 3, H, W) uint8 and their rig.
        affines: (N_cam, 3, 3) maps from :func:`image_aug_matrix` (last row (0, 0, 1)).

    Returns:
        A new Sample (same size images); ``K'_n = affines[n] @ K_n``. Pixels that come from
        outside the original image are 0 (image), -1 (mask: background) and 0 (depth: none).
        Masks and depth use nearest-neighbour sampling so ids and "0 = no depth" stay intact.
    """
    affines = np.asarray(affines, dtype=np.float64)
    N, _, H, W = sample.images.shape
    if affines.shape != (N, 3, 3):
        raise ValueError(f"affines must be ({N}, 3, 3), got {affines.shape}")
    identity = np.eye(3)
    images = sample.images.copy()
    masks = None if sample.instance_masks is None else sample.instance_masks.copy()
    depths = None if sample.depth_maps is None else sample.depth_maps.copy()
    for n in range(N):
        a = affines[n]
        if np.allclose(a, identity, atol=1e-12):
            continue  # an exact copy instead of a resampling round trip
        hwc = np.ascontiguousarray(sample.images[n].transpose(1, 2, 0))
        images[n] = _warp(hwc, a, (H, W), cv2.INTER_LINEAR, 0).transpose(2, 0, 1)
        if masks is not None:
            # float32 carries ids exactly (< 2^24); warpAffine has no int32 path.
            warped = _warp(sample.instance_masks[n].astype(np.float32), a, (H, W), cv2.INTER_NEAREST, -1.0)
            masks[n] = np.rint(warped).astype(masks.dtype)
        if depths is not None:
            depths[n] = _warp(sample.depth_maps[n].astype(np.float32), a, (H, W), cv2.INTER_NEAREST, 0.0)
    rig = CameraRig(
        names=list(sample.rig.names),
        intrinsics=affines @ sample.rig.intrinsics,
        cam_to_ego=sample.rig.cam_to_ego.copy(),
        image_hw=sample.rig.image_hw,
    )
    return replace(sample, images=images, rig=rig, instance_masks=masks, depth_maps=depths)


# -------------------------------------------------------------------------------------------- BEV
def bev_aug_matrix(rotation_rad: float = 0.0, scale: float = 1.0, flip_x: bool = False, flip_y: bool = False) -> np.ndarray:
    """(4, 4) linear map of the ego frame: ``scale * Rz(rotation) * diag(fx, fy, 1)``, no translation.

    The mirror acts first (in the original frame), then the rotation, then the scale.
    """
    c, s = math.cos(rotation_rad), math.sin(rotation_rad)
    mirror = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0])
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    out = np.eye(4)
    out[:3, :3] = scale * rot @ mirror
    return out


def _linear_part(transform: np.ndarray) -> tuple[np.ndarray, float]:
    """(3x3 linear part, its isotropic scale) of a bev_aug_matrix-style transform."""
    lin = np.asarray(transform, dtype=np.float64)[:3, :3]
    scale = float(abs(np.linalg.det(lin)) ** (1.0 / 3.0))
    # Only similarity maps (rotation about z, mirrors, isotropic scale) keep boxes boxes.
    if not np.allclose(lin.T @ lin, scale**2 * np.eye(3), atol=1e-9 * max(1.0, scale**2)) or abs(lin[2, 2] - scale) > 1e-9:
        raise ValueError("BEV augmentation must be an isotropic scale times a rotation about z and/or mirrors of x, y")
    return lin, scale


def transform_boxes(boxes: Boxes3D, transform: np.ndarray) -> Boxes3D:
    """Boxes under a BEV augmentation (see :func:`bev_aug_matrix`; translation column honoured).

    Centre -> M c + t; size -> s * size; yaw -> heading of M (cos yaw, sin yaw); velocity -> M v
    (NaN stays NaN). Mirrored boxes are boxes again because a box is symmetric about its axes.
    """
    lin, scale = _linear_part(transform)
    if len(boxes) == 0:
        return boxes
    center = boxes.center @ lin.T + np.asarray(transform)[:3, 3]
    heading = np.stack([np.cos(boxes.yaw), np.sin(boxes.yaw), np.zeros(len(boxes))], axis=1) @ lin.T
    yaw = geometry.wrap_angle(np.arctan2(heading[:, 1], heading[:, 0]))
    velocity = boxes.velocity @ lin[:2, :2].T
    return replace(boxes, center=center, size_lwh=boxes.size_lwh * scale, yaw=yaw, velocity=velocity)


def augment_bev(sample: Sample, transform: np.ndarray) -> Sample:
    """Move a whole sample by a BEV augmentation ``transform`` (4, 4) (module docstring)."""
    transform = np.asarray(transform, dtype=np.float64)
    lin, _ = _linear_part(transform)
    lidar = geometry.transform_points(transform, np.asarray(sample.lidar_points)).astype(sample.lidar_points.dtype)
    radar = geometry.transform_points(transform, np.asarray(sample.radar_points)).astype(sample.radar_points.dtype)
    if len(radar):
        radar[:, 4:6] = (np.asarray(sample.radar_points[:, 4:6], dtype=np.float64) @ lin[:2, :2].T).astype(radar.dtype)
    rig = CameraRig(
        names=list(sample.rig.names),
        intrinsics=sample.rig.intrinsics.copy(),
        cam_to_ego=transform[None] @ sample.rig.cam_to_ego,
        image_hw=sample.rig.image_hw,
    )
    return replace(
        sample,
        lidar_points=lidar,
        radar_points=radar,
        boxes=transform_boxes(sample.boxes, transform),
        rig=rig,
        ego_to_global=np.asarray(sample.ego_to_global) @ np.linalg.inv(transform),
    )


# ------------------------------------------------------------------------------------ random draw
class SampleAugmenter:
    """Draws and applies random image and BEV augmentations to a :class:`Sample`.

    Args:
        config: what to draw. rng: a NumPy Generator; None uses NumPy's global RNG (seeded per
            batch position by the training engine, hence exact resume).
    """

    def __init__(self, config: AugmentConfig, rng: Optional[np.random.Generator] = None) -> None:
        self.config = config
        self.rng = rng

    def _uniform(self, lo: float, hi: float) -> float:
        if lo == hi:
            return float(lo)
        return float(self.rng.uniform(lo, hi) if self.rng is not None else np.random.uniform(lo, hi))

    def _bernoulli(self, p: float) -> bool:
        if p <= 0.0:
            return False
        return bool((self.rng.random() if self.rng is not None else np.random.random()) < p)

    def draw_image_affines(self, n_cam: int, image_hw: tuple[int, int]) -> np.ndarray:
        """(N_cam, 3, 3) random pixel maps (identity when image augmentation is off)."""
        cfg = self.config.image
        H, W = image_hw
        out = []
        for _ in range(n_cam):
            scale = self._uniform(*cfg.scale_range)
            dx = round(self._uniform(-cfg.translate_frac * W, cfg.translate_frac * W))
            dy = round(self._uniform(-cfg.translate_frac * H, cfg.translate_frac * H))
            out.append(image_aug_matrix(image_hw, scale, (float(dx), float(dy)), self._bernoulli(cfg.flip_prob)))
        return np.stack(out)

    def draw_bev_matrix(self) -> np.ndarray:
        cfg = self.config.bev
        return bev_aug_matrix(
            rotation_rad=math.radians(self._uniform(*cfg.rotate_range_deg)),
            scale=self._uniform(*cfg.scale_range),
            flip_x=self._bernoulli(cfg.flip_x_prob),
            flip_y=self._bernoulli(cfg.flip_y_prob),
        )

    def __call__(self, sample: Sample) -> Sample:
        if self.config.image.enabled:
            sample = augment_images(sample, self.draw_image_affines(len(sample.rig), sample.rig.image_hw))
        if self.config.bev.enabled:
            sample = augment_bev(sample, self.draw_bev_matrix())
        return sample


class AugmentedDataset(torch.utils.data.Dataset):
    """A dataset of :class:`Sample` with :class:`SampleAugmenter` applied to every item."""

    def __init__(self, dataset: torch.utils.data.Dataset, config: AugmentConfig) -> None:
        self.dataset = dataset
        self.augmenter = SampleAugmenter(config)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        return self.augmenter(self.dataset[index])
