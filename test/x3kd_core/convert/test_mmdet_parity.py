"""Parity of the converted Mask R-CNN with the REAL mmdet forward (fixture written by mmdet itself).

test/fixtures/mmdet3d/maskrcnn_tiny.pt is written by ``bash tools/make_mmdet3d_fixtures.sh`` (side
venv with mmcv 2.1 / mmdet 3.3 / mmdet3d 1.4): mmdet3d's own Mask R-CNN base config with the
nuImages classes at CI size, seeded random weights, one image. Here its state dict goes through
x3kd's converter into the mirror (``InstanceSegConfig.conventions="mmdet"``), which must reproduce
mmdet's FPN levels, RPN proposals, final boxes / scores / labels and masks — without mmdet.

The fixture's ResNet-18 is built at base width 8 (``backbone_width``) so that the file stays ~1.4 MB.
What these tests found when first run: mmdet clamps the log-size box deltas from below as well as
from above (``rcnn_ops.SymmetricClampBoxCoder``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from x3kd_core.convert.mmdet import class_permutation, config_from_mmdet_model, maskrcnn_state_dict
from x3kd_core.data.nuscenes import IMAGENET_MEAN, IMAGENET_STD
from x3kd_core.models.teachers.instance_seg import InstanceSegmenter

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "mmdet3d" / "maskrcnn_tiny.pt"
pytestmark = pytest.mark.skipif(
    not FIXTURE.is_file(), reason=f"{FIXTURE.name} not generated (bash tools/make_mmdet3d_fixtures.sh writes it; "
                                  "needs mmcv 2.1 compiled from source)")

FEAT_TOL = 1e-4  # FPN levels, max abs relative to the level's scale
BOX_TOL_PX = 1e-2


@pytest.fixture(scope="module")
def fx() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def mirror(fx) -> InstanceSegmenter:
    source = config_from_mmdet_model(json.loads(fx["model_config"]), fx["class_names"],
                                     test_scale=tuple(fx["test_scale"]), source="fixture")
    model = InstanceSegmenter(source.segmenter_config())
    model.load_state_dict(maskrcnn_state_dict(fx["state_dict"], source, where=FIXTURE.name))
    return model.eval()


@pytest.fixture(scope="module")
def image(fx) -> torch.Tensor:
    """(3, H, W) the fixture image normalised as x3kd's loader does it."""
    rgb = fx["image_rgb_u8"].permute(2, 0, 1).float() / 255.0
    return (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _run_to_rpn(mirror, image):
    with torch.no_grad():
        images, _ = mirror.model.transform([image])
        feats = mirror.model.backbone(images.tensors)
        proposals, _ = mirror.model.rpn(images, feats)
    return images, feats, proposals


def test_fixture_is_from_mmdet(fx):
    assert fx["versions"]["mmdet"] == "3.3.0" and fx["versions"]["mmcv"] == "2.1.0"
    assert fx["config_file"].endswith("mask-rcnn_r50_fpn.py")


def test_input_and_fpn_levels_match(mirror, image, fx):
    images, feats, _ = _run_to_rpn(mirror, image)
    assert images.tensors.shape == fx["batch_input"].shape
    torch.testing.assert_close(images.tensors, fx["batch_input"], atol=1e-5, rtol=0)
    for k, (mine, ref) in enumerate(zip(feats.values(), fx["fpn"])):
        assert mine.shape == ref.shape, f"level {k}"
        diff = (mine - ref).abs().max().item()
        assert diff <= FEAT_TOL * max(1.0, ref.abs().max().item()), f"level {k}: max abs diff {diff}"


def test_rpn_proposals_match(mirror, image, fx):
    _, _, (props,) = _run_to_rpn(mirror, image)
    ref = fx["proposals"]["bboxes"]
    assert props.shape == ref.shape
    assert (props - ref).abs().max().item() <= BOX_TOL_PX


def test_final_detections_and_masks_match(mirror, image, fx):
    (preds,) = mirror.predict(image[None, None])
    (pred,) = preds
    ref = fx["final"]["soft_u8"]
    assert len(pred) == len(ref["labels"]) > 0
    perm = torch.tensor(class_permutation(fx["class_names"]))
    assert torch.equal(pred.labels, perm[ref["labels"]])
    assert (pred.boxes - ref["bboxes"]).abs().max().item() <= BOX_TOL_PX
    torch.testing.assert_close(pred.scores, ref["scores"], atol=1e-5, rtol=0)
    # mmdet's soft masks are stored as floor(255 p); its binary ones as p >= 0.5.
    soft = ref["masks"].float() / 255.0
    assert ((pred.masks - soft) >= -1e-4).all() and ((pred.masks - soft) <= 1 / 255 + 1e-4).all()
    binary = fx["final"]["binary"]["masks"]
    disagree = ((pred.masks >= 0.5) != binary).float().mean().item()
    assert disagree <= 1e-3, f"{disagree:.2%} of mask pixels differ"
