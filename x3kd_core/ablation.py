"""``x3kd ablate``: train the variants of one experiment over several seeds and tabulate them.

A *plan* (``config/ablation/*.yaml``) names one experiment file, the ``--set`` overrides shared by
every run (``common``: the equal budget, the teacher cache, ...), the variants (each a list of
further overrides: ``baseline: [distill=null]``, ``x_fd: [distill.x_is.enabled=false, ...]``)
and the seeds. Every (variant, seed) run is an ordinary :func:`~x3kd_core.experiment.train_experiment`
run with ``train.seed=<seed>``; its checkpoint and logs go to ``<runs_dir>/<variant>/seed<k>/``
(not committed) and its result to ``<results_dir>/<variant>/seed<k>.json`` (committed: the table
can be assembled from runs made on different days and machines; each file says which commit,
machine and command made it). A run whose result file exists is not run again.

``x3kd ablate --plan P --report`` reads every result file of the plan and writes
``<results_dir>/report.{md,json,png}`` (mean +- sample standard deviation over seeds of mAP, NDS
and the five TP errors; a bar chart with error bars) and puts the markdown table into
BENCHMARKS.md between ``<!-- ablation:<name> -->`` markers.

The bar of the plan (issue 12), judged on paired differences (``reference`` minus ``baseline`` run
of the same seed): ``reference`` (full X3KD) beats ``baseline`` on EVERY seed in both NDS and
mAP, with a mean paired ΔNDS of at least :data:`MIN_NDS_GAIN` and more than twice the standard
deviation of the paired ΔNDS, over at least 3 seeds. The report states whether it passes, and
which condition fails if not. With ``teacher_result`` (the LiDAR teacher's result record, or one per
world) it also reports the share of the camera -> LiDAR mAP gap that ``reference`` closes.

Each component's paired effect is read three ways from the plan's variant names (any that were run):
*alone* ``x_<c>`` - ``baseline``; *added* in the paper's order X-IS, X-FD, X-AT, X-OD, the
cumulative variants named by joining the components with ``+`` (``x_is``, ``x_is+x_fd``,
``x_is+x_fd+x_at``, then ``reference``) minus the one before (``baseline`` before ``x_is``);
*removed*: ``reference`` - ``<reference>_no_x_<c>`` (leave-one-out). All paired by seed. The last
cumulative step before ``reference`` is the same model as ``<reference>_no_x_od``: a plan holds one
of the two (:func:`load_plan` rejects two variants with the same overrides or experiment) and the report takes
whichever it has; X-OD's *added* effect is then its *removed* one and is shown once.

One file on purpose (issue 14): it is the one ``x3kd ablate`` command; the plan, its runs and
its report share the plan schema and the result-file layout.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from x3kd_core.config import ConfigError
from x3kd_core.distill.config import COMPONENTS
from x3kd_core.paths import REPO_ROOT

__all__ = [
    "METRICS",
    "AblationPlan",
    "load_plan",
    "result_path",
    "pending_runs",
    "run_one",
    "result_record",
    "git_commit",
    "write_record",
    "prepare_teacher_caches",
    "run_plan",
    "VariantSummary",
    "summarise",
    "component_effects",
    "paired_deltas",
    "write_report",
]

_LOG = logging.getLogger("x3kd.ablation")

#: Metrics tabulated per variant (nuScenes detection: higher is better for mAP / NDS only).
METRICS = ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")

#: The smallest mean paired NDS gain of ``reference`` over ``baseline`` that passes the bar.
MIN_NDS_GAIN = 0.02


@dataclass(frozen=True)
class AblationPlan:
    """One ablation (see the module docstring).

    name: identifier (result folder, BENCHMARKS.md marker). title: one line for the report.
    experiment: the ExperimentConfig YAML every run starts from. common: overrides of every run.
    variants: variant name -> its overrides, in table order. seeds: ``train.seed`` values.
    baseline / reference: the two variants the bar compares (reference must beat baseline).
    results_dir / runs_dir: committed result JSON / uncommitted run folders (repo-relative).
    notes: free text copied under the table.
    teacher_result: the LiDAR teacher's result records (``results/models/*.json``; optional; the YAML
        takes one path or a list, one per world the runs used): the report states the share of the
        camera -> teacher mAP gap that ``reference`` closes, each seed against the teacher of its world.
    extra: overrides given on the command line (``x3kd ablate --set``), applied after ``common``
        and before the variant's own: how the same plan runs on another world
        (``--set data.dataroot=...``) or with other teachers (``--set teachers.lidar=...``).
    """

    name: str
    experiment: str
    variants: dict[str, tuple[str, ...]]
    seeds: tuple[int, ...] = (0, 1, 2)
    common: tuple[str, ...] = ()
    baseline: str = "baseline"
    reference: str = "x3kd"
    title: str = ""
    results_dir: str = ""
    runs_dir: str = ""
    notes: str = ""
    teacher_result: tuple[str, ...] = ()
    source: str = ""
    extra: tuple[str, ...] = ()

    def overrides(self, variant: str, seed: int) -> list[str]:
        """All ``--set`` assignments of one run, in the order they are applied."""
        return [*self.common, *self.extra, *self.variants[variant], f"train.seed={seed}"]

    def command_options(self) -> list[str]:
        """The ``x3kd ablate`` options that re-create this plan from its file (``--set``,
        ``--results``, ``--runs``), for child processes and result records."""
        opts = [arg for value in self.extra for arg in ("--set", value)]
        if self.results_dir:
            opts += ["--results", str(self.results_path)]
        if self.runs_dir:
            opts += ["--runs", str(self.runs_path)]
        return opts

    @property
    def results_path(self) -> Path:
        return _repo_path(self.results_dir or f"results/ablation/{self.name}")

    @property
    def runs_path(self) -> Path:
        return _repo_path(self.runs_dir or f"runs/ablation/{self.name}")


def _display_path(path: Path) -> Path:
    """``path`` relative to the repository when inside it (as written in reports), else as is."""
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def _repo_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def _str_list(value, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of 'key.path=value' strings, got {value!r}")
    return tuple(value)


def load_plan(path: str | os.PathLike, *, check_experiments: bool = True, extra: Sequence[str] = (),
              results_dir: str | None = None, runs_dir: str | None = None) -> AblationPlan:
    """Read and validate a plan YAML.

    ``extra`` (command-line ``--set`` overrides, see :class:`AblationPlan`), ``results_dir`` and
    ``runs_dir`` replace or extend what the file says.

    With ``check_experiments`` every variant's experiment is loaded (with seed 0) so that a bad
    override fails here, naming ``variants.<name>``, not an hour into the ablation.

    Raises:
        ConfigError: with the key path of the problem.
    """
    import yaml

    from x3kd_core.experiment import load_experiment

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"plan: file not found: {path}")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"plan: {path} must hold a mapping")
    known = {"name", "title", "experiment", "common", "variants", "seeds", "baseline", "reference",
             "results_dir", "runs_dir", "notes", "teacher_result"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    for key in ("name", "experiment", "variants"):
        if key not in raw:
            raise ConfigError(f"{key}: required")
    variants_raw = raw["variants"]
    if not isinstance(variants_raw, dict) or not variants_raw:
        raise ConfigError("variants: expected a non-empty mapping of name -> list of overrides")
    variants = {str(k): _str_list(v, f"variants.{k}") for k, v in variants_raw.items()}
    seeds = raw.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"seeds: expected a non-empty list of integers, got {seeds!r}")
    plan = AblationPlan(
        name=str(raw["name"]), title=str(raw.get("title", "")), experiment=str(raw["experiment"]),
        common=_str_list(raw.get("common"), "common"), variants=variants, seeds=tuple(seeds),
        baseline=str(raw.get("baseline", "baseline")), reference=str(raw.get("reference", "x3kd")),
        # Command-line folders (--results / --runs) replace the file's, resolved against the caller's cwd.
        results_dir=str(Path(results_dir).resolve()) if results_dir else str(raw.get("results_dir", "")),
        runs_dir=str(Path(runs_dir).resolve()) if runs_dir else str(raw.get("runs_dir", "")),
        notes=str(raw.get("notes", "")), teacher_result=_teacher_results(raw.get("teacher_result")),
        source=str(path), extra=tuple(extra),
    )
    for key in ("baseline", "reference"):
        if getattr(plan, key) not in variants:
            raise ConfigError(f"{key}: {getattr(plan, key)!r} is not one of the variants {list(variants)}")
    same: dict[frozenset, str] = {}
    for name, overrides in variants.items():
        first = same.setdefault(frozenset(overrides), name)
        if first != name:
            raise ConfigError(f"variants.{name}: same overrides as variants.{first} (it would train the same "
                              "model twice); keep one of them")
    if check_experiments:
        loaded: dict[str, object] = {}
        for name in variants:
            where = f"variants.{name}" if not extra else f"variants.{name} (with --set {' '.join(extra)})"
            try:
                exp = load_experiment(_experiment_path(plan), plan.overrides(name, plan.seeds[0]))
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            # overrides that differ in text can still set the experiment's own values (e.g. the default)
            twin = next((other for other, e in loaded.items() if e == exp), None)
            if twin is not None:
                raise ConfigError(f"{where}: trains the same experiment as variants.{twin}; keep one of them")
            loaded[name] = exp
    return plan


def result_path(plan: AblationPlan, variant: str, seed: int) -> Path:
    """The committed result file of one run."""
    return plan.results_path / variant / f"seed{seed}.json"


def pending_runs(plan: AblationPlan, variants: Optional[Sequence[str]] = None,
                 seeds: Optional[Sequence[int]] = None) -> list[tuple[str, int]]:
    """(variant, seed) pairs without a result file, seed-major (every variant of the first seed
    first, so an interrupted ablation still has complete rows to compare)."""
    variants = list(variants or plan.variants)
    for v in variants:
        if v not in plan.variants:
            raise ConfigError(f"--variants: {v!r} is not in the plan (variants: {', '.join(plan.variants)})")
    seeds = list(plan.seeds if seeds is None else seeds)
    return [(v, s) for s in seeds for v in variants if not result_path(plan, v, s).is_file()]


def current_world(plan: AblationPlan) -> Optional[str]:
    """The dataset fingerprint the plan's runs would train on now (None when the data is missing)."""
    from x3kd_core.data.fingerprint import dataset_fingerprint
    from x3kd_core.experiment import load_experiment, resolve_dataroot

    exp = load_experiment(_experiment_path(plan), plan.overrides(next(iter(plan.variants)), plan.seeds[0]))
    try:
        return dataset_fingerprint(resolve_dataroot(exp.data.dataroot), exp.data.version)["sha256_16"]
    except FileNotFoundError:
        return None


