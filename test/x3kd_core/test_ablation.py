"""`x3kd ablate`: plan validation, runs written once as JSON, and the report's statistics."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from x3kd_core.ablation import _verdict, load_plan, summarise
from x3kd_core.cli import main
from x3kd_core.config import ConfigError
from x3kd_core.paths import REPO_ROOT


def _plan_file(tmp_path: Path, tiny_dataset, tiny_teachers, **changes) -> Path:
    dataroot, _ = tiny_dataset
    plan = {
        "name": "tiny",
        "title": "tiny test plan",
        "experiment": str(REPO_ROOT / "config" / "train" / "x3kd_tiny.yaml"),
        "seeds": [0, 1],
        "common": [f"data.dataroot={dataroot}", "train.max_steps=2", "augment.image={}", "augment.bev={}",
                   f"teachers.lidar={tiny_teachers['lidar']}", "teachers.instance_seg=null",
                   "distill.x_is.enabled=false", f"teachers.cache={tmp_path / 'cache'}"],
        "variants": {"baseline": ["distill=null"], "x3kd": []},
        "results_dir": str(tmp_path / "results"),
        "runs_dir": str(tmp_path / "runs"),
    }
    plan.update(changes)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_ablate_runs_each_pair_once_and_reports(tiny_dataset, tiny_teachers, tmp_path, capsys):
    plan_path = _plan_file(tmp_path, tiny_dataset, tiny_teachers)
    assert main(["ablate", "--plan", str(plan_path), "--list"]) == 0
    assert capsys.readouterr().out.split("\n")[:4] == ["baseline seed0", "x3kd seed0", "baseline seed1", "x3kd seed1"]

    assert main(["ablate", "--plan", str(plan_path)]) == 0
    results = tmp_path / "results"
    records = {(v, s): json.loads((results / v / f"seed{s}.json").read_text()) for v in ("baseline", "x3kd") for s in (0, 1)}
    rec = records[("x3kd", 1)]
    assert rec["seed"] == 1 and rec["steps"] == 2 and "train.seed=1" in rec["overrides"]
    assert rec["distill"] == ["x_fd", "x_at", "x_od"] and records[("baseline", 0)]["distill"] == []
    assert set(rec["metrics"]) == {"mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE"}
    assert "x_fd/feature" in rec["last_losses"] and "x_fd/feature" not in records[("baseline", 0)]["last_losses"]
    assert (tmp_path / "cache" / "lidar" / "meta.json").is_file()
    # Every record names the data it ran on and the thread count (reproducibility).
    fingerprints = {r["dataset"]["sha256_16"] for r in records.values()}
    assert len(fingerprints) == 1 and len(fingerprints.pop()) == 16
    assert all(r["torch_threads"] >= 1 and r["dataset"]["version"] == "v1.0-synth" for r in records.values())
    # ... and a distilled record the teacher checkpoints it read (instance_seg is off in this plan).
    lidar_sha = hashlib.sha256(Path(tiny_teachers["lidar"]).read_bytes()).hexdigest()[:16]
    assert rec["teachers"] == {"lidar": {"checkpoint": str(tiny_teachers["lidar"]), "sha256_16": lidar_sha}}
    assert records[("baseline", 0)]["teachers"] == {}

    # Nothing left to do: a second call trains nothing and leaves the files alone.
    mtime = (results / "x3kd" / "seed1.json").stat().st_mtime_ns
    assert main(["ablate", "--plan", str(plan_path), "--list"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["ablate", "--plan", str(plan_path)]) == 0
    assert (results / "x3kd" / "seed1.json").stat().st_mtime_ns == mtime

    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\nbefore\n")
    for _ in range(2):  # the block is replaced, not appended twice
        assert main(["ablate", "--plan", str(plan_path), "--report", "--benchmarks", str(bench)]) == 0
    text = bench.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n") and text.count("<!-- ablation:tiny -->") == 1
    report = json.loads((results / "report.json").read_text())
    nds = [records[("x3kd", s)]["metrics"]["NDS"] for s in (0, 1)]
    assert report["variants"]["x3kd"]["mean"]["NDS"] == pytest.approx(np.mean(nds))
    assert report["variants"]["x3kd"]["std"]["NDS"] == pytest.approx(np.std(nds, ddof=1))
    assert "fewer than 3 paired seeds" in report["verdict"]["text"] and report["verdict"]["passed"] is False
    assert (results / "report.png").stat().st_size > 1000
    assert "| x3kd | X-FD, X-AT, X-OD | 2 |" in (results / "report.md").read_text()
    base_nds = [records[("baseline", s)]["metrics"]["NDS"] for s in (0, 1)]
    paired = report["paired_deltas"]["x3kd"]["NDS"]
    assert paired["n"] == 2 and paired["mean"] == pytest.approx(np.mean(np.subtract(nds, base_nds)))


def _records(variant: str, nds: list[float]) -> list[dict]:
    metrics = lambda v: {k: v for k in ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")}  # noqa: E731
    return [{"variant": variant, "seed": i, "metrics": metrics(v), "sec_per_step": 1.0, "steps": 10, "distill": []}
            for i, v in enumerate(nds)]


def test_summary_statistics_and_the_bar():
    from x3kd_core.ablation import paired_deltas

    base_records = _records("baseline", [0.1, 0.2, 0.3])
    base = summarise(base_records)
    assert base.mean["NDS"] == pytest.approx(0.2) and base.std["NDS"] == pytest.approx(0.1)
    plan = load_plan(REPO_ROOT / "config" / "ablation" / "x3kd_small.yaml", check_experiments=False)

    def verdict(ref_values):
        ref_records = _records("x3kd", ref_values)
        summaries = {"baseline": base, "x3kd": summarise(ref_records)}
        return _verdict(plan, summaries, {"x3kd": paired_deltas(ref_records, base_records)})

    # Paired gains 0.03, 0.025, 0.035: mean 0.03 >= 0.02 and > 2 x std 0.01, up on every seed.
    passed = verdict([0.13, 0.225, 0.335])
    assert passed["passed"] is True and passed["nds_margin"] == pytest.approx(0.03)
    assert passed["two_sigma"] == pytest.approx(0.01)
    # Large mean gain, but one seed down: fails, and says why.
    one_down = verdict([0.25, 0.35, 0.29])
    assert one_down["passed"] is False and "not up on every seed (NDS 2/3, mAP 2/3)" in one_down["text"]
    # Up everywhere but below the minimum gain of 0.02.
    small = verdict([0.11, 0.21, 0.31])
    assert small["passed"] is False and "< 0.02" in small["text"]
    # Mean 0.05 but spread 0.043: not > 2 x std.
    noisy = verdict([0.101, 0.201, 0.45])
    assert noisy["passed"] is False and "2 x std" in noisy["text"]
    assert verdict([0.2, 0.3])["decided"] is False  # two paired seeds
    assert _verdict(plan, {"baseline": base}, {})["decided"] is False


def test_gap_closed_share(tmp_path):
    from dataclasses import replace

    from x3kd_core.ablation import _gap_closed

    teacher = tmp_path / "teacher.json"
    teacher.write_text(json.dumps({"metrics": {"mAP": 0.6}}))
    plan = replace(load_plan(REPO_ROOT / "config" / "ablation" / "x3kd_small.yaml", check_experiments=False),
                   teacher_result=(str(teacher),))
    records = {"baseline": _records("baseline", [0.2, 0.2, 0.2]), "x3kd": _records("x3kd", [0.3, 0.3, 0.3])}
    assert _gap_closed(plan, records)["share"] == pytest.approx(0.25)  # (0.3 - 0.2) / (0.6 - 0.2)
    assert _gap_closed(replace(plan, teacher_result=()), records) is None
    # A reference with fewer seeds is compared with the baseline's same seeds only.
    records = {"baseline": _records("baseline", [0.1, 0.2, 0.3]), "x3kd": _records("x3kd", [0.2, 0.3])}
    gap = _gap_closed(plan, records)
    assert gap["seeds"] == [0, 1] and gap["baseline_mAP"] == pytest.approx(0.15)
    assert gap["share"] == pytest.approx(0.1 / 0.45)


def test_gap_closed_measures_each_seed_against_the_teacher_of_its_world(tmp_path):
    """Seeds 0-1 ran on world A (teacher mAP 0.6), seed 2 on world B (teacher 0.9); seed 3's x3kd and
    baseline ran on different worlds (unpaired); world C has no teacher record (left out, said)."""
    from dataclasses import replace

    from x3kd_core.ablation import _gap_closed

    paths = []
    for world, teacher_map in (("A", 0.6), ("B", 0.9)):
        paths.append(tmp_path / f"teacher_{world}.json")
        paths[-1].write_text(json.dumps({"dataset": {"sha256_16": world}, "metrics": {"mAP": teacher_map}}))
    plan = replace(load_plan(REPO_ROOT / "config" / "ablation" / "x3kd_small.yaml", check_experiments=False),
                   teacher_result=tuple(map(str, paths)))
    records = {"baseline": _records("baseline", [0.2, 0.2, 0.3, 0.2, 0.2]),
               "x3kd": _records("x3kd", [0.3, 0.3, 0.4, 0.9, 0.9])}
    for name, worlds in (("baseline", "AABAC"), ("x3kd", "AABBC")):
        for record, world in zip(records[name], worlds):
            record["dataset"] = {"sha256_16": world}
    gap = _gap_closed(plan, records)
    assert gap["seeds"] == [0, 1, 2] and gap["no_teacher_seeds"] == [4]
    assert gap["teacher_seeds"] == {str(paths[0]): [0, 1], str(paths[1]): [2]}
    assert gap["teacher_mAP"] == pytest.approx(0.7)  # (0.6 + 0.6 + 0.9) / 3
    assert gap["share"] == pytest.approx(0.1 / (0.7 - 0.7 / 3))  # base mean 0.2333, ref mean 0.3333
    # The plan file takes one path or a list.
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text((REPO_ROOT / "config" / "ablation" / "x3kd_small.yaml").read_text()
                         + f"\nteacher_result: [{paths[0]}, {paths[1]}]\n")
    assert load_plan(plan_file, check_experiments=False).teacher_result == tuple(map(str, paths))
    plan_file.write_text((REPO_ROOT / "config" / "ablation" / "x3kd_small.yaml").read_text()
                         + f"\nteacher_result: {paths[0]}\n")
    assert load_plan(plan_file, check_experiments=False).teacher_result == (str(paths[0]),)


def test_paired_deltas_use_the_same_seed():
    from x3kd_core.ablation import paired_deltas

    base = _records("baseline", [0.10, 0.30, 0.20])
    ref = _records("x3kd", [0.12, 0.31, 0.19])
    d = paired_deltas(ref, base)["NDS"]
    assert d["mean"] == pytest.approx(np.mean([0.02, 0.01, -0.01])) and d["positive"] == 2 and d["n"] == 3
    assert d["std"] == pytest.approx(np.std([0.02, 0.01, -0.01], ddof=1))
    assert paired_deltas(ref[:1], base[1:])["NDS"]["n"] == 0  # no common seed


def test_paired_deltas_only_pair_runs_on_the_same_data(tmp_path):
    """A run on a regenerated world whose fingerprint differs (another CPU's float maths) is not
    paired with a baseline run of the old world; the report says how many seeds that leaves out."""
    from x3kd_core.ablation import paired_deltas

    base = _records("baseline", [0.10, 0.30, 0.20])
    ref = _records("x3kd", [0.12, 0.31, 0.19])
    for r in base + ref:
        r["dataset"] = {"sha256_16": "a" * 16}
    ref[2]["dataset"] = {"sha256_16": "b" * 16}
    d = paired_deltas(ref, base)["NDS"]
    assert d["n"] == 2 and d["other_world"] == 1 and d["mean"] == pytest.approx(0.015)

    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump({
        "name": "worlds", "experiment": str(REPO_ROOT / "config" / "train" / "x3kd_tiny.yaml"), "seeds": [0, 1, 2],
        "variants": {"baseline": ["distill=null"], "x3kd": []}, "results_dir": str(tmp_path / "results")}))
    for r in base + ref:
        r.update(machine="m", sec_per_step=1.0, steps=10)
        folder = tmp_path / "results" / r["variant"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"seed{r['seed']}.json").write_text(json.dumps(r))
    assert main(["ablate", "--plan", str(plan_path), "--report", "--benchmarks", "none"]) == 0
    md = (tmp_path / "results" / "report.md").read_text()
    assert f"`{'a' * 16}`: 5 runs, `{'b' * 16}`: 1 run" in md
    assert "(2/2 up; 1 on other data, unpaired)" in md and "fewer than 3 paired seeds (2)" in md


def test_results_on_other_data_are_named_before_a_run(tmp_path, tiny_dataset):
    """A result file from another world counts as done (kept, not rerun): run_plan says so, naming
    the file, both fingerprints and the --results way to run this world separately."""
    from x3kd_core.ablation import current_world, results_on_other_data
    from x3kd_core.data.fingerprint import dataset_fingerprint

    dataroot, version = tiny_dataset
    world = dataset_fingerprint(dataroot, version)["sha256_16"]
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump({
        "name": "worlds", "experiment": str(REPO_ROOT / "config" / "train" / "x3kd_tiny.yaml"), "seeds": [0, 1],
        "common": [f"data.dataroot={dataroot}", f"data.version={version}"],
        "variants": {"baseline": ["distill=null"], "x3kd": []}, "results_dir": str(tmp_path / "results")}))
    plan = load_plan(plan_path, check_experiments=False)
    assert current_world(plan) == world
    for variant, seed, recorded in (("baseline", 0, world), ("baseline", 1, "b" * 16), ("x3kd", 0, None)):
        path = tmp_path / "results" / variant / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"seed": seed, "dataset": {"sha256_16": recorded} if recorded else {}}))
    lines = results_on_other_data(plan)
    assert len(lines) == 1, lines  # same world and no fingerprint (older records) are not named
    assert "baseline/seed1.json ran on data " + "b" * 16 in lines[0] and f"the data now is {world}" in lines[0]
    assert "--results <dir>" in lines[0]
    assert results_on_other_data(plan, variants=["x3kd"]) == [] and results_on_other_data(plan, seeds=[0]) == []


def test_component_effects_alone_added_removed():
    from x3kd_core.ablation import _effects_markdown, component_effects

    plan = load_plan(REPO_ROOT / "config" / "ablation" / "x3kd_small.yaml", check_experiments=False)
    records = {"baseline": _records("baseline", [0.30, 0.31, 0.32]),
               "x_is": _records("x_is", [0.31, 0.32, 0.33]),
               "x_fd": _records("x_fd", [0.29, 0.33, 0.32]),
               "x_is+x_fd": _records("x_is+x_fd", [0.33, 0.35, 0.36]),
               "x3kd": _records("x3kd", [0.35, 0.36, 0.37]),
               "x3kd_no_x_at": _records("x3kd_no_x_at", [0.36, 0.35])}  # two seeds only
    effects = component_effects(plan, records)
    assert set(effects) == {"x_is", "x_fd", "x_at"}  # nothing about X-OD was run
    assert set(effects["x_is"]) == {"alone"}  # its cumulative step IS its alone row
    assert effects["x_fd"]["alone"]["NDS"]["mean"] == pytest.approx(np.mean([-0.01, 0.02, 0.0]))
    added = effects["x_fd"]["added"]
    assert (added["minuend"], added["subtrahend"]) == ("x_is+x_fd", "x_is")
    assert added["NDS"]["mean"] == pytest.approx(0.0267, abs=1e-4) and added["NDS"]["positive"] == 3
    assert "added" not in effects["x_at"]  # x_is+x_fd+x_at was not run
    removed = effects["x_at"]["removed"]["NDS"]  # x3kd - x3kd_no_x_at on seeds 0 and 1
    assert removed["n"] == 2 and removed["mean"] == pytest.approx(0.0) and removed["positive"] == 1
    assert removed["std"] == pytest.approx(np.std([-0.01, 0.01], ddof=1))
    md = "\n".join(_effects_markdown(plan, effects))
    assert "| X-FD | added | `x_is+x_fd` - `x_is` | +0.0267 ± 0.0058 (3/3 up) |" in md


def test_last_cumulative_step_is_the_leave_one_out_row():
    """x3kd_main holds x3kd_no_x_od, not x_is+x_fd+x_at (the same model): X-AT's added effect is read
    against it, and X-OD's added effect, being its removed one, is shown once."""
    from x3kd_core.ablation import component_effects

    plan = load_plan(REPO_ROOT / "config" / "ablation" / "x3kd_main.yaml", check_experiments=False)
    assert "x_is+x_fd+x_at" not in plan.variants
    records = {"x_is+x_fd": _records("x_is+x_fd", [0.33, 0.35, 0.36]),
               "x3kd_no_x_od": _records("x3kd_no_x_od", [0.34, 0.34, 0.38]),
               "x3kd": _records("x3kd", [0.35, 0.36, 0.37])}
    effects = component_effects(plan, records)
    added = effects["x_at"]["added"]
    assert (added["minuend"], added["subtrahend"]) == ("x3kd_no_x_od", "x_is+x_fd")
    assert added["NDS"]["mean"] == pytest.approx(np.mean([0.01, -0.01, 0.02]))
    assert set(effects["x_od"]) == {"removed"}
    assert effects["x_od"]["removed"]["NDS"]["positive"] == 2


def test_plan_rejects_two_variants_with_the_same_overrides(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: p\nexperiment: config/train/x3kd_small.yaml\nvariants:\n  baseline: [distill=null]\n"
                    "  x3kd: []\n  a: [distill.x_od.enabled=false, distill.x_at.enabled=false]\n"
                    "  b: [distill.x_at.enabled=false, distill.x_od.enabled=false]\n")
    with pytest.raises(ConfigError, match=r"^variants\.b: same overrides as variants\.a"):
        load_plan(plan, check_experiments=False)
    # other text, same experiment: 0.1 is X-AT's default weight
    plan.write_text("name: p\nexperiment: config/train/x3kd_small.yaml\nvariants:\n  baseline: [distill=null]\n"
                    "  x3kd: []\n  a: [distill.x_od.enabled=false]\n  b: [distill.x_od.enabled=false, distill.x_at.weight=0.1]\n")
    with pytest.raises(ConfigError, match=r"^variants\.b: trains the same experiment as variants\.a"):
        load_plan(plan)


def test_camera_radar_main_distils_like_x3kd_main():
    """The camera+radar plan repeats x3kd_main's distill block as overrides: they must not drift apart."""
    from x3kd_core.experiment.load import load_experiment

    plan = load_plan(REPO_ROOT / "config" / "ablation" / "camera_radar_main.yaml", check_experiments=False)
    radar = load_experiment(REPO_ROOT / "config" / "train" / "camera_radar_main.yaml",
                            list(plan.common) + list(plan.variants["x3kd"]))
    main = load_plan(REPO_ROOT / "config" / "ablation" / "x3kd_main.yaml", check_experiments=False)
    camera = load_experiment(REPO_ROOT / "config" / "train" / "x3kd_main.yaml", list(main.variants["x3kd"]))
    assert camera.distill.enabled_components == ("x_is", "x_fd", "x_at", "x_od")  # the paper's X3KD
    assert radar.kind == "camera_radar" and radar.distill == camera.distill and radar.teachers == camera.teachers
    assert radar.train.max_steps == camera.train.max_steps and radar.data.train_split == camera.data.train_split


def test_bad_plans_name_the_key(tiny_dataset, tiny_teachers, tmp_path):
    with pytest.raises(ConfigError, match=r"^colour: unknown key"):
        load_plan(_plan_file(tmp_path, tiny_dataset, tiny_teachers, colour="red"))
    with pytest.raises(ConfigError, match=r"^reference: 'full' is not one of the variants"):
        load_plan(_plan_file(tmp_path, tiny_dataset, tiny_teachers, reference="full"))
    bad = {"baseline": ["distill=null"], "x3kd": ["train.lr=fast"]}
    with pytest.raises(ConfigError, match=r"^variants\.x3kd: .*lr"):
        load_plan(_plan_file(tmp_path, tiny_dataset, tiny_teachers, variants=bad))
    assert main(["ablate", "--plan", str(tmp_path / "missing.yaml")]) == 2


def test_the_shipped_plans_load():
    for path in sorted((REPO_ROOT / "config" / "ablation").glob("*.yaml")):
        plan = load_plan(path, check_experiments=False)
        assert plan.baseline in plan.variants and plan.reference in plan.variants
        # Every benchmark plan has >= 3 seeds; the smoke plan of tools/rerun_ablation.sh's CI test has one.
        assert len(plan.seeds) >= 3 or plan.name == "x3kd_tiny", plan.name


def test_jobs_run_child_processes(tiny_dataset, tiny_teachers, tmp_path, capsys):
    """--jobs 2: each (variant, seed) in its own child process, results written by the children."""
    plan_path = _plan_file(tmp_path, tiny_dataset, tiny_teachers, seeds=[3])
    assert main(["ablate", "--plan", str(plan_path), "--jobs", "2"]) == 0
    for variant in ("baseline", "x3kd"):
        rec = json.loads((tmp_path / "results" / variant / "seed3.json").read_text())
        assert rec["seed"] == 3 and rec["machine"].endswith("threads)")
        assert (tmp_path / "runs" / "logs" / f"{variant}_seed3.log").is_file()


def test_an_interrupted_run_continues_from_its_checkpoint(tiny_dataset, tiny_teachers, tmp_path, caplog):
    import logging

    from x3kd_core.ablation import run_one
    from x3kd_core.experiment import load_experiment, train_experiment

    plan = load_plan(_plan_file(tmp_path, tiny_dataset, tiny_teachers, seeds=[0]))
    exp = load_experiment(plan.experiment, plan.overrides("baseline", 0))
    out = plan.runs_path / "baseline" / "seed0"
    stopped = train_experiment(exp, out, device="cpu", stop_at_step=1)
    assert stopped.step == 1 and not stopped.finished
    with caplog.at_level(logging.INFO, logger="x3kd.train"):
        record = run_one(plan, "baseline", 0, device="cpu")
    assert record["steps"] == 2
    assert "resumed from" in caplog.text and "at step 1" in caplog.text  # not retrained from step 0
