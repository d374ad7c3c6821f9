"""Sensor extrinsics for the nodes: static transforms from ``/tf_static`` or a calibration YAML.

Pure logic (numpy + ``geometry_msgs`` message objects, no node): the nodes feed what they receive
in and ask for ``base_link <- sensor`` matrices.

Conventions (tf2 / REP-105): a ``geometry_msgs/TransformStamped`` with ``header.frame_id = P`` and
``child_frame_id = C`` is the pose of frame C in frame P, i.e. the (4, 4) matrix that maps points
given in C into P. :meth:`StaticTransformTree.lookup` composes such edges along the tree, so a
sensor may hang below ``base_link`` through intermediate frames (``base_link -> roof -> cam``).

Calibration YAML (the fallback where no ``/tf_static`` is published, e.g. on machines without the
``tf2_msgs`` Python package, or for a fixed rig)::

    base_frame: base_link
    transforms:                       # base_frame <- sensor, i.e. the sensor's pose in base_frame
      cam_front:
        translation_m: [1.70, 0.02, 1.51]
        rotation_wxyz: [0.5, -0.5, 0.5, -0.5]   # unit quaternion (w, x, y, z)

Frame names follow :mod:`x3kd_ros.topics` (lower-case nuScenes channel). Camera frames are optical
frames (x right, y down, z forward), as in nuScenes and ``CameraInfo``.
``config/ros/calibration_synthetic.yaml`` holds the rig of the built-in synthetic dataset
(:func:`synthetic_rig_transforms`; a test keeps the two equal).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np
import yaml

from x3kd_core import geometry

__all__ = [
    "ExtrinsicsError",
    "transform_stamped_to_matrix",
    "StaticTransformTree",
    "Calibration",
    "load_calibration_yaml",
    "calibration_yaml_text",
    "synthetic_rig_transforms",
]

# A quaternion further than this from unit length is a data error, not rounding.
_QUATERNION_NORM_TOL = 1e-3


class ExtrinsicsError(ValueError):
    """A transform or calibration file cannot be used; the text says which frame / key."""


def _quaternion_matrix(q_wxyz: Iterable[float], where: str) -> np.ndarray:
    q = np.asarray(list(q_wxyz), dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise ExtrinsicsError(f"{where}: rotation must be 4 finite numbers (w, x, y, z), got {q.tolist()}")
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > _QUATERNION_NORM_TOL:
        raise ExtrinsicsError(f"{where}: rotation quaternion has norm {norm:.6f}, expected 1")
    return geometry.quaternion_to_matrix(q / norm)


def _matrix(rotation_wxyz: Iterable[float], translation_m: Iterable[float], where: str) -> np.ndarray:
    t = np.asarray(list(translation_m), dtype=np.float64)
    if t.shape != (3,) or not np.all(np.isfinite(t)):
        raise ExtrinsicsError(f"{where}: translation must be 3 finite numbers (m), got {t.tolist()}")
    out = np.eye(4)
    out[:3, :3] = _quaternion_matrix(rotation_wxyz, where)
    out[:3, 3] = t
    return out


def transform_stamped_to_matrix(msg) -> np.ndarray:
    """``geometry_msgs/TransformStamped`` -> (4, 4) matrix mapping child-frame points into the parent."""
    tr, rot = msg.transform.translation, msg.transform.rotation
    where = f"transform {msg.header.frame_id} -> {msg.child_frame_id}"
    return _matrix((rot.w, rot.x, rot.y, rot.z), (tr.x, tr.y, tr.z), where)


class StaticTransformTree:
    """Static frame tree: each frame has at most one parent, as in tf2.

    A new transform for a child replaces its old one (a recalibration, or a repeated latched
    ``/tf_static`` message).
    """

    def __init__(self) -> None:
        # child -> (parent, parent <- child matrix)
        self._edges: dict[str, tuple[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._edges)

    @property
    def frames(self) -> set[str]:
        return set(self._edges) | {parent for parent, _ in self._edges.values()}

    def add(self, parent: str, child: str, parent_from_child: np.ndarray) -> None:
        """Add or replace the edge ``parent <- child``.

        Raises:
            ExtrinsicsError: empty frame names, a self-loop, or an edge that would close a cycle.
        """
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child:
            raise ExtrinsicsError(f"transform needs two frame names, got parent {parent!r}, child {child!r}")
        if parent == child:
            raise ExtrinsicsError(f"transform from frame {child!r} to itself")
        node = parent
        while node in self._edges:  # walking up from the new parent must not reach the child
            node = self._edges[node][0]
            if node == child:
                raise ExtrinsicsError(f"transform {parent} -> {child} would close a cycle in the frame tree")
        matrix = np.asarray(parent_from_child, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise ExtrinsicsError(f"transform {parent} -> {child} must be (4, 4), got {matrix.shape}")
        self._edges[child] = (parent, matrix)

    def add_transform_stamped(self, msg) -> None:
        """Add one ``geometry_msgs/TransformStamped`` (e.g. an element of ``TFMessage.transforms``)."""
        self.add(msg.header.frame_id, msg.child_frame_id, transform_stamped_to_matrix(msg))

    def _to_root(self, frame: str) -> tuple[str, np.ndarray]:
        matrix = np.eye(4)
        while frame in self._edges:
            parent, edge = self._edges[frame]
            matrix = edge @ matrix
            frame = parent
        return frame, matrix

    def lookup(self, target_frame: str, source_frame: str) -> Optional[np.ndarray]:
        """(4, 4) matrix mapping points in ``source_frame`` into ``target_frame``; None if unconnected."""
        target_frame, source_frame = target_frame.lstrip("/"), source_frame.lstrip("/")
        if target_frame == source_frame:
            return np.eye(4)
        if target_frame not in self.frames or source_frame not in self.frames:
            return None
        root_s, root_from_source = self._to_root(source_frame)
        root_t, root_from_target = self._to_root(target_frame)
        if root_s != root_t:
            return None
        return geometry.invert_transform(root_from_target) @ root_from_source


@dataclass
class Calibration:
    """Contents of a calibration YAML.

    Fields:
        base_frame: the frame all transforms are given in (``base_link``).
        transforms: sensor frame -> (4, 4) matrix mapping sensor-frame points into ``base_frame``.
        path: the file it was read from ("" if built in memory).
    """

    base_frame: str
    transforms: dict[str, np.ndarray]
    path: str = ""

    def tree(self) -> StaticTransformTree:
        tree = StaticTransformTree()
        for frame, matrix in self.transforms.items():
            tree.add(self.base_frame, frame, matrix)
        return tree


def load_calibration_yaml(path: str | os.PathLike) -> Calibration:
    """Read a calibration YAML (format in the module docstring).

    Raises:
        ExtrinsicsError: missing file, unknown or missing keys, bad numbers (the key path is named).
    """
    path = Path(path)
    if not path.is_file():
        raise ExtrinsicsError(f"calibration file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ExtrinsicsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ExtrinsicsError(f"{path}: expected a mapping with base_frame and transforms")
    unknown = sorted(set(raw) - {"base_frame", "transforms"})
    if unknown:
        raise ExtrinsicsError(f"{path}: unknown keys {unknown} (allowed: base_frame, transforms)")
    base = raw.get("base_frame")
    if not isinstance(base, str) or not base:
        raise ExtrinsicsError(f"{path}: base_frame must be a non-empty string")
    entries = raw.get("transforms")
    if not isinstance(entries, dict) or not entries:
        raise ExtrinsicsError(f"{path}: transforms must be a non-empty mapping frame -> pose")
    transforms = {}
    for frame, entry in entries.items():
        where = f"{path}: transforms.{frame}"
        if not isinstance(entry, dict) or set(entry) != {"translation_m", "rotation_wxyz"}:
            got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ExtrinsicsError(f"{where} needs exactly translation_m and rotation_wxyz, got {got}")
        transforms[str(frame)] = _matrix(entry["rotation_wxyz"], entry["translation_m"], where)
    return Calibration(base_frame=base, transforms=transforms, path=str(path))


def calibration_yaml_text(base_frame: str, transforms: Mapping[str, np.ndarray], comment: str = "") -> str:
    """A calibration YAML for ``transforms`` (frame -> base <- frame matrix), readable by
    :func:`load_calibration_yaml`. Numbers are written with 9 significant digits."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()] if comment else []
    lines += [f"base_frame: {base_frame}", "transforms:  # base_frame <- sensor (the sensor's pose in base_frame)"]
    for frame, matrix in transforms.items():
        matrix = np.asarray(matrix, dtype=np.float64)
        q = geometry.matrix_to_quaternion(matrix[:3, :3])
        if q[0] < 0:  # q and -q are one rotation; a positive w reads more naturally
            q = -q
        # "+ 0.0" turns -0.0 into 0.0.
        fmt = lambda values: "[" + ", ".join(f"{float(v) + 0.0:.9g}" for v in values) + "]"  # noqa: E731
        lines += [f"  {frame}:", f"    translation_m: {fmt(matrix[:3, 3])}", f"    rotation_wxyz: {fmt(q)}"]
    return "\n".join(lines) + "\n"


def synthetic_rig_transforms() -> dict[str, np.ndarray]:
    """``base_link <- sensor`` of every sensor of the built-in synthetic dataset, by frame name.

    The synthetic rig is fixed (it does not depend on the dataset config; image size only scales
    the intrinsics), so one calibration file serves every synthetic dataset.
    """
    from x3kd_core.data.synthetic.config import SynthConfig
    from x3kd_core.data.synthetic.sensors import camera_specs, lidar_spec, radar_specs
    from x3kd_ros.topics import sensor_frame

    specs = [*camera_specs(SynthConfig()), lidar_spec(), *radar_specs()]
    return {sensor_frame(spec.name): np.asarray(spec.to_ego, dtype=np.float64) for spec in specs}


if __name__ == "__main__":  # regenerate config/ros/calibration_synthetic.yaml
    import sys

    sys.stdout.write(
        calibration_yaml_text(
            "base_link",
            synthetic_rig_transforms(),
            "Extrinsics of the built-in synthetic dataset's sensor rig (fixed for every synthetic dataset).\n"
            "Written by `python -m x3kd_ros.extrinsics`; format: x3kd_ros/extrinsics.py.\n"
            "Used by the nodes where /tf_static is not available (see config/ros/detector.yaml).",
        )
    )
