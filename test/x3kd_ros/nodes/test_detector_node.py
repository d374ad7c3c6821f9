"""The detector node in-process over real (loopback) DDS: synchronization, model, outputs, robustness.

The first test runs the real Predictor on an untrained tiny checkpoint and checks the published
boxes against the same Predictor called directly on the same images and calibration, so camera
order, intrinsics, extrinsics (from /tf_static) and stamps are all checked. The other tests use a
fake predictor: they are about the node's handling of bad input and parameters.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TransformStamped
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from x3kd_core import geometry
from x3kd_core.data.synthetic.config import SynthConfig
from x3kd_core.data.synthetic.sensors import camera_specs
from x3kd_core.structures import CAMERA_NAMES, DETECTION_CLASSES, Boxes3D
from x3kd_ros import topics
from x3kd_ros.conversions import detections_to_boxes, intrinsics_to_camera_info, ns_to_stamp, rgb_to_image
from x3kd_ros.nodes.detector_node import DetectorNode
from x3kd_ros.nodes.meters import diagnostics_values
from x3kd_ros.nodes.params import ParameterError
from x3kd_ros.nodes.qos import qos_profile, static_tf_qos

IMAGE_HW = (112, 200)
SPECS = {s.name: s for s in camera_specs(SynthConfig(image_width=IMAGE_HW[1], image_height=IMAGE_HW[0]))}
RELIABLE = qos_profile("reliable", 10)


class SensorPublisher:
    """A test node publishing camera images, CameraInfo and /tf_static like a camera driver / bag."""

    def __init__(self, context):
        self.node = rclpy.create_node("x3kd_test_cameras", context=context)
        self.images = {c: self.node.create_publisher(Image, topics.camera_image_topic(c), RELIABLE) for c in CAMERA_NAMES}
        self.infos = {c: self.node.create_publisher(CameraInfo, topics.camera_info_topic(c), RELIABLE)
                      for c in CAMERA_NAMES}
        self.tf_static = self.node.create_publisher(TFMessage, topics.TF_STATIC_TOPIC, static_tf_qos())
        self.detections: list[Detection3DArray] = []
        self.markers: list[MarkerArray] = []
        self.diagnostics: list[DiagnosticStatus] = []
        self.node.create_subscription(Detection3DArray, topics.DETECTIONS_TOPIC, self.detections.append, RELIABLE)
        self.node.create_subscription(MarkerArray, topics.DETECTION_MARKERS_TOPIC, self.markers.append, RELIABLE)
        self.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS_TOPIC,
                                      lambda m: self.diagnostics.extend(m.status), 10)

    def matched(self) -> bool:
        return all(p.get_subscription_count() == 1 for p in [*self.images.values(), *self.infos.values()])

    def publish_camera_info(self, cam: str, uncalibrated: bool = False):
        msg = intrinsics_to_camera_info(SPECS[cam].intrinsics, IMAGE_HW, Header(frame_id=topics.sensor_frame(cam)))
        if uncalibrated:
            msg.k = np.zeros(9)  # what a driver without calibration sends
        self.infos[cam].publish(msg)

    def publish_image(self, cam: str, rgb: np.ndarray, stamp_ns: int) -> Image:
        msg = rgb_to_image(rgb, Header(stamp=ns_to_stamp(stamp_ns), frame_id=topics.sensor_frame(cam)))
        self.images[cam].publish(msg)
        return msg

    def publish_tf_static(self):
        transforms = []
        for cam, spec in SPECS.items():
            t = TransformStamped()
            t.header.frame_id = topics.BASE_FRAME
            t.child_frame_id = topics.sensor_frame(cam)
            t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = spec.to_ego[:3, 3]
            w, x, y, z = geometry.matrix_to_quaternion(spec.to_ego[:3, :3])
            t.transform.rotation.w, t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z = w, x, y, z
            transforms.append(t)
        self.tf_static.publish(TFMessage(transforms=transforms))


@pytest.fixture
def graph(ros_context):
    """(executor, sensor publisher); nodes added by the test are destroyed afterwards."""
    sensors = SensorPublisher(ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(sensors.node)
    nodes = []

    def add(node):
        nodes.append(node)
        executor.add_node(node)
        return node

    try:
        yield executor, sensors, add
    finally:
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        sensors.node.destroy_node()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_one_detection_array_per_synchronized_frame(ros_context, graph, student_checkpoint, spin_until, spin_for,
                                                    backend):
    """Published boxes equal the node's Predictor called on the full-size images (the node resizes
    at receive time: same numbers), with either backend."""
    executor, sensors, add = graph
    node = add(DetectorNode(context=ros_context, cli_args=[
        "--ros-args", "-p", f"checkpoint:={student_checkpoint}", "-p", "device:=cpu",
        "-p", "extrinsics_source:=tf_static", "-p", "qos.input.reliability:=reliable",
        "-p", "processing_queue_size:=4", "-p", f"backend:={backend}",
    ]))
    assert node.predictor.cameras == CAMERA_NAMES and node.predictor.backend == backend
    assert spin_until(executor, sensors.matched), "detector did not subscribe to every camera"
    sensors.publish_tf_static()
    for cam in CAMERA_NAMES:
        sensors.publish_camera_info(cam)
    frames = [topics.sensor_frame(c) for c in CAMERA_NAMES]
    assert spin_until(executor, lambda: len(node._intrinsics) == 6 and all(node.extrinsics.lookup(f) is not None
                                                                        for f in frames))

    rng = np.random.default_rng(0)
    base_ns = 1_700_000_000 * 10**9
    jitter_ns = np.array([0, 4, 9, 13, 18, 22]) * 10**6  # one frame's cameras fire 22 ms apart
    sent = []
    for f in range(3):
        order = rng.permutation(len(CAMERA_NAMES))
        stamps = {CAMERA_NAMES[i]: base_ns + f * 500_000_000 + int(jitter_ns[j]) for j, i in enumerate(order)}
        images = {cam: rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8) for cam in CAMERA_NAMES}
        for i in order:
            cam = CAMERA_NAMES[i]
            sensors.publish_image(cam, images[cam], stamps[cam])
        sent.append((stamps, images))
        assert spin_until(executor, lambda: len(sensors.detections) == f + 1), f"no detections for frame {f}"
    spin_for(executor, 0.7)  # anything extra would arrive now

    assert len(sensors.detections) == 3
    assert spin_until(executor, lambda: len(sensors.markers) == 3)
    for (stamps, images), msg in zip(sent, sensors.detections):
        # The set's stamp: the lower median of its cameras' stamps (x3kd_ros.sync).
        expected_ns = sorted(stamps.values())[2]
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == divmod(expected_ns, 10**9)
        assert msg.header.frame_id == "base_link"
        assert {d.results[0].hypothesis.class_id for d in msg.detections} <= set(DETECTION_CLASSES)
        expected = node.predictor.predict(
            [images[c] for c in CAMERA_NAMES],
            np.stack([SPECS[c].intrinsics for c in CAMERA_NAMES]),
            np.stack([SPECS[c].to_ego for c in CAMERA_NAMES]),
        )
        got = detections_to_boxes(msg)
        assert len(got) == len(expected) > 0
        np.testing.assert_allclose(got.center, expected.center, atol=1e-6)
        np.testing.assert_allclose(got.size_lwh, expected.size_lwh, atol=1e-6)
        np.testing.assert_allclose(np.cos(got.yaw - expected.yaw), 1.0, atol=1e-9)
        np.testing.assert_allclose(got.score, expected.score, atol=1e-6)
        np.testing.assert_array_equal(got.label, expected.label)

    values = node.diagnostics_values()
    assert (values["published"], values["sync.emitted"], values["sync.partial"], values["busy_drops"]) == (3, 3, 0, 0)
    assert values["detections_subscribers"] == 1  # the sensors node's subscription, matched by the publisher
    assert values["model_ms.mean"] > 0 and values["end_to_end_ms.max"] >= values["model_ms.max"]
    assert all(values[f"{c}.received"] == 3 for c in CAMERA_NAMES)
    # Percentiles and the overhead split, per set (3 sets) and per image (18 conversions).
    assert values["model_ms.p50"] <= values["model_ms.p90"] <= values["model_ms.p99"] <= values["model_ms.max"]
    assert 0 < values["convert_ms.p50"] and 0 < values["overhead_ms.p50"] <= values["end_to_end_ms.max"]
    assert values["overhead_ratio.p50"] == pytest.approx(values["overhead_ms.p50"] / values["model_ms.p50"], rel=1.0)
    assert all(f"{key}.{stat}" in values for key in ("queue_ms", "overhead_ratio") for stat in ("p50", "p90", "p99"))


class FakePredictor:
    """Stands in for the model: one box whose x is the number of cameras it was given."""

    cameras = CAMERA_NAMES
    device = "fake"

    def __init__(self):
        self.calls: list[list[int]] = []

    def predict(self, images, intrinsics, cam_to_ego):
        present = [i for i, image in enumerate(images) if image is not None]
        self.calls.append(present)
        return Boxes3D(center=[[float(len(present)), 0.0, 1.0]], size_lwh=[[4.0, 2.0, 1.5]], yaw=[0.0],
                       velocity=[[0.0, 0.0]], label=[0], score=[0.5])


def _fake_node(context, *extra):
    return DetectorNode(FakePredictor(), context=context, cli_args=[
        "--ros-args", "-p", "extrinsics_source:=file", "-p", "calibration_file:=calibration_synthetic.yaml",
        "-p", "qos.input.reliability:=reliable", "-p", "diagnostics_period_s:=0.2", *extra])


def _calibrate(executor, sensors, node, spin_until) -> None:
    """Wait until the fake sensors are matched, send every camera's CameraInfo and wait until the
    node holds all six intrinsics (the start of most node tests)."""
    assert spin_until(executor, sensors.matched)
    for cam in CAMERA_NAMES:
        sensors.publish_camera_info(cam)
    assert spin_until(executor, lambda: len(node._intrinsics) == 6)


def test_malformed_input_is_counted_and_the_node_keeps_working(ros_context, graph, spin_until):
    executor, sensors, add = graph
    node = add(_fake_node(ros_context, "-p", "max_input_age_s:=5.0", "-p", "sync.timeout_s:=0.3"))
    assert spin_until(executor, sensors.matched)
    counts = node.camera_counts["CAM_FRONT"]
    now_ns = node.get_clock().now().nanoseconds
    rgb = np.full((*IMAGE_HW, 3), 90, np.uint8)

    def expect(kind, n):
        assert spin_until(executor, lambda: counts[kind] == n, 10.0), f"{kind}: {counts[kind]} != {n}"

    sensors.publish_image("CAM_FRONT", rgb, now_ns)  # before any CameraInfo
    expect("missing_camera_info", 1)
    sensors.publish_camera_info("CAM_FRONT", uncalibrated=True)
    expect("camera_info_errors", 1)
    for cam in CAMERA_NAMES:
        sensors.publish_camera_info(cam)
    assert spin_until(executor, lambda: len(node._intrinsics) == 6)
    bad = rgb_to_image(rgb, Header(stamp=ns_to_stamp(now_ns)))
    bad.encoding = "16UC1"  # a depth image on the camera topic
    sensors.images["CAM_FRONT"].publish(bad)
    expect("conversion_errors", 1)
    truncated = rgb_to_image(rgb, Header(stamp=ns_to_stamp(now_ns)))
    truncated.data = truncated.data[:-7]
    sensors.images["CAM_FRONT"].publish(truncated)
    expect("conversion_errors", 2)
    sensors.publish_image("CAM_FRONT", rgb[::2, ::2].copy(), now_ns)  # half the CameraInfo's size
    expect("size_mismatch", 1)
    sensors.publish_image("CAM_FRONT", rgb, now_ns - 100 * 10**9)  # 100 s old
    expect("stale", 1)
    assert node.sync.pending() == {c: 0 for c in CAMERA_NAMES}  # nothing bad reached the synchronizer

    # Still working: a complete frame, then one without CAM_BACK (partial after the 0.3 s timeout).
    for f, cams in enumerate([CAMERA_NAMES, [c for c in CAMERA_NAMES if c != "CAM_BACK"]]):
        stamp = now_ns + (f + 1) * 500_000_000  # frames 0.5 s apart, as at 2 Hz
        for cam in cams:
            sensors.publish_image(cam, rgb, stamp)
        assert spin_until(executor, lambda: len(sensors.detections) == f + 1)
    assert [d.detections[0].bbox.center.position.x for d in sensors.detections] == [6.0, 5.0]
    assert node.predictor.calls == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 5]]

    def reported():
        values = [diagnostics_values(s) for s in sensors.diagnostics if s.name.startswith("x3kd_detector")]
        return values and values[-1]["published"] == "2"

    assert spin_until(executor, reported, 5.0)
    last = diagnostics_values([s for s in sensors.diagnostics if s.name.startswith("x3kd_detector")][-1])
    expected = {"CAM_FRONT.missing_camera_info": "1", "CAM_FRONT.camera_info_errors": "1",
                "CAM_FRONT.conversion_errors": "2", "CAM_FRONT.size_mismatch": "1", "CAM_FRONT.stale": "1",
                "CAM_FRONT.received": "7", "CAM_BACK.received": "1", "sync.partial": "1", "sync.emitted": "2",
                "inference_errors": "0"}
    assert {k: last[k] for k in expected} == expected
    warned = [s for s in sensors.diagnostics if s.level == DiagnosticStatus.WARN]
    assert any("CAM_FRONT.conversion_errors" in s.message for s in warned)


def test_model_errors_are_counted_not_fatal(ros_context, graph, spin_until):
    executor, sensors, add = graph
    node = add(_fake_node(ros_context))
    original = node.predictor.predict
    node.predictor.predict = lambda *a: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
    _calibrate(executor, sensors, node, spin_until)
    rgb = np.zeros((*IMAGE_HW, 3), np.uint8)
    for f in range(2):
        if f == 1:
            node.predictor.predict = original
        for cam in CAMERA_NAMES:
            sensors.publish_image(cam, rgb, (1000 + f) * 10**9)
        if f == 0:
            assert spin_until(executor, lambda: node.worker.errors == 1)
    assert spin_until(executor, lambda: len(sensors.detections) == 1)
    assert node.diagnostics_values()["inference_errors"] == 1
    assert node.publish_diagnostics().level == DiagnosticStatus.ERROR


class BlockingPredictor(FakePredictor):
    """The first call waits for ``release``: the model is busy while later sets arrive."""

    def __init__(self):
        super().__init__()
        import threading

        self.started, self.release = threading.Event(), threading.Event()

    def predict(self, images, intrinsics, cam_to_ego):
        if not self.calls:
            self.started.set()
            self.release.wait(20.0)
        return super().predict(images, intrinsics, cam_to_ego)


@pytest.mark.parametrize("queue_size", [1, 2])
def test_a_busy_model_drops_the_oldest_waiting_sets_latest_wins(ros_context, graph, spin_until, spin_for, queue_size):
    """Drop policy: while the model is busy at most processing_queue_size sets wait; every newer set
    pushes out the oldest waiting one (counted, WARN), and the newest sets are the ones run."""
    executor, sensors, add = graph
    predictor = BlockingPredictor()
    node = add(DetectorNode(predictor, context=ros_context, cli_args=[
        "--ros-args", "-p", "extrinsics_source:=file", "-p", "calibration_file:=calibration_synthetic.yaml",
        "-p", "qos.input.reliability:=reliable", "-p", "diagnostics_period_s:=0.2",
        "-p", f"processing_queue_size:={queue_size}"]))
    _calibrate(executor, sensors, node, spin_until)
    base_ns = 1_800_000_000 * 10**9
    stamps = [base_ns + f * 83_000_000 for f in range(7)]  # 12 Hz
    _publish_frame(sensors, stamps[0])
    assert spin_until(executor, predictor.started.is_set)
    for stamp in stamps[1:]:
        _publish_frame(sensors, stamp)
        # The synchronizer emits each set as soon as it is complete; the model is still busy.
        assert spin_until(executor, lambda: node.sync.stats.emitted == stamps.index(stamp) + 1)
        assert len(node.worker._queue) <= queue_size  # never a growing queue
    predictor.release.set()
    kept = [stamps[0], *stamps[-queue_size:]]
    assert spin_until(executor, lambda: len(sensors.detections) == len(kept))
    spin_for(executor, 0.5)  # nothing else comes
    got = [d.header.stamp.sec * 10**9 + d.header.stamp.nanosec for d in sensors.detections]
    assert got == kept
    values = node.diagnostics_values()
    assert values["busy_drops"] == len(stamps) - len(kept) and values["published"] == len(kept)
    # Reported as it happened (several reports may split the count), WARN level.
    assert spin_until(executor, lambda: any(s.level == DiagnosticStatus.WARN and "busy_drops +" in s.message
                                            for s in _detector_statuses(sensors)))


def test_bad_parameters_are_rejected_with_every_reason(ros_context):
    with pytest.raises(ParameterError) as err:
        _fake_node(ros_context, "-p", "image_transport:=h264", "-p", "score_threshold:=1.5",
                   "-p", "sync.policy:=sometimes", "-p", "device:=tpu", "-p", "sync.slop_s:=fast")
    text = str(err.value)
    for expected in ("image_transport = 'h264': must be one of 'raw', 'compressed'",
                     "score_threshold = 1.5: must be <= 1.0",
                     "sync.policy = 'sometimes': must be one of 'drop', 'partial'",
                     "device = 'tpu'", "sync.slop_s = 'fast': expected a number"):
        assert expected in text, text
    with pytest.raises(ParameterError, match=r"image_topics = .*needs one entry per camera \(6\), got 2"):
        _fake_node(ros_context, "-p", "image_topics:=[/a,/b]")
    with pytest.raises(ParameterError, match=r"not cameras of the checkpoint"):
        _fake_node(ros_context, "-p", "cameras:=[CAM_FRONT,CAM_ROOF]")
    with pytest.raises(ParameterError, match=r"checkpoint = '': is required"):
        DetectorNode(context=ros_context, cli_args=["--ros-args", "-p", "calibration_file:=calibration_synthetic.yaml"])
    with pytest.raises(ParameterError, match=r"calibration_file.*not found"):
        _fake_node(ros_context, "-p", "calibration_file:=no_such_calibration.yaml")
    with pytest.raises(ParameterError, match=r"backend = 'tensorrt': must be one of 'torch', 'onnxruntime'"):
        _fake_node(ros_context, "-p", "backend:=tensorrt")

    # An integer for a double is fine; per-camera lists follow the cameras and the transport.
    node = _fake_node(ros_context, "-p", "score_threshold:=0", "-p", "cameras:=[CAM_BACK,CAM_FRONT]",
                      "-p", "image_transport:=compressed")
    try:
        assert node.params["score_threshold"] == 0.0 and isinstance(node.params["score_threshold"], float)
        assert node.params["image_topics"] == ["/cameras/cam_back/image_raw/compressed",
                                               "/cameras/cam_front/image_raw/compressed"]
        assert node.params["camera_frames"] == ["cam_back", "cam_front"]
        assert node.params["sync.offsets_s"] == [0.0, 0.0]
        descriptor = node.describe_parameter("sync.slop_s")
        assert "spread" in descriptor.description and descriptor.read_only
    finally:
        node.destroy_node()


def test_main_exits_with_code_2_and_names_the_bad_parameter(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "x3kd_ros.nodes.detector_node", "--ros-args", "-p", "checkpoint:=/no/such.pt",
         "-p", "sync.timeout_s:=-1.0", "-r", "__node:=x3kd_detector_bad"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "/x3kd_detector_bad: invalid parameters" in proc.stderr
    assert "checkpoint = '/no/such.pt': file not found" in proc.stderr
    assert "sync.timeout_s = -1.0: must be >= 0.0" in proc.stderr


# ---------------------------------------------------------------------------------------------- robot faults
# Each of these reproduced a fault first: the first frame dropped when images came before their
# CameraInfo, every frame after a backwards time jump dropped with /diagnostics OK, a dead camera
# never named in /diagnostics.


def _publish_frame(sensors, stamp_ns: int, cams=CAMERA_NAMES, value: int = 60) -> None:
    rgb = np.full((*IMAGE_HW, 3), value, np.uint8)
    for cam in cams:
        sensors.publish_image(cam, rgb, stamp_ns)


def _detector_statuses(sensors) -> list:
    return [s for s in sensors.diagnostics if s.name.startswith("x3kd_detector")]


def test_images_before_their_camera_info_are_held_not_dropped(ros_context, graph, spin_until, spin_for):
    """A bag's first frame: every image comes just before its CameraInfo (same stamp)."""
    executor, sensors, add = graph
    node = add(_fake_node(ros_context, "-p", "camera_info_wait_s:=2.0"))
    assert spin_until(executor, sensors.matched)
    stamp = 1_600_000_000 * 10**9
    for cam in CAMERA_NAMES:
        _publish_frame(sensors, stamp, [cam])
        sensors.publish_camera_info(cam)
    assert spin_until(executor, lambda: len(sensors.detections) == 1), node.camera_counts
    assert node.predictor.calls == [[0, 1, 2, 3, 4, 5]]  # one complete set, not a partial one
    assert (sensors.detections[0].header.stamp.sec, sensors.detections[0].header.stamp.nanosec) == divmod(stamp, 10**9)
    assert all(node.camera_counts[c]["missing_camera_info"] == 0 for c in CAMERA_NAMES)
    # Bounded: an image whose CameraInfo never comes is dropped after camera_info_wait_s, and counted.
    node._intrinsics.pop("CAM_BACK")
    _publish_frame(sensors, stamp + 500_000_000, ["CAM_BACK"])
    assert spin_until(executor, lambda: node.camera_counts["CAM_BACK"]["missing_camera_info"] == 1, 10.0)
    assert not node._held["CAM_BACK"]


