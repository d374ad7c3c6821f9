"""The procedural world: a road, the ego's motion along it, and objects of the 10 detection classes.

Everything here is analytic and cheap (no rendering): a scene is a :class:`Road` (straight or a
gentle circular arc), an ego that drives along one lane at constant speed, and objects that each
move along a *track* (a lane, the parking strip, the bike path or a sidewalk lane) at that
track's constant speed. Objects sharing a track share its speed, so gaps checked once at
placement hold for the whole scene: nothing ever collides.

Frames: global frame x/y on the ground plane (z = 0 is the ground), z up. Road coordinates are
(s, d): arc length along the road centre line (m) and lateral offset to the left of it (m).
Traffic drives on the right: lanes with d < 0 go towards +s, lanes with d > 0 towards -s.

One file on purpose (issue 14): it is one procedural world; the road, its tracks and the object
placement share the invariant above (no collisions), which holds only for all of them together.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from x3kd_core.data.synthetic.config import SynthConfig
from x3kd_core.structures import DETECTION_CLASSES

# ---- Cross-section of the road (lateral offsets d in metres, left of the centre line) ----------
LANE_WIDTH_M = 3.5
LANE_CENTERS_M = (-5.25, -1.75, 1.75, 5.25)  # two lanes each way; d < 0 drives towards +s
ROAD_HALF_WIDTH_M = 7.0  # outer edge line of the driving lanes
PARKING_CENTER_M = 8.5  # parking strip 7.0 .. 10.0
CURB_M = (10.0, 10.2)
SIDEWALK_OUTER_M = 14.5
BUILDING_START_M = 16.5
STAND_D_M = 10.7  # standing pedestrians and parked cycles: the curb side of the sidewalk
POLE_D_M = 14.3  # street lights at the outer edge of the sidewalk
#: Parking is allowed on alternating stretches (m): occupied for PARKING_ZONE_M, then free, so
#: that the sidewalk behind is not one continuous wall of parked vehicles.
PARKING_PERIOD_M, PARKING_ZONE_M = 60.0, 30.0
EGO_LANE_D_M = -1.75

#: Ego vehicle extent about its origin (rear axle on the ground), metres along ego x.
EGO_REAR_M, EGO_FRONT_M = -1.1, 3.9

#: nuScenes category for each detection class (category_to_detection_name maps it back).
CATEGORY_OF_CLASS: dict[str, str] = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "construction_vehicle": "vehicle.construction",
    "bus": "vehicle.bus.rigid",
    "trailer": "vehicle.trailer",
    "barrier": "movable_object.barrier",
    "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle",
    "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone",
}

#: Mean (length, width, height) per class in metres: nuScenes train-set averages (its w, l, h).
MEAN_SIZE_LWH: dict[str, tuple[float, float, float]] = {
    "car": (4.63, 1.96, 1.74),
    "truck": (6.94, 2.52, 2.84),
    "construction_vehicle": (6.37, 2.85, 3.19),
    "bus": (11.19, 2.94, 3.47),
    "trailer": (12.01, 2.90, 3.87),
    # A barrier's heading is across its long side (nuScenes convention), so length < width.
    "barrier": (0.50, 2.53, 0.98),
    "motorcycle": (2.11, 0.77, 1.47),
    "bicycle": (1.70, 0.60, 1.28),
    "pedestrian": (0.73, 0.67, 1.77),
    "traffic_cone": (0.41, 0.41, 1.07),
}

#: Widths above this would not fit a lane next to the parking strip.
MAX_WIDTH_M = 3.2

ATTRIBUTES: tuple[str, ...] = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "pedestrian.moving",
)

VEHICLE_CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer")
CYCLE_CLASSES = ("motorcycle", "bicycle")


@dataclass(frozen=True)
class Road:
    """Centre line of the road: starts at ``origin_xy`` with ``heading0`` and constant ``curvature``.

    curvature (1/m): > 0 turns left, 0 is straight. Keep |curvature| <= 1/400 so that chords over
    one second stay within a few cm of the arc.
    """

    origin_xy: tuple[float, float]
    heading0: float
    curvature: float

    def heading(self, s: np.ndarray) -> np.ndarray:
        """Road heading (rad) at arc length s (m)."""
        return self.heading0 + self.curvature * np.asarray(s, dtype=np.float64)

    def to_global(self, s, d) -> np.ndarray:
        """Road coordinates (s, d) (m, broadcastable) -> global xy (..., 2)."""
        s = np.asarray(s, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        th = self.heading(s)
        x0, y0 = self.origin_xy
        if self.curvature == 0.0:
            c0, s0 = np.cos(self.heading0), np.sin(self.heading0)
            x = x0 + s * c0 - d * s0
            y = y0 + s * s0 + d * c0
        else:
            r = 1.0 / self.curvature
            cx = x0 - r * np.sin(self.heading0)
            cy = y0 + r * np.cos(self.heading0)
            # Point at offset d lies at signed radius (r - d) from the centre, opposite the left normal.
            x = cx + (r - d) * np.sin(th)
            y = cy - (r - d) * np.cos(th)
        return np.stack(np.broadcast_arrays(x, y), axis=-1)

    def to_road(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global xy (..., 2) -> road coordinates (s, d), the inverse of :meth:`to_global`."""
        xy = np.asarray(xy, dtype=np.float64)
        x0, y0 = self.origin_xy
        dx = xy[..., 0] - x0
        dy = xy[..., 1] - y0
        if self.curvature == 0.0:
            c0, s0 = np.cos(self.heading0), np.sin(self.heading0)
            return dx * c0 + dy * s0, -dx * s0 + dy * c0
        r = 1.0 / self.curvature
        cx = x0 - r * np.sin(self.heading0)
        cy = y0 + r * np.cos(self.heading0)
        px, py = xy[..., 0] - cx, xy[..., 1] - cy
        dist = np.hypot(px, py)
        d = r - np.sign(r) * dist
        # Angle from the start radius vector (origin - centre) to (p - centre), CCW positive.
        ax, ay = x0 - cx, y0 - cy
        phi = np.arctan2(ax * py - ay * px, ax * px + ay * py)
        return r * phi, d


