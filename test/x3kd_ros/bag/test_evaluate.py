"""Bag evaluation (x3kd_ros.bag.evaluate, x3kd_ros.bag.replay, `x3kd bag eval`) and the tables-free scorer
(x3kd_core.eval.keyframes) on a bag's ground truth.

The end-to-end test is the CI test of the deployment path: the tiny synthetic dataset is written
as a bag, the real node processes (student detector, LiDAR teacher, comparison node) are started
through GraphRunner by `x3kd bag eval` (a subprocess: the replaying process must load its Fast
DDS profile before its first participant, see x3kd_ros/bag/replay.py), the bag is replayed with flow
control, and the report is checked: every camera frame answered exactly once by complete camera
sets, metrics finite and equal to the devkit's on the tables, latencies ordered, comparison pairs,
clean exits. A second run takes "another team's" bag (every camera / LiDAR topic and frame id
renamed, no ground truth) with the remaps and params file the graph would take, and reports frames,
latency, rates, drops and teacher agreement without metrics. The scorer itself is checked without
ROS: the bag's ground truth fed back as predictions gives AP 1 for every class present, and
perturbed predictions score exactly as the devkit's DetectionEval scores the same submission on the
dataset tables.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from x3kd_core.eval.detection import evaluate, write_submission
from x3kd_core.eval.keyframes import keyframe_submission, score_keyframes
from x3kd_core.paths import REPO_ROOT
from x3kd_core.structures import CAMERA_NAMES, DETECTION_CLASSES, Boxes3D
from x3kd_ros import topics
from x3kd_ros.bag.evaluate import (
    BagEvalConfig,
    BagEvalError,
    apply_remaps,
    eval_graph_specs,
    has_ground_truth,
    match_answers_to_frames,
    match_to_keyframes,
    node_parameters,
    parse_remap,
    percentiles,
    read_keyframes,
    run_bag_eval,
)
from x3kd_ros.bag.eval_graph import _eval_graph
from x3kd_ros.bag.topic_map import _topic_warnings
from x3kd_ros.bag.io import BagWriteConfig, bag_summary, write_bag
from x3kd_ros.bag.replay import Answer, FrameGroup, SentFrame, FrameCutter

SPLIT = "synth_val"
# Whole end-to-end run (graph start-up ~6-10 s on 2 CPU cores, replay < 1 s, scoring ~2 s).
E2E_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def bag(tiny_dataset, tmp_path_factory) -> Path:
    dataroot, version = tiny_dataset
    return write_bag(dataroot, version, SPLIT, tmp_path_factory.mktemp("eval_bag") / "val", BagWriteConfig()).path


@pytest.fixture(scope="module")
def ground_truth(bag):
    return read_keyframes(bag)


# ---------------------------------------------------------------------------------------------- scorer


def test_ground_truth_as_predictions_scores_ap_1_for_every_present_class(ground_truth):
    keyframes = ground_truth.keyframes
    assert len(keyframes) == 3 and ground_truth.has_ego_poses and ground_truth.max_pose_gap_ns == 0
    predictions = {k.token: k.boxes for k in keyframes}
    metrics = score_keyframes(keyframes, predictions)
    present = metrics.classes_present
    assert len(present) >= 5 and sum(metrics.num_gt_per_class.values()) > 40
    for name in DETECTION_CLASSES:
        expected = 1.0 if name in present else 0.0
        assert metrics.ap_per_class[name] == pytest.approx(expected, abs=1e-12), name
        assert all(v == pytest.approx(expected, abs=1e-12) for v in metrics.ap_per_class_threshold[name].values())
    assert metrics.mAP == pytest.approx(len(present) / 10, abs=1e-12)
    for name in present:
        errors = metrics.tp_errors_per_class[name]
        assert errors["trans_err"] == pytest.approx(0.0, abs=1e-6)
        assert errors["scale_err"] == pytest.approx(0.0, abs=1e-6)
        if name != "traffic_cone":
            assert errors["orient_err"] == pytest.approx(0.0, abs=1e-6)
    # No velocity / attribute ground truth in a bag: the devkit's "undefined" value, 1.
    assert metrics.mAVE == 1.0 and metrics.mAAE == 1.0
    assert metrics.num_predictions == sum(metrics.num_gt_per_class.values())


def _perturbed(keyframes, seed: int = 0) -> dict[str, Boxes3D]:
    """GT jittered by ~0.8 m / 10 % / 0.3 rad, 20 % dropped, plus false positives; distinct scores."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in keyframes:
        b = k.boxes
        keep = rng.random(len(b)) > 0.2
        n_fp = 4
        center = np.concatenate([b.center[keep] + rng.normal(0, 0.8, (keep.sum(), 3)) * [1, 1, 0.2],
                                 rng.uniform(-30, 30, (n_fp, 3)) * [1, 1, 0.05]])
        size = np.concatenate([b.size_lwh[keep] * rng.uniform(0.9, 1.1, (keep.sum(), 3)), np.full((n_fp, 3), 2.0)])
        yaw = np.concatenate([b.yaw[keep] + rng.normal(0, 0.3, keep.sum()), rng.uniform(-3, 3, n_fp)])
        label = np.concatenate([b.label[keep], rng.integers(0, len(DETECTION_CLASSES), n_fp)])
        n = len(center)
        out[k.token] = Boxes3D(center=center, size_lwh=size, yaw=yaw, velocity=np.zeros((n, 2)), label=label,
                               score=rng.permutation(n) / n * 0.9 + 0.05)
    return out