def test_stamps_jumping_back_reset_the_sync_and_are_reported(ros_context, graph, spin_until, spin_for):
    """A looped bag: the same three frames twice. Every frame after the jump is published, the
    diagnostics say WARN naming the jump once, and the next report is OK again."""
    executor, sensors, add = graph
    node = add(_fake_node(ros_context))
    _calibrate(executor, sensors, node, spin_until)
    base = 1_600_000_000 * 10**9
    for loop in range(2):
        for k in range(3):
            _publish_frame(sensors, base + k * 500_000_000)
            assert spin_until(executor, lambda: len(sensors.detections) == 3 * loop + k + 1), (loop, k)
    assert node.predictor.calls == [[0, 1, 2, 3, 4, 5]] * 6
    stats = node.sync.stats
    assert (stats.time_jumps, stats.late, stats.partial) == (1, 0, 0)
    assert [(d.header.stamp.sec, d.header.stamp.nanosec) for d in sensors.detections] == \
        [divmod(base + k * 500_000_000, 10**9) for k in range(3)] * 2

    def warned():
        return any(s.level == DiagnosticStatus.WARN and "time jumped back 1.000 s on" in s.message
                   and "synchronizer reset" in s.message for s in _detector_statuses(sensors))

    assert spin_until(executor, warned, 5.0)
    jump_reports = [s for s in _detector_statuses(sensors) if "time jumped back" in s.message]
    assert len(jump_reports) == 1  # reported once, not on every later report
    assert diagnostics_values(jump_reports[0])["sync.time_jumps"] == "1"


