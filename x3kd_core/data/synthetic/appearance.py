"""What objects look like: each object is a few axis-aligned boxes ("parts") in its own frame,
each with a texture, two colours, a LiDAR reflectivity, plus a radar cross-section per class.

Parts are what the ray caster intersects, so cameras and LiDAR see the same geometry. Every part
is clipped to the object's annotation box, so any surface point of any part lies inside the
annotated box (LiDAR/radar point counts stay exact).

Object frame: origin at the bottom centre of the annotation box, x along the heading (length),
y to the left (width), z up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from x3kd_core.data.synthetic.world import BackgroundBox, WorldObject

# Texture codes (see textures.shade_parts in sensors.py).
PLAIN, CABIN, VEHICLE_BODY, TRUCK_CAB, PANEL, BUS, HAZARD, BARRIER, WINDOWS, WHEEL = range(10)

GLASS = np.array([0.10, 0.13, 0.17])
TIRE = np.array([0.05, 0.05, 0.05])
DARK = np.array([0.18, 0.18, 0.19])
WHITE = np.array([0.92, 0.92, 0.90])
TAIL_LAMP = np.array([0.80, 0.06, 0.05])
HAIR = np.array([0.12, 0.09, 0.07])
BACKPACK = np.array([0.16, 0.30, 0.22])

#: Mean radar cross-section (dBsm) and expected radar returns per keyframe at short range.
RADAR_RCS_DBSM = {
    "car": 8.0, "truck": 15.0, "construction_vehicle": 14.0, "bus": 18.0, "trailer": 16.0,
    "barrier": 2.0, "motorcycle": 3.0, "bicycle": -2.0, "pedestrian": -5.0, "traffic_cone": -8.0,
    "building": 12.0, "pole": 5.0,
}
RADAR_RETURNS = {
    "car": 2.5, "truck": 3.5, "construction_vehicle": 3.0, "bus": 4.0, "trailer": 4.0,
    "barrier": 1.0, "motorcycle": 1.2, "bicycle": 0.8, "pedestrian": 0.6, "traffic_cone": 0.4,
}


@dataclass(frozen=True)
class PartSet:
    """P boxes in one frame (the frame depends on the caller).

    Fields:
        center: (P, 3) part centres (m). half: (P, 3) half extents along the part's own x, y, z (m).
        yaw: (P,) heading (rad). owner: (P,) int object index, -1 for background (buildings, poles).
        texture: (P,) texture code. color1 / color2: (P, 3) RGB in [0, 1]. reflectivity: (P,) in [0, 1].
        bottom: (P,) height of the part's bottom above the object's bottom (m), for textures.
    """

    center: np.ndarray
    half: np.ndarray
    yaw: np.ndarray
    owner: np.ndarray
    texture: np.ndarray
    color1: np.ndarray
    color2: np.ndarray
    reflectivity: np.ndarray

    def __len__(self) -> int:
        return len(self.center)

    def transformed(self, transform: np.ndarray) -> "PartSet":
        """Parts moved by a (4, 4) transform whose rotation is about z only."""
        rot = transform[:3, :3]
        dyaw = float(np.arctan2(rot[1, 0], rot[0, 0]))
        return PartSet(
            center=self.center @ rot.T + transform[:3, 3],
            half=self.half,
            yaw=self.yaw + dyaw,
            owner=self.owner,
            texture=self.texture,
            color1=self.color1,
            color2=self.color2,
            reflectivity=self.reflectivity,
        )


@dataclass(frozen=True)
class LocalParts:
    """Parts of one object in its own frame: lo/hi (K, 3) corners (m), texture (K,), color1/2 (K, 3),
    reflectivity (K,)."""

    lo: np.ndarray
    hi: np.ndarray
    texture: np.ndarray
    color1: np.ndarray
    color2: np.ndarray
    reflectivity: np.ndarray


class _Builder:
    def __init__(self, size_lwh: np.ndarray):
        self.l, self.w, self.h = (float(v) for v in size_lwh)
        self.rows: list[tuple] = []

    def add(self, x, y, z, texture, c1, c2=None, refl=0.4):
        """Add a part spanning x=(x0, x1), y=(y0, y1), z=(z0, z1) in metres (object frame)."""
        lo = np.array([x[0], y[0], z[0]], dtype=np.float64)
        hi = np.array([x[1], y[1], z[1]], dtype=np.float64)
        bound_lo = np.array([-self.l / 2, -self.w / 2, 0.0])
        bound_hi = np.array([self.l / 2, self.w / 2, self.h])
        lo = np.clip(lo, bound_lo, bound_hi)
        hi = np.clip(hi, bound_lo, bound_hi)
        if np.any(hi - lo < 1e-3):
            return
        c1 = np.asarray(c1, dtype=np.float64)
        c2 = c1 if c2 is None else np.asarray(c2, dtype=np.float64)
        self.rows.append((lo, hi, texture, c1, c2, refl))

    def fx(self, a, b):
        """x interval from fractions of the length (-0.5 rear .. 0.5 front)."""
        return (a * self.l, b * self.l)

    def fy(self, a, b):
        return (a * self.w, b * self.w)

    def fz(self, a, b):
        return (a * self.h, b * self.h)

    def wheels(self, x_centers, radius, tire_w):
        for xc in x_centers:
            for side in (-1.0, 1.0):
                y_out = side * self.w / 2
                y_in = y_out - side * tire_w
                self.add((xc - radius, xc + radius), (min(y_in, y_out), max(y_in, y_out)), (0.0, 2 * radius), WHEEL, TIRE, refl=0.05)

    def build(self) -> LocalParts:
        lo, hi, tex, c1, c2, refl = zip(*self.rows)
        return LocalParts(np.stack(lo), np.stack(hi), np.array(tex, dtype=np.int64), np.stack(c1), np.stack(c2), np.array(refl))


def _rider(b: _Builder, x_seat: float, seat_z: float, colors: np.ndarray, helmet: bool, x_bar: float | None = None) -> None:
    """Torso, legs and head of a rider sitting at x_seat, seat height seat_z (m); with ``x_bar`` (the
    handlebar's x, m) also arms reaching forward to it and a face / visor on the front of the head."""
    top, skin, bottom = colors[1], colors[2], colors[3]
    head = 0.26
    b.add((x_seat - 0.15, x_seat + 0.25), (-0.18, 0.18), (seat_z - 0.35, seat_z + 0.05), PLAIN, bottom, refl=0.3)
    b.add((x_seat - 0.18, x_seat + 0.12), (-0.22, 0.22), (seat_z + 0.05, b.h - head), PLAIN, top, refl=0.3)
    if x_bar is None:
        b.add((x_seat - 0.14, x_seat + 0.1), (-0.12, 0.12), (b.h - head, b.h), PLAIN, DARK if helmet else skin, refl=0.3)
        return
    arm_z = (b.h - head - 0.2, b.h - head - 0.1)
    for side in (-1.0, 1.0):
        b.add((x_seat + 0.12, x_bar), (min(side * 0.12, side * 0.22), max(side * 0.12, side * 0.22)), arm_z, PLAIN, top, refl=0.3)
    back, front = (DARK, GLASS) if helmet else (HAIR, skin)
    b.add((x_seat - 0.14, x_seat - 0.02), (-0.12, 0.12), (b.h - head, b.h), PLAIN, back, refl=0.3)
    b.add((x_seat - 0.02, x_seat + 0.1), (-0.12, 0.12), (b.h - head, b.h), PLAIN, front, refl=0.15 if helmet else 0.3)


def object_parts(obj: WorldObject, fronts: bool = False) -> LocalParts:
    """The parts of one object (object frame, metres).

    ``fronts`` (SynthConfig.object_fronts) adds what tells the front of a pedestrian, a rider, a
    two-wheeler and a trailer from its back; cars, trucks and buses have theirs either way.
    """
    b = _Builder(obj.size_lwh)
    c = obj.colors
    name = obj.class_name
    with_rider = obj.attribute == "cycle.with_rider"
    if name == "car":
        # A front and a back that both sensors can tell apart (a symmetric body makes heading
        # ambiguous by pi): a hood lower than the trunk deck, a windscreen set back further than
        # the rear window, white headlamps at the front face and red tail lamps at the back
        # (retro-reflective, so LiDAR intensity marks them too).
        r = min(0.36, 0.2 * b.h)
        lamp = 0.02  # lamp depth (fraction of the length) in front of / behind the body
        b.add(b.fx(-0.5 + lamp, 0.22), b.fy(-0.5, 0.5), (r * 0.8, 0.58 * b.h), VEHICLE_BODY, c[0], refl=0.5)
        b.add(b.fx(0.22, 0.5 - lamp), b.fy(-0.5, 0.5), (r * 0.8, 0.46 * b.h), VEHICLE_BODY, c[0], refl=0.5)  # hood
        front = 0.12 if obj.variant % 2 == 0 else 0.2  # sedan / hatchback cabin
        b.add(b.fx(-0.36, front), b.fy(-0.45, 0.45), (0.58 * b.h, b.h), CABIN, GLASS, c[0], refl=0.15)
        for side in (-1.0, 1.0):
            y = (min(side * 0.22, side * 0.45) * b.w, max(side * 0.22, side * 0.45) * b.w)
            b.add(b.fx(0.5 - lamp, 0.5), y, (0.3 * b.h, 0.42 * b.h), PLAIN, WHITE, refl=0.95)
            b.add(b.fx(-0.5, -0.5 + lamp), y, (0.38 * b.h, 0.52 * b.h), PLAIN, TAIL_LAMP, refl=0.9)
        b.wheels((0.31 * b.l, -0.31 * b.l), r, 0.22)
    elif name == "truck":
        b.add(b.fx(-0.5, 0.5), b.fy(-0.38, 0.38), b.fz(0.09, 0.2), PLAIN, DARK, refl=0.2)
        b.add(b.fx(0.27, 0.5), b.fy(-0.48, 0.48), b.fz(0.14, 0.78), TRUCK_CAB, c[0], refl=0.5)
        b.add(b.fx(-0.5, 0.25), b.fy(-0.5, 0.5), b.fz(0.2, 1.0), PANEL, c[1], refl=0.45)
        r = 0.17 * b.h
        b.wheels((0.38 * b.l, -0.18 * b.l, -0.36 * b.l), min(r, 0.5), 0.3)
    elif name == "bus":
        # Front: a tall windscreen proud of the body; back: an engine deck with tail lamps.
        b.add(b.fx(-0.49, 0.49), b.fy(-0.5, 0.5), b.fz(0.1, 1.0), BUS, c[0], GLASS, refl=0.5)
        b.add(b.fx(0.49, 0.5), b.fy(-0.45, 0.45), b.fz(0.35, 0.92), PLAIN, GLASS, refl=0.1)
        b.add(b.fx(-0.5, -0.49), b.fy(-0.45, 0.45), b.fz(0.12, 0.3), PLAIN, TAIL_LAMP, refl=0.9)
        b.wheels((0.33 * b.l, -0.28 * b.l), 0.5, 0.3)
    elif name == "trailer":
        b.add(b.fx(-0.5, 0.5), b.fy(-0.5, 0.5), b.fz(0.3, 1.0), PANEL, c[0], refl=0.45)
        b.add(b.fx(0.3, 0.34), b.fy(-0.3, 0.3), b.fz(0.0, 0.3), PLAIN, DARK, refl=0.2)  # landing legs
        b.wheels((-0.3 * b.l, -0.38 * b.l), 0.5, 0.3)
        if fronts:
            # Back: a low underrun bar and red tail lamps (retro-reflective); front: a dark bulkhead.
            b.add(b.fx(-0.5, -0.48), b.fy(-0.45, 0.45), b.fz(0.08, 0.16), PLAIN, DARK, refl=0.3)
            for side in (-1.0, 1.0):
                y = (min(side * 0.3, side * 0.48) * b.w, max(side * 0.3, side * 0.48) * b.w)
                b.add(b.fx(-0.5, -0.495), y, b.fz(0.3, 0.36), PLAIN, TAIL_LAMP, refl=0.9)
            b.add(b.fx(0.495, 0.5), b.fy(-0.5, 0.5), b.fz(0.3, 1.0), PLAIN, DARK, refl=0.2)
    elif name == "construction_vehicle":
        yellow = c[0]
        b.add(b.fx(-0.5, 0.18), b.fy(-0.5, -0.33), b.fz(0.0, 0.16), PLAIN, TIRE, refl=0.05)  # tracks
        b.add(b.fx(-0.5, 0.18), b.fy(0.33, 0.5), b.fz(0.0, 0.16), PLAIN, TIRE, refl=0.05)
        b.add(b.fx(-0.5, 0.18), b.fy(-0.45, 0.45), b.fz(0.16, 0.48), HAZARD, yellow, refl=0.5)
        b.add(b.fx(-0.34, 0.05), b.fy(-0.42, 0.42), b.fz(0.48, 0.85), CABIN, GLASS, yellow, refl=0.2)
        if obj.variant % 2 == 0:  # excavator arm
            b.add(b.fx(0.05, 0.42), b.fy(-0.08, 0.08), b.fz(0.55, 1.0), PLAIN, yellow * 0.8, refl=0.4)
            b.add(b.fx(0.36, 0.5), b.fy(-0.3, 0.3), b.fz(0.02, 0.5), PLAIN, DARK, refl=0.3)
        else:  # loader bucket and roll bar
            b.add(b.fx(0.22, 0.5), b.fy(-0.5, 0.5), b.fz(0.02, 0.3), PLAIN, DARK, refl=0.3)
            b.add(b.fx(-0.36, -0.3), b.fy(-0.45, 0.45), b.fz(0.85, 1.0), PLAIN, DARK, refl=0.3)
    elif name == "barrier":
        b.add(b.fx(-0.5, 0.5), b.fy(-0.5, 0.5), b.fz(0.22, 1.0), BARRIER, c[0], np.array([0.80, 0.08, 0.06]), refl=0.85)
        b.add(b.fx(-0.5, 0.5), b.fy(-0.45, -0.3), b.fz(0.0, 0.22), PLAIN, DARK, refl=0.2)
        b.add(b.fx(-0.5, 0.5), b.fy(0.3, 0.45), b.fz(0.0, 0.22), PLAIN, DARK, refl=0.2)
    elif name == "traffic_cone":
        orange = c[0]
        b.add(b.fx(-0.5, 0.5), b.fy(-0.5, 0.5), b.fz(0.0, 0.07), PLAIN, TIRE, refl=0.1)
        b.add(b.fx(-0.3, 0.3), b.fy(-0.3, 0.3), b.fz(0.07, 0.45), PLAIN, orange, refl=0.5)
        b.add(b.fx(-0.22, 0.22), b.fy(-0.22, 0.22), b.fz(0.45, 0.7), PLAIN, WHITE, refl=0.95)
        b.add(b.fx(-0.13, 0.13), b.fy(-0.13, 0.13), b.fz(0.7, 1.0), PLAIN, orange, refl=0.5)
    elif name == "pedestrian":
        top, bottom, skin = c[0], c[1], c[2]
        leg_h = 0.47 * b.h
        b.add(b.fx(-0.18, 0.18), b.fy(-0.32, -0.04), (0.0, leg_h), PLAIN, bottom, refl=0.3)
        b.add(b.fx(-0.18, 0.18), b.fy(0.04, 0.32), (0.0, leg_h), PLAIN, bottom, refl=0.3)
        b.add(b.fx(-0.25, 0.25), b.fy(-0.5, 0.5), (leg_h, 0.84 * b.h), PLAIN, top, refl=0.3)
        if not fronts:
            b.add(b.fx(-0.17, 0.17), b.fy(-0.18, 0.18), (0.86 * b.h, b.h), PLAIN, skin, refl=0.3)
        else:
            # Back: a backpack proud of the torso and hair; front: a face and feet pointing forward.
            b.add(b.fx(-0.5, -0.25), b.fy(-0.34, 0.34), (0.5 * b.h, 0.8 * b.h), PLAIN, BACKPACK, refl=0.6)
            b.add(b.fx(-0.17, 0.0), b.fy(-0.18, 0.18), (0.86 * b.h, b.h), PLAIN, HAIR, refl=0.2)
            b.add(b.fx(0.0, 0.17), b.fy(-0.18, 0.18), (0.86 * b.h, b.h), PLAIN, skin, refl=0.3)
            for y in (b.fy(-0.32, -0.06), b.fy(0.06, 0.32)):
                b.add(b.fx(0.18, 0.5), y, (0.0, 0.05 * b.h), PLAIN, DARK, refl=0.2)
    elif name in ("bicycle", "motorcycle"):
        moto = name == "motorcycle"
        r = 0.31 if moto else 0.34
        tire = 0.09 if moto else 0.05
        for xc in (b.l / 2 - r, -b.l / 2 + r):
            b.add((xc - r, xc + r), (-tire, tire), (0.0, 2 * r), WHEEL, TIRE, refl=0.05)
        if moto:
            b.add((-b.l / 2 + 0.35, b.l / 2 - 0.3), (-0.2, 0.2), (0.3, 0.82), PLAIN, c[0], refl=0.5)
        else:
            b.add((-b.l / 2 + r, b.l / 2 - r), (-0.03, 0.03), (0.35, 0.62), PLAIN, c[0], refl=0.4)
            b.add((-b.l / 2 + r * 1.3, -b.l / 2 + r * 1.3 + 0.2), (-0.1, 0.1), (0.85, 0.92), PLAIN, DARK, refl=0.2)
        bar_x = b.l / 2 - r * (1.7 if moto else 1.1)
        b.add((bar_x - 0.05, bar_x + 0.05), (-b.w / 2, b.w / 2), (0.88, 0.98 if moto else 1.02), PLAIN, DARK, refl=0.3)
        if fronts:
            # Front: a white head lamp under the bar (a fairing with a screen on a motorcycle);
            # back: a red tail lamp over the rear wheel (both retro-reflective).
            b.add((bar_x + 0.05, bar_x + 0.16), (-0.08, 0.08), (0.7, 0.82), PLAIN, WHITE, refl=0.95)
            b.add((-b.l / 2 + 0.05, -b.l / 2 + 0.18), (-0.06, 0.06), (0.72, 0.8), PLAIN, TAIL_LAMP, refl=0.9)
            if moto:
                b.add((bar_x, bar_x + 0.1), (-0.2, 0.2), (0.98, 1.18), PLAIN, GLASS, refl=0.15)
        if with_rider:
            _rider(b, -0.1 * b.l, 0.85 if moto else 0.92, c, helmet=moto, x_bar=bar_x if fronts else None)
    else:
        raise ValueError(name)
    return b.build()


def background_parts(box: BackgroundBox) -> LocalParts:
    b = _Builder(box.size_lwh)
    if box.kind == "building":
        b.add(b.fx(-0.5, 0.5), b.fy(-0.5, 0.5), b.fz(0.0, 1.0), WINDOWS, box.color, GLASS, refl=0.3)
    else:
        b.add(b.fx(-0.5, 0.5), b.fy(-0.5, 0.5), b.fz(0.0, 1.0), PLAIN, box.color, refl=0.4)
    return b.build()


def place_parts(local: list[LocalParts], owners: list[int], centers: np.ndarray, sizes: np.ndarray, yaws: np.ndarray) -> PartSet:
    """Local parts of N boxes -> one PartSet in the frame of ``centers`` (box centres, (N, 3))."""
    if not local:
        z = np.zeros((0, 3))
        return PartSet(z, z, np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), z, z, np.zeros(0))
    counts = [len(p.lo) for p in local]
    lo = np.concatenate([p.lo for p in local])
    hi = np.concatenate([p.hi for p in local])
    rep = np.repeat(np.arange(len(local)), counts)
    mid = (lo + hi) / 2.0
    mid[:, 2] -= sizes[rep, 2] / 2.0  # object frame has z = 0 at the bottom; centres are mid-height
    cos, sin = np.cos(yaws[rep]), np.sin(yaws[rep])
    center = np.stack([cos * mid[:, 0] - sin * mid[:, 1], sin * mid[:, 0] + cos * mid[:, 1], mid[:, 2]], axis=1) + centers[rep]
    return PartSet(
        center=center,
        half=(hi - lo) / 2.0,
        yaw=yaws[rep].astype(np.float64),
        owner=np.asarray(owners, dtype=np.int64)[rep],
        texture=np.concatenate([p.texture for p in local]),
        color1=np.concatenate([p.color1 for p in local]),
        color2=np.concatenate([p.color2 for p in local]),
        reflectivity=np.concatenate([p.reflectivity for p in local]),
    )


def concat_parts(sets: list[PartSet]) -> PartSet:
    """Concatenate part sets (owners are kept as they are)."""
    sets = [p for p in sets if len(p)]
    if not sets:
        return place_parts([], [], np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    return PartSet(*(np.concatenate([getattr(p, f) for p in sets]) for f in
                     ("center", "half", "yaw", "owner", "texture", "color1", "color2", "reflectivity")))


def select_parts(parts: PartSet, keep: np.ndarray) -> PartSet:
    """Subset of parts by boolean mask or index array."""
    return PartSet(*(getattr(parts, f)[keep] for f in
                     ("center", "half", "yaw", "owner", "texture", "color1", "color2", "reflectivity")))
