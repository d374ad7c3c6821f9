"""Typed containers that flow through x3kd: boxes, camera rigs, samples.

All geometry is in the ego frame (x forward, y left, z up; metres, radians, m/s) unless a
field name says otherwise. See :mod:`x3kd_core.geometry` for the conventions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Optional

import math

import numpy as np

from x3kd_core import geometry

if TYPE_CHECKING:  # torch is only needed for Batch, which is built by the data loader
    import torch

#: The 10 nuScenes detection classes, in the order used for class ids everywhere in x3kd.
DETECTION_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)

#: The six nuScenes surround cameras, in the order used for the camera axis everywhere.
CAMERA_NAMES: tuple[str, ...] = (
    "CAM_FRONT_LEFT",
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_LEFT",
    "CAM_BACK",
    "CAM_BACK_RIGHT",
)

RADAR_NAMES: tuple[str, ...] = (
    "RADAR_FRONT",
    "RADAR_FRONT_LEFT",
    "RADAR_FRONT_RIGHT",
    "RADAR_BACK_LEFT",
    "RADAR_BACK_RIGHT",
)


@dataclass
class Boxes3D:
    """N oriented 3D boxes in one frame (the ego frame unless stated).

    Fields:
        center: (N, 3) box centre x, y, z (m); z is the centre of the box, not its bottom.
        size_lwh: (N, 3) length (along heading), width, height (m).
        yaw: (N,) heading (rad), CCW about +z from +x.
        velocity: (N, 2) vx, vy (m/s); nan where unknown.
        label: (N,) int64 index into :data:`DETECTION_CLASSES`.
        score: (N,) float confidence in [0, 1]; 1 for ground truth.
        attribute: N nuScenes attribute names ("" where none).
        num_lidar_pts / num_radar_pts: (N,) int, -1 where unknown.
        token: N annotation tokens ("" for predictions).
    """

    center: np.ndarray
    size_lwh: np.ndarray
    yaw: np.ndarray
    velocity: np.ndarray
    label: np.ndarray
    score: np.ndarray
    attribute: list[str] = field(default_factory=list)
    num_lidar_pts: Optional[np.ndarray] = None
    num_radar_pts: Optional[np.ndarray] = None
    token: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.center)
        self.center = np.asarray(self.center, dtype=np.float64).reshape(n, 3)
        self.size_lwh = np.asarray(self.size_lwh, dtype=np.float64).reshape(n, 3)
        self.yaw = np.asarray(self.yaw, dtype=np.float64).reshape(n)
        self.velocity = np.asarray(self.velocity, dtype=np.float64).reshape(n, 2)
        self.label = np.asarray(self.label, dtype=np.int64).reshape(n)
        self.score = np.asarray(self.score, dtype=np.float64).reshape(n)
        if not self.attribute:
            self.attribute = [""] * n
        if not self.token:
            self.token = [""] * n
        if self.num_lidar_pts is None:
            self.num_lidar_pts = np.full(n, -1, dtype=np.int64)
        if self.num_radar_pts is None:
            self.num_radar_pts = np.full(n, -1, dtype=np.int64)
        for name in ("attribute", "token"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Boxes3D.{name} has {len(getattr(self, name))} entries, expected {n}")
        if np.any(self.label < 0) or np.any(self.label >= len(DETECTION_CLASSES)):
            raise ValueError(f"Boxes3D.label out of range [0, {len(DETECTION_CLASSES)}): {self.label}")

    @classmethod
    def empty(cls) -> "Boxes3D":
        return cls(
            center=np.zeros((0, 3)),
            size_lwh=np.zeros((0, 3)),
            yaw=np.zeros(0),
            velocity=np.zeros((0, 2)),
            label=np.zeros(0, dtype=np.int64),
            score=np.zeros(0),
        )

    def __len__(self) -> int:
        return len(self.center)

    def __getitem__(self, index) -> "Boxes3D":
        """Select boxes with an index array, boolean mask or slice."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Boxes3D(
            center=self.center[idx],
            size_lwh=self.size_lwh[idx],
            yaw=self.yaw[idx],
            velocity=self.velocity[idx],
            label=self.label[idx],
            score=self.score[idx],
            attribute=[self.attribute[i] for i in idx],
            num_lidar_pts=self.num_lidar_pts[idx],
            num_radar_pts=self.num_radar_pts[idx],
            token=[self.token[i] for i in idx],
        )

    @property
    def class_names(self) -> list[str]:
        return [DETECTION_CLASSES[i] for i in self.label]

    def corners(self) -> np.ndarray:
        """(N, 8, 3) corners, ordering as in :func:`x3kd_core.geometry.box_corners`."""
        return geometry.box_corners(self.center, self.size_lwh, self.yaw)

    def transformed(self, transform: np.ndarray) -> "Boxes3D":
        """Boxes moved by a rigid (4, 4) transform whose rotation is about z only (yaw-only frames).

        Velocities are rotated, not translated.
        """
        rot = transform[:3, :3]
        dyaw = float(np.arctan2(rot[1, 0], rot[0, 0]))
        center = self.center @ rot.T + transform[:3, 3]
        vel3 = np.concatenate([self.velocity, np.zeros((len(self), 1))], axis=1) @ rot.T
        return replace(
            self,
            center=center,
            yaw=geometry.wrap_angle(self.yaw + dyaw),
            velocity=vel3[:, :2],
        )

    @staticmethod
    def concatenate(parts: list["Boxes3D"]) -> "Boxes3D":
        if not parts:
            return Boxes3D.empty()
        return Boxes3D(
            center=np.concatenate([p.center for p in parts]),
            size_lwh=np.concatenate([p.size_lwh for p in parts]),
            yaw=np.concatenate([p.yaw for p in parts]),
            velocity=np.concatenate([p.velocity for p in parts]),
            label=np.concatenate([p.label for p in parts]),
            score=np.concatenate([p.score for p in parts]),
            attribute=[a for p in parts for a in p.attribute],
            num_lidar_pts=np.concatenate([p.num_lidar_pts for p in parts]),
            num_radar_pts=np.concatenate([p.num_radar_pts for p in parts]),
            token=[t for p in parts for t in p.token],
        )


