"""The main job on built-in synthetic data, end to end (what the README's first command runs).

Steps:
1. generate a synthetic nuScenes-format world (config/data/synthetic_demo.yaml);
2. check the metric pipeline: the ground truth and a perturbed copy of it, loaded through the same
   loader real nuScenes uses, scored with nuscenes-devkit's metrics; BEV + camera pictures;
3. train a LiDAR teacher and a camera student (the tiny experiments of config/train/, a few
   minutes each on 2 CPU cores) and score them on the validation split;
4. write the validation split as a rosbag2 file, start the ROS 2 graph (student detector, LiDAR
   teacher, comparison) as real processes on loopback DDS, replay the bag, collect detections and
   report nuScenes metrics, agreement with the teacher and latency (``x3kd bag eval``).

``quick=True`` shrinks every stage to seconds (tiny world, a couple of training steps); the tests
run the whole loop that way.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from x3kd_core.config import load_yaml
from x3kd_core.paths import REPO_ROOT
from x3kd_core.structures import Boxes3D


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


def run_demo(out_dir: str | Path, world_config: str | Path, seed: int = 0, student_steps: int = 300,
             lidar_steps: int = 150, ros: bool = True) -> dict:
    """Run the synthetic end-to-end job and return (and write) a JSON-friendly report.

    Args:
        out_dir: everything goes here (dataset/, train_*/, bag/, bag_eval/, report.json, PNGs).
        world_config: SynthConfig YAML of the world to generate.
        student_steps / lidar_steps: training steps of the tiny camera student / LiDAR teacher
            (0 skips training and the ROS stage).
        ros: run the ROS 2 stage (bag write + live graph replay).
    """
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

    print(format_report(report))

    if student_steps > 0 and lidar_steps > 0:
        report["training"] = {}
        checkpoints = {}
        for kind, name, steps in (("lidar", "lidar_tiny", lidar_steps), ("student", "student_tiny", student_steps)):
            result = _train(name, dataroot, version, out_dir / f"train_{kind}", steps)
            checkpoints[kind] = str(result.checkpoint)
            report["training"][kind] = {"steps": result.step, "train_wall_s": round(result.train_wall_s, 1),
                                        "val": _headline(result.metrics)}
            print(f"[demo] trained {name} for {result.step} steps in {result.train_wall_s:.0f} s: "
                  + ", ".join(f"{k}={v:.3f}" for k, v in report["training"][kind]["val"].items()))
        if ros:
            report["ros"] = _ros_stage(out_dir, dataroot, version, split, checkpoints)
    with open(out_dir / "report.json", "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"[demo] report: {out_dir / 'report.json'}")
    return report


def _headline(metrics: dict) -> dict:
    return {k: float(metrics[k]) for k in ("mAP", "NDS", "mATE", "mASE", "mAOE") if k in metrics}


def _train(experiment: str, dataroot: Path, version: str, out: Path, steps: int):
    """Train one tiny experiment of config/train/ on the demo world (train split), score it on val."""
    from x3kd_core.experiment import load_experiment, train_experiment

    overrides = [f"data.dataroot={dataroot}", f"data.version={version}", "data.train_split=synth_train",
                 "data.val_split=synth_val", f"train.max_steps={steps}", f"train.log_every={max(1, steps // 10)}",
                 f"train.ckpt_every_steps={max(1, steps // 2)}", "train.scheduler=onecycle",
                 f"train.warmup_steps={max(1, steps // 10)}", "train.lr=2.0e-3"]
    exp = load_experiment(REPO_ROOT / "config" / "train" / f"{experiment}.yaml", overrides)
    return train_experiment(exp, out, resume=False, device="cpu", source_path=f"config/train/{experiment}.yaml")


def _ros_stage(out_dir: Path, dataroot: Path, version: str, split: str, checkpoints: dict) -> dict:
    """Bag the validation split, replay it through the live graph in a fresh process.

    Both steps are ``x3kd bag`` commands run as child processes: x3kd_core imports nothing from
    x3kd_ros (which adds ``bag`` to the CLI), and ``x3kd bag eval`` needs a fresh process anyway
    because Fast DDS reads its transport profile only when a process first joins the graph (see
    x3kd_ros/bag/evaluate.py).
    """
    import subprocess
    import sys

    bag = out_dir / "bag"
    if bag.exists():
        import shutil

        shutil.rmtree(bag)

    def x3kd_bag(*args: str, timeout_s: float) -> subprocess.CompletedProcess:
        # Through the `x3kd` command: x3kd_core imports nothing from x3kd_ros (it adds `bag`).
        cmd = [sys.executable, "-m", "x3kd_core.cli", "bag", *args]
        proc = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout_s)
        print(proc.stdout, end="")
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            raise RuntimeError(f"x3kd bag {args[0]} failed with exit code {proc.returncode}")
        return proc

    x3kd_bag("write", "--dataroot", str(dataroot), "--version", version, "--split", split, "--out", str(bag),
             timeout_s=900)
    print(f"[demo] wrote {bag}")
    args = ["eval", str(bag), "--checkpoint", checkpoints["student"], "--teacher-lidar", checkpoints["lidar"],
            "--out", str(out_dir / "bag_eval"), "--dataroot", str(dataroot), "--version", version, "--split", split]
    print("[demo] replaying through the ROS 2 graph: x3kd bag", " ".join(args))
    proc = x3kd_bag(*args, timeout_s=900)
    report_path = out_dir / "bag_eval" / "report.json"
    return {"report": str(report_path), "exit_code": proc.returncode}


def format_report(report: dict) -> str:
    keys = ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")
    lines = ["", f"{'predictions':<14}" + "".join(f"{k:>8}" for k in keys)]
    for name in ("ground_truth", "perturbed"):
        if name in report:
            lines.append(f"{name:<14}" + "".join(f"{report[name][k]:8.3f}" for k in keys))
    lines.append(f"pictures: {', '.join(report.get('pictures', []))}")
    return "\n".join(lines)