def results_on_other_data(plan: AblationPlan, variants: Optional[Sequence[str]] = None,
                          seeds: Optional[Sequence[int]] = None) -> list[str]:
    """One line per existing result file (of the asked variants and seeds) that ran on other data
    than the plan's data now: such a (variant, seed) counts as done and is not rerun, so the rows run
    now will not pair with it; the line says how to run this world into a folder of its own."""
    world = current_world(plan)
    if world is None:
        return []
    lines = []
    for variant in variants or plan.variants:
        for seed in plan.seeds if seeds is None else seeds:
            path = result_path(plan, variant, seed)
            if not path.is_file():
                continue
            recorded = _world(json.loads(path.read_text()))
            if recorded is not None and recorded != world:
                lines.append(f"{_display_path(path)} ran on data {recorded}, the data now is {world}: it is kept and "
                             f"not rerun, so runs made now do not pair with it; for this data in a folder of its own: "
                             f"x3kd ablate --plan {plan.source} --results <dir>")
    return lines


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_description() -> str:
    """CPU / GPU and thread count, for result files (no host names)."""
    import torch

    accel = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()} {os.cpu_count()} cores, {accel}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")


def _experiment_path(plan: AblationPlan) -> Path:
    p = Path(plan.experiment)
    return p if p.is_file() else _repo_path(plan.experiment)


