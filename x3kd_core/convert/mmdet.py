"""OpenMMLab mmdet Mask R-CNN (nuImages) checkpoint -> x3kd instance-segmentation teacher checkpoint.

``x3kd convert mmdet-maskrcnn --checkpoint X.pth --config-name NAME --out teacher.pt`` calls
:func:`convert_maskrcnn`. NAME is one of :data:`KNOWN_MASKRCNN_CONFIGS` (mmdet3d's
``configs/nuimages/*.py`` file names, without ``.py``); each entry is the typed
:class:`MaskRCNNSource` the config file implies. The output is an ordinary ``x3kd train``
checkpoint of kind ``InstanceSegTask`` whose model is an
:class:`~x3kd_core.models.teachers.instance_seg.InstanceSegmenter` with ``conventions="mmdet"``,
so ``load_model`` / ``task_from_checkpoint``, ``teachers.instance_seg`` (X-IS) and the
teacher-output cache load it like a teacher trained here.

Mapping (mmdet 2.x and 3.x save the same names for these modules):

============================================  ==============================================
mmdet (``MaskRCNN``)                          x3kd (``InstanceSegmenter.model``, torchvision)
============================================  ==============================================
``backbone.*`` (ResNet, pytorch style)        ``backbone.body.*`` (same layer names)
``neck.lateral_convs.i.conv``                 ``backbone.fpn.inner_blocks.i.0``
``neck.fpn_convs.i.conv``                     ``backbone.fpn.layer_blocks.i.0``
``rpn_head.rpn_conv / rpn_cls / rpn_reg``     ``rpn.head.conv.0.0 / cls_logits / bbox_pred``
``roi_head.bbox_head.shared_fcs.0 / 1``       ``roi_heads.box_head.fc6 / fc7``
``roi_head.bbox_head.fc_cls``                 ``roi_heads.box_predictor.cls_score`` (rows moved)
``roi_head.bbox_head.fc_reg``                 ``roi_heads.box_predictor.bbox_pred`` (rows moved)
``roi_head.mask_head.convs.i.conv``           ``roi_heads.mask_head.i.0``
``roi_head.mask_head.upsample``               ``roi_heads.mask_predictor.conv5_mask``
``roi_head.mask_head.conv_logits``            ``roi_heads.mask_predictor.mask_fcn_logits`` (rows moved)
============================================  ==============================================

Class rows: mmdet's classifier has its ``num_classes`` foreground rows in the config's class order
and background LAST; torchvision's has background FIRST and x3kd's ``1 + DETECTION_CLASSES``
index after it. The class-specific box deltas (``4 * num_classes`` rows, none for background) and
mask logits (``num_classes`` channels) move the same way; torchvision's background slots, which
its post-processing never reads, are zero. The RPN has one sigmoid logit per anchor in both.

Not proven here: numerical parity with a real mmdet forward. The geometry differences known
between the toolboxes are mirrored (``conventions="mmdet"``, see
:mod:`~x3kd_core.models.teachers.rcnn_ops`), the image resize is torchvision's (bilinear on the
normalised tensor, size floored) where mmdet resizes the uint8 image with OpenCV (size rounded),
and BatchNorm runs on its running statistics in eval mode as mmdet's ``norm_eval=True`` does.
``tools/make_mmdet3d_fixtures.sh`` writes a reference fixture from mmdet itself; its test
(``test/x3kd_core/convert/test_mmdet_parity.py``) skips while the fixture is absent.

Safety: read with :func:`~x3kd_core.convert.mmdet3d.load_openmmlab_checkpoint`
(``weights_only=True``, numpy reconstructors allowed for ``meta``, anything else refused by name).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from x3kd_core.checkpoint import CHECKPOINT_FORMAT, CheckpointError, save_checkpoint
from x3kd_core.config import BevGridConfig, ConfigError, TrainConfig, to_dict
from x3kd_core.convert.mmdet3d import config_getter, config_requirer, load_checkpoint_of_classes, match_state_dict
from x3kd_core.models.teachers.instance_seg import InstanceSegConfig, InstanceSegmenter
from x3kd_core.structures import DETECTION_CLASSES

__all__ = [
    "KNOWN_MASKRCNN_CONFIGS",
    "NUIMAGES_CLASSES",
    "MaskRCNNSource",
    "class_permutation",
    "config_from_mmdet_model",
    "convert_maskrcnn",
    "maskrcnn_state_dict",
]

#: mmdet3d's configs/_base_/datasets/nuim-instance.py ``class_names`` (the label order of the zoo models).
NUIMAGES_CLASSES: tuple[str, ...] = ("car", "truck", "trailer", "bus", "construction_vehicle", "bicycle",
                                     "motorcycle", "pedestrian", "traffic_cone", "barrier")

_DEPTH_TO_RESNET = {18: "resnet18", 34: "resnet34", 50: "resnet50"}


def class_permutation(class_names: tuple[str, ...] | list[str]) -> list[int]:
    """mmdet label ``i`` -> x3kd ``DETECTION_CLASSES`` index.

    Raises:
        ConfigError: a name x3kd does not know, a duplicate, or a detection class missing (the
            teacher must score every class X-IS distils); the names are listed.
    """
    names = list(class_names)
    unknown = [c for c in names if c not in DETECTION_CLASSES]
    if unknown:
        raise ConfigError(f"classes {unknown} are not nuScenes detection classes (x3kd knows {list(DETECTION_CLASSES)}; "
                          f"the checkpoint's classes: {names})")
    dup = sorted({c for c in names if names.count(c) > 1})
    missing = [c for c in DETECTION_CLASSES if c not in names]
    if dup or missing:
        raise ConfigError(f"the checkpoint's classes {names} must name each nuScenes detection class once "
                          f"(duplicated: {dup}, missing: {missing})")
    return [DETECTION_CLASSES.index(c) for c in names]


@dataclass(frozen=True)
class MaskRCNNSource:
    """What an mmdet Mask R-CNN config implies for the x3kd mirror (defaults: the R50-FPN base config).

    Architecture: ``depth`` (ResNet 18 / 34 / 50, pytorch style), ``backbone_width`` (its
    ``base_channels`` = ``stem_channels``, 64 in every zoo model), ``fpn_channels`` (FPN
    ``out_channels`` = RPN ``feat_channels`` = RoI head input), ``fc_channels`` (the two shared
    fcs of ``Shared2FCBBoxHead``), ``mask_convs`` / ``mask_channels`` (``FCNMaskHead``).
    Anchors: ``anchor_scale`` x the level stride (4..64) at each of ``anchor_ratios`` (h / w).
    Test time: ``test_scale`` (long, short) px of mmdet's keep-ratio resize; RPN ``nms_pre`` per
    level and ``max_per_img`` proposals (``rpn_nms_pre``, ``rpn_max_per_img``; IoU 0.7);
    ``score_thr`` / ``max_per_img`` of the RoI head (IoU 0.5).
    Train time (used only if the teacher is fine-tuned here): ``rpn_sample_num``,
    ``rcnn_sample_num`` anchors / RoIs sampled per image.
    class_names: the labels in mmdet's order (``fc_cls`` rows before background). source: the
    config name.
    """

    source: str = ""
    class_names: tuple[str, ...] = NUIMAGES_CLASSES
    depth: int = 50
    backbone_width: int = 64
    fpn_channels: int = 256
    fc_channels: int = 1024
    mask_convs: int = 4
    mask_channels: int = 256
    anchor_scale: int = 8
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    test_scale: tuple[int, int] = (1600, 900)
    rpn_nms_pre: int = 1000
    rpn_max_per_img: int = 1000
    score_thr: float = 0.05
    max_per_img: int = 100
    rpn_sample_num: int = 256
    rcnn_sample_num: int = 512

    def __post_init__(self) -> None:
        if self.depth not in _DEPTH_TO_RESNET:
            raise ConfigError(f"ResNet depth {self.depth} is not mirrored (supported: {sorted(_DEPTH_TO_RESNET)})")
        class_permutation(self.class_names)  # raises on a class x3kd does not know
        if self.rpn_nms_pre != self.rpn_max_per_img:
            raise ConfigError(f"rpn nms_pre {self.rpn_nms_pre} != max_per_img {self.rpn_max_per_img}: the mirror "
                              "keeps one number for both")

    def segmenter_config(self) -> InstanceSegConfig:
        """The :class:`InstanceSegConfig` that builds this architecture with mmdet's conventions."""
        long_px, short_px = self.test_scale
        return InstanceSegConfig(
            backbone=_DEPTH_TO_RESNET[self.depth],  # type: ignore[arg-type]
            pretrained_backbone=None,
            backbone_width=self.backbone_width,
            fpn_channels=self.fpn_channels,
            box_head_dim=self.fc_channels,
            mask_head_channels=self.mask_channels,
            mask_head_layers=self.mask_convs,
            anchor_sizes_px=tuple(self.anchor_scale * s for s in (4, 8, 16, 32, 64)),
            anchor_ratios=tuple(self.anchor_ratios),
            # torchvision's resize rule min(min_size / short, max_size / long) is mmdet's keep-ratio rule.
            min_size_px=short_px,
            max_size_px=long_px,
            score_threshold=self.score_thr,
            detections_per_image=self.max_per_img,
            rpn_proposals_train=2000,  # mmdet's train-time nms_pre (its max_per_img is 1000)
            rpn_proposals_test=self.rpn_nms_pre,
            rpn_batch_size_per_image=self.rpn_sample_num,
            box_batch_size_per_image=self.rcnn_sample_num,
            conventions="mmdet",
            source=self.source,
        )


