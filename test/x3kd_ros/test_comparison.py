"""Student-vs-teacher matching and agreement figures (pure logic, hand-computed numbers)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from x3kd_core.structures import DETECTION_CLASSES, Boxes3D
from x3kd_ros.comparison import AgreementStats, AgreementTracker, MatchConfig, match_frame

CAR, PED, CONE = (DETECTION_CLASSES.index(n) for n in ("car", "pedestrian", "traffic_cone"))


def boxes(rows) -> Boxes3D:
    """rows: (label, score, x, y, yaw, (l, w, h)); z = 1 m."""
    if not rows:
        return Boxes3D.empty()
    return Boxes3D(
        center=[(r[2], r[3], 1.0) for r in rows],
        size_lwh=[r[5] if len(r) > 5 else (4.0, 2.0, 1.5) for r in rows],
        yaw=[r[4] if len(r) > 4 else 0.0 for r in rows],
        velocity=np.zeros((len(rows), 2)),
        label=[r[0] for r in rows],
        score=[r[1] for r in rows],
    )


def summary(student, teacher, config=MatchConfig()):
    stats = AgreementStats()
    stats.add(match_frame(student, teacher, config))
    return stats.summary()


def test_identical_detections_agree_perfectly():
    rows = [(CAR, 0.9, 10.0, 2.0, 0.3), (PED, 0.8, -5.0, 1.0, -1.0, (0.7, 0.6, 1.8)), (CONE, 0.5, 3.0, -3.0)]
    s = summary(boxes(rows), boxes(rows))
    assert (s.student_boxes, s.teacher_boxes, s.matches) == (3, 3, 3)
    assert (s.precision, s.recall) == (1.0, 1.0)
    assert (s.mean_center_error_m, s.mean_yaw_error_rad, s.mean_size_error) == (0.0, 0.0, 0.0)
    assert sorted(s.per_class) == ["car", "pedestrian", "traffic_cone"]


def test_class_must_agree():
    s = summary(boxes([(CAR, 0.9, 0.0, 0.0)]), boxes([(PED, 0.9, 0.0, 0.0)]))
    assert s.matches == 0 and s.precision == 0.0 and s.recall == 0.0
    assert math.isnan(s.mean_center_error_m)


@pytest.mark.parametrize("dx, matched", [(1.99, True), (2.0, True), (2.01, False)])
def test_bev_centre_distance_threshold_ignores_height(dx, matched):
    student = boxes([(CAR, 0.9, dx, 0.0)])
    student.center[0, 2] = 7.0  # z differs a lot; only x, y count
    s = summary(student, boxes([(CAR, 0.9, 0.0, 0.0)]))
    assert s.matches == int(matched)
    if matched:
        assert s.mean_center_error_m == pytest.approx(dx)


def test_greedy_by_student_score_then_nearest_teacher():
    # Two students near one teacher: the higher-scored one takes it although it is farther.
    student = boxes([(CAR, 0.5, 0.5, 0.0), (CAR, 0.9, 1.5, 0.0)])
    teacher = boxes([(CAR, 0.7, 0.0, 0.0)])
    m = match_frame(student, teacher)
    assert m.student_index.tolist() == [1] and m.teacher_index.tolist() == [0]
    s = summary(student, teacher)
    assert (s.precision, s.recall, s.mean_center_error_m) == (0.5, 1.0, 1.5)
    # One student between two teachers takes the nearer one.
    m = match_frame(boxes([(CAR, 0.9, 0.0, 0.0)]), boxes([(CAR, 0.9, 1.0, 0.0), (CAR, 0.9, 0.0, -0.5)]))
    assert m.teacher_index.tolist() == [1]
    assert m.center_error_m.tolist() == [0.5]


def test_yaw_error_wraps_and_size_error_is_one_minus_aligned_iou():
    student = boxes([(CAR, 0.9, 0.0, 0.0, 3.1, (4.0, 2.0, 1.5))])
    teacher = boxes([(CAR, 0.9, 0.0, 0.0, -3.1, (2.0, 2.0, 1.5))])
    s = summary(student, teacher)
    assert s.mean_yaw_error_rad == pytest.approx(2 * math.pi - 6.2)
    # Aligned boxes: intersection 2*2*1.5 = 6, union 12 + 6 - 6 = 12 -> IoU 0.5.
    assert s.mean_size_error == pytest.approx(0.5)


def test_min_scores_filter_both_sides():
    student = boxes([(CAR, 0.2, 0.0, 0.0), (CAR, 0.6, 10.0, 0.0)])
    teacher = boxes([(CAR, 0.9, 0.0, 0.0), (CAR, 0.25, 10.0, 0.0)])
    s = summary(student, teacher, MatchConfig(student_min_score=0.3, teacher_min_score=0.3))
    # Left: student at x=10 (teacher there is below 0.3), teacher at x=0 (student there is below 0.3).
    assert (s.student_boxes, s.teacher_boxes, s.matches) == (1, 1, 0)
    s = summary(student, teacher)
    assert (s.student_boxes, s.teacher_boxes, s.matches) == (2, 2, 2)


def test_empty_frames_give_undefined_ratios_as_json_null():
    s = summary(Boxes3D.empty(), Boxes3D.empty())
    assert (s.student_boxes, s.teacher_boxes, s.matches) == (0, 0, 0)
    d = s.to_dict()
    assert d["precision"] is None and d["recall"] is None and d["mean_center_error_m"] is None
    assert d["per_class"] == {}
    json.dumps(d, allow_nan=False)  # what the node publishes must be strict JSON
    s = summary(boxes([(CAR, 0.9, 0.0, 0.0)]), Boxes3D.empty())
    assert s.precision == 0.0 and math.isnan(s.recall)


def test_per_class_figures():
    student = boxes([(CAR, 0.9, 0.0, 0.0), (CAR, 0.8, 20.0, 0.0), (PED, 0.9, 5.0, 5.0)])
    teacher = boxes([(CAR, 0.9, 0.3, 0.4), (PED, 0.9, 5.0, 5.0), (PED, 0.9, -5.0, 5.0)])
    s = summary(student, teacher)
    assert (s.matches, s.precision, s.recall) == (2, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert s.mean_center_error_m == pytest.approx(0.25)  # (0.5 + 0.0) / 2
    car, ped = s.per_class["car"], s.per_class["pedestrian"]
    assert (car.student_boxes, car.teacher_boxes, car.matches, car.precision, car.recall) == (2, 1, 1, 0.5, 1.0)
    assert car.mean_center_error_m == pytest.approx(0.5)
    assert (ped.student_boxes, ped.teacher_boxes, ped.matches, ped.precision, ped.recall) == (1, 2, 1, 1.0, 0.5)


def test_tracker_window_holds_the_last_frames_total_holds_all():
    tracker = AgreementTracker(window_frames=2)
    hit = (boxes([(CAR, 0.9, 0.0, 0.0)]), boxes([(CAR, 0.9, 1.0, 0.0)]))
    miss = (boxes([(CAR, 0.9, 0.0, 0.0)]), boxes([(CAR, 0.9, 9.0, 0.0)]))
    for student, teacher in (hit, hit, miss):
        tracker.add(student, teacher)
    total, window = tracker.total.summary(), tracker.window().summary()
    assert (total.frames, total.matches, total.precision) == (3, 2, pytest.approx(2 / 3))
    assert (window.frames, window.matches, window.precision) == (2, 1, 0.5)
    assert window.mean_center_error_m == pytest.approx(1.0)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="max_center_distance_m"):
        MatchConfig(max_center_distance_m=0.0)
    with pytest.raises(ValueError, match="student_min_score"):
        MatchConfig(student_min_score=1.5)
    with pytest.raises(ValueError, match="window_frames"):
        AgreementTracker(window_frames=0)


# ---------------------------------------------------------------------------------------- the node
def test_comparison_node_pairs_by_stamp_and_publishes_json(ros_context, spin_until, spin_for):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import Header, String
    from vision_msgs.msg import Detection3DArray

    from x3kd_ros import topics
    from x3kd_ros.nodes.comparison_node import ComparisonNode
    from x3kd_ros.conversions import boxes_to_detections, ns_to_stamp
    from x3kd_ros.nodes.qos import qos_profile

    node = ComparisonNode(context=ros_context, cli_args=[
        "--ros-args", "-p", "teacher_name:=radar", "-p", "student_min_score:=0", "-p", "teacher_min_score:=0.0",
        "-p", "pair.timeout_s:=0.3"])
    io = rclpy.create_node("x3kd_test_comparison_io", context=ros_context)
    qos = qos_profile("reliable", 10)
    student_pub = io.create_publisher(Detection3DArray, topics.DETECTIONS_TOPIC, qos)
    teacher_pub = io.create_publisher(Detection3DArray, topics.teacher_detections_topic("radar"), qos)
    results: list[dict] = []
    io.create_subscription(String, topics.comparison_topic("radar"), lambda m: results.append(json.loads(m.data)), qos)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(io)
    executor.add_node(node)
    t0 = 1_600_000_000 * 10**9

    def send(pub, rows, stamp_ns, frame="base_link"):
        pub.publish(boxes_to_detections(boxes(rows), Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame)))

    try:
        assert spin_until(executor, lambda: student_pub.get_subscription_count() == teacher_pub.get_subscription_count() == 1)
        # Pair 1: the LiDAR-like teacher stamp is 20 ms after the camera set's.
        send(student_pub, [(CAR, 0.9, 0.0, 0.0), (CAR, 0.6, 10.0, 0.0)], t0)
        send(teacher_pub, [(CAR, 0.8, 0.5, 0.0)], t0 + 20_000_000)
        assert spin_until(executor, lambda: len(results) == 1)
        # A teacher message with no student partner is dropped, never paired with a later one.
        send(teacher_pub, [(CAR, 0.8, 0.0, 0.0)], t0 + 500_000_000)
        spin_for(executor, 0.5)
        # Pair 2: perfect agreement.
        send(student_pub, [(PED, 0.7, 3.0, 3.0, 0.0, (0.7, 0.6, 1.8))], t0 + 10**9)
        send(teacher_pub, [(PED, 0.9, 3.0, 3.0, 0.0, (0.7, 0.6, 1.8))], t0 + 10**9 + 5_000_000)
        assert spin_until(executor, lambda: len(results) == 2)
        # Pair 3: frames differ -> not compared; then a message that does not convert.
        send(student_pub, [(CAR, 0.9, 0.0, 0.0)], t0 + 2 * 10**9)
        send(teacher_pub, [(CAR, 0.9, 0.0, 0.0)], t0 + 2 * 10**9, frame="lidar_top")
        bad = boxes_to_detections(boxes([(CAR, 0.9, 0.0, 0.0)]), Header(stamp=ns_to_stamp(t0 + 3 * 10**9)))
        bad.detections[0].results[0].hypothesis.class_id = "spaceship"
        student_pub.publish(bad)
        assert spin_until(executor, lambda: node.counts["frame_mismatch"] == 1
                          and node.counts["student.conversion_errors"] == 1)
        spin_for(executor, 0.4)
    finally:
        executor.shutdown()
        node.destroy_node()
        io.destroy_node()

    assert len(results) == 2
    first, second = results
    assert (first["teacher"], first["stamp_ns"], first["teacher_stamp_ns"]) == ("radar", t0, t0 + 20_000_000)
    assert {k: first["frame"][k] for k in ("student_boxes", "teacher_boxes", "matches", "precision", "recall",
                                           "mean_center_error_m")} == {
        "student_boxes": 2, "teacher_boxes": 1, "matches": 1, "precision": 0.5, "recall": 1.0,
        "mean_center_error_m": 0.5}
    assert second["frame"]["precision"] == 1.0 and second["frame"]["mean_size_error"] == 0.0
    assert second["total"]["frames"] == 2 and second["total"]["matches"] == 2
    assert second["total"]["precision"] == pytest.approx(2 / 3) and second["total"]["recall"] == 1.0
    assert sorted(second["total"]["per_class"]) == ["car", "pedestrian"]
    values = node.diagnostics_values()
    assert (values["pairs"], values["frame_mismatch"], values["teacher.received"]) == (2, 1, 4)
    assert values["unpaired"] == 1  # the lone teacher message (the unconvertible one never reached the pairing)