@dataclass(frozen=True)
class Track:
    """A lateral slot objects move along at a common speed.

    kind: "lane", "parking", "bike", "walk" or "stand". d_m: lateral offset (m). direction: +1
    moves towards +s, -1 towards -s. speed_mps: ds/dt magnitude (m/s); 0 for static tracks.
    """

    name: str
    kind: str
    d_m: float
    direction: int
    speed_mps: float


@dataclass(frozen=True)
class WorldObject:
    """One annotated object for the whole scene.

    Fields:
        class_name: detection class; category: nuScenes category name.
        size_lwh: (3,) length, width, height (m).
        track: index into SceneWorld.tracks.
        s0_m: arc length of the centre at t = 0 (m).
        yaw_offset: heading relative to the direction of travel along the track (rad); 0 for
            anything that moves.
        attribute: nuScenes attribute name, or "" (barriers, cones).
        colors: (K, 3) float RGB in [0, 1]: the appearance palette drawn for this object.
        variant: small integer choosing a sub-shape (e.g. bus with or without a second window band).
    """

    class_name: str
    category: str
    size_lwh: np.ndarray
    track: int
    s0_m: float
    yaw_offset: float
    attribute: str
    colors: np.ndarray
    variant: int = 0

    @property
    def label(self) -> int:
        return DETECTION_CLASSES.index(self.class_name)


@dataclass(frozen=True)
class BackgroundBox:
    """An unannotated box in the global frame (building block or pole), static."""

    kind: str  # "building" | "pole"
    center_xyz: np.ndarray
    size_lwh: np.ndarray
    yaw: float
    color: np.ndarray


