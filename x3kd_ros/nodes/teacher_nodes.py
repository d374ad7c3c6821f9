"""ROS 2 teacher nodes: ``x3kd_lidar_teacher`` and ``x3kd_radar_teacher``.

At deployment only the camera student is needed; the teachers run online beside it so that the
comparison node (:mod:`x3kd_ros.nodes.comparison_node`) can report how well the student agrees with
them. Both publish exactly like the detector: ``vision_msgs/Detection3DArray`` in ``base_frame``
(class_id = nuScenes class name), optional MarkerArray, and ``/diagnostics``.

LiDAR teacher (:class:`LidarTeacherNode`)
    in   ``input_topic`` (default ``/lidar/top/points``): PointCloud2 with x y z intensity [ring]
         in the LiDAR frame (``sensor_frame``, default: the cloud's header frame).
    out  ``x3kd/teacher/lidar/detections`` (+ ``x3kd/teacher/lidar/markers``), stamped with the
         cloud's stamp.
    The points go to the ego frame through the extrinsics and become the teacher's (P, 5) input
    x, y, z, intensity, time_lag_s = 0 (one sweep, as the loader's keyframe sweep).

Radar teacher (:class:`RadarTeacherNode`)
    in   ``input_topics`` (default ``/radar/<radar>/points`` for the five nuScenes radars):
         PointCloud2 with x y z rcs vx_comp vy_comp in each radar's frame, synchronized with
         :class:`~x3kd_ros.sync.ApproximateTimeSync` (``sync.*`` parameters; default policy
         partial: a set with some radars missing is still used).
    out  ``x3kd/teacher/radar/detections`` (+ markers), stamped with the set's stamp.
    Each cloud goes to the ego frame (positions transformed, velocities rotated, as the loader
    does) and gets time_lag_s = set stamp - cloud stamp; the set's clouds are concatenated into
    the teacher's (Q, 7) input x, y, z, rcs, vx, vy, time_lag_s.

Both: points with a non-finite x/y/z are dropped and counted (``nan_points``); an empty cloud is
a valid input (the model runs on no points) but counted (``empty_clouds``: 0 points in the message;
``invalid_clouds``: points, none of them finite); unconvertible clouds are counted
(``conversion_errors``) and logged, never fatal. Growth of any of these between two reports makes
the ``/diagnostics`` status WARN with the counts in its message ("lidar: 2 clouds without a valid
point (1 empty, 1 all NaN), 3000 NaN points dropped"), and a throttled WARN is logged. A sensor
silent for ``silent_after_periods`` expected periods is named in the status (WARN, OK again when
it is back); stamps that jump back (looped bag, simulator reset) reset the radar synchronizer and
are reported once per jump. Timers run on the steady clock (``use_sim_time`` safe). The model runs on a worker thread with a bounded
queue (``busy_drops``). Only the newest sweep is used: earlier sweeps would need ego motion
compensation from ``/tf`` (the training loader uses the dataset's ego poses).
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import PointCloud2

from x3kd_core import geometry
from x3kd_core.structures import RADAR_NAMES, Boxes3D
from x3kd_ros import topics
from x3kd_ros.conversions import ConversionError, cloud_to_lidar_points, cloud_to_radar_points, stamp_to_ns
from x3kd_ros.nodes.extrinsics_source import ExtrinsicsProvider
from x3kd_ros.nodes.meters import LatencyWindow, RateMeter, StreamWatch, ThrottledLog
from x3kd_ros.nodes.model_node import ModelNode, model_param_specs
from x3kd_ros.nodes.params import (
    ParamSpec,
    ParameterError,
    declare_parameters,
    in_range,
    non_empty,
    one_of,
    resolve_device,
    same_length,
)
from x3kd_ros.nodes.qos import describe_qos, qos_profile
from x3kd_ros.nodes.spin import spin_node, steady_timer
from x3kd_ros.nodes.worker import BoundedWorker
from x3kd_ros.sync import ApproximateTimeSync, SyncConfig, SyncedSet, TimeJump

__all__ = [
    "load_teacher",
    "common_param_specs",
    "lidar_param_specs",
    "radar_param_specs",
    "LidarTeacherNode",
    "RadarTeacherNode",
    "lidar_main",
    "radar_main",
]

_SYNC_POLL_PERIOD_S = 0.02
# Per-input counters in the diagnostics, as "<source>.<kind>".
_SOURCE_COUNTERS = ("received", "points", "nan_points", "empty_clouds", "invalid_clouds", "conversion_errors",
                    "missing_extrinsics")


def _describe_jump(jump: TimeJump) -> str:
    return (f"time jumped back {jump.back_s:.3f} s on {jump.stream} (stamp {jump.from_ns / 1e9:.3f} -> "
            f"{jump.to_ns / 1e9:.3f}: looped bag, simulator reset?)"
            + ("; synchronizer reset" if jump.stream != "lidar" else ""))


def load_teacher(path: str, kind: str, device) -> Any:
    """The :class:`~x3kd_core.inference.TeacherPredictor` of a ``x3kd train`` checkpoint of ``kind``
    ("lidar" | "radar") on ``device``.

    Raises:
        ParameterError: the file is missing, unreadable or of another kind.
    """
    from x3kd_core.checkpoint import CheckpointError
    from x3kd_core.inference import TeacherPredictor

    try:
        return TeacherPredictor.from_checkpoint(path, kind, device)
    except CheckpointError as err:
        raise ParameterError(f"checkpoint: {err}") from None


def common_param_specs(have_model: bool = False) -> list[ParamSpec]:
    """Parameters of both teacher nodes (``have_model``: a model was injected, no checkpoint needed)."""
    shared = model_param_specs(
        have_model=have_model, checkpoint_description="teacher checkpoint (last.pt of `x3kd train` for this modality)",
        checkpoint_example="a teacher checkpoint", score_description="publish boxes with score >= this",
        queue_description="inputs waiting for the model; beyond it the oldest is dropped",
        inputs="the point cloud subscriptions", stream="sensor")
    return [*shared["model"], *shared["score"], *shared["queue"], *shared["output"], *shared["silence"],
            *shared["io"]]


def lidar_param_specs() -> list[ParamSpec]:
    """Parameters of the LiDAR teacher besides :func:`common_param_specs`."""
    return [
        ParamSpec("input_topic", topics.LIDAR_TOPIC, "LiDAR PointCloud2 topic", check=non_empty),
        ParamSpec("sensor_frame", "", "LiDAR frame looked up in the extrinsics; empty: each cloud's "
                  "header.frame_id"),
    ]


def radar_param_specs(stage: int, radars: Optional[list[str]] = None) -> list[ParamSpec]:
    """Parameters of the radar teacher besides :func:`common_param_specs`: stage 1 fixes the radars,
    stage 2 holds the per-radar lists (defaults derived from the radars)."""
    if stage == 1:
        return [
            ParamSpec("radars", list(RADAR_NAMES), "radar channels to subscribe", check=non_empty),
            ParamSpec("sync.slop_s", 0.08, "largest stamp spread within one radar set (s); nuScenes radars run "
                      "unsynchronized at 13 Hz (keyframe-only bags: <= 0.08 s apart)", "> 0",
                      in_range(0.0, low_open=True)),
            ParamSpec("sync.timeout_s", 0.3, "how long an incomplete set waits for missing radars (s)", ">= 0",
                      in_range(0.0)),
            ParamSpec("sync.policy", "partial", "incomplete sets: drop, or use the radars present (partial)",
                      "drop | partial", one_of("drop", "partial")),
            ParamSpec("sync.min_radars", 1, "with policy partial: fewest radars a set needs", ">= 1", in_range(1)),
            ParamSpec("sync.queue_size", 10, "clouds queued per radar for synchronization", "1..1000",
                      in_range(1, 1000)),
        ]
    radars = list(radars or RADAR_NAMES)
    n = len(radars)

    def check(value):
        return non_empty(value) or same_length("radar", n)(value)

    return [
        ParamSpec("input_topics", [topics.radar_topic(r) for r in radars], "PointCloud2 topic per radar "
                  "(same order as radars)", check=check),
        ParamSpec("radar_frames", [topics.sensor_frame(r) for r in radars], "frame id per radar, looked up in "
                  "the extrinsics (same order as radars)", check=check),
    ]


@dataclass
class _Input:
    """One model input: points (P, C) float32 in the ego frame, its stamp (ns) and receive time."""

    points: np.ndarray
    stamp_ns: int
    received_ns: int


class _TeacherNode(ModelNode):
    """What both teacher nodes share: parameters, model, worker, publishing, diagnostics."""

    modality = ""

    def __init__(self, node_name: str, model: Any, extra_specs: list[ParamSpec], **node_kwargs) -> None:
        super().__init__(node_name, model, extra_specs, **node_kwargs)

    def _build(self, model: Any, extra_specs: list[ParamSpec]) -> None:
        self._log = ThrottledLog(self.get_logger())
        self.params = declare_parameters(self, common_param_specs(model is not None) + extra_specs)
        params = self.params
        if model is None:
            self.predictor = load_teacher(params["checkpoint"], self.modality, resolve_device(params["device"]))
        else:
            from x3kd_core.inference import TeacherPredictor

            self.predictor = TeacherPredictor(model, self.modality)
        self.model = self.predictor.model
        self.device = self.predictor.device
        self.extrinsics = ExtrinsicsProvider(self, params["base_frame"], params["extrinsics_source"],
                                             params["calibration_file"])
        self.counts: collections.Counter = collections.Counter()
        self.input_counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self._lock = threading.Lock()
        self._output_rate = RateMeter()
        self._input_rate = RateMeter()
        self._model_ms = LatencyWindow()
        self._e2e_ms = LatencyWindow()
        self._watch = StreamWatch(self._sources(), params["silent_after_periods"], params["silent_after_min_s"])
        self.time_jumps = 0
        self.last_jump: Optional[TimeJump] = None

        base = topics.teacher_detections_topic(self.modality).lstrip("/")
        self.open_outputs(params, base, base.rsplit("/", 1)[0] + "/markers")
        self._qos_in = qos_profile(params["qos.input.reliability"], params["qos.input.depth"])
        self.worker = BoundedWorker(self.process, params["processing_queue_size"], f"{self.get_name()}_model",
                                    self.get_logger())
        steady_timer(self, params["diagnostics_period_s"], self.publish_diagnostics)

    def _sources(self) -> list[str]:
        """Names of the input streams (diagnostics keys): "lidar", or the radar channels."""
        return [self.modality]

    def _on_time_jump(self, jump: TimeJump) -> None:
        self.time_jumps += 1
        self.last_jump = jump
        self.get_logger().warning(_describe_jump(jump))

    def _check_cloud(self, source: str, cloud) -> None:
        """Count NaN points and clouds without a valid point (with a throttled WARN)."""
        if cloud.num_nan:
            self.input_counts[source]["nan_points"] += cloud.num_nan
        if len(cloud.points) == 0:
            kind = "invalid_clouds" if cloud.num_nan else "empty_clouds"
            what = f"all {cloud.num_nan} points NaN" if cloud.num_nan else "0 points"
            self._count(source, kind, f"cloud without a valid point ({what}); the model runs on no points")
        elif cloud.num_nan:
            self._log.warn(f"{source}:nan", f"{source}: {cloud.num_nan} NaN points dropped from a cloud")

    def _subscribe(self, topic: str, callback) -> Any:
        sub = self.create_subscription(PointCloud2, topic, callback, self._qos_in,
                                       qos_overriding_options=self.qos_overrides)
        self.get_logger().info(f"subscribed {sub.topic_name} (PointCloud2, QoS {describe_qos(sub.qos_profile)})")
        return sub

    def _count(self, source: str, kind: str, text: str, amount: int = 1) -> None:
        self.input_counts[source][kind] += amount
        self._log.warn(f"{source}:{kind}", f"{source}: {text}")

    def _to_ego(self, source: str, frame: str) -> Optional[np.ndarray]:
        matrix = self.extrinsics.lookup(frame)
        if matrix is None:
            self._count(source, "missing_extrinsics", f"cloud dropped: no transform {self.base_frame} <- {frame!r} yet")
        return matrix

    def predict(self, points: np.ndarray) -> Boxes3D:
        """The teacher's boxes for one input (P, C) in the ego frame (:class:`TeacherPredictor`)."""
        return self.predictor.predict(points)

    def process(self, item: _Input) -> None:
        start = time.perf_counter()
        boxes = self.predict(item.points)
        model_ms = (time.perf_counter() - start) * 1e3
        boxes, detections, markers = self.frame_messages(boxes, item.stamp_ns)
        now_ns = time.monotonic_ns()
        with self._lock:
            self.counts["published"] += 1
            self.counts["boxes"] += len(boxes)
            self._output_rate.tick(now_ns)
            self._model_ms.add(model_ms)
            self._e2e_ms.add((now_ns - item.received_ns) / 1e6)
        self.publish_frame(detections, markers)

    def diagnostics_values(self) -> dict[str, Any]:
        now_ns = time.monotonic_ns()
        values: dict[str, Any] = {}
        with self._lock:
            values["published"] = self.counts["published"]
            values["output_rate_hz"] = self._output_rate.rate_hz(now_ns)
            values["boxes_published"] = self.counts["boxes"]
            for key, window in (("model_ms", self._model_ms), ("end_to_end_ms", self._e2e_ms)):
                for stat, value in window.summary().items():
                    values[f"{key}.{stat}"] = value
        values["input_rate_hz"] = self._input_rate.rate_hz(now_ns)
        values.update(self.output_links())
        values["busy_drops"] = self.worker.dropped
        values["inference_errors"] = self.worker.errors
        values["time_jumps"] = self.time_jumps
        values.update(self._extra_diagnostics())
        for source in sorted(set(self.input_counts) | set(self._sources())):
            for kind in _SOURCE_COUNTERS:
                values[f"{source}.{kind}"] = self.input_counts[source][kind]
            values[f"{source}.silent_s"] = self._watch.seconds_since(source, now_ns)
        return values

    def _cloud_problems(self, values: dict[str, Any], last: dict[str, int]) -> list[str]:
        """"lidar: 2 clouds without a valid point (1 empty, 1 all NaN), 30 NaN points dropped"."""
        out = []
        for source in sorted(set(self.input_counts) | set(self._sources())):
            grown = {k: values[f"{source}.{k}"] - last.get(f"{source}.{k}", 0)
                     for k in ("empty_clouds", "invalid_clouds", "nan_points")}
            parts = []
            if grown["empty_clouds"] or grown["invalid_clouds"]:
                parts.append(f"{grown['empty_clouds'] + grown['invalid_clouds']} clouds without a valid point "
                             f"({grown['empty_clouds']} empty, {grown['invalid_clouds']} all NaN)")
            if grown["nan_points"]:
                parts.append(f"{grown['nan_points']} NaN points dropped")
            if parts:
                out.append(f"{source}: " + ", ".join(parts))
        return out

    def _extra_diagnostics(self) -> dict[str, Any]:
        return {}

    def publish_diagnostics(self) -> DiagnosticStatus:
        values = self.diagnostics_values()
        problems = self.input_problems(self.time_jumps, self.last_jump, _describe_jump, self._watch, "sensor")
        problems += self._cloud_problems(values, self.last_report)
        return self.publish_report(
            f"{self.modality} teacher", str(self.device), values, problems,
            lambda key: key.rsplit(".", 1)[-1] in ("conversion_errors", "missing_extrinsics", "busy_drops",
                                                   "dropped_sets"),
            received_any=any(c["received"] for c in self.input_counts.values()),
            waiting_message="no point clouds received yet")