def result_record(exp, result, *, command: str, commit: Optional[str], started: _dt.datetime) -> dict:
    """The committed JSON record of one finished training run (ablation runs, results/models/*.json).

    Besides the metrics it names what is needed to reproduce and compare the number: the
    command, the commit the run started from, the machine and torch thread count (CPU training is
    bit-reproducible only at the same thread count), and the fingerprint of the dataset
    (:func:`x3kd_core.data.fingerprint.dataset_fingerprint`). A distilled run also names its
    teachers: the checkpoint each enabled component reads and the first 16 hex digits of its SHA-256
    (so a run made after a teacher was retrained can be told from one made before).
    """
    import torch

    from x3kd_core.data.fingerprint import dataset_fingerprint
    from x3kd_core.experiment import resolve_dataroot

    m = result.metrics
    return {
        "experiment_name": exp.name,
        "kind": exp.kind,
        "command": command,
        "distill": list(exp.distill.enabled_components) if getattr(exp, "distill", None) is not None else [],
        "git_commit": commit,
        "machine": machine_description(),
        "torch_threads": torch.get_num_threads(),
        "dataset": {"dataroot": str(exp.data.dataroot), "version": exp.data.version,
                    **dataset_fingerprint(resolve_dataroot(exp.data.dataroot), exp.data.version)},
        "started_utc": started.isoformat(timespec="seconds"),
        "steps": result.step,
        "batch_size": exp.train.batch_size,
        # train_wall_s: every process of the run (a resumed run's checkpoint carries the earlier time;
        # checkpoints older than that field count it as 0, and start_step then says so).
        "train_wall_s": result.train_wall_s,
        "sec_per_step": result.train_wall_s / max(result.step, 1),
        "start_step": result.start_step,
        "eval_split": exp.data.val_split,
        "eval_samples": m.get("num_samples"),
        # Detectors: the nuScenes metrics; other kinds (the instance-segmentation teacher): their
        # own scalar metrics (mask AP, ...).
        "metrics": ({k: float(m[k]) for k in METRICS} if all(k in m for k in METRICS) else
                    {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}),
        "ap_per_class": {k: float(v) for k, v in m.get("ap_per_class", {}).items()},
        "last_losses": result.last_losses,
        "teachers": teacher_fingerprints(exp),
    }


