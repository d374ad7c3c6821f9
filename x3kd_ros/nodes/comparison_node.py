"""ROS 2 node ``x3kd_comparison``: online agreement of the student's detections with a teacher's.

Topics (relative, so a namespace moves them; ``<t>`` is the ``teacher_name`` parameter)
    in   ``x3kd/detections``               vision_msgs/Detection3DArray of the student
    in   ``x3kd/teacher/<t>/detections``   vision_msgs/Detection3DArray of the teacher
    out  ``x3kd/comparison/<t>``           std_msgs/String holding one JSON object per pair
    out  ``/diagnostics``                  diagnostic_msgs/DiagnosticArray

Student and teacher messages are paired by header stamp with
:class:`~x3kd_ros.sync.ApproximateTimeSync` (two streams, ``pair.*`` parameters, policy drop): a
camera set and a LiDAR sweep of the same moment carry stamps a few tens of ms apart. Messages
without a partner are counted (``unpaired``), as are messages that do not convert
(``conversion_errors``) and pairs in different frames (``frame_mismatch``, not compared).

Each pair is matched by :mod:`x3kd_ros.comparison` (same class, BEV centre distance <=
``match_distance_m``; boxes under ``*_min_score`` ignored) and one JSON object is published::

    {"teacher": "lidar", "stamp_ns": <student stamp>, "teacher_stamp_ns": <teacher stamp>,
     "frame":  {summary of this pair},
     "window": {summary of the last window_frames pairs},
     "total":  {summary of every pair since start}}

where a summary is :meth:`x3kd_ros.comparison.AgreementSummary.to_dict`: ``frames``,
``student_boxes``, ``teacher_boxes``, ``matches``, ``precision``, ``recall``,
``mean_center_error_m``, ``mean_yaw_error_rad``, ``mean_size_error`` (null where undefined, e.g.
no matches) and ``per_class`` (the same per nuScenes class name with any box). A JSON String
(rather than DiagnosticArray key/values) keeps numbers typed and nested per class; the headline
window figures are repeated in ``/diagnostics`` for monitoring tools.
"""

from __future__ import annotations

import collections
import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.qos_overriding_options import QoSOverridingOptions
from std_msgs.msg import String

from x3kd_core.structures import Boxes3D
from x3kd_ros import topics
from x3kd_ros.comparison import AgreementStats, AgreementTracker, MatchConfig
from x3kd_ros.conversions import ConversionError, detections_to_boxes, stamp_to_ns
from x3kd_ros.nodes.meters import ThrottledLog, make_status
from x3kd_ros.nodes.params import ParamSpec, declare_parameters, in_range
from x3kd_ros.nodes.qos import describe_qos, qos_param_specs, qos_profile
from x3kd_ros.nodes.spin import spin_node, steady_timer
from x3kd_ros.sync import ApproximateTimeSync, SyncConfig, SyncedSet, TimeJump

__all__ = ["ComparisonNode", "comparison_param_specs", "main"]

STUDENT_IN = topics.DETECTIONS_TOPIC.lstrip("/")
_POLL_PERIOD_S = 0.05


def _teacher_name_check(value: str) -> Optional[str]:
    return None if re.fullmatch(r"[a-z][a-z0-9_]*", value) else "must be a lower-case name like 'lidar' (a topic token)"


