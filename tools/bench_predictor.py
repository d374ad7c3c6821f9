#!/usr/bin/env python3
"""Predictor latency, backend torch vs onnxruntime, in one process on the same inputs.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tools/bench_predictor.py                 # small, 2 threads
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tools/bench_predictor.py --config tiny --rounds 30

What is timed: ``Predictor.predict`` on one frame of 6 cameras, the full call a node makes:
resize of each image to the network input (``--width`` x ``--height`` raw images, or already
resized with ``--resized``, as the ROS node hands them over), normalisation, the network (torch or
the ONNX graph in onnxruntime; the BEV geometry cached, as for a fixed rig) and decoding + NMS (PyTorch
in both). The network alone (head maps, no decoding, pre-normalised input) is timed as well.
Rounds alternate backend (torch, ort, torch, ...) so that load on the machine hits both alike;
medians and p90 over ``--rounds`` after ``--warmup``. The model is an untrained student of
``config/model/student_<config>.yaml`` (random weights: the latency does not depend on them) on
the synthetic world's camera rig. Both backends use ``--threads`` threads; the boxes of the two are
checked to agree before timing.
"""

from __future__ import annotations

import argparse
import io
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


def build_predictors(config: str, threads: int):
    import yaml

    from x3kd_core.config import from_dict
    from x3kd_core.experiment import ExperimentConfig, build_task
    from x3kd_core.inference import Predictor

    model = yaml.safe_load((REPO_ROOT / "config" / "model" / f"student_{config}.yaml").read_text())
    model["backbone"]["pretrained_weights"] = None
    exp = from_dict(ExperimentConfig, {"kind": "student", "model": model, "grid": model["grid"],
                                       "train": {"max_steps": 1}, "name": f"bench_{config}"})
    torch.manual_seed(0)
    student = build_task(exp).student.eval()
    t0 = time.perf_counter()
    ort = Predictor(student, exp, "cpu", backend="onnxruntime", num_threads=threads)
    export_s = time.perf_counter() - t0
    return Predictor(student, exp, "cpu"), ort, export_s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="small", help="config/model/student_<config>.yaml")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    p.add_argument("--rounds", type=int, default=20, help="timed calls per backend")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per backend first")
    p.add_argument("--width", type=int, default=1600, help="raw image width (px)")
    p.add_argument("--height", type=int, default=900, help="raw image height (px)")
    p.add_argument("--resized", action="store_true", help="hand over images already at the network input")
    p.add_argument("--json", default="", help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from x3kd_core.data.synthetic.config import SynthConfig
    from x3kd_core.data.synthetic.sensors import camera_specs
    from x3kd_core.deploy.onnx_export import bev_row_index

    torch_pred, ort_pred, export_s = build_predictors(args.config, args.threads)
    specs = camera_specs(SynthConfig(image_width=args.width, image_height=args.height))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for _ in specs]
    k = np.stack([s.intrinsics for s in specs])
    to_ego = np.stack([s.to_ego for s in specs])
    if args.resized:
        tfs = [torch_pred.input_transform(img.shape[:2]) for img in images]
        images = [tf.apply(img, 1) for tf, img in zip(tfs, images)]  # cv2.INTER_LINEAR == 1
        k = np.stack([tf.intrinsics(kk) for tf, kk in zip(tfs, k)])

    a = torch_pred.predict(images, k, to_ego, resized=args.resized)
    b = ort_pred.predict(images, k, to_ego, resized=args.resized)
    agree = bool(len(a) == len(b)) and bool (len(a) == 0 or np.abs(np.sort(a.score) - np.sort(b.score)).max() < 1e-4)

    batch, k_net, _ = torch_pred.prepare(images, k, args.resized)
    rows = bev_row_index(torch_pred.model, k_net, to_ego, torch_pred.image_hw)
    k_t, t_t = torch.from_numpy(k_net[None]).float(), torch.from_numpy(to_ego[None]).float()

    def net_torch():
        with torch.inference_mode():
            torch_pred.model(batch, k_t, t_t)

    def net_ort():
        ort_pred.runner.run(batch, k_net[None], to_ego[None], rows)

    calls = {
        "predict torch": lambda: torch_pred.predict(images, k, to_ego, resized=args.resized),
        "predict onnxruntime": lambda: ort_pred.predict(images, k, to_ego, resized=args.resized),
        "network torch": net_torch,
        "network onnxruntime": net_ort,
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(args.warmup + args.rounds):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            if r >= args.warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    load = os.getloadavg()
    size = f"{images[0].shape[1]}x{images[0].shape[0]}"
    print(f"== Predictor latency, student_{args.config} (untrained), 6 cameras {size} -> "
          f"{torch_pred.image_hw[1]}x{torch_pred.image_hw[0]}, {args.threads} threads, "
          f"{args.rounds} rounds interleaved ==")
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}; in-memory export "
          f"took {export_s:.1f} s; boxes agree: {agree} ({len(a)} boxes)")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cpus)")
    summary = {}
    for name, values in times.items():
        med, p90 = statistics.median(values), float(np.percentile(values, 90))
        summary[name] = {"median_ms": med, "p90_ms": p90, "min_ms": min(values)}
        print(f"{name:22s} median {med:7.1f} ms  p90 {p90:7.1f}  min {min(values):7.1f}")
    for what in ("predict", "network"):
        ratio = summary[f"{what} torch"]["median_ms"] / summary[f"{what} onnxruntime"]["median_ms"]
        summary[f"{what}_speedup"] = ratio
        print(f"{what}: onnxruntime is {ratio:.2f}x torch's speed (median / median)")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "threads": args.threads, "load": load,
                                               "agree": agree, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
