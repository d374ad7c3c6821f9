"""tools/diag_x_at.py --train-csv: the X-AT trajectory of a run, per tenth of its logged steps."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import diag_x_at  # noqa: E402


def _write_csv(path: Path, steps: int) -> None:
    cols = ["step", "loss", *diag_x_at.TRAJECTORY_COLUMNS]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        for i in range(1, steps + 1):
            # accuracy falls from 1.0 towards 0.75 as the noise level rises by 0.1 per step
            w.writerow({"step": i, "loss": 1.0, "x_at/disc_acc": 1.0 if i <= steps // 2 else 0.75,
                        "x_at/disc_acc_clean": 1.0, "x_at/noise_level": 0.1 * i, "x_at/gen": 0.7})


def test_trajectory_means_per_part(tmp_path):
    path = tmp_path / "train.csv"
    _write_csv(path, 20)
    rows = diag_x_at.trajectory(str(path), parts=4)
    assert [(r["step_from"], r["step_to"]) for r in rows] == [(1, 5), (6, 10), (11, 15), (16, 20)]
    assert [r["x_at/disc_acc"] for r in rows] == [1.0, 1.0, 0.75, 0.75]
    assert rows[0]["x_at/noise_level"] == pytest.approx(0.3)  # mean of 0.1 .. 0.5
    out = subprocess.run([sys.executable, str(TOOLS / "diag_x_at.py"), "--train-csv", str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert "x_at/disc_acc" in out and len(out.strip().splitlines()) == 11


def test_a_run_without_x_at_is_named(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("step,loss\n1,1.0\n")
    with pytest.raises(SystemExit, match="no x_at/disc_acc"):
        diag_x_at.trajectory(str(path))
