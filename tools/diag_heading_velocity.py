#!/usr/bin/env python3
"""Where a detector's heading and velocity errors come from: per class, moving vs standing objects.

    .venv/bin/python tools/diag_heading_velocity.py --dataroot data/synth_main --split synth_val \
        --results runs/lidar_main/eval/results_nusc.json [--json out.json]

The devkit's mAOE / mAVE are one number per class. This splits them by what the ground-truth
object does (speed above / below ``--moving-mps``) and reports, over matched pairs (same class,
centre within ``--match-m`` on the ground, predictions with score >= ``--score`` matched highest
score first, as the devkit does):

- ``yaw_err``: mean absolute heading error (rad; barriers with period pi, as the devkit scores them);
  ``flips``: share of pairs off by more than 150 deg (front and back confused);
- ``vel_err``: mean velocity error (m/s, ground plane); for moving objects also ``speed_ratio``
  (median predicted / true speed) and ``vel_backwards`` (share whose predicted velocity points
  more than 90 deg away from the true one);
- ``yaw_err_motion_heading``: the heading error if every prediction faster than ``--moving-mps``
  took the direction of its own velocity (front/back only: yaw or yaw + pi, whichever is nearer),
  a what-if for motion-consistent decoding.

Boxes are read with nuscenes-devkit's loaders (tools/recall_within_range.py ``load_boxes``), so
the same ground truth and filters as the metric. Traffic cones have no heading or velocity score.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict

import numpy as np
from recall_within_range import add_submission_arguments, load_boxes, match_boxes


def _yaw(rotation) -> float:
    """Yaw (rad) of a devkit box's [w, x, y, z] quaternion about +z."""
    w, x, y, z = rotation
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def _angle_diff(a: float, b: float, period: float = 2 * math.pi) -> float:
    d = (a - b) % period
    return min(d, period - d)


def summarise(pairs: list[dict]) -> dict:
    """One row of the table from matched pair records (see :func:`main`)."""
    if not pairs:
        return {"n": 0}
    yaw = np.array([p["yaw_err"] for p in pairs])
    yaw_m = np.array([p["yaw_err_motion_heading"] for p in pairs])
    vel = np.array([p["vel_err"] for p in pairs])
    row = {"n": len(pairs), "yaw_err": float(yaw.mean()), "flips": float(np.mean(yaw > math.radians(150))),
           "yaw_err_motion_heading": float(yaw_m.mean()), "vel_err": float(vel.mean())}
    moving = [p for p in pairs if "speed_ratio" in p]  # only moving objects' records carry it
    if moving:
        row["speed_ratio"] = float(np.median([p["speed_ratio"] for p in moving]))
        row["vel_backwards"] = float(np.mean([p["backwards"] for p in moving]))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_submission_arguments(p)
    p.add_argument("--moving-mps", type=float, default=0.5, help="speed (m/s) above which an object moves")
    args = p.parse_args()

    pred, gt = load_boxes(args.dataroot, args.version, args.split, args.results)
    by_group: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for token in gt.sample_tokens:
        gts = list(gt[token])
        preds = sorted((b for b in pred[token] if b.detection_score >= args.score), key=lambda b: -b.detection_score)
        for b, i in match_boxes(preds, gts, args.match_m):
            g = gts[i]
            if g.detection_name == "traffic_cone":
                continue
            period = math.pi if g.detection_name == "barrier" else 2 * math.pi
            yaw_p, yaw_g = _yaw(b.rotation), _yaw(g.rotation)
            v_p, v_g = np.asarray(b.velocity[:2], float), np.asarray(g.velocity[:2], float)
            v_p, v_g = np.nan_to_num(v_p), np.nan_to_num(v_g)
            s_p, s_g = float(np.linalg.norm(v_p)), float(np.linalg.norm(v_g))
            yaw_m = yaw_p
            if s_p > args.moving_mps and _angle_diff(yaw_p, math.atan2(v_p[1], v_p[0])) > math.pi / 2:
                yaw_m = yaw_p + math.pi
            moving = s_g > args.moving_mps
            rec = {"yaw_err": _angle_diff(yaw_p, yaw_g, period), "yaw_err_motion_heading": _angle_diff(yaw_m, yaw_g, period),
                   "vel_err": float(np.linalg.norm(v_p - v_g)), "gt_speed": s_g if moving else 0.0}
            if moving:
                rec["speed_ratio"] = s_p / s_g
                rec["backwards"] = float(np.dot(v_p, v_g) < 0)
            by_group[(g.detection_name, "moving" if moving else "standing")].append(rec)

    table = {f"{c}/{m}": summarise(rows) for (c, m), rows in sorted(by_group.items())}
    classes = sorted({c for c, _ in by_group})
    table.update({f"{c}/all": summarise(by_group[(c, "moving")] + by_group[(c, "standing")]) for c in classes})
    mean_over = [table[f"{c}/all"] for c in classes if table[f"{c}/all"]["n"]]
    out = {"results": args.results, "score": args.score, "match_m": args.match_m, "moving_mps": args.moving_mps,
           "mean_yaw_err": float(np.mean([r["yaw_err"] for r in mean_over])),
           "mean_yaw_err_motion_heading": float(np.mean([r["yaw_err_motion_heading"] for r in mean_over])),
           "mean_vel_err": float(np.mean([r["vel_err"] for r in mean_over if not math.isnan(r["vel_err"])])),
           "rows": table}
    print(f"class/motion                      n  yaw_err flips  yaw_err(motion heading)  vel_err  speed_ratio  backwards")
    for key, r in table.items():
        if not r["n"]:
            continue
        extra = f"  {r['speed_ratio']:>11.2f}  {r['vel_backwards']:>9.2f}" if "speed_ratio" in r else ""
        print(f"{key:<30} {r['n']:>5}  {r['yaw_err']:>7.3f} {r['flips']:>5.2f}  {r['yaw_err_motion_heading']:>23.3f}"
              f"  {r['vel_err']:>7.3f}{extra}")
    print(f"mean over classes (matched pairs, not the devkit's recall-weighted TP errors): yaw_err "
          f"{out['mean_yaw_err']:.3f}, with motion heading {out['mean_yaw_err_motion_heading']:.3f}, "
          f"vel_err {out['mean_vel_err']:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
