"""Bag evaluation: replay a rosbag2 file through the live x3kd graph and score what it publishes.

``x3kd bag eval BAG --checkpoint student.pt [--teacher-lidar l.pt] [--teacher-radar r.pt] --out DIR``
``[--remap GRAPH_TOPIC:=BAG_TOPIC ...] [--params-file FILE ...] [--graph graph.yaml]``

What happens (:func:`run_bag_eval`)
    1. The bag's ground truth, where it has one, is read (:func:`read_keyframes`): every
       ``/ground_truth/sample_token`` with the ``/ground_truth/detections`` of the same stamp
       (boxes in ``base_link``, the ego frame of the keyframe) and the ego pose
       ``map -> base_link`` from ``/tf`` at that stamp.
    2. The graph (``config/ros/graph.yaml``: student detector, and for each teacher checkpoint
       given, that teacher plus its comparison node) is started as real processes through
       :class:`~x3kd_ros.graph.runner.GraphRunner`, with evaluation overrides
       (:func:`eval_graph_specs`): reliable input QoS and deep queues (``processing_queue_size``
       1000) so that no frame is dropped, no RViz markers, diagnostics every 0.2 s, the bag's
       cameras / radars / image transport, sync slops equal to the player's frame spans. This
       process and the nodes load the replay's Fast DDS profile (a shared-memory segment large
       enough for a frame of the bag; see *Transport* in :mod:`x3kd_ros.bag.replay`).
    3. :class:`~x3kd_ros.bag.replay.BagPlayer` replays the bag (flow-controlled by default, or at
       ``rate`` x real time) and records every frame sent and every answer; the comparison
       nodes' JSON and ``/diagnostics`` are collected beside it.
    4. The graph is stopped (SIGINT, exit codes recorded), then everything is scored:

       - **frames**: every synchronized camera frame sent must get exactly one Detection3DArray
         (the answer's stamp is one of the frame's image stamps); the same for the teachers;
       - **metrics** per model (student and each teacher): each keyframe takes the answer whose
         stamp is nearest to the keyframe's (within ``match_tolerance_s``), and is scored by
         :func:`~x3kd_core.eval.keyframes.score_keyframes`, nuScenes' own matching / AP / TP-error algorithms
         (``nuscenes.eval.detection.algo``) on boxes built from the bag alone; with ``dataroot``
         the same predictions also go through :func:`x3kd_core.eval.detection.evaluate` (the
         devkit's ``DetectionEval`` on the dataset tables);
       - **latency**: end to end = the answer's publish time (rmw source timestamp) minus the time
         the last input message of its frame was sent, p50 / p90 / p99; and the detector's own
         ``model_ms`` (Predictor.predict) from its diagnostics;
       - the comparison nodes' last cumulative figures (``total``), the nodes' last diagnostics.
    5. ``DIR/report.json``, ``DIR/submission_<model>.json`` (nuScenes format, for ``x3kd eval``),
       ``DIR/bev_*.png`` (GT vs student for a few keyframes) and ``DIR/logs/<node>.log``.

Scoring from the bag alone
    The bag's ground truth becomes :class:`~x3kd_core.eval.keyframes.KeyFrame` s (boxes in the
    ego frame, the keyframe's ``/tf`` ego pose) and
    :func:`x3kd_core.eval.keyframes.score_keyframes` scores them with the devkit's algorithms (the
    same per-class loop as the evaluation on the tables). The bag carries no ground-truth velocity
    or attribute (Detection3D has no field for them), so mAVE and mAAE are 1 and NDS is a lower
    bound; the bicycle-rack filter needs the tables and is not applied (bicycle racks are not a
    detection class, so a bag has none to filter with).

Other people's bags (topic map, no ground truth)
    A bag with other topic names or frame ids is evaluated with the same remaps and params files
    the live graph takes (``BagEvalConfig.remappings`` / ``params_files``, ``x3kd bag eval
    --remap FROM:=TO --params-file FILE``, or a graph file with per-node ``remappings`` /
    ``params_files``). They go to every node of the graph as ``-r FROM:=TO`` (before the graph
    file's own, so they win) and ``--params-file`` (after the graph file's, before the evaluation
    overrides), and this module resolves each topic exactly as a node does
    (:func:`resolve_bag_topics`): the node's parameter (``image_topics``, ``camera_info_topics``,
    the LiDAR teacher's ``input_topic``, the radar teacher's ``input_topics``; default: the
    ``x3kd_ros.topics`` names), then the first matching remap rule. FROM is the graph's name, TO
    the bag's (``--remap /cameras/cam_front/image_raw:=/my/front/image``). Optical frame ids are
    parameters (``camera_frames``, ``radar_frames``; the LiDAR teacher takes each cloud's
    ``header.frame_id``), so a params file sets them. Remaps of the ground-truth topics and of
    ``/tf`` tell the scorer where those are; ``/tf_static`` is replayed under its own name.
    Without ground-truth topics the report has no metrics: frames, latency, rates, drops, the
    nodes' diagnostics and teacher agreement.

Where each part lives (this module runs them in order, assembles the report and re-exports the
public names, so ``from x3kd_ros.bag.evaluate import ...`` keeps working)
    - :mod:`x3kd_ros.bag.eval_config`: :class:`BagEvalConfig`, :class:`BagEvalError`, frame spans;
    - :mod:`x3kd_ros.bag.ground_truth`: the bag's keyframes and custom data;
    - :mod:`x3kd_ros.bag.topic_map`: remaps / params files -> where the inputs are in the bag;
    - :mod:`x3kd_ros.bag.eval_graph`: the node specs an evaluation starts;
    - :mod:`x3kd_ros.bag.eval_live`: start the graph, replay, collect, stop;
    - :mod:`x3kd_ros.bag.matching`: answers to frames / keyframes, percentiles;
    - :mod:`x3kd_ros.bag.accounting`: frame checks, latency, rates and detector inputs of a live run;
    - here: :func:`run_bag_eval` (scoring, submissions, report.json) and the BEV pictures.

Nothing here imports rclpy at module level: :func:`read_keyframes` and the report helpers work without a ROS graph.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from x3kd_core import geometry
from x3kd_core.eval.keyframes import keyframe_submission, score_keyframes
from x3kd_core.structures import Boxes3D
from x3kd_ros import topics
from x3kd_ros.bag.accounting import _answers_and_latency, _detector_inputs, _rates
from x3kd_ros.bag.eval_config import BagEvalConfig, BagEvalError
from x3kd_ros.bag.eval_graph import _eval_graph, eval_graph_specs
from x3kd_ros.bag.eval_live import _eval_groups, _live_run
from x3kd_ros.bag.ground_truth import BagGroundTruth, bag_custom_data, has_ground_truth, read_keyframes
from x3kd_ros.bag.io import bag_summary, read_bag, transform_to_matrix
from x3kd_ros.bag.matching import FrameCheck, match_answers_to_frames, match_to_keyframes, percentiles
from x3kd_ros.bag.topic_map import BagTopics, _topic_warnings, apply_remaps, node_parameters, parse_remap, resolve_bag_topics


__all__ = [
    "BagEvalError",
    "BagEvalConfig",
    "BagGroundTruth",
    "read_keyframes",
    "bag_custom_data",
    "match_to_keyframes",
    "match_answers_to_frames",
    "percentiles",
    "parse_remap",
    "apply_remaps",
    "node_parameters",
    "BagTopics",
    "resolve_bag_topics",
    "has_ground_truth",
    "eval_graph_specs",
    "BagEvalResult",
    "run_bag_eval",
]


@dataclass
class BagEvalResult:
    """What :func:`run_bag_eval` measured (everything is also in ``report``, written to ``report_path``).

    Fields:
        report: the JSON report (see the module docstring).
        report_path: ``<out>/report.json``.
        metrics: model ("student", "lidar", "radar") -> tables-free :class:`DetectionMetrics`.
        devkit_metrics: model -> metrics of the devkit's ``DetectionEval`` (with ``dataroot``).
        frames: group ("detector", "lidar", "radar") -> :class:`FrameCheck`.
        predictions: model -> sample token -> boxes (ego frame of the keyframe).
        ground_truth: the bag's keyframes (None: the bag has no ground truth, no metrics).
        exit_codes: graph node key -> exit code.
        pictures: BEV PNGs written.
    """

    report: dict
    report_path: Path
    metrics: dict[str, Any]
    devkit_metrics: dict[str, Any]
    frames: dict[str, FrameCheck]
    predictions: dict[str, dict[str, Boxes3D]]
    ground_truth: Optional[BagGroundTruth]
    exit_codes: dict[str, int]
    pictures: list[Path]


def run_bag_eval(bag: str | os.PathLike, out: str | os.PathLike, config: BagEvalConfig,
                 log: Optional[Callable[[str], None]] = None, domain_id: Optional[int] = None) -> BagEvalResult:
    """Replay ``bag`` through the live graph and score it (see the module docstring).

    Args:
        bag: rosbag2 folder written by ``x3kd bag write``, or any bag whose topics the config's
            remappings / params files map (ground truth optional).
        out: output folder (created; report.json, submissions, pictures, logs/).
        config: :class:`BagEvalConfig`.
        log: progress lines go here (None = silent).
        domain_id: ROS_DOMAIN_ID for the graph; None keeps the environment's (or derives one).

    Raises:
        BagEvalError: bad input (``dataroot`` without ground truth in the bag), or a node that did
            not come up (its log tail is in the text).
    """
    from x3kd_core.eval.detection import EvaluationError, evaluate, submission_meta, write_submission
    from x3kd_ros.graph.environment import apply_network_rule

    say = log or (lambda text: None)
    bag, out = Path(bag), Path(out)
    if not (bag / "metadata.yaml").is_file():
        raise BagEvalError(f"not a rosbag2 folder (no metadata.yaml): {bag}")
    summary = bag_summary(bag)
    specs, sensors = _eval_graph(config, summary.msgtypes)
    ground_truth = read_keyframes(bag, sensors.names) if has_ground_truth(summary.msgtypes, sensors.names) else None
    if ground_truth is None and config.dataroot:
        raise BagEvalError(f"a devkit evaluation on {config.dataroot} needs the bag's ground truth "
                           f"({sensors.names[topics.GT_SAMPLE_TOKEN_TOPIC]}), which it lacks")
    if ground_truth is None:
        say(f"bag eval: no ground truth in {bag} ({sensors.names[topics.GT_DETECTIONS_TOPIC]}): reporting frames, "
            "latency, rates, drops and teacher agreement, no metrics")
    topic_warnings = _topic_warnings(config, sensors, summary.msgtypes)
    for warning in topic_warnings:
        say(f"bag eval: WARNING {warning}")
    node_names = {s.key: s.name for s in specs}
    teachers = [t for t in ("lidar", "radar") if f"{t}_teacher" in node_names]
    groups = _eval_groups(sensors, teachers)
    out.mkdir(parents=True, exist_ok=True)
    network = apply_network_rule(domain_id=domain_id)

    live = _live_run(bag, out, specs, groups, teachers, summary.msgtypes, config, network, say, sensors)
    say(f"bag eval: replay done in {live.replay.wall_s:.1f} s; graph stopped (exit codes {live.exit_codes})")

    frames, latency, predictions, unscored = _answers_and_latency(
        live, groups, node_names, ground_truth, int(config.match_tolerance_s * 1e9))
    metrics, devkit_metrics, devkit_errors, submissions = {}, {}, {}, {}
    dataset = bag_custom_data(bag).get("x3kd.dataset", {})
    dataset = dataset if isinstance(dataset, dict) else {}
    for model, preds in predictions.items():
        assert ground_truth is not None  # predictions are keyed by keyframe
        metrics[model] = score_keyframes(ground_truth.keyframes, preds)
        path = write_submission(keyframe_submission(ground_truth.keyframes, preds), out / f"submission_{model}.json",
                                meta=submission_meta(model))
        submissions[model] = str(path)
        if config.dataroot:
            version = config.version or dataset.get("version", "")
            split = config.split or dataset.get("split", "")
            try:
                devkit_metrics[model] = evaluate(config.dataroot, version, split, path, out / f"devkit_{model}")
            except (EvaluationError, FileNotFoundError) as err:
                devkit_errors[model] = str(err)
                say(f"bag eval: devkit evaluation of {model} failed: {err}")
    pictures = (_pictures(bag, out, ground_truth, predictions.get("student", {}), config, sensors)
                if ground_truth is not None else [])

    replay = live.replay
    report = {
        "bag": str(bag.resolve()),
        "bag_summary": {"message_counts": summary.message_counts,
                        "duration_s": (summary.end_ns - summary.start_ns) * 1e-9},
        "ground_truth": ground_truth is not None,
        "keyframes": len(ground_truth.keyframes) if ground_truth is not None else None,
        "ego_poses": ({"from_tf": ground_truth.has_ego_poses, "max_gap_ms": ground_truth.max_pose_gap_ns / 1e6}
                      if ground_truth is not None else None),
        "topic_map": {"remappings": [f"{a}:={b}" for a, b in config.remappings],
                      "params_files": [str(Path(f).resolve()) for f in config.params_files],
                      "inputs": {"cameras": sensors.image, "camera_info": sensors.camera_info,
                                 "lidar": sensors.lidar, "radars": sensors.radar},
                      "renamed": sensors.remapped(), "warnings": topic_warnings},
        "graph": {"nodes": {s.key: {"name": s.name, "parameters": s.parameters,
                                    "params_files": [str(f) for f in s.params_files],
                                    "remappings": [f"{a}:={b}" for a, b in s.remappings]} for s in specs},
                  "ros_domain_id": network["ROS_DOMAIN_ID"], "exit_codes": live.exit_codes,
                  "fastdds_profile": live.transport_note},
        "replay": {"mode": "flow_controlled" if config.rate == 0 else "real_time", "rate": config.rate,
                   "max_outstanding": config.max_outstanding, "published": replay.published, "primed": replay.primed,
                   "ack_timeouts": replay.ack_timeouts, "drained": replay.drained, "replay_wall_s": replay.wall_s,
                   "bag_span_s": replay.bag_span_s, "ready_wait_s": live.ready_s, "total_wall_s": live.wall_s},
        "frames": {g: c.to_dict() for g, c in frames.items()},
        "detector_inputs": _detector_inputs(replay.frames["detector"],
                                            live.diagnostics.get(node_names["detector"], {}), sensors),
        "keyframes_without_answer": unscored,
        **({} if ground_truth is not None else {
            "metrics_note": "the bag has no ground truth: no metrics (frames, latency, rates, drops and "
                            "teacher agreement only)"}),
        "metrics": {model: {"from_bag": m.to_dict(),
                            "from_bag_note": "mAVE / mAAE are 1 and NDS is a lower bound: a bag has no "
                                             "ground-truth velocity or attribute",
                            **({"devkit": devkit_metrics[model].to_dict()} if model in devkit_metrics else {}),
                            **({"devkit_error": devkit_errors[model]} if model in devkit_errors else {}),
                            "submission": submissions[model]}
                    for model, m in metrics.items()},
        "latency": latency,
        "rates": _rates(live, groups, node_names),
        "comparison": {t: {"pairs": len(live.comparison[t]), "expected_pairs": live.expected_pairs[t],
                           "total": live.comparison[t][-1]["total"] if live.comparison[t] else None}
                       for t in teachers},
        "diagnostics": live.diagnostics,
        "pictures": [str(p) for p in pictures],
    }
    report_path = out / "report.json"
    report_path.write_text(json.dumps(_json_clean(report), indent=2, allow_nan=False))
    return BagEvalResult(report=report, report_path=report_path, metrics=metrics, devkit_metrics=devkit_metrics,
                         frames=frames, predictions=predictions, ground_truth=ground_truth,
                         exit_codes=live.exit_codes, pictures=pictures)


def _json_clean(value):
    """NaN / inf -> None, numpy scalars -> Python, Paths -> str (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _pictures(bag: Path, out: Path, ground_truth: BagGroundTruth, student: dict[str, Boxes3D],
              config: BagEvalConfig, sensors: Optional[BagTopics] = None) -> list[Path]:
    """BEV pictures: LiDAR (ego frame), GT (solid) and student boxes (dashed) for a few keyframes."""
    from x3kd_core import viz
    from x3kd_ros.conversions import cloud_to_lidar_points

    n = min(config.num_pictures, len(ground_truth.keyframes))
    if n == 0:
        return []
    chosen = sorted({int(i) for i in np.linspace(0, len(ground_truth.keyframes) - 1, n).round()})
    frames = [ground_truth.keyframes[i] for i in chosen]
    msgtypes = bag_summary(bag).msgtypes
    clouds: dict[int, np.ndarray] = {}
    lidar_topic = sensors.lidar if sensors is not None else topics.LIDAR_TOPIC
    if lidar_topic in msgtypes and topics.TF_STATIC_TOPIC in msgtypes:
        static: dict[str, np.ndarray] = {}
        for msg in read_bag(bag, [topics.TF_STATIC_TOPIC]):
            for tf in msg.message.transforms:
                if tf.header.frame_id == topics.BASE_FRAME:
                    static.setdefault(tf.child_frame_id, transform_to_matrix(tf.transform))
        wanted = {k.stamp_ns for k in frames}
        for msg in read_bag(bag, [lidar_topic]):
            if msg.stamp_ns in wanted and msg.message.header.frame_id in static:
                points = cloud_to_lidar_points(msg.message).points[:, :3].astype(np.float64)
                clouds[msg.stamp_ns] = geometry.transform_points(static[msg.message.header.frame_id], points)
    paths = []
    for i, k in zip(chosen, frames):
        pred = student.get(k.token, Boxes3D.empty())
        pred = pred[pred.score >= config.picture_score_threshold]
        paths.append(viz.plot_bev(
            out / f"bev_{i:04d}_{k.token[:8]}.png", clouds.get(k.stamp_ns), gt=k.boxes, pred=pred,
            title=f"keyframe {i} ({k.token[:8]}): GT solid, student dashed "
                  f"(score >= {config.picture_score_threshold:g})"))
    return paths
