"""Accounting of a live run (:class:`~x3kd_ros.bag.eval_live._LiveRun`): per group, how its frames
were answered, end-to-end and model latency, rates and drops, and what the detector made of the
camera frames sent; the answers that score the keyframes (for :mod:`x3kd_ros.bag.evaluate`)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from x3kd_core.structures import Boxes3D
from x3kd_ros.bag.eval_live import _LiveRun, _float, _model_node_key
from x3kd_ros.bag.ground_truth import BagGroundTruth
from x3kd_ros.bag.matching import FrameCheck, match_answers_to_frames, match_to_keyframes, percentiles
from x3kd_ros.bag.topic_map import BagTopics

_MODEL_OF_GROUP = {"detector": "student", "lidar": "lidar", "radar": "radar"}


def _answers_and_latency(live: _LiveRun, groups, node_names: Mapping[str, str],
                         ground_truth: Optional[BagGroundTruth], tolerance_ns: int):
    """Per group: frame check, latency figures, and the answers that score the keyframes (none
    without ground truth)."""
    from x3kd_ros.conversions import detections_to_boxes

    frames: dict[str, FrameCheck] = {}
    latency: dict[str, Any] = {}
    predictions: dict[str, dict[str, Boxes3D]] = {}
    unscored: dict[str, int] = {}
    key_stamps = [k.stamp_ns for k in ground_truth.keyframes] if ground_truth is not None else []
    for g in groups:
        sent, answers = live.replay.frames[g.name], live.replay.answers[g.name]
        check = match_answers_to_frames(sent, answers, int(g.span_s * 1e9))
        frames[g.name] = check
        # End to end: the answer's publish time (rmw source timestamp) - its frame's last input sent.
        e2e = [(answers[a].source_ns - sent[f].last_sent_ns) / 1e6 for f, a in check.answer_of_frame.items()
               if answers[a].source_ns > 0]
        e2e_received = [(answers[a].received_ns - sent[f].last_sent_ns) / 1e6
                        for f, a in check.answer_of_frame.items()]
        model = _MODEL_OF_GROUP[g.name]
        node_name = node_names[_model_node_key(g.name)]
        diag = live.diagnostics.get(node_name, {})
        latency[model] = {
            "end_to_end_ms": percentiles(e2e),
            "end_to_end_received_ms": percentiles(e2e_received),
            # model_ms.last of the diagnostics reports, one per frame count seen (not every frame).
            "model_ms": {**percentiles(list(live.model_samples.get(node_name, {}).values())),
                         "node_mean": _float(diag.get("model_ms.mean", "nan")),
                         "node_max": _float(diag.get("model_ms.max", "nan"))},
            "node_end_to_end_ms": {"mean": _float(diag.get("end_to_end_ms.mean", "nan")),
                                   "max": _float(diag.get("end_to_end_ms.max", "nan"))},
        }
        if ground_truth is None:
            continue
        matched = match_to_keyframes(key_stamps, [a.stamp_ns for a in answers], tolerance_ns)
        predictions[model] = {ground_truth.keyframes[k].token: detections_to_boxes(answers[a].message)
                              for k, a in matched.items()}
        unscored[model] = len(ground_truth.keyframes) - len(matched)
    return frames, latency, predictions, unscored


def _rates(live: _LiveRun, groups, node_names: Mapping[str, str]) -> dict[str, dict]:
    """Per model: frames sent and answered per second of replay, the node's own output rate and
    drop / error counters (last diagnostics)."""
    wall = max(live.replay.wall_s, 1e-9)
    out = {}
    for g in groups:
        diag = live.diagnostics.get(node_names[_model_node_key(g.name)], {})
        sent, answers = len(live.replay.frames[g.name]), len(live.replay.answers[g.name])
        out[_MODEL_OF_GROUP[g.name]] = {
            "frames_sent": sent, "answers": answers, "frames_sent_per_s": sent / wall, "answers_per_s": answers / wall,
            "node_output_rate_hz": _float(diag.get("output_rate_hz", "nan")),
            **{k: int(diag[k]) for k in ("busy_drops", "inference_errors") if k in diag},
        }
    return out


def _detector_inputs(frames, diag: Mapping[str, str], sensors: BagTopics) -> dict:
    """What the detector made of the camera frames sent: images received per camera vs sent, and
    its synchronizer's counters (``complete_sets`` = emitted - partial)."""
    sent = {c: sum(sensors.image[c] in f.stamps_ns for f in frames)
            for c in sensors.cameras}
    received = {c: int(diag[f"{c}.received"]) if f"{c}.received" in diag else None for c in sensors.cameras}
    sync = {k.split(".", 1)[1]: int(v) for k, v in diag.items() if k.startswith("sync.")}
    dropped = {k: int(diag[k]) for k in ("busy_drops", "sets_without_extrinsics", "inference_errors") if k in diag}
    problems = {f"{c}.{k}": int(diag[f"{c}.{k}"]) for c in sensors.cameras
                for k in ("conversion_errors", "size_mismatch", "missing_camera_info", "stale", "missing_extrinsics")
                if int(diag.get(f"{c}.{k}", "0")) > 0}
    return {
        "frames_sent": len(frames),
        "incomplete_frames_sent": sum(not f.complete for f in frames),
        "images_sent": sent,
        "images_received": received,
        "sync": sync,
        "complete_sets": sync.get("emitted", 0) - sync.get("partial", 0) if sync else None,
        "drops": dropped,
        "input_problems": problems,
    }
