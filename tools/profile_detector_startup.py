#!/usr/bin/env python3
"""Where the detector node's start-up time goes: process start -> ready -> first inference.

    nice -n 19 .venv/bin/python tools/profile_detector_startup.py --checkpoint runs/<run>/last.pt
    nice -n 19 .venv/bin/python tools/profile_detector_startup.py            # tiny untrained student
    nice -n 19 .venv/bin/python tools/profile_detector_startup.py --model config/model/student_main.yaml \
        --pretrained        # a checkpoint whose config names ImageNet backbone weights (a local .pth)
    nice -n 19 .venv/bin/python tools/profile_detector_startup.py --runs 3 --json out.json

Two measurements, each in fresh processes (``--runs`` times, medians printed):

``process``
    The real ``x3kd_detector`` console script (``--ros-args -p checkpoint:=... -p device:=...``)
    as ``ros2 run`` starts it. Ready = its last start-up log line ("model on ...", written once
    subscriptions, publishers and timers exist) is read here; time from just before the process
    was started. The process is then stopped with SIGINT (by its PID).

``phases``
    A child process that does what the node does, in order, stamping each step on the same clock
    (wall time since the parent started it): interpreter start; ``import rclpy`` + the node module;
    ``import torch``; ``import torchvision``; the x3kd_core modules the checkpoint loader imports;
    ``rclpy.init``; ``DetectorNode`` construction, whose model load is split by timing wrappers
    around the real functions (checkpoint read = ``torch.load``; model build =
    ``experiment.loader.build_model``; weights = ``load_state_dict``); then two ``Predictor.predict`` calls
    on six blank images (first inference = warm-up, second = steady state).

Every ROS process keeps to the project's network rule (x3kd_ros.graph.environment: localhost only, a private
domain id, logs under build/profile_detector_startup/). Run it under ``nice -n 19`` on a shared
machine and say so with the numbers: load from other jobs stretches every phase.
"""

from __future__ import annotations

import time

_T_CHILD_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from x3kd_core.paths import REPO_ROOT  # noqa: E402

OUT_DIR = REPO_ROOT / "build" / "profile_detector_startup"
READY_MARK = "model on "


# ---------------------------------------------------------------------------------------------- child


def _child(checkpoint: str, device: str, t0: float) -> dict:
    marks: list[tuple[str, float]] = [("interpreter + site", _T_CHILD_START - t0)]

    def mark(name: str) -> None:
        marks.append((name, time.time() - t0))

    import rclpy
    from rclpy.context import Context

    from x3kd_ros.nodes import detector_node

    mark("import rclpy + x3kd_ros.nodes.detector_node")
    import torch

    mark("import torch")
    import torchvision  # noqa: F401

    mark("import torchvision")
    from x3kd_core import checkpoint as ckpt
    from x3kd_core import inference  # noqa: F401
    from x3kd_core.experiment import loader

    mark("import x3kd_core (inference, experiment.loader)")
    context = Context()
    rclpy.init(context=context)
    mark("rclpy.init")

    spent = {"read": 0.0, "build": 0.0, "weights": 0.0}
    active: list[str] = []

    def timed(kind, fn):
        def wrapper(*args, **kwargs):
            if active:  # nested (a pretrained .pth loaded inside the build): the outer step owns it
                return fn(*args, **kwargs)
            active.append(kind)
            start = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[kind] += time.time() - start
                active.pop()
        return wrapper

    read, build, load_sd = ckpt.read_checkpoint, loader.build_model, torch.nn.Module.load_state_dict
    ckpt.read_checkpoint = timed("read", read)
    loader.build_model = timed("build", build)
    torch.nn.Module.load_state_dict = timed("weights", load_sd)
    try:
        node = detector_node.DetectorNode(context=context, parameter_overrides=[
            rclpy.parameter.Parameter("checkpoint", value=checkpoint),
            rclpy.parameter.Parameter("device", value=device),
            rclpy.parameter.Parameter("publish_markers", value=False)])
    finally:
        ckpt.read_checkpoint, loader.build_model, torch.nn.Module.load_state_dict = read, build, load_sd
    at = marks[-1][1]
    for name, key in (("checkpoint read (torch.load)", "read"),
                      ("model build (init; a pretrained .pth if named)", "build"),
                      ("weights (load_state_dict)", "weights")):
        at += spent[key]
        marks.append((name, at))
    marks.append(("rest of the node (parameters, to device, subscriptions, timers)", time.time() - t0))

    import numpy as np

    predictor = node.predictor
    h, w = predictor.image_hw
    n = len(predictor.cameras)
    images = np.zeros((n, h, w, 3), np.uint8)
    k = np.array([[w / 2, 0, w / 2], [0, w / 2, h / 2], [0, 0, 1]], np.float64)
    optical = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], np.float64)
    cam_to_ego = np.repeat(np.eye(4)[None], n, 0)
    for i in range(n):
        yaw = 2 * np.pi * i / n
        rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        cam_to_ego[i, :3, :3] = rz @ optical
        cam_to_ego[i, :3, 3] = [1.0, 0.0, 1.5]
    intrinsics = np.repeat(k[None], n, 0)
    for name in ("first inference (warm-up)", "second inference"):
        predictor.predict(images, intrinsics, cam_to_ego)
        mark(name)
    node.destroy_node()
    context.try_shutdown()
    return {"marks": marks, "threads": torch.get_num_threads(), "device": str(predictor.device),
            "image_hw": [h, w], "cameras": n}


# ---------------------------------------------------------------------------------------------- parent


