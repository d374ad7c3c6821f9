"""ROS 2 node ``x3kd_detector``: N cameras -> time synchronizer -> Predictor -> 3D detections.

Data flow (the node converts and publishes; matching is :mod:`x3kd_ros.sync`, the model is
:class:`x3kd_core.inference.Predictor`)::

    Image | CompressedImage per camera --decode, check against CameraInfo--> ApproximateTimeSync
    CameraInfo per camera                --> latest K and image size of that camera
    /tf_static and/or calibration YAML   --> camera -> base_link (x3kd_ros.nodes.extrinsics_source.ExtrinsicsProvider)
    synchronized set --> bounded work queue --> worker thread: Predictor.predict --> publish

The model runs in its own thread so that the executor keeps receiving (and the synchronizer keeps
timing sets by true receive times) while a frame is processed; when frames arrive faster than the
model runs, the oldest waiting set is dropped (``busy_drops``) once ``processing_queue_size`` sets
wait (latest wins, see "Drop policy" below).

Topics (inputs absolute, from parameters; outputs relative, so a namespace moves them)
    in   ``image_topics[i]``        sensor_msgs/Image (rgb8, bgr8, mono8, rgba8, bgra8, bayer_*8, uyvy /
                                    yuv422, yuyv / yuv422_yuy2; x3kd_ros.conversions.image_to_rgb) or
                                    CompressedImage (jpeg/png) when ``image_transport`` is compressed
    in   ``camera_info_topics[i]``  sensor_msgs/CameraInfo (K and size; images must match the size)
    in   ``/tf_static``             tf2_msgs/TFMessage (where tf2_msgs is importable)
    out  ``x3kd/detections``        vision_msgs/Detection3DArray: header = synchronized stamp +
                                    ``base_frame``; class_id = nuScenes class name, score in [0, 1]
    out  ``x3kd/detection_markers`` visualization_msgs/MarkerArray (``publish_markers``; built only
                                    while the topic has a subscriber, unless its durability is
                                    transient local; ``marker_arrays_published`` counts them)
    out  ``/diagnostics``           diagnostic_msgs/DiagnosticArray, every ``diagnostics_period_s``

Exactly one Detection3DArray is published per synchronized set that reached the model (an empty
array means "looked, found nothing"). A set none of whose cameras has known extrinsics is not
published (``sets_without_extrinsics``).

Images that arrive before their camera's first valid CameraInfo (the first frame of a bag: an
image and its CameraInfo share a stamp and the image comes first) are held, at most
``camera_info_wait_s`` and ``sync.queue_size`` per camera, and go on when the CameraInfo comes.

Malformed input never stops the node: it is dropped, logged (throttled per camera and kind) and
counted in the diagnostics under ``<camera>.<kind>``: ``conversion_errors`` (bad encoding, data
size, undecodable jpeg), ``size_mismatch`` (image size differs from its CameraInfo),
``missing_camera_info`` (no valid CameraInfo within ``camera_info_wait_s``), ``stale`` (stamp older
than ``max_input_age_s`` on the node clock), ``camera_info_errors`` (zero / NaN K),
``missing_extrinsics``. ``detections_subscribers`` is the number of subscriptions the detections
publisher has matched (:meth:`ModelNode.output_links`). The synchronizer's counters
(``sync.partial``, ``sync.dropped_sets``, ``sync.late``, ``sync.duplicates``, ``sync.overflow``)
say how sets were formed; latencies (each with ``last``, ``mean``, ``max``, ``p50``, ``p90``,
``p99`` over the last 100) are ``model_ms`` (Predictor.predict), ``end_to_end_ms`` (first image of
the set received -> detections published, i.e. sync wait + queue + model + conversion),
``convert_ms`` (per image: conversion + resize to the network input), ``overhead_ms`` (per set: its
images' conversions + the synchronizer's wait after the last one + building and publishing the
messages), ``overhead_ratio`` (overhead_ms / model_ms) and ``queue_ms`` (wait for a busy model);
``sync_wait_ms`` and ``publish_ms`` are two parts of ``overhead_ms`` (a set that waits for a late
or lost camera until ``sync.timeout_s`` shows in the first; building + publishing the messages is
the second).

Outputs are published as serialized CDR bytes written with numpy (:mod:`x3kd_ros.message_bytes`:
the same messages on the wire as :func:`~x3kd_ros.conversions.boxes_to_detections` /
:func:`~x3kd_ros.conversions.boxes_to_markers`, without building ~15 message objects per box); where
the installed message definitions differ from those it was written for, the node logs it and
publishes message objects.

Images are resized to the network input when they arrive (one ``cv2.resize`` from the message
buffer, :func:`x3kd_ros.conversions.image_to_rgb`), so no full-size image is kept or copied.

Drop policy when the model is slower than the cameras: latest wins. At most
``processing_queue_size`` sets wait; a new set that finds the queue full pushes out the oldest
waiting one (``busy_drops``), so the queue never grows and the newest set is always run next.
``backend`` picks torch or onnxruntime for the network (:class:`x3kd_core.inference.Predictor`).

The diagnostics status names what is wrong: WARN with "CAM_BACK silent for 3.2 s" for a camera
without images for ``silent_after_periods`` expected frame periods (OK again when it is back;
``<camera>.silent_s`` holds the seconds since its last image); "images arriving at 21 % of the
camera rate ...: check the DDS transport / profile" when a camera's received stamps have gaps,
i.e. fewer than ``transport_warn_percent`` of the frames the stamps imply arrive over the last
5 s (:class:`~x3kd_ros.nodes.meters.DeliveryMeter`; ``<camera>.arriving_percent`` and
``<camera>.camera_rate_hz`` hold the figures): the sign of a transport that loses big images,
README "Big images"; "time jumped back 1.00 s on
CAM_FRONT" after stamps went backwards (a looped bag, a simulator reset: the synchronizer is reset,
see :mod:`x3kd_ros.sync`, and one WARN line is logged per jump), and the counters above that grew.
Timers run on the steady clock, so ``use_sim_time:=true`` with a bag's ``/clock`` works.

Parameters: see :func:`detector_param_specs` (each is declared with a description; ``ros2 param
describe`` shows it); defaults for a deployment are in ``config/ros/detector.yaml``.

One file on purpose (issue 14): it is one node (its parameters, callbacks and worker); what
nodes share already lives in :mod:`x3kd_ros.nodes` (model_node, params, qos, meters, worker,
extrinsics_source, spin).
"""

