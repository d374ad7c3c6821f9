"""Mask R-CNN teacher: target conversion, a train step, eval outputs and the dense X-IS map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from x3kd_core.config import load_yaml
from x3kd_core.models.teachers.instance_seg import (
    MASK_RCNN_LOSS_NAMES,
    InstancePredictions,
    InstanceSegConfig,
    InstanceSegmenter,
    instance_map_to_targets,
    predictions_to_instance_map,
)
from x3kd_core.structures import Boxes3D

CONFIG_DIR = Path(__file__).resolve().parents[4] / "config" / "model"

H, W = 64, 96


def _boxes(labels) -> Boxes3D:
    n = len(labels)
    return Boxes3D(
        center=np.zeros((n, 3)), size_lwh=np.ones((n, 3)), yaw=np.zeros(n), velocity=np.zeros((n, 2)),
        label=np.array(labels), score=np.ones(n),
    )


def _instance_maps() -> torch.Tensor:
    """(B=1, N=2, H, W): camera 0 holds boxes 0 and 2 (2 also a 6-pixel sliver), camera 1 box 1."""
    maps = torch.full((1, 2, H, W), -1, dtype=torch.long)
    maps[0, 0, 10:30, 20:60] = 0
    maps[0, 0, 40:60, 5:15] = 2
    maps[0, 0, 15:20, 30:40] = 2  # id 2 occluded by id 0's region? no: overwrites part of 0
    maps[0, 1, 5:40, 50:90] = 1
    maps[0, 1, 60:62, 0:3] = 0  # 6 px: below min_instance_area_px
    return maps


@pytest.fixture(scope="module")
def tiny() -> InstanceSegmenter:
    torch.manual_seed(0)
    config = load_yaml(InstanceSegConfig, CONFIG_DIR / "instance_seg_tiny.yaml")
    return InstanceSegmenter(config)


def test_targets_from_instance_map():
    maps = _instance_maps()
    t = instance_map_to_targets(maps[0, 0], np.array([3, 8, 0]), min_area_px=16)
    assert t.instance_ids.tolist() == [0, 2]
    assert t.labels.tolist() == [4, 1]  # x3kd class + 1 (0 is Mask R-CNN's background)
    # Box of id 0 is its full rectangle (the id-2 patch sits inside it), x1/y1 exclusive.
    assert t.boxes.tolist() == [[20.0, 10.0, 60.0, 30.0], [5.0, 15.0, 40.0, 60.0]]
    assert t.masks.shape == (2, H, W) and t.masks.dtype == torch.uint8
    assert int(t.masks[0].sum()) == 20 * 40 - 5 * 10
    assert int(t.masks[1].sum()) == 20 * 10 + 5 * 10

    t1 = instance_map_to_targets(maps[0, 1], np.array([3, 8, 0]), min_area_px=16)
    assert t1.instance_ids.tolist() == [1]  # the 6-pixel sliver of id 0 is dropped
    assert t1.labels.tolist() == [9]
    t1_all = instance_map_to_targets(maps[0, 1], np.array([3, 8, 0]), min_area_px=1)
    assert t1_all.instance_ids.tolist() == [0, 1]
    assert t1_all.boxes[0].tolist() == [0.0, 60.0, 3.0, 62.0]

    empty = instance_map_to_targets(torch.full((H, W), -1), np.array([3]))
    assert empty.boxes.shape == (0, 4) and empty.masks.shape == (0, H, W)
    with pytest.raises(ValueError, match="out of range"):
        instance_map_to_targets(maps[0, 0], np.array([3, 8]))  # id 2 has no box


def test_train_step_returns_named_losses(tiny):
    torch.manual_seed(0)
    tiny.train()
    images = torch.randn(1, 2, 3, H, W)
    losses = tiny.loss(images, _instance_maps(), [_boxes([3, 8, 0])])
    assert tuple(losses) == MASK_RCNN_LOSS_NAMES
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    # Untrained: 11-way classification starts near log(11), objectness near log(2).
    assert losses["loss_classifier"].item() == pytest.approx(np.log(11), rel=0.25)
    assert losses["loss_objectness"].item() == pytest.approx(np.log(2), rel=0.1)
    params = [p for p in tiny.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.01)
    sum(losses.values()).backward()
    opt.step()
    changed = sum(int(not torch.equal(a, p.detach())) for a, p in zip(before, params))
    assert changed > 0.9 * len(params)
    tiny.eval()
    with pytest.raises(RuntimeError, match="train mode"):
        tiny.loss(images, _instance_maps(), [_boxes([3, 8, 0])])


def test_eval_outputs_have_image_size(tiny):
    torch.manual_seed(1)
    tiny.train()  # predict must switch to eval for the call and restore the mode
    images = torch.randn(2, 3, 3, H, W)
    preds = tiny.predict(images)
    assert tiny.training
    assert len(preds) == 2 and all(len(p) == 3 for p in preds)
    for per_cam in preds:
        for p in per_cam:
            k = len(p)
            assert p.masks.shape == (k, H, W)
            assert p.boxes.shape == (k, 4)
            if k:
                assert 0 <= int(p.labels.min()) and int(p.labels.max()) < 10
                assert float(p.masks.min()) >= 0.0 and float(p.masks.max()) <= 1.0
    dense = tiny.dense_from_predictions(preds, (H, W))
    assert dense.shape == (2, 3, 10, H, W)


def test_dense_map_and_instance_map_from_predictions():
    masks = torch.zeros(3, 4, 5)
    masks[0, 0:2, 0:2] = 0.9
    masks[1, 1:3, 1:3] = 0.8  # overlaps mask 0 at pixel (1, 1)
    masks[2, 3, 4] = 0.7
    pred = InstancePredictions(
        boxes=torch.zeros(3, 4), labels=torch.tensor([2, 2, 7]), scores=torch.tensor([0.9, 0.5, 0.4]), masks=masks
    )
    dense = InstanceSegmenter.dense_from_predictions([[pred]], (4, 5))
    assert dense.shape == (1, 1, 10, 4, 5)
    assert dense[0, 0, 2, 1, 1].item() == pytest.approx(0.81)  # max(0.9 * 0.9, 0.5 * 0.8)
    assert dense[0, 0, 2, 2, 2].item() == pytest.approx(0.4)
    assert dense[0, 0, 7, 3, 4].item() == pytest.approx(0.28)
    assert float(dense[0, 0, [0, 1, 3, 4, 5, 6, 8, 9]].abs().sum()) == 0.0
    inst = predictions_to_instance_map(pred)
    assert inst[1, 1].item() == 0 and inst[2, 2].item() == 1 and inst[3, 4].item() == 2
    assert int((inst == -1).sum()) == 20 - 4 - 3 - 1


def test_a_narrow_backbone_keeps_the_standard_key_names_at_scaled_widths():
    """backbone_width mirrors mmdet's ResNet base_channels (the CI-size parity fixture uses 8)."""
    from x3kd_core.config import ConfigError
    from x3kd_core.models.teachers.instance_seg import InstanceSegConfig

    standard = InstanceSegmenter(InstanceSegConfig(fpn_channels=16, box_head_dim=32, mask_head_channels=16))
    narrow = InstanceSegmenter(InstanceSegConfig(fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                                                 backbone_width=8))
    wide_sd, narrow_sd = standard.state_dict(), narrow.state_dict()
    assert list(wide_sd) == list(narrow_sd)
    assert narrow_sd["model.backbone.body.conv1.weight"].shape == (8, 3, 7, 7)
    assert narrow_sd["model.backbone.body.layer4.1.conv2.weight"].shape == (64, 64, 3, 3)  # 8 * 2**3
    assert narrow_sd["model.backbone.fpn.inner_blocks.3.0.weight"].shape == (16, 64, 1, 1)
    n_wide = sum(v.numel() for k, v in wide_sd.items() if ".body." in k)
    n_narrow = sum(v.numel() for k, v in narrow_sd.items() if ".body." in k)
    assert 50 < n_wide / n_narrow < 70  # convolutions scale with width squared (64 / 8) ** 2
    narrow.eval()
    with torch.no_grad():
        (preds,) = narrow.predict(torch.randn(1, 1, 3, 64, 96))
    assert preds[0].masks.shape[-2:] == (64, 96)
    with pytest.raises(ConfigError, match="backbone_width 64"):
        InstanceSegConfig(backbone_width=8, pretrained_backbone="resnet18.pth")
