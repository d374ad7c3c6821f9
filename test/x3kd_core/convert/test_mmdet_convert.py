"""mmdet Mask R-CNN -> x3kd instance-segmentation teacher, on synthetic mmdet-shaped state dicts.

The state dicts here are written from mmdet's module layout (ResNet / BasicBlock / Bottleneck,
FPN's ConvModules, RPNHead, Shared2FCBBoxHead, FCNMaskHead: key names, shapes, mmdet's class
order with background last), NOT from the mirror's state_dict, so a renamed, reshaped or
mis-ordered mirror layer fails here. Numerical parity with a real mmdet forward is NOT shown
here: test_mmdet_parity.py does that from a fixture written by mmdet itself, and skips while
the fixture is absent (it needs mmcv compiled; tools/make_mmdet3d_fixtures.sh).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from x3kd_core.checkpoint import CheckpointError
from x3kd_core.config import ConfigError
from x3kd_core.convert.mmdet import (
    KNOWN_MASKRCNN_CONFIGS,
    NUIMAGES_CLASSES,
    MaskRCNNSource,
    config_from_mmdet_model,
    convert_maskrcnn,
    maskrcnn_state_dict,
)
from x3kd_core.models.teachers.instance_seg import InstanceSegmenter
from x3kd_core.models.teachers.rcnn_ops import AlignedMultiScaleRoIAlign, FixedStrideAnchorGenerator, paste_masks_grid_sample
from x3kd_core.structures import DETECTION_CLASSES

REPO = Path(__file__).resolve().parents[3]
NUIM = "mask-rcnn_r50_fpn_1x_nuim"

#: A small Mask R-CNN: ResNet-18, 16-channel FPN, slim heads, anchors and test size for 48 x 128 images.
TINY = MaskRCNNSource(source="tiny-test", depth=18, fpn_channels=16, fc_channels=32, mask_convs=2, mask_channels=16,
                      anchor_scale=2, test_scale=(128, 48), rpn_nms_pre=100, rpn_max_per_img=100, max_per_img=20)


def mmdet_maskrcnn_state_dict(src: MaskRCNNSource, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the keys and shapes mmdet's MaskRCNN saves (classes in ``src.class_names`` order)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int, bias: bool) -> None:
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) / math.sqrt(cin * k * k)
        if bias:
            sd[f"{name}.bias"] = 0.1 * torch.randn(cout, generator=g)

    def bn(name: str, c: int) -> None:
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 1 + 0.2 * torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    def linear(name: str, cout: int, cin: int) -> None:
        sd[f"{name}.weight"] = torch.randn(cout, cin, generator=g) / math.sqrt(cin)
        sd[f"{name}.bias"] = 0.1 * torch.randn(cout, generator=g)

    # ResNet (pytorch style): stem conv1 7x7 + bn1, then layer1..4; a block's first conv/norm pairs are
    # conv1/bn1, conv2/bn2 (BasicBlock) [+ conv3/bn3 (Bottleneck, 4x expansion)]; downsample = [conv, BN].
    stages = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[src.depth]
    bottleneck = src.depth >= 50
    width = src.backbone_width
    conv("backbone.conv1", width, 3, 7, bias=False)
    bn("backbone.bn1", width)
    cin, outs = width, []
    for s, n in enumerate(stages):
        planes = width * 2 ** s
        cout = planes * (4 if bottleneck else 1)
        for b in range(n):
            p = f"backbone.layer{s + 1}.{b}"
            shapes = ([(planes, cin, 1), (planes, planes, 3), (cout, planes, 1)] if bottleneck
                      else [(planes, cin, 3), (planes, planes, 3)])
            for j, (co, ci, k) in enumerate(shapes, start=1):
                conv(f"{p}.conv{j}", co, ci, k, bias=False)
                bn(f"{p}.bn{j}", co)
            if b == 0 and (s > 0 or cin != cout):
                conv(f"{p}.downsample.0", cout, cin, 1, bias=False)
                bn(f"{p}.downsample.1", cout)
            cin = cout
        outs.append(cout)
    # FPN: ConvModule(conv only, bias) per input level; 1x1 lateral, 3x3 output.
    c = src.fpn_channels
    for i, ci in enumerate(outs):
        conv(f"neck.lateral_convs.{i}.conv", c, ci, 1, bias=True)
        conv(f"neck.fpn_convs.{i}.conv", c, c, 3, bias=True)
    # RPNHead: 3 anchors (ratios) per location, one sigmoid logit and 4 deltas each.
    a = len(src.anchor_ratios)
    conv("rpn_head.rpn_conv", c, c, 3, bias=True)
    conv("rpn_head.rpn_cls", a, c, 1, bias=True)
    conv("rpn_head.rpn_reg", 4 * a, c, 1, bias=True)
    # Shared2FCBBoxHead: fc_cls = classes + background (last); fc_reg = 4 per class, no background.
    nc = len(src.class_names)
    linear("roi_head.bbox_head.shared_fcs.0", src.fc_channels, c * 7 * 7)
    linear("roi_head.bbox_head.shared_fcs.1", src.fc_channels, src.fc_channels)
    linear("roi_head.bbox_head.fc_cls", nc + 1, src.fc_channels)
    linear("roi_head.bbox_head.fc_reg", 4 * nc, src.fc_channels)
    # FCNMaskHead: ConvModules, a stride-2 ConvTranspose2d (weight: in, out, 2, 2), 1x1 logits per class.
    m = src.mask_channels
    for i in range(src.mask_convs):
        conv(f"roi_head.mask_head.convs.{i}.conv", m, c if i == 0 else m, 3, bias=True)
    sd["roi_head.mask_head.upsample.weight"] = torch.randn(m, m, 2, 2, generator=g) / math.sqrt(m * 4)
    sd["roi_head.mask_head.upsample.bias"] = 0.1 * torch.randn(m, generator=g)
    conv("roi_head.mask_head.conv_logits", nc, m, 1, bias=True)
    return sd


def _save(path: Path, sd: dict, classes=NUIMAGES_CLASSES) -> Path:
    """As mmdet 2.x saves it: ``meta`` with numpy values and CLASSES, then the state dict."""
    torch.save({"meta": {"CLASSES": tuple(classes), "mmdet_version": "2.5.0", "epoch": np.int64(12),
                         "iter": np.int64(44000)}, "state_dict": sd}, path)
    return path


def _tiny_images(tiny_dataset, n: int = 1) -> torch.Tensor:
    """(n, 6, 3, 48, 128) normalised camera images of the tiny synthetic dataset's first samples."""
    from x3kd_core.data.nuscenes import NuScenesDataset, NuScenesSource, collate_samples
    from x3kd_core.experiment import load_experiment, loader_config, open_nuscenes

    dataroot, _ = tiny_dataset
    exp = load_experiment(REPO / "config" / "train" / "instance_seg_tiny.yaml", [f"data.dataroot={dataroot}"])
    nusc = open_nuscenes(exp)
    ds = NuScenesDataset(NuScenesSource(nusc.dataroot, loader_config(exp, exp.data.val_split, training=False), nusc=nusc))
    return collate_samples([ds[i] for i in range(n)]).images


