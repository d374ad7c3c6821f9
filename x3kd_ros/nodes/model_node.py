"""What the detector and the teacher nodes share: their parameters, the build / destroy pattern,
publishing a frame's boxes, and the ``/diagnostics`` report.

Both nodes run a model on a worker thread and answer each input with exactly one
``vision_msgs/Detection3DArray`` (plus a MarkerArray for RViz), and both report on
``/diagnostics`` with the same rules:

- **publishing** (:meth:`ModelNode.publish_boxes`): boxes below ``score_threshold`` are left
  out; the messages are written as CDR bytes (:mod:`x3kd_ros.message_bytes`, the same messages on
  the wire as :func:`~x3kd_ros.conversions.boxes_to_detections`) where the installed message
  definitions fit, else as message objects; markers are built only while the marker topic has a
  subscriber, unless its durability is transient local (then they are kept for late ones).
- **status** (:meth:`ModelNode.publish_report`): ERROR when the model raised since the last
  report, WARN naming every problem (a time jump, silent input streams, what the node itself
  checks, counters that grew), STALE before the first input, else OK with the frames published.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from x3kd_core.structures import Boxes3D
from x3kd_ros import message_bytes, topics
from x3kd_ros.conversions import MarkerStyle, boxes_to_detections, boxes_to_markers, ns_to_stamp
from x3kd_ros.nodes.extrinsics_source import extrinsics_param_specs
from x3kd_ros.nodes.meters import StreamWatch, make_status, silence_param_specs
from x3kd_ros.nodes.params import ParamSpec, check_device, in_range
from x3kd_ros.nodes.qos import qos_param_specs, qos_profile
from x3kd_ros.nodes.worker import BoundedWorker

__all__ = ["model_param_specs", "ModelNode"]


def model_param_specs(*, have_model: bool, checkpoint_description: str, checkpoint_example: str,
                      score_description: str, queue_description: str, inputs: str,
                      stream: str) -> dict[str, list[ParamSpec]]:
    """The parameters every model node declares, in groups a node places in its own order:
    ``model`` (checkpoint, device), ``score``, ``queue``, ``output`` (markers, diagnostics period),
    ``silence`` (silent ``stream`` s), ``io`` (QoS of ``inputs`` and of the outputs, extrinsics).

    ``have_model``: a model was injected, no checkpoint needed. ``checkpoint_example``: what the
    missing checkpoint should be ("a camera-student checkpoint").
    """

    def checkpoint_check(path: str) -> Optional[str]:
        if have_model:
            return None
        from pathlib import Path

        if not path:
            return f"is required (path to {checkpoint_example}, e.g. runs/<name>/last.pt)"
        return None if Path(path).is_file() else "file not found"

    return {
        "model": [
            ParamSpec("checkpoint", "", checkpoint_description, check=checkpoint_check),
            ParamSpec("device", "auto", "where the model runs: auto (cuda if available, else cpu), cpu, cuda, cuda:N",
                      "auto | cpu | cuda | cuda:N", check_device),
        ],
        "score": [ParamSpec("score_threshold", 0.0, score_description, "[0, 1]", in_range(0.0, 1.0))],
        "queue": [ParamSpec("processing_queue_size", 2, queue_description, "1..1000", in_range(1, 1000))],
        "output": [
            ParamSpec("publish_markers", True, "also publish a MarkerArray for RViz"),
            ParamSpec("marker_lifetime_s", 0.5, "RViz marker lifetime (s; 0 = forever)", ">= 0", in_range(0.0)),
            ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics reports (s)", "> 0",
                      in_range(0.0, low_open=True)),
        ],
        "silence": silence_param_specs(stream),
        "io": [
            *qos_param_specs("qos.input", "best_effort", 5, inputs),
            *qos_param_specs("qos.output", "reliable", 10, "the detection and marker publishers"),
            *extrinsics_param_specs(),
        ],
    }


class ModelNode(Node):
    """Base of the detector and teacher nodes (see the module docstring).

    A subclass defines ``_build(*args)`` (declare parameters, load the model, call
    :meth:`open_outputs`, subscribe, start ``self.worker``); a half-built node is destroyed
    before the error propagates. :meth:`destroy_node` stops the worker first.
    """

    def __init__(self, node_name: str, *build_args: Any, **node_kwargs) -> None:
        super().__init__(node_name, **node_kwargs)
        self.worker: Optional[BoundedWorker] = None
        try:
            self._build(*build_args)
        except BaseException:
            self.destroy_node()  # a half-built node must not stay in the context
            raise

    def _build(self, *args: Any) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------- outputs
    def open_outputs(self, params: dict[str, Any], detections_topic: str, markers_topic: str) -> None:
        """Publishers of the detections, markers (``publish_markers``) and ``/diagnostics``, with
        the output QoS; sets ``self.base_frame`` and ``self.score_threshold`` from ``params``."""
        self.base_frame: str = params["base_frame"]
        self.score_threshold: float = params["score_threshold"]
        self.marker_style = MarkerStyle(lifetime_s=params["marker_lifetime_s"]) if params["publish_markers"] else None
        self.qos_out = qos_profile(params["qos.output.reliability"], params["qos.output.depth"])
        self.qos_overrides = QoSOverridingOptions.with_default_policies()
        from vision_msgs.msg import Detection3DArray

        self.detections_pub = self.create_publisher(Detection3DArray, detections_topic, self.qos_out,
                                                    qos_overriding_options=self.qos_overrides)
        self.markers_pub = (self.create_publisher(MarkerArray, markers_topic, self.qos_out,
                                                  qos_overriding_options=self.qos_overrides)
                            if self.marker_style is not None else None)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS_TOPIC, 10)
        self._markers_kept = (self.markers_pub is not None
                              and self.markers_pub.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL)
        mismatch = message_bytes.layouts_match()
        self._cdr = mismatch is None
        if mismatch is not None:
            self.get_logger().info(f"publishing message objects (slower): {mismatch}")
        self._last_report: dict[str, int] = {}
        self._jumps_reported = 0

    def frame_messages(self, boxes: Boxes3D, stamp_ns: int) -> tuple[Boxes3D, Any, Optional[Any]]:
        """(boxes kept, detections, markers or None) for one answer stamped ``stamp_ns``."""
        boxes = boxes[boxes.score >= self.score_threshold]
        header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=self.base_frame)
        # Serialized bytes where the installed definitions fit x3kd_ros.message_bytes (the same
        # message on the wire, ~100x cheaper than message objects). Markers only while someone
        # listens, unless their QoS keeps them for late subscribers (transient local).
        detections = message_bytes.detections_cdr(boxes, header) if self._cdr else boxes_to_detections(boxes, header)
        markers = None
        if self.markers_pub is not None and (self._markers_kept or self.markers_pub.get_subscription_count() > 0):
            markers = (message_bytes.markers_cdr(boxes, header, self.marker_style) if self._cdr
                       else boxes_to_markers(boxes, header, self.marker_style))
        return boxes, detections, markers

    def output_links(self) -> dict[str, int]:
        """``detections_subscribers``: the subscriptions the detections publisher has matched (DDS
        matching on this side, which a reliable, volatile message needs to reach a subscriber; a
        subscriber that sees this publisher may not be matched by it yet). A graph that must not lose
        its first answers waits for this count in the diagnostics before sending input."""
        return {"detections_subscribers": self.detections_pub.get_subscription_count()}

    def publish_frame(self, detections: Any, markers: Optional[Any]) -> None:
        self.detections_pub.publish(detections)
        if markers is not None:
            self.markers_pub.publish(markers)

    # ------------------------------------------------------------------------------- diagnostics
    def input_problems(self, time_jumps: int, last_jump: Any, describe_jump: Callable[[Any], str],
                       watch: StreamWatch, stream: str) -> list[str]:
        """A time jump not reported yet (with how many there were) and the silent input streams."""
        problems = []
        if time_jumps > self._jumps_reported and last_jump is not None:
            jumps = time_jumps - self._jumps_reported
            problems.append(describe_jump(last_jump) + (f" ({jumps} jumps)" if jumps > 1 else ""))
            self._jumps_reported = time_jumps

        silent = watch.silent(time.monotonic_ns())
        if silent:
            problems.append(watch.describe(silent, stream))
        return problems

    @property
    def last_report(self) -> dict[str, int]:
        """The integer values of the previous report (what "grew" is measured against)."""
        return self._last_report

    def publish_report(self, what: str, hardware_id: str, values: dict[str, Any], problems: Sequence[str],
                       warn_when_grown: Callable[[str], bool], received_any: bool,
                       waiting_message: str) -> DiagnosticStatus:
        """Judge and publish one ``/diagnostics`` status named ``"<node>: <what>"``.

        ``problems``: what the node found; counters for which ``warn_when_grown(key)`` holds and
        that grew since the last report are added. ``received_any``: False -> STALE with
        ``waiting_message`` when nothing else is wrong.
        """
        last = self._last_report
        growing = [f"{key} +{value - last.get(key, 0)}" for key, value in values.items()
                   if warn_when_grown(key) and value > last.get(key, 0)]
        problems = list(problems)
        if growing:
            problems.append("input problems: " + ", ".join(growing))
        if values["inference_errors"] > last.get("inference_errors", 0):
            level, message = DiagnosticStatus.ERROR, "; ".join(["model errors (see the log)"] + problems)
        elif problems:
            level, message = DiagnosticStatus.WARN, "; ".join(problems)
        elif not received_any:
            level, message = DiagnosticStatus.STALE, waiting_message
        else:
            level, message = DiagnosticStatus.OK, f"{values['published']} frames published"
        self._last_report = {k: v for k, v in values.items() if isinstance(v, int)}
        status = make_status(f"{self.get_name()}: {what}", hardware_id, level, message, values)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self.diagnostics_pub.publish(array)
        return status

    def destroy_node(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        super().destroy_node()