#: A nuScenes-like mounting of the six cameras, for tests and benchmarks that need a plausible rig
#: without a dataset: yaw of the optical axis from +x (deg), x, y, z (m), fx as a fraction of the
#: image width. The back camera is wide-angle as in nuScenes (shorter focal length).
NUSCENES_LIKE_RIG: dict[str, tuple[float, float, float, float, float]] = {
    "CAM_FRONT_LEFT": (55.0, 1.5, 0.5, 1.5, 0.79),
    "CAM_FRONT": (0.0, 1.7, 0.0, 1.5, 0.79),
    "CAM_FRONT_RIGHT": (-55.0, 1.5, -0.5, 1.5, 0.79),
    "CAM_BACK_LEFT": (110.0, 1.0, 0.7, 1.5, 0.79),
    "CAM_BACK": (180.0, 0.0, 0.0, 1.5, 0.50),
    "CAM_BACK_RIGHT": (-110.0, 1.0, -0.7, 1.5, 0.79),
}


@dataclass
class CameraRig:
    """Calibration of N cameras.

    Fields:
        names: N camera channel names (e.g. CAM_FRONT).
        intrinsics: (N, 3, 3) pinhole matrices K for the image size below (pixels).
        cam_to_ego: (N, 4, 4) transforms from each camera frame to the ego frame.
        image_hw: (height, width) in pixels of the images these intrinsics belong to.
    """

    names: list[str]
    intrinsics: np.ndarray
    cam_to_ego: np.ndarray
    image_hw: tuple[int, int]

    def __post_init__(self) -> None:
        n = len(self.names)
        self.intrinsics = np.asarray(self.intrinsics, dtype=np.float64).reshape(n, 3, 3)
        self.cam_to_ego = np.asarray(self.cam_to_ego, dtype=np.float64).reshape(n, 4, 4)

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def nuscenes_like(cls, image_hw: tuple[int, int]) -> "CameraRig":
        """The six cameras of :data:`NUSCENES_LIKE_RIG` in CAMERA_NAMES order, level, principal
        point at the image centre, for images of ``image_hw`` (height, width) pixels."""
        H, W = image_hw
        intrinsics, cam_to_ego = [], []
        for name in CAMERA_NAMES:
            yaw_deg, x, y, z, f = NUSCENES_LIKE_RIG[name]
            yaw = math.radians(yaw_deg)
            t = np.eye(4)
            t[:3, 0] = (math.sin(yaw), -math.cos(yaw), 0.0)  # camera x (right) in ego
            t[:3, 1] = (0.0, 0.0, -1.0)  # camera y (down)
            t[:3, 2] = (math.cos(yaw), math.sin(yaw), 0.0)  # optical axis
            t[:3, 3] = (x, y, z)
            cam_to_ego.append(t)
            intrinsics.append([[f * W, 0.0, (W - 1) / 2], [0.0, f * W, (H - 1) / 2], [0.0, 0.0, 1.0]])
        return cls(list(CAMERA_NAMES), np.array(intrinsics), np.stack(cam_to_ego), (H, W))

    def ego_to_image(self, points_ego: np.ndarray, cam: int) -> tuple[np.ndarray, np.ndarray]:
        """Project ego-frame points (P, 3) into camera ``cam``: returns uv (P, 2) and depth_m (P,)."""
        ego_to_cam = geometry.invert_transform(self.cam_to_ego[cam])
        pts_cam = geometry.transform_points(ego_to_cam, np.asarray(points_ego, dtype=np.float64)[:, :3])
        return geometry.project_points(pts_cam, self.intrinsics[cam])


