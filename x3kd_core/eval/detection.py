"""nuScenes detection metrics (mAP, NDS, TP errors) computed by nuscenes-devkit's own code.

The metric algorithms, thresholds and class ranges are the devkit's (``DetectionEval`` with the
``detection_cvpr_2019`` config); this module only

- turns x3kd boxes (ego frame) into nuScenes submission entries (global frame),
- checks a submission file *before* the devkit sees it, so that a bad file gives an
  :class:`EvaluationError` that names the problem instead of a bare ``AssertionError``/``KeyError``,
- returns the devkit's numbers as a typed :class:`DetectionMetrics`,
- and holds the one copy of the devkit's per-class scoring loop (:func:`devkit_metrics`, with its
  rule for TP errors that are undefined), used where the devkit's ``DetectionEval`` cannot run:
  no prediction at all, and tables-free scoring (:mod:`x3kd_core.eval.keyframes`),
- and the one place a submission's ``meta`` is built (:func:`submission_meta`).

Requirements of the devkit that the checks enforce:

- ``results`` must hold an entry for EVERY sample of the split (an empty list where nothing was
  detected) and no sample outside it.
- at most ``max_boxes_per_sample`` (500) boxes per sample; :func:`boxes_to_submission` keeps the
  highest-scoring ones.
- no NaN / infinity anywhere (JSON has no NaN; the devkit rejects NaN positions, sizes,
  rotations and scores). Unknown velocities are written as 0 m/s: where the ground-truth
  velocity is unknown the devkit ignores the velocity error anyway.

Semantics worth knowing when reading the numbers (all from the devkit):

- mAP averages over all 10 classes, including classes with no ground truth in the split,
  whose AP is 0 and whose TP errors are 1 (so a perfect detector on a split without buses does
  not reach mAP 1). :attr:`DetectionMetrics.num_gt_per_class` says which classes were present.
- ground-truth boxes with no LiDAR or radar point, beyond the class range (30-50 m) or (bicycle,
  motorcycle) inside a bicycle rack are removed from both ground truth and predictions.
- AVE / AAE of a class are 1 when none of its matched ground-truth boxes has a known velocity /
  an attribute; traffic_cone has no AOE/AVE/AAE and barrier no AVE/AAE (NaN, left out of the mean).

One file on purpose (issue 14): it is the one interface to the devkit's detection metrics
(submission in, metrics out), the single home of scoring that issue 14 asked for.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from x3kd_core import geometry
from x3kd_core.structures import DETECTION_CLASSES, Boxes3D

__all__ = [
    "EvaluationError",
    "DEFAULT_ATTRIBUTE",
    "DEFAULT_META",
    "submission_meta",
    "boxes_to_submission",
    "write_submission",
    "ground_truth_submission",
    "validate_submission",
    "DetectionMetrics",
    "devkit_metrics",
    "evaluate",
]

#: The attribute written for a predicted box that has none, per class: the most frequent one in
#: nuScenes train (what the nuScenes baselines submit). Classes without attributes get "".
DEFAULT_ATTRIBUTE: dict[str, str] = {
    "car": "vehicle.parked",
    "truck": "vehicle.parked",
    "construction_vehicle": "vehicle.parked",
    "bus": "vehicle.moving",
    "trailer": "vehicle.parked",
    "barrier": "",
    "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider",
    "pedestrian": "pedestrian.moving",
    "traffic_cone": "",
}


#: The devkit evaluation config every x3kd score uses.
EVAL_CONFIG = "detection_cvpr_2019"
# nuScenes' short names of the TP errors, in the order the paper tables use.
_TP_NAMES = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"}


class EvaluationError(ValueError):
    """A submission or evaluation request is invalid; the message says what and where."""


#: Sensors each model kind reads; what its submission ``meta`` declares.
_SENSORS_OF_KIND: dict[str, tuple[str, ...]] = {
    "student": ("camera",),
    "camera_radar": ("camera", "radar"),
    "lidar": ("lidar",),
    "radar": ("radar",),
}


def submission_meta(kind: str = "student") -> dict[str, bool]:
    """The submission ``meta`` of a detector of this kind (student, camera_radar, lidar, radar):
    the sensors it reads; no map, no external data."""
    if kind not in _SENSORS_OF_KIND:
        raise EvaluationError(f"no submission meta for model kind '{kind}' (one of {', '.join(_SENSORS_OF_KIND)})")
    sensors = _SENSORS_OF_KIND[kind]
    return {"use_camera": "camera" in sensors, "use_lidar": "lidar" in sensors, "use_radar": "radar" in sensors,
            "use_map": False, "use_external": False}


#: Submission ``meta`` for a camera-only detector (what :func:`write_submission` writes by default).
DEFAULT_META: dict[str, bool] = submission_meta("student")


# --------------------------------------------------------------------------------------- submission
def _attribute_for(class_name: str, attribute: str) -> str:
    """The box's attribute when it is one of its class' attributes, else the class default."""
    from nuscenes.eval.detection.utils import detection_name_to_rel_attributes

    if attribute and attribute in detection_name_to_rel_attributes(class_name):
        return attribute
    return DEFAULT_ATTRIBUTE[class_name]


def boxes_to_submission(
    sample_token: str, boxes: Boxes3D, ego_to_global: np.ndarray, max_boxes: int = 500
) -> list[dict]:
    """Ego-frame boxes of one sample -> nuScenes submission entries in the global frame.

    Args:
        sample_token: the sample the boxes belong to.
        boxes: predictions in the ego frame of that sample's keyframe (``score`` is the confidence).
        ego_to_global: (4, 4) ego pose of the keyframe (``Sample.ego_to_global``).
        max_boxes: keep at most this many, highest score first (the devkit allows 500).

    Returns:
        One dict per box: translation (3, m), size (w, l, h) (m), rotation (w, x, y, z),
        velocity (vx, vy) m/s in the global frame (unknown -> 0), detection_name,
        detection_score, attribute_name (the class default where the box has none).
    """
    ego_to_global = np.asarray(ego_to_global, dtype=np.float64)
    order = np.argsort(-boxes.score, kind="stable")[:max_boxes]
    rot = ego_to_global[:3, :3]
    entries = []
    for i in order:
        nb = geometry.box_to_nuscenes(boxes.center[i], boxes.size_lwh[i], boxes.yaw[i])
        rotation = rot @ geometry.quaternion_to_matrix(nb.rotation_wxyz)
        translation = ego_to_global[:3, :3] @ np.asarray(nb.center) + ego_to_global[:3, 3]
        velocity = np.nan_to_num(np.array([boxes.velocity[i, 0], boxes.velocity[i, 1], 0.0]), nan=0.0)
        velocity = rot @ velocity
        name = DETECTION_CLASSES[int(boxes.label[i])]
        entries.append(
            {
                "sample_token": sample_token,
                "translation": [float(v) for v in translation],
                "size": [float(v) for v in nb.wlh],
                "rotation": [float(v) for v in geometry.matrix_to_quaternion(rotation)],
                "velocity": [float(velocity[0]), float(velocity[1])],
                "detection_name": name,
                "detection_score": float(boxes.score[i]),
                "attribute_name": _attribute_for(name, boxes.attribute[i]),
            }
        )
    return entries


def write_submission(results: dict[str, list[dict]], path: str | os.PathLike, meta: Optional[dict] = None) -> Path:
    """Write ``{"meta": meta, "results": results}`` as strict JSON (no NaN) and return the path.

    Raises:
        EvaluationError: a value is NaN or infinite (JSON cannot carry it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": dict(DEFAULT_META if meta is None else meta), "results": results}
    try:
        text = json.dumps(payload, allow_nan=False)
    except ValueError as err:
        raise EvaluationError(f"submission for {path} contains NaN or infinity: {err}") from None
    path.write_text(text)
    return path


def ground_truth_submission(nusc, split: str, score: float = 1.0) -> dict[str, list[dict]]:
    """The ground truth of a split written as predictions (for testing the evaluation end to end).

    Boxes the devkit drops from its ground truth because they hold no LiDAR/radar point are left
    out here too: predictions carry no point count, so they would otherwise count as false
    positives.
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    from x3kd_core.data.nuscenes import split_sample_tokens

    _, tokens = split_sample_tokens(nusc, split)
    attribute_names = {a["token"]: a["name"] for a in nusc.attribute}
    results: dict[str, list[dict]] = {}
    for token in tokens:
        entries = []
        for ann_token in nusc.get("sample", token)["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            name = category_to_detection_name(ann["category_name"])
            if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
                continue
            velocity = np.nan_to_num(nusc.box_velocity(ann_token)[:2], nan=0.0)
            attribute = attribute_names[ann["attribute_tokens"][0]] if ann["attribute_tokens"] else ""
            entries.append(
                {
                    "sample_token": token,
                    "translation": [float(v) for v in ann["translation"]],
                    "size": [float(v) for v in ann["size"]],
                    "rotation": [float(v) for v in ann["rotation"]],
                    "velocity": [float(v) for v in velocity],
                    "detection_name": name,
                    "detection_score": float(score),
                    "attribute_name": _attribute_for(name, attribute),
                }
            )
        results[token] = entries
    return results


# ---------------------------------------------------------------------------------------- checking
def _check_numbers(value: Any, count: int, where: str, positive: bool = False) -> None:
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise EvaluationError(f"{where}: expected a list of {count} numbers, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise EvaluationError(f"{where}: expected numbers, got {value!r}")
        if not math.isfinite(v):
            raise EvaluationError(f"{where}: contains NaN or infinity: {value!r}")
        if positive and not v > 0:
            raise EvaluationError(f"{where}: must be > 0, got {value!r}")


def validate_submission(result_path: str | os.PathLike, split_tokens: list[str], all_tokens: set[str],
                        max_boxes_per_sample: int = 500) -> dict:
    """Check a submission file against the devkit's requirements; return the parsed JSON.

    Args:
        result_path: the submission JSON.
        split_tokens: sample tokens of the evaluated split (every one needs an entry).
        all_tokens: every sample token of the dataset version (to tell "other split" from "unknown").
        max_boxes_per_sample: the devkit config's limit.

    Raises:
        EvaluationError: naming the first problem found.
    """
    from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES, DETECTION_NAMES

    path = Path(result_path)
    if not path.is_file():
        raise EvaluationError(f"result file not found: {path}")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EvaluationError(f"result file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise EvaluationError(f"result file {path}: top level must be an object with 'meta' and 'results'")
    for key in ("meta", "results"):
        if key not in data:
            raise EvaluationError(f"result file {path} has no '{key}' field")
        if not isinstance(data[key], dict):
            raise EvaluationError(f"result file {path}: '{key}' must be an object, got {type(data[key]).__name__}")

    results: dict = data["results"]
    split_set = set(split_tokens)
    extra = [t for t in results if t not in split_set]
    if extra:
        unknown = [t for t in extra if t not in all_tokens]
        what = "not in this dataset" if unknown else "from another split"
        raise EvaluationError(
            f"result file {path}: {len(extra)} sample token(s) are not in the evaluated split "
            f"({len(unknown)} of them {what}), e.g. '{(unknown or extra)[0]}'"
        )
    missing = [t for t in split_tokens if t not in results]
    if missing:
        raise EvaluationError(
            f"result file {path}: {len(missing)} of {len(split_tokens)} samples of the split have no entry, "
            f"e.g. '{missing[0]}'; nuScenes evaluation needs one per sample (an empty list where nothing "
            "was detected)"
        )
    for token, entries in results.items():
        where = f"results['{token}']"
        if not isinstance(entries, list):
            raise EvaluationError(f"{where}: expected a list of boxes, got {type(entries).__name__}")
        if len(entries) > max_boxes_per_sample:
            raise EvaluationError(f"{where}: {len(entries)} boxes, at most {max_boxes_per_sample} are allowed")
        for i, box in enumerate(entries):
            at = f"{where}[{i}]"
            if not isinstance(box, dict):
                raise EvaluationError(f"{at}: expected an object, got {type(box).__name__}")
            for key in ("sample_token", "translation", "size", "rotation", "velocity", "detection_name",
                        "detection_score", "attribute_name"):
                if key not in box:
                    raise EvaluationError(f"{at}: missing field '{key}'")
            if box["sample_token"] != token:
                raise EvaluationError(f"{at}: sample_token '{box['sample_token']}' differs from its key '{token}'")
            _check_numbers(box["translation"], 3, f"{at}.translation")
            _check_numbers(box["size"], 3, f"{at}.size", positive=True)
            _check_numbers(box["rotation"], 4, f"{at}.rotation")
            if not np.linalg.norm(box["rotation"]) > 1e-6:
                raise EvaluationError(f"{at}.rotation: not a rotation (zero quaternion)")
            _check_numbers(box["velocity"], 2, f"{at}.velocity")
            _check_numbers([box["detection_score"]], 1, f"{at}.detection_score")
            if box["detection_name"] not in DETECTION_NAMES:
                raise EvaluationError(
                    f"{at}.detection_name: '{box['detection_name']}' is not a nuScenes detection class "
                    f"({', '.join(DETECTION_NAMES)})"
                )
            if box["attribute_name"] not in ATTRIBUTE_NAMES and box["attribute_name"] != "":
                raise EvaluationError(f"{at}.attribute_name: unknown attribute '{box['attribute_name']}'")
    return data


# ----------------------------------------------------------------------------------------- metrics
@dataclass
class DetectionMetrics:
    """nuScenes detection metrics of one evaluation (values as the devkit computes them).

    Fields:
        mAP: mean over classes and distance thresholds of AP (all 10 classes, absent ones count 0).
        NDS: nuScenes detection score = (5 mAP + sum over TP errors of max(0, 1 - error)) / 10.
        mATE (m), mASE (1 - IoU), mAOE (rad), mAVE (m/s), mAAE (1 - acc): class means of TP errors.
        ap_per_class: class -> AP averaged over the distance thresholds.
        ap_per_class_threshold: class -> {threshold (m) -> AP}.
        ap_per_threshold: threshold (m) -> AP averaged over classes.
        tp_errors_per_class: class -> {"trans_err", "scale_err", "orient_err", "vel_err", "attr_err"}
            (NaN where the devkit does not define it, e.g. orientation of traffic cones).
        num_gt_per_class: ground-truth boxes per class after the devkit's filtering.
        num_predictions: predicted boxes after the devkit's filtering.
        eval_time_s: time the devkit spent in its metric computation.
    """

    mAP: float
    NDS: float
    mATE: float
    mASE: float
    mAOE: float
    mAVE: float
    mAAE: float
    ap_per_class: dict[str, float] = field(default_factory=dict)
    ap_per_class_threshold: dict[str, dict[float, float]] = field(default_factory=dict)
    ap_per_threshold: dict[float, float] = field(default_factory=dict)
    tp_errors_per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    num_gt_per_class: dict[str, int] = field(default_factory=dict)
    num_predictions: int = 0
    eval_time_s: float = 0.0

    @property
    def classes_present(self) -> list[str]:
        """Classes with at least one ground-truth box (in :data:`DETECTION_CLASSES` order)."""
        return [c for c in DETECTION_CLASSES if self.num_gt_per_class.get(c, 0) > 0]

    def summary(self) -> dict[str, float]:
        """The headline numbers as a flat dict (for logs)."""
        return {k: getattr(self, k) for k in ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")}

    def to_dict(self) -> dict:
        """Strict-JSON-friendly dict: threshold keys become strings, NaN (undefined) becomes None."""

        def clean(v):
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return None if isinstance(v, float) and math.isnan(v) else v

        return clean({
            **self.summary(),
            "ap_per_class": dict(self.ap_per_class),
            "ap_per_class_threshold": {
                c: {str(t): v for t, v in d.items()} for c, d in self.ap_per_class_threshold.items()
            },
            "ap_per_threshold": {str(t): v for t, v in self.ap_per_threshold.items()},
            "tp_errors_per_class": self.tp_errors_per_class,
            "num_gt_per_class": self.num_gt_per_class,
            "num_predictions": self.num_predictions,
            "eval_time_s": self.eval_time_s,
        })

    @classmethod
    def from_devkit(cls, metrics, num_gt_per_class: dict[str, int], num_predictions: int) -> "DetectionMetrics":
        """Wrap a ``nuscenes.eval.detection.data_classes.DetectionMetrics``."""
        cfg = metrics.cfg
        thresholds = [float(t) for t in cfg.dist_ths]
        per_class_thr = {c: {t: float(metrics.get_label_ap(c, t)) for t in thresholds} for c in DETECTION_CLASSES}
        tp_errors = metrics.tp_errors
        return cls(
            mAP=float(metrics.mean_ap),
            NDS=float(metrics.nd_score),
            **{short: float(tp_errors[name]) for name, short in _TP_NAMES.items()},
            ap_per_class={c: float(np.mean(list(per_class_thr[c].values()))) for c in DETECTION_CLASSES},
            ap_per_class_threshold=per_class_thr,
            ap_per_threshold={t: float(np.mean([per_class_thr[c][t] for c in DETECTION_CLASSES])) for t in thresholds},
            tp_errors_per_class={
                c: {n: float(metrics.get_label_tp(c, n)) for n in _TP_NAMES} for c in DETECTION_CLASSES
            },
            num_gt_per_class={c: int(num_gt_per_class.get(c, 0)) for c in DETECTION_CLASSES},
            num_predictions=int(num_predictions),
            eval_time_s=float(metrics.eval_time or 0.0),
        )


def tp_error_undefined(class_name: str, metric: str) -> bool:
    """Whether the devkit leaves this TP error undefined (NaN) for this class: traffic cones have no
    orientation, velocity or attribute; barriers no velocity or attribute."""
    return (class_name == "traffic_cone" and metric in ("attr_err", "vel_err", "orient_err")) or (
        class_name == "barrier" and metric in ("attr_err", "vel_err"))


def devkit_metrics(config, metric_data: Callable[[str, float], Any]):
    """The devkit's per-class scoring, as ``DetectionEval.evaluate`` runs it: AP per class and
    distance threshold, TP errors per class at ``config.dist_th_tp`` (NaN where undefined).

    Args:
        config: a devkit ``DetectionConfig``.
        metric_data: (class name, distance threshold in m) -> the devkit's ``DetectionMetricData``
            (``accumulate``'s result, or ``DetectionMetricData.no_predictions()``).

    Returns:
        A devkit ``DetectionMetrics`` without runtime (the caller adds it).
    """
    from nuscenes.eval.detection.algo import calc_ap, calc_tp
    from nuscenes.eval.detection.constants import TP_METRICS
    from nuscenes.eval.detection.data_classes import DetectionMetrics as DevkitMetrics

    metrics = DevkitMetrics(config)
    for name in config.class_names:
        data = {th: metric_data(name, th) for th in config.dist_ths}
        for th in config.dist_ths:
            metrics.add_label_ap(name, th, calc_ap(data[th], config.min_recall, config.min_precision))
        for metric in TP_METRICS:
            value = (np.nan if tp_error_undefined(name, metric)
                     else calc_tp(data[config.dist_th_tp], config.min_recall, metric))
            metrics.add_label_tp(name, metric, value)
    return metrics


def _no_prediction_metrics(config):
    """The devkit's result when there is no prediction at all (its loader cannot handle that case)."""
    from nuscenes.eval.detection.data_classes import DetectionMetricData

    metrics = devkit_metrics(config, lambda name, threshold: DetectionMetricData.no_predictions())
    metrics.add_runtime(0.0)
    return metrics


def evaluate(
    dataroot: str | os.PathLike,
    version: str,
    split: str,
    result_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    nusc=None,
    config_name: str = EVAL_CONFIG,
) -> DetectionMetrics:
    """Evaluate a submission file on a split with nuscenes-devkit's ``DetectionEval``.

    Args:
        dataroot, version: the dataset (real nuScenes or a synthetic one in its format).
        split: predefined nuScenes split ("mini_val", "val", ...) or a custom one from
            ``<dataroot>/<version>/splits.json``.
        result_path: submission JSON (see :func:`write_submission`); it must hold an entry for
            every sample of the split.
        output_dir: where ``metrics_summary.json`` (devkit format) and ``metrics.json``
            (:meth:`DetectionMetrics.to_dict`) are written.
        nusc: an already loaded ``NuScenes`` for this dataroot/version (saves reloading the tables).
        config_name: devkit evaluation config.

    Raises:
        EvaluationError: a missing/invalid dataset, split or submission (checked before the devkit runs).
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    from x3kd_core.data.nuscenes import DatasetError, split_sample_tokens

    dataroot = Path(dataroot)
    if not (dataroot / version / "sample.json").is_file():
        raise EvaluationError(f"no nuScenes tables for version '{version}' under {dataroot}")
    if nusc is None:
        from nuscenes.nuscenes import NuScenes

        nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    elif Path(nusc.dataroot).resolve() != dataroot.resolve() or nusc.version != version:
        raise EvaluationError(f"the NuScenes object given is {nusc.dataroot}/{nusc.version}, not {dataroot}/{version}")
    try:
        _, split_tokens = split_sample_tokens(nusc, split)
    except DatasetError as err:
        raise EvaluationError(str(err)) from None

    config = config_factory(config_name)
    all_tokens = {s["token"] for s in nusc.sample}
    data = validate_submission(result_path, split_tokens, all_tokens, config.max_boxes_per_sample)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    num_boxes = sum(len(v) for v in data["results"].values())
    has_gt = any(
        _detection_name(nusc, ann) is not None for t in split_tokens for ann in nusc.get("sample", t)["anns"]
    )
    if not has_gt:
        raise EvaluationError(f"split '{split}' has no ground-truth box of a detection class; nothing to evaluate")
    if num_boxes == 0:
        # The devkit's box filter cannot infer the box type from an empty result set and raises.
        devkit_metrics = _no_prediction_metrics(config)
        num_gt: dict[str, int] = {}
        num_pred = 0
    else:
        # The devkit's loaders draw tqdm progress bars even when not verbose; keep logs clean.
        with contextlib.redirect_stderr(io.StringIO()):
            evaluator = DetectionEval(
                nusc, config=config, result_path=str(result_path), eval_set=split, output_dir=str(output_dir),
                verbose=False,
            )
            devkit_metrics, _ = evaluator.evaluate()
        num_gt = {}
        for box in evaluator.gt_boxes.all:
            num_gt[box.detection_name] = num_gt.get(box.detection_name, 0) + 1
        num_pred = len(evaluator.pred_boxes.all)

    summary = devkit_metrics.serialize()
    summary["meta"] = data["meta"]
    with open(output_dir / "metrics_summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    result = DetectionMetrics.from_devkit(devkit_metrics, num_gt, num_pred)
    with open(output_dir / "metrics.json", "w") as fh:
        json.dump(result.to_dict(), fh, indent=2, allow_nan=False)
    return result


def _detection_name(nusc, ann_token: str) -> Optional[str]:
    from nuscenes.eval.detection.utils import category_to_detection_name

    return category_to_detection_name(nusc.get("sample_annotation", ann_token)["category_name"])
