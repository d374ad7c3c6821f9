"""tools/compare_losses.py: paired per-loss differences of two variants' training logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import compare_losses  # noqa: E402


def _run(root: Path, seed: int, heatmap: list[float], finished: bool = True, extra: str | None = None) -> None:
    d = root / f"seed{seed}"
    d.mkdir(parents=True)
    cols = ["step", "lr", "heatmap"] + ([extra] if extra else [])
    lines = [",".join(cols)]
    for i, h in enumerate(heatmap, start=1):
        lines.append(",".join([str(10 * i), "0.001", str(h)] + (["1.0"] if extra else [])))
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    if finished:
        (d / "metrics.json").write_text(json.dumps({"finished": True, "step": 10 * len(heatmap)}))


def test_paired_tail_means(tmp_path):
    a, b = tmp_path / "with", tmp_path / "without"
    # last 20 % of 10 logged steps = the last 2 rows
    _run(a, 0, [9, 9, 9, 9, 9, 9, 9, 9, 0.8, 0.6], extra="x_at/gen")
    _run(b, 0, [5, 5, 5, 5, 5, 5, 5, 5, 0.5, 0.5])
    _run(a, 1, [9] * 8 + [0.4, 0.4], extra="x_at/gen")
    _run(b, 1, [5] * 8 + [0.5, 0.5])
    _run(a, 2, [1.0] * 10, finished=False)  # still running: left out
    _run(b, 2, [1.0] * 10)
    rows = {r["column"]: r for r in compare_losses.compare(a, b, [0, 1, 2], tail=0.2)}
    assert set(rows) == {"heatmap"}  # x_at/gen only in A; step and lr are not losses
    h = rows["heatmap"]
    assert h["n"] == 2 and h["positive"] == 1
    assert h["a"] == pytest.approx(0.55) and h["b"] == pytest.approx(0.5)
    assert h["delta_mean"] == pytest.approx(0.05) and h["delta_std"] == pytest.approx(0.3 / 2 ** 0.5)  # deltas +0.2, -0.1
    out = subprocess.run([sys.executable, str(TOOLS / "compare_losses.py"), str(a), str(b), "--seeds", "0", "1"],
                         capture_output=True, text=True, check=True).stdout
    assert "2 paired seeds" in out and "+0.0500 ± 0.2121 (1/2 up)" in out


def test_no_finished_pair_is_an_error(tmp_path):
    _run(tmp_path / "a", 0, [1.0], finished=False)
    _run(tmp_path / "b", 0, [1.0])
    with pytest.raises(SystemExit, match="no seed of \\[0\\] has a finished run"):
        compare_losses.compare(tmp_path / "a", tmp_path / "b", [0])