@dataclass
class Sample:
    """One keyframe of a multi-sensor dataset, everything in the ego frame of the keyframe.

    Fields:
        token: nuScenes sample token.
        scene_name: name of the scene it belongs to.
        timestamp_us: keyframe time (microseconds).
        images: (N_cam, 3, H, W) uint8 RGB, already resized/cropped to ``rig.image_hw``.
        rig: calibration matching ``images``.
        lidar_points: (P, 5) x, y, z (m), intensity, time_lag_s (>= 0; 0 for the keyframe sweep).
        radar_points: (Q, 7) x, y, z (m), rcs (dBsm), vx, vy (ego-motion compensated, m/s), time_lag_s.
        boxes: ground-truth boxes (ego frame), or an empty Boxes3D where the split has none.
        instance_masks: (N_cam, H, W) int32 per-pixel index into ``boxes`` (-1 = background),
            or None when the dataset carries no masks (real nuScenes).
        depth_maps: (N_cam, H, W) float32 metres (0 = no return), or None.
        ego_to_global: (4, 4) ego pose at the keyframe time.
    """

    token: str
    scene_name: str
    timestamp_us: int
    images: np.ndarray
    rig: CameraRig
    lidar_points: np.ndarray
    radar_points: np.ndarray
    boxes: Boxes3D
    ego_to_global: np.ndarray
    instance_masks: Optional[np.ndarray] = None
    depth_maps: Optional[np.ndarray] = None


@dataclass
class Batch:
    """A collated training / inference batch (torch tensors), produced by
    :func:`x3kd_core.data.nuscenes.collate_samples`.

    Fields:
        images: (B, N_cam, 3, H, W) float32, ImageNet-normalised RGB.
        intrinsics: (B, N_cam, 3, 3) float32, K for the (H, W) above (pixels).
        cam_to_ego: (B, N_cam, 4, 4) float32.
        lidar_points: B tensors (P_b, 5): x, y, z (m, ego), intensity, time_lag_s.
        radar_points: B tensors (Q_b, 7): x, y, z (m, ego), rcs, vx, vy (m/s), time_lag_s.
        boxes: B ground-truth Boxes3D (numpy, ego frame).
        ego_to_global: (B, 4, 4) float64.
        tokens: B sample tokens.
        depth_maps: (B, N_cam, H, W) float32 metres (0 = none), or None.
        instance_masks: (B, N_cam, H, W) int64 index into ``boxes[b]`` (-1 = background), or None.
    """

    images: "torch.Tensor"
    intrinsics: "torch.Tensor"
    cam_to_ego: "torch.Tensor"
    lidar_points: list
    radar_points: list
    boxes: list
    ego_to_global: "torch.Tensor"
    tokens: list
    depth_maps: Optional["torch.Tensor"] = None
    instance_masks: Optional["torch.Tensor"] = None

    def to(self, device) -> "Batch":
        """Copy tensors to ``device`` (boxes stay numpy)."""

        def move(x):
            return None if x is None else x.to(device)

        return replace(
            self,
            images=move(self.images),
            intrinsics=move(self.intrinsics),
            cam_to_ego=move(self.cam_to_ego),
            lidar_points=[p.to(device) for p in self.lidar_points],
            radar_points=[p.to(device) for p in self.radar_points],
            ego_to_global=move(self.ego_to_global),
            depth_maps=move(self.depth_maps),
            instance_masks=move(self.instance_masks),
        )
