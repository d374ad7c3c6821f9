"""The ``x3kd`` command line.

    x3kd data synth --config config/data/synthetic_small.yaml --out data/synth_small
    x3kd data show  --dataroot data/synth_small --version v1.0-synth --split synth_val --out pics/
    x3kd eval       --dataroot ... --version ... --split ... --results results.json --out eval/
    x3kd train      --experiment config/train/student_tiny.yaml [--out runs/X] [--set key.path=value ...] [--resume]
    x3kd demo       --out runs/demo
    x3kd export     --checkpoint last.pt --out student.onnx [--image-hw H W] [--fp16]
    x3kd bag write|eval ...   (ROS 2: added by x3kd_ros through the ``x3kd.commands`` entry point,
                               see x3kd_ros.commands; without x3kd_ros it says how to install it)

Every sub-command exits 0 on success, 2 on bad input (config, paths, files) with a one-line
message naming the problem, never a traceback for user errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from x3kd_core.config import ConfigError, load_yaml
from x3kd_core.paths import REPO_ROOT

DEFAULT_WORLD = REPO_ROOT / "config" / "data" / "synthetic_tiny.yaml"
DEMO_WORLD = REPO_ROOT / "config" / "data" / "synthetic_demo.yaml"


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def _cmd_data_synth(args) -> int:
    from x3kd_core.data.synthetic import SynthConfig, generate_dataset

    cfg = load_yaml(SynthConfig, args.config)
    if args.seed is not None:
        from dataclasses import replace

        cfg = replace(cfg, seed=args.seed)
    root = generate_dataset(cfg, args.out)
    print(f"wrote {cfg.version} to {root}")
    return 0


def _cmd_data_show(args) -> int:
    from x3kd_core import viz
    from x3kd_core.data.nuscenes import LoaderConfig, NuScenesSource

    source = NuScenesSource(args.dataroot, LoaderConfig(version=args.version, split=args.split,
                                                        image_hw=tuple(args.image_hw), lidar_sweeps=args.lidar_sweeps,
                                                        radar_sweeps=3))
    if not 0 <= args.index < len(source):
        raise UserError(f"--index {args.index} out of range: split '{args.split}' has {len(source)} samples")
    token = source.sample_tokens[args.index]
    sample = source.load_sample(token)
    out = Path(args.out)
    bev = viz.plot_bev(out / f"{token}_bev.png", sample.lidar_points, sample.boxes, radar_points=sample.radar_points,
                       title=f"{sample.scene_name} {token[:8]}: LiDAR (grey), radar (red), GT boxes")
    cams = viz.plot_cameras(out / f"{token}_cameras.png", sample.images, sample.rig, sample.boxes)
    print(f"wrote {bev} and {cams}")
    return 0


def _cmd_eval(args) -> int:
    from x3kd_core.eval.detection import evaluate

    metrics = evaluate(args.dataroot, args.version, args.split, args.results, args.out)
    print(json.dumps(metrics.summary(), indent=2))
    print("AP per class:", json.dumps({k: round(v, 4) for k, v in metrics.ap_per_class.items()}))
    return 0


def _cmd_train(args) -> int:
    import logging

    from x3kd_core.experiment import headline, load_experiment, train_experiment
    from x3kd_core.checkpoint import CheckpointError

    if (args.experiment is None) == (args.model is None):
        raise UserError("give exactly one of --experiment FILE and --model KIND")
    experiment = args.experiment or str(REPO_ROOT / "config" / "train" / f"{args.model}_small.yaml")
    overrides = [*distill_overrides(args.distill), *teacher_overrides(args.teachers), *(args.set or ())]
    exp = load_experiment(experiment, overrides)
    # The engine reports progress (steps, validation, checkpoints) through logging.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = args.out or exp.train.out_dir
    if args.result is not None:
        import datetime as dt

        from x3kd_core.ablation import git_commit

        started, commit = dt.datetime.now(dt.timezone.utc), git_commit()
    try:
        result = train_experiment(exp, out, resume=args.resume, device=args.device, source_path=str(args.experiment))
    except CheckpointError as err:
        raise UserError(str(err)) from err
    if args.result is not None and result.finished and result.metrics:
        import shlex

        from x3kd_core.ablation import result_record, write_record

        record = result_record(exp, result, started=started, commit=commit,
                               command="x3kd " + shlex.join(args.argv))
        record["overrides"] = overrides
        write_record(Path(args.result), record)
        print(f"result written to {args.result}")
    state = "finished" if result.finished else "stopped"
    print(f"{exp.name} ({exp.kind}): {state} at step {result.step}/{result.total_steps} in {result.train_wall_s:.1f} s; "
          f"checkpoint {result.checkpoint}")
    if result.last_losses:
        print("last losses:", ", ".join(f"{k}={v:.4g}" for k, v in result.last_losses.items()))
    if result.metrics:
        print(f"{exp.data.val_split}:", ", ".join(f"{k}={v:.4f}" for k, v in headline(exp.kind, result.metrics).items()))
        if "ap_per_class" in result.metrics:
            present = result.metrics.get("classes_present", [])
            print("AP per class:", ", ".join(f"{c}={result.metrics['ap_per_class'][c]:.3f}" for c in present))
    print(f"wrote {result.metrics_path}")
    return 0


_COMPONENTS = ("x_is", "x_fd", "x_at", "x_od")


def distill_overrides(text: str | None) -> list[str]:
    """``--distill x-is,x-fd`` -> ``--set`` assignments enabling exactly those components
    (``none``: no distillation; ``all``: the four). Names may use '-' or '_'."""
    if text is None:
        return []
    if text.strip().lower() == "none":
        return ["distill=null"]
    names = list(_COMPONENTS) if text.strip().lower() == "all" else [
        n.strip().lower().replace("-", "_") for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in _COMPONENTS]
    if unknown or not names:
        raise UserError(f"--distill: unknown component(s) {unknown or text!r}; use x-is, x-fd, x-at, x-od, all or none")
    return [f"distill.{c}.enabled={'true' if c in names else 'false'}" for c in _COMPONENTS]


def teacher_overrides(text: str | None) -> list[str]:
    """``--teachers lidar=a.pt,instance_seg=b.pt[,cache=DIR]`` -> ``teachers.<name>=<value>``."""
    if text is None:
        return []
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in ("lidar", "radar", "instance_seg", "cache", "bev_teacher"):
            raise UserError(f"--teachers: expected name=path with name in lidar, radar, instance_seg, cache, "
                            f"bev_teacher; got {part!r}")
        out.append(f"teachers.{name}={value.strip()}")
    return out


def _cmd_demo(args) -> int:
    import logging

    from x3kd_core.demo import run_demo

    # Training progress (step, loss, lr, samples/s, ETA) while the demo trains its models; the
    # rest of the library stays at WARNING so the demo's own stage lines remain readable.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("x3kd.train").setLevel(logging.INFO)

    if args.quick:
        run_demo(args.out, DEFAULT_WORLD, seed=args.seed, student_steps=2, lidar_steps=2, ros=not args.no_ros)
    else:
        run_demo(args.out, args.world, seed=args.seed, student_steps=args.student_steps,
                 lidar_steps=args.lidar_steps, ros=not args.no_ros)
    return 0


def _csv(text: str | None, cast=str) -> list | None:
    if not text:
        return None
    try:
        return [cast(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise UserError(f"bad list {text!r}: {err}") from None


def _cmd_ablate(args) -> int:
    import logging

    from x3kd_core.ablation import load_plan, pending_runs, run_plan, write_report

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # A child run (one variant, one seed) need not re-check every variant's experiment.
    single = args.variants is not None and args.seeds is not None and "," not in args.variants + args.seeds
    plan = load_plan(args.plan, check_experiments=not (single or args.report), extra=args.set or (),
                     results_dir=args.results, runs_dir=args.runs)
    if args.report:
        benchmarks = None if args.benchmarks == "none" else Path(args.benchmarks)
        report = write_report(plan, benchmarks)
        print((plan.results_path / "report.md").read_text())
        print(f"wrote {plan.results_path / 'report.md'}, report.json, report.png"
              + (f"; block 'ablation:{plan.name}' of {benchmarks}" if benchmarks else ""))
        return 0
    variants, seeds = _csv(args.variants), _csv(args.seeds, int)
    if args.list:
        for variant, seed in pending_runs(plan, variants, seeds):
            print(f"{variant} seed{seed}")
        return 0
    failed = run_plan(plan, variants=variants, seeds=seeds, jobs=args.jobs, device=args.device)
    if failed:
        print("failed runs: " + ", ".join(f"{v}/seed{s}" for v, s in failed), file=sys.stderr)
        return 1
    return 0


def _cmd_export(args) -> int:
    from x3kd_core.deploy.onnx_export import ExportError, export_checkpoint
    from x3kd_core.checkpoint import CheckpointError

    try:
        info = export_checkpoint(args.checkpoint, args.out, tuple(args.image_hw) if args.image_hw else None, args.fp16)
    except (ExportError, CheckpointError) as err:
        raise UserError(str(err)) from err
    size_mb = Path(args.out).stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.1f} MB, opset {info.opset}{', fp16' if info.fp16 else ''}): "
          f"{info.num_cameras} cameras x {info.image_hw[0]}x{info.image_hw[1]} -> head maps on a "
          f"{info.grid_size[0]}x{info.grid_size[1]} grid; BEV pooling in the graph: {info.bev_pool} "
          f"(checkpoint trained with {info.trained_bev_pool}, same weights); decoding + NMS stay in PyTorch")
    return 0


#: Entry-point group through which other packages add ``x3kd`` sub-commands (x3kd_ros adds ``bag``).
COMMANDS_ENTRY_POINTS = "x3kd.commands"

#: Sub-commands that come from the ROS side, and what to do where it is missing.
_ROS_COMMANDS = {"bag": "rosbag2 files: write a split as a bag, replay a bag through the ROS 2 graph and score it"}


def _add_plugin_commands(sub) -> None:
    """Sub-commands registered under :data:`COMMANDS_ENTRY_POINTS` (``name = module:register``,
    ``register(subparsers, UserError)``). x3kd_core itself imports nothing from x3kd_ros: the ROS
    commands reach the CLI only this way, and where they are not installed a placeholder says so."""
    from importlib.metadata import entry_points

    found: dict[str, str] = {}
    for ep in entry_points(group=COMMANDS_ENTRY_POINTS):
        try:
            register = ep.load()
        except ImportError as err:  # installed metadata, broken package: say why on use
            found[ep.name] = f"{ep.value} does not import ({err})"
            continue
        register(sub, UserError)
        found[ep.name] = ""
    for name, help_text in _ROS_COMMANDS.items():
        if found.get(name) == "":
            continue
        why = found.get(name) or "no package provides it here"
        missing = sub.add_parser(name, help=f"{help_text} (needs x3kd_ros)", add_help=False)
        missing.add_argument("rest", nargs=argparse.REMAINDER)
        missing.set_defaults(func=lambda args, name=name, why=why: _ros_missing(name, why))


def _ros_missing(name: str, why: str) -> int:
    raise UserError(f"'x3kd {name}' is a ROS 2 command of the x3kd_ros package ({why}): install x3kd_ros "
                    "(pip install -e . in the checkout, as tools/setup.sh does, or colcon build --packages-select "
                    "x3kd_ros) and run it again")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x3kd", description="X3KD multi-camera 3D detection: data, eval, demo.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="synthetic data and pictures").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="generate a synthetic nuScenes-format dataset")
    synth.add_argument("--config", default=str(DEFAULT_WORLD), help="SynthConfig YAML (config/data/*.yaml)")
    synth.add_argument("--out", required=True, help="dataroot to write")
    synth.add_argument("--seed", type=int, default=None, help="override the config's seed")
    synth.set_defaults(func=_cmd_data_synth)

    show = data.add_parser("show", help="BEV + camera pictures of one sample")
    show.add_argument("--dataroot", required=True)
    show.add_argument("--version", default="v1.0-synth")
    show.add_argument("--split", default="synth_val")
    show.add_argument("--index", type=int, default=0, help="sample index within the split")
    show.add_argument("--image-hw", type=int, nargs=2, default=(225, 400), metavar=("H", "W"))
    show.add_argument("--lidar-sweeps", type=int, default=1)
    show.add_argument("--out", required=True, help="folder for the PNGs")
    show.set_defaults(func=_cmd_data_show)

    ev = sub.add_parser("eval", help="nuScenes detection metrics of a submission JSON")
    ev.add_argument("--dataroot", required=True)
    ev.add_argument("--version", default="v1.0-synth")
    ev.add_argument("--split", default="synth_val")
    ev.add_argument("--results", required=True, help="nuScenes submission JSON")
    ev.add_argument("--out", required=True, help="folder for metrics_summary.json / metrics.json")
    ev.set_defaults(func=_cmd_eval)

    export = sub.add_parser("export", help="camera student -> ONNX (x3kd_core.deploy.onnx_export)")
    export.add_argument("--checkpoint", required=True, help="camera-student checkpoint (last.pt of x3kd train)")
    export.add_argument("--out", required=True, help="ONNX file to write")
    export.add_argument("--image-hw", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="network input size (multiples of 16; default: the checkpoint's)")
    export.add_argument("--fp16", action="store_true", help="float16 weights and image input (for GPU runtimes)")
    export.set_defaults(func=_cmd_export)

    from x3kd_core.convert.command import add_convert_parser  # argparse only; the converter loads on use

    add_convert_parser(sub)

    _add_plugin_commands(sub)

    train = sub.add_parser("train", help="train one experiment (config/train/*.yaml), then evaluate it")
    train.add_argument("--experiment", default=None, help="ExperimentConfig YAML (config/train/*.yaml)")
    train.add_argument("--model", default=None, choices=("lidar", "radar", "student", "camera_radar", "instance_seg"),
                       help="instead of --experiment: config/train/<model>_small.yaml")
    train.add_argument("--distill", default=None, metavar="x-is,x-fd,x-at,x-od",
                       help="enable exactly these X3KD components (all, none); camera students only")
    train.add_argument("--teachers", default=None, metavar="lidar=PT,instance_seg=PT[,cache=DIR]",
                       help="teacher checkpoints (and teacher-output cache folder) for --distill")
    train.add_argument("--out", default=None, help="run folder (default: the experiment's train.out_dir)")
    train.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                       help="override a config value, e.g. --set train.max_steps=100 (repeatable; YAML values)")
    train.add_argument("--resume", action="store_true", help="continue from <out>/last.pt if it exists")
    train.add_argument("--result", default=None, metavar="JSON",
                       help="when training finishes, write its metrics, command, commit, machine, thread count "
                            "and dataset fingerprint here (the schema of the ablation result files)")
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    train.set_defaults(func=_cmd_train)

    ablate = sub.add_parser("ablate", help="train an ablation plan's variants over seeds; --report tabulates them")
    ablate.add_argument("--plan", required=True, help="AblationPlan YAML (config/ablation/*.yaml)")
    ablate.add_argument("--variants", default=None, help="comma-separated subset of the plan's variants")
    ablate.add_argument("--seeds", default=None, help="comma-separated subset / other seeds (default: the plan's)")
    ablate.add_argument("--jobs", type=int, default=1, help="runs at once (child processes sharing the cores)")
    ablate.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                        help="override a config value of every run, after the plan's common ones (repeatable), "
                             "e.g. --set data.dataroot=<another world> --set teachers.lidar=<PT>")
    ablate.add_argument("--results", default=None, help="result folder (default: the plan's results_dir)")
    ablate.add_argument("--runs", default=None, help="run folder (default: the plan's runs_dir)")
    ablate.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    ablate.add_argument("--list", action="store_true", help="only print the runs that have no result file yet")
    ablate.add_argument("--report", action="store_true",
                        help="build report.{md,json,png} from the result files and update BENCHMARKS.md")
    ablate.add_argument("--benchmarks", default=str(REPO_ROOT / "BENCHMARKS.md"),
                        help="markdown file whose ablation block --report replaces ('none': leave it)")
    ablate.set_defaults(func=_cmd_ablate)

    demo = sub.add_parser("demo", help="the main job end to end on built-in synthetic data")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--world", default=str(DEMO_WORLD), help="SynthConfig YAML")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--student-steps", type=int, default=300, help="camera student training steps (0: no training)")
    demo.add_argument("--lidar-steps", type=int, default=150, help="LiDAR teacher training steps")
    demo.add_argument("--no-ros", action="store_true", help="skip the rosbag2 + live ROS 2 graph stage")
    demo.add_argument("--quick", action="store_true", help="seconds-long smoke run: tiny world, 2 training steps")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in result files
    from x3kd_core.data.nuscenes import DatasetError
    from x3kd_core.eval.detection import EvaluationError

    try:
        return args.func(args)
    except (UserError, ConfigError, DatasetError, EvaluationError, FileNotFoundError) as err:
        print(f"x3kd {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