#: mmdet3d config name (configs/nuimages/) -> what it implies. Both are the R50-FPN base model with
#: 10 classes; they differ in initialisation (ImageNet vs a COCO Mask R-CNN) only.
KNOWN_MASKRCNN_CONFIGS: dict[str, MaskRCNNSource] = {
    name: MaskRCNNSource(source=name)
    for name in ("mask-rcnn_r50_fpn_1x_nuim", "mask-rcnn_r50_fpn_coco-2x_1x_nuim")
}


def _rename(key: str) -> str | None:
    """mmdet key -> key in ``InstanceSegmenter.model`` (None: not part of a Mask R-CNN R-FPN)."""
    def sub(prefix: str, new: str) -> str | None:
        return new + key[len(prefix):] if key.startswith(prefix) else None

    for prefix, new in (("backbone.", "backbone.body."), ("rpn_head.rpn_conv.", "rpn.head.conv.0.0."),
                        ("rpn_head.rpn_cls.", "rpn.head.cls_logits."), ("rpn_head.rpn_reg.", "rpn.head.bbox_pred."),
                        ("roi_head.bbox_head.shared_fcs.0.", "roi_heads.box_head.fc6."),
                        ("roi_head.bbox_head.shared_fcs.1.", "roi_heads.box_head.fc7."),
                        ("roi_head.bbox_head.fc_cls.", "roi_heads.box_predictor.cls_score."),
                        ("roi_head.bbox_head.fc_reg.", "roi_heads.box_predictor.bbox_pred."),
                        ("roi_head.mask_head.upsample.", "roi_heads.mask_predictor.conv5_mask."),
                        ("roi_head.mask_head.conv_logits.", "roi_heads.mask_predictor.mask_fcn_logits.")):
        out = sub(prefix, new)
        if out is not None:
            return out
    parts = key.split(".")
    # neck.lateral_convs.<i>.conv.<p> / neck.fpn_convs.<i>.conv.<p> / roi_head.mask_head.convs.<i>.conv.<p>
    if len(parts) == 5 and parts[0] == "neck" and parts[1] in ("lateral_convs", "fpn_convs") and parts[3] == "conv":
        block = "inner_blocks" if parts[1] == "lateral_convs" else "layer_blocks"
        return f"backbone.fpn.{block}.{parts[2]}.0.{parts[4]}"
    if len(parts) == 6 and parts[:3] == ["roi_head", "mask_head", "convs"] and parts[4] == "conv":
        return f"roi_heads.mask_head.{parts[3]}.0.{parts[5]}"
    return None


