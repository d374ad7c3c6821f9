"""The sensor rig and the three sensor models: pinhole cameras, a 32-beam spinning LiDAR, 5 radars.

All three cast rays into the same scene (parts of objects and background boxes, plus the ground
plane z = 0 of the ego frame) with :mod:`raycast`, so pixels, masks, depth and points agree.
Rendering happens in the ego frame of the frame's timestamp; textures on the ground are looked up
in road coordinates, so they stay fixed in the world while the ego moves.

One file on purpose (issue 14): it is one sensor rig; its three sensor models share the ray
caster, the scene's appearance and the ego-frame rendering above.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from x3kd_core import geometry
from x3kd_core.data.synthetic import appearance as app
from x3kd_core.data.synthetic import raycast
from x3kd_core.data.synthetic.config import SynthConfig
from x3kd_core.data.synthetic.world import (
    CURB_M, LANE_WIDTH_M, PARKING_CENTER_M, ROAD_HALF_WIDTH_M, SIDEWALK_OUTER_M, Road,
)
from x3kd_core.structures import CAMERA_NAMES, RADAR_NAMES

# ---- rig (nuScenes-like mounting, ego frame: x forward, y left, z up) ---------------------------
#: name -> (translation m, yaw deg) of each camera.
CAMERA_MOUNTS: dict[str, tuple[tuple[float, float, float], float]] = {
    "CAM_FRONT_LEFT": ((1.52, 0.49, 1.51), 55.0),
    "CAM_FRONT": ((1.70, 0.02, 1.51), 0.0),
    "CAM_FRONT_RIGHT": ((1.52, -0.49, 1.51), -55.0),
    "CAM_BACK_LEFT": ((1.04, 0.48, 1.56), 110.0),
    "CAM_BACK": ((0.03, 0.00, 1.57), 180.0),
    "CAM_BACK_RIGHT": ((1.04, -0.48, 1.56), -110.0),
}
#: LIDAR_TOP as mounted on the nuScenes car: sensor x points to the ego's right (yaw -90 deg).
LIDAR_MOUNT = ((0.94, 0.0, 1.84), -90.0)
RADAR_MOUNTS: dict[str, tuple[tuple[float, float, float], float]] = {
    "RADAR_FRONT": ((3.41, 0.00, 0.50), 0.0),
    "RADAR_FRONT_LEFT": ((2.42, 0.80, 0.50), 90.0),
    "RADAR_FRONT_RIGHT": ((2.42, -0.80, 0.50), -90.0),
    "RADAR_BACK_LEFT": ((-0.56, 0.62, 0.50), 170.0),
    "RADAR_BACK_RIGHT": ((-0.56, -0.62, 0.50), -170.0),
}
RADAR_HALF_FOV_RAD = np.deg2rad(60.0)
RADAR_MAX_RANGE_M = 100.0

SKY_ZENITH = np.array([0.33, 0.52, 0.85])
SKY_HORIZON = np.array([0.80, 0.85, 0.90])
HAZE_DISTANCE_M = 450.0


@dataclass(frozen=True)
class SensorSpec:
    """A mounted sensor: ``to_ego`` (4, 4) maps sensor-frame points to the ego frame.
    ``intrinsics`` (3, 3) and ``image_hw`` only for cameras."""

    name: str
    modality: str  # "camera" | "lidar" | "radar"
    to_ego: np.ndarray
    intrinsics: np.ndarray | None = None
    image_hw: tuple[int, int] | None = None

    @property
    def rotation_wxyz(self) -> np.ndarray:
        return geometry.matrix_to_quaternion(self.to_ego[:3, :3])

    @property
    def translation(self) -> np.ndarray:
        return self.to_ego[:3, 3].copy()


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def camera_specs(config: SynthConfig) -> list[SensorSpec]:
    """The six cameras in CAMERA_NAMES order, intrinsics scaled to the configured image width."""
    w, h = config.image_width, config.image_height
    out = []
    for name in CAMERA_NAMES:
        (tx, ty, tz), yaw_deg = CAMERA_MOUNTS[name]
        yaw = np.deg2rad(yaw_deg)
        focal = (config.back_focal_px_at_1600 if name == "CAM_BACK" else config.focal_px_at_1600) * w / 1600.0
        k = np.array([[focal, 0.0, w / 2.0], [0.0, focal, h / 2.0], [0.0, 0.0, 1.0]])
        # Columns: camera x (right), y (down), z (optical axis) expressed in the ego frame.
        fwd = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
        down = np.array([0.0, 0.0, -1.0])
        t = np.eye(4)
        t[:3, :3] = np.stack([right, down, fwd], axis=1)
        t[:3, 3] = (tx, ty, tz)
        out.append(SensorSpec(name, "camera", t, k, (h, w)))
    return out


def lidar_spec() -> SensorSpec:
    (tx, ty, tz), yaw_deg = LIDAR_MOUNT
    t = np.eye(4)
    t[:3, :3] = _yaw_matrix(np.deg2rad(yaw_deg))
    t[:3, 3] = (tx, ty, tz)
    return SensorSpec("LIDAR_TOP", "lidar", t)


def radar_specs() -> list[SensorSpec]:
    out = []
    for name in RADAR_NAMES:
        (tx, ty, tz), yaw_deg = RADAR_MOUNTS[name]
        t = np.eye(4)
        t[:3, :3] = _yaw_matrix(np.deg2rad(yaw_deg))
        t[:3, 3] = (tx, ty, tz)
        out.append(SensorSpec(name, "radar", t))
    return out


# ---- textures -----------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _noise_tiles() -> tuple[np.ndarray, np.ndarray]:
    """Two tileable value-noise textures (256 x 256, zero mean): fine grain and coarse blotches."""
    rng = np.random.default_rng(12345)

    def blurred(sigma: float) -> np.ndarray:
        # Blur a 3 x 3 tiling and keep the middle: the result wraps around seamlessly.
        tiled = np.tile(rng.normal(0, 1, (256, 256)).astype(np.float32), (3, 3))
        out = cv2.GaussianBlur(tiled, (0, 0), sigma)[256:512, 256:512].astype(np.float64)
        return (out - out.mean()) / out.std()

    return blurred(0.8), blurred(6.0)


def _tile(tile: np.ndarray, a: np.ndarray, b: np.ndarray, cell_m: float) -> np.ndarray:
    i = np.floor(a / cell_m).astype(np.int64) & 255
    j = np.floor(b / cell_m).astype(np.int64) & 255
    return tile[i, j]


def ground_appearance(s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (n, 3) and LiDAR reflectivity (n,) of the ground at road coordinates (s, d) (m).

    Layout across the road: asphalt lanes |d| < 7 (double yellow centre line, dashed white lane
    lines, solid white edge lines), parking strip to |d| = 10, a curb, paved sidewalk with tile
    joints, grass beyond.
    """
    fine, coarse = _noise_tiles()
    n1 = _tile(fine, s, d, 0.12)
    n2 = _tile(coarse, s, d, 0.6)
    ad = np.abs(d)
    gray = 0.30 + 0.025 * n1 + 0.03 * n2
    gray = np.where(ad > ROAD_HALF_WIDTH_M, gray + 0.03, gray)  # parking strip: lighter, older asphalt
    rgb = np.repeat(gray[:, None], 3, axis=1) * np.array([1.0, 1.0, 1.03])
    refl = np.full(len(s), 0.08)

    white = np.array([0.88, 0.88, 0.86])
    lane_line = (np.abs(ad - LANE_WIDTH_M) < 0.075) & (np.mod(s, 9.0) < 3.0)
    edge_line = np.abs(ad - ROAD_HALF_WIDTH_M) < 0.1
    parking_ticks = (np.abs(ad - (PARKING_CENTER_M + 1.45)) < 0.5) & (np.mod(s, 6.0) < 0.1)
    yellow_line = (ad > 0.08) & (ad < 0.2)
    for m in (lane_line, edge_line, parking_ticks):
        rgb[m] = white
        refl[m] = 0.6
    rgb[yellow_line] = np.array([0.85, 0.68, 0.15])
    refl[yellow_line] = 0.5

    curb = (ad >= CURB_M[0]) & (ad < CURB_M[1])
    rgb[curb] = 0.72
    refl[curb] = 0.3
    walk = (ad >= CURB_M[1]) & (ad < SIDEWALK_OUTER_M)
    joints = (np.mod(s, 1.5) < 0.05) | (np.mod(ad - CURB_M[1], 1.5) < 0.05)
    sw = 0.60 + 0.03 * n1[walk] + 0.02 * n2[walk] - 0.15 * joints[walk]
    rgb[walk] = sw[:, None] * np.array([1.0, 0.98, 0.95])
    refl[walk] = 0.2
    grass = ad >= SIDEWALK_OUTER_M
    g = 1.0 + 0.12 * n1[grass] + 0.15 * n2[grass]
    rgb[grass] = g[:, None] * np.array([0.25, 0.42, 0.16])
    refl[grass] = 0.15
    return np.clip(rgb, 0.0, 1.0), refl


