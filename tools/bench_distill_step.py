#!/usr/bin/env python3
"""Training-step cost of X3KD distillation: the student alone, each component, all four; teachers
run live every step or read from the teacher cache.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tools/bench_distill_step.py \
        --experiment config/train/x3kd_small.yaml --cache runs/teacher_cache/small --steps 8

One step = forward of the student (and of the live teachers, or a cache read) + every loss +
backward + AdamW step + the X-AT discriminator step when X-AT is on, on the same real batch of
``data.train_split`` every time (data loading is left out: it is the same for every row). Median
wall time over ``--steps`` after ``--warmup``. Needs the teacher checkpoints the experiment names
and, for the cached rows, a built cache (``x3kd ablate`` builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, also without an install
from x3kd_core.paths import REPO_ROOT  # noqa: E402

from distill_setup import component_experiment  # noqa: E402
from x3kd_core.distill.losses import STAT_PREFIX  # noqa: E402
from x3kd_core.experiment import build_train_dataset, build_training_task  # noqa: E402

COMPONENTS = ("x_is", "x_fd", "x_at", "x_od")
ROWS = [("student", None), *[(c, (c,)) for c in COMPONENTS], ("x3kd", COMPONENTS)]


def time_row(exp, steps: int, warmup: int) -> float:
    from x3kd_core.data.nuscenes import collate_samples

    torch.manual_seed(0)
    task, extra = build_training_task(exp)
    dataset = build_train_dataset(exp)
    batch = collate_samples([dataset[0], dataset[1]])
    task.train()
    optim = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        losses = task.training_losses(batch)
        optim.zero_grad(set_to_none=True)
        sum(v for k, v in losses.items() if not k.startswith(STAT_PREFIX)).backward()
        optim.step()
        for step in extra:
            step(batch, i)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=str(REPO_ROOT / "config" / "train" / "x3kd_small.yaml"))
    parser.add_argument("--cache", default=str(REPO_ROOT / "runs" / "teacher_cache" / "small"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    results = {}
    base = None
    print(f"{'row':10s} {'live teachers s/step':>22s} {'cached s/step':>15s}")
    for name, components in ROWS:
        live = time_row(component_experiment(components, None, args.experiment), args.steps, args.warmup)
        if components is None:
            cached = live
        else:
            exp = component_experiment(components, args.cache, args.experiment)
            # Never build a cache here (a second builder of a folder in use is refused anyway).
            missing = [n for n in sorted(exp.teachers.required(exp.distill))
                       if not (Path(args.cache) / n / "meta.json").is_file()]
            if missing:
                raise SystemExit(f"no finished teacher cache for {missing} under {args.cache}; run x3kd ablate first")
            cached = time_row(exp, args.steps, args.warmup)
        base = base if base is not None else live
        results[name] = {"live_s": live, "cached_s": cached}
        print(f"{name:10s} {live:10.3f} ({live / base:4.2f}x) {cached:9.3f} ({cached / base:4.2f}x)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
