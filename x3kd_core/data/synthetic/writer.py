"""nuScenes tables and file formats: tokens, static tables, point-cloud files, JSON output.

The table schemas follow the nuScenes v1.0 schema (what nuscenes-devkit 1.2 reads). Tokens are
32-hex-digit MD5 digests of (seed, table, key), so the same config always gives the same tokens,
no matter in which process or order a scene is rendered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from x3kd_core.data.synthetic.sensors import RADAR_FIELDS
from x3kd_core.data.synthetic.world import ATTRIBUTES, CATEGORY_OF_CLASS

TABLE_NAMES: tuple[str, ...] = (
    "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
    "sample_annotation", "sample_data", "scene", "sensor", "visibility",
)

#: nuScenes visibility bins: token -> (level, upper bound of the visible fraction).
VISIBILITY_LEVELS: tuple[tuple[str, str, float], ...] = (
    ("1", "v0-40", 0.4), ("2", "v40-60", 0.6), ("3", "v60-80", 0.8), ("4", "v80-100", 1.01),
)

MAP_FILENAME = "maps/synth_semantic_prior.png"


def make_token(seed: int, *key) -> str:
    """Deterministic 32-hex token for (seed, key...)."""
    text = "/".join([str(seed)] + [str(k) for k in key])
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def visibility_token(visible_fraction: float) -> str:
    """nuScenes visibility token ("1".."4") for the visible fraction of an object's pixels."""
    for token, _level, upper in VISIBILITY_LEVELS:
        if visible_fraction < upper:
            return token
    return VISIBILITY_LEVELS[-1][0]


def static_tables(seed: int) -> dict[str, list[dict]]:
    """category, attribute and visibility tables (the same for every synthetic dataset of a seed)."""
    category = [
        {"token": make_token(seed, "category", name), "name": name, "description": f"synthetic {cls.replace('_', ' ')}"}
        for cls, name in CATEGORY_OF_CLASS.items()
    ]
    attribute = [
        {"token": make_token(seed, "attribute", name), "name": name, "description": name.replace(".", " ")}
        for name in ATTRIBUTES
    ]
    visibility = [
        {"token": token, "level": level, "description": f"visibility of whole object is between {level[1:].replace('-', ' and ')} %"}
        for token, level, _ in VISIBILITY_LEVELS
    ]
    return {"category": category, "attribute": attribute, "visibility": visibility}


@dataclass
class SceneRecords:
    """Table rows produced by one scene (appended to the dataset tables in scene order)."""

    tables: dict[str, list[dict]] = field(default_factory=lambda: {name: [] for name in TABLE_NAMES})
    num_keyframes: int = 0
    num_lidar_points: int = 0
    num_radar_points: int = 0


# ---- files --------------------------------------------------------------------------------------
def write_lidar_bin(path: Path, points: np.ndarray) -> None:
    """nuScenes LiDAR file: float32 (N, 5) x, y, z, intensity, ring, row-major, no header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(points, dtype=np.float32).tofile(path)


def write_radar_pcd(path: Path, points: np.ndarray) -> None:
    """nuScenes radar file: PCD v0.7 header + packed little-endian binary records (RADAR_FIELDS).

    nuscenes-devkit cannot read a file with zero points (it asserts WIDTH > 0), and marks empty
    clouds with a NaN first point; we do the same. One padding byte follows the records because
    its reader requires the last field to end strictly before the end of the data.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype([(n, t) for n, t in RADAR_FIELDS])
    if len(points) == 0:
        points = np.zeros(1, dtype=dtype)
        points["x"] = np.nan
        points["y"] = np.nan
        points["z"] = np.nan
    points = np.ascontiguousarray(points.astype(dtype))
    sizes = " ".join(str(dtype[n].itemsize) for n, _ in RADAR_FIELDS)
    types = " ".join("F" if dtype[n].kind == "f" else "I" for n, _ in RADAR_FIELDS)
    n = len(points)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\n"
        "VERSION 0.7\n"
        f"FIELDS {' '.join(n for n, _ in RADAR_FIELDS)}\n"
        f"SIZE {sizes}\n"
        f"TYPE {types}\n"
        f"COUNT {' '.join('1' for _ in RADAR_FIELDS)}\n"
        f"WIDTH {n}\n"
        "HEIGHT 1\n"
        "VIEWPOINT 0 0 0 1 0 0 0\n"
        f"POINTS {n}\n"
        "DATA binary\n"
    )
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(points.tobytes())
        fh.write(b"\n")


def read_radar_pcd(path: Path) -> np.ndarray:
    """Read back a file written by :func:`write_radar_pcd` (all points, no filtering; the NaN
    placeholder of an empty cloud is dropped)."""
    data = Path(path).read_bytes()
    marker = b"DATA binary\n"
    start = data.index(marker) + len(marker)
    dtype = np.dtype([(n, t) for n, t in RADAR_FIELDS])
    n = (len(data) - start) // dtype.itemsize
    points = np.frombuffer(data[start:start + n * dtype.itemsize], dtype=dtype)
    return points[np.isfinite(points["x"])]


def write_image(path: Path, rgb: np.ndarray, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"could not write {path}")


def write_png16(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image, dtype=np.uint16)):
        raise OSError(f"could not write {path}")


def write_map_png(dataroot: Path) -> None:
    """The map table needs an image; ours is a small all-drivable placeholder (no map prior)."""
    path = dataroot / MAP_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((64, 64), 255, dtype=np.uint8))


def write_tables(table_dir: Path, tables: dict[str, list[dict]]) -> None:
    table_dir.mkdir(parents=True, exist_ok=True)
    for name in TABLE_NAMES:
        with open(table_dir / f"{name}.json", "w") as fh:
            json.dump(tables[name], fh, indent=1)
