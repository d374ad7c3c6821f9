"""Frames, rotations and box geometry.

Conventions (used everywhere in x3kd):
- Ego / LiDAR frame: x forward, y left, z up (nuScenes). Units are metres and radians.
- Yaw is counter-clockwise about +z, measured from +x.
- Quaternions are (w, x, y, z), as in nuScenes tables and pyquaternion.
- Camera frame (OpenCV / nuScenes): x right, y down, z forward (optical axis).
- A box is (x, y, z_center, length, width, height, yaw): length runs along the heading,
  width across it. nuScenes stores (width, length, height) plus a quaternion; the conversion
  between the two lives in exactly one place: :func:`box_to_nuscenes` / :func:`box_from_nuscenes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "yaw_to_quaternion",
    "quaternion_to_yaw",
    "make_transform",
    "invert_transform",
    "transform_points",
    "box_corners",
    "project_points",
    "NuScenesBox",
    "box_to_nuscenes",
    "box_from_nuscenes",
    "wrap_angle",
]


def quaternion_to_matrix(q_wxyz) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation matrix (3, 3). The quaternion is normalised first."""
    w, x, y, z = np.asarray(q_wxyz, dtype=np.float64) / np.linalg.norm(q_wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) -> unit quaternion (w, x, y, z) with w >= 0."""
    r = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s])
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = np.array([(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s])
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = np.array([(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = np.array([(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s])
    q = q / np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def yaw_to_quaternion(yaw_rad: float) -> np.ndarray:
    """Rotation by ``yaw_rad`` about +z -> quaternion (w, x, y, z)."""
    return np.array([np.cos(yaw_rad / 2.0), 0.0, 0.0, np.sin(yaw_rad / 2.0)])


def quaternion_to_yaw(q_wxyz) -> float:
    """Heading (rad, CCW about +z from +x) of the rotated +x axis, in (-pi, pi]."""
    r = quaternion_to_matrix(q_wxyz)
    return float(np.arctan2(r[1, 0], r[0, 0]))


def wrap_angle(angle_rad):
    """Wrap angles to [-pi, pi)."""
    return (np.asarray(angle_rad) + np.pi) % (2.0 * np.pi) - np.pi


def make_transform(rotation_wxyz, translation_m) -> np.ndarray:
    """(quaternion, translation) -> homogeneous transform (4, 4) mapping child -> parent frame."""
    t = np.eye(4)
    t[:3, :3] = quaternion_to_matrix(rotation_wxyz)
    t[:3, 3] = np.asarray(translation_m, dtype=np.float64)
    return t


def invert_transform(transform: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform (4, 4)."""
    inv = np.eye(4)
    rot = transform[:3, :3]
    inv[:3, :3] = rot.T
    inv[:3, 3] = -rot.T @ transform[:3, 3]
    return inv


def transform_points(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) transform to points (P, 3+); extra columns are passed through unchanged."""
    out = np.array(points, dtype=np.float64 if points.dtype == np.float64 else np.float32, copy=True)
    out[:, :3] = points[:, :3] @ transform[:3, :3].T + transform[:3, 3]
    return out


def box_corners(center: np.ndarray, size_lwh: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Corners of boxes.

    Args:
        center: (N, 3) box centres (m).
        size_lwh: (N, 3) length, width, height (m).
        yaw: (N,) heading (rad).

    Returns:
        (N, 8, 3) corners. Order: bottom face 0-3 then top face 4-7, each face counter-clockwise
        seen from above starting at front-left: (+l/2, +w/2), (-l/2, +w/2), (-l/2, -w/2), (+l/2, -w/2).
    """
    center = np.asarray(center, dtype=np.float64).reshape(-1, 3)
    size = np.asarray(size_lwh, dtype=np.float64).reshape(-1, 3)
    yaw = np.asarray(yaw, dtype=np.float64).reshape(-1)
    sx = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
    sy = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * 0.5
    local = np.stack(
        [size[:, None, 0] * sx, size[:, None, 1] * sy, size[:, None, 2] * sz], axis=-1
    )  # (N, 8, 3)
    cos, sin = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    x = cos * local[..., 0] - sin * local[..., 1]
    y = sin * local[..., 0] + cos * local[..., 1]
    return np.stack([x, y, local[..., 2]], axis=-1) + center[:, None, :]


def project_points(points_cam: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of camera-frame points.

    Args:
        points_cam: (P, 3) points in the camera frame (z forward, m).
        intrinsics: (3, 3) camera matrix K (pixels).

    Returns:
        uv: (P, 2) pixel coordinates (u right, v down); depth_m: (P,) z of each point.
        Points with depth <= 0 get uv = nan.
    """
    depth = points_cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = points_cam @ np.asarray(intrinsics).T
        uv = uvw[:, :2] / uvw[:, 2:3]
    uv[depth <= 0] = np.nan
    return uv, depth


@dataclass(frozen=True)
class NuScenesBox:
    """A box as nuScenes stores it: centre (m), size as (width, length, height) (m), rotation (w, x, y, z)."""

    center: tuple[float, float, float]
    wlh: tuple[float, float, float]
    rotation_wxyz: tuple[float, float, float, float]


def box_to_nuscenes(center, size_lwh, yaw_rad: float) -> NuScenesBox:
    """Our (centre, length/width/height, yaw) -> nuScenes (centre, w/l/h, quaternion)."""
    length, width, height = (float(v) for v in size_lwh)
    q = yaw_to_quaternion(float(yaw_rad))
    return NuScenesBox(
        center=tuple(float(v) for v in center),
        wlh=(width, length, height),
        rotation_wxyz=tuple(float(v) for v in q),
    )


def box_from_nuscenes(center, wlh, rotation_wxyz) -> tuple[np.ndarray, np.ndarray, float]:
    """nuScenes (centre, w/l/h, quaternion) -> our (centre (3,), size_lwh (3,), yaw rad)."""
    width, length, height = (float(v) for v in wlh)
    return (
        np.asarray(center, dtype=np.float64),
        np.array([length, width, height]),
        quaternion_to_yaw(rotation_wxyz),
    )