@dataclass
class SceneWorld:
    """One scene: road, ego, objects, background, lighting. Times are seconds from the first keyframe."""

    index: int
    name: str
    road: Road
    ego_speed_mps: float  # ds/dt of the ego along its lane
    tracks: list[Track]
    objects: list[WorldObject]
    background: list[BackgroundBox]
    sun_dir_global: np.ndarray  # (3,) unit vector towards the sun
    keyframe_times_s: np.ndarray  # (K,)
    sweep_times_s: np.ndarray  # (K, S): non-keyframe sweep times preceding each keyframe
    annotated: np.ndarray = field(default=None)  # (num_objects, K) bool: annotated at that keyframe
    exposure: float = 1.0  # camera brightness factor of this scene (lighting variety)

    # -- ego ----------------------------------------------------------------------------------
    def ego_pose(self, t: float) -> np.ndarray:
        """(4, 4) ego -> global transform at time t (s). The ego frame sits on the ground (z = 0)."""
        s = self.ego_speed_mps * t
        xy = self.road.to_global(s, EGO_LANE_D_M)
        yaw = float(self.road.heading(s))
        pose = np.eye(4)
        c, sn = np.cos(yaw), np.sin(yaw)
        pose[:2, :2] = [[c, -sn], [sn, c]]
        pose[:2, 3] = xy
        return pose

    def ego_velocity(self, t: float) -> tuple[np.ndarray, float]:
        """Ego linear velocity in the global frame (3,) (m/s) and yaw rate (rad/s) at time t."""
        s = self.ego_speed_mps * t
        yaw = float(self.road.heading(s))
        speed = self.ego_speed_mps * (1.0 - self.road.curvature * EGO_LANE_D_M)
        return np.array([np.cos(yaw), np.sin(yaw), 0.0]) * speed, self.road.curvature * self.ego_speed_mps

    # -- objects ------------------------------------------------------------------------------
    def object_states(self, t: float) -> "ObjectStates":
        """All objects at time t (s), in the global frame."""
        n = len(self.objects)
        if n == 0:
            return ObjectStates(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 2)))
        tracks = self.tracks
        d = np.array([tracks[o.track].d_m for o in self.objects])
        direction = np.array([tracks[o.track].direction for o in self.objects], dtype=np.float64)
        u = np.array([tracks[o.track].speed_mps for o in self.objects])
        s = np.array([o.s0_m for o in self.objects]) + direction * u * t
        size = np.stack([o.size_lwh for o in self.objects])
        xy = self.road.to_global(s, d)
        heading = self.road.heading(s)
        travel = heading + np.where(direction > 0, 0.0, np.pi)
        yaw = travel + np.array([o.yaw_offset for o in self.objects])
        yaw = (yaw + np.pi) % (2 * np.pi) - np.pi
        # Speed along an offset track on an arc is ds/dt * (1 - curvature * d).
        speed = u * (1.0 - self.road.curvature * d)
        vel = np.stack([np.cos(travel), np.sin(travel)], axis=-1) * speed[:, None]
        center = np.concatenate([xy, size[:, 2:3] / 2.0], axis=1)
        return ObjectStates(center=center, size_lwh=size, yaw=yaw, velocity=vel)


@dataclass(frozen=True)
class ObjectStates:
    """Objects at one instant, global frame: center (N, 3) m, size_lwh (N, 3) m, yaw (N,) rad,
    velocity (N, 2) m/s."""

    center: np.ndarray
    size_lwh: np.ndarray
    yaw: np.ndarray
    velocity: np.ndarray