from __future__ import annotations

import collections
import math
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from x3kd_core.structures import CAMERA_NAMES
from x3kd_ros import topics
from x3kd_ros.conversions import (
    ConversionError,
    ImageSizeError,
    camera_info_to_intrinsics,
    compressed_to_rgb,
    image_to_rgb,
    stamp_to_ns,
)
from x3kd_ros.nodes.extrinsics_source import ExtrinsicsProvider
from x3kd_ros.nodes.meters import DeliveryMeter, LatencyWindow, RateMeter, StreamWatch, ThrottledLog
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

__all__ = ["DetectorNode", "detector_param_specs", "main"]

NODE_NAME = "x3kd_detector"
#: Relative output names: ``/x3kd/...`` in the root namespace, as :mod:`x3kd_ros.topics` lists them.
DETECTIONS_OUT = topics.DETECTIONS_TOPIC.lstrip("/")
MARKERS_OUT = topics.DETECTION_MARKERS_TOPIC.lstrip("/")

# How often queued sets are checked for their timeout (s); well below any sensible sync timeout.
_SYNC_POLL_PERIOD_S = 0.02
# Per-camera counters reported in the diagnostics (in this order).
_CAMERA_COUNTERS = ("received", "conversion_errors", "size_mismatch", "missing_camera_info", "stale",
                    "camera_info_errors", "missing_extrinsics")
# Counters whose growth between two reports makes the status WARN.
_WARN_COUNTERS = ("conversion_errors", "size_mismatch", "missing_camera_info", "stale", "camera_info_errors",
                  "missing_extrinsics")
_WARN_GLOBAL = ("busy_drops", "sync.dropped_sets", "sets_without_extrinsics")
# Stamp-time window over which a camera's delivered fraction is judged (s).
_DELIVERY_WINDOW_S = 5.0


def describe_jump(jump: TimeJump) -> str:
    """One line about a backwards time jump (log and diagnostics)."""
    flushed = (f"; {jump.flushed_sets} pending set(s) of the old timeline flushed" if jump.flushed_sets else "")
    return (f"time jumped back {jump.back_s:.3f} s on {jump.stream} (stamp {jump.from_ns / 1e9:.3f} -> "
            f"{jump.to_ns / 1e9:.3f}: looped bag, simulator reset?): synchronizer reset{flushed}")


