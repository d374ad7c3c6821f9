"""Bag evaluation (x3kd_ros.bag_eval, x3kd_ros.replay, `x3kd bag eval`).

The end-to-end test is the CI test of the deployment path: the tiny synthetic dataset is written
as a bag, the real node processes (student detector, LiDAR teacher, comparison node) are started
through GraphRunner by `x3kd bag eval` (a subprocess: the replaying process must load its Fast
DDS profile before its first participant, see x3kd_ros/replay.py), the bag is replayed with flow
control, and the report is checked: every camera frame answered exactly once by complete camera
sets, metrics finite and equal to the devkit's on the tables, latencies ordered, comparison pairs,
clean exits. The scorer itself is checked without ROS: the bag's ground truth fed back as
predictions gives AP 1 for every class present, and perturbed predictions score exactly as the
devkit's DetectionEval scores the same submission on the dataset tables.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from x3kd_core.eval.detection import evaluate, write_submission
from x3kd_core.structures import DETECTION_CLASSES, Boxes3D
from x3kd_ros import topics
from x3kd_ros.bag_eval import (
    BagEvalConfig,
    BagEvalError,
    eval_graph_specs,
    keyframe_submission,
    match_answers_to_frames,
    match_to_keyframes,
    percentiles,
    read_keyframes,
    score_keyframes,
)
from x3kd_ros.bag_io import BagWriteConfig, bag_summary, write_bag
from x3kd_ros.replay import Answer, FrameGroup, SentFrame, FrameCutter

REPO_ROOT = Path(__file__).resolve().parents[2]
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
