"""Where a node gets ``base_link <- sensor`` matrices: :class:`ExtrinsicsProvider` serves them
from ``/tf_static`` (``tf2_msgs/TFMessage``, when that Python package is importable) and/or a
calibration YAML (:mod:`x3kd_ros.extrinsics`), as the ``extrinsics_source`` parameter says."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from x3kd_ros import topics
from x3kd_ros.extrinsics import ExtrinsicsError, StaticTransformTree, load_calibration_yaml
from x3kd_ros.nodes.meters import ThrottledLog
from x3kd_ros.nodes.params import ParamSpec, ParameterError, non_empty, one_of, resolve_config_file
from x3kd_ros.nodes.qos import describe_qos, static_tf_qos

__all__ = [
    "tf_message_type",
    "EXTRINSICS_SOURCES",
    "extrinsics_param_specs",
    "ExtrinsicsProvider",
]


def tf_message_type():
    """``tf2_msgs.msg.TFMessage``, or None where the tf2_msgs Python package is not installed
    (it is not on PyPI; a ROS 2 install provides it)."""
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError:
        return None
    return TFMessage


EXTRINSICS_SOURCES = ("auto", "tf_static", "file")


def extrinsics_param_specs(base_frame: str = topics.BASE_FRAME) -> list[ParamSpec]:
    """``base_frame``, ``extrinsics_source`` and ``calibration_file`` (read by :class:`ExtrinsicsProvider`)."""
    return [
        ParamSpec("base_frame", base_frame, "ego frame of the outputs (x forward, y left, z up)", check=non_empty),
        ParamSpec(
            "extrinsics_source", "auto",
            "where sensor -> base_frame transforms come from: tf_static (/tf_static, needs tf2_msgs), "
            "file (calibration_file), or auto (calibration_file if given, overridden per frame by "
            "/tf_static where tf2_msgs is importable)",
            "auto | tf_static | file", one_of(*EXTRINSICS_SOURCES)),
        ParamSpec(
            "calibration_file", "",
            "calibration YAML (format: x3kd_ros/extrinsics.py); relative names are looked up in the "
            "working directory, then in the package's config/ros folder. Empty: none"),
    ]


class ExtrinsicsProvider:
    """``base_frame <- sensor`` transforms for a node, from a calibration file and/or ``/tf_static``.

    Precedence: a frame connected to ``base_frame`` in the ``/tf_static`` tree uses that; otherwise
    the calibration file's transform (if any); otherwise :meth:`lookup` returns None (the caller
    counts it). Call :meth:`describe` for a log line.

    Raises (constructor):
        ParameterError: ``source`` cannot work here (``tf_static`` without tf2_msgs, ``file``
            without a file, ``auto`` with neither) or the calibration file is bad.
    """

    def __init__(self, node, base_frame: str, source: str, calibration_file: str) -> None:
        self.base_frame = base_frame
        self.source = source
        self._file_tree: Optional[StaticTransformTree] = None
        self._tf_tree = StaticTransformTree()
        self.calibration_path = ""
        self.tf_messages = 0
        self.tf_errors = 0
        self._log = ThrottledLog(node.get_logger())
        tf_type = tf_message_type()
        if source == "file" and not calibration_file:
            raise ParameterError("extrinsics_source is 'file' but calibration_file is empty")
        if source == "tf_static" and tf_type is None:
            raise ParameterError(
                "extrinsics_source is 'tf_static' but the tf2_msgs Python package is not installed here; "
                "set extrinsics_source:=file (or auto) and calibration_file:=<yaml>"
            )
        if source == "auto" and tf_type is None and not calibration_file:
            raise ParameterError(
                "no source of sensor extrinsics: tf2_msgs is not installed (no /tf_static) and "
                "calibration_file is empty; set calibration_file:=<yaml> (e.g. calibration_synthetic.yaml)"
            )
        if calibration_file and source in ("auto", "file"):
            try:
                path = resolve_config_file(calibration_file)
            except ParameterError as err:
                raise ParameterError(f"calibration_file: {err}") from None
            try:
                calibration = load_calibration_yaml(path)
            except ExtrinsicsError as err:
                raise ParameterError(f"calibration_file: {err}") from None
            if calibration.base_frame != base_frame:
                raise ParameterError(
                    f"calibration_file {path} gives transforms in {calibration.base_frame!r}, the node's "
                    f"base_frame is {base_frame!r}"
                )
            self._file_tree = calibration.tree()
            self.calibration_path = str(path)
        self.subscription = None
        if tf_type is not None and source in ("auto", "tf_static"):
            self.subscription = node.create_subscription(
                tf_type, topics.TF_STATIC_TOPIC, self.on_tf_static, static_tf_qos()
            )

    def on_tf_static(self, msg) -> None:
        """Add every transform of a ``tf2_msgs/TFMessage`` (bad ones are counted and logged)."""
        self.tf_messages += 1
        for transform in msg.transforms:
            try:
                self._tf_tree.add_transform_stamped(transform)
            except ExtrinsicsError as err:
                self.tf_errors += 1
                self._log.warn("tf_static", f"/tf_static: ignoring a transform: {err}")

    def lookup(self, frame: str) -> Optional[Any]:
        """(4, 4) matrix mapping ``frame`` points into ``base_frame``, or None if unknown."""
        matrix = self._tf_tree.lookup(self.base_frame, frame)
        if matrix is None and self._file_tree is not None:
            matrix = self._file_tree.lookup(self.base_frame, frame)
        return matrix

    def describe(self, frames: Iterable[str]) -> str:
        parts = []
        if self.calibration_path:
            parts.append(f"calibration file {self.calibration_path}")
        if self.subscription is not None:
            parts.append(f"{topics.TF_STATIC_TOPIC} ({describe_qos(static_tf_qos())}, overrides the file per frame)"
                         if self.calibration_path else f"{topics.TF_STATIC_TOPIC} ({describe_qos(static_tf_qos())})")
        missing = [f for f in frames if self.lookup(f) is None]
        known = f"; not yet known: {', '.join(missing)}" if missing else "; all frames known"
        return f"extrinsics {self.base_frame} <- sensor from " + " + ".join(parts) + known
