"""Time bev_pool (fast path) against bev_pool_reference (per-point loop).

Usage:
    python tools/bench_bev_pool.py [--device cpu|cuda] [--threads N] [--repeats R]

Prints milliseconds per call (median of R) for:
  * small: B=2, N_cam=6, D=48, H=8, W=22, C=64 onto 64x64 cells: geometry, fast forward,
    fast forward+backward, and the reference loop (run once, it takes seconds);
  * paper: B=1, N_cam=6, D=112 and D=59, H=16, W=44, C=80 onto 128x128 cells: fast path only.
Frustum points are drawn uniformly over a box 20% larger than the grid, so about half are dropped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from x3kd_core.config import BevGridConfig  # noqa: E402
from x3kd_core.ops.bev_pool import bev_pool, bev_pool_reference, precompute_bev_geometry  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn, device: torch.device, repeats: int) -> str:
    """Median wall ms per call, and process CPU ms per call (less sensitive to a loaded machine)."""
    fn()  # warm-up (allocator, kernels)
    _sync(device)
    times = []
    cpu_start = time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    cpu_ms = (time.process_time() - cpu_start) * 1e3 / repeats
    return f"{statistics.median(times):7.2f} ms (cpu {cpu_ms:7.2f})"


def _inputs(shape, channels: int, grid: BevGridConfig, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lo = torch.tensor([grid.x_range_m[0], grid.y_range_m[0], grid.z_range_m[0]]) * 1.2
    hi = torch.tensor([grid.x_range_m[1], grid.y_range_m[1], grid.z_range_m[1]]) * 1.2
    points = lo + torch.rand(*shape, 3, generator=gen) * (hi - lo)
    features = torch.randn(*shape, channels, generator=gen)
    return points.to(device), features.to(device)


def bench_case(name, shape, channels, grid, device, repeats, with_reference):
    points, features = _inputs(shape, channels, grid, device)
    geometry = precompute_bev_geometry(points, grid)
    grad_features = features.clone().requires_grad_(True)

    def fwd_bwd():
        grad_features.grad = None
        bev_pool(grad_features, geometry).sum().backward()

    with torch.no_grad():
        start = time.perf_counter()
        bev_pool(features, geometry)
        first_fwd_ms = (time.perf_counter() - start) * 1e3
        t_geo = _time_ms(lambda: precompute_bev_geometry(points, grid), device, repeats)
        t_fwd = _time_ms(lambda: bev_pool(features, geometry), device, repeats)
    t_fb = _time_ms(fwd_bwd, device, repeats)
    n_points = points[..., 0].numel()
    print(
        f"{name}: B,N,D,H,W={tuple(shape)} C={channels} grid={grid.size_xy} "
        f"points={n_points} kept={geometry.num_kept}\n"
        f"  geometry {t_geo} | fast fwd {t_fwd} | fast fwd+bwd {t_fb}"
    )
    if with_reference:
        start = time.perf_counter()
        with torch.no_grad():
            ref = bev_pool_reference(features.cpu(), points.cpu(), grid)
        t_ref = (time.perf_counter() - start) * 1e3
        fast = bev_pool(features, geometry).cpu()
        err = (fast - ref).abs().max().item()
        print(
            f"  reference loop {t_ref:10.1f} ms (1 run) | fast fwd (1 run) {first_fwd_ms:.2f} ms "
            f"| max |fast-ref| {err:.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__} device={device} threads={torch.get_num_threads()}")
    small_grid = BevGridConfig(x_range_m=(-51.2, 51.2), y_range_m=(-51.2, 51.2), cell_size_m=1.6)  # 64x64
    paper_grid = BevGridConfig(x_range_m=(-51.2, 51.2), y_range_m=(-51.2, 51.2), cell_size_m=0.8)  # 128x128
    bench_case("small", (2, 6, 48, 8, 22), 64, small_grid, device, args.repeats, not args.skip_reference)
    for depth_bins in (112, 59):
        shape = (1, 6, depth_bins, 16, 44)
        bench_case(f"paper D={depth_bins}", shape, 80, paper_grid, device, args.repeats, False)


if __name__ == "__main__":
    main()