def teacher_fingerprints(exp) -> dict:
    """Teacher name -> ``{"checkpoint": path, "sha256_16": first 16 hex digits}`` of a distilled run.

    Only the teachers the enabled components need (``teachers.required``); ``{}`` without distillation.
    """
    from x3kd_core.distill.teacher_cache import file_sha256
    from x3kd_core.paths import resolve_path

    distill = getattr(exp, "distill", None)
    if distill is None:
        return {}
    out = {}
    for name in sorted(exp.teachers.required(distill)):
        path = getattr(exp.teachers, name)
        out[name] = {"checkpoint": str(path), "sha256_16": file_sha256(resolve_path(path))[:16]}
    return out


def write_record(path: Path, record: dict) -> None:
    """Write ``record`` as JSON atomically (a crash never leaves half a result file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def run_one(plan: AblationPlan, variant: str, seed: int, *, device: Optional[str] = None) -> dict:
    """Train and evaluate one (variant, seed); write and return its result dict."""
    from x3kd_core.experiment import load_experiment, train_experiment

    overrides = plan.overrides(variant, seed)
    exp = load_experiment(_experiment_path(plan), overrides)
    out = plan.runs_path / variant / f"seed{seed}"
    started = _dt.datetime.now(_dt.timezone.utc)
    commit = git_commit()  # the code this run starts with (the tree may change while it trains)
    # A run stopped part-way (machine gone, session over) continues from its last checkpoint: the
    # engine's resume is exact, so the result equals an uninterrupted run's.
    result = train_experiment(exp, out, device=device, source_path=plan.experiment, resume=True)
    if not result.finished:
        raise RuntimeError(f"{plan.name}/{variant}/seed{seed}: training stopped at step {result.step}")
    record = {
        "plan": plan.name,
        "variant": variant,
        "seed": seed,
        "experiment": plan.experiment,
        "overrides": overrides,
        **result_record(exp, result, started=started, commit=commit,
                        command=" ".join(["x3kd ablate --plan", plan.source or plan.name, *plan.command_options(),
                                          "--variants", variant, "--seeds", str(seed)])),
    }
    write_record(result_path(plan, variant, seed), record)
    return record


def prepare_teacher_caches(plan: AblationPlan, variants: Sequence[str]) -> None:
    """Build (or check) the teacher caches the variants use, once, before runs share them."""
    from x3kd_core.experiment import build_training_task, load_experiment

    seen: set[tuple] = set()
    for variant in variants:
        exp = load_experiment(_experiment_path(plan), plan.overrides(variant, plan.seeds[0]))
        if exp.distill is None or exp.teachers.cache is None:
            continue
        needed = tuple(sorted(exp.teachers.required(exp.distill)))
        if needed in seen:
            continue
        seen.add(needed)
        build_training_task(exp)


def run_plan(plan: AblationPlan, *, variants: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None,
             jobs: int = 1, device: Optional[str] = None) -> list[tuple[str, int]]:
    """Run every pending (variant, seed); ``jobs`` > 1 runs that many child processes at once,
    each with ``cores // jobs`` torch threads. Returns the pairs that failed (logged)."""
    todo = pending_runs(plan, variants, seeds)
    for line in results_on_other_data(plan, variants, seeds):
        _LOG.warning("%s", line)
    _LOG.info("%s: %d runs to do: %s", plan.name, len(todo), ", ".join(f"{v}/seed{s}" for v, s in todo))
    if not todo:
        return []
    failed: list[tuple[str, int]] = []
    if jobs <= 1:  # in one process a missing cache is simply built by the first run that needs it
        for variant, seed in todo:
            try:
                rec = run_one(plan, variant, seed, device=device)
                _LOG.info("%s/seed%d: NDS %.4f mAP %.4f", variant, seed, rec["metrics"]["NDS"], rec["metrics"]["mAP"])
            except Exception:  # one failed run must not lose the others; the log has the traceback
                _LOG.exception("%s/seed%d failed", variant, seed)
                failed.append((variant, seed))
        return failed
    # Child processes must not build one cache folder at once: build what they need first.
    prepare_teacher_caches(plan, sorted({v for v, _ in todo}, key=list(plan.variants).index))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    queue = list(todo)
    running: dict[subprocess.Popen, tuple[str, int]] = {}
    log_dir = plan.runs_path / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    while queue or running:
        while queue and len(running) < jobs:
            variant, seed = queue.pop(0)
            cmd = [sys.executable, "-m", "x3kd_core.cli", "ablate", "--plan", str(Path(plan.source).resolve()),
                   *plan.command_options(), "--variants", variant, "--seeds", str(seed)]
            if device:
                cmd += ["--device", device]
            log = open(log_dir / f"{variant}_seed{seed}.log", "w")
            running[subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)] = (variant, seed)
            log.close()
        time.sleep(2.0)
        for proc in [p for p in running if p.poll() is not None]:
            variant, seed = running.pop(proc)
            if proc.returncode != 0 or not result_path(plan, variant, seed).is_file():
                _LOG.error("%s/seed%d failed (exit %s); see %s", variant, seed, proc.returncode,
                           log_dir / f"{variant}_seed{seed}.log")
                failed.append((variant, seed))
            else:
                rec = json.loads(result_path(plan, variant, seed).read_text())
                _LOG.info("%s/seed%d: NDS %.4f mAP %.4f (%.0f s)", variant, seed, rec["metrics"]["NDS"],
                          rec["metrics"]["mAP"], rec["train_wall_s"])
    return failed


