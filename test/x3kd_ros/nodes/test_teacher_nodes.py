"""LiDAR and radar teacher nodes in-process over loopback DDS, with untrained tiny checkpoints.

The published boxes are compared with the node's model run on the ego-frame input computed here
independently from the calibration, so the frame transforms, NaN handling, radar velocity rotation
and time lags are checked, not only that something was published.
"""

from __future__ import annotations

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray

from x3kd_core import geometry
from x3kd_core.structures import RADAR_NAMES
from x3kd_ros import topics
from x3kd_ros.conversions import (
    detections_to_boxes,
    lidar_points_to_cloud,
    ns_to_stamp,
    radar_points_to_cloud,
    structured_to_cloud,
)
from x3kd_ros.extrinsics import synthetic_rig_transforms
from x3kd_ros.nodes.params import ParameterError
from x3kd_ros.nodes.qos import qos_profile
from x3kd_ros.nodes.teacher_nodes import LidarTeacherNode, RadarTeacherNode

RELIABLE = qos_profile("reliable", 10)
RIG = synthetic_rig_transforms()
COMMON_ARGS = ["-p", "device:=cpu", "-p", "extrinsics_source:=file", "-p", "calibration_file:=calibration_synthetic.yaml",
               "-p", "qos.input.reliability:=reliable", "-p", "processing_queue_size:=5"]


