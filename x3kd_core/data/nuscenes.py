"""nuScenes-format data loading: tables on disk -> :class:`x3kd_core.structures.Sample` -> :class:`Batch`.

Works unchanged on real nuScenes (v1.0-mini / v1.0-trainval) and on the synthetic datasets written by
:mod:`x3kd_core.data.synthetic`, which add two optional per-camera products next to ``samples/``:

- ``masks/<CHANNEL>/<stem>.png``: uint16 instance map; 0 = background, v > 0 = row v-1 of
  ``instance.json``.
- ``depth/<CHANNEL>/<stem>.png``: uint16 depth, metres * 256; 0 = no depth.

``<stem>`` is the camera image's file name without its extension. Where these folders are absent
(real nuScenes), :attr:`Sample.instance_masks` / :attr:`Sample.depth_maps` are None.

Frames: every geometric quantity of a :class:`Sample` is expressed in the ego frame at the keyframe
time, i.e. the ego pose of the sample's ``LIDAR_TOP`` sample_data. Sensors sampled at other times
(cameras, radars, LiDAR sweeps) are moved into it through the global frame with their own ego pose,
as the nuScenes devkit does for multi-sweep point clouds.

Image geometry: images are scaled by ``s`` and then a (H, W) window is cropped (horizontally
centred; vertically placed by ``crop_bottom_fraction``, 0 keeps the bottom rows as BEVDepth does,
because the top of a nuScenes image is mostly sky). Pixel coordinates follow the convention that
integer (u, v) is the centre of a pixel, so the exact map from an original pixel to the new image is
``u' = sx * (u + 0.5) - 0.5 - crop_x`` (likewise v), with ``sx = W_scaled / W_orig`` (the rounded
image size, so the map is exact for the pixels we actually produce). The intrinsics are updated by
the same affine map, so projecting with the new K lands where the resized image shows the point.
Masks and depth maps are resampled with OpenCV's INTER_NEAREST_EXACT, which uses the same
pixel-centre convention (plain INTER_NEAREST samples pixel corners and would shift them by up to
half a source pixel against the images); nearest keeps instance ids and "0 = no depth" intact.

One file on purpose (issue 14): it is one loader, nuScenes tables -> :class:`Sample` ->
:class:`Batch`, and the frame and pixel conventions above hold for all of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import cv2
import numpy as np
import torch
import torch.utils.data

from x3kd_core import geometry
from x3kd_core.config import BevGridConfig, ConfigError
from x3kd_core.structures import CAMERA_NAMES, DETECTION_CLASSES, RADAR_NAMES, Batch, Boxes3D, CameraRig, Sample

__all__ = [
    "LoaderConfig",
    "ImageTransform",
    "DatasetError",
    "NuScenesSource",
    "NuScenesDataset",
    "collate_samples",
    "split_sample_tokens",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

#: ImageNet RGB mean / std on a [0, 1] scale (torchvision backbones expect this normalisation).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Devkit defaults for radar point filtering (see nuscenes.utils.data_classes.RadarPointCloud):
#: keep valid clusters, every dynamic property except "unknown", and non-ambiguous clusters.
_RADAR_DEFAULT_STATES = {"invalid_states": [0], "dynprop_states": list(range(7)), "ambig_states": [3]}
_RADAR_ALL_STATES = {
    "invalid_states": list(range(18)), "dynprop_states": list(range(8)), "ambig_states": list(range(5))
}

# Column indices in the 18-row nuScenes radar .pcd (devkit RadarPointCloud layout).
_RADAR_RCS, _RADAR_VX_COMP, _RADAR_VY_COMP = 5, 8, 9

# Depth PNGs store metres * 256 in uint16 (same convention as KITTI depth).
_DEPTH_PNG_SCALE = 256.0


class DatasetError(ValueError):
    """The dataset on disk does not match what the loader was asked for (split, version, files)."""


@dataclass(frozen=True)
class LoaderConfig:
    """How to read one split of a nuScenes-format dataset.

    Fields:
        version: table folder under the dataroot, e.g. "v1.0-mini".
        split: a predefined nuScenes split ("mini_train", "mini_val", "train", "val", ...) or a
            custom one listed in ``<dataroot>/<version>/splits.json``.
        cameras: camera channels, in the order of the camera axis of every tensor.
        image_hw: (H, W) of the images handed to the model (pixels).
        resize_scale: scale applied to the original images before cropping; None picks the smallest
            scale at which the scaled image covers (H, W) (no padding ever needed).
        crop_bottom_fraction: fraction of the scaled image height left out below the crop window
            (0 keeps the bottom rows, as BEVDepth's ``bot_pct_lim = (0, 0)`` does).
        lidar_sweeps: LiDAR sweeps per sample including the keyframe sweep (1 = keyframe only).
        radar_sweeps: sweeps per radar including the keyframe one (nuScenes baselines use 3-6).
        radar_filter: "default" keeps the devkit's default radar cluster states, "none" keeps all.
        load_masks / load_depth: read the synthetic mask / depth products when present.
        box_range: if set, keep only GT boxes whose centre lies inside its x/y range.
        min_box_points: keep GT boxes with num_lidar_pts + num_radar_pts >= this (the nuScenes
            evaluation drops boxes with no point, so 1 trains on what is evaluated; 0 keeps all).
        compensate_camera_motion: map each camera into the keyframe ego frame through the global
            frame with the camera's own ego pose (exact); False uses calibrated_sensor alone.
    """

    version: str
    split: str
    cameras: tuple[str, ...] = CAMERA_NAMES
    image_hw: tuple[int, int] = (256, 704)
    resize_scale: Optional[float] = None
    crop_bottom_fraction: float = 0.0
    lidar_sweeps: int = 1
    radar_sweeps: int = 1
    radar_filter: Literal["default", "none"] = "default"
    load_masks: bool = True
    load_depth: bool = True
    box_range: Optional[BevGridConfig] = None
    min_box_points: int = 1
    compensate_camera_motion: bool = True

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ConfigError("cameras must name at least one camera")
        if len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f"cameras has duplicates: {self.cameras}")
        if min(self.image_hw) <= 0:
            raise ConfigError(f"image_hw must be positive, got {self.image_hw}")
        if self.resize_scale is not None and not self.resize_scale > 0:
            raise ConfigError(f"resize_scale must be > 0, got {self.resize_scale}")
        if not 0.0 <= self.crop_bottom_fraction < 1.0:
            raise ConfigError(f"crop_bottom_fraction must be in [0, 1), got {self.crop_bottom_fraction}")
        if self.lidar_sweeps < 1 or self.radar_sweeps < 1:
            raise ConfigError(
                f"lidar_sweeps / radar_sweeps must be >= 1, got {self.lidar_sweeps} / {self.radar_sweeps}"
            )
        if self.min_box_points < 0:
            raise ConfigError(f"min_box_points must be >= 0, got {self.min_box_points}")


@dataclass(frozen=True)
class ImageTransform:
    """Scale-then-crop of one image, and its effect on pixel coordinates.

    Fields:
        scale_xy: (sx, sy) actual scale of the resized image (rounded size / original size).
        scaled_wh: (width, height) of the scaled image before cropping (pixels).
        crop_xy: (x0, y0) top-left corner of the crop window in the scaled image (pixels).
        out_hw: (H, W) of the result.
    """

    scale_xy: tuple[float, float]
    scaled_wh: tuple[int, int]
    crop_xy: tuple[int, int]
    out_hw: tuple[int, int]

    @classmethod
    def fit(
        cls, in_hw: tuple[int, int], out_hw: tuple[int, int], scale: Optional[float], crop_bottom_fraction: float
    ) -> "ImageTransform":
        """The transform for an image of size ``in_hw`` given the loader's resize/crop policy."""
        in_h, in_w = in_hw
        out_h, out_w = out_hw
        if scale is None:
            scale = max(out_h / in_h, out_w / in_w)
        # The epsilon keeps a "covering" scale (e.g. 704 / 1600 * 1600) from flooring to one pixel short.
        new_w = int(np.floor(in_w * scale + 1e-6))
        new_h = int(np.floor(in_h * scale + 1e-6))
        if new_w < out_w or new_h < out_h:
            raise DatasetError(
                f"image of size {in_hw} scaled by {scale} is {(new_h, new_w)}, smaller than image_hw {out_hw}"
            )
        crop_x = (new_w - out_w) // 2
        crop_y = int(round((1.0 - crop_bottom_fraction) * new_h)) - out_h
        crop_y = min(max(crop_y, 0), new_h - out_h)
        return cls(
            scale_xy=(new_w / in_w, new_h / in_h), scaled_wh=(new_w, new_h), crop_xy=(crop_x, crop_y), out_hw=out_hw
        )

    @property
    def pixel_affine(self) -> np.ndarray:
        """(3, 3) map of homogeneous pixel coordinates, original image -> output image."""
        sx, sy = self.scale_xy
        x0, y0 = self.crop_xy
        return np.array(
            [[sx, 0.0, 0.5 * (sx - 1.0) - x0], [0.0, sy, 0.5 * (sy - 1.0) - y0], [0.0, 0.0, 1.0]]
        )

    def intrinsics(self, intrinsics: np.ndarray) -> np.ndarray:
        """K (3, 3) of the original image -> K of the output image."""
        return self.pixel_affine @ np.asarray(intrinsics, dtype=np.float64)

    def apply(self, image: np.ndarray, interpolation: int) -> np.ndarray:
        """Scale then crop an (H_in, W_in[, C]) array with the given OpenCV interpolation."""
        scaled = cv2.resize(image, self.scaled_wh, interpolation=interpolation)
        x0, y0 = self.crop_xy
        out_h, out_w = self.out_hw
        return scaled[y0 : y0 + out_h, x0 : x0 + out_w]


def split_sample_tokens(nusc, split: str) -> tuple[list[str], list[str]]:
    """Scene names and sample tokens (scene order, then time order) of a split.

    ``split`` is a predefined nuScenes split or a key of ``<dataroot>/<version>/splits.json``.

    Raises:
        DatasetError: unknown split name, a predefined split that does not belong to this version,
            or a split none of whose scenes are in the tables.
    """
    from nuscenes.utils.splits import create_splits_scenes

    predefined = create_splits_scenes()
    splits_path = Path(nusc.dataroot) / nusc.version / "splits.json"
    if split in predefined:
        # Same compatibility rule the devkit's evaluation asserts, as a clear error up front.
        required = {"train": "trainval", "val": "trainval", "train_detect": "trainval", "train_track": "trainval",
                    "mini_train": "mini", "mini_val": "mini", "test": "test"}[split]
        if not nusc.version.endswith(required):
            raise DatasetError(
                f"split '{split}' belongs to nuScenes versions ending in '-{required}', not '{nusc.version}'"
            )
        scene_names = list(predefined[split])
    else:
        custom: dict = {}
        if splits_path.is_file():
            with open(splits_path) as fh:
                custom = json.load(fh)
        if split not in custom:
            available = f" (it has: {', '.join(sorted(custom))})" if splits_path.is_file() else " (no such file)"
            raise DatasetError(
                f"unknown split '{split}': not a predefined nuScenes split ({', '.join(sorted(predefined))}) "
                f"and not in {splits_path}{available}"
            )
        if not isinstance(custom[split], list):
            raise DatasetError(f"{splits_path}: split '{split}' must list scene names")
        scene_names = list(custom[split])

    scenes_by_name = {s["name"]: s for s in nusc.scene}
    present = [name for name in scene_names if name in scenes_by_name]
    if not present:
        raise DatasetError(
            f"none of the {len(scene_names)} scenes of split '{split}' is in {nusc.dataroot}/{nusc.version}"
        )
    tokens: list[str] = []
    for name in present:
        token = scenes_by_name[name]["first_sample_token"]
        while token:
            tokens.append(token)
            token = nusc.get("sample", token)["next"]
    return present, tokens


def _pose(record: dict) -> np.ndarray:
    """nuScenes calibrated_sensor / ego_pose record -> (4, 4) child -> parent transform."""
    return geometry.make_transform(record["rotation"], record["translation"])


class NuScenesSource:
    """Random access to the samples of one split of a nuScenes-format dataset.

    Args:
        dataroot: folder holding ``<version>/``, ``samples/``, ``sweeps/`` (and optionally ``masks/``,
            ``depth/``).
        config: what to load and how (see :class:`LoaderConfig`).
        nusc: an already loaded ``nuscenes.NuScenes`` for this dataroot/version (loading the
            trainval tables takes ~30 s, so callers that also evaluate can share one).

    Raises:
        FileNotFoundError: the dataroot or its version folder does not exist.
        DatasetError: unknown split, or a camera channel the dataset does not have.
    """

    def __init__(self, dataroot: str | os.PathLike, config: LoaderConfig, nusc=None) -> None:
        self.dataroot = Path(dataroot)
        self.config = config
        if not self.dataroot.is_dir():
            raise FileNotFoundError(f"nuScenes dataroot does not exist: {self.dataroot}")
        table_root = self.dataroot / config.version
        if not (table_root / "sample.json").is_file():
            raise FileNotFoundError(
                f"no nuScenes tables for version '{config.version}' under {self.dataroot} "
                f"(expected {table_root}/sample.json)"
            )
        if nusc is None:
            from nuscenes.nuscenes import NuScenes

            nusc = NuScenes(version=config.version, dataroot=str(self.dataroot), verbose=False)
        self.nusc = nusc
        self.scene_names, self.sample_tokens = split_sample_tokens(nusc, config.split)

        channels = {s["channel"] for s in nusc.sensor}
        missing = [c for c in config.cameras if c not in channels]
        if missing:
            raise DatasetError(f"cameras {missing} are not sensors of this dataset (it has {sorted(channels)})")
        self._radar_channels = [c for c in RADAR_NAMES if c in channels]
        self._instance_index = {rec["token"]: i for i, rec in enumerate(nusc.instance)}
        self._attribute_names = {rec["token"]: rec["name"] for rec in nusc.attribute}
        self._radar_states = _RADAR_DEFAULT_STATES if config.radar_filter == "default" else _RADAR_ALL_STATES

    def __len__(self) -> int:
        return len(self.sample_tokens)

    # ----------------------------------------------------------------------------------------- sample
    def load_sample(self, token: str) -> Sample:
        """Read everything of one keyframe into a :class:`Sample` (see the module docstring for frames)."""
        nusc = self.nusc
        sample = nusc.get("sample", token)
        lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        ego_to_global = _pose(nusc.get("ego_pose", lidar_sd["ego_pose_token"]))
        global_to_ego = geometry.invert_transform(ego_to_global)
        scene = nusc.get("scene", sample["scene_token"])

        boxes, instance_to_box = self._load_boxes(sample, global_to_ego)
        images, rig, masks, depths = self._load_cameras(sample, global_to_ego, instance_to_box)
        lidar = self._load_lidar(lidar_sd, global_to_ego)
        radar = self._load_radar(sample, global_to_ego, lidar_sd["timestamp"])
        return Sample(
            token=token,
            scene_name=scene["name"],
            timestamp_us=int(sample["timestamp"]),
            images=images,
            rig=rig,
            lidar_points=lidar,
            radar_points=radar,
            boxes=boxes,
            ego_to_global=ego_to_global,
            instance_masks=masks,
            depth_maps=depths,
        )

    def _sensor_to_key_ego(self, sample_data: dict, global_to_ego: np.ndarray) -> np.ndarray:
        """(4, 4) sensor frame at the sample_data's time -> keyframe ego frame (through global)."""
        sensor_to_ego = _pose(self.nusc.get("calibrated_sensor", sample_data["calibrated_sensor_token"]))
        ego_to_global = _pose(self.nusc.get("ego_pose", sample_data["ego_pose_token"]))
        return global_to_ego @ ego_to_global @ sensor_to_ego

    # ------------------------------------------------------------------------------------------ boxes
    def _load_boxes(self, sample: dict, global_to_ego: np.ndarray) -> tuple[Boxes3D, dict[int, int]]:
        """GT boxes in the keyframe ego frame, and a map instance-table row -> box index."""
        from nuscenes.eval.detection.utils import category_to_detection_name

        cfg = self.config
        rot = global_to_ego[:3, :3]
        rows = []
        for ann_token in sample["anns"]:
            ann = self.nusc.get("sample_annotation", ann_token)
            name = category_to_detection_name(ann["category_name"])
            if name is None:
                continue
            if ann["num_lidar_pts"] + ann["num_radar_pts"] < cfg.min_box_points:
                continue
            center_ego = geometry.transform_points(global_to_ego, np.asarray([ann["translation"]], dtype=np.float64))[0]
            if cfg.box_range is not None:
                (x_lo, x_hi), (y_lo, y_hi) = cfg.box_range.x_range_m, cfg.box_range.y_range_m
                if not (x_lo <= center_ego[0] < x_hi and y_lo <= center_ego[1] < y_hi):
                    continue
            rot_ego = rot @ geometry.quaternion_to_matrix(ann["rotation"])
            center, size_lwh, yaw = geometry.box_from_nuscenes(
                center_ego, ann["size"], geometry.matrix_to_quaternion(rot_ego)
            )
            # Devkit velocity is a global-frame finite difference (nan where it cannot be estimated).
            velocity = rot @ self.nusc.box_velocity(ann_token)
            attrs = ann["attribute_tokens"]
            rows.append(
                dict(
                    center=center,
                    size_lwh=size_lwh,
                    yaw=yaw,
                    velocity=velocity[:2],
                    label=DETECTION_CLASSES.index(name),
                    attribute=self._attribute_names[attrs[0]] if attrs else "",
                    num_lidar_pts=int(ann["num_lidar_pts"]),
                    num_radar_pts=int(ann["num_radar_pts"]),
                    token=ann_token,
                    instance=self._instance_index[ann["instance_token"]],
                )
            )
        if not rows:
            return Boxes3D.empty(), {}
        boxes = Boxes3D(
            center=np.stack([r["center"] for r in rows]),
            size_lwh=np.stack([r["size_lwh"] for r in rows]),
            yaw=np.array([r["yaw"] for r in rows]),
            velocity=np.stack([r["velocity"] for r in rows]),
            label=np.array([r["label"] for r in rows]),
            score=np.ones(len(rows)),
            attribute=[r["attribute"] for r in rows],
            num_lidar_pts=np.array([r["num_lidar_pts"] for r in rows], dtype=np.int64),
            num_radar_pts=np.array([r["num_radar_pts"] for r in rows], dtype=np.int64),
            token=[r["token"] for r in rows],
        )
        return boxes, {r["instance"]: i for i, r in enumerate(rows)}

    # ---------------------------------------------------------------------------------------- cameras
    def _load_cameras(
        self, sample: dict, global_to_ego: np.ndarray, instance_to_box: dict[int, int]
    ) -> tuple[np.ndarray, CameraRig, Optional[np.ndarray], Optional[np.ndarray]]:
        cfg = self.config
        out_h, out_w = cfg.image_hw
        images, intrinsics, cam_to_ego, masks, depths = [], [], [], [], []
        # Lookup table instance row + 1 -> box index (-1 for background and for instances that are
        # not among this sample's boxes, e.g. non-detection categories or boxes filtered out).
        lut = np.full(len(self.nusc.instance) + 1, -1, dtype=np.int32)
        for inst, box_idx in instance_to_box.items():
            lut[inst + 1] = box_idx
        for channel in cfg.cameras:
            sd = self.nusc.get("sample_data", sample["data"][channel])
            calib = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            path = self.dataroot / sd["filename"]
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise DatasetError(f"cannot read camera image {path}")
            tf = ImageTransform.fit(bgr.shape[:2], (out_h, out_w), cfg.resize_scale, cfg.crop_bottom_fraction)
            rgb = cv2.cvtColor(tf.apply(bgr, cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
            images.append(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
            intrinsics.append(tf.intrinsics(np.asarray(calib["camera_intrinsic"], dtype=np.float64)))
            if cfg.compensate_camera_motion:
                cam_to_ego.append(self._sensor_to_key_ego(sd, global_to_ego))
            else:
                cam_to_ego.append(_pose(calib))

            stem = Path(sd["filename"]).stem
            if cfg.load_masks:
                raw = self._read_uint16(Path("masks") / channel / f"{stem}.png", bgr.shape[:2])
                if raw is not None and int(raw.max()) >= len(lut):
                    raise DatasetError(f"masks/{channel}/{stem}.png: value {int(raw.max())} exceeds the instance table")
                masks.append(None if raw is None else lut[tf.apply(raw, cv2.INTER_NEAREST_EXACT).astype(np.int64)])
            if cfg.load_depth:
                raw = self._read_uint16(Path("depth") / channel / f"{stem}.png", bgr.shape[:2])
                depth = None if raw is None else tf.apply(raw, cv2.INTER_NEAREST_EXACT).astype(np.float32)
                depths.append(None if depth is None else depth / _DEPTH_PNG_SCALE)
        rig = CameraRig(
            names=list(cfg.cameras),
            intrinsics=np.stack(intrinsics),
            cam_to_ego=np.stack(cam_to_ego),
            image_hw=(out_h, out_w),
        )
        return np.stack(images), rig, self._stack_optional(masks, "masks"), self._stack_optional(depths, "depth")

    def _read_uint16(self, relpath: Path, image_hw: tuple[int, int]) -> Optional[np.ndarray]:
        """A uint16 PNG under the dataroot, or None when the file does not exist."""
        path = self.dataroot / relpath
        if not path.is_file():
            return None
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
            raise DatasetError(f"{path}: expected a single-channel uint16 PNG")
        if raw.shape != tuple(image_hw):
            raise DatasetError(f"{path}: size {raw.shape} differs from its camera image {tuple(image_hw)}")
        return raw

    @staticmethod
    def _stack_optional(maps: list, what: str) -> Optional[np.ndarray]:
        if not maps or all(m is None for m in maps):
            return None
        if any(m is None for m in maps):
            raise DatasetError(f"{what} exist for some cameras of a sample but not for others")
        return np.stack(maps)

    # ---------------------------------------------------------------------------------------- points
    def _sweeps(self, keyframe_sd: dict, count: int) -> list[dict]:
        """The keyframe sample_data and up to ``count - 1`` earlier sweeps (newest first)."""
        out = [keyframe_sd]
        sd = keyframe_sd
        while len(out) < count and sd["prev"]:
            sd = self.nusc.get("sample_data", sd["prev"])
            out.append(sd)
        return out

    def _load_lidar(self, keyframe_sd: dict, global_to_ego: np.ndarray) -> np.ndarray:
        """(P, 5) x, y, z (m, keyframe ego), intensity, time_lag_s."""
        from nuscenes.utils.data_classes import LidarPointCloud

        parts = []
        for sd in self._sweeps(keyframe_sd, self.config.lidar_sweeps):
            pc = LidarPointCloud.from_file(str(self.dataroot / sd["filename"])).points.T  # (P, 4) x y z intensity
            xyz = geometry.transform_points(self._sensor_to_key_ego(sd, global_to_ego), pc[:, :3].astype(np.float64))
            lag = np.full((len(pc), 1), 1e-6 * (keyframe_sd["timestamp"] - sd["timestamp"]))
            parts.append(np.concatenate([xyz, pc[:, 3:4], lag], axis=1))
        return np.concatenate(parts).astype(np.float32)

    def _load_radar(self, sample: dict, global_to_ego: np.ndarray, key_timestamp_us: int) -> np.ndarray:
        """(Q, 7) x, y, z (m, keyframe ego), rcs, vx_comp, vy_comp (m/s, keyframe ego axes), time_lag_s."""
        from nuscenes.utils.data_classes import RadarPointCloud

        parts = [np.zeros((0, 7))]
        for channel in self._radar_channels:
            if channel not in sample["data"]:
                continue
            key_sd = self.nusc.get("sample_data", sample["data"][channel])
            for sd in self._sweeps(key_sd, self.config.radar_sweeps):
                pts = RadarPointCloud.from_file(str(self.dataroot / sd["filename"]), **self._radar_states).points.T
                # An empty radar cloud is stored as one NaN point (the devkit cannot read zero points).
                pts = pts[np.all(np.isfinite(pts[:, :3]), axis=1)]
                if len(pts) == 0:
                    continue
                to_ego = self._sensor_to_key_ego(sd, global_to_ego)
                xyz = geometry.transform_points(to_ego, pts[:, :3].astype(np.float64))
                # Ego-motion-compensated radial velocities live in the radar frame: rotate only.
                vel = np.concatenate([pts[:, [_RADAR_VX_COMP, _RADAR_VY_COMP]], np.zeros((len(pts), 1))], axis=1)
                vel = vel @ to_ego[:3, :3].T
                lag = np.full((len(pts), 1), 1e-6 * (key_timestamp_us - sd["timestamp"]))
                parts.append(np.concatenate([xyz, pts[:, [_RADAR_RCS]], vel[:, :2], lag], axis=1))
        return np.concatenate(parts).astype(np.float32)


class NuScenesDataset(torch.utils.data.Dataset):
    """``torch.utils.data.Dataset`` over a :class:`NuScenesSource`: item i is the i-th sample of the split.

    Use with ``torch.utils.data.DataLoader(dataset, collate_fn=collate_samples, ...)``.
    """

    def __init__(self, source: NuScenesSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Sample:
        return self.source.load_sample(self.source.sample_tokens[index])


def collate_samples(samples: list[Sample]) -> Batch:
    """Stack samples into a :class:`Batch` (see its docstring for shapes); images ImageNet-normalised.

    Raises:
        ValueError: an empty list, or samples whose image sizes / cameras differ, or where only
            some samples carry depth or masks.
    """
    if not samples:
        raise ValueError("collate_samples needs at least one sample")
    shapes = {s.images.shape for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"samples have different image shapes {sorted(shapes)}; use one LoaderConfig.image_hw")
    images = torch.from_numpy(np.stack([s.images for s in samples])).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    images = (images - mean) / std

    def optional(name: str, dtype) -> Optional["torch.Tensor"]:
        values = [getattr(s, name) for s in samples]
        if all(v is None for v in values):
            return None
        if any(v is None for v in values):
            raise ValueError(f"only some samples carry {name}; cannot collate")
        return torch.from_numpy(np.stack(values)).to(dtype)

    return Batch(
        images=images,
        intrinsics=torch.from_numpy(np.stack([s.rig.intrinsics for s in samples])).float(),
        cam_to_ego=torch.from_numpy(np.stack([s.rig.cam_to_ego for s in samples])).float(),
        lidar_points=[torch.from_numpy(np.asarray(s.lidar_points, dtype=np.float32)) for s in samples],
        radar_points=[torch.from_numpy(np.asarray(s.radar_points, dtype=np.float32)) for s in samples],
        boxes=[s.boxes for s in samples],
        ego_to_global=torch.from_numpy(np.stack([s.ego_to_global for s in samples])).double(),
        tokens=[s.token for s in samples],
        depth_maps=optional("depth_maps", torch.float32),
        instance_masks=optional("instance_masks", torch.int64),
    )
