"""x3kd_ros.message_bytes: the detector's outputs written as CDR bytes equal, field by field, what
rclpy's own serialization of the message objects (x3kd_ros.conversions) delivers to a subscriber."""

from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from x3kd_core.structures import DETECTION_CLASSES, Boxes3D
from x3kd_ros import message_bytes
from x3kd_ros.conversions import MarkerStyle, boxes_to_detections, boxes_to_markers


def random_boxes(n: int, seed: int) -> Boxes3D:
    """Boxes of every class, yaws over the whole circle incl. +-pi, tokens of varied length
    (non-ASCII too), so strings shift the alignment of what follows them in every way."""
    rng = np.random.default_rng(seed)
    yaw = rng.uniform(-np.pi, np.pi, n)
    yaw[: min(n, 3)] = [np.pi, -np.pi, 0.0][: min(n, 3)]
    return Boxes3D(center=rng.uniform(-60, 60, (n, 3)), size_lwh=rng.uniform(0.2, 12, (n, 3)), yaw=yaw,
                   velocity=rng.normal(size=(n, 2)), label=np.arange(n) % len(DETECTION_CLASSES),
                   score=rng.uniform(0, 1, n), token=["ä" * (i % 5) + "t" * (i % 3) for i in range(n)])


def first_difference(a, b, path: str = "msg"):
    """Path and values of the first field where two messages differ (None if equal)."""
    if hasattr(a, "get_fields_and_field_types"):
        assert type(a) is type(b), path
        for name in a.get_fields_and_field_types():
            found = first_difference(getattr(a, name), getattr(b, name), f"{path}.{name}")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) or isinstance(a, np.ndarray) or type(a).__name__ == "array":
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b and type(a) is type(b) else f"{path}: {a!r} != {b!r}"


def received(data: bytes, msg_type):
    return deserialize_message(data, msg_type)


HEADERS = [Header(stamp=Time(sec=1_700_000_123, nanosec=456_789_012), frame_id="base_link"),
           Header(stamp=Time(sec=0, nanosec=0), frame_id=""),
           Header(stamp=Time(sec=5, nanosec=1), frame_id="ego_frame_7")]


def test_the_installed_messages_are_the_ones_the_writer_is_for():
    assert message_bytes.layouts_match() is None and message_bytes.available()


def test_a_changed_definition_is_named_and_not_written(monkeypatch):
    fields = dict(message_bytes.EXPECTED_FIELDS)
    fields["visualization_msgs/Marker"] = {k: v for k, v in fields["visualization_msgs/Marker"].items()
                                           if k not in ("texture", "uv_coordinates", "mesh_file")}  # ROS 2 Humble's
    monkeypatch.setattr(message_bytes, "EXPECTED_FIELDS", fields)
    problem = message_bytes.layouts_match()
    assert problem is not None and problem.startswith("visualization_msgs/Marker has fields") and "texture" in problem


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100])
@pytest.mark.parametrize("header", HEADERS, ids=["stamped", "empty", "odd_frame"])
def test_detections_bytes_equal_the_message_objects_field_by_field(n, header):
    boxes = random_boxes(n, seed=n)
    objects = serialize_message(boxes_to_detections(boxes, header))
    fast = message_bytes.detections_cdr(boxes, header)
    assert fast[:4] == objects[:4] and len(fast) == len(objects)
    expected, got = received(objects, Detection3DArray), received(fast, Detection3DArray)
    assert first_difference(expected, got) is None
    assert len(got.detections) == n


STYLES = [MarkerStyle(), MarkerStyle(kind="cube", show_text=False, lifetime_s=1.5),
          MarkerStyle(kind="cube", alpha=0.3, namespace="ab", text_height_m=1.25, lifetime_s=0.0),
          MarkerStyle(kind="lines", show_text=False, line_width_m=0.05, namespace="x3kd_teacher", lifetime_s=2.25)]


@pytest.mark.parametrize("n", [0, 1, 7, 100])
@pytest.mark.parametrize("style", STYLES, ids=["lines_text", "cube", "cube_text", "lines"])
@pytest.mark.parametrize("header", HEADERS[::2], ids=["stamped", "odd_frame"])
def test_marker_bytes_equal_the_message_objects_field_by_field(n, style, header):
    boxes = random_boxes(n, seed=10 + n)
    objects = serialize_message(boxes_to_markers(boxes, header, style))
    fast = message_bytes.markers_cdr(boxes, header, style)
    assert fast[:4] == objects[:4] and len(fast) == len(objects)
    # Compared as a subscriber gets them: colours are float32 on the wire in both.
    expected, got = received(objects, MarkerArray), received(fast, MarkerArray)
    assert first_difference(expected, got) is None
    assert len(got.markers) == 1 + n * (2 if style.show_text else 1)
    if n and style.kind == "lines":
        assert len(got.markers[1].points) == 26 and got.markers[1].points[24].x == boxes.center[0, 0]


def test_a_detection_that_differs_is_found():
    """The comparison above can fail: one score changed in the 100th box shows by its path."""
    boxes = random_boxes(100, seed=3)
    expected = received(serialize_message(boxes_to_detections(boxes, HEADERS[0])), Detection3DArray)
    boxes.score[99] += 1e-12
    got = received(message_bytes.detections_cdr(boxes, HEADERS[0]), Detection3DArray)
    assert first_difference(expected, got) == (
        f"msg.detections[99].results[0].hypothesis.score: {expected.detections[99].results[0].hypothesis.score!r} "
        f"!= {got.detections[99].results[0].hypothesis.score!r}")