def scene_rng(config: SynthConfig, scene_index: int, stream: str) -> np.random.Generator:
    """Independent, reproducible random stream per (seed, scene, purpose)."""
    digest = hashlib.md5(stream.encode("utf-8")).digest()
    key = [config.seed & 0xFFFFFFFF, scene_index, int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")]
    return np.random.default_rng(np.random.SeedSequence(key))


# ---- appearance palettes (class-typical colours, RGB in [0, 1]) --------------------------------
_CAR_COLORS = np.array([
    [0.85, 0.85, 0.86], [0.08, 0.08, 0.09], [0.55, 0.57, 0.60], [0.62, 0.08, 0.07],
    [0.10, 0.20, 0.50], [0.30, 0.32, 0.35], [0.75, 0.72, 0.62], [0.15, 0.35, 0.20],
])
_TRUCK_CAB_COLORS = np.array([[0.90, 0.90, 0.90], [0.12, 0.30, 0.65], [0.70, 0.10, 0.08], [0.20, 0.45, 0.25]])
_BUS_COLORS = np.array([[0.80, 0.12, 0.10], [0.10, 0.35, 0.70], [0.92, 0.92, 0.90], [0.15, 0.55, 0.35]])
_CLOTHES = np.array([
    [0.10, 0.10, 0.12], [0.20, 0.25, 0.45], [0.60, 0.10, 0.10], [0.85, 0.85, 0.80],
    [0.35, 0.30, 0.25], [0.15, 0.40, 0.20], [0.85, 0.60, 0.15], [0.45, 0.45, 0.50],
])
_SKIN = np.array([[0.94, 0.78, 0.66], [0.78, 0.57, 0.42], [0.48, 0.32, 0.22], [0.88, 0.70, 0.55]])
_BUILDING_COLORS = np.array([[0.62, 0.35, 0.28], [0.70, 0.68, 0.64], [0.82, 0.76, 0.62], [0.50, 0.52, 0.55], [0.75, 0.62, 0.50]])


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float = 0.04) -> np.ndarray:
    c = palette[rng.integers(len(palette))] + rng.normal(0.0, jitter, 3)
    return np.clip(c, 0.0, 1.0)


def _object_colors(class_name: str, rng: np.random.Generator) -> np.ndarray:
    """(K, 3) palette per class; the meaning of each row is fixed by appearance.py."""
    if class_name == "car":
        return np.stack([_pick(rng, _CAR_COLORS)])
    if class_name == "truck":
        return np.stack([_pick(rng, _TRUCK_CAB_COLORS), _pick(rng, np.array([[0.88, 0.88, 0.86], [0.60, 0.62, 0.64]]))])
    if class_name == "construction_vehicle":
        return np.stack([_pick(rng, np.array([[0.95, 0.70, 0.05], [0.95, 0.50, 0.05]]), 0.03)])
    if class_name == "bus":
        return np.stack([_pick(rng, _BUS_COLORS)])
    if class_name == "trailer":
        return np.stack([_pick(rng, np.array([[0.80, 0.80, 0.78], [0.55, 0.56, 0.58], [0.25, 0.35, 0.55]]))])
    if class_name == "barrier":
        return np.stack([_pick(rng, np.array([[0.92, 0.92, 0.90], [0.78, 0.76, 0.70]]), 0.02)])
    if class_name in ("motorcycle", "bicycle"):
        frame = _pick(rng, np.array([[0.08, 0.08, 0.08], [0.60, 0.08, 0.06], [0.10, 0.20, 0.55], [0.70, 0.70, 0.72]]))
        return np.stack([frame, _pick(rng, _CLOTHES), _pick(rng, _SKIN, 0.02), _pick(rng, _CLOTHES)])
    if class_name == "pedestrian":
        return np.stack([_pick(rng, _CLOTHES), _pick(rng, _CLOTHES), _pick(rng, _SKIN, 0.02)])
    if class_name == "traffic_cone":
        return np.stack([_pick(rng, np.array([[0.98, 0.40, 0.05]]), 0.03)])
    raise ValueError(class_name)


def _sample_size(class_name: str, rng: np.random.Generator, with_rider: bool) -> np.ndarray:
    """Class mean size times a shared scale (so apparent size does not reveal depth) and small
    independent per-axis jitter."""
    mean = np.array(MEAN_SIZE_LWH[class_name], dtype=np.float64)
    if class_name == "bicycle" and with_rider:
        mean = mean * np.array([1.0, 1.0, 1.35])
    if class_name == "motorcycle" and not with_rider:
        mean = mean * np.array([1.0, 1.0, 0.8])
    scale = rng.uniform(0.85, 1.15)
    size = mean * scale * rng.uniform(0.94, 1.06, 3)
    size[1] = min(size[1], MAX_WIDTH_M)
    return size