def comparison_param_specs() -> list[ParamSpec]:
    return [
        ParamSpec("teacher_name", "lidar", "which teacher: reads x3kd/teacher/<name>/detections, publishes "
                  "x3kd/comparison/<name>", "[a-z][a-z0-9_]*", _teacher_name_check),
        ParamSpec("match_distance_m", 2.0, "largest BEV centre distance of a student-teacher match (m)", "> 0",
                  in_range(0.0, low_open=True)),
        ParamSpec("student_min_score", 0.3, "student boxes below this score are ignored", "[0, 1]",
                  in_range(0.0, 1.0)),
        ParamSpec("teacher_min_score", 0.3, "teacher boxes below this score are ignored", "[0, 1]",
                  in_range(0.0, 1.0)),
        ParamSpec("window_frames", 50, "pairs in the sliding-window figures", "1..100000", in_range(1, 100000)),
        ParamSpec("pair.slop_s", 0.06, "largest stamp difference of a student-teacher pair (s)", "> 0",
                  in_range(0.0, low_open=True)),
        ParamSpec("pair.timeout_s", 2.0, "how long a message waits for its partner (s); the slower model's "
                  "latency must fit in it", ">= 0", in_range(0.0)),
        ParamSpec("pair.queue_size", 20, "messages queued per side for pairing", "1..1000", in_range(1, 1000)),
        ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics reports (s)", "> 0",
                  in_range(0.0, low_open=True)),
        *qos_param_specs("qos.input", "reliable", 10, "the two detection subscriptions"),
        *qos_param_specs("qos.output", "reliable", 10, "the agreement publisher"),
    ]


@dataclass
class _Detections:
    boxes: Boxes3D
    frame_id: str
    stamp_ns: int


