"""``x3kd convert``: the command-line face of :mod:`x3kd_core.convert`.

    x3kd convert mmdet3d-centerpoint --checkpoint X.pth --config-name NAME --out teacher.pt
    x3kd convert mmdet-maskrcnn --checkpoint X.pth --config-name NAME --out teacher.pt
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_convert_parser", "run_convert"]


def add_convert_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``convert`` and its source kinds on the ``x3kd`` parser's subparsers."""
    from x3kd_core.convert.mmdet3d import KNOWN_CENTERPOINT_CONFIGS

    convert = subparsers.add_parser("convert", help="other toolboxes' checkpoints -> x3kd teacher checkpoints")
    kinds = convert.add_subparsers(dest="source", required=True)
    cp = kinds.add_parser("mmdet3d-centerpoint", help="mmdet3d CenterPoint-pillar (.pth) -> x3kd LiDAR teacher")
    cp.add_argument("--checkpoint", required=True, help="the mmdet3d checkpoint (.pth)")
    cp.add_argument("--config-name", required=True, choices=sorted(KNOWN_CENTERPOINT_CONFIGS),
                    help="the mmdet3d config the checkpoint was trained with (file name without .py)")
    cp.add_argument("--out", required=True, help="x3kd checkpoint to write (use it as teachers.lidar)")
    cp.add_argument("--grid-z-range", type=float, nargs=2, default=None, metavar=("Z_MIN", "Z_MAX"),
                    help="z range of the recorded BEV grid (default: the model's point range); the student's grid "
                         "must equal the teacher's, z included")
    from x3kd_core.convert.mmdet import KNOWN_MASKRCNN_CONFIGS

    mr = kinds.add_parser("mmdet-maskrcnn", help="mmdet Mask R-CNN on nuImages (.pth) -> x3kd instance-seg teacher")
    mr.add_argument("--checkpoint", required=True, help="the mmdet checkpoint (.pth)")
    mr.add_argument("--config-name", required=True, choices=sorted(KNOWN_MASKRCNN_CONFIGS),
                    help="the mmdet3d nuImages config the checkpoint was trained with (file name without .py)")
    mr.add_argument("--out", required=True, help="x3kd checkpoint to write (use it as teachers.instance_seg)")
    convert.set_defaults(func=run_convert)
    return convert


def run_convert(args: argparse.Namespace) -> int:
    """Convert, then print one JSON line saying what was written."""
    if args.source == "mmdet-maskrcnn":
        return _run_maskrcnn(args)
    from x3kd_core.convert.mmdet3d import KNOWN_CENTERPOINT_CONFIGS, convert_centerpoint, mirror_grid

    config = KNOWN_CENTERPOINT_CONFIGS[args.config_name]
    from x3kd_core.checkpoint import CheckpointError

    z = tuple(args.grid_z_range) if args.grid_z_range else None
    try:
        path = convert_centerpoint(args.checkpoint, config, args.out, grid_z_range_m=z)
    except CheckpointError as err:  # unsafe / misfit checkpoint: a user error, not a crash
        print(f"x3kd convert: error: {err}", file=sys.stderr)
        return 2
    grid = mirror_grid(config, z)
    print(json.dumps({
        "out": str(path), "kind": "lidar", "mmdet3d_config": config.source, "classes": list(config.class_names),
        "grid": {"x_range_m": grid.x_range_m, "y_range_m": grid.y_range_m, "z_range_m": grid.z_range_m,
                 "cell_size_m": grid.cell_size_m},
        "lidar_sweeps": config.sweeps, "nms": config.nms_type,
    }))
    return 0


def _run_maskrcnn(args: argparse.Namespace) -> int:
    from x3kd_core.checkpoint import CheckpointError
    from x3kd_core.convert.mmdet import KNOWN_MASKRCNN_CONFIGS, convert_maskrcnn

    source = KNOWN_MASKRCNN_CONFIGS[args.config_name]
    try:
        path = convert_maskrcnn(args.checkpoint, source, args.out)
    except CheckpointError as err:  # unsafe / misfit checkpoint: a user error, not a crash
        print(f"x3kd convert: error: {err}", file=sys.stderr)
        return 2
    seg = source.segmenter_config()
    print(json.dumps({
        "out": str(path), "kind": "instance_seg", "mmdet_config": source.source, "classes": list(source.class_names),
        "backbone": seg.backbone, "test_scale": list(source.test_scale), "conventions": seg.conventions,
    }))
    return 0
