"""One graph description -> the launch file and the plain-process runner start the same commands.

The launch file runs against small stand-ins that record the ``Node(...)`` keyword arguments (so
this also runs where the vendored launch / launch_ros are absent; test_ros2_cli.py runs the real
``ros2 launch``); :func:`launch_ros_command` then builds the command line
the way launch_ros' ``Node`` action does (Humble and later: executable, ``--ros-args``,
``-r __node:=``, ``-r __ns:=``, one ``--params-file`` per parameters entry with dicts written to a
temporary file, then ``-r from:=to``), and that is compared with :class:`GraphRunner`'s commands.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor

from x3kd_core.paths import REPO_ROOT
from x3kd_ros.nodes.comparison_node import comparison_param_specs
from x3kd_ros.nodes.detector_node import detector_param_specs
from x3kd_ros.graph.description import GraphError, LAUNCH_ARGUMENTS, load_graph
from x3kd_ros.graph.runner import GraphRunner, main as run_graph_main
from x3kd_ros.nodes.teacher_nodes import common_param_specs, lidar_param_specs, radar_param_specs

LAUNCH_FILE = REPO_ROOT / "launch" / "detector.launch.py"
ALL_NODES = ["detector", "lidar_teacher", "radar_teacher", "comparison_lidar", "comparison_radar"]
#: Launch arguments that start every node of the default graph.
ALL_ON = {"use_teachers": "true", "lidar_checkpoint": "l.pt", "radar_checkpoint": "r.pt"}


# ------------------------------------------------------------------------------ launch stand-ins
class _ParameterValue:
    def __init__(self, value, value_type=None):
        self.value, self.value_type = value, value_type


class _Node:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class _Declare:
    def __init__(self, name, default_value=None, description=""):
        self.name, self.default_value, self.description = name, default_value, description


class _LogInfo:
    def __init__(self, msg):
        self.msg = msg


class _Group:
    def __init__(self, actions, scoped=True, forwarding=True):
        self.actions, self.scoped = list(actions), scoped


class _SetEnv:
    def __init__(self, name, value):
        self.name, self.value = name, value


class _Opaque:
    def __init__(self, function):
        self.function = function


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


@pytest.fixture
def launch_stubs(monkeypatch):
    modules = {
        "launch": {"LaunchDescription": lambda actions: list(actions)},
        "launch.actions": {"DeclareLaunchArgument": _Declare, "LogInfo": _LogInfo, "OpaqueFunction": _Opaque,
                           "GroupAction": _Group, "SetEnvironmentVariable": _SetEnv},
        "launch.substitutions": {"LaunchConfiguration": _LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": _Node},
        "launch_ros.parameter_descriptions": {"ParameterValue": _ParameterValue},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)


def run_launch_file(arguments: dict, logs: list | None = None, environment: dict | None = None,
                    envs: dict | None = None) -> tuple[list[_Declare], list[_Node]]:
    """Load launch/detector.launch.py, declare its arguments, evaluate its nodes for ``arguments``
    in a launch context whose environment is ``environment`` (default: empty). Its LogInfo messages
    are appended to ``logs``; ``envs`` gets node name -> variables the launch sets for that node."""
    spec = importlib.util.spec_from_file_location("x3kd_detector_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = [a for a in description if isinstance(a, _Declare)]
    opaque = [a for a in description if isinstance(a, _Opaque)]
    assert len(opaque) == 1 and len(declared) + 1 == len(description)
    configurations = {a.name: a.default_value for a in declared}
    configurations.update(arguments)
    context = types.SimpleNamespace(launch_configurations=configurations, environment=dict(environment or {}))
    actions, node_env = [], {}
    for action in opaque[0].function(context):
        if isinstance(action, _Group):  # the environment action: scoped to the nodes inside it
            assert action.scoped
            node_env = {a.name: a.value for a in action.actions if isinstance(a, _SetEnv)}
            actions += [a for a in action.actions if not isinstance(a, _SetEnv)]
        else:
            actions.append(action)
    assert all(isinstance(a, (_Node, _LogInfo)) for a in actions)
    if logs is not None:
        logs.extend(a.msg for a in actions if isinstance(a, _LogInfo))
    nodes = [a for a in actions if isinstance(a, _Node)]
    if envs is not None:
        envs.update({n.kwargs["name"]: dict(node_env) for n in nodes})
    return declared, nodes


def launch_ros_command(kwargs: dict) -> list:
    """The command launch_ros' Node action runs for these kwargs; a dict parameters entry (written
    to a temporary file by launch_ros) appears as its typed values."""
    cmd = [kwargs["executable"], *kwargs.get("arguments", []), "--ros-args", "-r", f"__node:={kwargs['name']}"]
    if kwargs.get("namespace") is not None:
        cmd += ["-r", f"__ns:=/{kwargs['namespace'].lstrip('/')}"]
    for entry in kwargs.get("parameters", []):
        if isinstance(entry, dict):
            assert all(isinstance(v, _ParameterValue) and v.value_type is type(v.value) for v in entry.values())
            cmd += ["--params-file", {k: v.value for k, v in entry.items()}]
        else:
            cmd += ["--params-file", str(entry)]
    for src, dst in kwargs.get("remappings", []):
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


def runner_commands(arguments: dict) -> dict[str, list]:
    """GraphRunner's commands with the program as its name and inline params files as their values."""
    runner = GraphRunner(load_graph(arguments))
    try:
        out = {}
        for key, cmd in runner.commands().items():
            program = Path(cmd[0]).name if len(cmd) == 1 or cmd[1] != "-c" else cmd[2]
            start = cmd.index("--ros-args")
            args = list(cmd[start:])
            for i, item in enumerate(args):
                if item.startswith(tempfile_prefix()):
                    document = yaml.safe_load(Path(item).read_text())
                    assert list(document) == ["/**"]
                    args[i] = document["/**"]["ros__parameters"]
            out[key] = [program, *args]
        return out
    finally:
        runner.stop()


