#!/usr/bin/env python3
"""Drive the x3kd_detector node at a camera rate over loopback DDS and measure what comes out.

    .venv/bin/python tools/bench_detector_rate.py                      # 12 Hz for 10 s, tiny model, cpu
    .venv/bin/python tools/bench_detector_rate.py --rate 2             # keyframe rate
    .venv/bin/python tools/bench_detector_rate.py --device cuda --checkpoint runs/<name>/last.pt
    .venv/bin/python tools/bench_detector_rate.py --launch             # the graph as users start it:
                                                                       # ros2 launch x3kd_ros detector.launch.py
    .venv/bin/python tools/bench_detector_rate.py --fastdds-profile off  # publisher on Fast DDS defaults
    .venv/bin/python tools/bench_detector_rate.py --backend onnxruntime  # the network in onnxruntime
    .venv/bin/python tools/bench_detector_rate.py --model-config config/model/student_small.yaml
    .venv/bin/python tools/bench_detector_rate.py --markers            # also subscribe to the markers (RViz)

What it does
    1. Applies the ROS network rule (x3kd_ros.graph.environment.apply_network_rule) with a private domain id
       and a log folder under build/bench_detector_rate/, so nothing leaves the machine and
       concurrent runs do not see each other.
    2. Writes an untrained tiny student checkpoint (config/model/student_tiny.yaml, seeded), the
       same way the node tests build theirs, unless ``--checkpoint`` names one.
    3. Starts ``x3kd_detector --ros-args --params-file config/ros/detector.yaml -p checkpoint:=...``
       as a child process (log: build/bench_detector_rate/detector.log) and stops it by its PID
       (SIGINT, then SIGTERM / SIGKILL) however this script ends. With ``--launch`` it starts
       ``ros2 launch x3kd_ros detector.launch.py checkpoint:=... device:=... fastdds_profile:=...``
       instead, in the README's ROS shell (``source tools/ros_env.sh``; needs the vendored ROS 2
       tools that tools/setup.sh installs), in its own process group, stopped with SIGINT to that
       group (Ctrl-C), then SIGTERM / SIGKILL.
    3b. Transport: this process stands for the camera driver. ``--fastdds-profile auto`` (default)
       loads the package's Fast DDS profile for big images here, by the rule of
       x3kd_ros/graph/transport.py (not if FASTDDS_DEFAULT_PROFILES_FILE is already set or another RMW
       is used): it is the *publisher's* shared-memory segment that decides whether 4.3 MB images
       get through. The detector gets the same choice (plain child: the same environment;
       ``--launch``: the launch argument, so the launch file applies it). ``off``: Fast DDS defaults
       on both sides; a path: that profile. ``--detector-fastdds-profile`` sets the detector's apart.
    4. Publishes /tf_static once (transient local) and then, at ``--rate`` Hz, one set of 6 camera
       images (``--width`` x ``--height`` rgb8 sensor_msgs/Image, one shared stamp per set) plus
       their CameraInfo, with the default sensor-data QoS (best effort, keep last 5; ``--qos
       reliable`` makes publishers and the node's input reliable), for ``--duration`` s after
       ``--warmup-sets`` untimed sets.
    5. Counts, for the timed window only (node counters are differences of two /diagnostics reports):
       sets published, Detection3DArray received, images the node received, sets the synchronizer
       emitted / emitted partial / dropped, sets dropped because the model was busy
       (``busy_drops``), end-to-end latency percentiles (receive time of the detections here minus
       the time the last image of that set was published here, same monotonic clock), the node's
       model time (``model_ms`` of /diagnostics) and node overhead = end-to-end - model time.
    6. The node's own split, per set, from /diagnostics (last 100 sets, p50 / p90 / p99):
       ``overhead_ms`` = its images' conversion + resize + the synchronizer's wait after the last
       image + building and publishing the messages, ``overhead_ratio`` = overhead_ms / model_ms,
       ``queue_ms`` (wait for a busy model), ``convert_ms`` per image.
    7. Boxes per set the node published, and marker arrays: the node builds markers only while the
       marker topic has a subscriber, and this process subscribes to it only with ``--markers``
       (standing for RViz), so runs with and without it show what drawing the boxes costs.
    0. Before the node starts: the per-camera conversion + resize cost on its own, in this process
       (``--width`` x ``--height`` rgb8 and bgr8 messages -> the checkpoint's network input;
       median of 30 calls): the node's one-call path (x3kd_ros.conversions.image_to_rgb(resize=))
       and, for comparison, the full-size conversion followed by the resize.
    0b. Also before the node starts: the per-set cost of the output messages for ``--message-boxes``
       boxes (default 100, what an untrained model decodes), in this process, median of 15
       interleaved calls: message objects + rclpy serialization (what publish() did with them) vs
       the CDR bytes the node publishes now (x3kd_ros.message_bytes).

Numbers depend on the machine's load: the publisher, the DDS transport (large images are
fragmented over UDP on loopback; best effort loses fragments under load) and the model share the
CPU. The load average is printed with the results. Node counters are differences between the
last /diagnostics report before the timed window and the first after the drain, so images of
warm-up sets still in flight at the first snapshot can make "images received" exceed the
published count. ``--json PATH`` also writes the figures as JSON (tests read that).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, also without an install
from x3kd_core.paths import REPO_ROOT  # noqa: E402

from x3kd_ros.graph.environment import apply_network_rule, pid_domain_id  # noqa: E402  (no rclpy import)

WORK_DIR = REPO_ROOT / "build" / "bench_detector_rate"
ROS_ENV = REPO_ROOT / "tools" / "ros_env.sh"
#: The detector's node name: the launch file's (graph.yaml) with --launch, else this one.
DETECTOR_YAML = REPO_ROOT / "config" / "ros" / "detector.yaml"
NODE_NAME = "x3kd_detector_bench"
LAUNCH_NODE_NAME = "x3kd_detector"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=12.0, help="camera sets per second (Hz)")
    p.add_argument("--duration", type=float, default=10.0, help="timed publishing window (s)")
    p.add_argument("--warmup-sets", type=int, default=3, help="untimed sets first (model warm-up)")
    p.add_argument("--device", default="cpu", help="detector device parameter: auto | cpu | cuda | cuda:N")
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"), help="detector backend parameter")
    p.add_argument("--checkpoint", default="", help="camera-student checkpoint; empty = write a tiny untrained one")
    p.add_argument("--model-config", default="config/model/student_tiny.yaml",
                   help="model YAML of the untrained checkpoint (when --checkpoint is empty)")
    p.add_argument("--width", type=int, default=1600, help="image width (px)")
    p.add_argument("--height", type=int, default=900, help="image height (px)")
    p.add_argument("--qos", choices=("sensor", "reliable"), default="sensor",
                   help="sensor: publish with the default sensor-data QoS (best effort, depth 5) into the "
                        "node's detector.yaml input QoS; reliable: reliable publishers and "
                        "qos.input.reliability:=reliable on the node")
    p.add_argument("--params-file", default=str(DETECTOR_YAML), help="detector parameter file")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra detector parameter override (repeatable), e.g. sync.slop_s:=0.035")
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: derived from the pid)")
    p.add_argument("--start-timeout", type=float, default=120.0, help="max wait for the node to come up (s)")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="max wait for late detections (s)")
    p.add_argument("--launch", action="store_true",
                   help="start the graph with `ros2 launch x3kd_ros detector.launch.py` (the launch file's "
                        "parameters; --params-file / --param / --qos reliable do not apply)")
    p.add_argument("--fastdds-profile", default="auto",
                   help="Fast DDS transport profile of this publishing process and of the detector: auto (the "
                        "package's config/dds profile unless one is already set), off, or a path "
                        "(x3kd_ros/graph/transport.py)")
    p.add_argument("--detector-fastdds-profile", default=None,
                   help="the detector's profile when it should differ from --fastdds-profile (to see which "
                        "side of the link needs it: the publisher's)")
    p.add_argument("--work-dir", default=str(WORK_DIR), help="checkpoint, logs and rcl logs go here")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--message-boxes", type=int, default=100, help="boxes per set for step 0b (0 = skip it)")
    p.add_argument("--markers", action="store_true",
                   help="subscribe to the detector's MarkerArray topic as RViz would (the node builds markers "
                        "only while someone subscribes)")
    args = p.parse_args(argv)
    if args.launch and (args.qos != "sensor" or args.param or args.params_file != str(DETECTOR_YAML)):
        p.error("--launch starts the graph with the launch file's parameters: drop --qos/--param/--params-file")
    return args


# ---------------------------------------------------------------------------------------- checkpoint
def write_tiny_checkpoint(model_yaml: str, path: Path, seed: int = 0) -> Path:
    """An untrained student checkpoint in ``last.pt`` format on the tiny student's BEV grid
    (the approach of test/x3kd_ros/conftest.py)."""
    import torch
    import yaml

    from x3kd_core.config import from_dict, to_dict
    from x3kd_core.experiment import ExperimentConfig, build_task
    from x3kd_core.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    grid = yaml.safe_load((REPO_ROOT / "config/model/student_tiny.yaml").read_text())["grid"]
    model = yaml.safe_load((REPO_ROOT / model_yaml).read_text())
    exp = from_dict(ExperimentConfig, {"kind": "student", "model": model, "grid": grid, "train": {"max_steps": 1},
                                       "name": "student_tiny_untrained"})
    torch.manual_seed(seed)
    task = build_task(exp)
    state = {"format": CHECKPOINT_FORMAT, "kind": type(task).__name__, "config": to_dict(exp),
             "model": task.state_dict()}
    return save_checkpoint(path, state, keep_previous=False)


# ---------------------------------------------------------------------------------------- child
def start_launch(args: argparse.Namespace, checkpoint: Path, log_path: Path, env: dict) -> subprocess.Popen:
    """``ros2 launch x3kd_ros detector.launch.py`` in the README's ROS shell, in its own process group."""
    if not (Path(sys.executable).parent / "ros2").is_file():
        raise SystemExit("--launch needs the ros2 command in the venv (tools/setup.sh installs the vendored "
                         "ROS 2 tools from ../shared/vendor/ros2)")
    if args.backend != "torch":
        raise SystemExit("--launch passes no backend argument (the launch file has none): run without --launch")
    launch = (f"ros2 launch x3kd_ros detector.launch.py checkpoint:={checkpoint} device:={args.device} "
              f"fastdds_profile:={args.detector_fastdds_profile or args.fastdds_profile}")
    print("detector: " + launch, flush=True)
    log = open(log_path, "w")
    try:
        return subprocess.Popen(["bash", "-c", f"source {ROS_ENV} && exec {launch}"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=env,
                                start_new_session=True)
    finally:
        log.close()


def stop_launch(proc: subprocess.Popen, timeout_s: float = 15.0) -> Optional[int]:
    """Ctrl-C as a terminal sends it (SIGINT to the launch's process group, which this script
    created), then SIGTERM / SIGKILL to that group."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def detector_environment(proc: subprocess.Popen, log_path: Path, launched: bool) -> dict[str, str]:
    """The running detector process's environment (Linux /proc); with --launch its PID is the one
    the launch log gives for x3kd_detector-1."""
    import re

    pid = proc.pid
    if launched:
        found = re.search(r"\[x3kd_detector-\d+\]: process started with pid \[(\d+)\]",
                          log_path.read_text(errors="replace"))
        if found is None:
            return {}
        pid = int(found.group(1))
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def start_detector(args: argparse.Namespace, checkpoint: Path, log_path: Path, env: dict) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "x3kd_detector"
    cmd = [str(exe) if exe.is_file() else "x3kd_detector", "--ros-args", "-r", f"__node:={NODE_NAME}",
           "--params-file", args.params_file,
           "-p", f"checkpoint:={checkpoint}", "-p", f"device:={args.device}", "-p", f"backend:={args.backend}",
           # Extrinsics from our /tf_static only: a missing transform must show, not be filled in.
           "-p", "extrinsics_source:=tf_static",
           # Twice a second, so the before / after snapshots are close to the timed window.
           "-p", "diagnostics_period_s:=0.5"]
    if args.qos == "reliable":
        cmd += ["-p", "qos.input.reliability:=reliable"]
    for override in args.param:
        cmd += ["-p", override]
    print("detector:", " ".join(cmd), flush=True)
    log = open(log_path, "w")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    finally:
        log.close()  # the child holds its own descriptor


def stop_child(proc: subprocess.Popen, timeout_s: float = 10.0) -> Optional[int]:
    """SIGINT (the node's clean shutdown), then SIGTERM, then SIGKILL, to this PID only."""
    if proc.poll() is not None:
        return proc.returncode
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


# ---------------------------------------------------------------------------------------- bench node
class Bench:
    """Publisher of camera sets and collector of detections and diagnostics (one rclpy node)."""

    def __init__(self, context, width: int, height: int, qos: str = "sensor", node_name: str = NODE_NAME,
                 markers: bool = False) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image
        from std_msgs.msg import Header
        from tf2_msgs.msg import TFMessage
        from vision_msgs.msg import Detection3DArray

        from x3kd_core.data.synthetic.config import SynthConfig
        from x3kd_core.data.synthetic.sensors import camera_specs
        from x3kd_core.structures import CAMERA_NAMES
        from x3kd_ros import topics
        from x3kd_ros.conversions import intrinsics_to_camera_info, rgb_to_image
        from x3kd_ros.nodes.qos import qos_profile, static_tf_qos

        self.node = rclpy.create_node("x3kd_bench_cameras", context=context)
        self.node_name = node_name
        qos_in = qos_profile_sensor_data if qos == "sensor" else qos_profile("reliable", 5)
        self.cameras = list(CAMERA_NAMES)
        specs = {s.name: s for s in camera_specs(SynthConfig(image_width=width, image_height=height))}
        self._specs = specs
        self._topics = topics
        self.image_pubs = {c: self.node.create_publisher(Image, topics.camera_image_topic(c), qos_in)
                           for c in self.cameras}
        self.info_pubs = {c: self.node.create_publisher(CameraInfo, topics.camera_info_topic(c),
                                                        qos_in) for c in self.cameras}
        self.tf_pub = self.node.create_publisher(TFMessage, topics.TF_STATIC_TOPIC, static_tf_qos())

        # One message per camera, built once: per set only the stamp changes, so the publisher's
        # own cost is the DDS serialisation, as for a driver handing over a ready buffer.
        rng = np.random.default_rng(0)
        self.images, self.infos = {}, {}
        for cam in self.cameras:
            header = Header(frame_id=topics.sensor_frame(cam))
            self.images[cam] = rgb_to_image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), header)
            self.infos[cam] = intrinsics_to_camera_info(specs[cam].intrinsics, (height, width),
                                                        Header(frame_id=topics.sensor_frame(cam)))

        self.lock = threading.Lock()
        self.published: dict[int, int] = {}        # set stamp (ns) -> monotonic ns after its last image
        self.publish_ms: dict[int, float] = {}     # set stamp (ns) -> time to publish its 6 images + infos
        self.received: dict[int, int] = {}         # set stamp (ns) -> monotonic ns of its detections
        self.unmatched = 0
        self.last_message: tuple[int, str] = (-1, "")  # (level, message) of the latest detector status
        self.diagnostics: list[tuple[int, dict[str, str]]] = []  # (monotonic ns, values)
        self.node.create_subscription(Detection3DArray, topics.DETECTIONS_TOPIC, self._on_detections,
                                      qos_profile("reliable", 10))
        self.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS_TOPIC, self._on_diagnostics, 10)
        self.marker_arrays = 0
        self.marker_sub = None
        if markers:
            from visualization_msgs.msg import MarkerArray

            self.marker_sub = self.node.create_subscription(MarkerArray, topics.DETECTION_MARKERS_TOPIC,
                                                            self._on_markers, qos_profile("reliable", 10))

    def matched(self) -> bool:
        inputs = all(p.get_subscription_count() >= 1 for p in [*self.image_pubs.values(), *self.info_pubs.values()])
        return inputs and (self.marker_sub is None or self.marker_sub.get_publisher_count() >= 1)

    def _on_markers(self, msg) -> None:
        with self.lock:
            self.marker_arrays += 1

    def publish_tf_static(self) -> None:
        from geometry_msgs.msg import TransformStamped
        from tf2_msgs.msg import TFMessage

        from x3kd_core import geometry

        transforms = []
        for cam in self.cameras:
            to_ego = self._specs[cam].to_ego
            t = TransformStamped()
            t.header.frame_id = self._topics.BASE_FRAME
            t.child_frame_id = self._topics.sensor_frame(cam)
            t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (float(v) for v in
                                                                                               to_ego[:3, 3])
            w, x, y, z = (float(v) for v in geometry.matrix_to_quaternion(to_ego[:3, :3]))
            t.transform.rotation.w, t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z = w, x, y, z
            transforms.append(t)
        self.tf_pub.publish(TFMessage(transforms=transforms))

    def publish_set(self, stamp_ns: int) -> None:
        from x3kd_ros.conversions import ns_to_stamp

        stamp = ns_to_stamp(stamp_ns)
        begin = time.monotonic_ns()
        for cam in self.cameras:
            # CameraInfo first: a driver sends both, and the node needs K before the image.
            self.infos[cam].header.stamp = stamp
            self.info_pubs[cam].publish(self.infos[cam])
            self.images[cam].header.stamp = stamp
            self.image_pubs[cam].publish(self.images[cam])
        done = time.monotonic_ns()
        with self.lock:
            self.published[stamp_ns] = done
            self.publish_ms[stamp_ns] = (done - begin) / 1e6

    def _on_detections(self, msg) -> None:
        from x3kd_ros.conversions import stamp_to_ns

        now = time.monotonic_ns()
        stamp_ns = stamp_to_ns(msg.header.stamp)
        with self.lock:
            if stamp_ns in self.published and stamp_ns not in self.received:
                self.received[stamp_ns] = now
            else:
                self.unmatched += 1

    def _on_diagnostics(self, msg) -> None:
        from x3kd_ros.nodes.meters import diagnostics_values

        now = time.monotonic_ns()
        for status in msg.status:
            if status.name.startswith(f"{self.node_name}:"):
                with self.lock:
                    self.diagnostics.append((now, diagnostics_values(status)))
                    self.last_message = (int.from_bytes(status.level, "little"), status.message)

    def last_diagnostics(self, after_ns: int = 0) -> Optional[tuple[int, dict[str, str]]]:
        with self.lock:
            for t, values in reversed(self.diagnostics):
                if t > after_ns:
                    return t, values
        return None


