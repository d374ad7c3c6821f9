"""2D instance-segmentation teacher for X-IS: torchvision Mask R-CNN on every camera image.

Built from torchvision parts (``MaskRCNN`` + ``BackboneWithFPN`` over a ResNet), randomly
initialised unless a local ResNet state dict is given; nothing is downloaded. The same network can
instead carry an mmdet Mask R-CNN's weights (``x3kd convert mmdet-maskrcnn``,
:mod:`x3kd_core.convert.mmdet`), built with ``conventions="mmdet"``. Trained from the
dataset's per-camera instance maps (``Batch.instance_masks``), whose ids index the sample's 3D
boxes, so the 2D class of an instance is the class of its 3D box.

Class ids: Mask R-CNN's internal label 0 is background and ``1 + k`` is
``DETECTION_CLASSES[k]``; everything this module *returns* uses the x3kd ids ``k`` in
``[0, 10)``.

Outputs for distillation (both computed on the images as given, at their (H, W)):

* :meth:`InstanceSegmenter.predict` -> per camera :class:`InstancePredictions` (boxes, labels,
  scores, soft masks), i.e. the teacher's instances, to be used as pseudo-labels;
* :meth:`InstanceSegmenter.mask_targets` -> ``(B, N_cam, 10, H, W)`` float in [0, 1]: for each
  class ``k`` and pixel, the max over the teacher's detections of class ``k`` of
  ``score * mask_probability`` (0 where no detection of that class covers the pixel). A dense,
  fixed-shape target for a per-class foreground head on the student's perspective features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from x3kd_core.config import ConfigError
from x3kd_core.models.teachers.rcnn_ops import (
    AlignedMultiScaleRoIAlign,
    FixedStrideAnchorGenerator,
    GridSamplePasteTransform,
    SymmetricClampBoxCoder,
)
from x3kd_core.structures import DETECTION_CLASSES, Boxes3D

__all__ = [
    "InstanceSegConfig",
    "InstanceSegmenter",
    "InstancePredictions",
    "InstanceTargets",
    "instance_map_to_targets",
    "predictions_to_instance_map",
    "MASK_RCNN_LOSS_NAMES",
]

NUM_CLASSES = len(DETECTION_CLASSES)

#: Strides (px) of the FPN levels P2..P6 on the padded input image.
FPN_STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64)

#: Names of the loss terms returned by :meth:`InstanceSegmenter.loss` (torchvision's names).
MASK_RCNN_LOSS_NAMES: tuple[str, ...] = (
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "loss_objectness",
    "loss_rpn_box_reg",
)

_RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}


@dataclass(frozen=True)
class InstanceSegConfig:
    """Mask R-CNN teacher.

    backbone: torchvision ResNet architecture; ``pretrained_backbone``: None (random init) or the
        path of a torchvision ResNet state dict (``.pth``) loaded into it (never downloaded).
    backbone_width: channels of the ResNet stem and first stage (stage k has ``width * 2**k``
        planes); 64 is every standard ResNet. Narrower ones exist to mirror mmdet ResNets built with
        a smaller ``base_channels`` (the CI-size parity fixture of ``x3kd convert mmdet-maskrcnn``);
        they cannot take a torchvision ``pretrained_backbone``.
    fpn_channels: FPN width, also the width of the RoI heads' input.
    box_head_dim: hidden width of the two-layer box MLP; ``mask_head_channels``: width of each of
        the mask head's 3x3 convs (``mask_head_layers`` of them).
    anchor_sizes_px: one anchor size per FPN level (strides 4, 8, 16, 32, 64); the defaults of
        torchvision (32..512) suit 800 px images, ours are far smaller.
    min_size_px / max_size_px: torchvision's internal resize; set ``min_size_px`` to the image
        height (and ``max_size_px`` >= the width) to run at the input resolution.
    min_instance_area_px: instances with fewer visible pixels are not used as training targets
        (a few pixels of an occluded object teach nothing and destabilise the box loss).
    score_threshold / detections_per_image: post-processing of predictions.
    rpn_proposals_train / rpn_proposals_test: RoIs kept per image after the RPN (the same number
        is also the pre-NMS top-k per FPN level); torchvision's 2000 / 1000 are sized for 800 px.
    rpn_batch_size_per_image / box_batch_size_per_image: anchors / RoIs sampled for the losses.
    anchor_ratios: anchor height / width ratios at every level (ratio-major anchor order).
    conventions: ``torchvision`` (the default, for teachers trained here) or ``mmdet``: anchors,
        RoI pooling and mask pasting as OpenMMLab mmdet computes them (see
        :mod:`~x3kd_core.models.teachers.rcnn_ops`), for weights converted from an mmdet
        checkpoint (``x3kd convert mmdet-maskrcnn``).
    source: free text naming where the weights came from (the mmdet config of a converted
        teacher; "" for teachers trained here).
    """

    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    pretrained_backbone: Optional[str] = None
    backbone_width: int = 64
    fpn_channels: int = 256
    box_head_dim: int = 1024
    mask_head_channels: int = 256
    mask_head_layers: int = 4
    anchor_sizes_px: tuple[int, ...] = (16, 32, 64, 128, 256)
    min_size_px: int = 256
    max_size_px: int = 704
    min_instance_area_px: int = 16
    score_threshold: float = 0.05
    detections_per_image: int = 50
    rpn_proposals_train: int = 1000
    rpn_proposals_test: int = 500
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 256
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    conventions: Literal["torchvision", "mmdet"] = "torchvision"
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("backbone_width", "fpn_channels", "box_head_dim", "mask_head_channels", "mask_head_layers",
                     "min_size_px", "max_size_px", "detections_per_image", "rpn_proposals_train", "rpn_proposals_test",
                     "rpn_batch_size_per_image", "box_batch_size_per_image"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.backbone_width != 64 and self.pretrained_backbone is not None:
            raise ConfigError(f"pretrained_backbone needs the standard backbone_width 64, got {self.backbone_width}")
        if len(self.anchor_sizes_px) != 5:
            raise ConfigError(f"anchor_sizes_px needs one size per FPN level (5), got {len(self.anchor_sizes_px)}")
        if not self.anchor_ratios or min(self.anchor_ratios) <= 0:
            raise ConfigError(f"anchor_ratios must be positive, got {self.anchor_ratios}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1), got {self.score_threshold}")


@dataclass
class InstanceTargets:
    """Mask R-CNN targets of one image (torchvision's format, x3kd labels + 1).

    Fields:
        boxes: (K, 4) float x0, y0, x1, y1 (px, x1/y1 exclusive: the tight box of the mask).
        labels: (K,) int64 in [1, 10] (Mask R-CNN ids: ``1 + DETECTION_CLASSES`` index).
        masks: (K, H, W) uint8 binary.
        instance_ids: (K,) int64 the ids in the instance map (index into the sample's boxes).
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor
    instance_ids: Tensor

    def as_torchvision(self) -> dict[str, Tensor]:
        return {"boxes": self.boxes, "labels": self.labels, "masks": self.masks}


@dataclass
class InstancePredictions:
    """The teacher's instances in one camera image (x3kd class ids).

    Fields:
        boxes: (K, 4) float x0, y0, x1, y1 (px, in the input image).
        labels: (K,) int64 index into DETECTION_CLASSES.
        scores: (K,) float in [0, 1], sorted descending.
        masks: (K, H, W) float mask probability in [0, 1], at the input image size.
    """

    boxes: Tensor
    labels: Tensor
    scores: Tensor
    masks: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def instance_map_to_targets(
    instance_map: Tensor, box_labels: np.ndarray | Tensor, min_area_px: int = 1
) -> InstanceTargets:
    """One camera's instance map -> per-instance binary masks, tight 2D boxes and labels.

    Args:
        instance_map: (H, W) int64, index into the sample's boxes, -1 = background.
        box_labels: (N_boxes,) x3kd class id of each 3D box of the sample (``Boxes3D.label``).
        min_area_px: instances with fewer pixels are dropped.

    Returns:
        :class:`InstanceTargets` with instances in increasing id order.

    Raises:
        ValueError: an id is < -1 or >= N_boxes (masks and boxes out of sync).
    """
    if instance_map.ndim != 2:
        raise ValueError(f"instance_map must be (H, W), got {tuple(instance_map.shape)}")
    labels_all = torch.as_tensor(np.asarray(box_labels), dtype=torch.long, device=instance_map.device)
    ids, areas = torch.unique(instance_map, return_counts=True)
    fg = ids >= 0
    if bool((ids < -1).any()) or bool((ids[fg] >= labels_all.shape[0]).any()):
        raise ValueError(
            f"instance ids {ids.tolist()} out of range for {labels_all.shape[0]} boxes (-1 is background)"
        )
    keep = fg & (areas >= min_area_px)
    ids = ids[keep]
    h, w = instance_map.shape
    if ids.numel() == 0:
        return InstanceTargets(
            boxes=torch.zeros(0, 4, device=instance_map.device),
            labels=torch.zeros(0, dtype=torch.long, device=instance_map.device),
            masks=torch.zeros(0, h, w, dtype=torch.uint8, device=instance_map.device),
            instance_ids=ids.long(),
        )
    masks = instance_map.unsqueeze(0) == ids.view(-1, 1, 1)  # (K, H, W) bool
    rows = masks.any(dim=2)  # (K, H)
    cols = masks.any(dim=1)  # (K, W)
    ar_h = torch.arange(h, device=instance_map.device)
    ar_w = torch.arange(w, device=instance_map.device)
    y0 = torch.where(rows, ar_h, h).min(dim=1).values
    y1 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x0 = torch.where(cols, ar_w, w).min(dim=1).values
    x1 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return InstanceTargets(
        boxes=boxes, labels=labels_all[ids] + 1, masks=masks.to(torch.uint8), instance_ids=ids.long()
    )


def predictions_to_instance_map(pred: InstancePredictions, mask_threshold: float = 0.5) -> Tensor:
    """Hard instance map (H, W) int64 from predictions: -1 background, else index into ``pred``.

    Where instances overlap, the higher-scoring one (lower index) wins, as in panoptic merging.
    Lets the teacher's output be used wherever a ground-truth ``instance_masks`` map is expected.
    """
    h, w = pred.masks.shape[-2:]
    out = torch.full((h, w), -1, dtype=torch.long, device=pred.masks.device)
    # Paint from the lowest score up so that higher scores overwrite.
    for k in reversed(range(len(pred))):
        out[pred.masks[k] >= mask_threshold] = k
    return out


def _narrow(resnet: torchvision.models.ResNet, width: int) -> None:
    """Rebuild ``resnet``'s stem and stages in place at ``width`` stem / first-stage channels, from
    torchvision's own blocks and ``_make_layer`` (torchvision has no width argument for BasicBlock
    ResNets; the module names and so the state-dict keys stay those of a standard ResNet). The new
    layers keep PyTorch's default initialisation, not torchvision's ResNet init: a narrow backbone
    exists to receive converted weights. ``fc`` is left as it is: the FPN wrapper drops it."""
    block = type(resnet.layer1[0])
    depths = [len(getattr(resnet, f"layer{k}")) for k in range(1, 5)]
    resnet.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    resnet.bn1 = resnet._norm_layer(width)
    resnet.inplanes = width
    for k, n in enumerate(depths):
        setattr(resnet, f"layer{k + 1}", resnet._make_layer(block, width * 2**k, n, stride=1 if k == 0 else 2))


def _build_backbone(config: InstanceSegConfig) -> BackboneWithFPN:
    resnet = _RESNETS[config.backbone](weights=None)
    if config.backbone_width != 64:
        _narrow(resnet, config.backbone_width)
    if config.pretrained_backbone is not None:
        path = Path(config.pretrained_backbone)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_backbone: no file at {path} (a torchvision {config.backbone} state dict)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        resnet.load_state_dict(state)
    channels = [_stage_out(resnet, k) for k in range(1, 5)]
    return BackboneWithFPN(
        resnet,
        return_layers={f"layer{k}": str(k - 1) for k in range(1, 5)},
        in_channels_list=channels,
        out_channels=config.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def _stage_out(resnet: nn.Module, k: int) -> int:
    stage = getattr(resnet, f"layer{k}")
    last = stage[-1]
    # BasicBlock ends in bn2, Bottleneck in bn3.
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features


class InstanceSegmenter(nn.Module):
    """Mask R-CNN over all cameras of a batch (see the module docstring for the outputs).

    Normalisation: ``Batch.images`` are already ImageNet-normalised, so Mask R-CNN's own
    normalisation is the identity (mean 0, std 1) here. BatchNorm in the ResNet is trainable
    (plain BatchNorm2d, not torchvision's frozen default) because it is trained from scratch.
    """

    def __init__(self, config: InstanceSegConfig) -> None:
        super().__init__()
        self.config = config
        backbone = _build_backbone(config)
        c = config.fpn_channels
        levels = ["0", "1", "2", "3"]
        sizes, ratios = tuple((s,) for s in config.anchor_sizes_px), (tuple(config.anchor_ratios),) * 5
        mmdet = config.conventions == "mmdet"
        anchors = FixedStrideAnchorGenerator(sizes, ratios, FPN_STRIDES) if mmdet else AnchorGenerator(sizes, ratios)
        self.model = MaskRCNN(
            backbone,
            num_classes=None,
            min_size=config.min_size_px,
            max_size=config.max_size_px,
            image_mean=[0.0, 0.0, 0.0],
            image_std=[1.0, 1.0, 1.0],
            rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=config.rpn_proposals_train,
            rpn_post_nms_top_n_train=config.rpn_proposals_train,
            rpn_pre_nms_top_n_test=config.rpn_proposals_test,
            rpn_post_nms_top_n_test=config.rpn_proposals_test,
            rpn_batch_size_per_image=config.rpn_batch_size_per_image,
            box_roi_pool=MultiScaleRoIAlign(featmap_names=levels, output_size=7, sampling_ratio=2),
            box_head=TwoMLPHead(c * 7 * 7, config.box_head_dim),
            box_predictor=FastRCNNPredictor(config.box_head_dim, NUM_CLASSES + 1),
            box_score_thresh=config.score_threshold,
            box_detections_per_img=config.detections_per_image,
            box_batch_size_per_image=config.box_batch_size_per_image,
            mask_roi_pool=MultiScaleRoIAlign(featmap_names=levels, output_size=14, sampling_ratio=2),
            mask_head=MaskRCNNHeads(c, [config.mask_head_channels] * config.mask_head_layers, 1),
            mask_predictor=MaskRCNNPredictor(config.mask_head_channels, config.mask_head_channels, NUM_CLASSES + 1),
        )
        if mmdet:
            # Swapped in after construction: MaskRCNN's constructor type-checks its poolers against
            # torchvision's own class. None of these holds parameters, so the state dict is unchanged.
            heads = self.model.roi_heads
            heads.box_roi_pool = AlignedMultiScaleRoIAlign(levels, FPN_STRIDES[:4], 7, sampling_ratio=0)
            heads.mask_roi_pool = AlignedMultiScaleRoIAlign(levels, FPN_STRIDES[:4], 14, sampling_ratio=0)
            for owner in (heads, self.model.rpn):
                owner.box_coder = SymmetricClampBoxCoder(owner.box_coder.weights, owner.box_coder.bbox_xform_clip)
            old = self.model.transform
            self.model.transform = GridSamplePasteTransform(old.min_size, old.max_size, old.image_mean,
                                                            old.image_std, size_divisible=old.size_divisible)

    @staticmethod
    def _flatten(images: Tensor) -> tuple[list[Tensor], int, int]:
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be (B, N_cam, 3, H, W), got {tuple(images.shape)}")
        B, N = images.shape[:2]
        return list(images.flatten(0, 1).float()), B, N

    def make_targets(self, instance_masks: Tensor, boxes: list[Boxes3D]) -> list[InstanceTargets]:
        """(B, N_cam, H, W) instance maps + B Boxes3D -> B * N_cam targets (batch-major, camera-minor)."""
        if instance_masks.ndim != 4 or instance_masks.shape[0] != len(boxes):
            raise ValueError(f"instance_masks must be (B, N_cam, H, W) with B = {len(boxes)}, got {tuple(instance_masks.shape)}")
        return [
            instance_map_to_targets(instance_masks[b, n], boxes[b].label, self.config.min_instance_area_px)
            for b in range(instance_masks.shape[0])
            for n in range(instance_masks.shape[1])
        ]

    def loss(self, images: Tensor, instance_masks: Tensor, boxes: list[Boxes3D]) -> dict[str, Tensor]:
        """Mask R-CNN training losses on all cameras.

        Args:
            images: (B, N_cam, 3, H, W) normalised. instance_masks: (B, N_cam, H, W) int64 index into
                ``boxes[b]`` (-1 background). boxes: B ground-truth Boxes3D (for the labels).

        Returns:
            the five terms named in :data:`MASK_RCNN_LOSS_NAMES` (scalars; their plain sum is
            torchvision's reference objective).

        Raises:
            RuntimeError: the module is in eval mode (torchvision computes losses only in train mode).
        """
        if not self.training:
            raise RuntimeError("InstanceSegmenter.loss needs train mode (call .train())")
        image_list, _, _ = self._flatten(images)
        targets = [t.as_torchvision() for t in self.make_targets(instance_masks, boxes)]
        losses = self.model(image_list, targets)
        return {name: losses[name] for name in MASK_RCNN_LOSS_NAMES}

    @torch.no_grad()
    def predict(self, images: Tensor) -> list[list[InstancePredictions]]:
        """Instances per camera: ``result[b][n]`` for images (B, N_cam, 3, H, W).

        Runs the network in eval mode for the call (restoring the previous mode afterwards),
        because torchvision's detection models switch their output type on ``self.training``.
        """
        image_list, B, N = self._flatten(images)
        was_training = self.model.training
        self.model.eval()
        try:
            raw = self.model(image_list)
        finally:
            self.model.train(was_training)
        preds = [
            InstancePredictions(
                boxes=r["boxes"],
                labels=r["labels"] - 1,
                scores=r["scores"],
                masks=r["masks"][:, 0],
            )
            for r in raw
        ]
        return [preds[b * N:(b + 1) * N] for b in range(B)]

    @torch.no_grad()
    def mask_targets(self, images: Tensor) -> Tensor:
        """Dense per-class foreground map (B, N_cam, 10, H, W) in [0, 1] for X-IS.

        Value at (class k, pixel) = max over the teacher's class-k detections of
        ``score * mask_probability`` (0 where none covers the pixel).
        """
        return self.dense_from_predictions(self.predict(images), images.shape[-2:])

    @staticmethod
    def dense_from_predictions(preds: list[list[InstancePredictions]], image_hw) -> Tensor:
        """Per-camera predictions -> (B, N_cam, 10, H, W), as in :meth:`mask_targets`."""
        H, W = int(image_hw[0]), int(image_hw[1])
        B, N = len(preds), len(preds[0]) if preds else 0
        device = preds[0][0].masks.device if B and N else torch.device("cpu")
        out = torch.zeros(B, N, NUM_CLASSES, H, W, device=device)
        for b in range(B):
            for n in range(N):
                p = preds[b][n]
                if len(p) == 0:
                    continue
                weighted = p.scores.view(-1, 1, 1) * p.masks  # (K, H, W)
                index = p.labels.view(-1, 1, 1).expand(-1, H, W)
                out[b, n] = out[b, n].scatter_reduce(0, index, weighted, reduce="amax", include_self=True)
        return out