class LidarTeacherNode(_TeacherNode):
    """LiDAR teacher node (see the module docstring).

    Args:
        model: a ``LidarDetector`` (or any module with the same ``forward`` / ``predict``); None
            loads it from the ``checkpoint`` parameter.
        node_name / **node_kwargs: as for ``rclpy.node.Node``.
    """

    modality = "lidar"

    def __init__(self, model: Any = None, node_name: str = "x3kd_lidar_teacher", **node_kwargs) -> None:
        # Stamps going back by more than this are reported as a time jump (no state to reset here).
        self._jump_ns = 50_000_000
        self._newest_stamp: Optional[int] = None
        super().__init__(node_name, model, lidar_param_specs(), **node_kwargs)
        self.subscription = self._subscribe(self.params["input_topic"], self._on_cloud)
        frame = self.params["sensor_frame"] or topics.sensor_frame(topics.LIDAR_CHANNEL)
        self.get_logger().info(self.extrinsics.describe([frame]))

    def _on_cloud(self, msg: PointCloud2) -> None:
        now_ns = time.monotonic_ns()
        source = "lidar"
        self.input_counts[source]["received"] += 1
        self._input_rate.tick(now_ns)
        self._watch.tick(source, now_ns)
        stamp_ns = stamp_to_ns(msg.header.stamp)
        if self._newest_stamp is not None and self._newest_stamp - stamp_ns > self._jump_ns:
            self._on_time_jump(TimeJump(source, self._newest_stamp, stamp_ns))
            self._newest_stamp = None
        self._newest_stamp = stamp_ns if self._newest_stamp is None else max(self._newest_stamp, stamp_ns)
        try:
            cloud = cloud_to_lidar_points(msg)
        except ConversionError as err:
            self._count(source, "conversion_errors", f"cloud dropped: {err}")
            return
        self._check_cloud(source, cloud)
        self.input_counts[source]["points"] += len(cloud.points)
        matrix = self._to_ego(source, self.params["sensor_frame"] or msg.header.frame_id)
        if matrix is None:
            return
        points = np.zeros((len(cloud.points), 5), dtype=np.float32)  # x y z intensity time_lag_s(=0)
        points[:, :3] = geometry.transform_points(matrix, cloud.points[:, :3].astype(np.float64))[:, :3]
        points[:, 3] = cloud.column("intensity")
        self.worker.submit(_Input(points, stamp_ns, now_ns))


