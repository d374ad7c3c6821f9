"""Mask R-CNN pieces that follow OpenMMLab mmdet's conventions instead of torchvision's.

:class:`~x3kd_core.models.teachers.instance_seg.InstanceSegmenter` is a torchvision ``MaskRCNN``.
With ``InstanceSegConfig.conventions = "mmdet"`` four of its parts are swapped for the ones here,
so that weights converted from an mmdet checkpoint (:mod:`x3kd_core.convert.mmdet`) see the
geometry they were trained with. The differences, all sub-pixel to a few pixels:

* anchors (:class:`FixedStrideAnchorGenerator`): torchvision rounds the half-extents of its base
  anchors to whole pixels and derives each level's stride as ``padded_size // feature_size``
  (61 instead of 64 on an odd-sized stride-32 map); mmdet keeps the exact extents and the
  nominal strides 4..64. Both centre anchor ``(i, j)`` at ``(j * stride, i * stride)``.
* RoI pooling (:class:`AlignedMultiScaleRoIAlign`): mmcv's ``RoIAlign`` of the mmdet configs
  samples at half-pixel-corrected positions (``aligned=True``) with an adaptive number of samples
  per bin (``sampling_ratio=0``); torchvision's ``MultiScaleRoIAlign`` uses ``aligned=False``.
  Level assignment is the same rule in both (``floor(log2(sqrt(area) / 56))`` clamped to 0..3).
* mask pasting (:class:`GridSamplePasteTransform`): mmdet resamples each 28 x 28 mask into its
  box with ``grid_sample`` at pixel centres (on the CPU into the box plus one pixel only; on a GPU
  into the whole image, which differs from this only in the faint rim of boxes over 56 px);
  torchvision pads the mask by one pixel and resizes it onto the integer box.

* box decoding (:class:`SymmetricClampBoxCoder`): both clamp the log-size deltas ``dw, dh`` at
  ``log(1000 / 16)``, torchvision from above only, mmdet's ``DeltaXYWHBBoxCoder`` from both sides
  (a box at most 62.5x thinner than its anchor). Found by the parity fixture: a few RPN proposals
  a fraction of a pixel high came out 0.02-0.04 px apart.

What these do NOT change (checked against mmdet's forward, test_mmdet_parity.py): anchor order
(ratio-major, h/w ratio), the RPN's per-level top-k + level-batched NMS, box deltas
``(dx, dy, dw, dh)`` with mmdet's target stds ``(0.1, 0.1, 0.2, 0.2)`` equal to torchvision's
weights ``(10, 10, 5, 5)``, nearest-neighbour FPN top-down and the max-pooled P6.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import roi_align

__all__ = ["FixedStrideAnchorGenerator", "AlignedMultiScaleRoIAlign", "GridSamplePasteTransform", "SymmetricClampBoxCoder",
           "paste_masks_grid_sample"]


class FixedStrideAnchorGenerator(AnchorGenerator):
    """Anchors as mmdet's ``AnchorGenerator(strides=..., center_offset=0)`` lays them out.

    Args:
        sizes: per level, the anchor sizes (px; mmdet: ``stride * scale``).
        aspect_ratios: per level, the h / w ratios.
        strides: per level, the stride (px) of its feature map on the padded image.
    """

    def __init__(self, sizes: Sequence[Sequence[int]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int]) -> None:
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(a) for a in aspect_ratios))
        if len(strides) != len(self.sizes):
            raise ValueError(f"{len(strides)} strides for {len(self.sizes)} anchor levels")
        self.strides = tuple(int(s) for s in strides)

    def generate_anchors(self, scales, aspect_ratios, dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device("cpu")) -> Tensor:
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h = torch.sqrt(ratios)
        ws = (scales[None, :] / h[:, None]).reshape(-1)
        hs = (scales[None, :] * h[:, None]).reshape(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) * 0.5  # unrounded, unlike torchvision

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps for {len(self.strides)} anchor strides")
        device, dtype = feature_maps[0].device, feature_maps[0].dtype
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(dtype, device)
        per_level = self.grid_anchors(grid_sizes, strides)
        return [torch.cat(per_level) for _ in image_list.image_sizes]


class SymmetricClampBoxCoder(BoxCoder):
    """torchvision's ``BoxCoder`` whose decoding also clamps ``dw, dh`` from below at
    ``-bbox_xform_clip``, as mmdet's ``delta2bbox`` does (torchvision clamps from above only)."""

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        _, _, ww, wh = self.weights
        codes = rel_codes.clone()
        codes[:, 2::4] = codes[:, 2::4].clamp(min=-self.bbox_xform_clip * ww)
        codes[:, 3::4] = codes[:, 3::4].clamp(min=-self.bbox_xform_clip * wh)
        return super().decode_single(codes, boxes)