# ------------------------------------------------------------------------------ key set and rows


def test_full_nuimages_config_fills_every_parameter_from_every_key():
    src = KNOWN_MASKRCNN_CONFIGS[NUIM]
    sd = mmdet_maskrcnn_state_dict(src)
    mapped = maskrcnn_state_dict(sd, src)
    model = InstanceSegmenter(src.segmenter_config())
    assert set(mapped) == set(model.state_dict()) and len(mapped) == len(sd)
    model.load_state_dict(mapped)  # strict
    # Parameters: the mmdet ones plus torchvision's never-read background slots (4 box deltas and
    # one mask channel, each with a bias) and nothing else.
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    mmdet_params = sum(v.numel() for k, v in sd.items() if not k.endswith(buffers))
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == mmdet_params + 4 * (1024 + 1) + (256 + 1)
    assert 43.5e6 < n_params < 44.2e6  # Mask R-CNN R50-FPN's published ~44 M, less 70 of COCO's 80 class rows


def test_missing_extra_and_misshaped_keys_are_named():
    sd = mmdet_maskrcnn_state_dict(TINY)
    dropped = dict(sd)
    del dropped["neck.fpn_convs.2.conv.bias"]
    with pytest.raises(CheckpointError, match=r"missing 1: \['model.backbone.fpn.layer_blocks.2.0.bias'\]"):
        maskrcnn_state_dict(dropped, TINY)
    cascade = dict(sd, **{"roi_head.bbox_head.1.shared_fcs.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"not in the mirror 1: \['roi_head.bbox_head.1.shared_fcs.0.weight'\]"):
        maskrcnn_state_dict(cascade, TINY)
    wide = dict(sd, **{"rpn_head.rpn_conv.weight": torch.zeros(16, 32, 3, 3)})
    with pytest.raises(CheckpointError,
                       match=r"rpn.head.conv.0.0.weight has shape \(16, 32, 3, 3\).*needs \(16, 16, 3, 3\)"):
        maskrcnn_state_dict(wide, TINY)
    agnostic = dict(sd, **{"roi_head.bbox_head.fc_reg.weight": torch.zeros(4, 32)})
    with pytest.raises(CheckpointError, match="class-agnostic regression"):
        maskrcnn_state_dict(agnostic, TINY)
    # mmdet 3.x keeps its normalisation constants as buffers: not weights, not an error.
    assert len(maskrcnn_state_dict(dict(sd, **{"data_preprocessor.mean": torch.zeros(3, 1, 1)}), TINY)) == len(sd)


def test_class_rows_move_to_the_x3kd_class_slot_and_background_to_row_0():
    sd = mmdet_maskrcnn_state_dict(TINY)
    out = maskrcnn_state_dict(sd, TINY)
    cls_w, cls_b = sd["roi_head.bbox_head.fc_cls.weight"], sd["roi_head.bbox_head.fc_cls.bias"]
    reg_w = sd["roi_head.bbox_head.fc_reg.weight"]
    logit_w = sd["roi_head.mask_head.conv_logits.weight"]
    p = "model.roi_heads."
    # nuImages order: car truck trailer bus construction_vehicle bicycle motorcycle pedestrian traffic_cone barrier
    # x3kd order:     car truck construction_vehicle bus trailer barrier motorcycle bicycle pedestrian traffic_cone
    for mm, x3 in ((0, 0), (2, 4), (4, 2), (5, 7), (9, 5), (8, 9)):
        assert torch.equal(out[p + "box_predictor.cls_score.weight"][x3 + 1], cls_w[mm])
        assert torch.equal(out[p + "box_predictor.cls_score.bias"][x3 + 1], cls_b[mm])
        assert torch.equal(out[p + "box_predictor.bbox_pred.weight"][4 * (x3 + 1):4 * (x3 + 2)], reg_w[4 * mm:4 * mm + 4])
        assert torch.equal(out[p + "mask_predictor.mask_fcn_logits.weight"][x3 + 1], logit_w[mm])
    assert torch.equal(out[p + "box_predictor.cls_score.weight"][0], cls_w[10])  # mmdet's background is its last row
    assert torch.equal(out[p + "box_predictor.cls_score.bias"][0], cls_b[10])
    assert not out[p + "box_predictor.bbox_pred.weight"][:4].any() and not out[p + "mask_predictor.mask_fcn_logits.bias"][0]
    # Everything else is copied untouched.
    assert torch.equal(out["model.backbone.body.layer3.0.downsample.1.running_var"],
                       sd["backbone.layer3.0.downsample.1.running_var"])
    assert torch.equal(out["model.roi_heads.mask_predictor.conv5_mask.weight"], sd["roi_head.mask_head.upsample.weight"])


def test_a_class_mmdet_favours_is_the_x3kd_class_predicted(tiny_dataset, tmp_path):
    """Behaviour, not only rows: a classifier that always says mmdet label 2 ('trailer') and a mask
    head that is sure only for that class give x3kd detections of 'trailer' and masks in its channel."""
    sd = mmdet_maskrcnn_state_dict(TINY, seed=1)
    sd["roi_head.bbox_head.fc_cls.weight"].zero_()
    sd["roi_head.bbox_head.fc_cls.bias"].copy_(torch.full((11,), -5.0))
    sd["roi_head.bbox_head.fc_cls.bias"][2] = 10.0
    sd["roi_head.mask_head.conv_logits.weight"].zero_()
    sd["roi_head.mask_head.conv_logits.bias"].copy_(torch.full((10,), -20.0))
    sd["roi_head.mask_head.conv_logits.bias"][2] = 20.0
    teacher = convert_maskrcnn(_save(tmp_path / "m.pth", sd), TINY, tmp_path / "teacher.pt")
    from x3kd_core.experiment.loader import load_model

    model, _ = load_model(teacher, kinds=("instance_seg",))
    images = _tiny_images(tiny_dataset)
    preds = model.predict(images)
    trailer = DETECTION_CLASSES.index("trailer")
    assert sum(len(p) for p in preds[0]) > 0
    assert all((p.labels == trailer).all() for p in preds[0])
    dense = model.dense_from_predictions(preds, images.shape[-2:])  # what mask_targets returns
    assert dense.shape == (1, 6, 10, 48, 128)
    others = torch.cat([dense[:, :, :trailer], dense[:, :, trailer + 1:]], dim=2)
    assert float(dense[:, :, trailer].max()) > 0.9 and float(others.max()) == 0.0


def test_converted_teacher_runs_on_tiny_dataset_images(tiny_dataset, tmp_path):
    from x3kd_core.experiment.build import task_from_checkpoint
    from x3kd_core.experiment.loader import load_model
    from x3kd_core.models.teachers.rcnn_ops import AlignedMultiScaleRoIAlign, GridSamplePasteTransform

    sd = mmdet_maskrcnn_state_dict(TINY, seed=2)
    teacher = convert_maskrcnn(_save(tmp_path / "m.pth", sd), TINY, tmp_path / "teacher.pt")
    model, exp = load_model(teacher, kinds=("instance_seg",))
    assert exp.kind == "instance_seg" and exp.model.conventions == "mmdet" and exp.model.source == "tiny-test"
    assert exp.image_hw == (48, 128) and exp.model.anchor_sizes_px == (8, 16, 32, 64, 128)
    assert isinstance(model.model.roi_heads.mask_roi_pool, AlignedMultiScaleRoIAlign)
    assert isinstance(model.model.transform, GridSamplePasteTransform)
    torch.testing.assert_close(model.model.backbone.fpn.inner_blocks[1][0].weight, sd["neck.lateral_convs.1.conv.weight"])
    images = _tiny_images(tiny_dataset, n=2)
    dense = model.mask_targets(images)
    assert dense.shape == (2, 6, 10, 48, 128) and float(dense.min()) >= 0.0 and float(dense.max()) <= 1.0
    assert float(dense.max()) > 0.0  # random weights still detect something above score_thr
    state = torch.load(teacher, map_location="cpu", weights_only=True)
    assert state["converted_from"]["classes"] == list(NUIMAGES_CLASSES)
    assert state["converted_from"]["meta"] == {"mmdet_version": "2.5.0"}
    task, _ = task_from_checkpoint(teacher, kinds=("instance_seg",))
    assert type(task).__name__ == "InstanceSegTask"


# ------------------------------------------------------------------------------ classes and safety


def test_bad_class_lists_are_errors_naming_the_classes(tmp_path):
    with pytest.raises(ConfigError, match=r"classes \['animal'\] are not nuScenes detection classes"):
        dataclasses.replace(TINY, class_names=NUIMAGES_CLASSES[:9] + ("animal",))
    with pytest.raises(ConfigError, match=r"duplicated: \['car'\], missing: \['barrier'\]"):
        dataclasses.replace(TINY, class_names=NUIMAGES_CLASSES[:9] + ("car",))
    swapped = list(NUIMAGES_CLASSES)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    src = _save(tmp_path / "m.pth", mmdet_maskrcnn_state_dict(TINY), classes=swapped)
    with pytest.raises(CheckpointError,
                       match=r"classes \['car', 'truck', 'bus', 'trailer'.*differ.*\['car', 'truck', 'trailer', 'bus'"):
        convert_maskrcnn(src, TINY, tmp_path / "out.pt")
    # mmdet 3.x records them under dataset_meta; the same list as the config's converts.
    torch.save({"meta": {"dataset_meta": {"classes": NUIMAGES_CLASSES}}, "state_dict": mmdet_maskrcnn_state_dict(TINY)}, src)
    assert convert_maskrcnn(src, TINY, tmp_path / "ok.pt").is_file()
    with pytest.raises(ConfigError, match="known: "):
        convert_maskrcnn(src, "mask-rcnn_r50_caffe_fpn_1x_nuim", tmp_path / "x.pt")


class _Hook:
    pass


def test_pickled_objects_in_meta_are_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"meta": {"hook": _Hook()}, "state_dict": mmdet_maskrcnn_state_dict(TINY)}, bad)
    with pytest.raises(CheckpointError, match="_Hook"):
        convert_maskrcnn(bad, TINY, tmp_path / "out.pt")