def tempfile_prefix() -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), "x3kd_graph_params_")


# ------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("arguments", [
    {"checkpoint": "runs/student/last.pt"},
    {"checkpoint": "s.pt", "use_teachers": "true", "lidar_checkpoint": "l.pt", "radar_checkpoint": "r.pt",
     "namespace": "car1", "device": "cpu", "calibration_file": "calibration_synthetic.yaml", "use_sim_time": "true"},
])
def test_launch_file_and_runner_give_the_same_command_lines(launch_stubs, arguments):
    declared, nodes = run_launch_file(arguments)
    assert [(a.name, a.default_value) for a in declared] == [(a.name, a.default) for a in LAUNCH_ARGUMENTS]
    from_launch = {n.kwargs["name"]: launch_ros_command(n.kwargs) for n in nodes}
    assert all(n.kwargs["package"] == "x3kd_ros" for n in nodes)
    from_runner = {cmd[cmd.index("-r") + 1].split(":=")[1]: cmd for cmd in runner_commands(arguments).values()}
    assert from_launch == from_runner
    teachers = arguments.get("use_teachers") == "true"
    assert len(from_launch) == (5 if teachers else 1)
    detector = from_launch["x3kd_detector"]
    sim_time = arguments.get("use_sim_time") == "true"
    assert detector[-1] == {"checkpoint": arguments["checkpoint"], "device": arguments.get("device", "auto"),
                            "calibration_file": arguments.get("calibration_file", ""), "use_sim_time": sim_time}
    # use_sim_time reaches every node, as a bool (rclpy refuses the string "true" for it).
    assert all(cmd[-1]["use_sim_time"] is sim_time for cmd in from_launch.values())
    if teachers:
        assert detector[:7] == ["x3kd_detector", "--ros-args", "-r", "__node:=x3kd_detector", "-r", "__ns:=/car1",
                                "--params-file"]
        assert from_launch["x3kd_comparison_radar"][-1] == {"teacher_name": "radar", "use_sim_time": True}
        assert from_launch["x3kd_lidar_teacher"][-1]["checkpoint"] == "l.pt"


def test_remappings_and_custom_graph_files(launch_stubs, tmp_path):
    (tmp_path / "p.yaml").write_text("/**:\n  ros__parameters:\n    teacher_name: lidar\n")
    (tmp_path / "graph.yaml").write_text(yaml.safe_dump({"nodes": [{
        "key": "cmp", "executable": "x3kd_comparison", "entry_point": "x3kd_ros.nodes.comparison_node:main",
        "name": "cmp_${device}", "params_files": ["p.yaml"],
        "remappings": {"x3kd/detections": "/other/detections", "x3kd/comparison/lidar": "agreement"}}]},
        sort_keys=False))
    arguments = {"config": str(tmp_path / "graph.yaml"), "device": "cpu"}
    _, nodes = run_launch_file(arguments)
    (cmd,) = runner_commands(arguments).values()
    assert launch_ros_command(nodes[0].kwargs) == cmd == [
        "x3kd_comparison", "--ros-args", "-r", "__node:=cmp_cpu", "--params-file", str(tmp_path / "p.yaml"),
        "--params-file", {"use_sim_time": False},
        "-r", "x3kd/detections:=/other/detections", "-r", "x3kd/comparison/lidar:=agreement"]


