#!/usr/bin/env python3
"""Are the student's and the LiDAR teacher's BEV maps on the same grid, in the same orientation?

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tools/diag_grid_alignment.py \
        --checkpoint runs/ablation/x3kd_small/baseline/seed0/last.pt --cache runs/teacher_cache/small

X-FD, X-AT and X-OD compare student and teacher cell by cell; a transposed or mirrored map would
turn them into noise. This correlates (Pearson, over all cells of ``--samples`` train keyframes)
the class-max centre heatmaps of a trained student, of the cached LiDAR teacher and of the
ground-truth targets, as they are and after transposing / mirroring one side. Aligned maps
correlate best unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, also without an install
from x3kd_core.paths import REPO_ROOT  # noqa: E402

from x3kd_core.data.nuscenes import collate_samples  # noqa: E402
from distill_setup import component_experiment, trained_task  # noqa: E402
from x3kd_core.experiment import build_train_dataset  # noqa: E402


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a camera-student run of config/train/x3kd_small.yaml's grid")
    parser.add_argument("--cache", default="runs/teacher_cache/small")
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    exp = component_experiment(["x_od"], args.cache)
    task = trained_task(exp, args.checkpoint, student_only=True)
    dataset = build_train_dataset(exp)
    batch = collate_samples([dataset[i] for i in range(args.samples)])
    with torch.no_grad():
        s = task.outputs(batch).head.heatmap.sigmoid().amax(1)
        t = task.teachers["lidar"](batch.tokens).head.heatmap.sigmoid().amax(1)
        g = task.student.head.get_targets(batch.boxes).heatmap.amax(1)
    moves = {"unchanged": lambda x: x, "transposed": lambda x: x.transpose(-1, -2),
             "mirrored in x": lambda x: x.flip(-2), "mirrored in y": lambda x: x.flip(-1)}
    print(f"{'one side':14s} {'teacher~GT':>10s} {'student~GT':>10s} {'student~teacher':>15s}")
    for name, move in moves.items():
        print(f"{name:14s} {_corr(move(t), g):10.3f} {_corr(move(s), g):10.3f} {_corr(move(s), t):15.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