# ------------------------------------------------------------------------------ mmdet conventions


def test_anchors_are_mmdets_unrounded_at_nominal_strides():
    gen = FixedStrideAnchorGenerator([(32,), (512,)], [(0.5, 1.0, 2.0)] * 2, strides=(4, 64))
    from torchvision.models.detection.image_list import ImageList

    # A padded 736 x 1312 image: its stride-64 map is 12 x 21 (torchvision would infer stride 61 / 62).
    images = ImageList(torch.zeros(1, 3, 736, 1312), [(736, 1312)])
    (anchors,) = gen(images, [torch.zeros(1, 1, 184, 328), torch.zeros(1, 1, 12, 21)])
    r = math.sqrt(0.5)
    # First location, ratio 0.5 (h / w): w = 32 / sqrt(0.5), h = 32 * sqrt(0.5), centred on (0, 0).
    torch.testing.assert_close(anchors[0], torch.tensor([-16 / r, -16 * r, 16 / r, 16 * r]))
    torch.testing.assert_close(anchors[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    # Last anchor of P6: location (11, 20) at stride 64, ratio 2.
    torch.testing.assert_close(anchors[-1], torch.tensor([1280 - 256 * r, 704 - 256 / r, 1280 + 256 * r, 704 + 256 / r]))
    assert anchors.shape == ((184 * 328 + 12 * 21) * 3, 4)


def test_roi_align_samples_half_pixel_aligned_and_picks_mmdets_level():
    pool = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], (4, 8, 16, 32), output_size=2, sampling_ratio=2)
    # sqrt(area) 111, 112, 223, 224, 448 and 900 px (the same thresholds as torchvision's LevelMapper).
    boxes = torch.tensor([[0, 0, 111, 111], [0, 0, 112, 112], [0, 0, 223, 223], [0, 0, 112, 448], [0, 0, 448, 448],
                          [0, 0, 900, 900.0]])
    assert pool.levels(boxes).tolist() == [0, 1, 1, 2, 3, 3]
    # Feature value = its column index: pooled bin j of box x0..x1 on level stride s averages the ramp
    # at x = (x0 + (j + 0.5) * (x1 - x0) / 2) / s - 0.5 (the half-pixel shift of aligned=True).
    ramp = torch.arange(64.0).expand(1, 1, 64, 64)
    feats = {str(k): ramp.clone() for k in range(4)}
    box = torch.tensor([[40.0, 40.0, 80.0, 80.0]])  # sqrt(area) 40 -> level 0, stride 4
    out = pool(feats, [box], [(256, 256)])
    expect = [(40 + (j + 0.5) * 20) / 4 - 0.5 for j in range(2)]
    torch.testing.assert_close(out[0, 0, 0], torch.tensor(expect))