def conversion_cost(checkpoint: Path, width: int, height: int, calls: int = 30) -> dict[str, float]:
    """Median ms per camera image: message -> network input (module docstring, step 0)."""
    import cv2

    from x3kd_core.config import from_dict
    from x3kd_core.data.nuscenes import ImageTransform
    from x3kd_core.experiment import ExperimentConfig
    from x3kd_core.checkpoint import load_checkpoint
    from x3kd_ros.conversions import image_to_rgb, rgb_to_image

    exp = from_dict(ExperimentConfig, load_checkpoint(checkpoint, ("StudentTask",))["config"])
    tf = ImageTransform.fit((height, width), tuple(exp.image_hw), exp.data.resize_scale,
                            exp.data.crop_bottom_fraction)
    rgb = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = {"network_hw": list(exp.image_hw)}
    for encoding in ("rgb8", "bgr8"):
        msg = rgb_to_image(rgb, encoding=encoding)
        for name, fn in ((f"{encoding} one resize from the buffer", lambda: image_to_rgb(msg, resize=tf)),
                         (f"{encoding} full-size convert, then resize",
                          lambda: tf.apply(np.ascontiguousarray(image_to_rgb(msg)), cv2.INTER_LINEAR))):
            fn()
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            out[name] = statistics.median(times)
    return out


