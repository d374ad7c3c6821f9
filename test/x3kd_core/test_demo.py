"""The README's main job, shrunk to seconds (`x3kd demo --quick`): world -> metrics sanity ->
training -> rosbag2 -> live ROS 2 graph replay -> metrics. Runs as a child process, as a user
would, because the replay stage needs a fresh process for its DDS transport profile."""

import json
import os
import subprocess
import sys


def test_demo_quick_runs_the_whole_loop(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "x3kd_core.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    gt, noisy = report["ground_truth"], report["perturbed"]
    # Ground truth scores AP 1 on every present class: mAP = present / 10 exactly; noise lowers it.
    assert abs(gt["mAP"] * 10 - round(gt["mAP"] * 10)) < 1e-9 and gt["mAP"] >= 0.5
    assert noisy["mAP"] < gt["mAP"] and noisy["mATE"] > gt["mATE"]
    assert report["training"]["student"]["steps"] == 2 and report["training"]["lidar"]["steps"] == 2
    assert (out / "bev.png").stat().st_size > 10_000 and (out / "cameras.png").stat().st_size > 10_000
    bag_report = json.loads((out / "bag_eval" / "report.json").read_text())
    assert "student" in bag_report["latency"] and "lidar" in bag_report["latency"]
    assert "frames detector: 3/3 answered exactly once" in proc.stdout
