"""The detector's output messages written straight to serialized CDR bytes (no message objects).

:func:`detections_cdr` / :func:`markers_cdr` return the bytes that
``rclpy.serialization.serialize_message`` gives for :func:`x3kd_ros.conversions.boxes_to_detections`
/ :func:`x3kd_ros.conversions.boxes_to_markers` of the same boxes, byte for byte; a publisher takes
them as they are (``Publisher.publish(bytes)`` hands them to the RMW without converting anything).

Why: building a message object costs a Python ``__init__`` per nested field (a Marker has 14
nested messages, a Detection3D 12, plus a 36-float covariance array each), and ``publish`` then
walks every one of them again to convert it to C. For 100 boxes that was ~14 ms for the markers and
~4 ms for the detections per frame set, against an ~85 ms model (BENCHMARKS.md, issue 13). Here the
per-box numbers are computed once for all boxes with numpy and each message is a handful of byte
strings joined at the end.

Layout: XCDR1 little endian (what Fast DDS and rclpy use for these plain types): a 4-byte
encapsulation header ``00 01 00 00``, then the fields in definition order, each aligned to its own
size (float64 to 8) relative to the first byte after that header; strings are a uint32 length that
counts a trailing NUL, the bytes, the NUL; sequences a uint32 count and the elements.

The writers follow the field lists of the message definitions they were written for
(:data:`EXPECTED_FIELDS`: vision_msgs 4.x, visualization_msgs with texture / uv_coordinates /
mesh_file as in ROS 2 Jazzy and later). :func:`layouts_match` compares those with the installed
definitions; where they differ (an older visualization_msgs, say) :func:`available` is False and
callers publish message objects instead.
"""

from __future__ import annotations

import struct
from typing import Optional

import numpy as np
from std_msgs.msg import Header

from x3kd_core.structures import DETECTION_CLASSES, Boxes3D

__all__ = ["EXPECTED_FIELDS", "layouts_match", "available", "detections_cdr", "markers_cdr"]

#: Field lists (``get_fields_and_field_types()``) the writers below are written for.
EXPECTED_FIELDS: dict[str, dict[str, str]] = {
    "std_msgs/Header": {"stamp": "builtin_interfaces/Time", "frame_id": "string"},
    "vision_msgs/Detection3DArray": {"header": "std_msgs/Header", "detections": "sequence<vision_msgs/Detection3D>"},
    "vision_msgs/Detection3D": {"header": "std_msgs/Header", "results":
                                "sequence<vision_msgs/ObjectHypothesisWithPose>", "bbox": "vision_msgs/BoundingBox3D",
                                "id": "string"},
    "vision_msgs/ObjectHypothesisWithPose": {"hypothesis": "vision_msgs/ObjectHypothesis",
                                             "pose": "geometry_msgs/PoseWithCovariance"},
    "vision_msgs/ObjectHypothesis": {"class_id": "string", "score": "double"},
    "geometry_msgs/PoseWithCovariance": {"pose": "geometry_msgs/Pose", "covariance": "double[36]"},
    "vision_msgs/BoundingBox3D": {"center": "geometry_msgs/Pose", "size": "geometry_msgs/Vector3"},
    "geometry_msgs/Pose": {"position": "geometry_msgs/Point", "orientation": "geometry_msgs/Quaternion"},
    "visualization_msgs/MarkerArray": {"markers": "sequence<visualization_msgs/Marker>"},
    "visualization_msgs/Marker": {
        "header": "std_msgs/Header", "ns": "string", "id": "int32", "type": "int32", "action": "int32",
        "pose": "geometry_msgs/Pose", "scale": "geometry_msgs/Vector3", "color": "std_msgs/ColorRGBA",
        "lifetime": "builtin_interfaces/Duration", "frame_locked": "boolean",
        "points": "sequence<geometry_msgs/Point>", "colors": "sequence<std_msgs/ColorRGBA>",
        "texture_resource": "string", "texture": "sensor_msgs/CompressedImage",
        "uv_coordinates": "sequence<visualization_msgs/UVCoordinate>", "text": "string",
        "mesh_resource": "string", "mesh_file": "visualization_msgs/MeshFile",
        "mesh_use_embedded_materials": "boolean"},
    "sensor_msgs/CompressedImage": {"header": "std_msgs/Header", "format": "string", "data": "sequence<uint8>"},
    "visualization_msgs/MeshFile": {"filename": "string", "data": "sequence<uint8>"},
}

_ENCAPSULATION = b"\x00\x01\x00\x00"  # CDR little endian, no options
_U32 = struct.Struct("<I")
_STAMP = struct.Struct("<iI")
_ZEROS = bytes(8)


def _message_class(name: str):
    import importlib

    package, msg = name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), msg)