def message_cost(n_boxes: int = 100, calls: int = 15) -> dict[str, float]:
    """Median ms per set to turn ``n_boxes`` boxes into the node's two output messages, ready to
    send (module docstring, step 0b): message objects (x3kd_ros.conversions) + rclpy's
    serialization, which publish() does for objects, vs the CDR bytes the node publishes
    (x3kd_ros.message_bytes); calls of the two interleaved."""
    from builtin_interfaces.msg import Time
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from x3kd_core.structures import Boxes3D
    from x3kd_ros import message_bytes
    from x3kd_ros.conversions import MarkerStyle, boxes_to_detections, boxes_to_markers

    rng = np.random.default_rng(2)
    boxes = Boxes3D(center=rng.uniform(-50, 50, (n_boxes, 3)), size_lwh=rng.uniform(0.3, 10, (n_boxes, 3)),
                    yaw=rng.uniform(-np.pi, np.pi, n_boxes), velocity=np.zeros((n_boxes, 2)),
                    label=rng.integers(0, 10, n_boxes), score=rng.uniform(0, 1, n_boxes))
    header, style = Header(stamp=Time(sec=1, nanosec=2), frame_id="base_link"), MarkerStyle()
    fns = {"detections objects + serialize": lambda: serialize_message(boxes_to_detections(boxes, header)),
           "detections bytes": lambda: message_bytes.detections_cdr(boxes, header),
           "markers objects + serialize": lambda: serialize_message(boxes_to_markers(boxes, header, style)),
           "markers bytes": lambda: message_bytes.markers_cdr(boxes, header, style)}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(calls + 1):  # the first round is a warm-up
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def publish_loop(bench: Bench, rate_hz: float, n_sets: int, base_stamp_ns: int, stop: threading.Event) -> list[int]:
    """Publish ``n_sets`` sets at ``rate_hz`` on a fixed schedule (no drift); returns their stamps."""
    period_ns = int(1e9 / rate_hz)
    start = time.monotonic_ns()
    stamps = []
    for k in range(n_sets):
        if stop.is_set():
            break
        due = start + k * period_ns
        delay = (due - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        stamp = base_stamp_ns + k * period_ns
        bench.publish_set(stamp)
        stamps.append(stamp)
    return stamps


def _num(values: dict[str, str], key: str) -> float:
    try:
        return float(values.get(key, "nan"))
    except ValueError:
        return math.nan


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


# ---------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> int:
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = apply_network_rule(args.domain_id if args.domain_id is not None else pid_domain_id(),
                             str(work / "ros_log"))
    print("network:", " ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    # This process is the camera driver: it loads the transport profile before its first participant.
    from x3kd_ros.graph.transport import profile_environment

    try:
        transport_env, transport_note = profile_environment(args.fastdds_profile)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    launch_env = dict(os.environ)  # with --launch the launch file applies the profile to its nodes itself
    detector_env = dict(os.environ)
    if args.detector_fastdds_profile is None:
        detector_env.update(transport_env)
    else:
        try:
            detector_env.update(profile_environment(args.detector_fastdds_profile)[0])
        except ValueError as err:
            raise SystemExit(str(err)) from None
    os.environ.update(transport_env)
    print(f"Fast DDS profile of the publisher: {transport_note}", flush=True)

    if args.checkpoint:
        checkpoint = Path(args.checkpoint).resolve()
    else:
        t0 = time.perf_counter()
        checkpoint = write_tiny_checkpoint(args.model_config, work / "student_tiny.pt")
        print(f"checkpoint: {checkpoint} (untrained, written in {time.perf_counter() - t0:.1f} s)", flush=True)

    conv = conversion_cost(checkpoint, args.width, args.height)
    print(f"per-camera conversion + resize ({args.width}x{args.height} -> {conv['network_hw'][1]}x"
          f"{conv['network_hw'][0]}, median of 30, this process): " +
          "; ".join(f"{k} {v:.2f} ms" for k, v in conv.items() if k != "network_hw"), flush=True)

    messages = message_cost(args.message_boxes) if args.message_boxes > 0 else {}
    if messages:
        print(f"output messages per set ({args.message_boxes} boxes, median of 15, this process): " +
              "; ".join(f"{k} {v:.2f} ms" for k, v in messages.items()), flush=True)

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from x3kd_ros.nodes.spin import spin_until

    log_path = work / ("launch.log" if args.launch else "detector.log")
    if args.launch:
        proc = start_launch(args, checkpoint, log_path, launch_env)
    else:
        proc = start_detector(args, checkpoint, log_path, detector_env)
    stop_proc = stop_launch if args.launch else stop_child
    context = Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    stop = threading.Event()
    bench = None
    try:
        bench = Bench(context, args.width, args.height, args.qos, LAUNCH_NODE_NAME if args.launch else NODE_NAME,
                      markers=args.markers)
        executor.add_node(bench.node)
        t0 = time.monotonic()
        up = spin_until(executor, lambda: proc.poll() is not None or (bench.matched() and bench.last_diagnostics()),
                        args.start_timeout)
        if proc.poll() is not None or not up:
            print(f"detector did not come up (exit code {proc.poll()}); see {log_path}")
            return 1
        print(f"detector up after {time.monotonic() - t0:.1f} s (pid {proc.pid})", flush=True)
        detector_profile = detector_environment(proc, log_path, args.launch).get("FASTDDS_DEFAULT_PROFILES_FILE", "")
        print(f"Fast DDS profile of the detector process: {detector_profile or '(none: Fast DDS defaults)'}",
              flush=True)
        bench.publish_tf_static()
        spin_until(executor, lambda: False, 0.5)  # let /tf_static and the first CameraInfo land

        period_ns = int(1e9 / args.rate)
        base_ns = time.time_ns()

        def run_phase(n_sets: int, base: int) -> list[int]:
            out: list[int] = []
            thread = threading.Thread(target=lambda: out.extend(publish_loop(bench, args.rate, n_sets, base, stop)),
                                      daemon=True)
            thread.start()
            while thread.is_alive():
                executor.spin_once(timeout_sec=0.005)
            return out

        # Warm-up: untimed sets (first model calls are slow), then a fresh diagnostics snapshot.
        warm = run_phase(args.warmup_sets, base_ns)
        spin_until(executor, lambda: all(s in bench.received for s in warm), 60.0)
        mark = time.monotonic_ns()
        spin_until(executor, lambda: bench.last_diagnostics(mark) is not None, 5.0)
        before = bench.last_diagnostics() or (0, {})
        with bench.lock:
            warm_received = sum(s in bench.received for s in warm)

        # Timed window.
        n_sets = max(1, int(round(args.duration * args.rate)))
        timed_base = base_ns + (args.warmup_sets + 1) * period_ns
        t_start = time.monotonic()
        stamps = run_phase(n_sets, timed_base)
        with bench.lock:
            span_ns = bench.published[stamps[-1]] - bench.published[stamps[0]] if len(stamps) > 1 else 0
        publish_s = time.monotonic() - t_start
        pub_end = time.monotonic()

        # Drain: wait for late sets (sync timeout, model queue) until nothing has come for a while.
        def drained() -> bool:
            with bench.lock:
                got = [bench.received[s] for s in stamps if s in bench.received]
            if len(got) == len(stamps):
                return True
            last = max(got) / 1e9 if got else pub_end
            return time.monotonic() - max(last, pub_end) > 3.0
        spin_until(executor, drained, args.drain_timeout)
        mark = time.monotonic_ns()
        spin_until(executor, lambda: bench.last_diagnostics(mark) is not None, 5.0)
        after = bench.last_diagnostics() or (0, {})
        in_window = [v for t, v in bench.diagnostics if before[0] < t <= after[0]]
    finally:
        stop.set()
        code = stop_proc(proc)
        print(f"detector stopped (pid {proc.pid}, exit code {code})", flush=True)
        executor.shutdown()
        if bench is not None:
            bench.node.destroy_node()
        context.try_shutdown()

    # ---------------------------------------------------------------- report
    b, a = before[1], after[1]

    def delta(key: str) -> float:
        return _num(a, key) - _num(b, key)

    with bench.lock:
        lat_ms = [(bench.received[s] - bench.published[s]) / 1e6 for s in stamps if s in bench.received]
        unmatched = bench.unmatched
    cams = bench.cameras
    received_imgs = sum(delta(f"{c}.received") for c in cams)
    model_mean, model_max = _num(a, "model_ms.mean"), _num(a, "model_ms.max")
    model_last = [_num(v, "model_ms.last") for v in in_window if not math.isnan(_num(v, "model_ms.last"))]
    model_med = statistics.median(model_last) if model_last else model_mean
    load = os.getloadavg()

    print()
    print(f"== detector at {args.rate:g} Hz for {args.duration:g} s: {len(cams)} cameras {args.width}x{args.height} "
          f"rgb8, device {args.device}, checkpoint {checkpoint.name} ==")
    print(f"load average            {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cpus)")
    print(f"warm-up                 {warm_received}/{len(warm)} sets answered")
    pub_ms = [bench.publish_ms[s] for s in stamps]
    achieved = (len(stamps) - 1) / (span_ns / 1e9) if span_ns else math.nan
    print(f"sets published          {len(stamps)} in {publish_s:.2f} s ({achieved:.2f} Hz achieved, first to last "
          f"set; publisher QoS {args.qos})")
    print(f"publish call per set ms p50 {percentile(pub_ms, 50):.1f}  max {max(pub_ms):.1f}  (6 x Image + CameraInfo, "
          f"this process)")
    per_cam = " ".join(f"{c}={delta(f'{c}.received'):.0f}" for c in cams)
    print(f"images received (node)  {received_imgs:.0f} / {len(stamps) * len(cams)} published ({per_cam})")
    print(f"sync sets emitted       {delta('sync.emitted'):.0f} (partial {delta('sync.partial'):.0f}, "
          f"dropped {delta('sync.dropped_sets'):.0f}, late {delta('sync.late'):.0f}, "
          f"overflow {delta('sync.overflow'):.0f})")
    print(f"busy drops              {delta('busy_drops'):.0f} (model busy; processing_queue_size full)")
    print(f"other drops             sets_without_extrinsics {delta('sets_without_extrinsics'):.0f}, "
          f"inference_errors {delta('inference_errors'):.0f}, missing_camera_info "
          f"{sum(delta(f'{c}.missing_camera_info') for c in cams):.0f}")
    print(f"node published          {delta('published'):.0f} sets, {delta('boxes_published'):.0f} boxes "
          f"({delta('boxes_published') / max(1.0, delta('published')):.1f} per set), marker arrays "
          f"{delta('marker_arrays_published'):.0f} (nan: a node without that counter; marker subscriber here: "
          f"{'yes' if args.markers else 'no'})")
    print(f"Detection3DArray recvd  {len(lat_ms)} / {len(stamps)} sets ({len(stamps) - len(lat_ms)} without "
          f"detections; {unmatched} unmatched or duplicate messages)")
    if lat_ms:
        p50, p90, p99 = (percentile(lat_ms, q) for q in (50, 90, 99))
        print(f"end-to-end latency ms   p50 {p50:.1f}  p90 {p90:.1f}  p99 {p99:.1f}  max {max(lat_ms):.1f}  "
              f"mean {statistics.fmean(lat_ms):.1f}  (detections received - last image of the set published)")
    else:
        p50 = p90 = math.nan
        print("end-to-end latency ms   n/a (no detections received)")
    print(f"node end_to_end_ms      mean {_num(a, 'end_to_end_ms.mean'):.1f}  max {_num(a, 'end_to_end_ms.max'):.1f}  "
          f"(node: first image received -> published, last 100 sets)")
    print(f"model time ms           mean {model_mean:.1f}  max {model_max:.1f}  (diagnostics model_ms, last 100 sets); "
          f"median of per-report last {model_med:.1f} ({len(model_last)} reports)")
    print(f"node overhead ms        p50 {p50 - model_med:.1f}  p90 {p90 - model_med:.1f}  "
          f"(end-to-end percentile - median model time)")

    def pcts(key: str, fmt: str = "{:.1f}") -> str:
        return "  ".join(f"{q} " + fmt.format(_num(a, f"{key}.{q}")) for q in ("p50", "p90", "p99"))

    print(f"node model_ms           {pcts('model_ms')}  (/diagnostics, last 100 sets)")
    print(f"node end_to_end_ms      {pcts('end_to_end_ms')}  (first image received -> published)")
    print(f"node overhead_ms        {pcts('overhead_ms', '{:.2f}')}  (per set: conversion + resize of its images + "
          f"sync wait + publish)")
    print(f"node overhead / model   {pcts('overhead_ratio', '{:.3f}')}  (per set ratio)")
    print(f"node convert_ms         {pcts('convert_ms', '{:.2f}')}  (per image, in the node)")
    print(f"node sync_wait_ms       {pcts('sync_wait_ms', '{:.2f}')}  (per set: last image ready -> set complete or "
          f"timed out)")
    print(f"node publish_ms         {pcts('publish_ms', '{:.2f}')}  (per set: build + publish the messages)")
    print(f"node queue_ms           {pcts('queue_ms')}  (set waiting for a busy model)")
    dropped = len(stamps) - len(lat_ms)
    print(f"frames dropped          {dropped} of {len(stamps)} (busy_drops {delta('busy_drops'):.0f}, sync dropped "
          f"{delta('sync.dropped_sets'):.0f}; backend {args.backend})")
    total_published = (len(warm) + len(stamps)) * len(cams)
    total_received = sum(_num(a, f"{c}.received") for c in cams)
    print(f"all images (node total) {total_received:.0f} / {total_published} published, warm-up included")
    print(f"detector diagnostics    level {bench.last_message[0]}: {bench.last_message[1]}")
    if args.json:
        launch_note = ""
        if args.launch:
            found = [line for line in log_path.read_text(errors="replace").splitlines()
                     if "Fast DDS transport profile:" in line]
            launch_note = found[0].split("Fast DDS transport profile:", 1)[1].strip() if found else ""
        summary = {
            "mode": "ros2 launch" if args.launch else "x3kd_detector", "rate_hz": args.rate,
            "duration_s": args.duration, "width": args.width, "height": args.height, "qos": args.qos,
            "publisher_profile": transport_note, "detector_profile": detector_profile, "launch_profile_note": launch_note,
            "sets_published": len(stamps), "images_published": len(stamps) * len(cams),
            "images_received": received_imgs, "images_received_per_camera": {c: delta(f"{c}.received") for c in cams},
            "images_published_total": total_published, "images_received_total": total_received,
            "arriving_percent": {c: _num(a, f"{c}.arriving_percent") for c in cams},
            "sync_emitted": delta("sync.emitted"), "sync_partial": delta("sync.partial"),
            "busy_drops": delta("busy_drops"), "detections_received": len(lat_ms),
            "latency_ms_p50": p50, "latency_ms_p90": p90, "load_average": list(load), "exit_code": code,
            "latency_ms_p99": percentile(lat_ms, 99), "backend": args.backend, "conversion_ms": conv,
            "frames_dropped": len(stamps) - len(lat_ms),
            "node": {key: {q: _num(a, f"{key}.{q}") for q in ("p50", "p90", "p99")}
                     for key in ("model_ms", "end_to_end_ms", "overhead_ms", "overhead_ratio", "convert_ms", "queue_ms",
                                 "sync_wait_ms", "publish_ms")},
            "diagnostics_level": bench.last_message[0], "diagnostics_message": bench.last_message[1],
            "message_ms": messages, "markers_subscribed": args.markers, "boxes_published": delta("boxes_published"),
            "marker_arrays_published": delta("marker_arrays_published"),
        }
        Path(args.json).write_text(json.dumps(summary, indent=1, default=float))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        raise SystemExit("--rate and --duration must be > 0")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