def test_scores_from_the_bag_equal_the_devkit_on_the_tables(ground_truth, tiny_dataset, tmp_path):
    dataroot, version = tiny_dataset
    predictions = _perturbed(ground_truth.keyframes)
    ours = score_keyframes(ground_truth.keyframes, predictions)
    path = write_submission(keyframe_submission(ground_truth.keyframes, predictions), tmp_path / "sub.json")
    devkit = evaluate(dataroot, version, SPLIT, path, tmp_path / "devkit")
    assert 0.1 < ours.mAP < 0.9  # neither trivial end
    assert ours.num_gt_per_class == devkit.num_gt_per_class
    assert ours.num_predictions == devkit.num_predictions
    for key in ("mAP", "mATE", "mASE", "mAOE"):
        assert getattr(ours, key) == pytest.approx(getattr(devkit, key), abs=1e-9), key
    for name in DETECTION_CLASSES:
        for th, ap in devkit.ap_per_class_threshold[name].items():
            assert ours.ap_per_class_threshold[name][th] == pytest.approx(ap, abs=1e-9), (name, th)


# ---------------------------------------------------------------------------------------------- matching


def _frame(i: int, stamps: dict) -> SentFrame:
    return SentFrame("detector", i, dict(stamps), first_sent_ns=i, last_sent_ns=i, complete=True)


def _answer(stamp: int) -> Answer:
    return Answer("detector", stamp, None, 0, 0)


def test_answers_are_matched_to_the_frames_they_answer():
    frames = [_frame(0, {"a": 100, "b": 120}), _frame(1, {"a": 600, "b": 610}), _frame(2, {"a": 1100})]
    good = match_answers_to_frames(frames, [_answer(120), _answer(600), _answer(1100)], span_ns=60)
    assert good.ok and good.answer_of_frame == {0: 0, 1: 1, 2: 2}
    bad = match_answers_to_frames(frames, [_answer(100), _answer(110), _answer(5000)], span_ns=60)
    # 110 is no input stamp but within the span of frame 0: a second answer for it; 5000 matches nothing.
    assert (bad.answered_once, bad.unanswered, bad.answered_twice_or_more, bad.unmatched_answers) == (0, 2, 1, 1)
    assert not bad.ok