def _to_torchvision_rows(value: Tensor, perm: list[int], per_class: int, background: str) -> Tensor:
    """Move mmdet's per-class row blocks (``per_class`` rows each) to torchvision's class slots.

    background: ``"last"`` (fc_cls: one extra block after the classes, moved to slot 0) or
    ``"none"`` (fc_reg, conv_logits: slot 0 stays zero).
    """
    n = len(perm)
    out = value.new_zeros((per_class * (len(DETECTION_CLASSES) + 1),) + tuple(value.shape[1:]))
    for i, k in enumerate(perm):
        out[per_class * (k + 1):per_class * (k + 2)] = value[per_class * i:per_class * (i + 1)]
    if background == "last":
        out[:per_class] = value[per_class * n:per_class * (n + 1)]
    return out



def maskrcnn_state_dict(state: Mapping[str, Tensor], source: MaskRCNNSource,
                        where: str = "checkpoint") -> dict[str, Tensor]:
    """mmdet Mask R-CNN state dict -> :class:`InstanceSegmenter` state dict (renamed, rows moved, checked).

    Raises:
        CheckpointError: a key the mirror needs is missing, a key is left over (another
            architecture, e.g. a cascade or HTC head, a caffe-style or DCN backbone), or a shape
            differs; the first few are named.
    """
    perm = class_permutation(source.class_names)
    expected = InstanceSegmenter(source.segmenter_config()).state_dict()
    mapped: dict[str, Tensor] = {}
    stray = []
    for key, value in state.items():
        if key.startswith("data_preprocessor."):  # mmdet 3.x buffers of mean / std: not weights
            continue
        new = _rename(key)
        if new is None:
            stray.append(key)
            continue
        new = "model." + new
        if new.endswith("box_predictor.cls_score.weight") or new.endswith("box_predictor.cls_score.bias"):
            if value.shape[0] != len(perm) + 1:
                raise CheckpointError(f"{where}: {key} has {value.shape[0]} rows, {len(perm)} classes + background "
                                      f"need {len(perm) + 1} (class list {list(source.class_names)})")
            value = _to_torchvision_rows(value, perm, 1, "last")
        elif new.endswith("box_predictor.bbox_pred.weight") or new.endswith("box_predictor.bbox_pred.bias"):
            if value.shape[0] != 4 * len(perm):
                raise CheckpointError(f"{where}: {key} has {value.shape[0]} rows, class-specific boxes for "
                                      f"{len(perm)} classes need {4 * len(perm)} "
                                      "(class-agnostic regression is not mirrored)")
            value = _to_torchvision_rows(value, perm, 4, "none")
        elif new.endswith("mask_predictor.mask_fcn_logits.weight") or new.endswith("mask_predictor.mask_fcn_logits.bias"):
            if value.shape[0] != len(perm):
                raise CheckpointError(f"{where}: {key} has {value.shape[0]} channels, class-specific masks for "
                                      f"{len(perm)} classes need {len(perm)} (class-agnostic masks are not mirrored)")
            value = _to_torchvision_rows(value, perm, 1, "none")
        mapped[new] = value
    return match_state_dict(mapped, expected, stray, where, f"'{source.source or 'given'}' Mask R-CNN", source.source)