@pytest.fixture
def harness(ros_context):
    """(executor, test node, received detections, add_node)."""
    test_node = rclpy.create_node("x3kd_test_teacher_io", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(test_node)
    nodes = []

    def add(node):
        nodes.append(node)
        executor.add_node(node)
        return node

    try:
        yield executor, test_node, add
    finally:
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        test_node.destroy_node()


def assert_same_boxes(msg, expected):
    got = detections_to_boxes(msg)
    assert len(got) == len(expected) > 0
    np.testing.assert_allclose(got.center, expected.center, atol=1e-6)
    np.testing.assert_allclose(got.size_lwh, expected.size_lwh, atol=1e-6)
    np.testing.assert_allclose(got.score, expected.score, atol=1e-6)
    np.testing.assert_array_equal(got.label, expected.label)


def _start_lidar_teacher(harness, ros_context, checkpoint, spin_until):
    """(node, cloud publisher, received detections) once the node's subscription is matched."""
    executor, io, add = harness
    node = add(LidarTeacherNode(context=ros_context, cli_args=["--ros-args", "-p", f"checkpoint:={checkpoint}",
                                                                *COMMON_ARGS]))
    pub = io.create_publisher(PointCloud2, topics.LIDAR_TOPIC, RELIABLE)
    received: list[Detection3DArray] = []
    io.create_subscription(Detection3DArray, topics.teacher_detections_topic("lidar"), received.append, RELIABLE)
    assert spin_until(executor, lambda: pub.get_subscription_count() == 1)
    return node, pub, received


def test_lidar_teacher_publishes_per_cloud_drops_nan_and_survives_bad_clouds(
        harness, ros_context, lidar_checkpoint, spin_until, spin_for):
    executor = harness[0]
    node, pub, received = _start_lidar_teacher(harness, ros_context, lidar_checkpoint, spin_until)

    rng = np.random.default_rng(3)
    points = np.concatenate([rng.uniform(-20, 20, (40, 2)), rng.uniform(-1.5, 1.0, (40, 1)),
                             rng.uniform(0, 100, (40, 1)), rng.integers(0, 32, (40, 1))], axis=1)
    points[[3, 11, 17, 29], 0] = np.nan  # four returns without a position
    stamps = [1_600_000_000 * 10**9 + k * 50_000_000 for k in range(3)]

    def header(k):
        return Header(stamp=ns_to_stamp(stamps[k]), frame_id="lidar_top")

    pub.publish(lidar_points_to_cloud(points, header(0), fields=("x", "y", "z", "intensity", "ring")))
    xyz_only = np.zeros(5, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    pub.publish(structured_to_cloud(xyz_only, header(1)))  # no intensity field: unusable
    pub.publish(lidar_points_to_cloud(np.zeros((0, 4)), header(2)))  # an empty sweep is valid input
    assert spin_until(executor, lambda: len(received) == 2)
    spin_for(executor, 0.3)
    assert len(received) == 2
    assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in received] == [divmod(s, 10**9) for s in (stamps[0], stamps[2])]
    assert {m.header.frame_id for m in received} == {"base_link"}

    finite = points[np.isfinite(points[:, 0])].astype(np.float32)
    expected_input = np.zeros((len(finite), 5), np.float32)  # x y z (ego) intensity time_lag=0
    expected_input[:, :3] = geometry.transform_points(RIG["lidar_top"], finite[:, :3].astype(np.float64))
    expected_input[:, 3] = finite[:, 3]
    # The LiDAR is mounted turned by -90 deg: its +x is the ego's -y (right).
    np.testing.assert_allclose(RIG["lidar_top"][:3, :3] @ [1, 0, 0], [0, -1, 0], atol=1e-9)
    assert_same_boxes(received[0], node.predict(expected_input))
    assert_same_boxes(received[1], node.predict(np.zeros((0, 5), np.float32)))

    values = node.diagnostics_values()
    assert {k: values[f"lidar.{k}"] for k in ("received", "points", "nan_points", "conversion_errors")} == {
        "received": 3, "points": 36, "nan_points": 4, "conversion_errors": 1}
    assert (values["published"], values["inference_errors"], values["detections_subscribers"]) == (2, 0, 1)


def test_radar_teacher_synchronizes_five_radars(harness, ros_context, radar_checkpoint, spin_until):
    executor, io, add = harness
    node = add(RadarTeacherNode(context=ros_context, cli_args=[
        "--ros-args", "-p", f"checkpoint:={radar_checkpoint}", "-p", "sync.timeout_s:=0.3", *COMMON_ARGS]))
    pubs = {r: io.create_publisher(PointCloud2, topics.radar_topic(r), RELIABLE) for r in RADAR_NAMES}
    received: list[Detection3DArray] = []
    io.create_subscription(Detection3DArray, topics.teacher_detections_topic("radar"), received.append, RELIABLE)
    assert spin_until(executor, lambda: all(p.get_subscription_count() == 1 for p in pubs.values()))

    rng = np.random.default_rng(5)
    base_ns = 1_600_000_000 * 10**9
    stamps = {r: base_ns + i * 10_000_000 for i, r in enumerate(RADAR_NAMES)}  # 0, 10, ..., 40 ms
    clouds = {}
    for r in RADAR_NAMES:
        n = 0 if r == "RADAR_BACK_RIGHT" else 6
        pts = np.concatenate([rng.uniform(1, 30, (n, 1)), rng.uniform(-5, 5, (n, 1)), np.zeros((n, 1)),
                              rng.uniform(-5, 20, (n, 1)), rng.uniform(-8, 8, (n, 2))], axis=1)
        if n:
            pts[0, 1] = np.inf  # one bad return per radar
        clouds[r] = pts
        pubs[r].publish(radar_points_to_cloud(pts, Header(stamp=ns_to_stamp(stamps[r]), frame_id=topics.sensor_frame(r))))
    assert spin_until(executor, lambda: len(received) == 1)
    set_stamp = base_ns + 20_000_000  # lower median of the five stamps
    assert (received[0].header.stamp.sec, received[0].header.stamp.nanosec) == divmod(set_stamp, 10**9)

    parts = []
    for r in RADAR_NAMES:  # the node concatenates in radar order
        pts = clouds[r][np.all(np.isfinite(clouds[r][:, :3]), axis=1)].astype(np.float32)
        to_ego = RIG[topics.sensor_frame(r)]
        part = np.zeros((len(pts), 7), np.float32)
        part[:, :3] = geometry.transform_points(to_ego, pts[:, :3].astype(np.float64))
        part[:, 3] = pts[:, 3]
        vel = np.concatenate([pts[:, 4:6], np.zeros((len(pts), 1))], axis=1) @ to_ego[:3, :3].T
        part[:, 4:6] = vel[:, :2]
        part[:, 6] = (set_stamp - stamps[r]) / 1e9
        parts.append(part)
    expected_input = np.concatenate(parts)
    assert len(expected_input) == 20 and sorted(set(np.round(expected_input[:, 6].astype(float), 3))) == [-0.01, 0.0, 0.01, 0.02]
    assert_same_boxes(received[0], node.predict(expected_input))

    # Two radars missing: used anyway once the others cannot complete the set (policy partial).
    later = base_ns + 500_000_000
    for r in RADAR_NAMES[:3]:
        pubs[r].publish(radar_points_to_cloud(clouds[r][1:], Header(stamp=ns_to_stamp(later),
                                                                    frame_id=topics.sensor_frame(r))))
    assert spin_until(executor, lambda: len(received) == 2)
    values = node.diagnostics_values()
    assert (values["sync.emitted"], values["sync.partial"], values["published"]) == (2, 1, 2)
    assert [values[f"{r}.nan_points"] for r in RADAR_NAMES] == [1, 1, 1, 1, 0]
    assert values["RADAR_FRONT.received"] == 2 and values["RADAR_BACK_RIGHT.received"] == 1


def test_teacher_checkpoint_must_be_of_its_kind(ros_context, radar_checkpoint):
    with pytest.raises(ParameterError, match="checkpoint: .*not a checkpoint of kind lidar"):
        LidarTeacherNode(context=ros_context, cli_args=["--ros-args", "-p", f"checkpoint:={radar_checkpoint}",
                                                        *COMMON_ARGS])
    with pytest.raises(ParameterError, match=r"input_topics = .*needs one entry per radar \(2\), got 1"):
        RadarTeacherNode(context=ros_context, cli_args=[
            "--ros-args", "-p", f"checkpoint:={radar_checkpoint}", "-p", "radars:=[RADAR_FRONT,RADAR_BACK_LEFT]",
            "-p", "input_topics:=[/r]", *COMMON_ARGS])


def test_nan_and_empty_clouds_make_the_diagnostics_warn_with_counts(harness, ros_context, spin_until):
    """Before: an all-NaN or empty cloud was processed with /diagnostics OK and no log line."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    from x3kd_ros.nodes.meters import diagnostics_values

    class NoBoxes:  # stands in for the model: always "nothing found"
        device = "cpu"

        def __call__(self, points):
            return points

        def predict(self, outputs):
            from x3kd_core.structures import Boxes3D

            return [Boxes3D.empty()]

    executor, io, add = harness
    node = add(LidarTeacherNode(NoBoxes(), context=ros_context, cli_args=[
        "--ros-args", *COMMON_ARGS, "-p", "diagnostics_period_s:=0.2"]))
    pub = io.create_publisher(PointCloud2, topics.LIDAR_TOPIC, RELIABLE)
    statuses = []
    io.create_subscription(DiagnosticArray, topics.DIAGNOSTICS_TOPIC, lambda m: statuses.extend(m.status), 10)
    assert spin_until(executor, lambda: pub.get_subscription_count() == 1)
    stamp = 1_600_000_000 * 10**9

    def send(points, k):
        pub.publish(lidar_points_to_cloud(points, Header(stamp=ns_to_stamp(stamp + k * 50_000_000),
                                                         frame_id="lidar_top")))

    good = np.array([[5.0, 1.0, 0.0, 10.0]] * 3)
    send(good, 0)
    assert spin_until(executor, lambda: node.diagnostics_values()["published"] == 1)
    assert spin_until(executor, lambda: statuses and statuses[-1].level == DiagnosticStatus.OK, 5.0)
    all_nan = np.full((7, 4), np.nan)
    send(all_nan, 1)
    send(np.zeros((0, 4)), 2)
    partly = good.copy()
    partly[0, 2] = np.nan
    send(partly, 3)

    def warned():
        return any(s.level == DiagnosticStatus.WARN and "lidar: 2 clouds without a valid point (1 empty, 1 all NaN)"
                   in s.message and "8 NaN points dropped" in s.message for s in statuses)

    assert spin_until(executor, warned, 10.0), [s.message for s in statuses][-3:]
    values = diagnostics_values(statuses[-1])
    assert (values["lidar.empty_clouds"], values["lidar.invalid_clouds"], values["lidar.nan_points"]) == ("1", "1", "8")
    # Nothing new: OK again.
    assert spin_until(executor, lambda: statuses[-1].level == DiagnosticStatus.OK, 5.0)


def test_lidar_teacher_runs_a_checkpoint_converted_from_mmdet3d(harness, ros_context, spin_until, tmp_path):
    """`x3kd convert mmdet3d-centerpoint` output (the committed parity fixture's weights) in the node."""
    import json
    from pathlib import Path

    import torch

    from x3kd_core.convert.mmdet3d import config_from_mmdet3d_model, convert_centerpoint

    fixture = Path(__file__).resolve().parents[2] / "fixtures" / "mmdet3d" / "centerpoint_pillar_tiny.pt"
    fx = torch.load(fixture, map_location="cpu", weights_only=True)
    config = config_from_mmdet3d_model(json.loads(fx["model_config"]), source="fixture", sweeps=1)
    src = tmp_path / "mmdet3d.pth"
    torch.save({"meta": {"dataset_meta": {"classes": list(config.class_names)}}, "state_dict": fx["state_dict"]}, src)
    checkpoint = convert_centerpoint(src, config, tmp_path / "teacher.pt")

    executor = harness[0]
    node, pub, received = _start_lidar_teacher(harness, ros_context, checkpoint, spin_until)

    cloud = fx["points"][1][:, :4].numpy().astype(np.float64)  # x y z intensity (sensor frame here)
    points = np.concatenate([cloud, np.zeros((len(cloud), 1))], axis=1)
    pub.publish(lidar_points_to_cloud(points, Header(stamp=ns_to_stamp(1_600_000_000 * 10**9), frame_id="lidar_top"),
                                      fields=("x", "y", "z", "intensity", "ring")))
    assert spin_until(executor, lambda: len(received) == 1)
    expected_input = np.zeros((len(cloud), 5), np.float32)
    expected_input[:, :3] = geometry.transform_points(RIG["lidar_top"], cloud[:, :3].astype(np.float32).astype(np.float64))
    expected_input[:, 3] = cloud[:, 3].astype(np.float32)
    assert_same_boxes(received[0], node.predict(expected_input))
    assert node.diagnostics_values()["inference_errors"] == 0