# ------------------------------------------------------------------------------------------ report
@dataclass
class VariantSummary:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) of each metric over seeds."""

    variant: str
    distill: list[str]
    seeds: list[int]
    mean: dict[str, float]
    std: dict[str, float]
    sec_per_step: float
    steps: int
    values: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _load_results(plan: AblationPlan) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for variant in plan.variants:
        folder = plan.results_path / variant
        records = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*.json"))] if folder.is_dir() else []
        if records:
            out[variant] = sorted(records, key=lambda r: r["seed"])
    return out


def summarise(records: Sequence[dict]) -> VariantSummary:
    """One variant's result records -> :class:`VariantSummary`."""
    values = {k: [float(r["metrics"][k]) for r in records] for k in METRICS}
    return VariantSummary(
        variant=records[0]["variant"],
        distill=list(records[0].get("distill", [])),
        seeds=[int(r["seed"]) for r in records],
        mean={k: float(np.mean(v)) for k, v in values.items()},
        std={k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()},
        sec_per_step=float(np.mean([r["sec_per_step"] for r in records])),
        steps=int(records[0]["steps"]),
        values=values,
    )


def _world(record: dict) -> Optional[str]:
    """The dataset fingerprint a result record ran on (None for records written before it existed)."""
    return (record.get("dataset") or {}).get("sha256_16")


def paired_deltas(records: Sequence[dict], baseline: Sequence[dict]) -> dict[str, dict]:
    """Per-seed differences to the baseline run of the SAME seed (same initialisation and data
    order) on the SAME data, for NDS and mAP: ``{"NDS": {"mean", "std", "n", "positive",
    "other_world"}, "mAP": ...}`` over the seeds both have (std: sample std, 0 for one seed;
    positive: how many seeds improved; other_world: seeds left unpaired because the two runs
    record different dataset fingerprints, e.g. a world regenerated on a CPU whose float maths
    differs in the last bits, so neither the data nor the training is bit-identical)."""
    same, other_world = _seed_pairs(records, baseline)
    out = {}
    for metric in ("NDS", "mAP"):
        d = [r["metrics"][metric] - b["metrics"][metric] for r, b in same]
        out[metric] = {"mean": float(np.mean(d)) if d else float("nan"),
                       "std": float(np.std(d, ddof=1)) if len(d) > 1 else 0.0,
                       "n": len(d), "positive": int(sum(x > 0 for x in d)), "other_world": other_world}
    return out


def _seed_pairs(records: Sequence[dict], baseline: Sequence[dict]) -> tuple[list[tuple[dict, dict]], int]:
    """(record, baseline record) of every seed both ran on the same data, in seed order, and how many
    seeds both ran on different data (unpaired)."""
    base = {r["seed"]: r for r in baseline}
    both = [(r, base[r["seed"]]) for r in sorted(records, key=lambda r: r["seed"]) if r["seed"] in base]
    same = [(r, b) for r, b in both if _world(r) == _world(b)]
    return same, len(both) - len(same)


