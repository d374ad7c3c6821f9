"""A bag's ground truth: its keyframes (``/ground_truth/*`` with the ``/tf`` ego pose at each
stamp) and the x3kd entries of its ``metadata.yaml``, read without a ROS graph (for
:mod:`x3kd_ros.bag.evaluate`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import yaml

from x3kd_core.eval.keyframes import KeyFrame
from x3kd_core.structures import Boxes3D
from x3kd_ros import topics
from x3kd_ros.bag.eval_config import BagEvalError
from x3kd_ros.bag.io import bag_summary, read_bag, transform_to_matrix

__all__ = ["BagGroundTruth", "bag_custom_data", "has_ground_truth", "read_keyframes"]


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