def test_a_silent_camera_is_named_in_the_diagnostics_and_ok_again_when_back(ros_context, graph, spin_until,
                                                                              spin_for):
    executor, sensors, add = graph
    node = add(_fake_node(ros_context, "-p", "silent_after_periods:=3.0", "-p", "silent_after_min_s:=0.6"))
    _calibrate(executor, sensors, node, spin_until)
    base = 1_600_000_000 * 10**9
    frame = 0

    def run(seconds: float, cams) -> None:
        nonlocal frame
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # 10 Hz
            _publish_frame(sensors, base + frame * 100_000_000, cams)
            frame += 1
            spin_for(executor, 0.1)

    run(1.0, CAMERA_NAMES)
    others = [c for c in CAMERA_NAMES if c != "CAM_BACK"]
    seen = len(sensors.diagnostics)
    run(1.5, others)
    silent = [s for s in _detector_statuses(sensors)[seen:] if "CAM_BACK silent for" in s.message]
    assert silent and all(s.level == DiagnosticStatus.WARN for s in silent), \
        [s.message for s in _detector_statuses(sensors)[seen:]]
    assert "CAM_FRONT silent" not in silent[-1].message
    assert float(diagnostics_values(silent[-1])["CAM_BACK.silent_s"]) > 0.6
    seen = len(sensors.diagnostics)
    run(1.0, CAMERA_NAMES)
    back = _detector_statuses(sensors)[seen:]
    assert back and back[-1].level == DiagnosticStatus.OK, [s.message for s in back]
    # Partial sets (without CAM_BACK) went on meanwhile: the detector kept working.
    assert node.sync.stats.partial > 0 and len(sensors.detections) > 10


