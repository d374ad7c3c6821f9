"""Time the BEV pooling ops side by side (issue 13.1), and their share of a student training step.

Usage:
    python tools/bench_bev_pool.py [--device cpu|cuda] [--threads N] [--repeats R]
                                   [--train-configs small main] [--train-steps S] [--reference]

For each scale, all on the same inputs (softmaxed depth, random context) and a nuScenes-like 6-camera
rig (tools/bench_student.py's), with rounds interleaved (old, new, cumsum, old, ...) so that load
changes hit every op alike:
  * old: LiftSplat's ``outer_product`` path: depth x context outer product + ``bev_pool`` (index_add);
  * new: ``bev_pool_depth_context`` (no outer product; sparse depth matrix x context, custom backward);
  * cumsum: the LSS paper's sort + cumsum trick, written here from its description (outer product,
    kept points sorted by cell, cumsum over them, differences at cell boundaries, a custom backward
    that hands each point its cell's gradient). Cell indices use ``floor`` (``.long()`` truncates
    towards zero and would pull points just below the range into cell 0).
Each op is timed forward only (no_grad) and forward + backward (w.r.t. depth and context), median of
R rounds; its per-geometry precompute is timed separately (LiftSplat runs it on every forward, and
``new`` needs ``precompute_bev_geometry`` + ``precompute_depth_context_geometry``). The max abs
difference of new and cumsum from old is printed.

Scales:
  * paper: B=1, 6 cameras, 256x704 input at stride 16 (16x44), D=112 (2..58 m, 0.5 m), C=80, 128x128;
  * small s16 / s8: student_small, B=2, 6 cameras, 64x176 input at stride 16 (4x11) and 8 (8x22),
    D=56 (2..58 m, 1 m), C=48, 64x64 cells of 1.6 m.
Then, per ``--train-configs`` (config/model/student_<name>.yaml), one training step (batch 2 x 6
cameras, forward + all losses + backward + AdamW, as tools/bench_student.py) with each pooling path,
identical weights, interleaved, and the new op's share of the step (its forward + backward and
geometry precompute at that scale, timed alone, over the step time).

Wall times on a loaded machine are upper bounds; the ratios within one run are the result. The
load average is printed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, also without an install
from x3kd_core.paths import REPO_ROOT  # noqa: E402
sys.path.insert(0, str(REPO_ROOT / "tools"))

from bench_student import _rig, synthetic_batch  # noqa: E402

from x3kd_core.config import BevGridConfig, load_yaml  # noqa: E402
from x3kd_core.models.student import CameraStudent, StudentConfig  # noqa: E402
from x3kd_core.models.view_transform import DepthBinsConfig, unproject_frustum  # noqa: E402
from x3kd_core.ops.bev_pool import (  # noqa: E402
    bev_pool,
    bev_pool_depth_context,
    bev_pool_reference,
    precompute_bev_geometry,
    precompute_depth_context_geometry,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the LSS sort + cumsum trick (comparator) -------------------------------------------------


@dataclasses.dataclass
class CumsumGeometry:
    kept_sorted: torch.Tensor  # (P,) flat frustum indices of kept points, sorted by cell
    ranks: torch.Tensor  # (P,) their cells (ascending)
    num_cells: int
    grid_size: tuple[int, int]
    batch_size: int


def precompute_cumsum_geometry(points: torch.Tensor, grid: BevGridConfig) -> CumsumGeometry:
    B = points.shape[0]
    n_x, n_y = grid.size_xy
    flat = points.reshape(-1, 3)
    ix = torch.floor((flat[:, 0] - grid.x_range_m[0]) / grid.cell_size_m)
    iy = torch.floor((flat[:, 1] - grid.y_range_m[0]) / grid.cell_size_m)
    keep = (ix >= 0) & (ix < n_x) & (iy >= 0) & (iy < n_y) & (flat[:, 2] >= grid.z_range_m[0]) & (
        flat[:, 2] < grid.z_range_m[1]
    )
    kept = torch.nonzero(keep).squeeze(1)
    batch = torch.div(kept, flat.shape[0] // max(B, 1), rounding_mode="floor")
    ranks = batch * (n_x * n_y) + ix[kept].long() * n_y + iy[kept].long()
    ranks, order = torch.sort(ranks)
    return CumsumGeometry(kept[order], ranks, B * n_x * n_y, (n_x, n_y), B)


class QuickCumsum(torch.autograd.Function):
    """Rows sorted by rank -> one summed row per distinct rank, via a cumsum and differences at the
    rank boundaries; backward gives every row the gradient of its rank's output row."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, ranks: torch.Tensor):
        last = torch.ones_like(ranks, dtype=torch.bool)
        last[:-1] = ranks[1:] != ranks[:-1]
        summed = rows.cumsum(0)[last]
        summed = torch.cat([summed[:1], summed[1:] - summed[:-1]])
        cells = ranks[last]
        ctx.save_for_backward(last)
        ctx.mark_non_differentiable(cells)
        return summed, cells

    @staticmethod
    def backward(ctx, grad_summed: torch.Tensor, _grad_ranks):
        (last,) = ctx.saved_tensors
        run = torch.cumsum(last, 0) - last.long()  # index of each row's rank among the outputs
        return grad_summed[run], None