def describe_lossy(lossy: dict[str, tuple[int, int, float]]) -> str:
    """"images arriving at 21 % of the camera rate (CAM_FRONT 19 %, ...; 12.0 Hz by their stamps): check
    the DDS transport / profile ..." for cameras -> (received, expected, period s)."""
    received = sum(r for r, _, _ in lossy.values())
    expected = sum(e for _, e, _ in lossy.values())
    periods = sorted(p for _, _, p in lossy.values())
    per_cam = ", ".join(f"{cam} {100.0 * r / e:.0f} %" for cam, (r, e, _) in lossy.items())
    return (f"images arriving at {100.0 * received / expected:.0f} % of the camera rate ({per_cam}; "
            f"{1.0 / periods[len(periods) // 2]:.1f} Hz by their stamps, last {_DELIVERY_WINDOW_S:g} s): "
            "check the DDS transport / profile of the camera publisher (README: Big images)")


def detector_param_specs(stage: int, cameras: Optional[list[str]] = None, transport: str = "raw",
                         have_predictor: bool = False) -> list[ParamSpec]:
    """The node's parameters. Stage 1 fixes the cameras and transport; stage 2 (per-camera lists)
    takes its defaults from them."""
    if stage == 1:
        shared = model_param_specs(
            have_model=have_predictor, checkpoint_description="camera-student checkpoint (last.pt of `x3kd train`)",
            checkpoint_example="a camera-student checkpoint",
            score_description="publish boxes with score >= this (the model's own decoding threshold applies first)",
            queue_description="synchronized sets waiting for the model; a new set that finds it full pushes out the "
                              "oldest waiting one (latest wins; counted as busy_drops)",
            inputs="the image and CameraInfo subscriptions", stream="camera")
        return [
            ParamSpec("cameras", list(CAMERA_NAMES), "camera channels to subscribe, in any order (each must be "
                      "one of the checkpoint's cameras; those not listed count as missing)", check=non_empty),
            ParamSpec("image_transport", "raw", "image messages: raw (sensor_msgs/Image) or compressed "
                      "(sensor_msgs/CompressedImage, jpeg/png)", "raw | compressed", one_of("raw", "compressed")),
            *shared["model"],
            ParamSpec("backend", "torch", "what runs the network: torch, or onnxruntime (CPU; the checkpoint "
                      "exported to ONNX at start-up, or onnx_file)", "torch | onnxruntime",
                      one_of("torch", "onnxruntime")),
            ParamSpec("onnx_file", "", "with backend onnxruntime: a file from `x3kd export` of this checkpoint "
                      "(empty: export in memory at start-up)"),
            *shared["score"],
            ParamSpec("sync.slop_s", 0.06, "largest stamp spread within one synchronized camera set (s); keep it "
                      "below half the frame period", "> 0", in_range(0.0, low_open=True)),
            ParamSpec("sync.timeout_s", 0.3, "how long an incomplete set waits for missing cameras (s)", ">= 0",
                      in_range(0.0)),
            ParamSpec("sync.policy", "partial", "incomplete sets: drop them, or run the model on the cameras "
                      "present (partial)", "drop | partial", one_of("drop", "partial")),
            ParamSpec("sync.min_cameras", 1, "with policy partial: fewest cameras a set needs", ">= 1", in_range(1)),
            ParamSpec("sync.queue_size", 10, "images queued per camera for synchronization", "1..1000",
                      in_range(1, 1000)),
            ParamSpec("sync.time_jump_s", 0.0, "a camera's stamp going back by more than this resets the "
                      "synchronizer (looped bag, simulator reset; s; 0 = sync.slop_s)", ">= 0", in_range(0.0)),
            ParamSpec("camera_info_wait_s", 1.0, "how long an image that came before its camera's first valid "
                      "CameraInfo is held for it (s; 0 = drop it at once)", ">= 0", in_range(0.0)),
            *shared["silence"],
            ParamSpec("transport_warn_percent", 90.0, "WARN in /diagnostics when a camera's images arrive at "
                      "fewer than this percent of the frames its stamps say it sent (gaps in the stamp "
                      "sequence, last 5 s): a DDS transport losing big images; 0 = off", "[0, 100]",
                      in_range(0.0, 100.0)),
            ParamSpec("max_input_age_s", 0.0, "drop images whose stamp is older than this on the node clock "
                      "(s; 0 = off; use with live sensors or use_sim_time)", ">= 0", in_range(0.0)),
            *shared["queue"],
            *shared["output"],
            *shared["io"],
        ]
    cameras = list(cameras or CAMERA_NAMES)
    n = len(cameras)
    compressed = transport == "compressed"

    def list_check(value):
        return non_empty(value) or same_length("camera", n)(value)

    return [
        ParamSpec("image_topics", [topics.camera_image_topic(c, compressed) for c in cameras],
                  "image topic per camera (same order as cameras)", check=list_check),
        ParamSpec("camera_info_topics", [topics.camera_info_topic(c) for c in cameras],
                  "CameraInfo topic per camera (same order as cameras)", check=list_check),
        ParamSpec("camera_frames", [topics.sensor_frame(c) for c in cameras],
                  "optical frame id per camera, looked up in the extrinsics (same order as cameras)",
                  check=list_check),
        ParamSpec("sync.offsets_s", [0.0] * n, "per camera, how far its stamps run behind on purpose (s); "
                  "subtracted before matching (x3kd_ros.sync)", check=same_length("camera", n)),
    ]