def _build_tracks(rng: np.random.Generator, ego_speed: float) -> list[Track]:
    """Lanes (with per-lane speeds), parking strips, bike paths and sidewalk lanes on both sides."""
    tracks: list[Track] = []
    # Outer lane in the ego's direction: sometimes closed (works zone / queue), speed 0.
    closed = rng.random() < 0.35
    tracks.append(Track("lane_r_outer", "lane", LANE_CENTERS_M[0], +1, 0.0 if closed else float(rng.uniform(4.0, 13.0))))
    tracks.append(Track("lane_r_ego", "lane", LANE_CENTERS_M[1], +1, ego_speed))
    for name, d in (("lane_l_inner", LANE_CENTERS_M[2]), ("lane_l_outer", LANE_CENTERS_M[3])):
        speed = 0.0 if rng.random() < 0.2 else float(rng.uniform(3.0, 13.0))
        tracks.append(Track(name, "lane", d, -1, speed))
    for side, sign in (("r", -1.0), ("l", 1.0)):
        direction = 1 if sign < 0 else -1
        tracks.append(Track(f"parking_{side}", "parking", sign * PARKING_CENTER_M, direction, 0.0))
        tracks.append(Track(f"stand_{side}", "stand", sign * STAND_D_M, direction, 0.0))
        tracks.append(Track(f"bike_{side}", "bike", sign * 11.5, direction, float(rng.uniform(3.0, 6.0))))
        tracks.append(Track(f"walk_{side}_a", "walk", sign * 12.4, +1, float(rng.uniform(1.0, 1.6))))
        tracks.append(Track(f"walk_{side}_b", "walk", sign * 13.3, -1, float(rng.uniform(1.0, 1.6))))
    return tracks


def _allowed_tracks(class_name: str, tracks: list[Track]) -> list[int]:
    """Track indices a class may be placed on."""
    out = []
    for i, tr in enumerate(tracks):
        closed_lane = tr.kind == "lane" and tr.speed_mps == 0.0 and tr.name == "lane_r_outer"
        if class_name in ("car", "truck", "bus", "trailer"):
            ok = tr.kind == "lane" or (tr.kind == "parking" and class_name != "bus")
        elif class_name == "construction_vehicle":
            ok = closed_lane or tr.kind == "parking"
        elif class_name in ("barrier", "traffic_cone"):
            ok = closed_lane or tr.kind == "parking"
        elif class_name == "motorcycle":
            ok = (tr.kind == "lane" and tr.speed_mps > 0) or tr.kind in ("parking", "stand")
        elif class_name == "bicycle":
            ok = tr.kind in ("bike", "stand")
        elif class_name == "pedestrian":
            ok = tr.kind in ("walk", "stand")
        else:
            raise ValueError(class_name)
        if ok:
            out.append(i)
    return out


def _attribute(class_name: str, track: Track) -> tuple[str, bool]:
    """(attribute name, with_rider) for a class placed on a track."""
    if class_name in VEHICLE_CLASSES:
        if track.kind == "parking":
            return "vehicle.parked", False
        return ("vehicle.moving" if track.speed_mps > 0.5 else "vehicle.stopped"), False
    if class_name in CYCLE_CLASSES:
        rider = track.kind in ("lane", "bike")
        return ("cycle.with_rider" if rider else "cycle.without_rider"), rider
    if class_name == "pedestrian":
        return ("pedestrian.moving" if track.kind == "walk" else "pedestrian.standing"), False
    return "", False