@dataclass
class _RadarCloud:
    """One radar's points in the ego frame: (Q, 6) x, y, z, rcs, vx, vy."""

    points: np.ndarray
    stamp_ns: int
    received_ns: int


class RadarTeacherNode(_TeacherNode):
    """Radar teacher node (see the module docstring); arguments as :class:`LidarTeacherNode`."""

    modality = "radar"

    def __init__(self, model: Any = None, node_name: str = "x3kd_radar_teacher", **node_kwargs) -> None:
        # Stage 1 fixes the radars; the per-radar lists (stage 2) take their defaults from them.
        self.radars: list[str] = []
        super().__init__(node_name, model, radar_param_specs(1), **node_kwargs)
        try:
            self._build_radar()
        except BaseException:
            self.destroy_node()
            raise

    def _build_radar(self) -> None:
        radars = self.params["radars"]
        self._watch = StreamWatch(radars, self.params["silent_after_periods"], self.params["silent_after_min_s"])
        self.params.update(declare_parameters(self, radar_param_specs(2, radars)))
        params = self.params
        self.radars: list[str] = radars
        self._frames = dict(zip(radars, params["radar_frames"]))
        if params["sync.policy"] == "partial" and params["sync.min_radars"] > len(radars):
            raise ParameterError(f"sync.min_radars = {params['sync.min_radars']} exceeds the {len(radars)} radars")
        self.sync = ApproximateTimeSync(
            SyncConfig(slop_ns=int(params["sync.slop_s"] * 1e9), queue_size=params["sync.queue_size"],
                       timeout_ns=int(params["sync.timeout_s"] * 1e9), policy=params["sync.policy"],
                       min_streams=params["sync.min_radars"]),
            radars,
            on_time_jump=self._on_time_jump,
        )
        self.subscriptions_in = [self._subscribe(topic, partial(self._on_cloud, radar))
                                 for radar, topic in zip(radars, params["input_topics"])]
        self.get_logger().info(self.extrinsics.describe(self._frames.values()))
        steady_timer(self, _SYNC_POLL_PERIOD_S, self._poll_sync)

    def _on_cloud(self, radar: str, msg: PointCloud2) -> None:
        now_ns = time.monotonic_ns()
        self.input_counts[radar]["received"] += 1
        self._input_rate.tick(now_ns)
        self._watch.tick(radar, now_ns)
        try:
            cloud = cloud_to_radar_points(msg)
        except ConversionError as err:
            self._count(radar, "conversion_errors", f"cloud dropped: {err}")
            return
        self._check_cloud(radar, cloud)
        self.input_counts[radar]["points"] += len(cloud.points)
        matrix = self._to_ego(radar, self._frames[radar])
        if matrix is None:
            return
        points = np.zeros((len(cloud.points), 6), dtype=np.float32)  # x y z rcs vx vy (ego)
        points[:, :3] = geometry.transform_points(matrix, cloud.points[:, :3].astype(np.float64))[:, :3]
        points[:, 3] = cloud.column("rcs")
        # Ego-motion-compensated velocities are radar-frame vectors: rotate, do not translate.
        velocity = np.zeros((len(cloud.points), 3))
        velocity[:, 0], velocity[:, 1] = cloud.column("vx_comp"), cloud.column("vy_comp")
        points[:, 4:6] = (velocity @ matrix[:3, :3].T)[:, :2]
        stamp_ns = stamp_to_ns(msg.header.stamp)
        self._submit(self.sync.add(radar, stamp_ns, _RadarCloud(points, stamp_ns, now_ns), now_ns))

    def _poll_sync(self) -> None:
        self._submit(self.sync.poll(time.monotonic_ns()))

    def _submit(self, sets: list[SyncedSet]) -> None:
        for synced in sets:
            parts = [np.zeros((0, 7), dtype=np.float32)]
            for cloud in synced.items.values():
                lag = np.full((len(cloud.points), 1), (synced.stamp_ns - cloud.stamp_ns) / 1e9, dtype=np.float32)
                parts.append(np.concatenate([cloud.points, lag], axis=1))
            received = min(cloud.received_ns for cloud in synced.items.values())
            self.worker.submit(_Input(np.concatenate(parts), synced.stamp_ns, received))

    def _extra_diagnostics(self) -> dict[str, Any]:
        stats = self.sync.stats
        return {"sync.emitted": stats.emitted, "sync.partial": stats.partial, "sync.dropped_sets": stats.dropped_sets,
                "sync.late": stats.late, "sync.duplicates": stats.duplicates, "sync.overflow": stats.overflow}

    def _sources(self) -> list[str]:
        return list(self.radars)


def lidar_main(args: Optional[list[str]] = None) -> int:
    """``x3kd_lidar_teacher [--ros-args -p checkpoint:=... ...]``"""
    return spin_node(LidarTeacherNode, args)


def radar_main(args: Optional[list[str]] = None) -> int:
    """``x3kd_radar_teacher [--ros-args -p checkpoint:=... ...]``"""
    return spin_node(RadarTeacherNode, args)


if __name__ == "__main__":
    kinds = {"lidar": lidar_main, "radar": radar_main}
    if len(sys.argv) < 2 or sys.argv[1] not in kinds:
        sys.exit("usage: python -m x3kd_ros.nodes.teacher_nodes {lidar|radar} [--ros-args ...]")
    sys.exit(kinds[sys.argv.pop(1)]())