def test_use_sim_time_without_a_running_clock_keeps_sync_timeouts_and_diagnostics(ros_context, graph, spin_until):
    """With use_sim_time and /clock paused (a paused bag, a stopped simulator) ROS-time timers stop;
    the node's timers run on the steady clock, so partial sets still time out and reports go on."""
    executor, sensors, add = graph
    node = add(_fake_node(ros_context, "-p", "use_sim_time:=true", "-p", "sync.timeout_s:=0.2"))
    assert node.get_clock().now().nanoseconds == 0  # no /clock published: ROS time stands still
    _calibrate(executor, sensors, node, spin_until)
    _publish_frame(sensors, 1_600_000_000 * 10**9, CAMERA_NAMES[:5])  # CAM_BACK_RIGHT missing: waits for timeout
    assert spin_until(executor, lambda: len(sensors.detections) == 1, 10.0)
    assert node.predictor.calls == [[0, 1, 2, 3, 4]]
    assert spin_until(executor, lambda: len(_detector_statuses(sensors)) >= 2, 10.0)


def test_a_transport_losing_images_is_reported_with_a_hint(ros_context, graph, spin_until, spin_for):
    """Issue 16: a publisher that skips CAM_FRONT frames (a transport losing big images looks like this
    from the node: gaps in the stamp sequence). /diagnostics WARNs with the delivered percentage and
    the hint to check the DDS transport / profile, names only that camera, and is OK again once every
    frame arrives for a window."""
    executor, sensors, add = graph
    node = add(_fake_node(ros_context))
    _calibrate(executor, sensors, node, spin_until)
    base, period = 1_600_000_000 * 10**9, 100_000_000  # a 10 Hz camera rig; published faster than real time
    keep = [1, 1, 0, 1, 0, 0, 1, 0]  # irregular, as transport loss is: 4 of every 8 CAM_FRONT frames arrive
    others = [c for c in CAMERA_NAMES if c != "CAM_FRONT"]
    frame = 0

    def run(n: int, skipping: bool) -> None:
        nonlocal frame
        for _ in range(n):
            _publish_frame(sensors, base + frame * period, CAMERA_NAMES if not skipping or keep[frame % 8] else others)
            frame += 1
            spin_for(executor, 0.02)

    run(40, skipping=True)
    assert spin_until(executor, lambda: node.camera_counts["CAM_BACK"]["received"] == 40, 10.0)
    seen = len(sensors.diagnostics)

    def lossy_report():
        return next((s for s in _detector_statuses(sensors)[seen:] if "images arriving at" in s.message), None)

    assert spin_until(executor, lambda: lossy_report() is not None, 5.0), \
        [s.message for s in _detector_statuses(sensors)[-3:]]
    status = lossy_report()
    assert status.level == DiagnosticStatus.WARN
    assert "images arriving at 50 % of the camera rate (CAM_FRONT 50 %; 10.0 Hz by their stamps" in status.message
    assert "check the DDS transport / profile" in status.message and "CAM_BACK " not in status.message
    values = diagnostics_values(status)
    assert float(values["CAM_FRONT.arriving_percent"]) == pytest.approx(50.0, abs=4.0)
    assert float(values["CAM_BACK.arriving_percent"]) == 100.0
    assert float(values["CAM_FRONT.camera_rate_hz"]) == pytest.approx(10.0, abs=0.01)

    run(60, skipping=False)  # 6 s of stamps: the 5 s window holds no gap any more
    seen = len(sensors.diagnostics)
    assert spin_until(executor, lambda: len(_detector_statuses(sensors)[seen:]) >= 1, 5.0)
    back = _detector_statuses(sensors)[-1]
    assert back.level == DiagnosticStatus.OK, back.message
    assert float(diagnostics_values(back)["CAM_FRONT.arriving_percent"]) == 100.0


