#!/usr/bin/env python3
"""Evaluate saved checkpoints of one run on its validation split: a learning curve.

    .venv/bin/python tools/learning_curve.py runs/seed0_step600.pt runs/seed0_step1200.pt ... \
        --out results/models/student_main_learning_curve.json

Each checkpoint rebuilds its own task and experiment (``task_from_checkpoint``) and is scored
exactly as the end of ``x3kd train`` scores it (``evaluate_task``: nuscenes-devkit metrics on
``data.val_split``). Prints one row per checkpoint (step, mAP, NDS, TP errors) and writes them.
For runs trained with ``train.eval_every_steps`` the same rows are already in ``val.csv``; this is
for checkpoints copied during a run that had no intermediate validation.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--out", default=None, help="JSON file for the rows")
    p.add_argument("--dataroot", default=None, help="override data.dataroot of the stored experiment")
    args = p.parse_args()

    import dataclasses

    from x3kd_core.experiment import evaluate_task, task_from_checkpoint

    rows = []
    for path in args.checkpoints:
        task, exp = task_from_checkpoint(path)
        if args.dataroot:
            exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, dataroot=args.dataroot))
        step = int(torch.load(path, map_location="cpu", weights_only=True)["step"])
        with tempfile.TemporaryDirectory() as tmp:
            m = evaluate_task(task, exp, tmp)
        row = {"checkpoint": str(path), "step": step,
               **{k: float(m[k]) for k in ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")}}
        rows.append(row)
        print(f"step {step:>6}  mAP {row['mAP']:.4f}  NDS {row['NDS']:.4f}  mATE {row['mATE']:.3f}  "
              f"mAOE {row['mAOE']:.3f}  mAVE {row['mAVE']:.3f}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