def _yaw_offset(class_name: str, track: Track, rng: np.random.Generator) -> float:
    if track.speed_mps > 0.0:
        return 0.0
    if class_name == "barrier":
        return float(np.pi / 2 + rng.normal(0.0, 0.05))
    if class_name in ("traffic_cone",) or (class_name == "pedestrian" and track.kind == "stand"):
        return float(rng.uniform(-np.pi, np.pi))
    if track.kind == "stand" and class_name in CYCLE_CLASSES:
        # Parked cycles stand along the curb, either way round.
        return float(np.pi * rng.integers(2) + rng.normal(0.0, 0.05))
    return float(rng.normal(0.0, 0.03))


def _half_extent_along_s(size_lwh: np.ndarray, yaw_offset: float) -> float:
    return 0.5 * (abs(np.cos(yaw_offset)) * size_lwh[0] + abs(np.sin(yaw_offset)) * size_lwh[1])


def build_scene(config: SynthConfig, scene_index: int) -> SceneWorld:
    """The deterministic world of scene ``scene_index`` (no rendering)."""
    rng = scene_rng(config, scene_index, "world")
    curvature = 0.0 if rng.random() < 0.4 else float(rng.uniform(-1.0, 1.0) / 450.0)
    road = Road(
        origin_xy=(float(rng.uniform(-2000, 2000)), float(rng.uniform(-2000, 2000))),
        heading0=float(rng.uniform(-np.pi, np.pi)),
        curvature=curvature,
    )
    ego_speed = 0.0 if rng.random() < 0.15 else float(rng.uniform(4.0, 12.0))
    tracks = _build_tracks(rng, ego_speed)
    num_kf = config.keyframes_per_scene
    kf_times = 0.5 * np.arange(num_kf)
    num_sw = config.sweeps_per_keyframe
    sweep_times = kf_times[:, None] - 0.5 * np.arange(num_sw, 0, -1)[None, :] / (num_sw + 1)

    # Occupied intervals (s at t = 0, half extent) per track. The ego occupies its own lane.
    occupied: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(tracks))}
    ego_track = 1
    occupied[ego_track].append((0.5 * (EGO_REAR_M + EGO_FRONT_M), 0.5 * (EGO_FRONT_M - EGO_REAR_M) + 4.0))

    weights = np.asarray(config.class_weights, dtype=np.float64)
    weights = weights / weights.sum()
    count = int(rng.integers(int(np.floor(0.75 * config.objects_per_scene)), int(np.ceil(1.25 * config.objects_per_scene)) + 1))
    objects: list[WorldObject] = []
    for _ in range(count):
        class_name = DETECTION_CLASSES[int(rng.choice(len(DETECTION_CLASSES), p=weights))]
        allowed = _allowed_tracks(class_name, tracks)
        for _attempt in range(12):
            ti = int(allowed[rng.integers(len(allowed))])
            tr = tracks[ti]
            attribute, rider = _attribute(class_name, tr)
            size = _sample_size(class_name, rng, rider)
            yaw_off = _yaw_offset(class_name, tr, rng)
            half = _half_extent_along_s(size, yaw_off)
            t_anchor = float(kf_times[rng.integers(num_kf)])
            s_anchor = ego_speed * t_anchor + float(rng.uniform(-50.0, 50.0))
            s0 = s_anchor - tr.direction * tr.speed_mps * t_anchor
            margin = 1.0 if tr.kind in ("lane", "parking") else 0.3
            if any(abs(s0 - c) < half + h + margin for c, h in occupied[ti]):
                continue
            if tr.kind == "parking":
                # Zones are offset between the two sides of the road.
                phase = np.mod(s0 + (0.0 if tr.d_m < 0 else PARKING_PERIOD_M / 2), PARKING_PERIOD_M)
                if not half <= phase <= PARKING_ZONE_M - half:
                    continue
            occupied[ti].append((s0, half))
            objects.append(
                WorldObject(
                    class_name=class_name,
                    category=CATEGORY_OF_CLASS[class_name],
                    size_lwh=size,
                    track=ti,
                    s0_m=s0,
                    yaw_offset=yaw_off,
                    attribute=attribute,
                    colors=_object_colors(class_name, rng),
                    variant=int(rng.integers(4)),
                )
            )
            break

    background = _build_background(config, rng, road, ego_speed * float(kf_times[-1]))
    sun_az = rng.uniform(-np.pi, np.pi)
    sun_el = rng.uniform(np.deg2rad(25), np.deg2rad(65))
    sun = np.array([np.cos(sun_el) * np.cos(sun_az), np.cos(sun_el) * np.sin(sun_az), np.sin(sun_el)])

    world = SceneWorld(
        index=scene_index,
        name=f"scene-{scene_index + 1:04d}",
        road=road,
        ego_speed_mps=ego_speed,
        tracks=tracks,
        objects=objects,
        background=background,
        sun_dir_global=sun,
        keyframe_times_s=kf_times,
        sweep_times_s=sweep_times,
        exposure=float(rng.uniform(0.82, 1.12)),
    )
    world.annotated = _annotation_mask(world, config.annotation_range_m)
    # Objects never annotated (drifted out of range at every keyframe) are dropped entirely.
    keep = world.annotated.any(axis=1)
    world.objects = [o for o, k in zip(world.objects, keep) if k]
    world.annotated = world.annotated[keep]
    return world