def test_graph_rejects_bad_input(tmp_path):
    with pytest.raises(GraphError, match=r"unknown launch arguments \['checkpont'\]"):
        load_graph({"checkpont": "x"})
    with pytest.raises(GraphError, match="expected true or false, got 'maybe'"):
        load_graph({"use_teachers": "maybe"})
    with pytest.raises(GraphError, match="not a valid ROS namespace"):
        load_graph({"namespace": "car 1"})
    with pytest.raises(GraphError, match="launch argument use_sim_time: expected true or false, got 'yes please'"):
        load_graph({"use_sim_time": "yes please"})
    bad = tmp_path / "graph.yaml"
    bad.write_text("nodes:\n  - {key: a, executable: x, entry_point: 'm:f', name: a, parameters: {p: '${nope}'}}\n")
    with pytest.raises(GraphError, match=r"\$\{nope\} is not a launch argument"):
        load_graph({"config": str(bad)})
    bad.write_text("nodes:\n  - {key: a, executable: x, entry_point: 'm:f', name: a, params_files: [none.yaml]}\n")
    with pytest.raises(GraphError, match="params file not found"):
        load_graph({"config": str(bad)})
    bad.write_text("nodes:\n  - {key: a, executable: x, entry_point: 'm:f', name: a, parameters: {use_sim_time: true}}\n")
    with pytest.raises(GraphError, match="use_sim_time comes from the launch argument"):
        load_graph({"config": str(bad)})
    bad.write_text("nodes:\n  - {key: a, executable: x, entry_point: 'm:f', nmae: a}\n")
    with pytest.raises(GraphError, match=r"unknown keys \['nmae'\], missing keys \['name'\]"):
        load_graph({"config": str(bad)})


def test_a_teacher_without_its_checkpoint_is_not_started(launch_stubs, capsys):
    """The README's teacher example gives only the LiDAR checkpoint: the radar teacher (which could
    only die with "checkpoint = '': is required") and its comparison node are left out, and the
    launch log and x3kd_run_graph say why."""
    arguments = {"checkpoint": "s.pt", "use_teachers": "true", "lidar_checkpoint": "l.pt"}
    logs: list = []
    _, nodes = run_launch_file(arguments, logs)
    assert [n.kwargs["name"] for n in nodes] == ["x3kd_detector", "x3kd_lidar_teacher", "x3kd_comparison_lidar"]
    assert logs[:2] == ["node x3kd_radar_teacher not started: launch argument radar_checkpoint is empty",
                        "node x3kd_comparison_radar not started: launch argument radar_checkpoint is empty"]
    assert len(logs) == 3 and logs[2].startswith("Fast DDS transport profile: ")
    skipped: list = []
    assert [s.key for s in load_graph({"use_teachers": "true"}, skipped=skipped)] == ["detector"]
    assert [k for k, _ in skipped] == ALL_NODES[1:]
    assert [s.key for s in load_graph({"use_teachers": "true"}, include_disabled=True)] == ALL_NODES
    assert run_graph_main(["checkpoint:=/tmp/x.pt", "use_teachers:=true", "radar_checkpoint:=/tmp/r.pt",
                           "--print"]) == 0
    printed = capsys.readouterr().out
    assert "radar_teacher:" in printed and "lidar_teacher:" not in printed


def test_graph_rejects_bad_requires(tmp_path):
    bad = tmp_path / "graph.yaml"
    bad.write_text("nodes:\n  - {key: a, executable: x, entry_point: 'm:f', name: a, requires: [chekpoint]}\n")
    with pytest.raises(GraphError, match=r"requires: expected a list of launch arguments"):
        load_graph({"config": str(bad)})


def test_default_graph_nodes():
    assert [s.key for s in load_graph()] == ["detector"]
    specs = load_graph({"use_teachers": True}, include_disabled=True)
    assert [s.key for s in specs] == ALL_NODES
    assert [s.key for s in load_graph({"use_teachers": "false"}, include_disabled=True)] == ALL_NODES


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _compatible(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list) and all(_compatible(v, default[0]) for v in value)
    return isinstance(value, type(default))


