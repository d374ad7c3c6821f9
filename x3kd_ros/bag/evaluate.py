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

Nothing here imports rclpy at module level: :func:`read_keyframes` and the report helpers work without a ROS graph.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import yaml

from x3kd_core import geometry
from x3kd_core.eval.keyframes import KeyFrame, keyframe_submission, score_keyframes
from x3kd_core.structures import CAMERA_NAMES, RADAR_NAMES, Boxes3D
from x3kd_ros import topics
from x3kd_ros.bag.io import bag_summary, read_bag, transform_to_matrix

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

#: Stamp spread of one camera frame / radar frame: the player's frame span and the nodes' sync slop.
CAMERA_SPAN_S = 0.06
RADAR_SPAN_S = 0.08
#: Student-teacher pairing slop of the comparison nodes during an evaluation (s).
PAIR_SLOP_S = 0.06
_DIAGNOSTICS_PERIOD_S = 0.2
_PERCENTILES = (50, 90, 99)


class BagEvalError(ValueError):
    """The evaluation cannot run as asked (bad bag, missing checkpoint, a node that did not start)."""


# ----------------------------------------------------------------------------------------------
# Ground truth from the bag


@dataclass
class BagGroundTruth:
    """Keyframes of a bag in time order, and how the ego poses were found.

    Fields:
        keyframes: :class:`KeyFrame` list.
        has_ego_poses: the bag has ``/tf`` (else the ego frame doubles as the global frame).
        max_pose_gap_ns: largest |keyframe stamp - stamp of the /tf message used| (0 = exact).
    """

    keyframes: list[KeyFrame]
    has_ego_poses: bool
    max_pose_gap_ns: int = 0

    @property
    def tokens(self) -> list[str]:
        return [k.token for k in self.keyframes]


def bag_custom_data(path: str | os.PathLike) -> dict[str, Any]:
    """The x3kd entries of the bag's ``metadata.yaml`` custom data, JSON-decoded
    (``x3kd.dataset``: dataroot / version / split; ``x3kd.scene_offsets_ns``); {} where absent."""
    meta = Path(path) / "metadata.yaml"
    if not meta.is_file():
        return {}
    info = (yaml.safe_load(meta.read_text()) or {}).get("rosbag2_bagfile_information", {})
    out = {}
    for key, value in (info.get("custom_data") or {}).items():
        try:
            out[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            out[key] = value
    return out


def has_ground_truth(msgtypes: Mapping[str, str], topic_names: Optional[Mapping[str, str]] = None) -> bool:
    """Whether a bag with these topics has ground truth (both ground-truth topics, under their
    names in the bag: ``topic_names`` maps the graph's names to the bag's, see :class:`BagTopics`).

    Raises:
        BagEvalError: one ground-truth topic without the other.
    """
    names = topic_names or {}
    needed = [names.get(t, t) for t in (topics.GT_SAMPLE_TOKEN_TOPIC, topics.GT_DETECTIONS_TOPIC)]
    present = [t in msgtypes for t in needed]
    if any(present) and not all(present):
        raise BagEvalError(f"the bag has {needed[present.index(True)]} but not {needed[present.index(False)]}: "
                           "ground truth needs both")
    return all(present)


def read_keyframes(path: str | os.PathLike, topic_names: Optional[Mapping[str, str]] = None) -> BagGroundTruth:
    """Ground truth and ego poses of every keyframe of a bag written by :func:`x3kd_ros.bag.io.write_bag`.

    The ego pose is the ``map -> base_link`` transform on ``/tf`` at the keyframe stamp (the
    LiDAR keyframe's own pose, the one nuScenes evaluates with); the nearest one if no stamp
    matches exactly (the gap is reported). ``topic_names`` maps ``/ground_truth/*`` and ``/tf``
    to their names in the bag where those differ (:attr:`BagTopics.names`).

    Raises:
        BagEvalError: no ground-truth topics, or detections without a token at the same stamp.
    """
    from x3kd_ros.conversions import detections_to_boxes

    names = topic_names or {}
    token_topic, boxes_topic, tf_topic = (names.get(t, t) for t in (
        topics.GT_SAMPLE_TOKEN_TOPIC, topics.GT_DETECTIONS_TOPIC, topics.TF_TOPIC))
    summary = bag_summary(path)
    needed = [token_topic, boxes_topic]
    missing = [t for t in needed if t not in summary.msgtypes]
    if missing:
        raise BagEvalError(f"bag {path} has no ground truth ({', '.join(missing)} missing); write it with "
                           "`x3kd bag write` from a nuScenes-format dataset")
    has_tf = tf_topic in summary.msgtypes
    tokens: dict[int, str] = {}
    boxes: dict[int, Boxes3D] = {}
    pose_stamps: list[int] = []
    poses: list[np.ndarray] = []
    for msg in read_bag(path, needed + ([tf_topic] if has_tf else [])):
        if msg.topic == token_topic:
            tokens[msg.stamp_ns] = msg.message.data
        elif msg.topic == boxes_topic:
            boxes[msg.stamp_ns] = detections_to_boxes(msg.message)
        else:
            for tf in msg.message.transforms:
                if (tf.header.frame_id, tf.child_frame_id) == (topics.GLOBAL_FRAME, topics.BASE_FRAME):
                    stamp = tf.header.stamp
                    pose_stamps.append(int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec))
                    poses.append(transform_to_matrix(tf.transform))
    if set(tokens) != set(boxes):
        raise BagEvalError(f"bag {path}: {boxes_topic} and {token_topic} stamps differ "
                           f"({len(boxes)} vs {len(tokens)} messages)")
    order = np.argsort(pose_stamps, kind="stable") if pose_stamps else np.zeros(0, dtype=np.int64)
    pose_stamps_sorted = np.asarray(pose_stamps, dtype=np.int64)[order]
    keyframes, max_gap = [], 0
    for stamp in sorted(tokens):
        if len(pose_stamps_sorted):
            i = int(np.argmin(np.abs(pose_stamps_sorted - stamp)))
            max_gap = max(max_gap, abs(int(pose_stamps_sorted[i]) - stamp))
            pose = poses[int(order[i])]
        else:
            pose = np.eye(4)
        keyframes.append(KeyFrame(tokens[stamp], stamp, boxes[stamp], pose))
    return BagGroundTruth(keyframes, has_ego_poses=bool(pose_stamps), max_pose_gap_ns=max_gap)