class AlignedMultiScaleRoIAlign(nn.Module):
    """mmdet's ``SingleRoIExtractor`` over ``RoIAlign(aligned=True)``, with torchvision's call signature.

    Args:
        featmap_names: the FPN levels pooled from (finest first).
        strides: their strides (px).
        output_size: pooled size (7 for boxes, 14 for masks).
        sampling_ratio: samples per bin edge; 0 = adaptive ``ceil(roi_size / output_size)``.
        finest_scale: level ``floor(log2(sqrt(area) / finest_scale))`` clamped to the levels: with
            56, boxes under 112 px go to the first level, [112, 224) px to the second, and so on.
    """

    def __init__(self, featmap_names: Sequence[str], strides: Sequence[int], output_size: int,
                 sampling_ratio: int = 0, finest_scale: float = 56.0) -> None:
        super().__init__()
        if len(featmap_names) != len(strides):
            raise ValueError(f"{len(featmap_names)} feature maps but {len(strides)} strides")
        self.featmap_names = list(featmap_names)
        self.strides = tuple(int(s) for s in strides)
        self.output_size = (int(output_size), int(output_size))
        self.sampling_ratio = int(sampling_ratio)
        self.finest_scale = float(finest_scale)

    def levels(self, rois: Tensor) -> Tensor:
        """(K,) level index of each box (K, 4) x0, y0, x1, y1 px."""
        scale = torch.sqrt((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]))
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return level.clamp(0, len(self.strides) - 1).long()

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """Pooled features (K, C, S, S) for the boxes of all images, image-major (torchvision's order)."""
        feats = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        C = feats[0].shape[1]
        out = feats[0].new_zeros((rois.shape[0], C) + self.output_size)
        if rois.shape[0] == 0:
            return out
        level = self.levels(rois[:, 1:])
        for k, (feat, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.nonzero(level == k).squeeze(1)
            if idx.numel():
                out[idx] = roi_align(feat, rois[idx], self.output_size, spatial_scale=1.0 / stride,
                                     sampling_ratio=self.sampling_ratio, aligned=True).to(out.dtype)
        return out


def paste_masks_grid_sample(masks: Tensor, boxes: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Resample RoI masks into the image as mmdet's ``_do_paste_mask`` does.

    Args:
        masks: (K, 1, M, M) probabilities on each box's RoI grid.
        boxes: (K, 4) x0, y0, x1, y1 px in the output image.
        image_hw: (H, W) of the output image.

    Returns:
        (K, 1, H, W): bilinear samples of each mask at the pixel centres from one pixel before
        the box to one after it (``floor(x0) - 1 .. ceil(x1) + 1``, the region mmdet pastes into
        on the CPU), 0 elsewhere. Within half a mask cell of the box edge, on both sides, the
        mask blends with grid_sample's zero padding; a mask of ones exceeds 0.5 exactly at the
        pixel centres inside the box.
    """
    H, W = int(image_hw[0]), int(image_hw[1])
    K = masks.shape[0]
    if K == 0:
        return masks.new_zeros((0, 1, H, W))
    x0, y0, x1, y1 = boxes.float().unbind(1)
    ys = torch.arange(H, device=masks.device, dtype=torch.float32) + 0.5
    xs = torch.arange(W, device=masks.device, dtype=torch.float32) + 0.5
    # Normalised to [-1, 1] over each box; a zero-size box maps to the centre instead of inf.
    gy = (ys[None] - y0[:, None]) / (y1 - y0)[:, None] * 2 - 1
    gx = (xs[None] - x0[:, None]) / (x1 - x0)[:, None] * 2 - 1
    gy = torch.where(torch.isinf(gy), torch.zeros_like(gy), gy)
    gx = torch.where(torch.isinf(gx), torch.zeros_like(gx), gx)
    grid = torch.stack([gx[:, None, :].expand(K, H, W), gy[:, :, None].expand(K, H, W)], dim=3)
    pasted = F.grid_sample(masks.float(), grid, align_corners=False)
    # Large boxes stretch a mask cell over several pixels, so the blend with grid_sample's zero
    # padding would reach beyond the box; mmdet (CPU) only pastes into the box plus one pixel.
    cols = torch.arange(W, device=masks.device)
    rows = torch.arange(H, device=masks.device)
    inside_x = (cols[None] >= torch.floor(x0)[:, None] - 1) & (cols[None] < torch.ceil(x1)[:, None] + 1)
    inside_y = (rows[None] >= torch.floor(y0)[:, None] - 1) & (rows[None] < torch.ceil(y1)[:, None] + 1)
    return pasted * (inside_y[:, :, None] & inside_x[:, None, :])[:, None].to(pasted.dtype)


class GridSamplePasteTransform(GeneralizedRCNNTransform):
    """torchvision's resize / normalise / batch transform, with mmdet's mask pasting on the way out."""

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        if self.training:
            return result
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
            if "masks" in pred:
                pred["masks"] = paste_masks_grid_sample(pred["masks"], pred["boxes"], o_im_s)
        return result