def part_albedo(texture: np.ndarray, q: np.ndarray, half: np.ndarray, axis: np.ndarray,
                c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Albedo (n, 3) of surface points on parts.

    Args:
        texture: (n,) texture code per point (see appearance). q: (n, 3) point in its part's frame (m).
        half: (n, 3) part half extents. axis: (n,) face axis. c1 / c2: (n, 3) the part's colours.
    """
    out = c1.copy()
    r = 0.5 * (q / np.maximum(half, 1e-9) + 1.0)  # 0..1 across the part along each axis
    side = axis == 1
    end = axis == 0
    top = axis == 2
    front = end & (q[:, 0] > 0)
    rear = end & (q[:, 0] < 0)

    def paint(mask, color):
        out[mask] = color if np.ndim(color) == 1 else color[mask]

    m = texture == app.CABIN
    if m.any():
        pillar = (side & ((r[:, 0] < 0.08) | (r[:, 0] > 0.92) | (np.abs(r[:, 0] - 0.5) < 0.04))) | (end & ((r[:, 1] < 0.07) | (r[:, 1] > 0.93)))
        paint(m & (top | pillar), c2)
    m = texture == app.VEHICLE_BODY
    if m.any():
        lights = (r[:, 2] > 0.55) & (r[:, 2] < 0.85) & ((r[:, 1] < 0.2) | (r[:, 1] > 0.8))
        paint(m & front & lights, np.array([0.95, 0.95, 0.82]))
        paint(m & rear & lights, np.array([0.75, 0.05, 0.04]))
        paint(m & end & (r[:, 2] < 0.3), app.DARK)  # bumpers
        paint(m & front & (r[:, 2] >= 0.3) & (r[:, 2] < 0.55) & (r[:, 1] > 0.3) & (r[:, 1] < 0.7), app.DARK)  # grille
    m = texture == app.TRUCK_CAB
    if m.any():
        paint(m & (front | side) & (r[:, 2] > 0.58) & (front | (r[:, 0] > 0.35)), app.GLASS)
        paint(m & front & (r[:, 2] < 0.3) & ((r[:, 1] < 0.2) | (r[:, 1] > 0.8)), np.array([0.95, 0.95, 0.82]))
    m = texture == app.PANEL
    if m.any():
        seams = side & (np.mod(q[:, 0], 1.2) < 0.06)
        paint(m & seams, c1 * 0.75)
        paint(m & rear & (r[:, 2] < 0.12) & ((r[:, 1] < 0.15) | (r[:, 1] > 0.85)), np.array([0.75, 0.05, 0.04]))
    m = texture == app.BUS
    if m.any():
        band = (side | rear) & (r[:, 2] > 0.45) & (r[:, 2] < 0.85) & (np.mod(q[:, 0], 1.6) > 0.12)
        shield = front & (r[:, 2] > 0.35) & (r[:, 2] < 0.92) & (r[:, 1] > 0.05) & (r[:, 1] < 0.95)
        paint(m & (band | shield), c2)
        paint(m & front & (r[:, 2] < 0.2) & ((r[:, 1] < 0.18) | (r[:, 1] > 0.82)), np.array([0.95, 0.95, 0.82]))
        paint(m & top, np.array([0.75, 0.75, 0.75]))
    m = texture == app.HAZARD
    if m.any():
        stripes = (r[:, 2] < 0.35) & (np.mod(q[:, 0] + q[:, 1] + q[:, 2], 0.5) < 0.25) & ~top
        paint(m & stripes, np.array([0.06, 0.06, 0.06]))
    m = texture == app.BARRIER
    if m.any():
        stripes = np.mod(q[:, 1] + q[:, 2], 0.6) < 0.3
        paint(m & stripes & ~top, c2)
    m = texture == app.WINDOWS
    if m.any():
        horiz = np.where(side, q[:, 0], q[:, 1])
        height = q[:, 2] + half[:, 2]
        win = ~top & (np.mod(horiz, 3.0) > 0.9) & (np.mod(height, 3.2) > 1.0) & (np.mod(height, 3.2) < 2.4) & (height > 2.5)
        paint(m & win, c2)
        paint(m & top, np.array([0.35, 0.35, 0.36]))
    m = texture == app.WHEEL
    if m.any():
        hub = side & (np.abs(r[:, 0] - 0.5) < 0.2) & (np.abs(r[:, 2] - 0.5) < 0.2)
        paint(m & hub, np.array([0.55, 0.55, 0.57]))
    return out


# ---- cameras ------------------------------------------------------------------------------------
@dataclass
class CameraFrame:
    """One rendered image. rgb (H, W, 3) uint8; owner (H, W) int64 object index (-1 = none);
    depth_m (H, W) float32 camera-frame z (0 = sky / beyond depth_max); visible_px / total_px:
    (num_objects,) pixels where each object is the front surface / covered ignoring occluders."""

    rgb: np.ndarray
    owner: np.ndarray
    depth_m: np.ndarray
    visible_px: np.ndarray
    total_px: np.ndarray


class CameraRenderer:
    """Casts one ray per pixel centre; precomputes the ray directions once per camera."""

    def __init__(self, spec: SensorSpec):
        self.spec = spec
        h, w = spec.image_hw
        u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        pix = np.stack([u, v, np.ones_like(u)], axis=-1)
        d_cam = pix @ np.linalg.inv(spec.intrinsics).T  # z = 1: ray parameter t is camera depth
        self.dirs_ego = d_cam @ spec.to_ego[:3, :3].T  # (H, W, 3)
        self.origin = spec.to_ego[:3, 3].copy()
        self.ego_to_cam = geometry.invert_transform(spec.to_ego)
        self.ray_len = np.linalg.norm(self.dirs_ego, axis=-1)  # metres of range per metre of depth
        # Sky: gradient from the horizon to the zenith by ray elevation (the same every frame).
        mix = np.clip(self.dirs_ego[..., 2] / self.ray_len * 3.0, 0.0, 1.0)[..., None]
        self.sky = SKY_HORIZON * (1 - mix) + SKY_ZENITH * mix

    def render(self, parts: app.PartSet, num_objects: int, road: Road, ego_to_global: np.ndarray,
               sun_ego: np.ndarray, depth_max_m: float, rng: np.random.Generator, exposure: float = 1.0) -> CameraFrame:
        h, w = self.spec.image_hw
        dirs = self.dirs_ego
        zbuf = raycast.ray_ground_distance(self.origin, dirs)
        zbuf[zbuf > 2000.0] = np.inf
        part_id = np.full((h, w), -1, dtype=np.int64)
        visible = np.zeros(num_objects, dtype=np.int64)
        total = np.zeros(num_objects, dtype=np.int64)

        if len(parts):
            corners = geometry.box_corners(parts.center, 2 * parts.half, parts.yaw)
            corners_cam = corners @ self.ego_to_cam[:3, :3].T + self.ego_to_cam[:3, 3]
            rects = raycast.camera_rects(corners_cam, self.spec.intrinsics, w, h)
            # Pixels each object covers ignoring occluders (for visibility): union of its parts'
            # hits, accumulated in the union of its parts' rectangles.
            owners = parts.owner
            coverage: dict[int, tuple[np.ndarray, int, int]] = {}
            for owner in np.unique(owners[owners >= 0]):
                r = rects[owners == owner]
                r = r[(r[:, 0] < r[:, 1]) & (r[:, 2] < r[:, 3])]
                if len(r):
                    u0, v0 = r[:, 0].min(), r[:, 2].min()
                    coverage[int(owner)] = (np.zeros((r[:, 3].max() - v0, r[:, 1].max() - u0), dtype=bool), u0, v0)
            for i in range(len(parts)):
                u0, u1, v0, v1 = rects[i]
                if u0 >= u1 or v0 >= v1:
                    continue
                t = raycast.ray_box_distance(self.origin, dirs[v0:v1, u0:u1], parts.center[i], parts.half[i], parts.yaw[i])
                hit = np.isfinite(t)
                if not hit.any():
                    continue
                zb = zbuf[v0:v1, u0:u1]
                closer = t < zb
                zb[closer] = t[closer]
                part_id[v0:v1, u0:u1][closer] = i
                owner = int(owners[i])
                if owner >= 0:
                    cov, cu, cv = coverage[owner]
                    cov[v0 - cv:v1 - cv, u0 - cu:u1 - cu] |= hit
            for owner, (cov, _, _) in coverage.items():
                total[owner] = int(np.count_nonzero(cov))

        owner_map = np.where(part_id >= 0, parts.owner[np.maximum(part_id, 0)] if len(parts) else -1, -1)
        if num_objects:
            visible = np.bincount(owner_map[owner_map >= 0], minlength=num_objects)[:num_objects]

        rgb = self.sky.copy()
        surface = np.isfinite(zbuf)

        points = self.origin + np.where(surface, zbuf, 0.0)[..., None] * dirs  # ego frame (sky: origin)
        is_part = part_id >= 0
        if is_part.any():
            idx = part_id[is_part]
            p = points[is_part]
            q = raycast.local_coordinates(p, parts.center[idx], parts.yaw[idx])
            normals, axis = raycast.face_normals(q, parts.half[idx], parts.yaw[idx])
            albedo = part_albedo(parts.texture[idx], q, parts.half[idx], axis, parts.color1[idx], parts.color2[idx])
            shade = 0.45 + 0.6 * np.clip(normals @ sun_ego, 0.0, None) + 0.08 * (normals[:, 2] > 0.5)
            rgb[is_part] = albedo * shade[:, None]
        is_ground = surface & ~is_part
        if is_ground.any():
            pg = points[is_ground]
            g_xy = pg[:, :2] @ ego_to_global[:2, :2].T + ego_to_global[:2, 3]
            s_road, d_road = road.to_road(g_xy)
            albedo, _ = ground_appearance(s_road, d_road)
            rgb[is_ground] = albedo * (0.45 + 0.6 * max(sun_ego[2], 0.0))
        # Aerial perspective: far surfaces fade towards the horizon colour.
        dist = np.where(surface, zbuf * self.ray_len, 0.0)
        fade = (1.0 - np.exp(-dist / HAZE_DISTANCE_M))[..., None]  # 0 for sky pixels
        rgb = (rgb * (1 - fade) + SKY_HORIZON * fade) * exposure
        rgb += 0.012 * rng.standard_normal(rgb.shape, dtype=np.float32)
        image = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

        depth = np.where(surface & (zbuf <= depth_max_m), zbuf, 0.0).astype(np.float32)
        return CameraFrame(rgb=image, owner=owner_map, depth_m=depth, visible_px=visible, total_px=total)


# ---- LiDAR --------------------------------------------------------------------------------------
class LidarScanner:
    """Spinning LiDAR with ``lidar_beams`` evenly spaced beams and ``lidar_azimuth_steps`` columns.

    scan() returns (N, 5) float32 x, y, z (m, sensor frame), intensity (0-255), ring (beam index).
    Each sweep is an instantaneous snapshot at its timestamp (no rolling-shutter motion).
    """

    def __init__(self, spec: SensorSpec, config: SynthConfig):
        self.spec = spec
        self.config = config
        self.elevations = np.deg2rad(np.linspace(*config.lidar_elevation_deg, config.lidar_beams))
        az = 2 * np.pi * np.arange(config.lidar_azimuth_steps) / config.lidar_azimuth_steps
        e = self.elevations[:, None]
        d_sensor = np.stack(np.broadcast_arrays(np.cos(e) * np.cos(az), np.cos(e) * np.sin(az), np.sin(e)), axis=-1)
        self.dirs_ego = d_sensor @ spec.to_ego[:3, :3].T  # (B, A, 3) unit
        self.origin = spec.to_ego[:3, 3].copy()
        self.ego_to_sensor = geometry.invert_transform(spec.to_ego)

    def scan(self, parts: app.PartSet, road: Road, ego_to_global: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        b, a = self.dirs_ego.shape[:2]
        dirs = self.dirs_ego
        zbuf = raycast.ray_ground_distance(self.origin, dirs)
        ground_t = zbuf.copy()
        part_id = np.full((b, a), -1, dtype=np.int64)
        if len(parts):
            rot = self.ego_to_sensor[:3, :3]
            c_s = parts.center @ rot.T + self.ego_to_sensor[:3, 3]
            yaw_s = parts.yaw + np.arctan2(rot[1, 0], rot[0, 0])
            windows = raycast.spherical_windows(c_s, parts.half, yaw_s, self.elevations, a)
            for i, (r0, r1, cols) in enumerate(windows):
                if r0 >= r1:
                    continue
                cols_idx = slice(None) if cols is None else cols
                sub = dirs[r0:r1, cols_idx]
                t = raycast.ray_box_distance(self.origin, sub, parts.center[i], parts.half[i], parts.yaw[i])
                cur = zbuf[r0:r1, cols_idx]
                closer = t < cur
                if closer.any():
                    zbuf[r0:r1, cols_idx] = np.where(closer, t, cur)
                    part_id[r0:r1, cols_idx] = np.where(closer, i, part_id[r0:r1, cols_idx])
        valid = (zbuf <= cfg.lidar_max_range_m) & (rng.random((b, a)) >= cfg.lidar_dropout)
        rings = np.broadcast_to(np.arange(b)[:, None], (b, a))
        out_xyz, out_int, out_ring = [], [], []

        on_part = valid & (part_id >= 0)
        if on_part.any():
            idx = part_id[on_part]
            d = dirs[on_part]
            p = self.origin + zbuf[on_part][:, None] * d
            q = raycast.local_coordinates(p, parts.center[idx], parts.yaw[idx])
            normals, _ = raycast.face_normals(q, parts.half[idx], parts.yaw[idx])
            # Keep each return strictly inside the part it hit (so inside its annotation box),
            # with range noise bounded by that margin.
            q, margin = raycast.nudge_inside(q, parts.half[idx])
            p = raycast.from_local(q, parts.center[idx], parts.yaw[idx])
            noise = np.clip(rng.normal(0.0, cfg.lidar_range_noise_m, len(p)), -0.9 * margin, 0.9 * margin)
            p = p + noise[:, None] * d
            cos_inc = np.abs(np.sum(normals * d, axis=1))
            out_xyz.append(p)
            out_int.append(255.0 * parts.reflectivity[idx] * (0.25 + 0.75 * cos_inc))
            out_ring.append(rings[on_part])
        on_ground = valid & (part_id < 0) & np.isfinite(ground_t)
        if on_ground.any():
            d = dirs[on_ground]
            t = zbuf[on_ground] + rng.normal(0.0, cfg.lidar_range_noise_m, int(on_ground.sum()))
            p = self.origin + t[:, None] * d
            # Ground returns stay just below z = 0, so they never count as inside a box (boxes
            # start at z = 0).
            p[:, 2] = -np.abs(p[:, 2]) - 1e-3
            g_xy = p[:, :2] @ ego_to_global[:2, :2].T + ego_to_global[:2, 3]
            _, refl = ground_appearance(*road.to_road(g_xy))
            cos_inc = np.abs(d[:, 2])
            out_xyz.append(p)
            out_int.append(255.0 * refl * (0.25 + 0.75 * cos_inc))
            out_ring.append(rings[on_ground])
        if not out_xyz:
            return np.zeros((0, 5), dtype=np.float32)
        xyz = np.concatenate(out_xyz)
        xyz_s = xyz @ self.ego_to_sensor[:3, :3].T + self.ego_to_sensor[:3, 3]
        pts = np.concatenate([xyz_s, np.concatenate(out_int)[:, None], np.concatenate(out_ring)[:, None]], axis=1)
        pts[:, 3] = np.clip(np.round(pts[:, 3]), 0, 255)
        return pts.astype(np.float32)


# ---- radar --------------------------------------------------------------------------------------
#: Field names, numpy dtypes and PCD SIZE/TYPE of the nuScenes radar point format.
RADAR_FIELDS: tuple[tuple[str, str], ...] = (
    ("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("dyn_prop", "i1"), ("id", "<i2"), ("rcs", "<f4"),
    ("vx", "<f4"), ("vy", "<f4"), ("vx_comp", "<f4"), ("vy_comp", "<f4"), ("is_quality_valid", "i1"),
    ("ambig_state", "i1"), ("x_rms", "i1"), ("y_rms", "i1"), ("invalid_state", "i1"), ("pdh0", "i1"),
    ("vx_rms", "i1"), ("vy_rms", "i1"),
)


@dataclass(frozen=True)
class RadarScene:
    """What a radar needs about the scene at one instant, in the ego frame.

    object_center / object_size / object_yaw: (N, 3) / (N, 3) / (N,) object boxes; object_velocity:
    (N, 2) absolute velocity (m/s, ego-frame axes); object_class: N class names; ego_velocity: (3,)
    ego linear velocity (ego-frame axes); ego_yaw_rate: rad/s.
    """

    object_center: np.ndarray
    object_size: np.ndarray
    object_yaw: np.ndarray
    object_velocity: np.ndarray
    object_class: list[str]
    ego_velocity: np.ndarray
    ego_yaw_rate: float


def rays_vs_parts(origin: np.ndarray, dirs: np.ndarray, parts: app.PartSet) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of a few rays (n, 3) against all parts at once: (t (n,), part index (n,), -1 = none)."""
    n = len(dirs)
    if len(parts) == 0 or n == 0:
        return np.full(n, np.inf), np.full(n, -1)
    t_all = raycast.rays_boxes_distance(origin, dirs, parts.center, parts.half, parts.yaw)  # (n, P)
    best = np.argmin(t_all, axis=1)
    t = t_all[np.arange(n), best]
    return t, np.where(np.isfinite(t), best, -1)


class RadarSensor:
    """A 2D automotive radar: sparse returns on objects (occlusion-checked by a ray to each return),
    returns from buildings and poles, ground clutter and a few invalid ghosts; z = 0 in the sensor
    frame as in nuScenes."""

    def __init__(self, spec: SensorSpec):
        self.spec = spec
        self.origin = spec.to_ego[:3, 3].copy()
        self.rot = spec.to_ego[:3, :3]
        self.yaw = float(np.arctan2(self.rot[1, 0], self.rot[0, 0]))

    def _in_fov(self, p_ego: np.ndarray) -> np.ndarray:
        v = p_ego[:, :2] - self.origin[:2]
        az = np.arctan2(v[:, 1], v[:, 0]) - self.yaw
        az = (az + np.pi) % (2 * np.pi) - np.pi
        r = np.hypot(v[:, 0], v[:, 1])
        return (np.abs(az) <= RADAR_HALF_FOV_RAD) & (r <= RADAR_MAX_RANGE_M) & (r > 0.5)

    def _horizontal_dirs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        az = self.yaw + rng.uniform(-RADAR_HALF_FOV_RAD, RADAR_HALF_FOV_RAD, n)
        return np.stack([np.cos(az), np.sin(az), np.zeros(n)], axis=1)

    def scan(self, parts: app.PartSet, scene: RadarScene, rng: np.random.Generator) -> np.ndarray:
        """Returns a structured array with RADAR_FIELDS (sensor frame)."""
        pos, vel, rcs, moving, invalid = [], [], [], [], []
        n_obj = len(scene.object_center)
        # 1) Objects: Poisson-many returns, each aimed at a random point of the box; kept only if
        #    the ray's first hit is a part of that object (occlusion).
        if n_obj:
            fov = self._in_fov(scene.object_center)
            r = np.hypot(*(scene.object_center[:, :2] - self.origin[:2]).T)
            lam = np.array([app.RADAR_RETURNS[c] for c in scene.object_class]) * np.clip(1.0 - r / 150.0, 0.0, None)
            k = np.where(fov, rng.poisson(lam), 0)
            owner = np.repeat(np.arange(n_obj), k)
            if len(owner):
                local = rng.uniform(-0.45, 0.45, (len(owner), 3)) * scene.object_size[owner]
                c, s = np.cos(scene.object_yaw[owner]), np.sin(scene.object_yaw[owner])
                target = scene.object_center[owner] + np.stack(
                    [c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], axis=1)
                dirs = target - self.origin
                t, pid = rays_vs_parts(self.origin, dirs, parts)
                ok = (pid >= 0) & (parts.owner[np.maximum(pid, 0)] == owner)
                if ok.any():
                    pid_ok = pid[ok]
                    p = self.origin + t[ok][:, None] * dirs[ok]
                    q = raycast.local_coordinates(p, parts.center[pid_ok], parts.yaw[pid_ok])
                    q, _ = raycast.nudge_inside(q, parts.half[pid_ok], 0.05)
                    pos.append(raycast.from_local(q, parts.center[pid_ok], parts.yaw[pid_ok]))
                    vel.append(scene.object_velocity[owner[ok]])
                    rcs.append(np.array([app.RADAR_RCS_DBSM[scene.object_class[o]] for o in owner[ok]]))
                    moving.append(np.ones(int(ok.sum()), dtype=bool))
                    invalid.append(np.zeros(int(ok.sum()), dtype=np.int64))
        # 2) Static structure (buildings, poles) hit by horizontal rays, else ground clutter.
        n_bg = int(rng.poisson(14))
        if n_bg:
            dirs = self._horizontal_dirs(n_bg, rng)
            t, pid = rays_vs_parts(self.origin, dirs, parts)
            hit = (pid >= 0) & (t <= RADAR_MAX_RANGE_M)
            on_object = hit & (parts.owner[np.maximum(pid, 0)] >= 0)
            tall = parts.half[np.maximum(pid, 0), 2] > 3.6
            dist = np.where(hit, t, rng.uniform(3.0, 80.0, n_bg))
            r_cs = np.where(hit, np.where(tall, app.RADAR_RCS_DBSM["building"], app.RADAR_RCS_DBSM["pole"]),
                            rng.uniform(-12.0, 2.0, n_bg))
            keep = ~on_object
            pos.append((self.origin + dist[:, None] * dirs)[keep])
            vel.append(np.zeros((int(keep.sum()), 2)))
            rcs.append(r_cs[keep])
            moving.append(np.zeros(int(keep.sum()), dtype=bool))
            invalid.append(np.zeros(int(keep.sum()), dtype=np.int64))
        # 3) Invalid ghosts (dropped by nuscenes-devkit's default radar filters).
        n_ghost = int(rng.poisson(3))
        if n_ghost:
            dirs = self._horizontal_dirs(n_ghost, rng)
            pos.append(self.origin + rng.uniform(2.0, 90.0, n_ghost)[:, None] * dirs)
            vel.append(np.zeros((n_ghost, 2)))
            rcs.append(rng.uniform(-15.0, 0.0, n_ghost))
            moving.append(np.zeros(n_ghost, dtype=bool))
            invalid.append(rng.choice(np.array([1, 2, 6]), n_ghost))
        out = np.zeros(0, dtype=[(n, t) for n, t in RADAR_FIELDS])
        if not pos:
            return out
        pos, vel, rcs = np.concatenate(pos), np.concatenate(vel), np.concatenate(rcs)
        moving, invalid = np.concatenate(moving), np.concatenate(invalid)
        # Static returns must not fall inside (or right next to) an object box.
        keep = moving | ~_inside_any_box(pos, scene, margin=0.5)
        return self._measure(pos[keep], vel[keep], rcs[keep], moving[keep], invalid[keep], scene, rng)

    def _measure(self, p_ego: np.ndarray, v_obj: np.ndarray, rcs: np.ndarray, moving: np.ndarray,
                 invalid: np.ndarray, scene: RadarScene, rng: np.random.Generator) -> np.ndarray:
        """Detections at ego-frame points (n, 3) with range/azimuth/velocity noise; velocities are
        radial (Doppler) vectors in sensor axes, raw and ego-motion compensated."""
        n = len(p_ego)
        out = np.zeros(n, dtype=[(name, t) for name, t in RADAR_FIELDS])
        if n == 0:
            return out
        rel = p_ego[:, :2] - self.origin[:2]
        rng_m = np.hypot(rel[:, 0], rel[:, 1]) + rng.normal(0.0, 0.12, n)
        az = np.arctan2(rel[:, 1], rel[:, 0]) + rng.normal(0.0, np.deg2rad(0.4), n)
        u = np.stack([np.cos(az), np.sin(az)], axis=1)
        p_meas = self.origin[:2] + rng_m[:, None] * u
        # Velocity of the sensor itself: ego velocity plus rotation about the ego origin.
        w = scene.ego_yaw_rate
        v_sensor = scene.ego_velocity[:2] + w * np.array([-self.origin[1], self.origin[0]])
        v_noise = rng.normal(0.0, 0.1, n)
        v_r_comp = np.sum(v_obj * u, axis=1) + v_noise
        v_r_raw = np.sum((v_obj - v_sensor) * u, axis=1) + v_noise
        rot2 = self.rot[:2, :2].T  # ego -> sensor axes
        p_s = (p_meas - self.origin[:2]) @ rot2.T
        u_s = u @ rot2.T
        speed = np.hypot(v_obj[:, 0], v_obj[:, 1])
        dyn = np.where(moving & (speed > 0.5), np.where(v_r_comp < -0.5, 2, 0), 1)
        out["x"], out["y"], out["z"] = p_s[:, 0], p_s[:, 1], 0.0
        out["dyn_prop"] = dyn
        out["id"] = np.arange(n)
        out["rcs"] = rcs + rng.normal(0.0, 2.0, n)
        out["vx"], out["vy"] = v_r_raw * u_s[:, 0], v_r_raw * u_s[:, 1]
        out["vx_comp"], out["vy_comp"] = v_r_comp * u_s[:, 0], v_r_comp * u_s[:, 1]
        out["is_quality_valid"] = 1
        out["ambig_state"] = 3
        out["x_rms"], out["y_rms"] = 19, 19
        out["invalid_state"] = invalid
        out["pdh0"] = 1
        out["vx_rms"], out["vy_rms"] = 17, 3
        return out


def _inside_any_box(p: np.ndarray, scene: RadarScene, margin: float) -> np.ndarray:
    """(n,) whether points p (n, 3) (ego frame) lie within ``margin`` of any object's footprint."""
    if len(scene.object_center) == 0 or len(p) == 0:
        return np.zeros(len(p), dtype=bool)
    d = p[:, None, :2] - scene.object_center[None, :, :2]  # (n, N, 2)
    c, s = np.cos(scene.object_yaw), np.sin(scene.object_yaw)
    qx = c * d[..., 0] + s * d[..., 1]
    qy = -s * d[..., 0] + c * d[..., 1]
    inside = (np.abs(qx) <= scene.object_size[:, 0] / 2 + margin) & (np.abs(qy) <= scene.object_size[:, 1] / 2 + margin)
    return inside.any(axis=1)
