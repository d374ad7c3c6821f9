#!/usr/bin/env python3
"""Time the camera student: one training step and one inference pass, per model config.

    .venv/bin/python tools/bench_student.py                       # tiny + small on the CPU, 2 threads
    .venv/bin/python tools/bench_student.py --device cuda --configs small nuscenes_r50

Training step: batch 2 x 6 cameras, forward + all losses (head + LiDAR depth) + backward + AdamW.
Inference: batch 1 x 6 cameras, eval mode, forward + box decoding (``predict``).
Inputs are synthetic (image noise, a nuScenes-like camera rig, a LiDAR ground plane, 10 boxes);
timing does not depend on image content. Reports the median over ``--steps`` after ``--warmup``
of wall time and of this process' CPU time (all threads; "(cpu)" columns).

On a CPU shared with other busy processes, OpenMP's default spin-waiting can make 2 threads
several times slower than 1; run with ``OMP_WAIT_POLICY=PASSIVE`` there (it must be set before
Python starts, as libgomp reads it at load time). The load average is printed with the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, also without an install
from x3kd_core.paths import REPO_ROOT  # noqa: E402

from x3kd_core.config import load_yaml  # noqa: E402
from x3kd_core.models.student import CameraStudent, StudentConfig  # noqa: E402
from x3kd_core.structures import CAMERA_NAMES, Batch, Boxes3D, CameraRig  # noqa: E402

def _rig(image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(intrinsics (6, 3, 3), cam_to_ego (6, 4, 4)) of the nuScenes-like rig, float32."""
    rig = CameraRig.nuscenes_like(image_hw)
    return (torch.tensor(rig.intrinsics, dtype=torch.float32),
            torch.tensor(rig.cam_to_ego, dtype=torch.float32))