def test_mask_paste_covers_the_pixels_whose_centres_lie_in_the_box():
    masks = torch.ones(1, 1, 28, 28)
    out = paste_masks_grid_sample(masks, torch.tensor([[2.0, 3.0, 10.0, 9.0]]), (12, 14))
    expect = torch.zeros(12, 14)
    expect[3:9, 2:10] = 1.0
    torch.testing.assert_close(out[0, 0], expect)
    # A 112 px box stretches each of the 28 mask cells over 4 px: the blend with zero spans 2 px on
    # each side of the box edge (1 - 0.375 at pixel 20, 0.375 at 19, 0.125 at 18), but only one
    # pixel beyond the box is pasted (mmdet's box + 1 px region).
    wide = paste_masks_grid_sample(masks, torch.tensor([[20.0, 20.0, 132.0, 132.0]]), (160, 160))[0, 0]
    torch.testing.assert_close(wide[60, 17:23], torch.tensor([0.0, 0.0, 0.375, 0.625, 0.875, 1.0]))
    torch.testing.assert_close(wide[60, 129:135], torch.tensor([1.0, 0.875, 0.625, 0.375, 0.0, 0.0]))
    assert wide[22:130, 22:130].min().item() == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------ config files and CLI


def _mmdet3d_nuim_model_config() -> dict:
    """mmdet3d's configs/_base_/models/mask-rcnn_r50_fpn.py with configs/nuimages/mask-rcnn_r50_fpn_1x_nuim.py's
    num_classes=10, as ``Config.fromfile(...).model`` gives it (losses and assigners left out)."""
    coder = lambda stds: dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=stds)  # noqa: E731
    extractor = lambda size: dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=size,  # noqa: E731
                                  sampling_ratio=0), out_channels=256, featmap_strides=[4, 8, 16, 32])
    return dict(
        type="MaskRCNN", _scope_="mmdet",
        backbone=dict(type="ResNet", depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                      norm_cfg=dict(type="BN", requires_grad=True), norm_eval=True, style="pytorch"),
        neck=dict(type="FPN", in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5),
        rpn_head=dict(type="RPNHead", in_channels=256, feat_channels=256,
                      anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                            strides=[4, 8, 16, 32, 64]),
                      bbox_coder=coder([1.0, 1.0, 1.0, 1.0]), loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True)),
        roi_head=dict(
            type="StandardRoIHead", bbox_roi_extractor=extractor(7),
            bbox_head=dict(type="Shared2FCBBoxHead", in_channels=256, fc_out_channels=1024, roi_feat_size=7,
                           num_classes=10, bbox_coder=coder([0.1, 0.1, 0.2, 0.2]), reg_class_agnostic=False,
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False)),
            mask_roi_extractor=extractor(14),
            mask_head=dict(type="FCNMaskHead", num_convs=4, in_channels=256, conv_out_channels=256, num_classes=10)),
        train_cfg=dict(rpn=dict(sampler=dict(type="RandomSampler", num=256)),
                       rcnn=dict(sampler=dict(type="RandomSampler", num=512), mask_size=28)),
        test_cfg=dict(rpn=dict(nms_across_levels=False, nms_pre=1000, nms_post=1000, max_per_img=1000,
                               nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
                      rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100,
                                mask_thr_binary=0.5)),
    )


