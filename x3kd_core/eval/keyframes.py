"""Scoring ego-frame predictions against ego-frame ground truth without the dataset tables.

A :class:`KeyFrame` carries what a recording (a rosbag2 file, see ``x3kd_ros.bag.evaluate``) knows of
one nuScenes keyframe: its sample token, the ground-truth boxes in the ego frame and the ego pose.
:func:`score_keyframes` scores predictions on such keyframes with the devkit's own algorithms:

- ground truth and predictions become devkit ``DetectionBox`` es in the global frame through the
  keyframe's ego pose, exactly as :func:`~x3kd_core.eval.detection.boxes_to_submission` writes a
  submission;
- ``ego_translation`` is box minus ego position (the devkit's ``add_center_dist``), boxes beyond
  the class ranges are removed (as ``filter_eval_boxes``);
- ``accumulate`` per class and distance threshold, then the one per-class scoring loop of
  :func:`x3kd_core.eval.detection.devkit_metrics`, as ``DetectionEval.evaluate`` does.

So mAP, mATE, mASE and mAOE equal the devkit's on the tables when the ground truth is what the
loader gives (same class mapping and point filter). Differences, by construction: the keyframes
carry no ground-truth velocity or attribute, so mAVE and mAAE are 1 (the devkit's value where they
are undefined) and NDS is a lower bound; the bicycle-rack filter needs the tables and is not
applied.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from x3kd_core.eval.detection import EVAL_CONFIG, DetectionMetrics, boxes_to_submission, devkit_metrics
from x3kd_core.structures import Boxes3D

__all__ = ["KeyFrame", "keyframe_submission", "score_keyframes"]


@dataclass
class KeyFrame:
    """One keyframe with its ground truth.

    Fields:
        token: nuScenes sample token.
        stamp_ns: keyframe stamp (ns).
        boxes: ground truth in the ego frame of the keyframe; velocity nan.
        ego_to_global: (4, 4) ``global <- ego`` at the keyframe (identity when no pose is known).
    """

    token: str
    stamp_ns: int
    boxes: Boxes3D
    ego_to_global: np.ndarray


def keyframe_submission(keyframes: Sequence[KeyFrame], predictions: Mapping[str, Boxes3D],
                        max_boxes: int = 500) -> dict[str, list[dict]]:
    """nuScenes submission ``results`` for the keyframes (an empty list where there is no prediction)."""
    return {k.token: boxes_to_submission(k.token, predictions.get(k.token, Boxes3D.empty()), k.ego_to_global,
                                         max_boxes=max_boxes)
            for k in keyframes}


def _detection_boxes(entries: list[dict], ego_position: np.ndarray, ground_truth: bool):
    from nuscenes.eval.detection.data_classes import DetectionBox

    out = []
    for e in entries:
        translation = tuple(e["translation"])
        out.append(DetectionBox(
            sample_token=e["sample_token"],
            translation=translation,
            size=tuple(e["size"]),
            rotation=tuple(e["rotation"]),
            # Keyframes carry no ground-truth velocity or attribute: unknown, which the devkit skips.
            velocity=(math.nan, math.nan) if ground_truth else tuple(e["velocity"]),
            ego_translation=tuple(float(v) for v in np.asarray(translation) - ego_position),
            detection_name=e["detection_name"],
            detection_score=-1.0 if ground_truth else float(e["detection_score"]),
            attribute_name="" if ground_truth else e["attribute_name"],
        ))
    return out


def score_keyframes(keyframes: Sequence[KeyFrame], predictions: Mapping[str, Boxes3D],
                    config_name: str = EVAL_CONFIG) -> DetectionMetrics:
    """nuScenes detection metrics of ``predictions`` against the keyframes' ground truth, tables-free.

    Args:
        keyframes: ground truth (e.g. ``x3kd_ros.bag.evaluate.read_keyframes``).
        predictions: sample token -> boxes in that keyframe's ego frame (missing token = nothing
            detected; tokens not among the keyframes are ignored).
        config_name: devkit evaluation config.

    Returns:
        :class:`~x3kd_core.eval.detection.DetectionMetrics` (see the module docstring for what
        differs from a devkit evaluation on the tables: mAVE / mAAE).
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.algo import accumulate

    config = config_factory(config_name)
    gt, pred = EvalBoxes(), EvalBoxes()
    for k in keyframes:
        ego = np.asarray(k.ego_to_global, dtype=np.float64)[:3, 3]
        gt_entries = boxes_to_submission(k.token, k.boxes, k.ego_to_global, max_boxes=max(len(k.boxes), 1))
        pred_entries = boxes_to_submission(k.token, predictions.get(k.token, Boxes3D.empty()), k.ego_to_global,
                                           max_boxes=config.max_boxes_per_sample)
        for target, entries, is_gt in ((gt, gt_entries, True), (pred, pred_entries, False)):
            # Class-range filter of filter_eval_boxes (the point filter is already applied to the GT).
            kept = [b for b in _detection_boxes(entries, ego, is_gt)
                    if b.ego_dist < config.class_range[b.detection_name]]
            target.add_boxes(k.token, kept)

    start = time.perf_counter()
    metrics = devkit_metrics(config, lambda name, th: accumulate(gt, pred, name, config.dist_fcn_callable, th))
    metrics.add_runtime(time.perf_counter() - start)
    num_gt: dict[str, int] = {}
    for box in gt.all:
        num_gt[box.detection_name] = num_gt.get(box.detection_name, 0) + 1
    return DetectionMetrics.from_devkit(metrics, num_gt, len(pred.all))
