#!/usr/bin/env python3
"""What share of the objects near the ego a detector finds: recall within a range, per class.

    .venv/bin/python tools/recall_within_range.py --dataroot data/synth_main --split synth_val \
        --results runs/ablation/x3kd_main/baseline/seed0/eval/results_nusc.json --range-m 30

mAP summarises a whole precision/recall curve; a user looking at the detector's pictures asks a
simpler question: of the objects within N metres, how many does it report? This counts, over the
split, ground-truth boxes (the devkit's detection classes, after its own range and point filters)
whose centre is within ``--range-m`` of the ego, and calls one found when a prediction of the same
class with score >= ``--score`` lies within ``--match-m`` of it (centre distance on the ground,
the devkit's 2 m threshold by default; each prediction matches at most one box, highest score
first). It also prints how many predictions above the score lie within the range (precision).

Uses nuscenes-devkit's loaders (load_gt / custom splits, load_prediction, add_center_dist,
filter_eval_boxes), so
it reads exactly what the detection metric reads.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np


def load_boxes(dataroot: str, version: str, split: str, results: str):
    """(pred, gt) devkit EvalBoxes of a submission and of ``split``'s ground truth, with the centre
    distances added and the ground truth filtered by the devkit's class ranges and point counts,
    exactly as ``DetectionEval`` prepares them (custom splits from ``<version>/splits.json``)."""
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.common.loaders import (add_center_dist, filter_eval_boxes, get_samples_of_custom_split,
                                              load_gt, load_gt_of_sample_tokens, load_prediction)
    from nuscenes.eval.detection.data_classes import DetectionBox
    from nuscenes.utils.splits import is_predefined_split

    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    cfg = config_factory("detection_cvpr_2019")
    pred, _ = load_prediction(results, cfg.max_boxes_per_sample, DetectionBox, verbose=False)
    if is_predefined_split(split):
        gt = load_gt(nusc, split, DetectionBox, verbose=False)
    else:
        gt = load_gt_of_sample_tokens(nusc, get_samples_of_custom_split(split, nusc), DetectionBox, verbose=False)
    pred, gt = add_center_dist(nusc, pred), add_center_dist(nusc, gt)
    return pred, filter_eval_boxes(nusc, gt, cfg.class_range, verbose=False)


def match_boxes(preds: list, gts: list, match_m: float) -> list[tuple[object, int]]:
    """Greedy devkit-style matching: predictions in the given order (sort by score first) each take
    the nearest unmatched ground-truth box of the same class within ``match_m`` (centre distance on
    the ground). Returns (prediction, index into ``gts``) pairs."""
    taken = np.zeros(len(gts), dtype=bool)
    pairs = []
    for b in preds:
        best, best_d = -1, match_m
        for i, g in enumerate(gts):
            if taken[i] or g.detection_name != b.detection_name:
                continue
            d = float(np.hypot(g.translation[0] - b.translation[0], g.translation[1] - b.translation[1]))
            if d <= best_d:
                best, best_d = i, d
        if best >= 0:
            taken[best] = True
            pairs.append((b, best))
    return pairs


def add_submission_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every submission-reading tool here takes: data, split, submission, score
    threshold, match distance, optional JSON output."""
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", default="v1.0-synth")
    p.add_argument("--split", default="synth_val")
    p.add_argument("--results", required=True, help="a nuScenes detection submission (results_nusc.json)")
    p.add_argument("--score", type=float, default=0.3)
    p.add_argument("--match-m", type=float, default=2.0)
    p.add_argument("--json", default=None, help="also write the numbers here")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_submission_arguments(p)
    p.add_argument("--range-m", type=float, default=30.0)
    args = p.parse_args()

    pred, gt = load_boxes(args.dataroot, args.version, args.split, args.results)

    found, total, kept, kept_true = defaultdict(int), defaultdict(int), 0, 0
    for token in gt.sample_tokens:
        gts = [b for b in gt[token] if b.ego_dist <= args.range_m]
        preds = sorted((b for b in pred[token] if b.detection_score >= args.score and b.ego_dist <= args.range_m),
                       key=lambda b: -b.detection_score)
        kept += len(preds)
        pairs = match_boxes(preds, gts, args.match_m)
        taken = np.zeros(len(gts), dtype=bool)
        taken[[i for _, i in pairs]] = True
        kept_true += len(pairs)
        for g, t in zip(gts, taken):
            total[g.detection_name] += 1
            found[g.detection_name] += int(t)
    all_total, all_found = sum(total.values()), sum(found.values())
    out = {
        "range_m": args.range_m, "score": args.score, "match_m": args.match_m, "samples": len(gt.sample_tokens),
        "objects": all_total, "found": all_found, "recall": all_found / max(all_total, 1),
        "predictions": kept, "precision": kept_true / max(kept, 1),
        "per_class": {c: {"objects": total[c], "found": found[c], "recall": found[c] / max(total[c], 1)}
                      for c in sorted(total)},
    }
    print(f"within {args.range_m:g} m, score >= {args.score:g}, match <= {args.match_m:g} m, "
          f"{out['samples']} samples: found {all_found} of {all_total} objects (recall {out['recall']:.3f}); "
          f"precision {out['precision']:.3f} of {kept} predictions")
    for c, r in out["per_class"].items():
        print(f"  {c:<22} {r['found']:>5} / {r['objects']:<5} {r['recall']:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