@pytest.mark.parametrize("name", sorted(KNOWN_MASKRCNN_CONFIGS))
def test_known_configs_equal_what_the_mmdet3d_config_files_say(name):
    got = config_from_mmdet_model(_mmdet3d_nuim_model_config(), NUIMAGES_CLASSES, test_scale=(1600, 900), source=name)
    assert got == KNOWN_MASKRCNN_CONFIGS[name]
    seg = got.segmenter_config()
    assert seg.anchor_sizes_px == (32, 64, 128, 256, 512) and (seg.min_size_px, seg.max_size_px) == (900, 1600)


def test_unsupported_mmdet_settings_are_refused_by_name():
    caffe = _mmdet3d_nuim_model_config()
    caffe["backbone"]["style"] = "caffe"
    with pytest.raises(ConfigError, match="style caffe"):
        config_from_mmdet_model(caffe, NUIMAGES_CLASSES)
    agnostic = _mmdet3d_nuim_model_config()
    agnostic["roi_head"]["bbox_head"]["reg_class_agnostic"] = True
    with pytest.raises(ConfigError, match="box head Shared2FCBBoxHead"):
        config_from_mmdet_model(agnostic, NUIMAGES_CLASSES)
    unaligned = _mmdet3d_nuim_model_config()
    unaligned["roi_head"]["mask_roi_extractor"]["roi_layer"]["aligned"] = False
    with pytest.raises(ConfigError, match="RoI extractor"):
        config_from_mmdet_model(unaligned, NUIMAGES_CLASSES)
    with pytest.raises(ConfigError, match="10 box / 10 mask classes for 9 class names"):
        config_from_mmdet_model(_mmdet3d_nuim_model_config(), NUIMAGES_CLASSES[:9])
    wide_stem = _mmdet3d_nuim_model_config()
    wide_stem["backbone"].update(base_channels=8, stem_channels=16)
    with pytest.raises(ConfigError, match="stem_channels 16"):
        config_from_mmdet_model(wide_stem, NUIMAGES_CLASSES)