def test_keyframe_matching_takes_the_nearest_stamp_within_tolerance():
    keys = [1000, 1500, 2000]
    assert match_to_keyframes(keys, [1490, 1010, 2300], tolerance_ns=100) == {0: 1, 1: 0}
    # One stamp can score one keyframe only: the nearer keyframe wins.
    assert match_to_keyframes(keys, [1240], tolerance_ns=300) == {0: 0}
    assert match_to_keyframes(keys, [], tolerance_ns=300) == {}


def test_percentiles():
    p = percentiles([10.0, 20.0, 30.0, 40.0, float("nan"), None])
    assert p["n"] == 4 and p["p50"] == pytest.approx(25.0) and p["p90"] == pytest.approx(37.0)
    assert p["p99"] == pytest.approx(39.7) and p["max"] == 40.0 and p["mean"] == 25.0
    assert percentiles([]) == {"n": 0, "p50": None, "p90": None, "p99": None, "mean": None, "max": None}


def test_frames_are_cut_by_topic_repeat_and_span():
    group = FrameGroup("detector", ("a", "b", "c"), "/out", span_s=0.05)
    g = FrameCutter(group)
    for topic, stamp in [("a", 0), ("b", 10_000_000), ("c", 20_000_000),  # complete
                         ("a", 500_000_000), ("b", 500_000_000),           # c missing: closed by the next a
                         ("a", 1_000_000_000), ("c", 1_100_000_000)]:      # c 100 ms later: new frame
        g.add(topic, stamp, sent_ns=stamp)
    g.close()
    assert [sorted(f.stamps_ns) for f in g.frames] == [["a", "b", "c"], ["a", "b"], ["a"], ["c"]]
    assert [f.complete for f in g.frames] == [True, False, False, False]
    assert g.frames[0].last_sent_ns == 20_000_000 and g.frames[1].first_stamp_ns == 500_000_000


# ---------------------------------------------------------------------------------------------- graph


def test_eval_graph_overrides_and_bad_input(bag, student_checkpoint, lidar_checkpoint):
    msgtypes = bag_summary(bag).msgtypes
    specs = eval_graph_specs(BagEvalConfig(checkpoint=str(student_checkpoint), lidar_checkpoint=str(lidar_checkpoint),
                                           device="cpu"), msgtypes)
    by_key = {s.key: s for s in specs}
    assert sorted(by_key) == ["comparison_lidar", "detector", "lidar_teacher"]
    detector = by_key["detector"].parameters
    assert detector["checkpoint"] == str(Path(student_checkpoint).resolve()) and detector["device"] == "cpu"
    assert detector["qos"]["input"] == {"reliability": "reliable", "depth": 100}
    assert detector["processing_queue_size"] == 1000 and detector["publish_markers"] is False
    assert detector["image_transport"] == "raw" and len(detector["cameras"]) == 6
    assert by_key["comparison_lidar"].parameters["teacher_name"] == "lidar"  # the graph's own value is kept
    with pytest.raises(BagEvalError, match="radar checkpoint not found"):
        eval_graph_specs(BagEvalConfig(checkpoint=str(student_checkpoint), radar_checkpoint="/no/such.pt"), msgtypes)
    no_lidar = {t: v for t, v in msgtypes.items() if t != topics.LIDAR_TOPIC}
    with pytest.raises(BagEvalError, match="LiDAR teacher needs /lidar/top/points"):
        eval_graph_specs(BagEvalConfig(checkpoint=str(student_checkpoint), lidar_checkpoint=str(lidar_checkpoint)),
                         no_lidar)


