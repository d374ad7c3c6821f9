#!/usr/bin/env python3
"""Paired comparison of two ablation variants' logged training losses: what a component changes.

    .venv/bin/python tools/compare_losses.py runs/ablation/x3kd_main_xfd3/x3kd \
        runs/ablation/x3kd_main/x3kd_no_x_at --seeds 0 1 2

Each argument is a variant's run folder of ``x3kd ablate`` (``<runs_dir>/<variant>``, holding
``seed<k>/train.csv``); a seed counts only when both runs finished (their ``metrics.json`` says so).
For every column both variants log (detection losses, distillation losses,
their ``stat/...`` diagnostics, ``grad_norm``) it takes the mean over the last ``--tail`` share of
the logged steps of each seed, and prints both variants' means over the seeds and the difference
``A - B`` paired by seed (mean ± sample std, and on how many seeds it is positive). Where the
metrics say a component hurts, this says through which loss: e.g. whether the student's detection
heatmap loss or its X-FD feature distance ends higher with the component than without it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np


def tail_means(train_csv: Path, tail: float) -> dict[str, float]:
    """Mean of every numeric column over the rows whose step is in the last ``tail`` share of the run."""
    with open(train_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise SystemExit(f"{train_csv}: no logged steps")
    last = max(int(r["step"]) for r in rows)
    rows = [r for r in rows if int(r["step"]) > last * (1.0 - tail)]
    out = {}
    for col in rows[0]:
        if col in ("step", "epoch", "lr", "sec_per_step"):
            continue
        values = [float(r[col]) for r in rows if r.get(col) not in (None, "")]
        if values:
            out[col] = float(np.mean(values))
    return out


def finished(seed_dir: Path) -> bool:
    """Whether the run in ``seed_dir`` trained to the end (a run still going has no metrics.json)."""
    metrics = seed_dir / "metrics.json"
    return metrics.is_file() and bool(json.loads(metrics.read_text()).get("finished"))


def compare(a_dir: Path, b_dir: Path, seeds: list[int], tail: float = 0.2) -> list[dict]:
    """One row per column both variants log on every seed that both ran: ``{"column", "a", "b",
    "delta_mean", "delta_std", "positive", "n"}`` (a, b: means over those seeds)."""
    pairs = [(s, a_dir / f"seed{s}" / "train.csv", b_dir / f"seed{s}" / "train.csv") for s in seeds
             if finished(a_dir / f"seed{s}") and finished(b_dir / f"seed{s}")]
    if not pairs:
        raise SystemExit(f"no seed of {seeds} has a finished run in both {a_dir} and {b_dir}")
    a_means = [tail_means(a, tail) for _, a, _ in pairs]
    b_means = [tail_means(b, tail) for _, _, b in pairs]
    columns = [c for c in a_means[0] if all(c in m for m in a_means + b_means)]
    rows = []
    for col in columns:
        deltas = np.array([a[col] - b[col] for a, b in zip(a_means, b_means)])
        rows.append({"column": col, "a": float(np.mean([a[col] for a in a_means])),
                     "b": float(np.mean([b[col] for b in b_means])), "delta_mean": float(deltas.mean()),
                     "delta_std": float(deltas.std(ddof=1)) if len(deltas) > 1 else 0.0,
                     "positive": int((deltas > 0).sum()), "n": len(deltas)})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", type=Path, help="run folder of variant A (holds seed<k>/train.csv)")
    p.add_argument("b", type=Path, help="run folder of variant B")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tail", type=float, default=0.2, help="share of the last logged steps averaged (0, 1]")
    args = p.parse_args(argv)
    if not 0.0 < args.tail <= 1.0 or math.isnan(args.tail):
        raise SystemExit(f"--tail: expected a share in (0, 1], got {args.tail}")
    rows = compare(args.a, args.b, args.seeds, args.tail)
    n = rows[0]["n"] if rows else 0
    print(f"A = {args.a}, B = {args.b}; means over the last {args.tail:.0%} of each run, {n} paired seeds")
    print(f"{'column':28s} {'A':>10s} {'B':>10s} {'A - B paired':>24s}")
    for r in rows:
        print(f"{r['column']:28s} {r['a']:10.4f} {r['b']:10.4f} "
              f"{r['delta_mean']:+10.4f} ± {r['delta_std']:.4f} ({r['positive']}/{r['n']} up)")


if __name__ == "__main__":
    sys.exit(main())
