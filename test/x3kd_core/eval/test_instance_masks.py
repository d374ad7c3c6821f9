"""Instance-mask metrics (x3kd_core.eval.instance_masks) on hand-made instances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from x3kd_core.eval.instance_masks import MaskMetricAccumulator
from x3kd_core.models.teachers.instance_seg import InstancePredictions


def test_mask_metrics_on_hand_made_instances():
    H, W = 20, 30
    gt = torch.full((H, W), -1, dtype=torch.long)
    gt[2:6, 2:8] = 0  # 24 px, class car (0)
    gt[10:18, 10:20] = 1  # 80 px, class pedestrian (8)
    labels = np.array([0, 8])

    def masks(*boxes):
        m = torch.zeros(len(boxes), H, W)
        for k, (y0, y1, x0, x1) in enumerate(boxes):
            m[k, y0:y1, x0:x1] = 0.9
        return m

    # Prediction 0: exact car (IoU 1). Prediction 1: pedestrian shifted by 2 columns: IoU 64 / 96.
    # Prediction 2: low score, duplicate car -> false positive.
    pred = InstancePredictions(boxes=torch.zeros(3, 4), labels=torch.tensor([0, 8, 0]),
                               scores=torch.tensor([0.9, 0.8, 0.3]),
                               masks=masks((2, 6, 2, 8), (10, 18, 12, 22), (2, 6, 2, 8)))
    acc = MaskMetricAccumulator(iou_threshold=0.5, score_threshold=0.5)
    acc.add(pred, gt, labels)
    r = acc.result()
    assert r.num_gt == 2 and r.num_predictions == 3
    assert r.matched_miou == pytest.approx((1.0 + 64 / 96) / 2)
    assert r.gt_best_miou == pytest.approx((1.0 + 64 / 96) / 2)
    assert r.recall == 1.0 and r.precision == 1.0
    assert r.mask_ap == pytest.approx(1.0)  # both TPs rank above the FP
    # A wrong class never matches; at IoU threshold 0.7 the shifted pedestrian is a miss.
    acc = MaskMetricAccumulator(iou_threshold=0.7, score_threshold=0.5)
    acc.add(pred, gt, labels)
    r = acc.result()
    assert r.recall == 0.5 and r.precision == 0.5
    assert r.mask_ap == pytest.approx(0.5)  # precision 1 up to recall 0.5, never beyond
    acc = MaskMetricAccumulator()
    acc.add(InstancePredictions(torch.zeros(1, 4), torch.tensor([3]), torch.tensor([0.9]), masks((2, 6, 2, 8))), gt, labels)
    r = acc.result()
    assert r.mask_ap == 0.0 and r.gt_best_miou == 0.0 and math.isclose(r.precision, 0.0)