def test_cli_rejects_a_missing_checkpoint(bag, tmp_path, capsys):
    from x3kd_core.cli import main

    assert main(["bag", "eval", str(bag), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- end to end


def test_bag_eval_end_to_end(bag, ground_truth, tiny_dataset, student_checkpoint, lidar_checkpoint, tmp_path,
                             ros_network):
    dataroot, _ = tiny_dataset
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "x3kd_core.cli", "bag", "eval", str(bag), "--checkpoint", str(student_checkpoint),
           "--teacher-lidar", str(lidar_checkpoint), "--device", "cpu", "--out", str(out), "--dataroot", str(dataroot),
           "--startup-timeout-s", "90", "--frame-timeout-s", "20"]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=E2E_TIMEOUT_S, cwd=REPO_ROOT,
                          env=dict(os.environ))
    seconds = time.monotonic() - start
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads((out / "report.json").read_text())
    print(f"\nbag eval end to end: {seconds:.1f} s\n{proc.stdout}")

    # Every node was stopped by SIGINT and exited cleanly.
    assert report["graph"]["exit_codes"] == {"detector": 0, "lidar_teacher": 0, "comparison_lidar": 0}
    assert "fastdds_replay_profile.xml" in report["graph"]["fastdds_profile"]

    # Every synchronized camera frame: exactly one Detection3DArray, from a complete camera set.
    for group in ("detector", "lidar"):
        frames = report["frames"][group]
        assert frames == {"sent": 3, "answers": 3, "answered_once": 3, "unanswered": 0, "answered_twice_or_more": 0,
                          "unmatched_answers": 0, "every_frame_answered_once": True}, group
    inputs = report["detector_inputs"]
    assert inputs["incomplete_frames_sent"] == 0 and inputs["complete_sets"] == 3
    assert inputs["images_received"] == inputs["images_sent"] == {c: 3 for c in inputs["images_sent"]}
    assert inputs["sync"]["partial"] == inputs["sync"]["late"] == inputs["sync"]["dropped_sets"] == 0
    assert inputs["drops"] == {"busy_drops": 0, "sets_without_extrinsics": 0, "inference_errors": 0}
    assert inputs["input_problems"] == {}
    replay = report["replay"]
    assert replay["drained"] and replay["ack_timeouts"] == {"detector": 0, "lidar": 0}
    assert replay["published"][topics.camera_image_topic("CAM_FRONT")] == 3
    assert topics.camera_info_topic("CAM_BACK") in replay["primed"]
    assert report["keyframes_without_answer"] == {"student": 0, "lidar": 0}

    # Metrics: finite, the right structure, and the bag-only scorer agrees with the devkit on the tables.
    for model in ("student", "lidar"):
        entry = report["metrics"][model]
        ours, devkit = entry["from_bag"], entry["devkit"]
        for key in ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE"):
            assert math.isfinite(ours[key]) and math.isfinite(devkit[key]), (model, key)
        assert 0.0 <= ours["mAP"] <= 1.0
        assert set(ours["ap_per_class"]) == set(DETECTION_CLASSES)
        assert ours["mAP"] == pytest.approx(devkit["mAP"], abs=1e-9)
        assert ours["num_gt_per_class"] == devkit["num_gt_per_class"]
        assert sum(ours["num_gt_per_class"].values()) > 40 and ours["num_predictions"] > 0
        submission = json.loads(Path(entry["submission"]).read_text())
        assert list(submission["results"]) == ground_truth.tokens

    # Latency: three frames measured, percentiles ordered, end to end includes the model time.
    student = report["latency"]["student"]
    e2e = student["end_to_end_ms"]
    assert e2e["n"] == 3 and 0 < e2e["p50"] <= e2e["p90"] <= e2e["p99"] <= e2e["max"] < 10_000
    model = student["model_ms"]
    assert model["n"] >= 1 and 0 < model["node_mean"] <= model["node_max"]
    assert e2e["mean"] > model["node_mean"]
    assert report["latency"]["lidar"]["end_to_end_ms"]["n"] == 3

    # The comparison node paired every student frame with the teacher's.
    comparison = report["comparison"]["lidar"]
    assert comparison["pairs"] == comparison["expected_pairs"] == 3 and comparison["total"]["frames"] == 3

    assert len(report["pictures"]) == 3 and all(Path(p).stat().st_size > 10_000 for p in report["pictures"])
    assert seconds < E2E_TIMEOUT_S


