#!/usr/bin/env python3
"""Per ablation run: how many classes reach the nuScenes TP-metric gate (recall >= 10 %).

    .venv/bin/python tools/ablation_tp_classes.py runs/ablation/x3kd_small

nuscenes-devkit sets a class's five TP errors to 1 (the worst) when its recall never reaches
10 %; NDS averages ``1 - min(1, error)`` over classes, so at low mAP the TP half of NDS mostly
counts how many classes pass that gate, a noisy count. Reads ``<run>/metrics.json`` of every
``<variant>/seed<k>`` folder below the given run folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation/x3kd_small")
    print(f"{'variant':16s} {'seed':>4s} {'NDS':>7s} {'mAP':>7s}  classes past the gate")
    for path in sorted(root.glob("*/seed*/metrics.json")):
        m = json.loads(path.read_text())["metrics"]
        passed = [c for c, e in m["tp_errors_per_class"].items() if e.get("trans_err", 1.0) < 1.0]
        print(f"{path.parts[-3]:16s} {path.parts[-2][4:]:>4s} {m['NDS']:7.4f} {m['mAP']:7.4f}  {len(passed)}: {', '.join(passed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
