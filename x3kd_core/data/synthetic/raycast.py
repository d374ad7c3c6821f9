"""Vectorised ray casting against oriented boxes and the ground plane (numpy).

Cameras and LiDAR share these kernels, so pixels and points see the same surfaces. Rays come
in grids (image rows x columns, LiDAR beams x azimuth steps); each box is only tested against
the sub-grid its bounding rectangle (image) or angular window (LiDAR) covers, which keeps the
cost proportional to the area an object covers rather than to rays x boxes.

All boxes are yaw-only oriented boxes given by centre (m), half extents (m) and yaw (rad) in the
same frame as the rays.
"""

from __future__ import annotations

import numpy as np

from x3kd_core import geometry

#: The 12 edges of a box in geometry.box_corners order.
_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]])


def ray_box_distance(origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, half: np.ndarray, yaw: float,
                     near: float = 1e-3) -> np.ndarray:
    """Ray parameter t of the first hit of rays ``origin + t * dirs`` with one box (slab method).

    Args:
        origin: (3,) common ray origin. dirs: (..., 3) ray directions (any length; t is in units of
            the direction's length). center / half: (3,) box centre and half extents; yaw: rad.
        near: hits closer than this (in t) are ignored (rays starting inside a box miss it).

    Returns:
        (...) t of the entry point, +inf where the ray misses.
    """
    c, s = np.cos(yaw), np.sin(yaw)
    o = np.asarray(origin, dtype=np.float64) - center
    o_local = np.array([c * o[0] + s * o[1], -s * o[0] + c * o[1], o[2]])
    dx = c * dirs[..., 0] + s * dirs[..., 1]
    dy = -s * dirs[..., 0] + c * dirs[..., 1]
    dz = dirs[..., 2]
    t_enter = np.full(dirs.shape[:-1], -np.inf)
    t_exit = np.full(dirs.shape[:-1], np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, dk in enumerate((dx, dy, dz)):
            inv = 1.0 / dk
            t1 = (-half[k] - o_local[k]) * inv
            t2 = (half[k] - o_local[k]) * inv
            np.maximum(t_enter, np.minimum(t1, t2), out=t_enter)
            np.minimum(t_exit, np.maximum(t1, t2), out=t_exit)
    hit = (t_exit >= t_enter) & (t_enter > near)
    return np.where(hit, t_enter, np.inf)


def rays_boxes_distance(origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, half: np.ndarray,
                        yaw: np.ndarray, near: float = 1e-3) -> np.ndarray:
    """Like :func:`ray_box_distance` for n rays (n, 3) against P boxes at once: t (n, P)."""
    c, s = np.cos(yaw), np.sin(yaw)  # (P,)
    o = np.asarray(origin, dtype=np.float64) - center  # (P, 3)
    o_local = np.stack([c * o[:, 0] + s * o[:, 1], -s * o[:, 0] + c * o[:, 1], o[:, 2]], axis=1)
    dx = dirs[:, None, 0] * c + dirs[:, None, 1] * s  # (n, P)
    dy = -dirs[:, None, 0] * s + dirs[:, None, 1] * c
    dz = np.broadcast_to(dirs[:, None, 2], dx.shape)
    t_enter = np.full(dx.shape, -np.inf)
    t_exit = np.full(dx.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, dk in enumerate((dx, dy, dz)):
            inv = 1.0 / dk
            t1 = (-half[:, k] - o_local[:, k]) * inv
            t2 = (half[:, k] - o_local[:, k]) * inv
            np.maximum(t_enter, np.minimum(t1, t2), out=t_enter)
            np.minimum(t_exit, np.maximum(t1, t2), out=t_exit)
    hit = (t_exit >= t_enter) & (t_enter > near)
    return np.where(hit, t_enter, np.inf)


def ray_ground_distance(origin: np.ndarray, dirs: np.ndarray, ground_z: float = 0.0) -> np.ndarray:
    """t where rays ``origin + t * dirs`` meet the plane z = ground_z; +inf for rays that never do."""
    dz = dirs[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (ground_z - origin[2]) / dz
    return np.where((dz < 0) & (t > 0), t, np.inf)


def local_coordinates(points: np.ndarray, center: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Points (n, 3) -> coordinates in the frames of boxes (n, 3)/(n,) (one box per point)."""
    c, s = np.cos(yaw), np.sin(yaw)
    d = points - center
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)


def from_local(q: np.ndarray, center: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`local_coordinates`."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([c * q[:, 0] - s * q[:, 1], s * q[:, 0] + c * q[:, 1], q[:, 2]], axis=1) + center


def face_normals(q: np.ndarray, half: np.ndarray, yaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward normal of the face each surface point lies on.

    Args:
        q: (n, 3) surface points in their box frames; half: (n, 3); yaw: (n,).

    Returns:
        normals (n, 3) in the boxes' parent frame, and the face axis (n,) (0 = x, 1 = y, 2 = z).
    """
    ratio = np.abs(q) / np.maximum(half, 1e-9)
    axis = np.argmax(ratio, axis=1)
    sign = np.sign(q[np.arange(len(q)), axis])
    n_local = np.zeros_like(q)
    n_local[np.arange(len(q)), axis] = sign
    c, s = np.cos(yaw), np.sin(yaw)
    normals = np.stack([c * n_local[:, 0] - s * n_local[:, 1], s * n_local[:, 0] + c * n_local[:, 1], n_local[:, 2]], axis=1)
    return normals, axis


def nudge_inside(q: np.ndarray, half: np.ndarray, margin_m: float = 0.015) -> tuple[np.ndarray, np.ndarray]:
    """Clamp surface points (box frame) to lie at least ``min(margin_m, half / 4)`` inside the box,
    so that float rounding and small noise can never move a return out of the box it hit.

    Returns the clamped points (n, 3) and the per-point margin (n,) (smallest over axes, m).
    """
    eps = np.minimum(margin_m, 0.25 * half)
    return np.clip(q, -half + eps, half - eps), eps.min(axis=1)


def camera_rects(corners_cam: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
                 near: float = 0.1) -> np.ndarray:
    """Pixel rectangles covering the projections of boxes, clipped at the near plane.

    Args:
        corners_cam: (P, 8, 3) box corners in the camera frame (z forward).
        intrinsics: (3, 3) K. width / height: image size (px).

    Returns:
        (P, 4) int [u0, u1, v0, v1] (u1/v1 exclusive); u0 >= u1 or v0 >= v1 means not visible.
    """
    p = corners_cam.shape[0]
    if p == 0:
        return np.zeros((0, 4), dtype=np.int64)
    a = corners_cam[:, _EDGES[:, 0]]
    b = corners_cam[:, _EDGES[:, 1]]
    za, zb = a[..., 2], b[..., 2]
    crosses = (za - near) * (zb - near) < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(crosses, (near - za) / (zb - za), 0.0)
    cut = a + lam[..., None] * (b - a)
    pts = np.concatenate([corners_cam, cut], axis=1)  # (P, 20, 3)
    valid = np.concatenate([corners_cam[..., 2] >= near, crosses], axis=1)
    z = np.where(valid, pts[..., 2], 1.0)
    u = (intrinsics[0, 0] * pts[..., 0] + intrinsics[0, 1] * pts[..., 1]) / z + intrinsics[0, 2]
    v = intrinsics[1, 1] * pts[..., 1] / z + intrinsics[1, 2]
    big = 1e9
    u_min = np.where(valid, u, big).min(axis=1)
    u_max = np.where(valid, u, -big).max(axis=1)
    v_min = np.where(valid, v, big).min(axis=1)
    v_max = np.where(valid, v, -big).max(axis=1)
    rect = np.stack([
        np.floor(np.clip(u_min, -1, width + 1)), np.ceil(np.clip(u_max, -1, width + 1)),
        np.floor(np.clip(v_min, -1, height + 1)), np.ceil(np.clip(v_max, -1, height + 1)),
    ], axis=1).astype(np.int64)
    rect[:, [0, 2]] = np.maximum(rect[:, [0, 2]], 0)
    rect[:, 1] = np.minimum(rect[:, 1], width)
    rect[:, 3] = np.minimum(rect[:, 3], height)
    return rect


def spherical_windows(center: np.ndarray, half: np.ndarray, yaw: np.ndarray, elevations: np.ndarray,
                      azimuth_steps: int) -> list[tuple[int, int, np.ndarray | None]]:
    """Beam rows and azimuth columns of a spinning LiDAR that can hit each box.

    Args:
        center / half / yaw: (P, 3) / (P, 3) / (P,) boxes in the sensor frame (sensor at the origin).
        elevations: (B,) beam elevations (rad), ascending and evenly spaced.
        azimuth_steps: columns per turn; column j has azimuth 2 pi j / azimuth_steps.

    Returns:
        per box (row0, row1, cols): rows [row0, row1) and column indices (None = all columns).
        row0 >= row1 means the box is missed.
    """
    out: list[tuple[int, int, np.ndarray | None]] = []
    if len(center) == 0:
        return out
    corners = geometry.box_corners(center, 2 * half, yaw)  # (P, 8, 3)
    b = len(elevations)
    e0 = elevations[0]
    de = (elevations[-1] - elevations[0]) / max(b - 1, 1)
    step = 2 * np.pi / azimuth_steps
    # Horizontal distance from the sensor to the box footprint (nearest and farthest).
    q = local_coordinates(np.zeros_like(center), center, yaw)  # sensor in the box frame
    outside = np.maximum(np.abs(q[:, :2]) - half[:, :2], 0.0)
    d_min = np.hypot(outside[:, 0], outside[:, 1])
    d_max = np.hypot(*corners[..., :2].transpose(2, 0, 1)).max(axis=1)
    z_lo = center[:, 2] - half[:, 2]
    z_hi = center[:, 2] + half[:, 2]
    inside = d_min <= 1e-6
    d_min_safe = np.maximum(d_min, 1e-6)
    el_max = np.where(z_hi > 0, np.arctan2(z_hi, d_min_safe), np.arctan2(z_hi, d_max))
    el_min = np.where(z_lo < 0, np.arctan2(z_lo, d_min_safe), np.arctan2(z_lo, d_max))
    el_max = np.where(inside & (z_hi > 0), np.pi / 2, el_max)
    el_min = np.where(inside & (z_lo < 0), -np.pi / 2, el_min)
    r0 = np.clip(np.ceil((el_min - e0) / de - 1e-9), 0, b).astype(np.int64)
    r1 = np.clip(np.floor((el_max - e0) / de + 1e-9) + 1, 0, b).astype(np.int64)
    az_c = np.arctan2(center[:, 1], center[:, 0])
    az = np.arctan2(corners[..., 1], corners[..., 0])
    rel = (az - az_c[:, None] + np.pi) % (2 * np.pi) - np.pi
    lo = az_c + rel.min(axis=1)
    hi = az_c + rel.max(axis=1)
    for i in range(len(center)):
        if r0[i] >= r1[i]:
            out.append((0, 0, None))
        elif inside[i] or hi[i] - lo[i] > np.pi:
            out.append((int(r0[i]), int(r1[i]), None))
        else:
            j0 = int(np.ceil(lo[i] / step - 1e-9))
            j1 = int(np.floor(hi[i] / step + 1e-9))
            if j1 < j0:
                out.append((0, 0, None))
            else:
                out.append((int(r0[i]), int(r1[i]), np.arange(j0, j1 + 1) % azimuth_steps))
    return out