def config_from_mmdet_model(model: Mapping[str, Any], class_names: tuple[str, ...] | list[str],
                            test_scale: tuple[int, int] = (1600, 900), source: str = "") -> MaskRCNNSource:
    """An mmdet Mask R-CNN ``model`` config (``Config.fromfile(...).model`` as a dict) -> the typed source.

    ``class_names`` come from the dataset config (the model config holds only their number);
    ``test_scale`` is the (long, short) of the test pipeline's keep-ratio resize.

    Raises:
        ConfigError: a missing entry or a setting the mirror does not implement, named.
    """
    get = config_getter(model, "mmdet model config")
    require = config_requirer(f"mmdet model config ({source or 'given'})")

    def kind(node: Mapping) -> str:
        return str(node.get("type", "")).split(".")[-1]

    bb, neck, rpn, roi = get("backbone"), get("neck"), get("rpn_head"), get("roi_head")
    box, mask = roi["bbox_head"], roi["mask_head"]
    require(kind(model) == "MaskRCNN", f"detector {model.get('type')}")
    require(kind(bb) == "ResNet" and bb.get("style", "pytorch") == "pytorch", f"backbone {bb.get('type')} "
            f"style {bb.get('style')}")
    require(not bb.get("dcn") and not bb.get("plugins"), "a backbone with DCN / plugins")
    require(tuple(bb.get("out_indices", (0, 1, 2, 3))) == (0, 1, 2, 3), f"out_indices {bb.get('out_indices')}")
    width = int(bb.get("base_channels", 64))
    require(int(bb.get("stem_channels") or width) == width and not bb.get("deep_stem", False),
            f"a ResNet stem other than one 7x7 conv to base_channels (stem_channels {bb.get('stem_channels')}, "
            f"deep_stem {bb.get('deep_stem')})")
    require(kind(neck) == "FPN" and int(neck.get("num_outs", 0)) == 5 and not neck.get("add_extra_convs", False)
            and int(neck.get("start_level", 0)) == 0 and neck.get("norm_cfg") is None,
            "an FPN other than 5 outputs with a max-pooled P6, no norm")
    require(kind(rpn) == "RPNHead" and int(rpn.get("num_convs", 1)) == 1, f"RPN {rpn.get('type')}")
    require(int(rpn.get("feat_channels", neck["out_channels"])) == int(neck["out_channels"]),
            "an RPN conv width other than the FPN width")
    require(rpn.get("loss_cls", {}).get("use_sigmoid", True), "a softmax RPN")
    ag = rpn["anchor_generator"]
    require(kind(ag) == "AnchorGenerator" and tuple(ag["strides"]) == (4, 8, 16, 32, 64) and len(ag["scales"]) == 1
            and float(ag.get("center_offset", 0.0)) == 0.0, f"anchor generator {ag}")
    for what, coder, stds in (("rpn", rpn["bbox_coder"], (1.0, 1.0, 1.0, 1.0)),
                              ("bbox_head", box["bbox_coder"], (0.1, 0.1, 0.2, 0.2))):
        require(kind(coder) == "DeltaXYWHBBoxCoder" and tuple(float(v) for v in coder.get("target_means", (0,) * 4))
                == (0.0,) * 4 and tuple(float(v) for v in coder["target_stds"]) == stds,
                f"{what} box coder {coder} (the mirror's box coder weights are fixed to stds {stds})")
    require(kind(roi) == "StandardRoIHead", f"RoI head {roi.get('type')}")
    for extractor, size in ((roi["bbox_roi_extractor"], 7), (roi["mask_roi_extractor"], 14)):
        layer = extractor["roi_layer"]
        require(kind(layer) == "RoIAlign" and int(layer["output_size"]) == size
                and int(layer.get("sampling_ratio", 0)) == 0 and layer.get("aligned", True)
                and tuple(extractor["featmap_strides"]) == (4, 8, 16, 32)
                and float(extractor.get("finest_scale", 56)) == 56.0,
                f"RoI extractor {extractor}")
    require(kind(box) == "Shared2FCBBoxHead" and not box.get("reg_class_agnostic", False)
            and int(box.get("roi_feat_size", 7)) == 7, f"box head {box.get('type')} (class-specific, 7 x 7)")
    require(not box.get("loss_cls", {}).get("use_sigmoid", False), "a sigmoid box classifier")
    require(kind(mask) == "FCNMaskHead" and not mask.get("class_agnostic", False)
            and mask.get("upsample_cfg", {"type": "deconv"}).get("type") == "deconv"
            and int(mask.get("conv_kernel_size", 3)) == 3 and mask.get("norm_cfg") is None,
            f"mask head {mask.get('type')} (class-specific, deconv upsample, 3x3 convs, no norm)")
    num_classes = int(box["num_classes"])
    require(num_classes == int(mask["num_classes"]) == len(class_names),
            f"{box['num_classes']} box / {mask['num_classes']} mask classes for {len(class_names)} class names")
    test = get("test_cfg")
    rpn_test, rcnn_test = test["rpn"], test["rcnn"]
    require(float(rpn_test["nms"]["iou_threshold"]) == 0.7 and float(rcnn_test["nms"]["iou_threshold"]) == 0.5,
            "NMS IoU thresholds other than 0.7 (RPN) / 0.5 (RoI head)")
    require(not rpn_test.get("nms_across_levels", False), "RPN NMS across levels")
    train = model.get("train_cfg") or {}
    return MaskRCNNSource(
        source=source,
        class_names=tuple(class_names),
        depth=int(bb["depth"]),
        backbone_width=width,
        fpn_channels=int(neck["out_channels"]),
        fc_channels=int(box.get("fc_out_channels", 1024)),
        mask_convs=int(mask.get("num_convs", 4)),
        mask_channels=int(mask.get("conv_out_channels", 256)),
        anchor_scale=int(ag["scales"][0]),
        anchor_ratios=tuple(float(r) for r in ag["ratios"]),
        test_scale=(int(test_scale[0]), int(test_scale[1])),
        rpn_nms_pre=int(rpn_test["nms_pre"]),
        rpn_max_per_img=int(rpn_test.get("max_per_img", rpn_test.get("max_num", 1000))),
        score_thr=float(rcnn_test["score_thr"]),
        max_per_img=int(rcnn_test["max_per_img"]),
        rpn_sample_num=int(train.get("rpn", {}).get("sampler", {}).get("num", 256)),
        rcnn_sample_num=int(train.get("rcnn", {}).get("sampler", {}).get("num", 512)),
    )


