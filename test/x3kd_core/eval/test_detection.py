"""Tests of the nuScenes detection evaluation wrapper (x3kd_core.eval.detection).

The metric numbers are nuscenes-devkit's; these tests pin what it gives for known inputs on the
tiny synthetic dataset (ground truth fed back, and a shifted copy of it).
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from x3kd_core import geometry
from x3kd_core.data.nuscenes import LoaderConfig, NuScenesSource
from x3kd_core.eval.detection import (
    DEFAULT_ATTRIBUTE,
    DEFAULT_META,
    EvaluationError,
    boxes_to_submission,
    evaluate,
    ground_truth_submission,
    submission_meta,
    write_submission,
)
from x3kd_core.structures import DETECTION_CLASSES, Boxes3D

SPLIT = "synth_val"






@pytest.fixture(scope="module")
def nusc(tiny_dataset):
    from nuscenes.nuscenes import NuScenes

    dataroot, version = tiny_dataset
    return NuScenes(version=version, dataroot=str(dataroot), verbose=False)


@pytest.fixture(scope="module")
def gt_results(nusc):
    return ground_truth_submission(nusc, SPLIT)


@pytest.fixture(scope="module")
def gt_metrics(tiny_dataset, nusc, gt_results, tmp_path_factory):
    dataroot, version = tiny_dataset
    out = tmp_path_factory.mktemp("gt_eval")
    path = write_submission(gt_results, out / "results.json")
    metrics = evaluate(dataroot, version, SPLIT, path, out, nusc=nusc)
    print("GT fed back:", json.dumps(metrics.summary()), metrics.num_gt_per_class)
    return metrics


def _shifted(results: dict, dx_m: float) -> dict:
    out = copy.deepcopy(results)
    for entries in out.values():
        for e in entries:
            e["translation"][0] += dx_m
    return out


# ------------------------------------------------------------------------------- submission format
def test_boxes_to_submission_round_trip_to_global():
    ego_to_global = geometry.make_transform(geometry.yaw_to_quaternion(0.7), [100.0, -50.0, 1.0])
    boxes = Boxes3D(
        center=[[10.0, 2.0, 0.5], [-3.0, 4.0, 1.0]],
        size_lwh=[[4.5, 1.9, 1.6], [0.8, 0.6, 1.7]],
        yaw=[0.3, -2.0],
        velocity=[[2.0, 0.0], [np.nan, np.nan]],
        label=[DETECTION_CLASSES.index("car"), DETECTION_CLASSES.index("pedestrian")],
        score=[0.4, 0.9],
        attribute=["vehicle.moving", ""],
    )
    entries = boxes_to_submission("tok", boxes, ego_to_global)
    # Highest score first.
    assert [e["detection_name"] for e in entries] == ["pedestrian", "car"]
    car = entries[1]
    np.testing.assert_allclose(car["translation"], geometry.transform_points(ego_to_global, boxes.center[:1])[0])
    assert car["size"] == pytest.approx([1.9, 4.5, 1.6])  # nuScenes (w, l, h)
    assert geometry.quaternion_to_yaw(car["rotation"]) == pytest.approx(0.3 + 0.7)
    np.testing.assert_allclose(car["velocity"], [2.0 * math.cos(0.7), 2.0 * math.sin(0.7)])
    assert car["attribute_name"] == "vehicle.moving" and car["detection_score"] == 0.4
    ped = entries[0]
    assert ped["velocity"] == [0.0, 0.0]  # unknown velocity is written as 0
    assert ped["attribute_name"] == DEFAULT_ATTRIBUTE["pedestrian"] == "pedestrian.moving"
    assert len(boxes_to_submission("tok", boxes, ego_to_global, max_boxes=1)) == 1


def test_loader_boxes_give_the_ground_truth_submission(tiny_dataset, nusc, gt_results):
    # Ego-frame boxes from the loader, written with boxes_to_submission, reproduce the annotations.
    dataroot, version = tiny_dataset
    source = NuScenesSource(dataroot, LoaderConfig(version=version, split=SPLIT, image_hw=(64, 176),
                                                   load_masks=False, load_depth=False), nusc=nusc)
    token = source.sample_tokens[0]
    s = source.load_sample(token)
    mine = {tuple(np.round(e["translation"], 4)): e for e in boxes_to_submission(token, s.boxes, s.ego_to_global)}
    ref = {tuple(np.round(e["translation"], 4)): e for e in gt_results[token]}
    assert mine.keys() == ref.keys() and len(ref) > 3
    for key, e in ref.items():
        np.testing.assert_allclose(mine[key]["size"], e["size"], atol=1e-9)
        np.testing.assert_allclose(mine[key]["velocity"], e["velocity"], atol=1e-6)
        yaw_mine, yaw_ref = (geometry.quaternion_to_yaw(x["rotation"]) for x in (mine[key], e))
        yaw_diff = geometry.wrap_angle(yaw_mine - yaw_ref)
        assert abs(yaw_diff) < 1e-6
        assert mine[key]["detection_name"] == e["detection_name"]
        assert mine[key]["attribute_name"] == e["attribute_name"]


def test_write_submission_rejects_nan(tmp_path):
    bad = {"t": [{"translation": [float("nan"), 0.0, 0.0]}]}
    with pytest.raises(EvaluationError, match="NaN"):
        write_submission(bad, tmp_path / "r.json")


def test_submission_meta_declares_the_sensors_of_each_kind():
    off = {"use_map": False, "use_external": False}
    assert DEFAULT_META == submission_meta("student") == {
        "use_camera": True, "use_lidar": False, "use_radar": False, **off}
    assert submission_meta("camera_radar") == {"use_camera": True, "use_lidar": False, "use_radar": True, **off}
    assert submission_meta("lidar") == {"use_camera": False, "use_lidar": True, "use_radar": False, **off}
    assert submission_meta("radar") == {"use_camera": False, "use_lidar": False, "use_radar": True, **off}
    with pytest.raises(EvaluationError, match="no submission meta for model kind 'instance_seg'"):
        submission_meta("instance_seg")


# ------------------------------------------------------------------------------------- the metrics
def test_ground_truth_gives_perfect_scores_for_present_classes(gt_metrics):
    present = gt_metrics.classes_present
    assert len(present) >= 3
    for c in DETECTION_CLASSES:
        for th, ap in gt_metrics.ap_per_class_threshold[c].items():
            # The devkit averages over all 10 classes: an absent class has AP 0 and TP errors 1.
            assert ap == pytest.approx(1.0 if c in present else 0.0), (c, th)
    for c in present:
        err = gt_metrics.tp_errors_per_class[c]
        assert err["trans_err"] == pytest.approx(0.0, abs=1e-9)
        assert err["scale_err"] == pytest.approx(0.0, abs=1e-9)
        if c != "traffic_cone":  # cones have no orientation error (NaN)
            assert err["orient_err"] == pytest.approx(0.0, abs=1e-6)
        if c in ("traffic_cone", "barrier"):
            assert math.isnan(err["vel_err"]) and math.isnan(err["attr_err"])
        else:
            # Submitted velocity = devkit's own box_velocity; attribute = the annotation's one.
            assert err["vel_err"] == pytest.approx(0.0, abs=1e-9)
            assert err["attr_err"] == pytest.approx(0.0, abs=1e-9)
    absent = [c for c in DETECTION_CLASSES if c not in present]
    for c in absent:
        assert gt_metrics.tp_errors_per_class[c]["trans_err"] == 1.0
    n = len(DETECTION_CLASSES)
    assert gt_metrics.mAP == pytest.approx(len(present) / n)
    assert gt_metrics.mATE == pytest.approx(len(absent) / n)
    # NDS = (5 mAP + sum of max(0, 1 - mean TP error)) / 10, the mean TP errors over defined classes.
    tp = [gt_metrics.mATE, gt_metrics.mASE, gt_metrics.mAOE, gt_metrics.mAVE, gt_metrics.mAAE]
    assert gt_metrics.NDS == pytest.approx((5 * gt_metrics.mAP + sum(max(0.0, 1 - e) for e in tp)) / 10)


def test_shift_by_0p8m_fails_the_0p5m_threshold_only(tiny_dataset, nusc, gt_results, gt_metrics, tmp_path):
    dataroot, version = tiny_dataset
    path = write_submission(_shifted(gt_results, 0.8), tmp_path / "shifted.json")
    m = evaluate(dataroot, version, SPLIT, path, tmp_path, nusc=nusc)
    print("shifted 0.8 m:", json.dumps(m.summary()), json.dumps({str(k): v for k, v in m.ap_per_threshold.items()}))
    for c in gt_metrics.classes_present:
        aps = m.ap_per_class_threshold[c]
        assert aps[0.5] == 0.0, c
        assert aps[1.0] >= 0.95 and aps[2.0] >= 0.95 and aps[4.0] >= 0.95, (c, aps)
        assert m.tp_errors_per_class[c]["trans_err"] == pytest.approx(0.8, abs=0.02), c
    assert m.ap_per_threshold[0.5] == 0.0
    assert m.mAP < gt_metrics.mAP and m.NDS < gt_metrics.NDS


def test_empty_predictions_score_zero(tiny_dataset, nusc, gt_results, tmp_path):
    dataroot, version = tiny_dataset
    path = write_submission({t: [] for t in gt_results}, tmp_path / "empty.json")
    m = evaluate(dataroot, version, SPLIT, path, tmp_path, nusc=nusc)
    assert m.mAP == 0.0 and m.NDS == 0.0 and m.mATE == 1.0 and m.num_predictions == 0


def test_outputs_written(gt_metrics, tiny_dataset, nusc, gt_results, tmp_path):
    dataroot, version = tiny_dataset
    path = write_submission(gt_results, tmp_path / "r.json", meta={"use_camera": True})
    m = evaluate(dataroot, version, SPLIT, path, tmp_path / "out", nusc=nusc)
    summary = json.loads((tmp_path / "out" / "metrics_summary.json").read_text())
    assert summary["mean_ap"] == pytest.approx(m.mAP) and summary["nd_score"] == pytest.approx(m.NDS)
    assert summary["meta"] == {"use_camera": True}
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["NDS"] == pytest.approx(m.NDS)


def test_predefined_split(tiny_dataset, nusc, tmp_path):
    # The same data under a "v1.0-mini" folder with scenes renamed to nuScenes' mini_val scenes goes
    # through the devkit's predefined-split path (load_gt / load_prediction) instead of splits.json.
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.splits import mini_train, mini_val

    dataroot, version = tiny_dataset
    root = tmp_path / "mini"
    root.mkdir()
    for entry in Path(dataroot).iterdir():
        if entry.name != version and not entry.name.startswith("."):
            os.symlink(entry, root / entry.name)
    tables = root / "v1.0-mini"
    tables.mkdir()
    for f in (Path(dataroot) / version).glob("*.json"):
        if f.name != "splits.json":
            (tables / f.name).write_text(f.read_text())
    splits = json.loads((Path(dataroot) / version / "splits.json").read_text())
    assert len(splits["synth_val"]) <= len(mini_val) and len(splits["synth_train"]) <= len(mini_train)
    rename = dict(zip(splits["synth_val"], mini_val))
    rename.update(zip(splits["synth_train"], mini_train))
    scenes = json.loads((tables / "scene.json").read_text())
    for s in scenes:
        s["name"] = rename[s["name"]]
    (tables / "scene.json").write_text(json.dumps(scenes))

    mini = NuScenes(version="v1.0-mini", dataroot=str(root), verbose=False)
    results = ground_truth_submission(mini, "mini_val")
    assert results.keys() == ground_truth_submission(nusc, SPLIT).keys()
    path = write_submission(results, tmp_path / "r.json")
    m = evaluate(root, "v1.0-mini", "mini_val", path, tmp_path / "out", nusc=mini)
    ref_path = write_submission(ground_truth_submission(nusc, SPLIT), tmp_path / "ref.json")
    ref = evaluate(dataroot, version, SPLIT, ref_path, tmp_path / "ref", nusc=nusc)
    assert m.mAP == pytest.approx(ref.mAP) and m.NDS == pytest.approx(ref.NDS)
    with pytest.raises(EvaluationError, match="'mini_val' belongs to nuScenes versions ending in '-mini'"):
        evaluate(dataroot, version, "mini_val", path, tmp_path / "out", nusc=nusc)


# ------------------------------------------------------------------------------------ clear errors
def _write_raw(path: Path, payload) -> Path:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing_file", "result file not found"),
        ("not_json", "not valid JSON"),
        ("no_results", "has no 'results' field"),
        ("no_meta", "has no 'meta' field"),
        ("token_not_in_split", r"1 sample token\(s\) are not in the evaluated split \(0 of them from another split\)"),
        ("unknown_token", "not in this dataset"),
        ("missing_sample", "have no entry.*one per sample"),
        ("bad_name", "'cat' is not a nuScenes detection class"),
        ("nan_translation", r"\.translation: contains NaN"),
        ("nan_score", r"\.detection_score: contains NaN"),
        ("bad_attribute", "unknown attribute 'vehicle.flying'"),
        ("too_many", "at most 500"),
    ],
)
def test_invalid_submissions_raise_clear_errors(case, pattern, tiny_dataset, nusc, gt_results, tmp_path):
    dataroot, version = tiny_dataset
    results = copy.deepcopy(gt_results)
    token = next(t for t, v in results.items() if v)
    path = tmp_path / "r.json"
    payload = {"meta": {"use_camera": True}, "results": results}
    if case == "missing_file":
        path = tmp_path / "nothing.json"
    elif case == "not_json":
        _write_raw(path, "{'results': oops")
    elif case == "no_results":
        _write_raw(path, {"meta": {}})
    elif case == "no_meta":
        _write_raw(path, {"results": results})
    elif case in ("token_not_in_split", "unknown_token"):
        other = next(s["token"] for s in nusc.sample if s["token"] not in results)
        results[other if case == "token_not_in_split" else "f" * 32] = []
        _write_raw(path, payload)
    elif case == "missing_sample":
        del results[token]
        _write_raw(path, payload)
    else:
        box = results[token][0]
        if case == "bad_name":
            box["detection_name"] = "cat"
        elif case == "nan_translation":
            box["translation"][1] = float("nan")
        elif case == "nan_score":
            box["detection_score"] = float("nan")
        elif case == "bad_attribute":
            box["attribute_name"] = "vehicle.flying"
        elif case == "too_many":
            results[token] = [box] * 501
        path.write_text(json.dumps(payload))  # allow_nan: write the NaN the way a careless writer would
    with pytest.raises(EvaluationError, match=pattern):
        evaluate(dataroot, version, SPLIT, path, tmp_path / "out", nusc=nusc)


def test_unknown_split_and_dataroot(tiny_dataset, nusc, gt_results, tmp_path):
    dataroot, version = tiny_dataset
    path = write_submission(gt_results, tmp_path / "r.json")
    with pytest.raises(EvaluationError, match="unknown split 'synth_vall'"):
        evaluate(dataroot, version, "synth_vall", path, tmp_path, nusc=nusc)
    with pytest.raises(EvaluationError, match="no nuScenes tables"):
        evaluate(tmp_path / "none", version, SPLIT, path, tmp_path)
