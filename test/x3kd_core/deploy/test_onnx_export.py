"""ONNX export of the camera student: graph contract, equality with PyTorch, the x3kd export command.

Equality on a trained checkpoint and real synthetic samples (head maps, decoded boxes) is in
test/x3kd_core/test_inference.py (the Predictor's onnxruntime backend).
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
import yaml

from x3kd_core.config import from_dict, to_dict
from x3kd_core.data.synthetic.config import SynthConfig
from x3kd_core.data.synthetic.sensors import camera_specs
from x3kd_core.deploy.onnx_export import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    ExportError,
    bev_row_index,
    export_student,
    read_export_info,
)
from x3kd_core.deploy.onnx_runner import OnnxStudentRunner
from x3kd_core.models.student import CameraStudent, StudentConfig
from x3kd_core.paths import REPO_ROOT
from x3kd_core.structures import DETECTION_CLASSES

CAMERAS = tuple(s.name for s in camera_specs(SynthConfig()))


def _student(name: str, seed: int = 0) -> CameraStudent:
    raw = yaml.safe_load((REPO_ROOT / "config" / "model" / f"student_{name}.yaml").read_text())
    raw["backbone"]["pretrained_weights"] = None  # random weights: no download, same graph
    torch.manual_seed(seed)
    return CameraStudent.from_config(from_dict(StudentConfig, raw)).eval()


def _rig(image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic world's six cameras, K scaled to ``image_hw`` (a full-frame resize)."""
    specs = camera_specs(SynthConfig())
    H, W = image_hw
    k = np.stack([s.intrinsics for s in specs]).astype(np.float64)
    k[:, 0] *= W / SynthConfig().image_width
    k[:, 1] *= H / SynthConfig().image_height
    return k, np.stack([s.to_ego for s in specs])


def _declared_shapes(model: onnx.ModelProto, values) -> dict[str, tuple[int, ...]]:
    return {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in values}


def test_small_export_runs_in_onnxruntime_and_equals_torch():
    student = _student("small")
    buffer = io.BytesIO()
    info = export_student(student, buffer, CAMERAS)
    assert info.image_hw == (64, 176) and info.grid_size == (64, 64) and info.num_depth_bins == 56
    assert info.bev_pool == "outer_product" and info.trained_bev_pool == "depth_context"
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
    assert info.feature_hw == (4, 11)
    assert _declared_shapes(model, model.graph.input)["bev_row_index"] == (6 * 56 * 4 * 11,)
    ops = {node.op_type for node in model.graph.node}
    assert "ScatterElements" in ops
    k, to_ego = _rig(info.image_hw)
    rows = bev_row_index(student, k, to_ego, info.image_hw)
    assert rows.dtype == np.int64 and rows.shape == (info.num_points,)
    assert 0.05 < (rows < 64 * 64).mean() < 1.0  # a real rig: part of the frustum inside the grid
    torch.manual_seed(1)
    images = torch.randn(1, 6, 3, *info.image_hw)
    maps = OnnxStudentRunner(buffer.getvalue(), num_threads=1).run(images, k[None], to_ego[None], rows)
    with torch.no_grad():
        ref = student(images, torch.from_numpy(k[None]).float(), torch.from_numpy(to_ego[None]).float()).head
    for name in OUTPUT_NAMES:
        assert getattr(maps, name).shape == getattr(ref, name).shape
        assert (getattr(maps, name) - getattr(ref, name)).abs().max().item() <= 1e-4, name


def test_nuscenes_r50_export_has_the_paper_shapes(tmp_path):
    student = _student("nuscenes_r50")
    path = tmp_path / "r50.onnx"
    info = export_student(student, path, CAMERAS)
    assert info.image_hw == (256, 704) and info.feature_hw == (16, 44) and info.num_depth_bins == 112
    model = onnx.load(str(path))
    inputs = _declared_shapes(model, model.graph.input)
    assert inputs == {"images": (1, 6, 3, 256, 704), "intrinsics": (1, 6, 3, 3), "cam_to_ego": (1, 6, 4, 4),
                      "bev_row_index": (6 * 112 * 16 * 44,)}
    outputs = _declared_shapes(model, model.graph.output)
    grid = (128, 128)
    assert outputs == {"heatmap": (1, len(DETECTION_CLASSES), *grid), "offset": (1, 2, *grid),
                       "height": (1, 1, *grid), "log_size": (1, 3, *grid), "rot": (1, 2, *grid),
                       "velocity": (1, 2, *grid)}
    assert read_export_info(path) == info