# ----------------------------------------------------------------------------------------------
# Matching answers to frames and keyframes


def match_to_keyframes(keyframe_stamps_ns: Sequence[int], stamps_ns: Sequence[int],
                       tolerance_ns: int) -> dict[int, int]:
    """keyframe index -> index of the stamp nearest to it, if within ``tolerance_ns``.

    Each stamp is used for one keyframe at most (the nearest keyframe wins).
    """
    if not len(stamps_ns) or not len(keyframe_stamps_ns):
        return {}
    keys = np.asarray(keyframe_stamps_ns, dtype=np.int64)
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    pairs = []
    for k, key in enumerate(keys):
        gaps = np.abs(stamps - key)
        j = int(np.argmin(gaps))
        if gaps[j] <= tolerance_ns:
            pairs.append((int(gaps[j]), k, j))
    out: dict[int, int] = {}
    used: set[int] = set()
    for _, k, j in sorted(pairs):
        if j not in used:
            out[k] = j
            used.add(j)
    return out


@dataclass
class FrameCheck:
    """How the frames of one group were answered.

    Fields:
        sent: frames sent. answers: answers received.
        answered_once / unanswered / answered_twice_or_more: frames with exactly 1 / 0 / >1 answers.
        unmatched_answers: answers whose stamp belongs to no frame sent.
        answer_of_frame: frame index -> index of its (first) answer.
    """

    sent: int
    answers: int
    answered_once: int
    unanswered: int
    answered_twice_or_more: int
    unmatched_answers: int
    answer_of_frame: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every frame got exactly one answer and no answer is extra."""
        return self.answered_once == self.sent == self.answers and self.unmatched_answers == 0

    def to_dict(self) -> dict:
        return {"sent": self.sent, "answers": self.answers, "answered_once": self.answered_once,
                "unanswered": self.unanswered, "answered_twice_or_more": self.answered_twice_or_more,
                "unmatched_answers": self.unmatched_answers, "every_frame_answered_once": self.ok}


def match_answers_to_frames(frames, answers, span_ns: int) -> FrameCheck:
    """Assign each answer to the frame sent with its stamp (one of the frame's input stamps; a node's
    synchronized stamp is always one of its inputs'), else the nearest frame within ``span_ns``."""
    by_stamp: dict[int, list[int]] = {}
    for i, frame in enumerate(frames):
        for stamp in frame.stamps_ns.values():
            by_stamp.setdefault(stamp, []).append(i)
    firsts = np.asarray([f.first_stamp_ns for f in frames], dtype=np.int64)
    hits: dict[int, list[int]] = {}
    unmatched = 0
    for a, answer in enumerate(answers):
        candidates = by_stamp.get(answer.stamp_ns, [])
        if candidates:
            frame = next((i for i in candidates if i not in hits), candidates[0])
        elif len(firsts) and np.min(np.abs(firsts - answer.stamp_ns)) <= span_ns:
            frame = int(np.argmin(np.abs(firsts - answer.stamp_ns)))
        else:
            unmatched += 1
            continue
        hits.setdefault(frame, []).append(a)
    counts = [len(hits.get(i, [])) for i in range(len(frames))]
    return FrameCheck(
        sent=len(frames), answers=len(answers),
        answered_once=sum(c == 1 for c in counts), unanswered=sum(c == 0 for c in counts),
        answered_twice_or_more=sum(c > 1 for c in counts), unmatched_answers=unmatched,
        answer_of_frame={i: v[0] for i, v in hits.items()},
    )


def percentiles(values: Sequence[float]) -> dict[str, Any]:
    """``{"n", "p50", "p90", "p99", "mean", "max"}`` of ``values`` (None where there are none)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"n": 0, **{f"p{p}": None for p in _PERCENTILES}, "mean": None, "max": None}
    out: dict[str, Any] = {"n": int(len(v))}
    out.update({f"p{p}": float(np.percentile(v, p)) for p in _PERCENTILES})
    out.update({"mean": float(v.mean()), "max": float(v.max())})
    return out


# ----------------------------------------------------------------------------------------------
# The graph for an evaluation


@dataclass(frozen=True)
class BagEvalConfig:
    """What :func:`run_bag_eval` runs and how.

    Fields:
        checkpoint: camera-student checkpoint (required).
        lidar_checkpoint / radar_checkpoint: teacher checkpoints ("" = that teacher is not run);
            each teacher comes with its comparison node.
        device: where the nodes run their models (auto | cpu | cuda | cuda:N).
        rate: 0 = flow-controlled, as fast as the graph answers; > 0 = this factor x real time.
        max_outstanding: with rate 0, frames a model may have waiting at once.
        ack_timeout_s / ready_timeout_s / drain_timeout_s: see :class:`~x3kd_ros.bag.replay.ReplayConfig`.
        match_tolerance_s: largest |answer stamp - keyframe stamp| for an answer to score that
            keyframe (s); below half the keyframe period (nuScenes: 0.5 s).
        dataroot / version / split: the dataset tables, to also evaluate with the devkit's
            ``DetectionEval``; version / split default to those recorded in the bag.
        num_pictures: BEV pictures (GT vs student) of this many keyframes, spread over the bag.
        picture_score_threshold: student boxes drawn from this score on.
        stop_timeout_s: grace time of each stop signal to the node processes.
        graph_config: graph description YAML ("" = config/ros/graph.yaml).
        fastdds_profile: load the replay's Fast DDS profile (:mod:`x3kd_ros.bag.replay`, *Transport*)
            in this process and the nodes, unless the user set a profile file or another RMW.
        remappings: ``(FROM, TO)`` remap rules given to every node (``-r FROM:=TO``; FROM the
            graph's topic name, TO the bag's; ``node:FROM`` limits a rule to that node), ahead
            of the graph file's own; :func:`parse_remap` reads ``"FROM:=TO"``.
        params_files: ROS 2 params files given to every node after the graph file's own (the
            evaluation's overrides still come last); e.g. ``image_topics`` / ``camera_frames``
            of a foreign camera rig.
    """

    checkpoint: str
    lidar_checkpoint: str = ""
    radar_checkpoint: str = ""
    device: str = "auto"
    rate: float = 0.0
    max_outstanding: int = 1
    ack_timeout_s: float = 30.0
    ready_timeout_s: float = 120.0
    drain_timeout_s: float = 30.0
    match_tolerance_s: float = 0.2
    dataroot: str = ""
    version: str = ""
    split: str = ""
    num_pictures: int = 3
    picture_score_threshold: float = 0.3
    stop_timeout_s: float = 10.0
    graph_config: str = ""
    fastdds_profile: bool = True
    remappings: tuple[tuple[str, str], ...] = ()
    params_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise BagEvalError("a student checkpoint is required")
        object.__setattr__(self, "remappings", tuple((str(a), str(b)) for a, b in self.remappings))
        object.__setattr__(self, "params_files", tuple(str(f) for f in self.params_files))
        for src, dst in self.remappings:
            if not src or not dst:
                raise BagEvalError(f"remap rule {src}:={dst} has an empty side")
        for file in self.params_files:
            if not Path(file).is_file():
                raise BagEvalError(f"params file not found: {file}")
        if not self.rate >= 0:
            raise BagEvalError(f"rate must be >= 0 (0 = as fast as the graph answers), got {self.rate}")
        if not self.match_tolerance_s > 0:
            raise BagEvalError(f"match_tolerance_s must be > 0, got {self.match_tolerance_s}")
        if self.num_pictures < 0:
            raise BagEvalError(f"num_pictures must be >= 0, got {self.num_pictures}")


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------
# Topic map: where the graph's inputs are in a bag


_NODE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IMAGE_TYPE = "sensor_msgs/msg/Image"
_COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
_CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"


def parse_remap(text: str) -> tuple[str, str]:
    """``"FROM:=TO"`` (as ``--ros-args -r`` takes it) -> ``(FROM, TO)``.

    Raises:
        BagEvalError: no ``:=`` or an empty side.
    """
    src, sep, dst = text.partition(":=")
    if not sep or not src.strip() or not dst.strip():
        raise BagEvalError(f"expected a remap rule FROM:=TO, got {text!r}")
    return src.strip(), dst.strip()


def _absolute(name: str, namespace: str = "") -> str:
    name = name.strip()
    return name if name.startswith(("/", "~")) else f"{namespace.rstrip('/')}/{name}"


def apply_remaps(name: str, rules: Sequence[tuple[str, str]], node_name: str = "", namespace: str = "") -> str:
    """Topic ``name`` of node ``namespace/node_name`` after ROS 2 remap rules, as rcl applies them:
    names made absolute in the node's namespace, the first rule whose FROM equals the name wins,
    a ``node:FROM`` rule applies to that node only."""
    target = _absolute(name, namespace)
    for src, dst in rules:
        node, sep, rest = src.partition(":")
        if sep and _NODE_NAME.fullmatch(node):
            if node != node_name:
                continue
            src = rest
        if _absolute(src, namespace) == target:
            return _absolute(dst, namespace)
    return target


def _node_key_pattern(key: str) -> re.Pattern:
    """rclcpp / rclpy's match of a params-file node key with a node's full name: ``/**`` any
    number of namespace tokens, ``/*`` one token (resolve_parameter_overrides)."""
    key = key if key.startswith("/") else "/" + key
    parts = re.split(r"(/\*\*|/\*)", key)
    return re.compile("".join("(/\\w+)*" if p == "/**" else "(/\\w+)" if p == "/*" else re.escape(p) for p in parts))


def _flatten(prefix: str, value: Any, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value


def node_parameters(params_files: Sequence[str | os.PathLike], node_name: str, namespace: str = "",
                    inline: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The parameter values that ROS 2 params files (in order, later wins) and then ``inline``
    give node ``namespace/node_name``, under their dotted names (``sync.slop_s``). Node keys may
    be nested (``ns: {node: {ros__parameters: ...}}``) and use ``/**`` / ``/*`` wildcards.

    Raises:
        BagEvalError: an unreadable file or one that is not a params file.
    """
    fqn = f"{namespace.rstrip('/')}/{node_name}"
    out: dict[str, Any] = {}

    def walk(key: str, entry: Any, file) -> None:
        if not isinstance(entry, dict):
            raise BagEvalError(f"params file {file}: node entry {key!r} is not a mapping")
        for name, value in entry.items():
            if name == "ros__parameters":
                if _node_key_pattern(key).fullmatch(fqn):
                    _flatten("", value or {}, out)
            else:
                walk(f"{key.rstrip('/')}/{name}" if key else str(name), value, file)

    for file in params_files:
        try:
            document = yaml.safe_load(Path(file).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise BagEvalError(f"params file {file}: {err}") from None
        if not isinstance(document, dict):
            raise BagEvalError(f"params file {file}: expected a mapping of node names to ros__parameters")
        walk("", document, file)
    if inline:
        _flatten("", dict(inline), out)
    return out


@dataclass(frozen=True)
class BagTopics:
    """Where the graph's inputs are in a bag, resolved as the nodes resolve them (their parameters,
    then the remap rules; see *Other people's bags* in the module docstring).

    Fields:
        cameras: the detector's cameras whose images the bag has (the detector's order).
        compressed: those images are CompressedImage (else Image).
        image: camera -> image topic in the bag. camera_info: camera -> CameraInfo topic in the
            bag (only those the bag has).
        lidar: the LiDAR teacher's cloud topic in the bag ("" where the bag lacks it).
        radars: radars whose clouds the bag has; radar: radar -> topic in the bag.
        names: graph name -> bag name of ``/ground_truth/*``, ``/tf`` and ``/tf_static``.
        camera_candidates: the image topics looked for (for error messages).
        detector_parameters / radar_parameters: node-side (before remapping) parameter values for
            the cameras / radars present, which the evaluation sets (dotted names).
    """

    cameras: list[str]
    compressed: bool
    image: dict[str, str]
    camera_info: dict[str, str]
    lidar: str
    radars: list[str]
    radar: dict[str, str]
    names: dict[str, str]
    camera_candidates: list[str] = field(default_factory=list)
    detector_parameters: dict[str, Any] = field(default_factory=dict)
    radar_parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def has_lidar(self) -> bool:
        return bool(self.lidar)

    def image_topics(self) -> list[str]:
        return [self.image[c] for c in self.cameras]

    def remapped(self) -> dict[str, str]:
        """Graph name -> bag name of every input whose name differs (for the report)."""
        out = {topics.camera_image_topic(c, self.compressed): self.image[c] for c in self.cameras}
        out.update({topics.camera_info_topic(c): t for c, t in self.camera_info.items()})
        if self.lidar:
            out[topics.LIDAR_TOPIC] = self.lidar
        out.update({topics.radar_topic(r): t for r, t in self.radar.items()})
        out.update(self.names)
        return {k: v for k, v in out.items() if k != v}


def _per_entry(params: Mapping[str, Any], name: str, n: int, node: str) -> Optional[list]:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n:
        raise BagEvalError(f"node {node}: parameter {name} must have one entry per sensor ({n}), got {value!r}")
    return list(value)


def _nested(dotted: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        target = out
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return out


def resolve_bag_topics(specs, msgtypes: Mapping[str, str]) -> BagTopics:
    """Where the inputs of the graph ``specs`` (:class:`~x3kd_ros.graph.description.NodeSpec`, as started:
    params files, inline parameters, remappings) are in a bag with topics ``msgtypes``.

    Cameras: the detector's ``cameras`` with ``image_topics`` (default
    ``/cameras/<cam>/image_raw`` and ``.../compressed``) remapped; raw or compressed, whichever
    more cameras of the bag have. Raises BagEvalError for malformed per-sensor lists.
    """
    by_key = {s.key: s for s in specs}
    anchor = by_key.get("detector") or (specs[0] if specs else None)

    def params(spec) -> dict[str, Any]:
        return node_parameters(spec.params_files, spec.name, spec.namespace, spec.parameters)

    def remap(spec, name: str) -> str:
        return apply_remaps(name, spec.remappings, spec.name, spec.namespace) if spec is not None else name

    cameras, compressed, image, info, candidates, det = [], False, {}, {}, [], {}
    detector = by_key.get("detector")
    if detector is not None:
        p = params(detector)
        all_cameras = list(p.get("cameras") or CAMERA_NAMES)
        n = len(all_cameras)
        explicit = _per_entry(p, "image_topics", n, detector.name)
        options: dict[bool, list[tuple[int, str, str]]] = {}
        for comp in (False, True):
            node_side = explicit or [topics.camera_image_topic(c, comp) for c in all_cameras]
            bag_side = [remap(detector, t) for t in node_side]
            candidates += [t for t in bag_side if t not in candidates]
            want = _COMPRESSED_TYPE if comp else _IMAGE_TYPE
            options[comp] = [(i, node_side[i], bag_side[i]) for i in range(n) if msgtypes.get(bag_side[i]) == want]
        compressed = len(options[True]) > len(options[False])
        chosen = options[compressed]
        index = [i for i, _, _ in chosen]
        cameras = [all_cameras[i] for i in index]
        image = {all_cameras[i]: bag for i, _, bag in chosen}
        info_node = (_per_entry(p, "camera_info_topics", n, detector.name)
                     or [topics.camera_info_topic(c) for c in all_cameras])
        info = {all_cameras[i]: remap(detector, info_node[i]) for i in index
                if remap(detector, info_node[i]) in msgtypes}
        det = {"cameras": cameras, "image_transport": "compressed" if compressed else "raw",
               "image_topics": [t for _, t, _ in chosen], "camera_info_topics": [info_node[i] for i in index]}
        for name in ("camera_frames", "sync.offsets_s"):
            values = _per_entry(p, name, n, detector.name)
            if values is not None:
                det[name] = [values[i] for i in index]

    lidar_spec = by_key.get("lidar_teacher")
    lidar_node = params(lidar_spec).get("input_topic") if lidar_spec is not None else None
    lidar = remap(lidar_spec or anchor, lidar_node or topics.LIDAR_TOPIC)
    lidar = lidar if msgtypes.get(lidar) == _CLOUD_TYPE else ""

    radar_spec = by_key.get("radar_teacher")
    rp = params(radar_spec) if radar_spec is not None else {}
    all_radars = list(rp.get("radars") or RADAR_NAMES)
    m = len(all_radars)
    radar_node = (_per_entry(rp, "input_topics", m, "x3kd_radar_teacher")
                  or [topics.radar_topic(r) for r in all_radars])
    radar_index = [i for i in range(m) if msgtypes.get(remap(radar_spec or anchor, radar_node[i])) == _CLOUD_TYPE]
    radars = [all_radars[i] for i in radar_index]
    radar = {all_radars[i]: remap(radar_spec or anchor, radar_node[i]) for i in radar_index}
    rad = {"radars": radars, "input_topics": [radar_node[i] for i in radar_index]}
    frames = _per_entry(rp, "radar_frames", m, "x3kd_radar_teacher")
    if frames is not None:
        rad["radar_frames"] = [frames[i] for i in radar_index]

    names = {t: remap(anchor, t) for t in (topics.GT_SAMPLE_TOKEN_TOPIC, topics.GT_DETECTIONS_TOPIC,
                                           topics.TF_TOPIC, topics.TF_STATIC_TOPIC)}
    if names[topics.TF_STATIC_TOPIC] != topics.TF_STATIC_TOPIC:
        raise BagEvalError(f"{topics.TF_STATIC_TOPIC} cannot be remapped in an evaluation (the player replays "
                           f"it latched under its own name), got {names[topics.TF_STATIC_TOPIC]}")
    return BagTopics(cameras=cameras, compressed=compressed, image=image, camera_info=info, lidar=lidar,
                     radars=radars, radar=radar, names=names, camera_candidates=candidates,
                     detector_parameters=det, radar_parameters=rad)


def _topic_warnings(config: BagEvalConfig, sensors: BagTopics, msgtypes: Mapping[str, str]) -> list[str]:
    """Likely mistakes in a topic map: cameras without CameraInfo in the bag, and remap rules whose
    TO is a bag topic that no node input resolved to (a FROM that names no topic the graph uses)."""
    used = (set(sensors.image.values()) | set(sensors.camera_info.values()) | set(sensors.radar.values())
            | set(sensors.names.values()) | ({sensors.lidar} if sensors.lidar else set()))
    out = [f"{c}: the bag has no CameraInfo for it (its images wait {topics.camera_info_topic(c)} "
           "remapped, then count as missing_camera_info)" for c in sensors.cameras if c not in sensors.camera_info]
    for src, dst in config.remappings:
        if _absolute(dst) in msgtypes and _absolute(dst) not in used:
            out.append(f"remap {src}:={dst}: {dst} is in the bag but no node listens to it through this rule "
                       f"(graph topics are named like {topics.camera_info_topic(CAMERA_NAMES[0])})")
    return out


def eval_graph_specs(config: BagEvalConfig, msgtypes: Mapping[str, str]):
    """The graph's :class:`~x3kd_ros.graph.description.NodeSpec` s for an evaluation of a bag with these topics.

    The student detector always; the LiDAR / radar teacher and its comparison node when its
    checkpoint is given. ``config.remappings`` go to every node ahead of the graph's own and
    ``config.params_files`` after the graph's own files. Inline parameters added to the graph's
    (they are applied last):

    ========================  =================================================================
    all model nodes           ``qos.input`` reliable depth 100, ``qos.output.depth`` 100,
                              ``processing_queue_size`` 1000 (nothing dropped), no markers,
                              ``diagnostics_period_s`` 0.2
    detector                  ``cameras`` / ``image_transport`` of the bag (with their
                              ``image_topics`` / ``camera_info_topics`` and, where set,
                              ``camera_frames``: :class:`BagTopics`), ``sync.slop_s``
                              :data:`CAMERA_SPAN_S`, ``sync.timeout_s`` 1, ``max_input_age_s`` 0
                              (bag stamps are old)
    radar teacher             ``radars`` of the bag (with their ``input_topics``), ``sync.slop_s``
                              :data:`RADAR_SPAN_S`
    comparison                ``qos.input.depth`` 100, ``pair.slop_s`` :data:`PAIR_SLOP_S`,
                              ``pair.timeout_s`` 10, ``window_frames`` 100000
    ========================  =================================================================

    Raises:
        BagEvalError: a checkpoint file is missing, or the bag lacks the sensors a node needs.
    """
    return _eval_graph(config, msgtypes)[0]


def _eval_graph(config: BagEvalConfig, msgtypes: Mapping[str, str]):
    """(specs, :class:`BagTopics`) of :func:`eval_graph_specs`."""
    from x3kd_ros.graph.description import GraphError, load_graph

    for name, path in (("checkpoint", config.checkpoint), ("lidar checkpoint", config.lidar_checkpoint),
                       ("radar checkpoint", config.radar_checkpoint)):
        if path and not Path(path).is_file():
            raise BagEvalError(f"{name} not found: {path}")
    use_teachers = bool(config.lidar_checkpoint or config.radar_checkpoint)
    arguments = {"checkpoint": str(Path(config.checkpoint).resolve()), "device": config.device,
                 "use_teachers": use_teachers,
                 "lidar_checkpoint": str(Path(config.lidar_checkpoint).resolve()) if config.lidar_checkpoint else "",
                 "radar_checkpoint": str(Path(config.radar_checkpoint).resolve()) if config.radar_checkpoint else ""}
    if config.graph_config:
        arguments["config"] = config.graph_config
    try:
        specs = load_graph(arguments)
    except GraphError as err:
        raise BagEvalError(str(err)) from None
    wanted = {"detector"}
    if config.lidar_checkpoint:
        wanted |= {"lidar_teacher", "comparison_lidar"}
    if config.radar_checkpoint:
        wanted |= {"radar_teacher", "comparison_radar"}
    user_files = tuple(Path(f).resolve() for f in config.params_files)
    specs = [replace(s, params_files=tuple(s.params_files) + user_files,
                     remappings=tuple(config.remappings) + tuple(s.remappings))
             for s in specs if s.key in wanted]
    if {s.key for s in specs} != wanted:
        raise BagEvalError(f"the graph description lacks nodes {sorted(wanted - {s.key for s in specs})}")
    sensors = resolve_bag_topics(specs, msgtypes)
    if not sensors.cameras:
        shown = ", ".join(sensors.camera_candidates[:4]) + (", ..." if len(sensors.camera_candidates) > 4 else "")
        raise BagEvalError(f"the bag has none of the camera image topics the detector listens to ({shown}); "
                           "map them with --remap GRAPH_TOPIC:=BAG_TOPIC or image_topics in a --params-file")
    if config.lidar_checkpoint and not sensors.has_lidar:
        raise BagEvalError(f"a LiDAR teacher needs {topics.LIDAR_TOPIC} (or its remapped name), which the bag lacks")
    if config.radar_checkpoint and not sensors.radars:
        raise BagEvalError("a radar teacher needs /radar/<radar>/points topics (or their remapped names), "
                           "which the bag lacks")
    model_common = {"qos": {"input": {"reliability": "reliable", "depth": 100}, "output": {"depth": 100}},
                    "processing_queue_size": 1000, "publish_markers": False,
                    "diagnostics_period_s": _DIAGNOSTICS_PERIOD_S}
    overrides = {
        "detector": _deep_merge(
            {**model_common,
             # A set waits longer for a late camera: with flow control nothing newer comes meanwhile.
             "sync": {"slop_s": CAMERA_SPAN_S, "timeout_s": 1.0}, "max_input_age_s": 0.0},
            _nested(sensors.detector_parameters)),
        "lidar_teacher": dict(model_common),
        "radar_teacher": _deep_merge({**model_common, "sync": {"slop_s": RADAR_SPAN_S}},
                                     _nested(sensors.radar_parameters)),
        "comparison_lidar": {"qos": {"input": {"depth": 100}, "output": {"depth": 100}},
                             "pair": {"slop_s": PAIR_SLOP_S, "timeout_s": 10.0}, "window_frames": 100000,
                             "diagnostics_period_s": _DIAGNOSTICS_PERIOD_S},
    }
    overrides["comparison_radar"] = overrides["comparison_lidar"]
    out = [replace(spec, parameters=_deep_merge(dict(spec.parameters), overrides.get(spec.key, {}))) for spec in specs]
    return out, sensors


# ----------------------------------------------------------------------------------------------
# Live collection beside the player


class _Collector:
    """Comparison JSON and /diagnostics, received on the executor thread."""

    def __init__(self, node, comparisons: Sequence[str]) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import String

        from x3kd_ros.nodes.qos import qos_profile

        self._lock = threading.Lock()
        self.comparison: dict[str, list[dict]] = {t: [] for t in comparisons}
        self.diagnostics: dict[str, dict[str, str]] = {}
        # node name -> published count -> model_ms.last at the first report showing that count
        self.model_ms: dict[str, dict[int, float]] = {}
        qos = qos_profile("reliable", 1000)
        self.subscriptions = {
            t: node.create_subscription(String, topics.comparison_topic(t), self._on_comparison(t), qos)
            for t in comparisons
        }
        self.subscriptions["/diagnostics"] = node.create_subscription(
            DiagnosticArray, topics.DIAGNOSTICS_TOPIC, self._on_diagnostics, qos)

    def _on_comparison(self, teacher: str):
        def callback(msg) -> None:
            data = json.loads(msg.data)
            with self._lock:
                self.comparison[teacher].append(data)

        return callback

    def _on_diagnostics(self, msg) -> None:
        with self._lock:
            for status in msg.status:
                node = status.name.split(":", 1)[0]
                values = {kv.key: kv.value for kv in status.values}
                self.diagnostics[node] = values
                if "published" in values and "model_ms.last" in values:
                    published = int(values["published"])
                    if published > 0:
                        self.model_ms.setdefault(node, {}).setdefault(published, _float(values["model_ms.last"]))

    def snapshot(self) -> tuple[dict, dict, dict]:
        with self._lock:
            return ({t: list(v) for t, v in self.comparison.items()}, {k: dict(v) for k, v in self.diagnostics.items()},
                    {k: dict(v) for k, v in self.model_ms.items()})


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


class _Spinner:
    """Spins an executor with the given nodes on a daemon thread until :meth:`stop`."""

    def __init__(self, context, nodes) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.context = context
        self.executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            self.executor.add_node(node)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="x3kd_bag_eval_spin", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5.0)
        self.executor.shutdown()


# ----------------------------------------------------------------------------------------------
# The evaluation


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


_MODEL_OF_GROUP = {"detector": "student", "lidar": "lidar", "radar": "radar"}
def _transport_environment(bag: Path, out: Path, enabled: bool) -> tuple[dict[str, str], str]:
    """Environment variables that load the replay's Fast DDS profile, and a note for the report."""
    from x3kd_ros.bag.replay import fastdds_profile_environment, shm_segment_bytes

    if not enabled:
        return {}, "off"
    return fastdds_profile_environment(out / "fastdds_replay_profile.xml", shm_segment_bytes(bag))


def _log_tail(runner, key: str, lines: int = 15) -> str:
    try:
        text = runner.log_text(key)
    except RuntimeError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class _LiveRun:
    """What the live part of an evaluation collected (graph stopped)."""

    replay: Any  # x3kd_ros.bag.replay.ReplayResult
    comparison: dict[str, list[dict]]
    diagnostics: dict[str, dict[str, str]]
    model_samples: dict[str, dict[int, float]]
    expected_pairs: dict[str, int]
    exit_codes: dict[str, int]
    ready_s: float
    wall_s: float
    transport_note: str


def _eval_groups(sensors: BagTopics, teachers: Sequence[str]):
    """The player's frame groups: the detector's camera frames, and each teacher's input."""
    from x3kd_ros.bag.replay import FrameGroup

    groups = [FrameGroup("detector", tuple(sensors.image_topics()), topics.DETECTIONS_TOPIC, span_s=CAMERA_SPAN_S)]
    if "lidar" in teachers:
        groups.append(FrameGroup("lidar", (sensors.lidar,), topics.teacher_detections_topic("lidar"), span_s=0.0))
    if "radar" in teachers:
        groups.append(FrameGroup("radar", tuple(sensors.radar[r] for r in sensors.radars),
                                 topics.teacher_detections_topic("radar"), span_s=RADAR_SPAN_S))
    return groups


def _model_node_key(group: str) -> str:
    return "detector" if group == "detector" else f"{group}_teacher"


def _live_run(bag: Path, out: Path, specs, groups, teachers: Sequence[str], msgtypes: Mapping[str, str],
              config: BagEvalConfig, network: Mapping[str, str], say: Callable[[str], None],
              sensors: BagTopics) -> _LiveRun:
    """Start the graph, replay the bag, collect answers / comparison JSON / diagnostics, stop the graph."""
    import rclpy
    from rclpy.context import Context

    from x3kd_ros.bag.replay import BagPlayer, ReplayConfig, ReplayError
    from x3kd_ros.graph.runner import GraphRunner

    # Publishers wait for these subscriptions: the detector's cameras, /tf_static of every model
    # node, each teacher's sensor topics (names in the bag: BagTopics).
    expected = {t: 1 for t in sensors.image_topics()}
    expected.update({t: 1 for t in sensors.camera_info.values()})
    if topics.TF_STATIC_TOPIC in msgtypes:
        expected[topics.TF_STATIC_TOPIC] = 1 + len(teachers)
    for g in groups[1:]:
        expected.update({t: 1 for t in g.input_topics})
    # CameraInfo first (see replay.py, Priming): the bag's camera_info topics under any name.
    prime = tuple(dict.fromkeys([t for t in msgtypes if t.endswith("/camera_info")]
                                + list(sensors.camera_info.values())))
    replay_config = ReplayConfig(rate=config.rate, max_outstanding=config.max_outstanding,
                                 ack_timeout_s=config.ack_timeout_s, ready_timeout_s=config.ready_timeout_s,
                                 drain_timeout_s=config.drain_timeout_s, expected_subscribers=expected,
                                 prime_topics=prime)
    node_names = {s.key: s.name for s in specs}

    transport_env, transport_note = _transport_environment(bag, out, config.fastdds_profile)
    runner = GraphRunner(specs, log_dir=out / "logs", env={**os.environ, **transport_env},
                         stop_timeout_s=config.stop_timeout_s)
    context = Context()
    node = spinner = player = None
    t_start = time.monotonic()
    saved = {k: os.environ.get(k) for k in transport_env}
    try:
        # The RMW reads the profile when this process creates its first participant (the CLI's
        # case; a process that already had one keeps the profile it loaded then).
        os.environ.update(transport_env)
        try:
            rclpy.init(context=context)
            node = rclpy.create_node("x3kd_bag_eval", context=context)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        player = BagPlayer(node, bag, groups, replay_config)
        collector = _Collector(node, teachers)
        spinner = _Spinner(context, [node])
        say(f"bag eval: starting {', '.join(s.name for s in specs)} (ROS_DOMAIN_ID={network['ROS_DOMAIN_ID']}, "
            f"logs in {out / 'logs'})")
        runner.start()

        def abort() -> Optional[str]:
            dead = runner.exited()
            if not dead:
                return None
            key, code = next(iter(dead.items()))
            return f"node {key} exited with code {code}; its log ends with:\n{_log_tail(runner, key)}"

        def graph_ready() -> Optional[str]:
            # Our own subscription counts too: the student's detections go to us and each comparison node.
            if node.count_subscribers(topics.DETECTIONS_TOPIC) < 1 + len(teachers):
                return f"{topics.DETECTIONS_TOPIC} subscribers (comparison nodes)"
            for t in teachers:
                if node.count_subscribers(topics.teacher_detections_topic(t)) < 2:
                    return f"{topics.teacher_detections_topic(t)} subscribers (comparison node)"
                if collector.subscriptions[t].get_publisher_count() < 1:
                    return f"{topics.comparison_topic(t)} publisher"
            return None

        try:
            ready_s = player.wait_until_ready(extra=graph_ready, abort=abort)
            say(f"bag eval: graph up after {time.monotonic() - t_start:.1f} s; replaying {bag} "
                f"({'flow-controlled' if config.rate == 0 else f'{config.rate:g} x real time'})")
            replay = player.play(abort=abort)
        except ReplayError as err:
            raise BagEvalError(str(err)) from None

        # The comparison pairs and the nodes' final counters arrive shortly after the last answer.
        expected_pairs = {t: _expected_pairs(replay.answers["detector"], replay.answers[t]) for t in teachers}

        def settled() -> bool:
            comparison, diagnostics, _ = collector.snapshot()
            if any(len(comparison[t]) < n for t, n in expected_pairs.items()):
                return False
            for g in groups:
                published = diagnostics.get(node_names[_model_node_key(g.name)], {}).get("published")
                if published != str(len(replay.answers[g.name])):
                    return False
            return all(diagnostics.get(node_names[f"comparison_{t}"], {}).get("pairs") == str(len(comparison[t]))
                       for t in teachers)

        end = time.monotonic() + config.drain_timeout_s
        while not settled() and time.monotonic() < end and abort() is None:
            time.sleep(0.05)
        comparison, diagnostics, model_samples = collector.snapshot()
    finally:
        exit_codes = runner.stop()
        if spinner is not None:
            spinner.stop()
        if player is not None:
            player.destroy()
        if node is not None:
            node.destroy_node()
        context.try_shutdown()
    return _LiveRun(replay=replay, comparison=comparison, diagnostics=diagnostics, model_samples=model_samples,
                    expected_pairs=expected_pairs, exit_codes=exit_codes, ready_s=ready_s,
                    wall_s=time.monotonic() - t_start, transport_note=transport_note)


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


def _expected_pairs(student, teacher) -> int:
    """How many student answers have a teacher answer within the comparison's pairing slop (one-to-one)."""
    slop = int(PAIR_SLOP_S * 1e9)
    return len(match_to_keyframes([a.stamp_ns for a in student], [a.stamp_ns for a in teacher], slop))


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