def component_effects(plan: AblationPlan, records: dict[str, list[dict]]) -> dict[str, dict[str, dict]]:
    """Paired effect of each component, three ways (module docstring): ``{component: {"alone" |
    "added" | "removed": {"minuend", "subtrahend", "NDS": ..., "mAP": ...}}}``, the metric dicts
    as :func:`paired_deltas`. A way whose two variants do not both have results is left out."""
    cumulative = [plan.baseline] + ["+".join(COMPONENTS[:k]) for k in range(1, len(COMPONENTS))] + [plan.reference]
    if cumulative[-2] not in plan.variants:  # all but the last component = the reference without the last
        cumulative[-2] = f"{plan.reference}_no_{COMPONENTS[-1]}"
    out: dict[str, dict[str, dict]] = {}
    for k, comp in enumerate(COMPONENTS):
        pairs = {"alone": (comp, plan.baseline), "added": (cumulative[k + 1], cumulative[k]),
                 "removed": (plan.reference, f"{plan.reference}_no_{comp}")}
        ways = {}
        for way, (minuend, subtrahend) in pairs.items():
            if way == "added" and (minuend, subtrahend) in (pairs["alone"], pairs["removed"]):
                continue  # the first component's cumulative step is its alone row, the last one's its removed row
            if records.get(minuend) and records.get(subtrahend):
                deltas = paired_deltas(records[minuend], records[subtrahend])
                if deltas["NDS"]["n"]:
                    ways[way] = {"minuend": minuend, "subtrahend": subtrahend, **deltas}
        if ways:
            out[comp] = ways
    return out


def _verdict(plan: AblationPlan, summaries: dict[str, VariantSummary], paired: dict[str, dict]) -> dict:
    """The bar (module docstring) from the paired deltas of ``reference``."""
    base, ref = summaries.get(plan.baseline), summaries.get(plan.reference)
    if base is None or ref is None or plan.reference not in paired:
        return {"decided": False, "passed": False, "text": f"'{plan.reference}' vs '{plan.baseline}': not both run yet"}
    d_nds, d_map = paired[plan.reference]["NDS"], paired[plan.reference]["mAP"]
    n = d_nds["n"]
    failed = []
    if n < 3:
        failed.append(f"fewer than 3 paired seeds ({n})")
    if d_nds["positive"] < n or d_map["positive"] < n:
        failed.append(f"not up on every seed (NDS {d_nds['positive']}/{n}, mAP {d_map['positive']}/{n})")
    if not d_nds["mean"] >= MIN_NDS_GAIN:
        failed.append(f"mean ΔNDS {d_nds['mean']:+.4f} < {MIN_NDS_GAIN}")
    if not d_nds["mean"] > 2.0 * d_nds["std"]:
        failed.append(f"mean ΔNDS {d_nds['mean']:+.4f} <= 2 x std of the paired ΔNDS ({2.0 * d_nds['std']:.4f})")
    passed = not failed
    text = (f"{plan.reference} - {plan.baseline}, paired over {n} seeds: ΔNDS {d_nds['mean']:+.4f} ± {d_nds['std']:.4f} "
            f"({d_nds['positive']}/{n} up), ΔmAP {d_map['mean']:+.4f} ± {d_map['std']:.4f} ({d_map['positive']}/{n} up). "
            f"Bar: up on every seed in NDS and mAP, mean ΔNDS >= {MIN_NDS_GAIN} and > 2 x its std: "
            + ("PASSES" if passed else "does NOT pass (" + "; ".join(failed) + ")"))
    return {"decided": n >= 3, "passed": passed, "nds_margin": d_nds["mean"], "two_sigma": 2.0 * d_nds["std"],
            "failed": failed, "text": text}


def _teacher_results(value) -> tuple[str, ...]:
    """The plan's ``teacher_result``: absent, one path, or a list of paths (one per world)."""
    if not value:
        return ()
    if isinstance(value, str):
        return (value,)
    return _str_list(value, "teacher_result")