def test_cli_convert_writes_a_checkpoint_load_model_loads(tmp_path, capsys, monkeypatch):
    from x3kd_core.cli import main
    from x3kd_core.experiment.loader import load_model

    # The CLI offers the known nuImages configs; a CI-size entry is registered beside them for speed.
    monkeypatch.setitem(KNOWN_MASKRCNN_CONFIGS, "tiny-test", TINY)
    src = _save(tmp_path / "m.pth", mmdet_maskrcnn_state_dict(TINY, seed=3))
    out = tmp_path / "teacher.pt"
    assert main(["convert", "mmdet-maskrcnn", "--checkpoint", str(src), "--config-name", "tiny-test",
                 "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["kind"] == "instance_seg" and line["backbone"] == "resnet18" and line["classes"][2] == "trailer"
    model, exp = load_model(out, kinds=("instance_seg",))
    assert isinstance(model, InstanceSegmenter) and exp.name == "mmdet:tiny-test"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, src)
    assert main(["convert", "mmdet-maskrcnn", "--checkpoint", str(src), "--config-name", NUIM,
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not match" in capsys.readouterr().err


def test_converted_teacher_drives_a_tiny_x_is_run(tiny_dataset, tmp_path):
    """`x3kd convert` output as `--teachers instance_seg=...`: X-IS from the converted Mask R-CNN, one
    step, live and through the teacher-output cache (whose grid is the student's, not the teacher's)."""
    from x3kd_core.cli import main

    dataroot, _ = tiny_dataset
    teacher = convert_maskrcnn(_save(tmp_path / "m.pth", mmdet_maskrcnn_state_dict(TINY, seed=4)), TINY,
                               tmp_path / "teacher.pt")
    base = ["train", "--experiment", str(REPO / "config" / "train" / "student_tiny.yaml"), "--distill", "x-is",
            "--device", "cpu", "--set", f"data.dataroot={dataroot}", "--set", "train.max_steps=1",
            "--set", "data.max_train_samples=2", "--set", "augment.image={}"]
    assert main(base + ["--out", str(tmp_path / "r"), "--teachers", f"instance_seg={teacher}"]) == 0
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert report["distill"] == ["x_is"] and math.isfinite(report["last_losses"]["x_is/mask"])
    assert main(base + ["--out", str(tmp_path / "rc"), "--teachers",
                        f"instance_seg={teacher},cache={tmp_path / 'cache'}"]) == 0
    assert (tmp_path / "cache" / "instance_seg" / "meta.json").is_file()


def test_the_fixture_writers_ci_size_config_is_one_the_mirror_builds():
    """tools/mmdet3d_fixtures.py shrinks mmdet3d's config for the parity fixture; without mmdet at hand,
    check here that the shrunk config (applied to the transcribed base config) still parses and builds."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mmdet3d_fixtures", REPO / "tools" / "mmdet3d_fixtures.py")
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)
    small = writer.small_maskrcnn_config(_mmdet3d_nuim_model_config(), len(NUIMAGES_CLASSES))
    h, w = writer.MASKRCNN_SMALL["image_hw"]
    src = config_from_mmdet_model(small, NUIMAGES_CLASSES, test_scale=(w, h), source="fixture")
    assert (src.depth, src.backbone_width, src.fpn_channels, src.fc_channels, src.mask_convs, src.anchor_scale) == (
        18, 8, 16, 32, 2, 2)
    assert src.rpn_nms_pre == 100 and src.max_per_img == 20
    maskrcnn_state_dict(mmdet_maskrcnn_state_dict(src), src)  # the layout the writer's model will save