def test_bayer_and_yuv422_cameras_work(ros_context, graph, spin_until):
    """Issue 11 item 10: cameras that send Bayer or YUV 4:2:2 images (what many drivers publish) are
    converted, not counted as conversion errors."""
    executor, sensors, add = graph
    node = add(_fake_node(ros_context))
    _calibrate(executor, sensors, node, spin_until)
    h, w = IMAGE_HW
    stamp = ns_to_stamp(1_600_000_000 * 10**9)
    raw = {"CAM_FRONT": ("bayer_rggb8", 1), "CAM_BACK": ("uyvy", 2), "CAM_BACK_LEFT": ("yuv422_yuy2", 2)}
    for cam in CAMERA_NAMES:
        if cam in raw:
            encoding, bpp = raw[cam]
            msg = Image(height=h, width=w, encoding=encoding, step=w * bpp)
            msg.header = Header(stamp=stamp, frame_id=topics.sensor_frame(cam))
            msg.data = np.full(h * w * bpp, 128, np.uint8).tobytes()
            sensors.images[cam].publish(msg)
        else:
            sensors.publish_image(cam, np.full((h, w, 3), 60, np.uint8), 1_600_000_000 * 10**9)
    assert spin_until(executor, lambda: len(sensors.detections) == 1), node.camera_counts
    assert node.predictor.calls == [[0, 1, 2, 3, 4, 5]]
    assert all(node.camera_counts[c]["conversion_errors"] == 0 for c in CAMERA_NAMES)