def cumsum_pool(depth: torch.Tensor, context: torch.Tensor, geometry: CumsumGeometry) -> torch.Tensor:
    C = context.shape[2]
    lifted = depth.unsqueeze(-1) * context.permute(0, 1, 3, 4, 2).unsqueeze(2)
    rows = lifted.reshape(-1, C).index_select(0, geometry.kept_sorted)
    out = rows.new_zeros(geometry.num_cells, C)
    if rows.shape[0]:
        summed, cells = QuickCumsum.apply(rows, geometry.ranks)
        out = out.index_put((cells,), summed)
    n_x, n_y = geometry.grid_size
    return out.view(geometry.batch_size, n_x, n_y, C).permute(0, 3, 1, 2).contiguous()


# --- benchmark --------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    batch: int
    image_hw: tuple[int, int]
    stride: int
    bins: DepthBinsConfig
    channels: int
    grid: BevGridConfig


PAPER = Case("paper", 1, (256, 704), 16, DepthBinsConfig(2.0, 58.0, 0.5), 80, BevGridConfig(cell_size_m=0.8))
SMALL_GRID = BevGridConfig(cell_size_m=1.6)
SMALL_BINS = DepthBinsConfig(2.0, 58.0, 1.0)
SMALL_S16 = Case("small s16", 2, (64, 176), 16, SMALL_BINS, 48, SMALL_GRID)
SMALL_S8 = Case("small s8", 2, (64, 176), 8, SMALL_BINS, 48, SMALL_GRID)


def _case_inputs(case: Case, device: torch.device):
    K, T = _rig(case.image_hw)
    K = K.expand(case.batch, -1, -1, -1).contiguous()
    T = T.expand(case.batch, -1, -1, -1).contiguous()
    h, w = case.image_hw[0] // case.stride, case.image_hw[1] // case.stride
    points = unproject_frustum(K, T, case.bins.centers(), (h, w), case.stride).to(device)
    gen = torch.Generator().manual_seed(0)
    D, C = case.bins.num_bins, case.channels
    depth = torch.randn(case.batch, 6, D, h, w, generator=gen).softmax(2).to(device)
    context = torch.randn(case.batch, 6, C, h, w, generator=gen).to(device)
    return points, depth, context


