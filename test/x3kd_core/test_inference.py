"""Predictor: raw images at any resolution + calibration -> the same boxes as the training task."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from x3kd_core.data.nuscenes import NuScenesSource, collate_samples
from x3kd_core.experiment import load_experiment, loader_config, train_experiment
from x3kd_core.inference import Predictor
from x3kd_core.paths import REPO_ROOT
from x3kd_core.structures import Boxes3D
from x3kd_core.checkpoint import CheckpointError

TRAIN_CONFIGS = REPO_ROOT / "config" / "train"


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A student_tiny checkpoint after 3 steps, its experiment and the val source."""
    dataroot, _ = tiny_dataset
    # A low decoding threshold: plenty of boxes, so the comparison below compares many numbers.
    exp = load_experiment(TRAIN_CONFIGS / "student_tiny.yaml",
                          [f"data.dataroot={dataroot}", "train.max_steps=3", "model.head.score_threshold=0.02"])
    result = train_experiment(exp, tmp_path_factory.mktemp("student_run"), device="cpu")
    source = NuScenesSource(dataroot, loader_config(exp, exp.data.val_split, training=False))
    return result.checkpoint, exp, source


def _raw_frame(source: NuScenesSource, token: str):
    """The sample's camera images as stored on disk (original resolution, RGB) and their K."""
    nusc = source.nusc
    sample = nusc.get("sample", token)
    images, intrinsics = [], []
    for channel in source.config.cameras:
        sd = nusc.get("sample_data", sample["data"][channel])
        bgr = cv2.imread(str(Path(nusc.dataroot) / sd["filename"]), cv2.IMREAD_COLOR)
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        intrinsics.append(np.asarray(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"]))
    return images, np.stack(intrinsics)


def _assert_same_boxes(a: Boxes3D, b: Boxes3D, atol: float = 1e-4) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.label, b.label)
    for name in ("center", "size_lwh", "yaw", "velocity", "score"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol, err_msg=name)


def test_predictor_matches_task_predict_on_raw_images(trained):
    ckpt, exp, source = trained
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    assert predictor.device.type == "cpu" and predictor.image_hw == (48, 128)
    from x3kd_core.experiment import task_from_checkpoint

    task, _ = task_from_checkpoint(ckpt)
    task.eval()
    for token in source.sample_tokens[:2]:
        sample = source.load_sample(token)
        expected = task.predict(collate_samples([sample]))[0]
        assert len(expected) >= 5  # enough boxes for the comparison to mean something
        raw_images, raw_k = _raw_frame(source, token)
        assert raw_images[0].shape[:2] != tuple(exp.image_hw)  # really a different resolution
        got = predictor.predict(raw_images, raw_k, sample.rig.cam_to_ego)
        _assert_same_boxes(got, expected)
        # Already-resized input (the loader's output) gives the same again: the transform is the identity.
        got = predictor.predict(np.ascontiguousarray(sample.images.transpose(0, 2, 3, 1)), sample.rig.intrinsics,
                                sample.rig.cam_to_ego)
        _assert_same_boxes(got, expected)


def test_missing_camera_equals_zero_bev_contribution(trained):
    ckpt, exp, source = trained
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    student = predictor.model
    sample = source.load_sample(source.sample_tokens[0])
    batch = collate_samples([sample])
    k = 1  # CAM_FRONT
    keep = [n for n in range(len(exp.data.cameras)) if n != k]
    with torch.no_grad():
        feats = student.neck(student.backbone(batch.images.flatten(0, 1)))
        feats = feats.reshape(1, len(exp.data.cameras), *feats.shape[1:])

        def bev(cams):
            return student.view_transform(feats[:, cams], batch.intrinsics[:, cams], batch.cam_to_ego[:, cams],
                                          exp.image_hw).bev

        all_cams = bev(list(range(len(exp.data.cameras))))
        only_k, without_k = bev([k]), bev(keep)
    # Lift-splat sums cameras: dropping camera k == zeroing its lifted features.
    assert only_k.abs().sum() > 0
    torch.testing.assert_close(without_k, all_cams - only_k, atol=1e-4, rtol=1e-4)

    images = np.ascontiguousarray(sample.images.transpose(0, 2, 3, 1))
    full = predictor.predict(images, sample.rig.intrinsics, sample.rig.cam_to_ego)
    masked = predictor.predict(images, sample.rig.intrinsics, sample.rig.cam_to_ego,
                               camera_mask=[n != k for n in range(6)])
    as_none = predictor.predict([None if n == k else images[n] for n in range(6)], sample.rig.intrinsics,
                                sample.rig.cam_to_ego)
    _assert_same_boxes(masked, as_none, atol=0.0)
    with torch.no_grad():
        sub = student(batch.images[:, keep], batch.intrinsics[:, keep], batch.cam_to_ego[:, keep])
    _assert_same_boxes(masked, student.predict(sub)[0])
    assert len(full) != len(masked) or not np.allclose(full.score, masked.score)
    empty = predictor.predict([None] * 6, sample.rig.intrinsics, sample.rig.cam_to_ego)
    assert len(empty) == 0


def test_predictor_rejects_bad_inputs_and_non_student_checkpoints(trained, tmp_path):
    ckpt, _, source = trained
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    sample = source.load_sample(source.sample_tokens[0])
    images = np.ascontiguousarray(sample.images.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="intrinsics"):
        predictor.predict(images, sample.rig.intrinsics[:5], sample.rig.cam_to_ego)
    with pytest.raises(ValueError, match="uint8 RGB"):
        predictor.predict(images.astype(np.float32), sample.rig.intrinsics, sample.rig.cam_to_ego)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["kind"] = "LidarTask"
    torch.save(state, tmp_path / "lidar.pt")
    with pytest.raises(CheckpointError, match="StudentTask, CameraRadarTask|student, camera_radar"):
        Predictor.from_checkpoint(tmp_path / "lidar.pt")


def test_checkpoint_loads_once_without_the_pretrained_weights_its_config_names(tmp_path, monkeypatch):
    """An ImageNet-initialised run's checkpoint names its backbone .pth (or the torch hub cache);
    where it is deployed that file may not exist, and its weights are replaced anyway."""
    import torchvision
    import yaml

    from x3kd_core.config import from_dict, to_dict
    from x3kd_core.experiment import ExperimentConfig, build_task, task_from_checkpoint
    from x3kd_core.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    weights = tmp_path / "resnet18_imagenet.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    model = yaml.safe_load((REPO_ROOT / "config/model/student_tiny.yaml").read_text())
    model["backbone"]["pretrained_weights"] = str(weights)
    exp = from_dict(ExperimentConfig, {"kind": "student", "model": model, "grid": model["grid"],
                                       "train": {"max_steps": 1}, "name": "pretrained_tiny"})
    task = build_task(exp)
    for p in task.parameters():  # "trained": weights that are neither the .pth's nor a fresh init
        p.data.add_(0.5)
    path = save_checkpoint(tmp_path / "last.pt", {"format": CHECKPOINT_FORMAT, "kind": type(task).__name__,
                                                  "config": to_dict(exp), "model": task.state_dict()},
                           keep_previous=False)
    weights.unlink()  # deployed elsewhere: the pretrained file is not there

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    # A kind list whose first entry does not match: still one read of the file.
    rebuilt, rebuilt_exp = task_from_checkpoint(path, kinds=("camera_radar", "student"))
    assert loads == [path]
    assert rebuilt_exp.model.backbone.pretrained_weights == str(weights)  # the config as trained
    for (name, a), b in zip(task.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), name
    predictor = Predictor.from_checkpoint(path, device="cpu")
    assert torch.equal(predictor.model.backbone.layer1[0].conv1.weight, task.student.backbone.layer1[0].conv1.weight)


# ------------------------------------------------------------------------------ onnxruntime backend
def _boxes_within(a: Boxes3D, b: Boxes3D, pair_boxes) -> None:
    """Decoded boxes equal within 1 mm (centres, sizes), 1e-3 rad (yaw), 1e-3 m/s and 1e-4 score.

    Boxes are paired by label and nearest centre, not by position in the list: two boxes whose
    scores differ by float rounding (seen: 0.10113783 vs 0.10113786) may swap places. For the
    same reason the last places of a full top-k list may hold different boxes (seen on an
    AVX2-only CPU): boxes scored within 1e-4 of either list's lowest score are left out of the pairing.
    """
    assert len(a) == len(b)
    if len(a):
        cut = max(float(a.score.min()), float(b.score.min())) + 1e-4
        a, b = a[a.score > cut], b[b.score > cut]
        assert len(a) == len(b), "different boxes above the lowest scores"
    b = b[pair_boxes(a.center, b.center, a.label, b.label)]
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_allclose(a.center, b.center, atol=1e-3, rtol=0)
    np.testing.assert_allclose(a.size_lwh, b.size_lwh, atol=1e-3, rtol=0)
    yaw_diff = np.angle(np.exp(1j * (a.yaw - b.yaw)))  # wrap: +pi and -pi are the same heading
    assert np.abs(yaw_diff).max(initial=0.0) <= 1e-3
    np.testing.assert_allclose(a.velocity, b.velocity, atol=1e-3, rtol=0)
    np.testing.assert_allclose(a.score, b.score, atol=1e-4, rtol=0)


def test_onnxruntime_backend_equals_torch_on_synthetic_samples(trained, pair_boxes):
    """The tiny student trained on the synthetic world: head maps within 1e-4, boxes within 1 mm /
    1e-3 rad, on raw (full-resolution) images of real samples, all cameras and one missing."""
    from x3kd_core.deploy.onnx_export import bev_row_index

    ckpt, exp, source = trained
    torch_pred = Predictor.from_checkpoint(ckpt, device="cpu")
    ort_pred = Predictor.from_checkpoint(ckpt, backend="onnxruntime", num_threads=1)
    assert ort_pred.backend == "onnxruntime" and ort_pred.runner.info.bev_pool == "outer_product"
    assert torch_pred.model.view_transform.bev_pool == "depth_context"  # the export really switched path
    compared = 0
    for token in source.sample_tokens[:3]:
        sample = source.load_sample(token)
        raw_images, raw_k = _raw_frame(source, token)
        # Head maps on the same normalised input.
        images, k, present = torch_pred.prepare(raw_images, raw_k)
        assert len(present) == 6
        rows = bev_row_index(torch_pred.model, k, sample.rig.cam_to_ego, exp.image_hw)
        maps = ort_pred.runner.run(images, k[None], sample.rig.cam_to_ego[None], rows)
        with torch.no_grad():
            ref = torch_pred.model(images, torch.from_numpy(k[None]).float(),
                                   torch.from_numpy(sample.rig.cam_to_ego[None]).float()).head
        for name in ("heatmap", "offset", "height", "log_size", "rot", "velocity"):
            diff = (getattr(maps, name) - getattr(ref, name)).abs().max().item()
            assert diff <= 1e-4, (name, diff)
        # Decoded boxes through both Predictors, end to end.
        expected = torch_pred.predict(raw_images, raw_k, sample.rig.cam_to_ego)
        assert len(expected) >= 5
        _boxes_within(ort_pred.predict(raw_images, raw_k, sample.rig.cam_to_ego), expected, pair_boxes)
        mask = [n != 1 for n in range(6)]
        _boxes_within(ort_pred.predict(raw_images, raw_k, sample.rig.cam_to_ego, camera_mask=mask),
                      torch_pred.predict(raw_images, raw_k, sample.rig.cam_to_ego, camera_mask=mask), pair_boxes)
        compared += len(expected)
    assert compared >= 15
    assert len(ort_pred.predict([None] * 6, raw_k, sample.rig.cam_to_ego)) == 0


def test_resized_input_equals_predictor_resize(trained):
    """What the ROS node does (resize at receive time with input_transform, then resized=True)
    gives the Predictor's own boxes exactly."""
    ckpt, exp, source = trained
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    token = source.sample_tokens[0]
    sample = source.load_sample(token)
    raw_images, raw_k = _raw_frame(source, token)
    small, small_k = [], []
    for img, k in zip(raw_images, raw_k):
        tf = predictor.input_transform(img.shape[:2])
        small.append(tf.apply(img, cv2.INTER_LINEAR))
        small_k.append(tf.intrinsics(k))
    expected = predictor.predict(raw_images, raw_k, sample.rig.cam_to_ego)
    _assert_same_boxes(predictor.predict(small, np.stack(small_k), sample.rig.cam_to_ego, resized=True), expected,
                       atol=0.0)
    with pytest.raises(ValueError, match="resized=True needs"):
        predictor.predict(raw_images, raw_k, sample.rig.cam_to_ego, resized=True)


def test_onnxruntime_backend_rejects_what_it_cannot_run(trained, tmp_path):
    ckpt, exp, source = trained
    with pytest.raises(ValueError, match="backend must be one of"):
        Predictor.from_checkpoint(ckpt, backend="tensorrt")
    with pytest.raises(ValueError, match="runs on the CPU"):
        Predictor.from_checkpoint(ckpt, device="cuda", backend="onnxruntime")
    predictor = Predictor.from_checkpoint(ckpt, backend="onnxruntime", num_threads=1)
    sample = source.load_sample(source.sample_tokens[0])
    images = np.ascontiguousarray(sample.images.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="takes all 6 cameras"):
        predictor.predict(images[:5], sample.rig.intrinsics[:5], sample.rig.cam_to_ego[:5])
    # An exported file of this checkpoint loads as the model; one for other cameras is refused.
    from x3kd_core.deploy.onnx_export import export_student

    path = tmp_path / "student.onnx"
    export_student(predictor.model, path, predictor.cameras)
    from_file = Predictor.from_checkpoint(ckpt, backend="onnxruntime", onnx_model=path, num_threads=1)
    _assert_same_boxes(from_file.predict(images, sample.rig.intrinsics, sample.rig.cam_to_ego),
                       predictor.predict(images, sample.rig.intrinsics, sample.rig.cam_to_ego), atol=0.0)
    export_student(predictor.model, path, predictor.cameras[::-1])
    with pytest.raises(ValueError, match="exported for cameras"):
        Predictor.from_checkpoint(ckpt, backend="onnxruntime", onnx_model=path)
