"""Tests of the nuScenes-format loader (x3kd_core.data.nuscenes) on the tiny synthetic dataset."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from x3kd_core import geometry
from x3kd_core.config import BevGridConfig, ConfigError, from_dict
from x3kd_core.data.nuscenes import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetError,
    ImageTransform,
    LoaderConfig,
    NuScenesDataset,
    NuScenesSource,
    collate_samples,
)
from x3kd_core.structures import CAMERA_NAMES, Boxes3D, CameraRig, Sample

IMAGE_HW = (64, 176)


# ------------------------------------------------------------------------------------ pure parts
def test_image_transform_bevdepth_policy_for_nuscenes_size():
    # 1600x900 -> 256x704: scale 0.44 gives 704x396, then the bottom 256 rows are kept.
    tf = ImageTransform.fit((900, 1600), (256, 704), scale=None, crop_bottom_fraction=0.0)
    assert tf.scaled_wh == (704, 396)
    assert tf.crop_xy == (0, 140)
    assert tf.scale_xy == pytest.approx((0.44, 0.44))
    k = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
    k2 = tf.intrinsics(k)
    assert k2[0, 0] == pytest.approx(0.44 * 1266.4)
    assert k2[0, 2] == pytest.approx(0.44 * (816.3 + 0.5) - 0.5)
    assert k2[1, 2] == pytest.approx(0.44 * (491.5 + 0.5) - 0.5 - 140)
    # crop_bottom_fraction moves the window up by that fraction of the scaled height.
    tf_up = ImageTransform.fit((900, 1600), (256, 704), scale=None, crop_bottom_fraction=0.1)
    assert tf_up.crop_xy == (0, int(round(0.9 * 396)) - 256)


def test_image_transform_pixel_map_matches_opencv_resampling():
    # An image whose value is its own u (resp. v) coordinate: after resize + crop, the value at an
    # output pixel is the original coordinate it came from, which pixel_affine must predict.
    h, w = 90, 160
    u_img = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    v_img = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    tf = ImageTransform.fit((h, w), (40, 100), scale=0.7, crop_bottom_fraction=0.1)
    out_u = tf.apply(u_img, cv2.INTER_LINEAR)
    out_v = tf.apply(v_img, cv2.INTER_LINEAR)
    inv = np.linalg.inv(tf.pixel_affine)
    vv, uu = np.mgrid[0:40, 0:100]
    src = np.stack([uu.ravel(), vv.ravel(), np.ones(uu.size)]) 
    src = (inv @ src)[:2]
    # Away from the borders (where OpenCV clamps) bilinear resampling of a linear ramp is exact.
    inner = (src[0] > 1) & (src[0] < w - 2) & (src[1] > 1) & (src[1] < h - 2)
    assert inner.sum() > 3000
    np.testing.assert_allclose(out_u.ravel()[inner], src[0][inner], atol=1e-3)
    np.testing.assert_allclose(out_v.ravel()[inner], src[1][inner], atol=1e-3)


def test_image_transform_rejects_too_small_scale():
    with pytest.raises(DatasetError, match="smaller than image_hw"):
        ImageTransform.fit((900, 1600), (256, 704), scale=0.2, crop_bottom_fraction=0.0)


def test_loader_config_validation():
    with pytest.raises(ConfigError, match="lidar_sweeps"):
        LoaderConfig(version="v", split="s", lidar_sweeps=0)
    with pytest.raises(ConfigError, match="crop_bottom_fraction"):
        LoaderConfig(version="v", split="s", crop_bottom_fraction=1.0)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(LoaderConfig, {"version": "v", "split": "s", "lidar_sweep": 3})
    cfg = from_dict(LoaderConfig, {"version": "v", "split": "s", "image_hw": [64, 176],
                                   "box_range": {"x_range_m": [-20.0, 20.0], "y_range_m": [-20.0, 20.0]}})
    assert cfg.image_hw == (64, 176) and cfg.box_range.x_range_m == (-20.0, 20.0)


def _fake_sample(token: str, n_cam: int, hw: tuple[int, int], value: int, with_maps: bool) -> Sample:
    h, w = hw
    return Sample(
        token=token,
        scene_name="s",
        timestamp_us=0,
        images=np.full((n_cam, 3, h, w), value, dtype=np.uint8),
        rig=CameraRig(names=list(CAMERA_NAMES[:n_cam]), intrinsics=np.tile(np.eye(3), (n_cam, 1, 1)),
                      cam_to_ego=np.tile(np.eye(4), (n_cam, 1, 1)), image_hw=hw),
        lidar_points=np.zeros((7 + value, 5), dtype=np.float32),
        radar_points=np.zeros((3, 7), dtype=np.float32),
        boxes=Boxes3D.empty(),
        ego_to_global=np.eye(4),
        instance_masks=np.full((n_cam, h, w), -1, dtype=np.int32) if with_maps else None,
        depth_maps=np.zeros((n_cam, h, w), dtype=np.float32) if with_maps else None,
    )


def test_collate_shapes_and_normalisation():
    samples = [_fake_sample("a", 6, (8, 12), 0, True), _fake_sample("b", 6, (8, 12), 255, True)]
    batch = collate_samples(samples)
    assert batch.images.shape == (2, 6, 3, 8, 12) and batch.images.dtype == torch.float32
    expected_black = (0.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    expected_white = (1.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    assert batch.images[0, 0, 0, 0, 0].item() == pytest.approx(expected_black, abs=1e-6)
    assert batch.images[1, 5, 2, 7, 11].item() == pytest.approx(expected_white, abs=1e-6)
    assert batch.intrinsics.shape == (2, 6, 3, 3) and batch.cam_to_ego.shape == (2, 6, 4, 4)
    assert [p.shape[0] for p in batch.lidar_points] == [7, 262]
    assert batch.instance_masks.shape == (2, 6, 8, 12) and batch.instance_masks.dtype == torch.int64
    assert batch.depth_maps.shape == (2, 6, 8, 12)
    assert batch.ego_to_global.dtype == torch.float64 and batch.tokens == ["a", "b"]
    # Without masks / depth (real nuScenes) the batch fields are None.
    plain = collate_samples([_fake_sample("c", 6, (8, 12), 1, False)])
    assert plain.instance_masks is None and plain.depth_maps is None
    with pytest.raises(ValueError, match="only some samples"):
        collate_samples([samples[0], _fake_sample("c", 6, (8, 12), 1, False)])
    with pytest.raises(ValueError, match="different image shapes"):
        collate_samples([samples[0], _fake_sample("d", 6, (8, 14), 1, True)])


# ---------------------------------------------------------------------------- on the tiny dataset
@pytest.fixture(scope="module")
def val_source(tiny_dataset) -> NuScenesSource:
    dataroot, version = tiny_dataset
    return NuScenesSource(dataroot, LoaderConfig(version=version, split="synth_val", image_hw=IMAGE_HW))


@pytest.fixture(scope="module")
def val_samples(val_source) -> list[Sample]:
    return [val_source.load_sample(t) for t in val_source.sample_tokens]


def test_split_lists_every_sample_of_its_scenes(tiny_dataset, val_source):
    dataroot, version = tiny_dataset
    splits = json.loads((Path(dataroot) / version / "splits.json").read_text())
    nusc = val_source.nusc
    scene_tokens = {s["token"] for s in nusc.scene if s["name"] in splits["synth_val"]}
    expected = {s["token"] for s in nusc.sample if s["scene_token"] in scene_tokens}
    assert set(val_source.sample_tokens) == expected and len(val_source.sample_tokens) == len(expected) > 0
    train = NuScenesSource(dataroot, LoaderConfig(version=version, split="synth_train", image_hw=IMAGE_HW), nusc=nusc)
    assert not set(train.sample_tokens) & expected
    assert len(train) + len(val_source) == len(nusc.sample)


def test_sample_shapes_and_types(val_samples, val_source):
    s = val_samples[0]
    n_cam = len(CAMERA_NAMES)
    assert s.images.shape == (n_cam, 3, *IMAGE_HW) and s.images.dtype == np.uint8
    assert s.rig.names == list(CAMERA_NAMES) and s.rig.image_hw == IMAGE_HW
    assert s.lidar_points.ndim == 2 and s.lidar_points.shape[1] == 5 and len(s.lidar_points) > 1000
    assert np.all(s.lidar_points[:, 4] == 0.0)  # one sweep: all from the keyframe
    assert s.radar_points.shape[1] == 7
    assert s.instance_masks.shape == (n_cam, *IMAGE_HW) and s.instance_masks.dtype == np.int32
    assert s.depth_maps.shape == (n_cam, *IMAGE_HW) and s.depth_maps.dtype == np.float32
    assert len(s.boxes) > 0 and np.all(s.boxes.score == 1.0)
    assert s.token == val_source.sample_tokens[0]
    assert all(t for t in s.boxes.token)
    np.testing.assert_allclose(s.ego_to_global[3], [0, 0, 0, 1])


def test_boxes_match_annotations_in_ego_frame(val_samples, val_source):
    # Box centre moved back to global with ego_to_global must equal the annotation's translation,
    # size (w, l, h) must come back through box_to_nuscenes, and yaw/velocity must be consistent.
    nusc = val_source.nusc
    checked = 0
    for s in val_samples:
        for i, token in enumerate(s.boxes.token):
            ann = nusc.get("sample_annotation", token)
            center_global = geometry.transform_points(s.ego_to_global, s.boxes.center[i : i + 1])[0]
            np.testing.assert_allclose(center_global, ann["translation"], atol=1e-6)
            nb = geometry.box_to_nuscenes(s.boxes.center[i], s.boxes.size_lwh[i], s.boxes.yaw[i])
            np.testing.assert_allclose(nb.wlh, ann["size"], atol=1e-9)
            heading_global = s.ego_to_global[:3, :3] @ np.array([np.cos(s.boxes.yaw[i]), np.sin(s.boxes.yaw[i]), 0.0])
            ann_heading = geometry.quaternion_to_matrix(ann["rotation"])[:, 0]
            np.testing.assert_allclose(heading_global[:2], ann_heading[:2], atol=1e-6)
            v_global = nusc.box_velocity(token)[:2]
            v_back = (s.ego_to_global[:3, :3] @ np.array([*s.boxes.velocity[i], 0.0]))[:2]
            np.testing.assert_allclose(v_back, v_global, atol=1e-6, equal_nan=True)
            assert ann["num_lidar_pts"] == s.boxes.num_lidar_pts[i]
            assert ann["num_lidar_pts"] + ann["num_radar_pts"] >= 1  # min_box_points = 1
            checked += 1
    assert checked > 10


def test_keyframe_lidar_points_in_boxes_equal_num_lidar_pts(val_samples):
    # Points inside each GT box (ego frame, rotated into the box frame) must be the annotation's count.
    for s in val_samples:
        pts = s.lidar_points[s.lidar_points[:, 4] == 0.0, :3].astype(np.float64)
        for i in range(len(s.boxes)):
            c, yaw = s.boxes.center[i], s.boxes.yaw[i]
            d = pts - c
            local_x = np.cos(yaw) * d[:, 0] + np.sin(yaw) * d[:, 1]
            local_y = -np.sin(yaw) * d[:, 0] + np.cos(yaw) * d[:, 1]
            half = s.boxes.size_lwh[i] / 2
            inside = (np.abs(local_x) <= half[0]) & (np.abs(local_y) <= half[1]) & (np.abs(d[:, 2]) <= half[2])
            assert inside.sum() == s.boxes.num_lidar_pts[i], (s.token, i)


def test_intrinsics_follow_resize_and_crop(val_source, val_samples):
    # Project every GT box centre with the ORIGINAL calibration (raw K, camera pose through global)
    # and map the pixel through scale + crop; the loader's rig must give the same pixel.
    nusc = val_source.nusc
    hits = 0
    for s in val_samples:
        sample = nusc.get("sample", s.token)
        for cam, channel in enumerate(CAMERA_NAMES):
            sd = nusc.get("sample_data", sample["data"][channel])
            calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            pose = nusc.get("ego_pose", sd["ego_pose_token"])
            cam_to_global = geometry.make_transform(pose["rotation"], pose["translation"]) @ geometry.make_transform(
                calib["rotation"], calib["translation"]
            )
            pts_global = geometry.transform_points(s.ego_to_global, s.boxes.center)
            pts_cam = geometry.transform_points(geometry.invert_transform(cam_to_global), pts_global)
            uv_orig, depth = geometry.project_points(pts_cam, np.asarray(calib["camera_intrinsic"]))
            tf = ImageTransform.fit((sd["height"], sd["width"]), IMAGE_HW, None, 0.0)
            uv_mapped = (tf.pixel_affine @ np.concatenate([uv_orig, np.ones((len(uv_orig), 1))], 1).T).T[:, :2]
            uv_new, depth_new = s.rig.ego_to_image(s.boxes.center, cam)
            front = depth > 0.5
            np.testing.assert_allclose(uv_new[front], uv_mapped[front], atol=1e-6)
            np.testing.assert_allclose(depth_new, depth, atol=1e-6)
            h, w = IMAGE_HW
            inside = (uv_new[:, 0] >= 0) & (uv_new[:, 0] < w) & (uv_new[:, 1] >= 0) & (uv_new[:, 1] < h)
            hits += int(np.sum(front & inside))
    assert hits > 5  # some centres do land in the images


def test_masks_index_boxes_and_follow_resize(val_source, val_samples, tiny_dataset):
    dataroot, _ = tiny_dataset
    nusc = val_source.nusc
    instance_row = {rec["token"]: i for i, rec in enumerate(nusc.instance)}
    seen_boxes = 0
    for s in val_samples:
        m = s.instance_masks
        assert m.min() >= -1 and m.max() < len(s.boxes)
        seen_boxes += len(np.unique(m[m >= 0]))
        # Every labelled pixel is the box of that instance in the original full-size mask.
        sample = nusc.get("sample", s.token)
        box_of_row = {
            instance_row[nusc.get("sample_annotation", t)["instance_token"]]: i for i, t in enumerate(s.boxes.token)
        }
        for cam, channel in enumerate(CAMERA_NAMES):
            sd = nusc.get("sample_data", sample["data"][channel])
            mask_path = Path(dataroot) / "masks" / channel / (Path(sd["filename"]).stem + ".png")
            raw = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            tf = ImageTransform.fit(raw.shape, IMAGE_HW, None, 0.0)
            vv, uu = np.mgrid[0 : IMAGE_HW[0], 0 : IMAGE_HW[1]]
            (x0, y0), (sx, sy) = tf.crop_xy, tf.scale_xy
            # Nearest source pixel of each output pixel centre (pixel-centre convention, as the images).
            fu, fv = (uu + x0 + 0.5) / sx, (vv + y0 + 0.5) / sy
            src_u = np.clip(np.floor(fu).astype(int), 0, raw.shape[1] - 1)
            src_v = np.clip(np.floor(fv).astype(int), 0, raw.shape[0] - 1)
            expected = np.vectorize(lambda v: box_of_row.get(int(v) - 1, -1) if v > 0 else -1)(raw[src_v, src_u])
            # Exact ties (an output centre on a source pixel border) may go either way.
            tie = (np.abs(fu - np.round(fu)) < 1e-6) | (np.abs(fv - np.round(fv)) < 1e-6)
            np.testing.assert_array_equal(expected[~tie], m[cam][~tie], err_msg=f"{s.token} {channel}")
    assert seen_boxes > 5


def test_depth_maps_agree_with_lidar(val_samples):
    # LiDAR points projected into each camera should see (about) the depth the depth map stores.
    errors = []
    for s in val_samples:
        for cam in range(len(CAMERA_NAMES)):
            uv, z = s.rig.ego_to_image(s.lidar_points[:, :3], cam)
            h, w = IMAGE_HW
            ok = (z > 1.0) & (uv[:, 0] >= 0) & (uv[:, 0] < w - 0.5) & (uv[:, 1] >= 0) & (uv[:, 1] < h - 0.5)
            u, v = np.round(uv[ok]).astype(int).T
            d = s.depth_maps[cam][v, u]
            valid = d > 0
            errors.append(np.abs(d[valid] - z[ok][valid]))
    errors = np.concatenate(errors)
    assert len(errors) > 1000
    assert np.median(errors) < 0.2


def test_multi_sweep_points_and_time_lags(tiny_dataset, val_source, val_samples):
    dataroot, version = tiny_dataset
    cfg = replace(val_source.config, lidar_sweeps=3, radar_sweeps=3, load_masks=False, load_depth=False)
    src = NuScenesSource(dataroot, cfg, nusc=val_source.nusc)
    token = src.sample_tokens[-1]
    s = src.load_sample(token)
    single = next(x for x in val_samples if x.token == token)
    lags = np.unique(np.round(s.lidar_points[:, 4], 4))
    assert lags[0] == 0.0 and len(lags) == 3 and lags[-1] <= 0.5
    np.testing.assert_array_equal(s.lidar_points[s.lidar_points[:, 4] == 0], single.lidar_points)
    assert s.instance_masks is None and s.depth_maps is None
    assert s.radar_points.shape[1] == 7 and np.all(s.radar_points[:, 6] >= 0)
    assert len(s.radar_points) >= len(single.radar_points)
    # Older sweeps moved into the keyframe ego frame must agree with the devkit's own multi-sweep
    # loader (which works in the keyframe LiDAR frame; move that into the ego frame to compare).
    from nuscenes.utils.data_classes import LidarPointCloud

    nusc = src.nusc
    sample = nusc.get("sample", token)
    pc, times = LidarPointCloud.from_file_multisweep(
        nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=3, min_distance=0.0
    )
    key_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    calib = nusc.get("calibrated_sensor", key_sd["calibrated_sensor_token"])
    lidar_to_ego = geometry.make_transform(calib["rotation"], calib["translation"])
    expected = geometry.transform_points(lidar_to_ego, pc.points.T[:, :3].astype(np.float64))
    assert s.lidar_points.shape == (len(expected), 5)
    np.testing.assert_allclose(s.lidar_points[:, :3], expected, atol=2e-3)
    np.testing.assert_allclose(s.lidar_points[:, 3], pc.points[3], atol=1e-6)
    np.testing.assert_allclose(s.lidar_points[:, 4], times[0], atol=1e-6)
    # The ego moved between the sweeps, so this checks the ego-motion compensation, not an identity.
    oldest = nusc.get("sample_data", nusc.get("sample_data", key_sd["prev"])["prev"])
    moved = np.subtract(nusc.get("ego_pose", key_sd["ego_pose_token"])["translation"],
                        nusc.get("ego_pose", oldest["ego_pose_token"])["translation"])
    assert np.linalg.norm(moved) > 1.0


def _points_in_footprint(points: np.ndarray, center: np.ndarray, size_lwh: np.ndarray, yaw: float) -> int:
    """Points (P, >=3) inside a box footprint and above the ground (ground returns have z < 0)."""
    d = points[:, :2] - center[:2]
    c, s = np.cos(yaw), np.sin(yaw)
    qx, qy = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
    return int(((np.abs(qx) <= size_lwh[0] / 2) & (np.abs(qy) <= size_lwh[1] / 2) & (points[:, 2] > 0.0)).sum())


def test_multi_sweep_motion_agrees_with_box_velocity(tiny_dataset, val_source):
    """A moving object's points of a sweep time_lag_s older sit at centre - velocity * time_lag_s
    (keyframe ego frame; velocity absolute, ego axes), also after a BEV augmentation. This ties the
    sign and frame of the velocity targets to the motion the LiDAR teacher sees in its input."""
    from x3kd_core.data.augment import augment_bev, bev_aug_matrix

    dataroot, _ = tiny_dataset
    cfg = replace(val_source.config, lidar_sweeps=3, load_masks=False, load_depth=False)
    src = NuScenesSource(dataroot, cfg, nusc=val_source.nusc)
    for transform in (np.eye(4), bev_aug_matrix(rotation_rad=0.4, scale=1.05, flip_x=True, flip_y=True)):
        behind = ahead = 0  # point counts in the box moved back / forward along its velocity
        wins, pairs = 0, 0
        for token in src.sample_tokens:
            s = augment_bev(src.load_sample(token), transform)
            pts, b = s.lidar_points, s.boxes
            for lag in np.unique(np.round(pts[:, 4], 4))[1:]:
                sweep = pts[np.abs(pts[:, 4] - lag) < 1e-3]
                for i in np.flatnonzero(np.hypot(*b.velocity.T) > 2.0):
                    shift = np.r_[b.velocity[i] * lag, 0.0]
                    n = [_points_in_footprint(sweep, b.center[i] + k * shift, b.size_lwh[i], b.yaw[i]) for k in (-1, 0, 1)]
                    if max(n) < 5:
                        continue
                    pairs += 1
                    wins += n[0] == max(n)
                    behind, ahead = behind + n[0], ahead + n[2]
        assert pairs >= 10, "the tiny dataset should have moving objects seen in older sweeps"
        assert wins >= 0.8 * pairs, (wins, pairs)
        assert behind > 2 * ahead, (behind, ahead)


def test_real_nuscenes_layout_without_masks_and_depth(tiny_dataset, val_source, tmp_path):
    # Real nuScenes has no masks/ or depth/ folders: the same config then yields None for both.
    import os

    dataroot, version = tiny_dataset
    for entry in Path(dataroot).iterdir():
        if entry.name not in ("masks", "depth") and not entry.name.startswith("."):
            os.symlink(entry, tmp_path / entry.name)
    src = NuScenesSource(tmp_path, val_source.config)
    s = src.load_sample(src.sample_tokens[0])
    assert s.instance_masks is None and s.depth_maps is None
    assert s.images.shape == (len(CAMERA_NAMES), 3, *IMAGE_HW) and len(s.boxes) > 0
    assert collate_samples([s]).instance_masks is None


def test_box_range_filter(tiny_dataset, val_source, val_samples):
    dataroot, _ = tiny_dataset
    grid = BevGridConfig(x_range_m=(-16.0, 16.0), y_range_m=(-16.0, 16.0), cell_size_m=0.8)
    src = NuScenesSource(dataroot, replace(val_source.config, box_range=grid, load_depth=False), nusc=val_source.nusc)
    s = src.load_sample(val_samples[0].token)
    full = val_samples[0].boxes
    inside = (np.abs(full.center[:, 0]) < 16) & (np.abs(full.center[:, 1]) < 16)
    assert len(s.boxes) == int(inside.sum()) < len(full)
    # Masks of boxes outside the range become background, the rest are re-indexed.
    assert s.instance_masks.max() < len(s.boxes)


def test_dataset_and_dataloader(val_source):
    dataset = NuScenesDataset(val_source)
    assert len(dataset) == len(val_source.sample_tokens)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_samples)
    batch = next(iter(loader))
    assert batch.images.shape == (2, len(CAMERA_NAMES), 3, *IMAGE_HW)
    assert batch.instance_masks.shape == (2, len(CAMERA_NAMES), *IMAGE_HW)
    assert batch.tokens == val_source.sample_tokens[:2]
    assert len(batch.boxes) == 2 and all(len(b) > 0 for b in batch.boxes)


def test_clear_errors(tiny_dataset, tmp_path, val_source):
    dataroot, version = tiny_dataset
    with pytest.raises(FileNotFoundError, match="dataroot does not exist"):
        NuScenesSource(tmp_path / "nope", LoaderConfig(version=version, split="synth_val"))
    with pytest.raises(FileNotFoundError, match="v9.9"):
        NuScenesSource(dataroot, LoaderConfig(version="v9.9", split="synth_val"))
    with pytest.raises(DatasetError, match="unknown split 'synth_tset'.*synth_train, synth_val"):
        NuScenesSource(dataroot, LoaderConfig(version=version, split="synth_tset"), nusc=val_source.nusc)
    with pytest.raises(DatasetError, match="'mini_val' belongs to nuScenes versions ending in '-mini'"):
        NuScenesSource(dataroot, LoaderConfig(version=version, split="mini_val"), nusc=val_source.nusc)
    with pytest.raises(DatasetError, match="CAM_SIDE"):
        NuScenesSource(dataroot, LoaderConfig(version=version, split="synth_val", cameras=("CAM_SIDE",)),
                       nusc=val_source.nusc)