class ComparisonNode(Node):
    """Student-vs-teacher agreement node (see the module docstring).

    Args:
        node_name / **node_kwargs: as for ``rclpy.node.Node``.
    """

    def __init__(self, node_name: str = "x3kd_comparison", **node_kwargs) -> None:
        super().__init__(node_name, **node_kwargs)
        try:
            self._build()
        except BaseException:
            self.destroy_node()  # a half-built node must not stay in the context
            raise

    def _build(self) -> None:
        self._log = ThrottledLog(self.get_logger())
        self.params = params = declare_parameters(self, comparison_param_specs())
        self.teacher = params["teacher_name"]
        self.tracker = AgreementTracker(
            MatchConfig(max_center_distance_m=params["match_distance_m"],
                        student_min_score=params["student_min_score"],
                        teacher_min_score=params["teacher_min_score"]),
            window_frames=params["window_frames"],
        )
        self.sync = ApproximateTimeSync(
            SyncConfig(slop_ns=int(params["pair.slop_s"] * 1e9), queue_size=params["pair.queue_size"],
                       timeout_ns=int(params["pair.timeout_s"] * 1e9), policy="drop"),
            ["student", "teacher"],
            on_time_jump=self._on_time_jump,
        )
        self._jumps_reported = 0
        self.counts: collections.Counter = collections.Counter()
        self.last_result: Optional[dict] = None
        self._last_report: dict[str, int] = {}

        from vision_msgs.msg import Detection3DArray

        overrides = QoSOverridingOptions.with_default_policies()
        qos_in = qos_profile(params["qos.input.reliability"], params["qos.input.depth"])
        qos_out = qos_profile(params["qos.output.reliability"], params["qos.output.depth"])
        teacher_in = topics.teacher_detections_topic(self.teacher).lstrip("/")
        self.agreement_pub = self.create_publisher(String, topics.comparison_topic(self.teacher).lstrip("/"),
                                                   qos_out, qos_overriding_options=overrides)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS_TOPIC, 10)
        self.subscriptions_in = []
        for side, topic in (("student", STUDENT_IN), ("teacher", teacher_in)):
            sub = self.create_subscription(Detection3DArray, topic, lambda msg, side=side: self._on_detections(side, msg),
                                           qos_in, qos_overriding_options=overrides)
            self.subscriptions_in.append(sub)
            self.get_logger().info(f"{side}: {sub.topic_name} (QoS {describe_qos(sub.qos_profile)})")
        self.get_logger().info(f"publishing {self.agreement_pub.topic_name} (std_msgs/String JSON)")
        steady_timer(self, _POLL_PERIOD_S, self._poll)
        steady_timer(self, params["diagnostics_period_s"], self.publish_diagnostics)

    def _on_time_jump(self, jump: TimeJump) -> None:
        self.get_logger().warning(f"time jumped back {jump.back_s:.3f} s on the {jump.stream} detections "
                                  "(looped bag, simulator reset?): pairing reset")

    def _on_detections(self, side: str, msg) -> None:
        now_ns = time.monotonic_ns()
        self.counts[f"{side}.received"] += 1
        try:
            boxes = detections_to_boxes(msg)
        except ConversionError as err:
            self.counts[f"{side}.conversion_errors"] += 1
            self._log.warn(f"{side}:conversion", f"{side} detections dropped: {err}")
            return
        stamp_ns = stamp_to_ns(msg.header.stamp)
        self._handle(self.sync.add(side, stamp_ns, _Detections(boxes, msg.header.frame_id, stamp_ns), now_ns))

    def _poll(self) -> None:
        self._handle(self.sync.poll(time.monotonic_ns()))

    def _handle(self, pairs: list[SyncedSet]) -> None:
        for pair in pairs:
            student, teacher = pair.items["student"], pair.items["teacher"]
            if student.frame_id != teacher.frame_id:
                self.counts["frame_mismatch"] += 1
                self._log.warn("frame", f"pair not compared: student in {student.frame_id!r}, teacher in "
                               f"{teacher.frame_id!r}")
                continue
            frame = self.tracker.add(student.boxes, teacher.boxes)
            this = AgreementStats()
            this.add(frame)
            self.counts["pairs"] += 1
            result = {
                "teacher": self.teacher,
                "stamp_ns": student.stamp_ns,
                "teacher_stamp_ns": teacher.stamp_ns,
                "frame": this.summary().to_dict(),
                "window": self.tracker.window().summary().to_dict(),
                "total": self.tracker.total.summary().to_dict(),
            }
            self.last_result = result
            self.agreement_pub.publish(String(data=json.dumps(result, allow_nan=False)))

    def diagnostics_values(self) -> dict[str, Any]:
        stats = self.sync.stats
        window = self.tracker.window().summary()
        values: dict[str, Any] = {
            "pairs": self.counts["pairs"],
            "unpaired": stats.dropped_sets + stats.late + stats.overflow,
            "frame_mismatch": self.counts["frame_mismatch"],
            "time_jumps": stats.time_jumps,
        }
        for side in ("student", "teacher"):
            for kind in ("received", "conversion_errors"):
                values[f"{side}.{kind}"] = self.counts[f"{side}.{kind}"]
        values.update({"window.precision": window.precision, "window.recall": window.recall,
                       "window.mean_center_error_m": window.mean_center_error_m,
                       "window.mean_yaw_error_rad": window.mean_yaw_error_rad,
                       "window.mean_size_error": window.mean_size_error})
        return values

    def publish_diagnostics(self) -> DiagnosticStatus:
        values = self.diagnostics_values()
        last = self._last_report
        growing = [f"{k} +{v - last.get(k, 0)}" for k, v in values.items()
                   if k.rsplit(".", 1)[-1] in ("conversion_errors", "frame_mismatch") and v > last.get(k, 0)]
        problems = ["input problems: " + ", ".join(growing)] if growing else []
        if self.sync.stats.time_jumps > self._jumps_reported and self.sync.last_jump is not None:
            jump = self.sync.last_jump
            problems.insert(0, f"time jumped back {jump.back_s:.3f} s on the {jump.stream} detections: pairing reset")
            self._jumps_reported = self.sync.stats.time_jumps
        if problems:
            level, message = DiagnosticStatus.WARN, "; ".join(problems)
        elif values["pairs"] == 0:
            level, message = DiagnosticStatus.STALE, "no student-teacher pairs yet"
        else:
            level, message = DiagnosticStatus.OK, f"{values['pairs']} pairs compared"
        self._last_report = {k: v for k, v in values.items() if isinstance(v, int)}
        status = make_status(f"{self.get_name()}: comparison with {self.teacher} teacher", "", level, message, values)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self.diagnostics_pub.publish(array)
        return status


def main(args: Optional[list[str]] = None) -> int:
    """``x3kd_comparison [--ros-args -p teacher_name:=lidar ...]``"""
    return spin_node(ComparisonNode, args)


if __name__ == "__main__":
    sys.exit(main())