def test_markers_are_built_only_while_someone_subscribes(ros_context, graph, spin_until, spin_for):
    """Issue 13: building markers was most of the node's per-set cost; with nobody on the marker
    topic (volatile QoS: no late joiner could get them) the node skips them and counts what it sent."""
    executor, sensors, add = graph
    node = add(_fake_node(ros_context))
    _calibrate(executor, sensors, node, spin_until)
    assert spin_until(executor, lambda: node.markers_pub.get_subscription_count() == 1)
    _publish_frame(sensors, 1_600_000_000 * 10**9)
    assert spin_until(executor, lambda: len(sensors.markers) == 1 and len(sensors.detections) == 1)
    box = sensors.markers[0].markers[1]
    assert (box.ns, box.type, len(box.points)) == ("x3kd/boxes", box.LINE_LIST, 26)
    assert sensors.detections[0].detections[0].bbox.center.position.x == 6.0  # the fake's box: 6 cameras

    marker_sub = next(s for s in sensors.node.subscriptions if s.topic_name == topics.DETECTION_MARKERS_TOPIC)
    sensors.node.destroy_subscription(marker_sub)
    assert spin_until(executor, lambda: node.markers_pub.get_subscription_count() == 0)
    _publish_frame(sensors, 1_600_000_001 * 10**9)
    assert spin_until(executor, lambda: len(sensors.detections) == 2)
    values = node.diagnostics_values()
    assert (values["published"], values["marker_arrays_published"]) == (2, 1)
    # The overhead's parts: building + publishing, and the synchronizer's wait (complete sets: ~0).
    assert 0 < values["publish_ms.max"] <= values["overhead_ms.max"]
    assert 0 <= values["sync_wait_ms.p50"] <= values["overhead_ms.max"]