def _gap_closed(plan: AblationPlan, records: dict[str, list[dict]]) -> Optional[dict]:
    """Share of the camera -> LiDAR-teacher mAP gap that ``reference`` closes (None without
    ``teacher_result`` or a usable seed): ``(mAP_ref - mAP_base) / (mAP_teacher - mAP_base)``, each a mean
    over the seeds where ``reference`` and ``baseline`` ran on the same data AND a teacher record of
    that data exists (``teacher_result`` lists one per world, matched by dataset fingerprint; a record
    without a fingerprint stands for any world). So a row with fewer seeds is not compared with
    another seed set, and a seed is never measured against the teacher of another world."""
    base_recs, ref_recs = records.get(plan.baseline), records.get(plan.reference)
    if not plan.teacher_result or not base_recs or not ref_recs:
        return None
    teachers: dict[Optional[str], tuple[str, float]] = {}
    for rel in plan.teacher_result:
        path = _repo_path(rel)
        if not path.is_file():
            raise FileNotFoundError(f"teacher_result: {path} does not exist")
        record = json.loads(path.read_text())
        teachers[_world(record)] = (rel, float(record["metrics"]["mAP"]))
    rows, no_teacher = [], []  # rows: (seed, teacher record path, teacher mAP, baseline mAP, reference mAP)
    for ref, base in _seed_pairs(ref_recs, base_recs)[0]:
        teacher = teachers.get(_world(ref), teachers.get(None))
        if teacher is None:
            no_teacher.append(ref["seed"])
        else:
            rows.append((ref["seed"], *teacher, base["metrics"]["mAP"], ref["metrics"]["mAP"]))
    if not rows:
        return None
    seeds, paths, teacher_maps, base_maps, ref_maps = zip(*rows)
    teacher_map, base_map, ref_map = (float(np.mean(v)) for v in (teacher_maps, base_maps, ref_maps))
    gap = teacher_map - base_map
    share = (ref_map - base_map) / gap if gap > 0 else float("nan")
    used: dict[str, list[int]] = {}
    for seed, rel in zip(seeds, paths):
        used.setdefault(rel, []).append(seed)
    return {"teacher_result": ", ".join(used), "teacher_seeds": used, "teacher_mAP": teacher_map,
            "baseline_mAP": base_map, "reference_mAP": ref_map, "share": share, "seeds": list(seeds),
            "no_teacher_seeds": no_teacher}