def test_params_files_only_set_declared_parameters_with_their_types():
    # rclpy silently ignores a parameter a node does not declare: a typo in a YAML would go unnoticed.
    declared = {
        "x3kd_detector": detector_param_specs(1) + detector_param_specs(2),
        "x3kd_lidar_teacher": common_param_specs() + lidar_param_specs(),
        "x3kd_radar_teacher": common_param_specs() + radar_param_specs(1) + radar_param_specs(2),
        "x3kd_comparison": comparison_param_specs(),
    }
    by_file: dict[Path, dict] = {}
    specs = load_graph(ALL_ON)
    assert [s.key for s in specs] == ALL_NODES
    for spec in specs:
        # use_sim_time: rclpy declares it on every node (a bool).
        defaults = {p.name: p.default for p in declared[spec.executable]} | {"use_sim_time": False}
        for name, value in spec.parameters.items():
            assert name in defaults and _compatible(value, defaults[name]), (spec.key, name)
        for file in spec.params_files:
            by_file.setdefault(file, {}).update(defaults)
    for file, defaults in by_file.items():
        document = yaml.safe_load(file.read_text())
        assert list(document) == ["/**"]
        values = _flatten(document["/**"]["ros__parameters"])
        for name, value in values.items():
            assert name in defaults, f"{file.name}: {name} is declared by none of its nodes"
            assert _compatible(value, defaults[name]), f"{file.name}: {name} = {value!r}"


def test_console_scripts_match_the_graph():
    scripts = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.dist is not None and ep.dist.name == "x3kd_ros"}
    for spec in load_graph(ALL_ON):
        assert scripts[spec.executable].value == spec.entry_point
        assert callable(scripts[spec.executable].load())
    assert scripts["x3kd_run_graph"].value == "x3kd_ros.graph.runner:main"


