#!/usr/bin/env python3
"""How separable are a trained student's BEV features from the LiDAR teacher's? (X-AT diagnosis)

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tools/diag_x_at.py \
        --checkpoint runs/ablation/x3kd_small/x_fd/seed0/last.pt --cache runs/teacher_cache/small

Takes a student trained with X-FD (its checkpoint holds the X-FD adapter), computes the adapted
student BEV features and the cached LiDAR-teacher features of the first ``--samples`` train
keyframes, and trains a fresh X-AT discriminator (``BevDiscriminator``, the X-AT defaults) on
the first 5/6 of them for ``--steps`` updates, under several input treatments. Prints the
discriminator's accuracy on the held-out 1/6: 0.5 = it cannot tell, 1.0 = it separates
perfectly (then X-AT's generator term pushes the student towards the side the discriminator
calls "teacher", rather than matching two overlapping distributions).

    .venv/bin/python tools/diag_x_at.py --train-csv runs/ablation/x3kd_main/x3kd/seed0/train.csv

reads instead the X-AT columns that training logs every step (``x_at/disc_acc``: the
discriminator's accuracy on each incoming batch under the instance noise, before it trains on it;
``x_at/disc_acc_clean``: the same without noise; ``x_at/noise_level``; ``x_at/gen``) and prints
their means per tenth of the run: whether the contest stayed open, and at what noise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, also without an install
from x3kd_core.paths import REPO_ROOT  # noqa: E402

from x3kd_core.data.nuscenes import collate_samples  # noqa: E402
from x3kd_core.distill.x_at import BevDiscriminator  # noqa: E402
from distill_setup import component_experiment, trained_task  # noqa: E402
from x3kd_core.experiment import build_train_dataset  # noqa: E402


def features(checkpoint: str, cache: str, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(adapted student, teacher) BEV features, each (samples, C_t, N_x, N_y)."""
    exp = component_experiment(["x_fd"], cache)
    task = trained_task(exp, checkpoint)
    distill, teachers = task.distill, task.teachers
    dataset = build_train_dataset(exp)
    s, t = [], []
    with torch.no_grad():
        for start in range(0, samples, 4):
            batch = collate_samples([dataset[i] for i in range(start, min(start + 4, samples))])
            s.append(distill.losses.x_fd.adapter(task.outputs(batch).bev_features))
            t.append(teachers["lidar"](batch.tokens).bev_features)
    return torch.cat(s), torch.cat(t)


def held_out_accuracy(student: torch.Tensor, teacher: torch.Tensor, steps: int, output: str = "patch",
                      noise_std: float = 0.0, seed: int = 0) -> float:
    torch.manual_seed(seed)
    n_train = len(teacher) * 5 // 6
    disc = BevDiscriminator(teacher.shape[1], (64, 64), output)
    optim = torch.optim.AdamW(disc.parameters(), lr=1e-4, betas=(0.5, 0.999))
    scale = noise_std * float(teacher.std())
    for _ in range(steps):
        idx = torch.randint(0, n_train, (2,))
        t, s = teacher[idx], student[idx]
        if scale:
            t, s = t + scale * torch.randn_like(t), s + scale * torch.randn_like(s)
        logits = disc(torch.cat([t, s]))
        lt, ls = logits[:2], logits[2:]
        loss = 0.5 * (F.binary_cross_entropy_with_logits(lt, torch.ones_like(lt))
                      + F.binary_cross_entropy_with_logits(ls, torch.zeros_like(ls)))
        optim.zero_grad()
        loss.backward()
        optim.step()
    with torch.no_grad():
        t, s = teacher[n_train:], student[n_train:]
        logits = disc(torch.cat([t, s]))
        lt, ls = logits[: len(t)], logits[len(t):]
        return float(0.5 * ((lt > 0).float().mean() + (ls < 0).float().mean()))


TRAJECTORY_COLUMNS = ("x_at/disc_acc", "x_at/disc_acc_clean", "x_at/noise_level", "x_at/gen")


def trajectory(train_csv: str, parts: int = 10) -> list[dict[str, float]]:
    """Means of :data:`TRAJECTORY_COLUMNS` per ``parts``-th of the logged steps of a run
    (``step_from`` / ``step_to`` name each part's first and last logged step)."""
    import csv

    with open(train_csv, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("x_at/disc_acc") not in (None, "")]
    if not rows:
        raise SystemExit(f"{train_csv}: no x_at/disc_acc column values (was X-AT enabled?)")
    out = []
    for k in range(parts):
        chunk = rows[k * len(rows) // parts:(k + 1) * len(rows) // parts]
        if not chunk:
            continue
        row = {"step_from": float(chunk[0]["step"]), "step_to": float(chunk[-1]["step"])}
        for col in TRAJECTORY_COLUMNS:
            vals = [float(r[col]) for r in chunk if r.get(col) not in (None, "")]
            row[col] = sum(vals) / len(vals) if vals else float("nan")
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-csv", default=None, help="print the X-AT trajectory of a run's train.csv instead")
    parser.add_argument("--checkpoint", default=None, help="a student trained with X-FD (x3kd ablate run)")
    parser.add_argument("--cache", default="runs/teacher_cache/small")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    if args.train_csv:
        print(f"{'steps':>13} " + " ".join(f"{c:>20}" for c in TRAJECTORY_COLUMNS))
        for row in trajectory(args.train_csv):
            print(f"{row['step_from']:>6.0f}-{row['step_to']:<6.0f} "
                  + " ".join(f"{row[c]:>20.3f}" for c in TRAJECTORY_COLUMNS))
        return 0
    if not args.checkpoint:
        parser.error("give --checkpoint (a fresh discriminator on a trained student) or --train-csv")
    s, t = features(args.checkpoint, args.cache, args.samples)
    print(f"adapted student: mean {s.mean():.3f} std {s.std():.3f} zeros {(s.abs() < 1e-6).float().mean():.3f}; "
          f"teacher: mean {t.mean():.3f} std {t.std():.3f} zeros {(t == 0).float().mean():.3f}")
    treatments = {
        "as X-AT sees them (patch D)": (s, t, {}),
        "one logit per map (map D)": (s, t, {"output": "map"}),
        "instance noise 1.0 x teacher std": (s, t, {"noise_std": 1.0}),
        "ReLU on the student": (s.clamp(min=0), t, {}),
        "both instance-normalised": (F.instance_norm(s), F.instance_norm(t), {}),
        "both 4x4 average-pooled": (F.avg_pool2d(s, 4), F.avg_pool2d(t, 4), {}),
    }
    for name, (ss, tt, kwargs) in treatments.items():
        print(f"{name:36s} held-out discriminator accuracy {held_out_accuracy(ss, tt, args.steps, **kwargs):.3f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
