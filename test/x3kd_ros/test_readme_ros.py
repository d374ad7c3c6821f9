"""The README's ROS 2 examples, run as written, so the README cannot drift from what works.

Every fenced code block of the README's sections ``## ROS 2 ...`` and ``## Big images ...`` is read
from README.md when the test runs (nothing is copied here). Each shell block runs with bash in a
sandbox that looks like a checkout after the set-up: every top-level entry of this repository linked
in (the venv too), and in place of the trained models and the small dataset the README names,
untrained CI-size checkpoints at ``runs/student_small/last.pt`` / ``runs/lidar_small/last.pt`` and
the tiny synthetic dataset at ``data/synth_small``. ``HOME`` is a folder of the sandbox.

A block split by ``# terminal N`` lines is a session of several terminals: every terminal but the
last is started in a process group of its own and left running (a graph); the last runs to its end;
then the others get Ctrl-C as a terminal sends it (SIGINT to the group) and must have been running
until then and end within 5 s with code 0. A block without terminals runs to its end with code 0.

Network rule: ``ROS_LOCALHOST_ONLY`` / ``ROS_AUTOMATIC_DISCOVERY_RANGE`` / ``ROS_LOG_DIR`` stay as
test/conftest.py set them; ``ROS_DOMAIN_ID`` is removed so that the README's own ``source
tools/ros_env.sh`` chooses it, as in a user's terminals (two terminals that did not share one domain
would fail here). So that no ROS process runs outside a domain the project chose, every terminal
that runs ``ros2``, the replayer or the graph runner must source tools/ros_env.sh first, and every
``ros2`` verb that would start the ROS 2 daemon must say ``--no-daemon``; the test checks both.

What each block must produce is checked per block (:func:`_check`); a block the test does not
know fails, so a new README example comes with its check.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from x3kd_core.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
SHUTDOWN_LIMIT_S = 5.0
BLOCK_TIMEOUT_S = 300.0
# Not linked into the sandbox: its own runs/ and data/, no build outputs or git metadata.
_NOT_LINKED = {".git", "runs", "data", "build", "install", "log", "logs", ".pytest_cache"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                    re.MULTILINE | re.DOTALL)
#: Headings (after "## ") of the README sections whose code blocks are run.
ROS_SECTIONS = ("ROS 2", "Big images")
_TERMINAL = re.compile(r"^# terminal (\d+)\b")
_ROS_COMMAND = re.compile(r"\bros2 |x3kd_ros\.replay|x3kd_run_graph")
_DAEMON_VERBS = re.compile(r"\bros2 (topic|node|param|service|action|interface) ")


def readme_ros_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the README's ROS sections (:data:`ROS_SECTIONS`)."""
    sections = re.split(r"^## ", README.read_text(), flags=re.MULTILINE)[1:]
    ros = [s for s in sections if s.startswith(ROS_SECTIONS)]
    assert len(ros) >= 4, f"README.md: expected the sections {ROS_SECTIONS}, found {[s.split(chr(10))[0] for s in ros]}"
    return [(m.group("lang"), textwrap.dedent(m.group("body"))) for s in ros for m in _FENCE.finditer(s)]


def split_terminals(block: str) -> list[str]:
    """The block's terminals (one script each); a block without ``# terminal N`` lines is one."""
    parts: list[list[str]] = []
    head: list[str] = []
    for line in block.splitlines():
        if _TERMINAL.match(line):
            parts.append([])
        (parts[-1] if parts else head).append(line)
    if not parts:
        return [block]
    stray = [line for line in head if line.strip() and not line.lstrip().startswith("#")]
    assert not stray, f"commands before the first '# terminal' line belong to no terminal: {stray}"
    return ["\n".join(p) + "\n" for p in parts]