# ---------------------------------------------------------------------------------------------- other people's bags

def _foreign_names(camera: str) -> tuple[str, str, str]:
    """(image topic, camera_info topic, optical frame id) of a camera in the foreign bag."""
    short = camera.lower()
    return f"/vehicle/{short}/image_color", f"/vehicle/{short}/info", f"{short}_optical_frame"


# The foreign rig: its own topic names and optical frame ids, no ground truth, no radar.
FOREIGN_LIDAR_TOPIC, FOREIGN_LIDAR_FRAME = "/velodyne_points", "velodyne"


def _write_foreign_bag(src: Path, dst: Path) -> Path:
    """``src`` rewritten with rosbags as another team's recording: every camera / LiDAR topic and
    frame id renamed (headers and /tf_static), ground truth and radars left out."""
    import dataclasses

    from rosbags.rosbag2 import Reader, Writer

    from x3kd_ros.bag.io import make_typestore

    store = make_typestore()
    topic_map = {topics.LIDAR_TOPIC: FOREIGN_LIDAR_TOPIC}
    frame_map = {topics.sensor_frame("LIDAR_TOP"): FOREIGN_LIDAR_FRAME}
    for cam in CAMERA_NAMES:
        image, info, frame = _foreign_names(cam)
        topic_map[topics.camera_image_topic(cam)] = image
        topic_map[topics.camera_info_topic(cam)] = info
        frame_map[topics.sensor_frame(cam)] = frame
    dropped = (topics.GT_DETECTIONS_TOPIC, topics.GT_SAMPLE_TOKEN_TOPIC)

    def rename_header(msg):
        return dataclasses.replace(msg, header=dataclasses.replace(
            msg.header, frame_id=frame_map.get(msg.header.frame_id, msg.header.frame_id)))

    with Reader(src) as reader:
        writer = Writer(dst, version=9)
        writer.open()
        try:
            connections = {}
            for conn in reader.connections:
                if conn.topic in dropped or conn.topic.startswith("/radar/"):
                    continue
                connections[conn.id] = writer.add_connection(
                    topic_map.get(conn.topic, conn.topic), conn.msgtype, typestore=store,
                    offered_qos_profiles=conn.ext.offered_qos_profiles)
            for conn, stamp, raw in reader.messages(connections=[c for c in reader.connections if c.id in connections]):
                msg = store.deserialize_cdr(raw, conn.msgtype)
                if conn.topic == topics.TF_STATIC_TOPIC:
                    msg = dataclasses.replace(msg, transforms=[
                        dataclasses.replace(t, child_frame_id=frame_map.get(t.child_frame_id, t.child_frame_id))
                        for t in msg.transforms])
                elif hasattr(msg, "header") and conn.topic != topics.TF_TOPIC:
                    msg = rename_header(msg)
                writer.write(connections[conn.id], stamp, bytes(store.serialize_cdr(msg, conn.msgtype)))
        finally:
            writer.close()
    return dst


@pytest.fixture(scope="module")
def foreign_bag(bag, tmp_path_factory) -> Path:
    return _write_foreign_bag(bag, tmp_path_factory.mktemp("foreign") / "their_drive")


@pytest.fixture(scope="module")
def foreign_params(tmp_path_factory) -> Path:
    """The params file a user of the foreign rig runs the graph with: image topics and optical frames
    (the CameraInfo and LiDAR topics come as remaps)."""
    path = tmp_path_factory.mktemp("foreign_params") / "their_rig.yaml"
    images = [_foreign_names(c)[0] for c in CAMERA_NAMES]
    frames = [_foreign_names(c)[2] for c in CAMERA_NAMES]
    path.write_text(yaml.safe_dump({"x3kd_detector": {"ros__parameters": {
        "cameras": list(CAMERA_NAMES), "image_topics": images, "camera_frames": frames}}}))
    return path