def layouts_match() -> Optional[str]:
    """None if every installed definition has the fields :data:`EXPECTED_FIELDS` lists, else the
    first difference in words."""
    for name, fields in EXPECTED_FIELDS.items():
        try:
            installed = _message_class(name).get_fields_and_field_types()
        except (ImportError, AttributeError) as err:
            return f"{name}: {err}"
        if installed != fields:
            return f"{name} has fields {installed}, the CDR writer expects {fields}"
    return None


_AVAILABLE: Optional[bool] = None


def available() -> bool:
    """Whether :func:`detections_cdr` / :func:`markers_cdr` apply to the installed messages."""
    global _AVAILABLE
    if _AVAILABLE is None:
        _AVAILABLE = layouts_match() is None
    return _AVAILABLE


class _Writer:
    """Byte strings appended in order, with CDR alignment relative to the first payload byte."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def align(self, n: int) -> None:
        pad = -self.size % n
        if pad:
            self.parts.append(_ZEROS[:pad])
            self.size += pad

    def raw(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)

    def u32(self, value: int) -> None:
        self.align(4)
        self.raw(_U32.pack(value))

    def string(self, encoded: bytes) -> None:
        """``encoded``: :func:`_string` of the text (length, bytes, NUL)."""
        self.align(4)
        self.raw(encoded)

    def doubles(self, data: bytes) -> None:
        self.align(8)
        self.raw(data)

    def getvalue(self) -> bytes:
        return _ENCAPSULATION + b"".join(self.parts)


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return _U32.pack(len(data) + 1) + data + b"\x00"


def _header(header: Header) -> bytes:
    """Header as CDR starting at a 4-aligned offset (stamp, frame_id): 4-byte fields only, so the
    same bytes fit wherever the header starts on a multiple of 4."""
    return _STAMP.pack(int(header.stamp.sec), int(header.stamp.nanosec)) + _string(header.frame_id)


_CLASS_STRINGS = tuple(_string(name) for name in DETECTION_CLASSES)
_ONE = _U32.pack(1)


def _poses(boxes: Boxes3D) -> np.ndarray:
    """(N, 7) float64 position xyz + yaw-only quaternion xyzw, as conversions._pose writes them."""
    n = len(boxes)
    half = np.asarray(boxes.yaw, dtype=np.float64) / 2.0
    out = np.zeros((n, 7))
    out[:, 0:3] = np.asarray(boxes.center, dtype=np.float64).reshape(n, 3)
    out[:, 5] = np.sin(half)
    out[:, 6] = np.cos(half)
    return out


def detections_cdr(boxes: Boxes3D, header: Header) -> bytes:
    """Serialized ``vision_msgs/Detection3DArray``: the bytes of
    ``serialize_message(boxes_to_detections(boxes, header))``."""
    n = len(boxes)
    head = _header(header)
    # Per box, the 8-aligned run after the class name: score, hypothesis pose (7), covariance (36
    # zeros), bbox centre pose (7), size (3) -> 54 float64.
    rows = np.zeros((n, 54))
    if n:
        poses = _poses(boxes)
        rows[:, 0] = np.asarray(boxes.score, dtype=np.float64)
        rows[:, 1:8] = poses
        rows[:, 44:51] = poses
        rows[:, 51:54] = np.asarray(boxes.size_lwh, dtype=np.float64).reshape(n, 3)
    payload = rows.tobytes()
    labels = np.asarray(boxes.label).astype(np.int64).tolist()
    w = _Writer()
    w.raw(head)
    w.u32(n)
    step = 54 * 8
    for i in range(n):
        w.align(4)
        w.raw(head)
        w.u32(1)  # one result
        w.string(_CLASS_STRINGS[labels[i]])
        w.doubles(payload[i * step:(i + 1) * step])
        w.string(_string(boxes.token[i]))
    return w.getvalue()


# Marker constants (visualization_msgs/Marker)
_LINE_LIST, _CUBE, _TEXT_VIEW_FACING = 5, 1, 9
_ADD, _DELETEALL = 0, 3
_EMPTY = _string("")
_I32x3 = struct.Struct("<iii")
_F32x4 = struct.Struct("<4f")
_IDENTITY_POSE = struct.pack("<7d", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
_ZERO_SCALE = struct.pack("<3d", 0.0, 0.0, 0.0)


def _marker(w: _Writer, head: bytes, ns: bytes, marker_id: int, kind: int, action: int, pose: bytes,
            scale: bytes, color: bytes, lifetime: bytes, points: bytes, n_points: int, text: bytes) -> None:
    """One Marker; ``ns`` / ``text`` pre-encoded strings, ``pose`` 7 and ``scale`` 3 float64,
    ``color`` 4 float32, ``lifetime`` Duration, ``points`` n_points x 3 float64."""
    w.align(4)
    w.raw(head)
    w.string(ns)
    w.align(4)
    w.raw(_I32x3.pack(marker_id, kind, action))
    w.doubles(pose)
    w.raw(scale)  # follows 8-aligned float64s: already aligned
    w.raw(color)  # 4-byte floats after float64s: already aligned
    w.raw(lifetime)
    w.raw(b"\x00")  # frame_locked
    w.u32(n_points)
    if n_points:
        w.doubles(points)
    w.u32(0)  # colors
    w.string(_EMPTY)  # texture_resource
    # texture (CompressedImage): header with a zero stamp and empty frame, empty format, no data
    w.align(4)
    w.raw(_TEXTURE)
    w.u32(0)  # uv_coordinates
    w.string(text)
    w.string(_EMPTY)  # mesh_resource
    w.align(4)
    w.raw(_MESH_FILE)
    w.raw(b"\x00")  # mesh_use_embedded_materials


# 4-byte fields only, so constant whatever 4-aligned offset they start at.
_TEXTURE = _STAMP.pack(0, 0) + _EMPTY + bytes(3) + _EMPTY + bytes(3) + _U32.pack(0)
_MESH_FILE = _EMPTY + bytes(3) + _U32.pack(0)


def markers_cdr(boxes: Boxes3D, header: Header, style) -> bytes:
    """Serialized ``visualization_msgs/MarkerArray``: the bytes of
    ``serialize_message(boxes_to_markers(boxes, header, style))`` (``style``: a
    :class:`x3kd_ros.conversions.MarkerStyle`)."""
    from x3kd_ros.conversions import _EDGE_CORNERS, CLASS_COLORS_RGB, _duration

    n = len(boxes)
    head = _header(header)
    lifetime_msg = _duration(style.lifetime_s)
    lifetime = _STAMP.pack(int(lifetime_msg.sec), int(lifetime_msg.nanosec))
    labels = np.asarray(boxes.label).astype(np.int64).tolist()
    alpha = float(style.alpha)
    # ColorRGBA is float32: the python floats round to float32 on serialization, as struct does.
    colors = [_F32x4.pack(r, g, b, alpha) for r, g, b in CLASS_COLORS_RGB]
    w = _Writer()
    w.u32(1 + n * (2 if style.show_text else 1))
    # DELETEALL: a default Marker (identity orientation) with the header and action.
    _marker(w, head, _EMPTY, 0, 0, _DELETEALL, _IDENTITY_POSE, _ZERO_SCALE, bytes(16), bytes(8), b"", 0, _EMPTY)
    if n == 0:
        return w.getvalue()
    center = np.asarray(boxes.center, dtype=np.float64).reshape(n, 3)
    size = np.asarray(boxes.size_lwh, dtype=np.float64).reshape(n, 3)
    yaw = np.asarray(boxes.yaw, dtype=np.float64).reshape(n)
    box_ns = _string(f"{style.namespace}/boxes")
    if style.kind == "cube":
        poses = _poses(boxes).tobytes()
        scales = size.tobytes()
        n_points, points = 0, b""
    else:
        # 12 edges (24 corner points), the centre and the middle of the front face: 26 points.
        heading = np.stack([np.cos(yaw), np.sin(yaw), np.zeros(n)], axis=-1)
        front = center + (0.5 * size[:, 0])[:, None] * heading
        segments = np.concatenate([boxes.corners()[:, _EDGE_CORNERS], center[:, None], front[:, None]], axis=1)
        points = np.ascontiguousarray(segments, dtype=np.float64).tobytes()
        n_points = segments.shape[1]
        line_scale = struct.pack("<3d", float(style.line_width_m), 0.0, 0.0)
    if style.show_text:
        label_ns = _string(f"{style.namespace}/labels")
        text_scale = struct.pack("<3d", 0.0, 0.0, float(style.text_height_m))
        text_pos = np.zeros((n, 7))
        text_pos[:, 0:2] = center[:, 0:2]
        text_pos[:, 2] = center[:, 2] + 0.5 * size[:, 2] + float(style.text_height_m)
        text_pos[:, 6] = 1.0
        text_poses = text_pos.tobytes()
        scores = np.asarray(boxes.score).tolist()
    point_step = n_points * 24
    for i in range(n):
        color = colors[labels[i]]
        if style.kind == "cube":
            _marker(w, head, box_ns, i, _CUBE, _ADD, poses[i * 56:(i + 1) * 56], scales[i * 24:(i + 1) * 24],
                    color, lifetime, b"", 0, _EMPTY)
        else:
            _marker(w, head, box_ns, i, _LINE_LIST, _ADD, _IDENTITY_POSE, line_scale, color, lifetime,
                    points[i * point_step:(i + 1) * point_step], n_points, _EMPTY)
        if style.show_text:
            text = _string(f"{DETECTION_CLASSES[labels[i]]} {scores[i]:.2f}")
            _marker(w, head, label_ns, i, _TEXT_VIEW_FACING, _ADD, text_poses[i * 56:(i + 1) * 56], text_scale,
                    color, lifetime, b"", 0, text)
    return w.getvalue()