def _annotation_mask(world: SceneWorld, range_m: float) -> np.ndarray:
    """(num_objects, K) bool: within range_m of the ego at that keyframe, restricted to the longest
    contiguous run so that every instance's prev/next chain has no gaps."""
    k = len(world.keyframe_times_s)
    mask = np.zeros((len(world.objects), k), dtype=bool)
    for j, t in enumerate(world.keyframe_times_s):
        states = world.object_states(float(t))
        ego_xy = world.ego_pose(float(t))[:2, 3]
        if len(world.objects):
            mask[:, j] = np.hypot(*(states.center[:, :2] - ego_xy).T) < range_m
    for i in range(len(world.objects)):
        best, best_len, start = None, 0, None
        for j in range(k + 1):
            if j < k and mask[i, j]:
                start = j if start is None else start
            elif start is not None:
                if j - start > best_len:
                    best, best_len = (start, j), j - start
                start = None
        mask[i] = False
        if best is not None:
            mask[i, best[0]:best[1]] = True
    return mask


def _build_background(config: SynthConfig, rng: np.random.Generator, road: Road, ego_travel_m: float) -> list[BackgroundBox]:
    """Building blocks behind the sidewalks and street-light poles at the curb, covering the ego's
    path +-120 m."""
    out: list[BackgroundBox] = []
    s_lo, s_hi = -120.0, ego_travel_m + 120.0
    for sign in (-1.0, 1.0):
        s = s_lo + rng.uniform(0, 20)
        while s < s_hi and config.buildings:
            length = rng.uniform(10.0, 30.0)
            depth = rng.uniform(8.0, 16.0)
            height = rng.uniform(6.0, 24.0)
            if rng.random() < 0.8:
                d = sign * (BUILDING_START_M + rng.uniform(0.0, 3.0) + depth / 2)
                sc = s + length / 2
                xy = road.to_global(sc, d)
                out.append(BackgroundBox(
                    kind="building",
                    center_xyz=np.array([xy[0], xy[1], height / 2]),
                    size_lwh=np.array([length, depth, height]),
                    yaw=float(road.heading(sc)),
                    color=_pick(rng, _BUILDING_COLORS, 0.05),
                ))
            s += length + rng.uniform(3.0, 15.0)
        s = s_lo + rng.uniform(0, 25)
        while s < s_hi:
            xy = road.to_global(s, sign * POLE_D_M)
            out.append(BackgroundBox(
                kind="pole",
                center_xyz=np.array([xy[0], xy[1], 3.5]),
                size_lwh=np.array([0.18, 0.18, 7.0]),
                yaw=float(road.heading(s)),
                color=np.array([0.35, 0.36, 0.38]),
            ))
            s += rng.uniform(22.0, 35.0)
    return out