def _timed_once(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def _interleaved(fns: dict, device: torch.device, repeats: int) -> dict:
    """Median ms per call of each fn, rounds interleaved, one warm-up call each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed_once(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def bench_case(case: Case, device: torch.device, repeats: int, reference: bool) -> dict:
    points, depth, context = _case_inputs(case, device)
    grid = case.grid
    geometry = precompute_bev_geometry(points, grid)
    geo_times = _interleaved(
        {
            "bev geometry": lambda: precompute_bev_geometry(points, grid),
            "+ depth_context": lambda: precompute_depth_context_geometry(geometry),
            "cumsum geometry": lambda: precompute_cumsum_geometry(points, grid),
        },
        device,
        repeats,
    )
    dc_geometry = precompute_depth_context_geometry(geometry)
    cs_geometry = precompute_cumsum_geometry(points, grid)

    ops = {
        "old": lambda d, c: bev_pool(d.unsqueeze(-1) * c.permute(0, 1, 3, 4, 2).unsqueeze(2), geometry),
        "new": lambda d, c: bev_pool_depth_context(d, c, dc_geometry),
        "cumsum": lambda d, c: cumsum_pool(d, c, cs_geometry),
    }
    with torch.no_grad():
        outs = {name: op(depth, context) for name, op in ops.items()}
        fwd = _interleaved({name: (lambda op=op: op(depth, context)) for name, op in ops.items()}, device, repeats)
    grad_out = torch.randn(outs["old"].shape, generator=torch.Generator().manual_seed(1)).to(device)
    d_req = depth.clone().requires_grad_(True)
    c_req = context.clone().requires_grad_(True)

    def fwd_bwd(op):
        d_req.grad = c_req.grad = None
        (op(d_req, c_req) * grad_out).sum().backward()

    grads = {}
    for name, op in ops.items():
        fwd_bwd(op)
        grads[name] = (d_req.grad.clone(), c_req.grad.clone())
    fb = _interleaved({name: (lambda op=op: fwd_bwd(op)) for name, op in ops.items()}, device, repeats)

    h, w = depth.shape[-2:]
    print(
        f"\n{case.name}: B={case.batch} N=6 D={case.bins.num_bins} features {h}x{w} (stride {case.stride}) "
        f"C={case.channels} BEV {grid.size_xy[0]}x{grid.size_xy[1]}; frustum points {geometry.row_index.numel()}, "
        f"kept {geometry.num_kept}, (cell, pixel) pairs {dc_geometry.num_pairs}; "
        f"outer product {depth.numel() * case.channels / 1e6:.1f} M floats"
    )
    print(f"  {'op':<8}{'forward ms':>12}{'fwd+bwd ms':>12}{'fwd x old':>11}{'f+b x old':>11}"
          f"{'max|d out|':>12}{'max|d grad|':>13}")
    for name in ops:
        err_out = (outs[name] - outs["old"]).abs().max().item()
        err_grad = max((a - b).abs().max().item() for a, b in zip(grads[name], grads["old"]))
        print(
            f"  {name:<8}{fwd[name]:>12.2f}{fb[name]:>12.2f}{fwd['old'] / fwd[name]:>10.1f}x"
            f"{fb['old'] / fb[name]:>10.1f}x{err_out:>12.1e}{err_grad:>13.1e}"
        )
    print("  geometry precompute ms (once per forward in LiftSplat): "
          + ", ".join(f"{k} {v:.2f}" for k, v in geo_times.items()))
    if reference:
        start = time.perf_counter()
        lifted = depth.unsqueeze(-1) * context.permute(0, 1, 3, 4, 2).unsqueeze(2)
        ref = bev_pool_reference(lifted.cpu(), points.cpu(), grid)
        print(f"  per-point reference loop ({(time.perf_counter() - start):.1f} s): max |new - ref| "
              f"{(outs['new'].cpu() - ref).abs().max().item():.1e}")
    return {"new_fb_ms": fb["new"], "new_geometry_ms": geo_times["bev geometry"] + geo_times["+ depth_context"],
            "old_fb_ms": fb["old"], "old_geometry_ms": geo_times["bev geometry"]}


def bench_training(name: str, device: torch.device, steps: int, case_times: dict) -> None:
    cfg = load_yaml(StudentConfig, REPO_ROOT / "config" / "model" / f"student_{name}.yaml")
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, pretrained_weights=None))
    torch.manual_seed(0)
    models, opts, steps_fns = {}, {}, {}
    base = CameraStudent.from_config(dataclasses.replace(cfg, bev_pool="depth_context")).to(device)
    batch = synthetic_batch(cfg, 2).to(device)
    for mode in ("outer_product", "depth_context"):
        model = copy.deepcopy(base)
        model.view_transform.bev_pool = mode
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-2)
        models[mode], opts[mode] = model, opt

        def step(model=model, opt=opt) -> None:
            out = model(batch.images, batch.intrinsics, batch.cam_to_ego)
            loss = sum(model.loss(out, batch).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps_fns[mode] = step
    ms = _interleaved(steps_fns, device, steps)
    stride = cfg.feature_stride
    key = "small s16" if stride == 16 else "small s8"
    op = case_times.get(key) if (cfg.image_hw, cfg.depth_bins.num_bins) == ((64, 176), 56) else None
    print(f"\nstudent_{name} training step (batch 2 x 6, stride {stride}, bev_pool as named; median of {steps}):")
    for mode in ("outer_product", "depth_context"):
        print(f"  {mode:<14}{ms[mode]:>9.1f} ms  {2000.0 / ms[mode]:6.2f} samples/s")
    print(f"  speed-up {ms['outer_product'] / ms['depth_context']:.2f}x")
    if op is not None:
        new_ms, old_ms = op["new_fb_ms"] + op["new_geometry_ms"], op["old_fb_ms"] + op["old_geometry_ms"]
        print(f"  pooling (fwd+bwd + geometry, timed alone at this scale): new {new_ms:.1f} ms = "
              f"{100 * new_ms / ms['depth_context']:.1f}% of its step; old {old_ms:.1f} ms = "
              f"{100 * old_ms / ms['outer_product']:.1f}% of its step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per op")
    parser.add_argument("--cases", nargs="+", default=["paper", "small_s16", "small_s8"])
    parser.add_argument("--train-configs", nargs="*", default=["small"],
                        help="student_<name>.yaml configs to time a training step of (none: skip)")
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--reference", action="store_true", help="also check the small s16 case against "
                        "the per-point reference loop (slow)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = f"threads={torch.get_num_threads()}" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"torch {torch.__version__} device={device} {where} load average {os.getloadavg()[0]:.2f}")
    cases = {"paper": PAPER, "small_s16": SMALL_S16, "small_s8": SMALL_S8}
    times = {}
    for key in args.cases:
        case = cases[key]
        times[case.name] = bench_case(case, device, args.repeats, args.reference and key == "small_s16")
    for name in args.train_configs:
        bench_training(name, device, args.train_steps, times)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