def _commands(script: str) -> list[str]:
    """Command lines (continuations joined, comment-only lines dropped)."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def check_network_rule(script: str) -> None:
    commands = _commands(script)
    if any(_ROS_COMMAND.search(c) for c in commands):
        assert commands[0].startswith("source tools/ros_env.sh"), \
            f"a README terminal runs ROS commands without `source tools/ros_env.sh` first:\n{script}"
    for c in commands:
        if _DAEMON_VERBS.search(c):
            assert "--no-daemon" in c, f"README: `{c}` would leave a ROS 2 daemon running; add --no-daemon"


@dataclass
class BlockRun:
    """What one README block did: the last terminal's output, and every terminal's log and exit."""

    output: str = ""
    logs: list[str] = field(default_factory=list)
    codes: list[int | None] = field(default_factory=list)
    stop_seconds: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    #: per terminal that was still running SHUTDOWN_LIMIT_S after its Ctrl-C: what ran at that moment
    slow_stops: dict[int, str] = field(default_factory=dict)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def run_block(block: str, sandbox: Path, env: dict, log_dir: Path, name: str,
              snapshot: Callable[[], str] = lambda: "") -> BlockRun:
    """Run one README block (see the module docstring); ``snapshot`` describes what else runs, taken
    when a terminal is still running :data:`SHUTDOWN_LIMIT_S` after its Ctrl-C."""
    terminals = split_terminals(block)
    for script in terminals:
        check_network_rule(script)
    run = BlockRun()
    started = []
    start = time.monotonic()
    try:
        for i, script in enumerate(terminals[:-1]):
            log = log_dir / f"{name}_terminal{i + 1}.log"
            out = open(log, "wb")
            # A terminal's foreground command takes Ctrl-C: SIGINT at its default, even where pytest itself
            # runs as a background job with SIGINT ignored (inherited across exec otherwise).
            started.append((subprocess.Popen(["bash", "-c", "set -eo pipefail\n" + script], cwd=sandbox, env=env,
                                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True, preexec_fn=_default_sigint), out, log))
        last = subprocess.run(["bash", "-c", "set -eo pipefail\n" + terminals[-1]], cwd=sandbox, env=env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, stdin=subprocess.DEVNULL)
        run.output = last.stdout
        logs_so_far = "\n".join(f"--- terminal {i + 1}:\n{p[2].read_text(errors='replace')[-3000:]}"
                                for i, p in enumerate(started))
        assert last.returncode == 0, (f"README block {name}: its last terminal exited {last.returncode}\n"
                                      f"{last.stdout[-3000:]}\n{last.stderr[-3000:]}\n{logs_so_far}")
        for i, (process, out, log) in enumerate(started):
            assert process.poll() is None, f"README block {name}: terminal {i + 1} ended early:\n{logs_so_far}"
        for i, (process, out, log) in enumerate(started):  # Ctrl-C in each remaining terminal
            t0 = time.monotonic()
            os.killpg(process.pid, signal.SIGINT)
            try:
                code = process.wait(timeout=SHUTDOWN_LIMIT_S)
            except subprocess.TimeoutExpired:
                run.slow_stops[i] = snapshot()
                try:
                    code = process.wait(timeout=30.0 - SHUTDOWN_LIMIT_S)
                except subprocess.TimeoutExpired:
                    code = None
            run.codes.append(code)
            run.stop_seconds.append(time.monotonic() - t0)
    finally:
        for process, out, log in started:
            if process.poll() is None:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(process.pid, sig)
                        process.wait(timeout=10.0)
                        break
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        continue
            out.close()
            run.logs.append(log.read_text(errors="replace"))
    run.wall_s = time.monotonic() - start
    for i, (code, seconds) in enumerate(zip(run.codes, run.stop_seconds)):
        assert code == 0 and seconds < SHUTDOWN_LIMIT_S, \
            f"README block {name}: Ctrl-C in terminal {i + 1} -> exit {code} after {seconds:.1f} s\n" \
            f"{run.logs[i][-3000:]}\nat {SHUTDOWN_LIMIT_S:.0f} s after the Ctrl-C: {run.slow_stops.get(i, '-')}"
    for i, log in enumerate(run.logs):
        assert "Traceback" not in log and "process has died" not in log, \
            f"README block {name}, terminal {i + 1}:\n{log[-3000:]}"
    return run


def _replay_loops(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _check(block: str, run: BlockRun, sandbox: Path) -> str:
    """Assert what the block must have produced; returns a one-line summary."""
    if "x3kd bag write" in block:
        report = json.loads((sandbox / "runs" / "bag_eval" / "report.json").read_text())
        for group in ("detector", "lidar"):
            assert report["frames"][group]["every_frame_answered_once"] and report["frames"][group]["sent"] == 3, \
                report["frames"][group]
        assert report["graph"]["exit_codes"] == {"detector": 0, "lidar_teacher": 0, "comparison_lidar": 0}
        return "bag write + bag eval: 3 / 3 frames answered by the student and the LiDAR teacher"
    if "ros2 launch x3kd_ros detector.launch.py" in block:
        loops = _replay_loops(run.output)
        assert [(r["frames"], r["answers"]) for r in loops] == [(3, 3), (3, 3)], run.output
        assert "node x3kd_radar_teacher not started" in run.logs[0]
        return f"ros2 launch + replay --loop 2 --clock: {[r['answers'] for r in loops]} answers"
    if "ros2 run x3kd_ros x3kd_detector" in block:
        assert re.search(r"name: '?x3kd_detector: detector", run.output), run.output[-2000:]
        return "ros2 run + ros2 topic echo --once /diagnostics: the detector's status"
    if "x3kd_run_graph" in block:
        loops = _replay_loops(run.output)
        assert [(r["frames"], r["answers"]) for r in loops] == [(3, 3)], run.output
        assert "stopped, exit codes {'detector': 0, 'lidar_teacher': 0, 'comparison_lidar': 0}" in run.logs[0]
        return "x3kd_run_graph + replay: 3 / 3 answers"
    if "colcon build" in block:
        prefix = run.output.strip().splitlines()[-1]
        assert Path(prefix) == sandbox / "home" / "x3kd_ws" / "install" / "x3kd_ros", run.output
        assert (Path(prefix) / "share" / "x3kd_ros" / "launch" / "detector.launch.py").is_file()
        return f"colcon workspace: ros2 pkg prefix -> {prefix}"
    if "export FASTDDS_DEFAULT_PROFILES_FILE" in block:
        profile = Path(run.output.strip())
        assert profile.is_file() and profile.name == "fastdds_large_images.xml", run.output
        return f"driver shell: FASTDDS_DEFAULT_PROFILES_FILE -> {profile}"
    raise AssertionError(f"a README ROS block this test does not know; add its check to _check():\n{block}")


@pytest.fixture
def sandbox(tmp_path, tiny_dataset, student_checkpoint, lidar_checkpoint, ros_network) -> Path:
    """A checkout-like folder: the repository's top-level entries linked, its own runs/ and data/."""
    root = tmp_path / "checkout"
    root.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name not in _NOT_LINKED:
            (root / entry.name).symlink_to(entry)
    (root / "build").mkdir()
    (root / "data").mkdir()
    (root / "data" / "synth_small").symlink_to(tiny_dataset[0], target_is_directory=True)
    for kind, checkpoint in (("student", student_checkpoint), ("lidar", lidar_checkpoint)):
        (root / "runs" / f"{kind}_small").mkdir(parents=True)
        shutil.copy(checkpoint, root / "runs" / f"{kind}_small" / "last.pt")
    (root / "home").mkdir()
    return root


