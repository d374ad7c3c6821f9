#!/usr/bin/env python3
"""Benchmark the synthetic generator: keyframes per second for (a reduced count of) a config.

Example (the CPU benchmark config, 4 scenes x 20 keyframes, 2 worker processes):
    .venv/bin/python tools/bench_synthetic.py --config config/data/synthetic_small.yaml --scenes 4

Prints keyframes/s (all sensors, sweeps, masks and depth included), bytes per keyframe and the
projected wall time of the full config.
"""

from __future__ import annotations

import argparse
import resource
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from x3kd_core.config import load_yaml  # noqa: E402
from x3kd_core.data.synthetic import SynthConfig, generate_dataset  # noqa: E402


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the worker pool)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/data/synthetic_small.yaml")
    parser.add_argument("--scenes", type=int, default=4, help="scenes to generate (reduced count)")
    parser.add_argument("--keyframes", type=int, default=None, help="override keyframes_per_scene")
    parser.add_argument("--workers", type=int, default=None, help="override num_workers")
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one, deleted)")
    args = parser.parse_args(argv)

    full = load_yaml(SynthConfig, args.config)
    cfg = replace(full, num_scenes=args.scenes)
    if args.keyframes is not None:
        cfg = replace(cfg, keyframes_per_scene=args.keyframes)
    if args.workers is not None:
        cfg = replace(cfg, num_workers=args.workers)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="x3kd_bench_synth_"))
    try:
        start = time.perf_counter()
        cpu_start = _cpu_seconds()
        generate_dataset(cfg, out)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_start
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    keyframes = cfg.num_scenes * cfg.keyframes_per_scene
    rate = keyframes / seconds
    full_kf = full.num_scenes * full.keyframes_per_scene
    print(f"config: {args.config} ({cfg.image_width}x{cfg.image_height}, {cfg.sweeps_per_keyframe} sweeps/keyframe, "
          f"{cfg.num_workers} workers)")
    print(f"generated {keyframes} keyframes in {seconds:.1f} s: {rate:.2f} keyframes/s, "
          f"{size / keyframes / 1e6:.2f} MB/keyframe")
    print(f"CPU time (this process + workers): {cpu / keyframes:.2f} s/keyframe; machine load average "
          f"{os.getloadavg()[0]:.1f} (wall time is only comparable on an otherwise idle machine)")
    print(f"projected full config ({full_kf} keyframes): {full_kf / rate / 60:.1f} min, {size / keyframes * full_kf / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
