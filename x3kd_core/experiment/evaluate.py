"""Scoring a task on the experiment's validation split (nuScenes detection metrics or mask metrics)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from x3kd_core.experiment.config import DETECTION_KINDS, ExperimentConfig
from x3kd_core.experiment.data import loader_config, open_nuscenes

__all__ = ["val_loader", "evaluate_task", "headline"]


def val_loader(exp: ExperimentConfig, nusc):
    """(source, DataLoader) of ``data.val_split``, ``eval.batch_size`` samples per batch, in order."""
    from x3kd_core.data.nuscenes import NuScenesDataset, NuScenesSource, collate_samples

    source = NuScenesSource(nusc.dataroot, loader_config(exp, exp.data.val_split, training=False), nusc=nusc)
    loader = torch.utils.data.DataLoader(NuScenesDataset(source), batch_size=exp.eval.batch_size, shuffle=False,
                                         collate_fn=collate_samples)
    return source, loader


@torch.no_grad()
def evaluate_task(task: nn.Module, exp: ExperimentConfig, out_dir: str | os.PathLike, nusc=None) -> dict:
    """Evaluate ``task`` on ``exp.data.val_split``; returns a JSON-ready dict of metrics.

    Detection kinds: nuScenes mAP / NDS / TP errors by nuscenes-devkit (submission and devkit
    outputs go to ``out_dir``). instance_seg: :class:`~x3kd_core.eval.instance_masks.InstanceMaskMetrics`.
    The task is put in eval mode for the call and restored afterwards.
    """
    from x3kd_core.eval.detection import boxes_to_submission, evaluate, submission_meta, write_submission
    from x3kd_core.eval.instance_masks import MaskMetricAccumulator

    nusc = nusc or open_nuscenes(exp)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source, loader = val_loader(exp, nusc)
    was_training = task.training
    task.eval()
    t0 = time.perf_counter()
    try:
        if exp.is_detection:
            results: dict[str, list[dict]] = {}
            for batch in loader:
                for token, boxes, pose in zip(batch.tokens, task.predict(batch), batch.ego_to_global.numpy()):
                    results[token] = boxes_to_submission(token, boxes, pose)
            path = write_submission(results, out_dir / "results_nusc.json", submission_meta(exp.kind))
            infer_s = time.perf_counter() - t0
            metrics = evaluate(nusc.dataroot, nusc.version, exp.data.val_split, path, out_dir, nusc=nusc)
            out = metrics.to_dict()
            out["classes_present"] = metrics.classes_present
        else:
            acc = MaskMetricAccumulator(exp.eval.mask_iou_threshold, exp.eval.mask_score_threshold,
                                        exp.model.min_instance_area_px)
            for batch in loader:
                preds = task.predict(batch)
                for b, per_cam in enumerate(preds):
                    for n, pred in enumerate(per_cam):
                        acc.add(pred, batch.instance_masks[b, n], batch.boxes[b].label)
            infer_s = time.perf_counter() - t0
            out = acc.result().to_dict()
    finally:
        task.train(was_training)
    out["num_samples"] = len(source)
    out["inference_s"] = infer_s
    return out


def headline(kind: str, metrics: dict) -> dict[str, float]:
    """The few numbers logged per validation and printed in summaries."""
    if kind in DETECTION_KINDS:
        return {k: float(metrics[k]) for k in ("mAP", "NDS", "mATE", "mASE", "mAOE")}
    return {k: float(metrics[k]) for k in ("mask_ap", "matched_miou", "gt_best_miou", "recall", "precision")}
