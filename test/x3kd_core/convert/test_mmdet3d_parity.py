"""Parity of the converted CenterPoint-pillar with the REAL mmdet3d 1.4 forward (committed fixture).

test/fixtures/mmdet3d/centerpoint_pillar_tiny.pt was written by mmdet3d itself
(``bash tools/make_mmdet3d_fixtures.sh``: side venv with mmcv 2.1 / mmdet 3.3 / mmdet3d 1.4, mmdet3d's
own nuScenes CenterPoint-pillar config at CI size, seeded random weights and BN statistics). Here
its state dict goes through x3kd's converter into x3kd's mirror, which must reproduce mmdet3d's
hard voxels exactly, its neck and head maps to 1e-4, and its boxes to 1 cm — without mmdet3d.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from x3kd_core.convert.mmdet3d import centerpoint_state_dict, config_from_mmdet3d_model, convert_centerpoint
from x3kd_core.models.teachers.centerpoint_mm import CenterPointMM, hard_voxelize

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "mmdet3d" / "centerpoint_pillar_tiny.pt"
pytestmark = pytest.mark.skipif(
    not FIXTURE.is_file(), reason=f"{FIXTURE.name} not generated (bash tools/make_mmdet3d_fixtures.sh writes it)")

MAP_TOL = 1e-4    # head maps / neck, max abs
BOX_TOL_M = 0.01  # box centres and sizes


@pytest.fixture(scope="module")
def fx() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def mirror(fx) -> CenterPointMM:
    config = config_from_mmdet3d_model(json.loads(fx["model_config"]), source="fixture", sweeps=1)
    model = CenterPointMM(config)
    model.load_state_dict(centerpoint_state_dict(fx["state_dict"], config, where=FIXTURE.name))
    return model.eval()


@pytest.fixture(scope="module")
def outputs(mirror, fx):
    with torch.no_grad():
        return mirror(fx["points"])


def test_fixture_is_from_mmdet3d(fx):
    assert fx["versions"]["mmdet3d"] == "1.4.0" and fx["versions"]["mmcv"] == "2.1.0"
    assert fx["config_file"].endswith("centerpoint_pillar02_second_secfpn_nus.py")


def test_hard_voxelisation_equals_mmcv(mirror, fx):
    ref = fx["voxels"]
    for b, cloud in enumerate(fx["points"]):
        mine = hard_voxelize(cloud, mirror.config, training=False)
        rows = ref["coors"][:, 0] == b
        assert torch.equal(mine.coors, ref["coors"][rows, 1:].int())
        assert torch.equal(mine.num_points, ref["num_points"][rows].int())
        assert torch.equal(mine.voxels, ref["voxels"][rows])
    # The first cloud has more pillars than the budget: the budget and the point cap both bite.
    assert int((ref["coors"][:, 0] == 0).sum()) == mirror.config.max_voxels[1]
    assert int(ref["num_points"].max()) == mirror.config.max_num_points


def test_neck_and_head_maps_match(outputs, fx):
    assert (outputs.neck - fx["neck"]).abs().max() <= MAP_TOL
    torch.testing.assert_close(outputs.bev_features, fx["neck"].transpose(-1, -2), atol=MAP_TOL, rtol=0)
    for t, (mine, ref) in enumerate(zip(outputs.task_outputs, fx["task_maps"])):
        for name, value in ref.items():
            diff = (mine[name] - value).abs().max().item()
            assert diff <= MAP_TOL, f"task {t} {name}: max abs diff {diff}"


def _check_boxes(mine: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert mine.shape == ref.shape, f"{what}: {tuple(mine.shape)} vs mmdet3d {tuple(ref.shape)}"
    if not len(ref):
        return
    assert (mine[:, :6] - ref[:, :6]).abs().max() <= BOX_TOL_M, what
    yaw = torch.remainder(mine[:, 6] - ref[:, 6] + np.pi, 2 * np.pi) - np.pi
    assert yaw.abs().max() <= 1e-3 and (mine[:, 7:9] - ref[:, 7:9]).abs().max() <= 1e-3, what


def test_decoded_boxes_before_nms_match(mirror, outputs, fx, pair_boxes):
    for t, (mine, ref) in enumerate(zip(mirror.decode(outputs), fx["decoded"])):
        for b, (m, r) in enumerate(zip(mine, ref)):
            what = f"task {t} sample {b}"
            assert m["bboxes"].shape == r["bboxes"].shape, what
            pair = torch.as_tensor(pair_boxes(m["bboxes"], r["bboxes"], m["labels"], r["labels"], what))
            _check_boxes(m["bboxes"], r["bboxes"][pair], what)
            assert torch.equal(m["labels"], r["labels"][pair].long())
            torch.testing.assert_close(m["scores"], r["scores"][pair], atol=1e-5, rtol=0)


@pytest.mark.parametrize("nms", ["circle", "rotate"])
def test_final_boxes_match(mirror, outputs, fx, nms):
    model = CenterPointMM(dataclasses.replace(mirror.config, nms_type=nms))
    model.load_state_dict(mirror.state_dict())
    for b, (mine, ref) in enumerate(zip(model.predict_raw(outputs), fx["final"][nms])):
        ref_boxes = ref["bboxes_3d"].clone()
        ref_boxes[:, 2] += ref_boxes[:, 5] / 2  # mmdet3d reports the bottom centre; x3kd the centre
        _check_boxes(mine["bboxes"], ref_boxes, f"{nms} sample {b}")
        assert torch.equal(mine["labels"], ref["labels_3d"].long())
    assert sum(len(r["scores_3d"]) for r in fx["final"][nms]) > 10  # a fixture that detects something


def test_converter_end_to_end_on_the_fixture(fx, tmp_path):
    """The fixture's state dict saved as an mmengine checkpoint -> x3kd convert -> load_model."""
    from x3kd_core.experiment.loader import load_model

    config = config_from_mmdet3d_model(json.loads(fx["model_config"]), source="fixture", sweeps=1)
    src = tmp_path / "mmdet3d.pth"
    torch.save({"meta": {"dataset_meta": {"classes": list(config.class_names)}, "epoch": np.int64(20)},
                "state_dict": fx["state_dict"]}, src)
    teacher = convert_centerpoint(src, config, tmp_path / "teacher.pt")
    model, _ = load_model(teacher, kinds=("lidar",))
    model.eval()
    with torch.no_grad():
        out = model(fx["points"])
    assert (out.bev_features - fx["neck"].transpose(-1, -2)).abs().max() <= MAP_TOL