def _markdown(plan: AblationPlan, summaries: dict[str, VariantSummary], verdict: dict, machine: str,
              paired: dict[str, dict], gap: Optional[dict] = None, effects: Optional[dict] = None,
              worlds: Optional[dict[str, int]] = None) -> str:
    worlds = worlds or {}
    base = summaries.get(plan.baseline)
    lines = [f"### Ablation `{plan.name}`" + (f": {plan.title}" if plan.title else ""), ""]
    lines += [f"Command: `x3kd ablate --plan {plan.source} --jobs 2` then `x3kd ablate --plan {plan.source} --report`.",
              f"Result files: `{_display_path(plan.results_path)}/<variant>/seed<k>.json`; "
              f"machine of the runs: {machine}.", ""]
    if len(worlds) > 1:
        lines += ["Data: the runs record more than one dataset fingerprint (" + ", ".join(
            f"`{w}`: {n} run{'' if n == 1 else 's'}" for w, n in worlds.items()) + "); a row is paired with the baseline only on the "
            "seeds where both ran on the same data.", ""]
    head = ("| variant | components | seeds | NDS | ΔNDS paired | mAP | ΔmAP paired | mATE | mASE | mAOE | mAVE | mAAE "
            "| s/step |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]

    def _delta(name: str, metric: str) -> str:
        d = paired.get(name, {}).get(metric)
        if name == plan.baseline or not d or not (d["n"] or d.get("other_world")):
            return "-"
        other = f"; {d['other_world']} on other data, unpaired" if d.get("other_world") else ""
        if not d["n"]:
            return f"-{other}"
        return f"{d['mean']:+.4f} ± {d['std']:.4f} ({d['positive']}/{d['n']} up{other})"

    for name, s in summaries.items():
        cells = ([f"{s.mean['NDS']:.4f} ± {s.std['NDS']:.4f}", _delta(name, "NDS"),
                  f"{s.mean['mAP']:.4f} ± {s.std['mAP']:.4f}", _delta(name, "mAP")]
                 + [f"{s.mean[k]:.4f} ± {s.std[k]:.4f}" for k in ("mATE", "mASE", "mAOE", "mAVE", "mAAE")])
        comps = ", ".join(c.replace("_", "-").upper() for c in s.distill) or "none"
        lines.append(f"| {name} | {comps} | {len(s.seeds)} | " + " | ".join(cells) + f" | {s.sec_per_step:.2f} |")
    lines += ["", f"Mean ± sample std over seeds; {next(iter(summaries.values())).steps} steps per run. "
              "Δ paired: the difference to the baseline run of the same seed (same initialisation and data "
              "order), mean ± std over seeds, and on how many seeds it is positive. "
              "s/step: the run's wall time per training step, evaluations included, at the thread count its "
              "file records (runs that shared the cores are slower: compare rows that ran alike, and never "
              "use it as a benchmark).", "", f"**Bar:** {verdict['text']}.", ""]
    if gap is not None:
        teacher = gap["teacher_result"]
        if len(gap["teacher_seeds"]) > 1:
            teacher = "; ".join(f"{rel}: seeds {', '.join(map(str, seeds))}" for rel, seeds in gap["teacher_seeds"].items())
        missing = (f"; seeds {', '.join(map(str, gap['no_teacher_seeds']))} left out: no teacher record of their data"
                   if gap["no_teacher_seeds"] else "")
        lines += [f"**Camera -> LiDAR gap:** the LiDAR teacher ({teacher}) reaches mAP "
                  f"{gap['teacher_mAP']:.4f}, the baseline {gap['baseline_mAP']:.4f}; {plan.reference} "
                  f"({gap['reference_mAP']:.4f}) closes {100 * gap['share']:.1f} % of that gap "
                  f"(means over the seeds both ran on the same data: {', '.join(map(str, gap['seeds']))}{missing}).", ""]
    if effects:
        lines += _effects_markdown(plan, effects)
    if plan.notes:
        lines += [plan.notes.strip(), ""]
    return "\n".join(lines)


def _effects_markdown(plan: AblationPlan, effects: dict[str, dict[str, dict]]) -> list[str]:
    """The component-effect table of the report (see :func:`component_effects`)."""
    def cell(way: dict, metric: str) -> str:
        d = way[metric]
        return f"{d['mean']:+.4f} ± {d['std']:.4f} ({d['positive']}/{d['n']} up)"

    head = "| component | way | rows compared | ΔNDS paired | ΔmAP paired |"
    lines = ["**Effect of each component** (paired by seed; mean ± sample std over the seeds both rows ran, "
             "and on how many it is positive). *alone*: the component by itself minus the baseline; *added*: "
             "the cumulative row (paper order X-IS, X-FD, X-AT, X-OD) minus the row before it; *removed*: "
             f"`{plan.reference}` minus `{plan.reference}` without the component.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for comp, ways in effects.items():  # paper order, ways in the order alone / added / removed
        for way, w in ways.items():
            lines.append(f"| {comp.replace('_', '-').upper()} | {way} | `{w['minuend']}` - `{w['subtrahend']}` | "
                         f"{cell(w, 'NDS')} | {cell(w, 'mAP')} |")
    return lines + [""]


def _chart(plan: AblationPlan, summaries: dict[str, VariantSummary], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.5 * len(names)), 3.8))
    for ax, metric in zip(axes, ("NDS", "mAP")):
        means = [summaries[n].mean[metric] for n in names]
        stds = [summaries[n].std[metric] for n in names]
        colors = ["0.6" if n == plan.baseline else ("tab:green" if n == plan.reference else "tab:blue") for n in names]
        ax.bar(x, means, yerr=stds, capsize=4, color=colors)
        for i, n in enumerate(names):
            ax.scatter([i] * len(summaries[n].values[metric]), summaries[n].values[metric], s=8, color="k", zorder=3)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel(f"{metric} (mean ± std, dots: seeds)")
        ax.set_title(metric)
    fig.suptitle(plan.title or plan.name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _replace_block(text: str, marker: str, block: str) -> str:
    start, end = f"<!-- ablation:{marker} -->", f"<!-- /ablation:{marker} -->"
    new = f"{start}\n{block.rstrip()}\n{end}"
    if start in text and end in text:
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        return head + new + tail
    return text.rstrip() + "\n\n" + new + "\n"


def write_report(plan: AblationPlan, benchmarks_md: Optional[Path] = REPO_ROOT / "BENCHMARKS.md") -> dict:
    """Summarise every result file of the plan into ``report.{md,json,png}`` (and BENCHMARKS.md).

    Raises:
        FileNotFoundError: no result files yet.
    """
    records = _load_results(plan)
    if not records:
        raise FileNotFoundError(f"{plan.results_path}: no result files; run `x3kd ablate --plan {plan.source}` first")
    summaries = {name: summarise(recs) for name, recs in records.items()}
    paired = {name: paired_deltas(recs, records[plan.baseline]) for name, recs in records.items()
              if plan.baseline in records and name != plan.baseline}
    verdict = _verdict(plan, summaries, paired)
    gap = _gap_closed(plan, records)
    effects = component_effects(plan, records)
    machines = sorted({r["machine"] for recs in records.values() for r in recs})
    worlds = dict(Counter(str(_world(r)) for recs in records.values() for r in recs).most_common())
    md = _markdown(plan, summaries, verdict, "; ".join(machines), paired, gap, effects, worlds)
    out = plan.results_path
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(md)
    report = {"plan": plan.name, "title": plan.title, "baseline": plan.baseline, "reference": plan.reference,
              "verdict": verdict, "gap_closed": gap, "machines": machines, "datasets": worlds, "paired_deltas": paired,
              "component_effects": effects,
              "variants": {name: s.to_dict() for name, s in summaries.items()}}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    _chart(plan, summaries, out / "report.png")
    if benchmarks_md is not None:
        block = md + f"\n![{plan.name}]({_display_path(out)}/report.png)\n"
        text = benchmarks_md.read_text() if benchmarks_md.is_file() else ""
        benchmarks_md.write_text(_replace_block(text, plan.name, block))
    return report