def convert_maskrcnn(checkpoint: str | os.PathLike, source: str | MaskRCNNSource, out: str | os.PathLike,
                     grid: BevGridConfig | None = None) -> Path:
    """Write an x3kd instance-segmentation teacher checkpoint from an mmdet Mask R-CNN checkpoint.

    Args:
        checkpoint: the ``.pth`` of mmdet / mmdet3d (mmengine or mmcv format, or a bare state dict).
        source: a name of :data:`KNOWN_MASKRCNN_CONFIGS` or the typed source itself.
        out: the x3kd checkpoint to write.
        grid: the BEV grid recorded in the experiment (default: x3kd's default grid). A 2D teacher
            does not use it; distillation does not compare it for ``teachers.instance_seg``.

    Raises:
        ConfigError: unknown config name (the known ones listed).
        CheckpointError: unsafe / unreadable file, weights that do not fit, or classes recorded
            in the checkpoint's ``meta`` that differ from the config's (both lists named).
    """
    if isinstance(source, str):
        if source not in KNOWN_MASKRCNN_CONFIGS:
            raise ConfigError(f"unknown mmdet config '{source}'; known: {sorted(KNOWN_MASKRCNN_CONFIGS)}")
        source = KNOWN_MASKRCNN_CONFIGS[source]
    state, meta = load_checkpoint_of_classes(checkpoint, source.class_names, f"'{source.source}' config's")
    weights = maskrcnn_state_dict(state, source, where=str(checkpoint))

    # Imported here: the experiment schema pulls in every model config, the converter core does not need it.
    from x3kd_core.experiment.config import TASK_KINDS, DataConfig, ExperimentConfig
    from x3kd_core.experiment.loader import MODEL_PREFIX

    long_px, short_px = source.test_scale
    exp = ExperimentConfig(
        kind="instance_seg",
        model=source.segmenter_config(),
        grid=grid or BevGridConfig(),
        train=TrainConfig(max_steps=1),  # required by the schema; the weights were trained in mmdet
        data=DataConfig(image_hw=(short_px, long_px)),  # the images the teacher was tested on (landscape)
        name=f"mmdet:{source.source}",
    )
    prefix = MODEL_PREFIX["instance_seg"]
    state_out = {
        "format": CHECKPOINT_FORMAT,
        "kind": TASK_KINDS["instance_seg"],
        "config": to_dict(exp),
        "model": {prefix + k: v for k, v in weights.items()},
        "converted_from": {
            "file": os.path.basename(str(checkpoint)),
            "mmdet_config": source.source,
            "classes": list(source.class_names),
            "meta": {k: str(meta[k]) for k in ("mmdet_version", "mmdet3d_version", "mmengine_version", "mmcv_version",
                                               "time") if k in meta},
        },
        "finished": True,
    }
    return save_checkpoint(out, state_out, keep_previous=False)