@pytest.mark.skipif(not (VENV_BIN / "ros2").is_file(),
                    reason="the README's ROS examples need the vendored ROS 2 tools (ros2 launch / run / topic): "
                           "tools/setup.sh installs them from ../shared/vendor/ros2 when that folder exists")
def test_readme_ros_examples_run_as_written(sandbox, tmp_path, marked_process_report):
    blocks = readme_ros_blocks()
    assert sum(lang == "bash" for lang, _ in blocks) >= 6, [b[:60] for _, b in blocks]
    env = {k: v for k, v in os.environ.items() if k != "ROS_DOMAIN_ID"}
    env["HOME"] = str(sandbox / "home")
    assert env["ROS_LOCALHOST_ONLY"] == "1" and env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    logs = tmp_path / "logs"
    logs.mkdir()
    summary = []
    for i, (lang, block) in enumerate(blocks):
        if lang == "xml":
            ET.fromstring(block)  # configuration snippets: at least well-formed
            summary.append(f"block {i}: xml parses")
            continue
        assert lang == "bash", f"README ROS block {i} is ```{lang}```: only bash and xml are run or checked"
        script = block
        if "export FASTDDS_DEFAULT_PROFILES_FILE" in block:
            script += 'printf "%s\\n" "$FASTDDS_DEFAULT_PROFILES_FILE"\n'  # what the export left in the shell
        run = run_block(script, sandbox, env, logs, f"block{i}", snapshot=marked_process_report)
        stops = ", ".join(f"{s:.1f} s" for s in run.stop_seconds) or "-"
        summary.append(f"block {i} ({run.wall_s:.0f} s, Ctrl-C {stops}): " + _check(block, run, sandbox))
    print("\nREADME ROS examples:\n  " + "\n  ".join(summary))