def _foreign_remaps() -> list[str]:
    rules = [f"{topics.camera_info_topic(c)}:={_foreign_names(c)[1]}" for c in CAMERA_NAMES]
    return rules + [f"{topics.LIDAR_TOPIC}:={FOREIGN_LIDAR_TOPIC}"]


def test_remap_rules_and_params_files_resolve_as_the_nodes_do(tmp_path):
    assert parse_remap(" /a:=/b ") == ("/a", "/b")
    with pytest.raises(BagEvalError, match="FROM:=TO"):
        parse_remap("/a=/b")
    rules = [("x3kd_lidar_teacher:/in", "/lidar_only"), ("/in", "/first"), ("/in", "/second"), ("rel", "/abs")]
    assert apply_remaps("/in", rules, "x3kd_detector") == "/first"       # the first matching rule wins
    assert apply_remaps("/in", rules, "x3kd_lidar_teacher") == "/lidar_only"  # node-specific rule
    assert apply_remaps("rel", rules, "x3kd_detector") == "/abs" and apply_remaps("/other", rules) == "/other"
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump({
        "/**": {"ros__parameters": {"sync": {"slop_s": 0.05}, "cameras": ["CAM_FRONT"]}},
        "x3kd_detector": {"ros__parameters": {"cameras": ["CAM_BACK", "CAM_FRONT"]}},
        "other_node": {"ros__parameters": {"cameras": ["CAM_BACK_LEFT"]}},
        "ns": {"x3kd_detector": {"ros__parameters": {"score_threshold": 0.9}}},
    }))
    params = node_parameters([file], "x3kd_detector", inline={"sync": {"timeout_s": 1.0}})
    assert params == {"sync.slop_s": 0.05, "sync.timeout_s": 1.0, "cameras": ["CAM_BACK", "CAM_FRONT"]}
    assert node_parameters([file], "x3kd_detector", "/ns")["score_threshold"] == 0.9


def test_foreign_bag_topics_are_found_through_remaps_and_params(foreign_bag, foreign_params, student_checkpoint,
                                                                lidar_checkpoint, tmp_path):
    msgtypes = bag_summary(foreign_bag).msgtypes
    assert not has_ground_truth(msgtypes) and topics.camera_image_topic("CAM_FRONT") not in msgtypes
    # Without a topic map the evaluation says what it looked for and how to map it.
    with pytest.raises(BagEvalError, match="none of the camera image topics.*--remap"):
        eval_graph_specs(BagEvalConfig(checkpoint=str(student_checkpoint)), msgtypes)
    config = BagEvalConfig(checkpoint=str(student_checkpoint), lidar_checkpoint=str(lidar_checkpoint), device="cpu",
                           remappings=tuple(parse_remap(r) for r in _foreign_remaps()),
                           params_files=(str(foreign_params),))
    specs = {s.key: s for s in eval_graph_specs(config, msgtypes)}
    detector = specs["detector"]
    # The user's file comes after the graph's own, the user's remaps before the graph's.
    assert detector.params_files[-1] == foreign_params.resolve() and len(detector.params_files) == 2
    assert detector.remappings[: len(_foreign_remaps())] == config.remappings
    p = detector.parameters
    assert p["cameras"] == list(CAMERA_NAMES) and p["image_transport"] == "raw"
    assert p["image_topics"] == [_foreign_names(c)[0] for c in CAMERA_NAMES]
    assert p["camera_frames"] == [_foreign_names(c)[2] for c in CAMERA_NAMES]
    # Node-side CameraInfo names stay the graph's: the node's own remap rules rename them.
    assert p["camera_info_topics"] == [topics.camera_info_topic(c) for c in CAMERA_NAMES]
    assert specs["lidar_teacher"].remappings[: len(config.remappings)] == config.remappings

    # A bag with four of the six cameras: the detector is told those four, lists cut to match.
    partial = {t: v for t, v in msgtypes.items()
               if t not in (_foreign_names("CAM_BACK")[0], _foreign_names("CAM_BACK_LEFT")[0])}
    p4 = eval_graph_specs(config, partial)[0].parameters
    assert p4["cameras"] == [c for c in CAMERA_NAMES if c not in ("CAM_BACK", "CAM_BACK_LEFT")]
    assert len(p4["image_topics"]) == len(p4["camera_frames"]) == len(p4["camera_info_topics"]) == 4
    assert _topic_warnings(config, _eval_graph(config, msgtypes)[1], msgtypes) == []
    # A FROM in the wrong case matches nothing: the CameraInfo is not found, and the rule is named.
    upper = ("/cameras/CAM_BACK/camera_info", _foreign_names("CAM_BACK")[1])
    wrong = replace(config, remappings=tuple(r for r in config.remappings if r[1] != upper[1]) + (upper,))
    warnings = _topic_warnings(wrong, _eval_graph(wrong, msgtypes)[1], msgtypes)
    assert len(warnings) == 2 and warnings[0].startswith("CAM_BACK: the bag has no CameraInfo")
    assert warnings[1].startswith(f"remap {upper[0]}:={upper[1]}: ")
    # A devkit evaluation needs ground truth: refused before any node starts.
    with pytest.raises(BagEvalError, match="needs the bag's ground truth"):
        run_bag_eval(foreign_bag, tmp_path / "out", replace(config, dataroot=str(tmp_path)))
    assert not (tmp_path / "out").exists()