def synthetic_batch(cfg: StudentConfig, batch_size: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    H, W = cfg.image_hw
    K, T = _rig(cfg.image_hw)
    (x0, x1), (y0, y1) = cfg.grid.x_range_m, cfg.grid.y_range_m
    lidar, boxes = [], []
    for _ in range(batch_size):
        n = 10
        centre = np.stack([rng.uniform(x0 * 0.8, x1 * 0.8, n), rng.uniform(y0 * 0.8, y1 * 0.8, n), np.full(n, 0.8)], 1)
        boxes.append(
            Boxes3D(
                center=centre, size_lwh=np.tile([4.5, 1.9, 1.6], (n, 1)), yaw=rng.uniform(-np.pi, np.pi, n),
                velocity=np.zeros((n, 2)), label=rng.integers(0, 10, n), score=np.ones(n),
            )
        )
        p = 30000  # order of a nuScenes keyframe sweep
        pts = np.stack([rng.uniform(x0, x1, p), rng.uniform(y0, y1, p), rng.uniform(0.0, 2.0, p),
                        rng.uniform(0, 100, p), np.zeros(p)], 1)
        lidar.append(torch.tensor(pts, dtype=torch.float32))
    return Batch(
        images=torch.randn(batch_size, len(CAMERA_NAMES), 3, H, W, generator=torch.Generator().manual_seed(seed)),
        intrinsics=K.expand(batch_size, -1, -1, -1).clone(),
        cam_to_ego=T.expand(batch_size, -1, -1, -1).clone(),
        lidar_points=lidar,
        radar_points=[torch.zeros(0, 7) for _ in range(batch_size)],
        boxes=boxes,
        ego_to_global=torch.eye(4, dtype=torch.float64).expand(batch_size, 4, 4).clone(),
        tokens=[str(i) for i in range(batch_size)],
    )


def _timed(fn, device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """Median (wall seconds, process CPU seconds) of ``fn()`` over ``steps`` calls after ``warmup``.

    CPU seconds (all threads of this process) barely change when other processes compete for the
    cores, so they stay comparable on a busy machine where wall time does not.
    """
    wall, cpu = [], []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def bench(name: str, device: torch.device, train_batch: int, warmup: int, steps: int, amp: bool,
          bev_pool: str | None = None) -> dict:
    cfg = load_yaml(StudentConfig, REPO_ROOT / "config" / "model" / f"student_{name}.yaml")
    if bev_pool is not None:
        cfg = dataclasses.replace(cfg, bev_pool=bev_pool)
    # Weights do not change the timing, and none may be downloadable here.
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, pretrained_weights=None))
    torch.manual_seed(0)
    model = CameraStudent.from_config(cfg).to(device)
    params = {
        part: sum(p.numel() for p in getattr(model, part).parameters())
        for part in ("backbone", "neck", "view_transform", "bev_encoder", "head")
    }
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-2)
    train = synthetic_batch(cfg, train_batch).to(device)
    infer = synthetic_batch(cfg, 1, seed=1).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16, enabled=amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")

    def train_step() -> None:
        with autocast:
            out = model(train.images, train.intrinsics, train.cam_to_ego)
            loss = sum(model.loss(out, train).values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def infer_step() -> None:
        with torch.no_grad(), autocast:
            model.predict(model(infer.images, infer.intrinsics, infer.cam_to_ego))

    model.train()
    train_s, train_cpu_s = _timed(train_step, device, warmup, steps)
    model.eval()
    infer_s, infer_cpu_s = _timed(infer_step, device, warmup, steps)
    return {
        "config": name,
        "bev_pool": cfg.bev_pool,
        "amp": amp,
        "image_hw": list(cfg.image_hw),
        "depth_bins": cfg.depth_bins.num_bins,
        "bev_cells": list(cfg.grid.size_xy),
        "params_M": round(sum(params.values()) / 1e6, 3),
        "params_M_by_part": {k: round(v / 1e6, 3) for k, v in params.items()},
        "train_step_s": round(train_s, 4),
        "train_step_cpu_s": round(train_cpu_s, 4),
        "train_batch": f"{train_batch}x{len(CAMERA_NAMES)}",
        "train_samples_per_s": round(train_batch / train_s, 2),
        "infer_s": round(infer_s, 4),
        "infer_cpu_s": round(infer_cpu_s, 4),
        "infer_batch": f"1x{len(CAMERA_NAMES)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "small"],
                        help="names of config/model/student_<name>.yaml (tiny, small, nuscenes_r50)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (ignored for cuda)")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--amp", action="store_true", help="autocast (fp16 on cuda, bf16 on cpu)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per config")
    parser.add_argument("--bev-pool", choices=["outer_product", "depth_context"], default=None,
                        help="override the configs' bev_pool (default: as each config says)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
        where = f"cpu, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}"
        where += f", load average {os.getloadavg()[0]:.2f}"
    else:
        torch.backends.cudnn.benchmark = True
        where = torch.cuda.get_device_name(device)
    print(f"# student benchmark on {where}; torch {torch.__version__}; amp={args.amp}")
    print(
        f"{'config':<14}{'input':>10}{'D':>5}{'BEV':>9}{'params':>9}{'train step':>13}{'(cpu)':>9}"
        f"{'samples/s':>11}{'infer b1':>11}{'(cpu)':>10}"
    )
    for name in args.configs:
        r = bench(name, device, args.train_batch, args.warmup, args.steps, args.amp, args.bev_pool)
        hw, cells = r["image_hw"], r["bev_cells"]
        print(
            f"{name:<14}{hw[0]:>4}x{hw[1]:<5}{r['depth_bins']:>5}{cells[0]:>5}x{cells[1]:<3}{r['params_M']:>8.2f}M"
            f"{r['train_step_s']:>12.3f}s{r['train_step_cpu_s']:>8.3f}s{r['train_samples_per_s']:>11.2f}"
            f"{r['infer_s'] * 1000:>9.1f}ms{r['infer_cpu_s'] * 1000:>8.1f}ms"
        )
        if args.json:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
