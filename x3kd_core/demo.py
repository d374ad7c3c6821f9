"""The main job on built-in synthetic data, end to end (what the README's first command runs).

Steps: generate a synthetic nuScenes-format world -> load it with the same loader real nuScenes
uses -> evaluate (a) the ground truth and (b) a perturbed copy of it with nuscenes-devkit's
metrics -> write BEV and camera pictures. Later stages (training, distillation, ROS replay)
extend this module; the README command stays the same.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from x3kd_core.config import load_yaml
from x3kd_core.structures import Boxes3D

REPO_ROOT = Path(__file__).resolve().parent.parent


def perturb_boxes(
    boxes: Boxes3D,
    rng: np.random.Generator,
    center_sigma_m: float = 0.4,
    yaw_sigma_rad: float = 0.15,
    size_sigma_frac: float = 0.08,
    velocity_sigma_mps: float = 0.5,
    drop_fraction: float = 0.15,
) -> Boxes3D:
    """A noisy copy of ``boxes`` that imitates an imperfect detector (for checking the metrics).

    Each box keeps with probability ``1 - drop_fraction``; centre, yaw, size and velocity get
    Gaussian noise; the score falls with the centre error so the ranking is informative.
    """
    keep = rng.random(len(boxes)) >= drop_fraction
    out = boxes[keep]
    n = len(out)
    shift = rng.normal(0.0, center_sigma_m, size=(n, 2))
    center = out.center.copy()
    center[:, :2] += shift
    velocity = np.nan_to_num(out.velocity, nan=0.0) + rng.normal(0.0, velocity_sigma_mps, size=(n, 2))
    score = np.clip(1.0 - np.linalg.norm(shift, axis=1) / (4.0 * center_sigma_m), 0.05, 1.0)
    return replace(
        out,
        center=center,
        yaw=out.yaw + rng.normal(0.0, yaw_sigma_rad, size=n),
        size_lwh=out.size_lwh * np.exp(rng.normal(0.0, size_sigma_frac, size=(n, 3))),
        velocity=velocity,
        score=score,
    )


def run_demo(out_dir: str | Path, world_config: str | Path, seed: int = 0) -> dict:
    """Run the synthetic end-to-end job and return (and write) a JSON-friendly report."""
    from nuscenes.nuscenes import NuScenes

    from x3kd_core import viz
    from x3kd_core.data.nuscenes import LoaderConfig, NuScenesSource
    from x3kd_core.data.synthetic import SynthConfig, generate_dataset
    from x3kd_core.eval.detection import boxes_to_submission, evaluate, ground_truth_submission, write_submission

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"world_config": str(world_config)}

    synth_cfg = load_yaml(SynthConfig, world_config)
    dataroot = out_dir / "dataset"
    t0 = time.perf_counter()
    generate_dataset(synth_cfg, dataroot)
    report["generate_s"] = round(time.perf_counter() - t0, 2)
    print(f"[demo] generated {dataroot} in {report['generate_s']} s")

    version, split = synth_cfg.version, "synth_val"
    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    loader_cfg = LoaderConfig(version=version, split=split, image_hw=(synth_cfg.image_height, synth_cfg.image_width),
                              lidar_sweeps=3, radar_sweeps=3)
    source = NuScenesSource(dataroot, loader_cfg, nusc=nusc)
    report["val_samples"] = len(source)

    # (a) ground truth fed back as predictions: the metric pipeline must give AP 1 and no TP error.
    gt_path = write_submission(ground_truth_submission(nusc, split), out_dir / "results_gt.json")
    gt_metrics = evaluate(dataroot, version, split, gt_path, out_dir / "eval_gt", nusc=nusc)
    report["ground_truth"] = gt_metrics.summary()

    # (b) a perturbed copy through the loader (ego frame) and back to the global frame.
    rng = np.random.default_rng(seed)
    results = {}
    first = None
    for token in source.sample_tokens:
        sample = source.load_sample(token)
        pred = perturb_boxes(sample.boxes, rng)
        results[token] = boxes_to_submission(token, pred, sample.ego_to_global)
        if first is None:
            first = (sample, pred)
    noisy_path = write_submission(results, out_dir / "results_perturbed.json")
    noisy_metrics = evaluate(dataroot, version, split, noisy_path, out_dir / "eval_perturbed", nusc=nusc)
    report["perturbed"] = noisy_metrics.summary()

    sample, pred = first
    bev = viz.plot_bev(out_dir / "bev.png", sample.lidar_points, sample.boxes, pred,
                       title=f"{sample.scene_name} {sample.token[:8]}: GT solid, perturbed dashed",
                       radar_points=sample.radar_points)
    cams = viz.plot_cameras(out_dir / "cameras.png", sample.images, sample.rig, sample.boxes, pred)
    report["pictures"] = [str(bev), str(cams)]

    with open(out_dir / "report.json", "w") as fh:
        json.dump(report, fh, indent=2)
    print(format_report(report))
    return report


def format_report(report: dict) -> str:
    keys = ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")
    lines = ["", f"{'predictions':<14}" + "".join(f"{k:>8}" for k in keys)]
    for name in ("ground_truth", "perturbed"):
        if name in report:
            lines.append(f"{name:<14}" + "".join(f"{report[name][k]:8.3f}" for k in keys))
    lines.append(f"pictures: {', '.join(report.get('pictures', []))}")
    return "\n".join(lines)