def test_bag_eval_of_a_foreign_bag_without_ground_truth(foreign_bag, foreign_params, student_checkpoint,
                                                       lidar_checkpoint, tmp_path, ros_network):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "x3kd_core.cli", "bag", "eval", str(foreign_bag), "--checkpoint",
           str(student_checkpoint), "--teacher-lidar", str(lidar_checkpoint), "--device", "cpu", "--out", str(out),
           "--params-file", str(foreign_params), "--startup-timeout-s", "90", "--frame-timeout-s", "20"]
    for rule in _foreign_remaps():
        cmd += ["--remap", rule]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=E2E_TIMEOUT_S, cwd=REPO_ROOT,
                          env=dict(os.environ))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "no ground truth in the bag" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    print(f"\nbag eval of a foreign bag:\n{proc.stdout}")

    assert report["ground_truth"] is False and report["keyframes"] is None and report["metrics"] == {}
    assert "no ground truth" in report["metrics_note"] and report["pictures"] == []
    assert not list(out.glob("submission_*.json"))
    assert report["graph"]["exit_codes"] == {"detector": 0, "lidar_teacher": 0, "comparison_lidar": 0}
    assert report["topic_map"]["renamed"][topics.LIDAR_TOPIC] == FOREIGN_LIDAR_TOPIC
    # Every frame answered once, from complete camera sets: the renamed optical frames were found.
    for group in ("detector", "lidar"):
        assert report["frames"][group]["every_frame_answered_once"] and report["frames"][group]["sent"] == 3, group
    inputs = report["detector_inputs"]
    assert inputs["complete_sets"] == 3 and inputs["input_problems"] == {}
    assert inputs["images_received"] == inputs["images_sent"] == {c: 3 for c in CAMERA_NAMES}
    assert inputs["drops"] == {"busy_drops": 0, "sets_without_extrinsics": 0, "inference_errors": 0}
    assert _foreign_names("CAM_BACK")[1] in report["replay"]["primed"]
    # What a bag without ground truth still gives: latency, rates, drops, teacher agreement.
    for model in ("student", "lidar"):
        assert report["latency"][model]["end_to_end_ms"]["n"] == 3
        rates = report["rates"][model]
        assert rates["frames_sent"] == rates["answers"] == 3 and rates["answers_per_s"] > 0
        assert rates["busy_drops"] == rates["inference_errors"] == 0
    comparison = report["comparison"]["lidar"]
    assert comparison["pairs"] == comparison["expected_pairs"] == 3 and comparison["total"]["frames"] == 3