@dataclass
class _CameraFrame:
    """One received, decoded image waiting for its set.

    rgb: (H, W, 3) uint8, already at the network input when ``resized``; k: (3, 3) K of exactly
    ``rgb`` (pixels); received_ns: monotonic receive time; ready_ns: monotonic time after
    conversion; convert_ms: conversion + resize time.
    """

    rgb: np.ndarray
    k: np.ndarray
    received_ns: int
    ready_ns: int = 0
    convert_ms: float = 0.0
    resized: bool = False


class DetectorNode(ModelNode):
    """The camera detector node (see the module docstring).

    Args:
        predictor: an object with ``predict(images, intrinsics, cam_to_ego) -> Boxes3D``, a
            ``cameras`` tuple and a ``device``; None builds :class:`~x3kd_core.inference.Predictor`
            from the ``checkpoint`` parameter (tests inject small fakes here).
        node_name: ROS node name (``__node:=`` remapping overrides it as usual).
        **node_kwargs: passed to ``rclpy.node.Node`` (``context``, ``cli_args``, ``parameter_overrides``).

    Raises:
        ParameterError: invalid parameters or a checkpoint that does not fit them.
    """

    def __init__(self, predictor: Any = None, node_name: str = NODE_NAME, **node_kwargs) -> None:
        super().__init__(node_name, predictor, **node_kwargs)

    def _build(self, predictor: Any) -> None:
        self._log = ThrottledLog(self.get_logger())
        params = declare_parameters(self, detector_param_specs(1, have_predictor=predictor is not None))
        params.update(declare_parameters(
            self, detector_param_specs(2, params["cameras"], params["image_transport"])))
        self.params = params
        self.cameras: list[str] = params["cameras"]
        self._frames = dict(zip(self.cameras, params["camera_frames"]))
        self._compressed = params["image_transport"] == "compressed"
        self._max_age_ns = int(params["max_input_age_s"] * 1e9)

        if predictor is None:
            predictor = self._load_predictor(params["checkpoint"], params["device"], params["backend"],
                                             params["onnx_file"])
        self.predictor = predictor
        # A predictor that says how it resizes gets images resized at receive time, straight from the
        # message buffer (x3kd_ros.conversions.image_to_rgb(resize=...)); others get full-size images.
        self._resize_at_receive = hasattr(predictor, "input_transform")
        self._transforms: dict[str, tuple[Any, Any, np.ndarray]] = {}  # cam -> (CameraIntrinsics, transform, K)
        unknown = [c for c in self.cameras if c not in predictor.cameras]
        if unknown:
            raise ParameterError(f"cameras {unknown} are not cameras of the checkpoint ({', '.join(predictor.cameras)})")
        self._model_index = {cam: list(predictor.cameras).index(cam) for cam in self.cameras}

        if params["sync.policy"] == "partial" and params["sync.min_cameras"] > len(self.cameras):
            raise ParameterError(f"sync.min_cameras = {params['sync.min_cameras']} exceeds the {len(self.cameras)} cameras")
        self.sync = ApproximateTimeSync(
            SyncConfig(
                slop_ns=int(params["sync.slop_s"] * 1e9),
                queue_size=params["sync.queue_size"],
                timeout_ns=int(params["sync.timeout_s"] * 1e9),
                policy=params["sync.policy"],
                min_streams=params["sync.min_cameras"],
                offsets_ns={c: int(o * 1e9) for c, o in zip(self.cameras, params["sync.offsets_s"])},
                jump_ns=int(params["sync.time_jump_s"] * 1e9) or None,
            ),
            self.cameras,
            on_time_jump=self._on_time_jump,
        )
        self.extrinsics = ExtrinsicsProvider(self, params["base_frame"], params["extrinsics_source"],
                                             params["calibration_file"])

        # Counters: per camera (executor thread) and of the worker (under the lock).
        self.camera_counts = {cam: collections.Counter() for cam in self.cameras}
        self._input_rates = {cam: RateMeter() for cam in self.cameras}
        self._watch = StreamWatch(self.cameras, params["silent_after_periods"], params["silent_after_min_s"])
        # Gaps in each camera's received stamps: a transport losing images (README: Big images).
        self._delivery = {
            cam: DeliveryMeter(window_s=_DELIVERY_WINDOW_S, silent_after_periods=params["silent_after_periods"],
                               silent_after_min_s=params["silent_after_min_s"],
                               jump_s=self.sync.config.jump_threshold_ns / 1e9)
            for cam in self.cameras}
        self._transport_warn = params["transport_warn_percent"] / 100.0
        self._intrinsics: dict[str, Any] = {}
        # Images waiting for their camera's first valid CameraInfo: (message, receive time ns).
        self._held: dict[str, collections.deque] = {cam: collections.deque() for cam in self.cameras}
        self._hold_ns = int(params["camera_info_wait_s"] * 1e9)
        self._lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self._output_rate = RateMeter()
        self._model_ms = LatencyWindow()
        self._e2e_ms = LatencyWindow()
        # Node overhead per set: conversion + resize of its images, synchronizer wait, publishing;
        # the wait for a busy model (queue) is reported apart.
        self._convert_ms = LatencyWindow()      # per image
        self._overhead_ms = LatencyWindow()     # per set
        self._overhead_ratio = LatencyWindow()  # per set: overhead / model time
        self._queue_ms = LatencyWindow()        # per set
        self._sync_wait_ms = LatencyWindow()    # per set: last image ready -> set left the synchronizer
        self._publish_ms = LatencyWindow()      # per set: building + publishing the output messages
        self.open_outputs(params, DETECTIONS_OUT, MARKERS_OUT)
        overrides = self.qos_overrides

        qos_in = qos_profile(params["qos.input.reliability"], params["qos.input.depth"])
        image_type = CompressedImage if self._compressed else Image
        self._subscriptions_in = []
        for cam, image_topic, info_topic in zip(self.cameras, params["image_topics"], params["camera_info_topics"]):
            image_sub = self.create_subscription(image_type, image_topic, partial(self._on_image, cam), qos_in,
                                                 qos_overriding_options=overrides)
            info_sub = self.create_subscription(CameraInfo, info_topic, partial(self._on_camera_info, cam), qos_in,
                                                qos_overriding_options=overrides)
            self._subscriptions_in += [image_sub, info_sub]
            self.get_logger().info(
                f"{cam}: {image_sub.topic_name} ({image_type.__name__}, QoS {describe_qos(image_sub.qos_profile)}) + "
                f"{info_sub.topic_name} (QoS {describe_qos(info_sub.qos_profile)}), frame {self._frames[cam]}")
        self.get_logger().info(self.extrinsics.describe(self._frames.values()))
        self.get_logger().info(
            f"model on {predictor.device}, cameras {list(predictor.cameras)}; sync {params['sync.policy']} "
            f"slop {params['sync.slop_s']} s timeout {params['sync.timeout_s']} s; publishing "
            f"{self.detections_pub.topic_name} (QoS {describe_qos(self.qos_out)})")

        steady_timer(self, _SYNC_POLL_PERIOD_S, self._poll_sync)
        steady_timer(self, params["diagnostics_period_s"], self.publish_diagnostics)
        self.worker = BoundedWorker(lambda job: self.process(*job), params["processing_queue_size"],
                                    f"{self.get_name()}_model", self.get_logger())

    # ------------------------------------------------------------------------------- set-up
    def _load_predictor(self, checkpoint: str, device: str, backend: str, onnx_file: str):
        from x3kd_core.inference import Predictor
        from x3kd_core.checkpoint import CheckpointError

        if backend == "onnxruntime":
            if device not in ("auto", "cpu"):
                raise ParameterError(f"device = {device!r}: backend onnxruntime runs on the cpu here")
            device = "cpu"
        if onnx_file and backend != "onnxruntime":
            raise ParameterError("onnx_file is set but backend is torch (set backend:=onnxruntime)")
        try:
            return Predictor.from_checkpoint(checkpoint, device=resolve_device(device), backend=backend,
                                             onnx_model=onnx_file or None)
        except CheckpointError as err:
            raise ParameterError(f"checkpoint: {err}") from None
        except (ValueError, FileNotFoundError) as err:
            raise ParameterError(f"backend {backend}: {err}") from None

    # ------------------------------------------------------------------------------- inputs
    def _count(self, cam: str, kind: str, text: str) -> None:
        self.camera_counts[cam][kind] += 1
        self._log.warn(f"{cam}:{kind}", f"{cam}: {text}")

    def _on_camera_info(self, cam: str, msg: CameraInfo) -> None:
        try:
            self._intrinsics[cam] = camera_info_to_intrinsics(msg)
        except ConversionError as err:
            self._count(cam, "camera_info_errors", f"CameraInfo ignored: {err}")
            return
        held = self._held[cam]
        while held:  # images that came first, in their order
            image, received_ns = held.popleft()
            self._use_image(cam, image, received_ns, self._intrinsics[cam])

    def _on_time_jump(self, jump: TimeJump) -> None:
        # The synchronizer has reset itself; this node keeps no other per-stamp state per camera.
        self.get_logger().warning(describe_jump(jump))

    def _on_image(self, cam: str, msg) -> None:
        now_ns = time.monotonic_ns()
        self.camera_counts[cam]["received"] += 1
        self._input_rates[cam].tick(now_ns)
        self._watch.tick(cam, now_ns)
        stamp_ns = stamp_to_ns(msg.header.stamp)
        self._delivery[cam].tick(stamp_ns)
        if self._max_age_ns > 0:
            age_ns = self.get_clock().now().nanoseconds - stamp_ns
            if age_ns > self._max_age_ns:
                self._count(cam, "stale", f"image dropped: stamp is {age_ns / 1e9:.3f} s old "
                            f"(max_input_age_s = {self._max_age_ns / 1e9})")
                return
        intrinsics = self._intrinsics.get(cam)
        if intrinsics is None:
            if self._hold_ns <= 0:
                self._count(cam, "missing_camera_info", "image dropped: no valid CameraInfo received yet")
                return
            held = self._held[cam]
            held.append((msg, now_ns))
            if len(held) > self.sync.config.queue_size:
                held.popleft()
                self._count(cam, "missing_camera_info", "image dropped: too many images waiting for the first "
                            "valid CameraInfo")
            return
        self._use_image(cam, msg, now_ns, intrinsics)

    def _expire_held(self, now_ns: int) -> None:
        for cam, held in self._held.items():
            while held and now_ns - held[0][1] > self._hold_ns:
                held.popleft()
                self._count(cam, "missing_camera_info", f"image dropped: no valid CameraInfo within "
                            f"camera_info_wait_s = {self._hold_ns / 1e9:g} s")

    def _network_transform(self, cam: str, intrinsics) -> tuple[Any, np.ndarray]:
        """(resize transform, K of the resized image) for this camera's CameraInfo (cached)."""
        cached = self._transforms.get(cam)
        if cached is None or cached[0] is not intrinsics:
            transform = self.predictor.input_transform(intrinsics.image_hw)
            cached = (intrinsics, transform, transform.intrinsics(intrinsics.k))
            self._transforms[cam] = cached
        return cached[1], cached[2]

    def _size_mismatch(self, cam: str, got_hw: tuple[int, int], intrinsics) -> None:
        self._count(cam, "size_mismatch", f"image dropped: it is {got_hw[0]} x {got_hw[1]} but its "
                    f"CameraInfo is for {intrinsics.image_hw[0]} x {intrinsics.image_hw[1]}")

    def _use_image(self, cam: str, msg, now_ns: int, intrinsics) -> None:
        """Decode (and resize to the network input), check against the CameraInfo and hand to the
        synchronizer (``now_ns``: receive time)."""
        stamp_ns = stamp_to_ns(msg.header.stamp)
        start = time.perf_counter()
        transform, k = None, intrinsics.k
        if self._resize_at_receive:
            if not self._compressed and (int(msg.height), int(msg.width)) != intrinsics.image_hw:
                self._size_mismatch(cam, (int(msg.height), int(msg.width)), intrinsics)
                return
            try:
                transform, k = self._network_transform(cam, intrinsics)
            except ValueError as err:  # an image smaller than the network input under a fixed scale
                self._count(cam, "conversion_errors", f"image dropped: {err}")
                return
        try:
            if self._compressed:
                rgb = compressed_to_rgb(msg, resize=transform, expected_hw=intrinsics.image_hw)
            else:
                rgb = image_to_rgb(msg, resize=transform)
        except ImageSizeError as err:
            self._size_mismatch(cam, err.actual_hw, intrinsics)
            return
        except ConversionError as err:
            self._count(cam, "conversion_errors", f"image dropped: {err}")
            return
        if transform is None and rgb.shape[:2] != intrinsics.image_hw:
            self._size_mismatch(cam, rgb.shape[:2], intrinsics)
            return
        ready_ns = time.monotonic_ns()
        convert_ms = (time.perf_counter() - start) * 1e3
        with self._lock:
            self._convert_ms.add(convert_ms)
        frame = _CameraFrame(rgb, k, now_ns, ready_ns, convert_ms, resized=transform is not None)
        self._enqueue(self.sync.add(cam, stamp_ns, frame, time.monotonic_ns()))

    def _poll_sync(self) -> None:
        now_ns = time.monotonic_ns()
        if self._hold_ns > 0:
            self._expire_held(now_ns)
        self._enqueue(self.sync.poll(now_ns))

    def _enqueue(self, sets: list[SyncedSet]) -> None:
        for synced in sets:
            self.worker.submit((synced, time.monotonic_ns()))

    # ------------------------------------------------------------------------------- model
    def process(self, synced: SyncedSet, submitted_ns: Optional[int] = None) -> bool:
        """Run the model on one synchronized set and publish; False if it could not be used.

        ``submitted_ns``: monotonic time the set left the synchronizer (None: now)."""
        begin_ns = time.monotonic_ns()
        submitted_ns = begin_ns if submitted_ns is None else submitted_ns
        n_model = len(self.predictor.cameras)
        images: list[Optional[np.ndarray]] = [None] * n_model
        intrinsics = np.tile(np.eye(3), (n_model, 1, 1))
        cam_to_ego = np.tile(np.eye(4), (n_model, 1, 1))
        for cam, frame in synced.items.items():
            matrix = self.extrinsics.lookup(self._frames[cam])
            if matrix is None:
                self._count(cam, "missing_extrinsics",
                            f"camera left out: no transform {self.base_frame} <- {self._frames[cam]} yet")
                continue
            j = self._model_index[cam]
            images[j], intrinsics[j], cam_to_ego[j] = frame.rgb, frame.k, matrix
        if all(image is None for image in images):
            with self._lock:
                self.counts["sets_without_extrinsics"] += 1
            return False
        resized = any(frame.resized for frame in synced.items.values())
        start = time.perf_counter()
        if resized:
            boxes = self.predictor.predict(images, intrinsics, cam_to_ego, resized=True)
        else:
            boxes = self.predictor.predict(images, intrinsics, cam_to_ego)
        model_ms = (time.perf_counter() - start) * 1e3
        publish_start = time.perf_counter()
        boxes, detections, markers = self.frame_messages(boxes, synced.stamp_ns)
        first_ns = min(frame.received_ns for frame in synced.items.values())
        ready_ns = max(frame.ready_ns for frame in synced.items.values())
        # Counted before publishing, so a subscriber that has the message also sees it counted.
        with self._lock:
            self.counts["published"] += 1
            self.counts["boxes"] += len(boxes)
            self.counts["marker_arrays"] += markers is not None
        self.publish_frame(detections, markers)
        now_ns = time.monotonic_ns()
        publish_ms = (time.perf_counter() - publish_start) * 1e3
        sync_ms = max(0, submitted_ns - ready_ns) / 1e6 if ready_ns else 0.0
        overhead_ms = sum(frame.convert_ms for frame in synced.items.values()) + sync_ms + publish_ms
        with self._lock:
            self._output_rate.tick(now_ns)
            self._model_ms.add(model_ms)
            self._e2e_ms.add((now_ns - first_ns) / 1e6)
            self._queue_ms.add((begin_ns - submitted_ns) / 1e6)
            self._overhead_ms.add(overhead_ms)
            self._overhead_ratio.add(overhead_ms / model_ms if model_ms > 0 else math.nan)
            self._sync_wait_ms.add(sync_ms)
            self._publish_ms.add(publish_ms)
        return True

    # ------------------------------------------------------------------------------- diagnostics
    def diagnostics_values(self) -> dict[str, Any]:
        """Everything the diagnostics report, by key (see the module docstring)."""
        now_ns = time.monotonic_ns()
        values: dict[str, Any] = {}
        with self._lock:
            values["published"] = self.counts["published"]
            values["output_rate_hz"] = self._output_rate.rate_hz(now_ns)
            values["boxes_published"] = self.counts["boxes"]
            values["marker_arrays_published"] = self.counts["marker_arrays"]
            for key, window in (("model_ms", self._model_ms), ("end_to_end_ms", self._e2e_ms),
                                ("convert_ms", self._convert_ms), ("overhead_ms", self._overhead_ms),
                                ("overhead_ratio", self._overhead_ratio), ("queue_ms", self._queue_ms),
                                ("sync_wait_ms", self._sync_wait_ms), ("publish_ms", self._publish_ms)):
                for stat, value in window.summary().items():
                    values[f"{key}.{stat}"] = value
            values["sets_without_extrinsics"] = self.counts["sets_without_extrinsics"]
        values.update(self.output_links())
        values["busy_drops"] = self.worker.dropped
        values["inference_errors"] = self.worker.errors
        stats = self.sync.stats
        values.update({"sync.emitted": stats.emitted, "sync.partial": stats.partial,
                       "sync.dropped_sets": stats.dropped_sets, "sync.late": stats.late,
                       "sync.duplicates": stats.duplicates, "sync.overflow": stats.overflow,
                       "sync.time_jumps": stats.time_jumps})
        for cam in self.cameras:
            values[f"{cam}.rate_hz"] = self._input_rates[cam].rate_hz(now_ns)
            values[f"{cam}.silent_s"] = self._watch.seconds_since(cam, now_ns)
            period_s = self._delivery[cam].counts()[2]
            values[f"{cam}.arriving_percent"] = self._delivery[cam].fraction() * 100.0
            values[f"{cam}.camera_rate_hz"] = 1.0 / period_s if period_s > 0 else math.nan
            for kind in _CAMERA_COUNTERS:
                values[f"{cam}.{kind}"] = self.camera_counts[cam][kind]
        return values

    def lossy_cameras(self) -> dict[str, tuple[int, int, float]]:
        """camera -> (received, expected, period s) for cameras whose images arrive at fewer than
        ``transport_warn_percent`` of the frames their stamps imply (:class:`DeliveryMeter`)."""
        out = {}
        if self._transport_warn <= 0:
            return out
        for cam, meter in self._delivery.items():
            fraction = meter.fraction()
            if fraction < self._transport_warn:  # nan (not enough frames yet) compares False
                out[cam] = meter.counts()
        return out

    def publish_diagnostics(self) -> DiagnosticStatus:
        values = self.diagnostics_values()
        problems = self.input_problems(self.sync.stats.time_jumps, self.sync.last_jump, describe_jump, self._watch,
                                       "camera")
        lossy = self.lossy_cameras()
        if lossy:
            problems.append(describe_lossy(lossy))
        return self.publish_report(
            "detector", str(self.predictor.device), values, problems,
            lambda key: key.rsplit(".", 1)[-1] in _WARN_COUNTERS or key in _WARN_GLOBAL,
            received_any=any(self.camera_counts[c]["received"] for c in self.cameras),
            waiting_message="no images received yet")


def main(args: Optional[list[str]] = None) -> int:
    """``x3kd_detector [--ros-args -p name:=value -r from:=to ...]``"""
    return spin_node(DetectorNode, args)


if __name__ == "__main__":
    sys.exit(main())
