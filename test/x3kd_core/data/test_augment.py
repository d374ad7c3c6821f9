"""Augmentations keep images, intrinsics, camera poses, points and boxes consistent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from x3kd_core.config import ConfigError, from_dict
from x3kd_core.data.augment import (
    AugmentConfig,
    BevAugConfig,
    ImageAugConfig,
    SampleAugmenter,
    augment_bev,
    augment_images,
    bev_aug_matrix,
    image_aug_matrix,
    transform_boxes,
)
from x3kd_core.models.depth_loss import lidar_depth_targets
from x3kd_core.models.view_transform import DepthBinsConfig
from x3kd_core.structures import Boxes3D, CameraRig, Sample

H, W = 48, 64


def _rig() -> CameraRig:
    """Two level cameras at 1.5 m: one looking forward (+x), one looking left (+y)."""
    poses = []
    for yaw in (0.0, math.pi / 2):
        forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
        t = np.eye(4)
        t[:3, :3] = np.stack([right, np.array([0.0, 0.0, -1.0]), forward], axis=1)
        t[:3, 3] = (1.0, 0.2, 1.5)
        poses.append(t)
    k = np.array([[40.0, 0.0, 31.0], [0.0, 40.0, 22.0], [0.0, 0.0, 1.0]])
    return CameraRig(names=["CAM_FRONT", "CAM_FRONT_LEFT"], intrinsics=np.stack([k, k]), cam_to_ego=np.stack(poses),
                     image_hw=(H, W))


def _boxes() -> Boxes3D:
    return Boxes3D(
        center=[[12.0, 1.5, 0.8], [2.0, 9.0, 0.6], [20.0, -3.0, 1.0]],
        size_lwh=[[4.5, 1.9, 1.6], [0.6, 0.6, 1.8], [10.0, 2.5, 3.2]],
        yaw=[0.3, -1.2, 2.9],
        velocity=[[3.0, 0.5], [np.nan, np.nan], [-1.0, 2.0]],
        label=[0, 8, 3],
        score=[1.0, 1.0, 1.0],
    )


def _sample(seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    rig = _rig()
    lidar = np.concatenate([rng.uniform([-30, -30, -1], [30, 30, 3], size=(3000, 3)), rng.uniform(0, 1, (3000, 1)),
                            np.zeros((3000, 1))], axis=1).astype(np.float32)
    radar = np.concatenate([rng.uniform([-30, -30, 0], [30, 30, 1], size=(50, 3)), rng.normal(size=(50, 3)),
                            rng.uniform(0, 0.3, (50, 1))], axis=1).astype(np.float32)
    masks = np.full((2, H, W), -1, dtype=np.int32)
    masks[0, 10:20, 30:40] = 0
    masks[1, 25:30, 5:12] = 1
    depth = np.zeros((2, H, W), dtype=np.float32)
    depth[0, 10:20, 30:40] = 12.5
    return Sample(
        token="t", scene_name="s", timestamp_us=0,
        images=rng.integers(0, 256, size=(2, 3, H, W), dtype=np.uint8),
        rig=rig, lidar_points=lidar, radar_points=radar, boxes=_boxes(), ego_to_global=np.eye(4),
        instance_masks=masks, depth_maps=depth,
    )


def _project(points_ego: np.ndarray, intrinsics: np.ndarray, cam_to_ego: np.ndarray) -> np.ndarray:
    """(P, 3) ego points -> (P, 2) pixels; general inverse because augmented poses are not rigid."""
    cam = (np.linalg.inv(cam_to_ego) @ np.c_[points_ego, np.ones(len(points_ego))].T).T[:, :3]
    uvw = cam @ intrinsics.T
    return uvw[:, :2] / uvw[:, 2:3]


def _apply(affine: np.ndarray, uv: np.ndarray) -> np.ndarray:
    return (np.c_[uv, np.ones(len(uv))] @ affine.T)[:, :2]


# ------------------------------------------------------------------------------------------- BEV
@pytest.mark.parametrize(
    "rotation_deg, scale, flip_x, flip_y",
    [(30.0, 1.0, False, False), (-17.0, 1.07, False, False), (10.0, 0.93, True, False), (0.0, 1.0, False, True),
     (125.0, 1.02, True, True)],
)
def test_bev_aug_box_centre_projects_to_the_same_pixel(rotation_deg, scale, flip_x, flip_y):
    sample = _sample()
    t = bev_aug_matrix(math.radians(rotation_deg), scale, flip_x, flip_y)
    aug = augment_bev(sample, t)
    # The first box is in front of camera 0, the second left of the car (camera 1).
    for cam, box in ((0, 0), (1, 1)):
        before = _project(sample.boxes.center[[box]], sample.rig.intrinsics[cam], sample.rig.cam_to_ego[cam])
        after = _project(aug.boxes.center[[box]], aug.rig.intrinsics[cam], aug.rig.cam_to_ego[cam])
        np.testing.assert_allclose(after, before, atol=1e-6)
        # and the centre really moved (a no-op would pass the check above too)
        if rotation_deg or flip_x or flip_y:
            assert np.linalg.norm(aug.boxes.center[box, :2] - sample.boxes.center[box, :2]) > 0.1
    # The same holds for every box corner: the whole box, not only its centre, stays put in the image.
    corners_before = sample.boxes.corners()[0]
    corners_after = aug.boxes.corners()[0]
    uv_b = _project(corners_before, sample.rig.intrinsics[0], sample.rig.cam_to_ego[0])
    uv_a = _project(corners_after, aug.rig.intrinsics[0], aug.rig.cam_to_ego[0])
    # Corner order may differ under a mirror, the set of pixels may not.
    np.testing.assert_allclose(np.sort(uv_a, axis=0), np.sort(uv_b, axis=0), atol=1e-6)


def test_bev_aug_rotation_values():
    boxes = _boxes()
    t = bev_aug_matrix(math.radians(90.0))
    out = transform_boxes(boxes, t)
    # +90 deg about z: (x, y) -> (-y, x), yaw + pi/2, velocity rotated, NaN kept.
    np.testing.assert_allclose(out.center[0], [-1.5, 12.0, 0.8], atol=1e-12)
    np.testing.assert_allclose(out.yaw[0], 0.3 + math.pi / 2, atol=1e-12)
    np.testing.assert_allclose(out.velocity[0], [-0.5, 3.0], atol=1e-12)
    assert np.isnan(out.velocity[1]).all()
    # Mirror y: yaw -> -yaw, vy -> -vy; mirror x: yaw -> pi - yaw.
    out = transform_boxes(boxes, bev_aug_matrix(flip_y=True, scale=2.0))
    np.testing.assert_allclose(out.center[2], [40.0, 6.0, 2.0])
    np.testing.assert_allclose(out.size_lwh[2], [20.0, 5.0, 6.4])
    np.testing.assert_allclose(out.yaw[2], -2.9, atol=1e-12)
    np.testing.assert_allclose(out.velocity[2], [-2.0, -4.0])
    out = transform_boxes(boxes, bev_aug_matrix(flip_x=True))
    np.testing.assert_allclose(out.yaw[0], math.pi - 0.3, atol=1e-12)


def test_bev_aug_keeps_lidar_depth_targets_and_moves_radar_velocity():
    sample = _sample()
    t = bev_aug_matrix(math.radians(40.0), 1.05, flip_x=False, flip_y=True)
    aug = augment_bev(sample, t)
    bins = DepthBinsConfig(min_m=1.0, max_m=41.0, step_m=1.0)

    def targets(s: Sample) -> torch.Tensor:
        return lidar_depth_targets([torch.from_numpy(s.lidar_points)], torch.from_numpy(s.rig.intrinsics)[None].float(),
                                   torch.from_numpy(s.rig.cam_to_ego)[None].float(), (H // 8, W // 8), 8, bins)

    before, after = targets(sample), targets(aug)
    assert (before >= 0).sum() > 20  # the check below must compare real targets
    # Every camera sees the same depths: LiDAR and cameras moved together (scale changes nothing:
    # camera-frame depths are unchanged because the pose's scale cancels in its inverse).
    assert (before == after).float().mean() > 0.99
    np.testing.assert_allclose(aug.radar_points[:, 4:6], sample.radar_points[:, 4:6] @ t[:2, :2].T, atol=1e-5)
    np.testing.assert_allclose(aug.radar_points[:, :3], sample.radar_points[:, :3] @ t[:3, :3].T, atol=1e-4)
    # A global position is unchanged: ego_to_global' @ p' == ego_to_global @ p.
    p = np.r_[sample.lidar_points[0, :3], 1.0]
    p_aug = np.r_[aug.lidar_points[0, :3], 1.0]
    np.testing.assert_allclose(aug.ego_to_global @ p_aug, sample.ego_to_global @ p, atol=1e-4)


# ----------------------------------------------------------------------------------------- image
def test_image_aug_box_centre_projects_to_transformed_pixel():
    sample = _sample()
    a = np.stack([image_aug_matrix((H, W), 1.2, (3.0, -2.0), flip=True), image_aug_matrix((H, W), 0.9, (-4.0, 1.0))])
    aug = augment_images(sample, a)
    for cam, box in ((0, 0), (1, 1)):
        uv = _project(sample.boxes.center[[box]], sample.rig.intrinsics[cam], sample.rig.cam_to_ego[cam])
        uv_aug = _project(sample.boxes.center[[box]], aug.rig.intrinsics[cam], aug.rig.cam_to_ego[cam])
        np.testing.assert_allclose(uv_aug, _apply(a[cam], uv), atol=1e-9)
    # Flip: u -> W - 1 - u around the scaled/shifted position; K' has a negative focal length.
    assert aug.rig.intrinsics[0, 0, 0] == pytest.approx(-1.2 * 40.0)
    np.testing.assert_allclose(image_aug_matrix((H, W), flip=True) @ [0.0, 5.0, 1.0], [W - 1.0, 5.0, 1.0])


def test_image_aug_moves_pixels_masks_and_depth_with_the_matrix():
    sample = _sample()
    sample.images[:] = 0
    sample.images[0, :, 15, 20] = 255  # one bright pixel at (u, v) = (20, 15)
    # Flip + integer shift: an exact pixel permutation.
    a = image_aug_matrix((H, W), 1.0, (3.0, 2.0), flip=True)
    aug = augment_images(sample, np.stack([a, np.eye(3)]))
    u, v = _apply(a, np.array([[20.0, 15.0]]))[0]
    assert (u, v) == (W - 1 - 23, 17)
    assert aug.images[0, 0, int(v), int(u)] == 255 and aug.images[0, 0].sum() == 255
    np.testing.assert_array_equal(aug.images[1], sample.images[1])  # identity camera untouched
    # The mask block [10:20, 30:40] -> rows 12..21, columns W-1-(30..39)-3 = 21..30 (-1 elsewhere).
    expected = np.full((H, W), -1, dtype=np.int32)
    expected[12:22, W - 1 - 42:W - 1 - 33 + 1] = 0
    np.testing.assert_array_equal(aug.instance_masks[0], expected)
    assert set(np.unique(aug.depth_maps[0])) == {0.0, 12.5}
    assert (aug.depth_maps[0] == 12.5).sum() == 100
    # Scale 2 about the centre: the bright spot's centroid lands at A (u, v) within a pixel.
    a2 = image_aug_matrix((H, W), 2.0)
    aug2 = augment_images(sample, np.stack([a2, np.eye(3)]))
    img = aug2.images[0, 0].astype(np.float64)
    vv, uu = np.nonzero(img)
    cu, cv = (img[vv, uu] * uu).sum() / img.sum(), (img[vv, uu] * vv).sum() / img.sum()
    np.testing.assert_allclose([cu, cv], _apply(a2, np.array([[20.0, 15.0]]))[0], atol=0.5)


def test_image_flip_mirrors_lidar_depth_targets():
    """With W a multiple of the stride, a flipped camera's depth targets are the mirrored ones."""
    sample = _sample()
    bins = DepthBinsConfig(min_m=1.0, max_m=41.0, step_m=1.0)
    aug = augment_images(sample, np.stack([image_aug_matrix((H, W), flip=True)] * 2))

    def targets(s: Sample) -> torch.Tensor:
        return lidar_depth_targets([torch.from_numpy(s.lidar_points)], torch.from_numpy(s.rig.intrinsics)[None].float(),
                                   torch.from_numpy(s.rig.cam_to_ego)[None].float(), (H // 8, W // 8), 8, bins)

    before, after = targets(sample), targets(aug)
    assert (before >= 0).sum() > 20
    assert (after == before.flip(-1)).float().mean() > 0.99


def test_augmenter_is_seeded_by_numpy_global_rng_and_off_by_default():
    sample = _sample()
    out = SampleAugmenter(AugmentConfig())(sample)
    np.testing.assert_array_equal(out.images, sample.images)
    np.testing.assert_array_equal(out.boxes.center, sample.boxes.center)
    cfg = AugmentConfig(image=ImageAugConfig((0.9, 1.1), 0.05, 0.5), bev=BevAugConfig((-22.5, 22.5), (0.95, 1.05), 0.5, 0.5))
    np.random.seed(3)
    a = SampleAugmenter(cfg)(sample)
    np.random.seed(3)
    b = SampleAugmenter(cfg)(sample)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.rig.cam_to_ego, b.rig.cam_to_ego)
    assert not np.allclose(a.rig.cam_to_ego, sample.rig.cam_to_ego)


def test_bad_aug_config_names_the_key():
    with pytest.raises(ConfigError, match="image.*flip_prob"):
        from_dict(AugmentConfig, {"image": {"flip_prob": 1.5}})
    with pytest.raises(ConfigError, match="unknown key bev.rotate_deg"):
        from_dict(AugmentConfig, {"bev": {"rotate_deg": [0, 1]}})
