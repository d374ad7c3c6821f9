"""Start the x3kd graph as plain processes, with the same ``--ros-args`` the launch file gives.

``ros2 launch`` (launch / launch_ros) is not installable everywhere (not on PyPI-wheel set-ups),
so this runner reads the same graph description (:mod:`x3kd_ros.graph.description`) and starts one process per
node::

    x3kd_run_graph checkpoint:=runs/student/last.pt                      # like ros2 launch arguments
    x3kd_run_graph --checkpoint runs/student/last.pt --use-teachers true \\
        --lidar-checkpoint runs/lidar/last.pt --radar-checkpoint runs/radar/last.pt
    x3kd_run_graph checkpoint:=a.pt --print                             # show the command lines only

It applies the project's network rule first (localhost-only DDS, a domain id, a log folder; see
:mod:`x3kd_ros.graph.environment`), which the children inherit, and gives the children the Fast DDS
transport profile for big images by the rule the launch file follows (:mod:`x3kd_ros.graph.transport`;
launch argument ``fastdds_profile``). Each child runs in its own session, so a
Ctrl-C in the terminal reaches only the runner, which then stops its children by PID: SIGINT (the
nodes shut down cleanly), then SIGTERM, then SIGKILL after ``stop_timeout_s``. It also stops all of
them when one exits on its own, and returns that node's exit code.

From Python (tests, tools)::

    with GraphRunner(load_graph({"checkpoint": path}), log_dir=tmp) as runner:
        ...                        # runner.pids(), runner.exited(), runner.log_text("detector")
    # leaving the block stops every child
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import yaml

from x3kd_ros.graph.description import (
    LAUNCH_ARGUMENTS,
    GraphError,
    NodeSpec,
    inline_parameters_document,
    load_graph,
    parse_cli_assignments,
    ros_arguments,
)

__all__ = ["executable_command", "GraphRunner", "main"]

_NETWORK_VARIABLES = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "1"}


def executable_command(spec: NodeSpec, python: str = sys.executable) -> list[str]:
    """How to start the node's program: its console script beside ``python`` when installed
    (``pip install -e .`` puts it there), else ``python -c`` calling the entry point."""
    script = Path(python).parent / spec.executable
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    module, function = spec.entry_point.split(":")
    return [python, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


class GraphRunner:
    """Starts and stops the processes of a graph.

    Args:
        specs: the nodes (:func:`x3kd_ros.graph.description.load_graph`).
        log_dir: each child's stdout + stderr go to ``<log_dir>/<key>.log``; None = this process's.
        env: environment of the children (default: this process's). It must carry the network
            rule (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, ``ROS_LOCALHOST_ONLY=1``,
            ``ROS_DOMAIN_ID``): :func:`x3kd_ros.graph.environment.apply_network_rule` sets them.
        python: interpreter whose console scripts / packages start the nodes.
        stop_timeout_s: grace time after SIGINT, and again after SIGTERM.
    """

    def __init__(self, specs: Sequence[NodeSpec], log_dir: Optional[str | os.PathLike] = None,
                 env: Optional[dict] = None, python: str = sys.executable, stop_timeout_s: float = 10.0) -> None:
        self.specs = list(specs)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.env = dict(os.environ if env is None else env)
        self.python = python
        self.stop_timeout_s = float(stop_timeout_s)
        self.processes: dict[str, subprocess.Popen] = {}
        self._params_dir: Optional[Path] = None
        self._logs: list = []

    def commands(self) -> dict[str, list[str]]:
        """key -> full command line; writes the inline-parameter files (kept until :meth:`stop`)."""
        if self._params_dir is None:
            self._params_dir = Path(tempfile.mkdtemp(prefix="x3kd_graph_params_"))
        out = {}
        for spec in self.specs:
            params_file = None
            if spec.parameters:
                params_file = self._params_dir / f"{spec.key}.yaml"
                params_file.write_text(yaml.safe_dump(inline_parameters_document(spec), default_flow_style=False))
            out[spec.key] = executable_command(spec, self.python) + ros_arguments(spec, params_file)
        return out

    def start(self) -> None:
        """Start every node. Raises RuntimeError if the network rule is not in ``env``."""
        missing = {k: v for k, v in _NETWORK_VARIABLES.items() if self.env.get(k) != v}
        if missing or not self.env.get("ROS_DOMAIN_ID"):
            raise RuntimeError(
                f"the ROS network rule is not applied (needs {_NETWORK_VARIABLES} and ROS_DOMAIN_ID): "
                "call x3kd_ros.graph.environment.apply_network_rule() first"
            )
        if self.processes:
            raise RuntimeError("this GraphRunner was already started")
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for key, cmd in self.commands().items():
                out = None
                if self.log_dir is not None:
                    out = open(self.log_dir / f"{key}.log", "wb")
                    self._logs.append(out)
                # Own session: a terminal Ctrl-C reaches the runner only, which stops children itself.
                self.processes[key] = subprocess.Popen(cmd, env=self.env, stdout=out,
                                                       stderr=subprocess.STDOUT if out else None,
                                                       stdin=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            self.stop()
            raise

    def pids(self) -> dict[str, int]:
        return {key: p.pid for key, p in self.processes.items()}

    def exited(self) -> dict[str, int]:
        """key -> exit code of the children that have ended."""
        return {key: p.returncode for key, p in self.processes.items() if p.poll() is not None}

    def log_text(self, key: str) -> str:
        """What child ``key`` has written so far (with ``log_dir`` only)."""
        if self.log_dir is None:
            raise RuntimeError("no log_dir: the children write to this process's output")
        path = self.log_dir / f"{key}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait(self, timeout_s: Optional[float] = None, poll_s: float = 0.2) -> Optional[str]:
        """Block until a child exits (returns its key) or ``timeout_s`` passes (returns None)."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while end is None or time.monotonic() < end:
            done = self.exited()
            if done:
                return next(iter(done))
            time.sleep(poll_s)
        return None

    def _signal_all(self, sig: int) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.kill(process.pid, sig)  # by PID: only the children this runner started
                except ProcessLookupError:
                    pass

    def _wait_all(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def stop(self) -> dict[str, int]:
        """Stop every child (SIGINT, then SIGTERM, then SIGKILL); returns key -> exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._signal_all(sig)
            if self._wait_all(self.stop_timeout_s):
                break
        else:
            self._signal_all(signal.SIGKILL)
            self._wait_all(self.stop_timeout_s)
        for handle in self._logs:
            handle.close()
        self._logs = []
        if self._params_dir is not None:
            shutil.rmtree(self._params_dir, ignore_errors=True)
            self._params_dir = None
        return {key: p.returncode for key, p in self.processes.items()}

    def __enter__(self) -> "GraphRunner":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="x3kd_run_graph",
        description="Start the x3kd ROS 2 graph (config/ros/graph.yaml) as plain processes.",
    )
    parser.add_argument("assignments", nargs="*", metavar="name:=value",
                        help="launch arguments as for ros2 launch: " + ", ".join(a.name for a in LAUNCH_ARGUMENTS))
    for arg in LAUNCH_ARGUMENTS:
        parser.add_argument(f"--{arg.name.replace('_', '-')}", dest=f"arg_{arg.name}", default=None,
                            help=f"{arg.description} (default: {arg.default!r})")
    parser.add_argument("--duration-s", type=float, default=0.0, help="stop after this long (0: until Ctrl-C)")
    parser.add_argument("--log-dir", default=None, help="write each node's output to <dir>/<node>.log")
    parser.add_argument("--print", action="store_true", help="print the command lines and exit")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = _parser().parse_args(argv)
    try:
        values = parse_cli_assignments(options.assignments)
        values.update({a.name: getattr(options, f"arg_{a.name}") for a in LAUNCH_ARGUMENTS
                       if getattr(options, f"arg_{a.name}") is not None})
        skipped: list[tuple[str, str]] = []
        specs = load_graph(values, skipped=skipped)
    except GraphError as err:
        print(f"x3kd_run_graph: {err}", file=sys.stderr)
        return 2
    from x3kd_ros.graph.environment import apply_network_rule
    from x3kd_ros.graph.transport import profile_environment

    network = apply_network_rule()
    try:
        # The launch file's rule (x3kd_ros.graph.transport), applied to the children's environment only.
        transport_env, profile_note = profile_environment(values.get("fastdds_profile", "auto"))
    except ValueError as err:
        print(f"x3kd_run_graph: {err}", file=sys.stderr)
        return 2
    runner = GraphRunner(specs, log_dir=options.log_dir, env={**os.environ, **transport_env})
    print(f"x3kd_run_graph: Fast DDS transport profile: {profile_note}", file=sys.stderr)
    if options.print:
        for key, cmd in runner.commands().items():
            print(f"{key}: {' '.join(cmd)}")
        runner.stop()
        return 0

    def terminate(signum, frame):  # Ctrl-C or SIGTERM: stop the graph
        raise KeyboardInterrupt

    # Installed and unblocked explicitly, as every node does (x3kd_ros.nodes.spin): an ignored or blocked
    # SIGINT is inherited across exec (a background job, a parent that blocked it), and Python then
    # installs no KeyboardInterrupt handler, so Ctrl-C would leave the graph running (seen in the test suite).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, terminate)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    for _, reason in skipped:
        print(f"x3kd_run_graph: {reason}", file=sys.stderr)
    print(f"x3kd_run_graph: ROS_DOMAIN_ID={network['ROS_DOMAIN_ID']}, localhost only; starting "
          f"{', '.join(s.name for s in specs)}", file=sys.stderr)
    code = 0
    try:
        runner.start()
        print(f"x3kd_run_graph: PIDs {runner.pids()}", file=sys.stderr)
        exited = runner.wait(options.duration_s if options.duration_s > 0 else None)
        if exited is not None:
            code = runner.processes[exited].returncode or 1
            print(f"x3kd_run_graph: {exited} exited with code {runner.processes[exited].returncode}; "
                  "stopping the others", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        t0 = time.monotonic()
        codes = runner.stop()
        print(f"x3kd_run_graph: stopped, exit codes {codes} ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
