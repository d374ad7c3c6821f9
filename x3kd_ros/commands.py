"""The ROS-side ``x3kd`` sub-commands: ``x3kd bag write`` and ``x3kd bag eval``.

    x3kd bag write  --dataroot ... --out BAG
    x3kd bag eval   BAG --checkpoint student.pt [--teacher-lidar l.pt] [--teacher-radar r.pt] [--rate 0] --out DIR
                    [--remap GRAPH_TOPIC:=BAG_TOPIC ...] [--params-file FILE ...]   (other people's bags)

The ``x3kd`` command (:mod:`x3kd_core.cli`) imports nothing from x3kd_ros; it finds :func:`register`
through the ``x3kd.commands`` entry point that this package installs (setup.py). Importing this
module does not import rclpy: the handlers import the bag and graph code when they run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from x3kd_core.paths import REPO_ROOT

__all__ = ["register"]


def register(sub, user_error: type[Exception]) -> None:
    """Add ``bag write`` / ``bag eval`` to the ``x3kd`` sub-parsers ``sub``; bad input raises ``user_error``
    (the CLI prints it as one line and exits 2)."""
    bag = sub.add_parser("bag", help="rosbag2 files").add_subparsers(dest="bag_command", required=True)
    bag_write = bag.add_parser("write", help="a nuScenes-format split -> rosbag2 (x3kd_ros.bag.io)")
    bag_write.add_argument("--dataroot", required=True)
    bag_write.add_argument("--version", default="v1.0-synth")
    bag_write.add_argument("--split", default="synth_val")
    bag_write.add_argument("--out", required=True, help="bag folder to create (must not exist)")
    bag_write.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    bag_write.add_argument("--compressed", action="store_true", help="CompressedImage (the dataset's JPEGs) instead of rgb8 Image")
    bag_write.add_argument("--zstd", action="store_true", help="zstd-compress the storage (mcap chunks / sqlite3 messages)")
    bag_write.add_argument("--sweeps", action="store_true", help="also write the non-keyframe sweeps")
    bag_write.add_argument("--max-samples", type=int, default=None, help="only the first N keyframes of the split")
    bag_write.set_defaults(func=lambda args: _cmd_bag_write(args, user_error))
    bag_eval = bag.add_parser("eval", help="replay a bag through the live ROS 2 graph and score it (x3kd_ros.bag.evaluate)")
    bag_eval.add_argument("bag", help="rosbag2 folder (from `x3kd bag write`: sensors + ground truth; or any bag "
                          "whose topics --remap / --params-file map; without ground truth: no metrics)")
    bag_eval.add_argument("--checkpoint", required=True, help="camera-student checkpoint")
    bag_eval.add_argument("--teacher-lidar", default="", help="LiDAR teacher checkpoint (adds it and its comparison node)")
    bag_eval.add_argument("--teacher-radar", default="", help="radar teacher checkpoint (adds it and its comparison node)")
    bag_eval.add_argument("--rate", type=float, default=0.0,
                          help="0: as fast as the graph answers, one frame at a time (default); 1.0: real time")
    bag_eval.add_argument("--out", default=None, help="report folder (default: runs/bag_eval/<bag name>)")
    bag_eval.add_argument("--device", default="auto", help="where the nodes run their models: auto, cpu, cuda, cuda:N")
    bag_eval.add_argument("--dataroot", default=None, help="also evaluate with the devkit on these nuScenes tables")
    bag_eval.add_argument("--version", default=None, help="tables version (default: the one recorded in the bag)")
    bag_eval.add_argument("--split", default=None, help="split (default: the one recorded in the bag)")
    bag_eval.add_argument("--pictures", type=int, default=3, help="BEV pictures of this many keyframes")
    bag_eval.add_argument("--startup-timeout-s", type=float, default=120.0, help="longest wait for the nodes to come up")
    bag_eval.add_argument("--frame-timeout-s", type=float, default=30.0, help="longest wait for one frame's answer")
    bag_eval.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: a private one from the pid)")
    bag_eval.add_argument("--remap", action="append", default=[], metavar="GRAPH_TOPIC:=BAG_TOPIC",
                          help="remap rule for every node, as --ros-args -r (repeatable), e.g. "
                               "/cameras/cam_front/image_raw:=/my/front/image")
    bag_eval.add_argument("--params-file", action="append", default=[], metavar="FILE",
                          help="ROS 2 params file for the nodes, as --ros-args --params-file (repeatable), e.g. "
                               "image_topics / camera_info_topics / camera_frames of the bag's cameras")
    bag_eval.add_argument("--graph", default=None, help="graph description YAML (default: config/ros/graph.yaml)")
    bag_eval.set_defaults(func=lambda args: _cmd_bag_eval(args, user_error))


def _cmd_bag_write(args, user_error: type[Exception]) -> int:
    from x3kd_ros.bag.io import BagError, BagWriteConfig, write_bag

    cfg = BagWriteConfig(storage=args.storage, compressed_images=args.compressed, zstd=args.zstd,
                         max_samples=args.max_samples, include_sweeps=args.sweeps)
    try:
        report = write_bag(args.dataroot, args.version, args.split, args.out, cfg)
    except BagError as err:
        raise user_error(str(err)) from err
    print(report.summary())
    return 0


def _cmd_bag_eval(args, user_error: type[Exception]) -> int:
    from x3kd_ros.bag.evaluate import BagEvalConfig, BagEvalError, parse_remap, run_bag_eval
    from x3kd_ros.graph.environment import pid_domain_id

    out = Path(args.out) if args.out else REPO_ROOT / "runs" / "bag_eval" / Path(args.bag).resolve().name
    try:
        config = BagEvalConfig(checkpoint=args.checkpoint, lidar_checkpoint=args.teacher_lidar,
                               radar_checkpoint=args.teacher_radar, device=args.device, rate=args.rate,
                               ready_timeout_s=args.startup_timeout_s, ack_timeout_s=args.frame_timeout_s,
                               drain_timeout_s=args.frame_timeout_s, dataroot=args.dataroot or "",
                               version=args.version or "", split=args.split or "", num_pictures=args.pictures,
                               graph_config=args.graph or "",
                               remappings=tuple(parse_remap(r) for r in args.remap),
                               params_files=tuple(args.params_file))
        # A private domain by default: another graph on this host must not answer our frames.
        domain = args.domain_id if args.domain_id is not None else pid_domain_id()
        result = run_bag_eval(args.bag, out, config, log=lambda text: print(text, file=sys.stderr), domain_id=domain)
    except BagEvalError as err:
        raise user_error(str(err)) from err
    report = result.report
    for group, check in result.frames.items():
        print(f"frames {group}: {check.answered_once}/{check.sent} answered exactly once "
              f"({check.unanswered} unanswered, {check.answered_twice_or_more} more than once, "
              f"{check.unmatched_answers} answers without a frame)")
    if result.ground_truth is None:
        print("no ground truth in the bag: no metrics (frames, latency, rates, drops, teacher agreement)")
    for model, metrics in result.metrics.items():
        line = ", ".join(f"{k}={v:.4f}" for k, v in metrics.summary().items())
        print(f"{model} (scored from the bag): {line}")
        if model in result.devkit_metrics:
            line = ", ".join(f"{k}={v:.4f}" for k, v in result.devkit_metrics[model].summary().items())
            print(f"{model} (devkit on {config.dataroot}): {line}")
    for model, lat in report["latency"].items():
        e2e, mdl = lat["end_to_end_ms"], lat["model_ms"]
        fmt = lambda d: "/".join("-" if d[k] is None else f"{d[k]:.1f}" for k in ("p50", "p90", "p99"))  # noqa: E731
        print(f"{model} latency ms p50/p90/p99: end-to-end {fmt(e2e)} (n={e2e['n']}), model {fmt(mdl)} (n={mdl['n']})")
    for model, rate in report["rates"].items():
        drops = ", ".join(f"{k} {rate[k]}" for k in ("busy_drops", "inference_errors") if k in rate)
        print(f"{model} rates: {rate['answers']}/{rate['frames_sent']} frames answered, "
              f"{rate['answers_per_s']:.2f} answers/s of replay" + (f"; {drops}" if drops else ""))
    for teacher, comp in report["comparison"].items():
        total = comp["total"] or {}
        print(f"comparison with {teacher}: {comp['pairs']} pairs, precision {total.get('precision')}, "
              f"recall {total.get('recall')}")
    print(f"wrote {result.report_path}")
    failed = [g for g, c in result.frames.items() if not c.ok]
    crashed = {k: c for k, c in result.exit_codes.items() if c != 0}
    if failed or crashed:
        print(f"x3kd bag eval: not every frame was answered exactly once ({failed}) or a node did not exit "
              f"cleanly ({crashed})", file=sys.stderr)
        return 1
    return 0