def test_run_graph_print_and_bad_arguments(capsys):
    assert run_graph_main(["checkpoint:=/tmp/x.pt", "--device", "cpu", "--print"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("detector: ")
    assert out[0].split()[1].endswith("x3kd_detector") and "__node:=x3kd_detector" in out[0]
    assert run_graph_main(["checkpoint=/tmp/x.pt"]) == 2
    assert "expected name:=value" in capsys.readouterr().err


def test_runner_starts_and_stops_the_graph_processes(ros_context, tmp_path, spin_until):
    """Real processes: the comparison nodes come up with their inline parameters, then stop cleanly."""
    specs = [s for s in load_graph(ALL_ON) if s.key.startswith("comparison")]
    specs += load_graph()  # the detector without a checkpoint: exits at once with code 2
    probe = rclpy.create_node("x3kd_test_probe", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(probe)
    runner = GraphRunner(specs, log_dir=tmp_path, stop_timeout_s=10.0)
    try:
        runner.start()
        pids = runner.pids()
        assert sorted(pids) == ["comparison_lidar", "comparison_radar", "detector"]
        # teacher_name (an inline parameter) decides each node's output topic.
        up = lambda: all(probe.count_publishers(f"/x3kd/comparison/{t}") == 1 for t in ("lidar", "radar"))  # noqa: E731
        assert spin_until(executor, up, 60.0), {k: runner.log_text(k) for k in pids}
        assert runner.wait(timeout_s=60.0) == "detector"
        assert runner.exited() == {"detector": 2}
        assert "checkpoint = '': is required" in runner.log_text("detector")
        codes = runner.stop()
    finally:
        runner.stop()
        executor.shutdown()
        probe.destroy_node()
    assert codes == {"comparison_lidar": 0, "comparison_radar": 0, "detector": 2}  # SIGINT: clean shutdown
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "publishing /x3kd/comparison/radar" in runner.log_text("comparison_radar")


def test_runner_refuses_to_start_without_the_network_rule():
    env = {k: v for k, v in os.environ.items() if k != "ROS_LOCALHOST_ONLY"}
    with pytest.raises(RuntimeError, match="network rule"):
        GraphRunner(load_graph(), env=env).start()


# ------------------------------------------------------------------------------ transport profile
_VAR = "FASTDDS_DEFAULT_PROFILES_FILE"


@pytest.mark.parametrize("environ, choice, applied", [
    ({}, "auto", True),                                                   # nothing set: the shipped file
    ({_VAR: "/mine.xml"}, "auto", False),                                 # the user's own profile wins
    ({"FASTRTPS_DEFAULT_PROFILES_FILE": "/old.xml"}, "auto", False),      # also under its old name
    ({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, "auto", False),        # another RMW: not ours to configure
    ({"RMW_IMPLEMENTATION": "rmw_fastrtps_dynamic_cpp"}, "auto", True),
    ({}, "off", False),
])
def test_launch_file_and_runner_apply_the_transport_profile_by_one_rule(launch_stubs, monkeypatch, capsys,
                                                                        environ, choice, applied):
    """Issue 16: the launch file sets FASTDDS_DEFAULT_PROFILES_FILE = the shipped profile for the nodes
    it starts (an environment action scoped to them) unless the user points Fast DDS at a profile of
    their own or runs another RMW; x3kd_run_graph gives its children exactly the same."""
    from x3kd_ros.graph import runner as run_graph, transport

    shipped = transport.shipped_profile_path()
    assert shipped.is_file() and shipped.name == "fastdds_large_images.xml"
    expected = {_VAR: str(shipped)} if applied else {}
    arguments = {"checkpoint": "s.pt", "use_teachers": "true", "lidar_checkpoint": "l.pt", "fastdds_profile": choice}
    envs: dict = {}
    logs: list = []
    run_launch_file(arguments, logs, environment=environ, envs=envs)
    assert envs == {name: expected for name in ("x3kd_detector", "x3kd_lidar_teacher", "x3kd_comparison_lidar")}
    note = transport.profile_environment(choice, environ)[1]
    assert logs[-1] == f"Fast DDS transport profile: {note}"
    assert (str(shipped) in note) == applied

    captured = {}

    class Recording(GraphRunner):
        def __init__(self, specs, **kwargs):
            captured.update(kwargs["env"])
            super().__init__(specs, **kwargs)

    for var in (_VAR, "FASTRTPS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION"):
        monkeypatch.delenv(var, raising=False)
    for var, value in environ.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(run_graph, "GraphRunner", Recording)
    assert run_graph_main([f"{k}:={v}" for k, v in arguments.items()] + ["--print"]) == 0
    assert captured.get(_VAR) == (str(shipped) if applied else environ.get(_VAR))
    assert f"Fast DDS transport profile: {note}" in capsys.readouterr().err
    assert os.environ.get(_VAR) == environ.get(_VAR)  # the runner's own environment is left alone


def test_a_profile_named_by_path_is_used_and_a_missing_one_is_an_error(launch_stubs, tmp_path, capsys):
    mine = tmp_path / "mine.xml"
    mine.write_text("<dds/>")
    envs: dict = {}
    run_launch_file({"checkpoint": "s.pt", "fastdds_profile": str(mine)}, environment={_VAR: "/other.xml"},
                    envs=envs)
    assert envs == {"x3kd_detector": {_VAR: str(mine)}}
    with pytest.raises(ValueError, match="fastdds_profile: file not found"):
        run_launch_file({"checkpoint": "s.pt", "fastdds_profile": str(tmp_path / "none.xml")})
    assert run_graph_main(["checkpoint:=s.pt", f"fastdds_profile:={tmp_path / 'none.xml'}", "--print"]) == 2
    assert "fastdds_profile: file not found" in capsys.readouterr().err


def test_the_shipped_profile_is_the_generated_one_at_64_mib():
    """config/dds/fastdds_large_images.xml (what the graph loads) and replay.fastdds_profile_xml (what the
    replayer and x3kd bag eval write, sized to the bag) describe the same profile."""
    import xml.etree.ElementTree as ET

    from x3kd_ros.bag.replay import fastdds_profile_xml
    from x3kd_ros.graph.transport import PROFILE_SEGMENT_BYTES, shipped_profile_path

    def canonical(root):
        return [(e.tag, (e.text or "").strip(), sorted(e.attrib.items())) for e in root.iter()]

    shipped = ET.parse(shipped_profile_path()).getroot()
    generated = ET.fromstring(fastdds_profile_xml(PROFILE_SEGMENT_BYTES))
    assert canonical(shipped) == canonical(generated)
    assert PROFILE_SEGMENT_BYTES == 64 << 20


def test_an_install_without_the_shipped_file_still_gets_the_profile(monkeypatch, tmp_path):
    """A colcon install whose data files miss config/dds: the same profile, written by its generator."""
    from x3kd_ros.graph import transport
    from x3kd_ros.bag.replay import fastdds_profile_xml

    monkeypatch.setattr(transport, "shipped_profile_path", lambda: tmp_path / "missing.xml")
    env, note = transport.profile_environment("auto", {})
    assert "the shipped file is not installed" in note
    assert Path(env[_VAR]).read_text() == fastdds_profile_xml(transport.PROFILE_SEGMENT_BYTES)