def test_fp16_export_and_missing_camera_slot():
    student = _student("tiny")
    k, to_ego = _rig(tuple(student.config.image_hw))
    images = torch.randn(1, 6, 3, *student.config.image_hw)
    fp32, fp16 = io.BytesIO(), io.BytesIO()
    export_student(student, fp32, CAMERAS)
    info = export_student(student, fp16, CAMERAS, fp16=True)
    model = onnx.load_from_string(fp16.getvalue())
    assert info.fp16 and model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    assert fp16.getbuffer().nbytes < 0.6 * fp32.getbuffer().nbytes  # weights really in float16
    rows = bev_row_index(student, k, to_ego, info.image_hw)
    full = OnnxStudentRunner(fp32.getvalue(), 1).run(images, k[None], to_ego[None], rows)
    half = OnnxStudentRunner(fp16.getvalue(), 1).run(images, k[None], to_ego[None], rows)
    assert (full.heatmap - half.heatmap).abs().max().item() < 0.02
    # A camera whose points all go to the scratch row adds nothing: equal to the model without it.
    present = np.array([n != 4 for n in range(6)])
    rows_missing = bev_row_index(student, k, to_ego, info.image_hw, present)
    masked = OnnxStudentRunner(fp32.getvalue(), 1).run(images * torch.from_numpy(present).view(1, 6, 1, 1, 1),
                                                       k[None], to_ego[None], rows_missing)
    keep = np.flatnonzero(present)
    with torch.no_grad():
        ref = student(images[:, keep], torch.from_numpy(k[None, keep]).float(),
                      torch.from_numpy(to_ego[None, keep]).float()).head
    assert (masked.heatmap - ref.heatmap).abs().max().item() <= 1e-4


def test_bad_inputs_are_refused():
    student = _student("tiny")
    with pytest.raises(ExportError, match="multiples of 16"):
        export_student(student, io.BytesIO(), CAMERAS, image_hw=(50, 128))
    with pytest.raises(ExportError, match="only the camera student"):
        export_student(torch.nn.Linear(2, 2), io.BytesIO(), CAMERAS, image_hw=(48, 128))
    buffer = io.BytesIO()
    export_student(student, buffer, CAMERAS)
    runner = OnnxStudentRunner(buffer.getvalue(), 1)
    k, to_ego = _rig((48, 128))
    with pytest.raises(ValueError, match=r"images: the exported model takes \(1, 6, 3, 48, 128\)"):
        runner.run(np.zeros((1, 6, 3, 64, 128), np.float32), k[None], to_ego[None], np.zeros(2304, np.int64))
    with pytest.raises(ExportError, match="no 'x3kd' metadata"):
        read_export_info(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])).SerializeToString())


def test_export_command(tmp_path, capsys):
    from x3kd_core.cli import main
    from x3kd_core.experiment import ExperimentConfig, build_task
    from x3kd_core.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    model = yaml.safe_load((REPO_ROOT / "config/model/student_tiny.yaml").read_text())
    exp = from_dict(ExperimentConfig, {"kind": "student", "model": model, "grid": model["grid"],
                                       "train": {"max_steps": 1}, "name": "tiny"})
    task = build_task(exp)
    ckpt = save_checkpoint(tmp_path / "last.pt", {"format": CHECKPOINT_FORMAT, "kind": type(task).__name__,
                                                  "config": to_dict(exp), "model": task.state_dict()},
                           keep_previous=False)
    out = tmp_path / "student.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--image-hw", "64", "160"]) == 0
    printed = capsys.readouterr().out
    assert "BEV pooling in the graph: outer_product (checkpoint trained with depth_context" in printed
    info = read_export_info(out)
    assert info.image_hw == (64, 160) and info.cameras == tuple(exp.data.cameras)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--image-hw", "60", "160"]) == 2
    assert "multiples of 16" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)]) == 2