def _env() -> dict:
    from x3kd_ros.graph.environment import apply_network_rule, pid_domain_id

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    apply_network_rule(domain_id=pid_domain_id(), log_dir=str(OUT_DIR / "ros_log"))
    return dict(os.environ)


def _phases_once(checkpoint: str, device: str, env: dict) -> dict:
    t0 = time.time()
    out = subprocess.run([sys.executable, __file__, "--child", "--checkpoint", checkpoint, "--device", device,
                          "--t0", repr(t0)], env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"phase child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _detector_command(checkpoint: str, device: str) -> list[str]:
    script = Path(sys.executable).parent / "x3kd_detector"
    exe = [str(script)] if script.is_file() else [sys.executable, "-m", "x3kd_ros.nodes.detector_node"]
    return exe + ["--ros-args", "--params-file", str(REPO_ROOT / "config/ros/detector.yaml"),
                  "-p", f"checkpoint:={checkpoint}", "-p", f"device:={device}"]


def _process_once(checkpoint: str, device: str, env: dict, timeout_s: float = 300.0) -> float:
    """Seconds from just before starting x3kd_detector to its ready log line."""
    log = OUT_DIR / "detector.log"
    t0 = time.time()
    with open(log, "w") as handle:
        proc = subprocess.Popen(_detector_command(checkpoint, device), env=env, stdout=handle,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.time() - t0 < timeout_s:
            if READY_MARK in log.read_text(errors="replace"):
                return time.time() - t0
            if proc.poll() is not None:
                raise RuntimeError(f"x3kd_detector exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            time.sleep(0.02)
        raise RuntimeError(f"x3kd_detector not ready after {timeout_s} s")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # by PID: only the process started here
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def _untrained_checkpoint(model_yaml: str, pretrained: bool) -> str:
    """An untrained student checkpoint of ``model_yaml`` (written as ``x3kd train`` writes them);
    with ``pretrained`` its backbone config names a local ImageNet-style ResNet .pth (random
    torchvision weights here), as every ImageNet-initialised run's checkpoint does."""
    import torch
    import torchvision
    import yaml

    from x3kd_core.config import from_dict, to_dict
    from x3kd_core.experiment import ExperimentConfig, build_task
    from x3kd_core.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    name = Path(model_yaml).stem + ("_pretrained" if pretrained else "")
    path = OUT_DIR / f"{name}.pt"
    if path.is_file():
        return str(path)
    model = yaml.safe_load((REPO_ROOT / model_yaml).read_text())
    grid = yaml.safe_load((REPO_ROOT / "config/model/student_tiny.yaml").read_text())["grid"]
    if pretrained:
        arch = model["backbone"]["name"]
        weights = OUT_DIR / f"{arch}_imagenet_style.pth"
        torch.manual_seed(0)
        torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), weights)
        model["backbone"]["pretrained_weights"] = str(weights)
    exp = from_dict(ExperimentConfig, {"kind": "student", "model": model, "grid": model.get("grid", grid),
                                       "train": {"max_steps": 1}, "name": f"{name}_untrained"})
    torch.manual_seed(0)
    task = build_task(exp)
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "kind": type(task).__name__, "config": to_dict(exp),
                           "model": task.state_dict()}, keep_previous=False)
    return str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="student checkpoint (default: an untrained one of "
                        "--model, written under build/profile_detector_startup/)")
    parser.add_argument("--model", default="config/model/student_tiny.yaml",
                        help="model config of the untrained checkpoint (without --checkpoint)")
    parser.add_argument("--pretrained", action="store_true",
                        help="untrained checkpoint whose backbone config names a local ResNet .pth "
                             "(ImageNet-style init)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", choices=("both", "phases", "process"), default="both")
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.checkpoint, args.device, args.t0)))
        return 0

    env = _env()
    checkpoint = (str(Path(args.checkpoint).resolve()) if args.checkpoint
                  else _untrained_checkpoint(args.model, args.pretrained))
    size_mb = Path(checkpoint).stat().st_size / 1e6
    print(f"checkpoint {checkpoint} ({size_mb:.0f} MB), device {args.device}, {args.runs} runs each, "
          f"load average {os.getloadavg()[0]:.1f}, nice {os.nice(0)}")
    result: dict = {"checkpoint": checkpoint, "checkpoint_mb": size_mb, "device": args.device,
                    "loadavg_start": os.getloadavg(), "nice": os.nice(0)}
    if args.mode in ("both", "phases"):
        runs = [_phases_once(checkpoint, args.device, env) for _ in range(args.runs)]
        names = [m[0] for m in runs[0]["marks"]]
        print(f"\nphases (child process; torch threads {runs[0]['threads']}, {runs[0]['cameras']} cameras "
              f"{runs[0]['image_hw'][1]}x{runs[0]['image_hw'][0]}); seconds, median of {len(runs)}:")
        print(f"{'step':66s} {'step s':>7s} {'at s':>7s}")
        table = []
        for i, name in enumerate(names):
            at = statistics.median(r["marks"][i][1] for r in runs)
            step = statistics.median(r["marks"][i][1] - (r["marks"][i - 1][1] if i else 0.0) for r in runs)
            table.append({"step": name, "step_s": step, "at_s": at})
            print(f"{name:66s} {step:7.2f} {at:7.2f}")
        result["phases"] = table
        result["phase_runs"] = runs
    if args.mode in ("both", "process"):
        ready = [_process_once(checkpoint, args.device, env) for _ in range(args.runs)]
        result["process_ready_s"] = ready
        print(f"\nx3kd_detector process start -> ready: median {statistics.median(ready):.2f} s "
              f"(runs: {', '.join(f'{r:.2f}' for r in ready)})")
    result["loadavg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
