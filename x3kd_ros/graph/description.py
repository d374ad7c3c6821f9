"""The x3kd ROS 2 graph, described once (``config/ros/graph.yaml``) and started two ways.

``launch/detector.launch.py`` turns each :class:`NodeSpec` into a ``launch_ros.actions.Node``
(:func:`launch_node_kwargs`), and :mod:`x3kd_ros.graph.runner` starts the same specs as plain
processes (:func:`ros_arguments`) where ``launch`` / ``launch_ros`` are not installed. Both give
every node the same executable, name, namespace, parameter files, parameters and remappings, in
the order launch_ros uses::

    <executable> --ros-args -r __node:=<name> [-r __ns:=<namespace>]
                 --params-file <file> ... --params-file <inline parameters as a file>
                 [-r <from>:=<to> ...]

Graph file format (``config/ros/graph.yaml``)::

    nodes:
      - key: detector                     # unique id in the graph
        executable: x3kd_detector         # console script of setup.py (ros2 run x3kd_ros <exe>)
        entry_point: x3kd_ros.nodes.detector_node:main
        name: x3kd_detector               # ROS node name
        enabled: true                     # or "${use_teachers}"; false = not started
        requires: [checkpoint]            # launch arguments that must be non-empty, else not started
        params_files: [detector.yaml]     # relative to the graph file's folder
        parameters: {checkpoint: "${checkpoint}"}   # applied after the files (they win)
        remappings: {}                    # from: to

``${name}`` in any string is replaced by the launch argument ``name`` (:data:`LAUNCH_ARGUMENTS`,
the arguments ``detector.launch.py`` declares); an unknown name is an error.

Every node gets the ROS parameter ``use_sim_time`` (a bool) from the launch argument of that name, as
ROS 2 launch files pass it; a graph file does not set it itself.

A node that is enabled but ``requires`` a launch argument left empty (a teacher without its
checkpoint) is not started: :func:`load_graph` leaves it out and, when given a ``skipped`` list,
says why there, and the launch file and ``x3kd_run_graph`` log that reason instead of starting a
process that could only exit with a FATAL error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from x3kd_ros.share import PACKAGE, shipped_file

__all__ = [
    "PACKAGE",
    "GraphError",
    "LaunchArgument",
    "LAUNCH_ARGUMENTS",
    "NodeSpec",
    "default_config_path",
    "resolve_arguments",
    "load_graph",
    "launch_node_kwargs",
    "inline_parameters_document",
    "ros_arguments",
]

_GRAPH_FILE = Path("config") / "ros" / "graph.yaml"


class GraphError(ValueError):
    """The graph file or the launch arguments are invalid; the text names the key or argument."""


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str


#: The launch arguments of ``detector.launch.py`` (and options of ``x3kd_run_graph``).
LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("config", "", "graph description YAML; empty: the package's config/ros/graph.yaml"),
    LaunchArgument("checkpoint", "", "camera-student checkpoint (last.pt of `x3kd train`)"),
    LaunchArgument("device", "auto", "where the models run: auto (cuda if available, else cpu), cpu, cuda, cuda:N"),
    LaunchArgument("use_teachers", "false", "also start the LiDAR and radar teachers and their comparison nodes"),
    LaunchArgument("namespace", "", "ROS namespace of every node (outputs move with it; sensor inputs, "
                   "/tf_static and /diagnostics stay absolute)"),
    LaunchArgument("lidar_checkpoint", "", "LiDAR teacher checkpoint (with use_teachers)"),
    LaunchArgument("radar_checkpoint", "", "radar teacher checkpoint (with use_teachers)"),
    LaunchArgument("calibration_file", "", "calibration YAML used where /tf_static lacks a frame (e.g. "
                   "calibration_synthetic.yaml); empty: /tf_static only"),
    LaunchArgument("use_sim_time", "false", "every node reads ROS time from /clock (a bag replayed with "
                   "`python -m x3kd_ros.bag.replay --clock`, a simulator) instead of the system clock"),
    LaunchArgument("fastdds_profile", "auto", "Fast DDS transport profile of the started nodes: auto (the "
                   "package's config/dds/fastdds_large_images.xml, unless FASTDDS_DEFAULT_PROFILES_FILE is "
                   "already set or another RMW is used), off, or a path to an XML profile (x3kd_ros/graph/transport.py)"),
)
_ARGUMENT_NAMES = tuple(a.name for a in LAUNCH_ARGUMENTS)


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph, all substitutions done.

    Fields:
        key: id in the graph file. executable: console script name. entry_point: ``module:function``.
        name: ROS node name. namespace: absolute namespace ("/x3kd") or "" for the root.
        params_files: absolute paths, applied in order. parameters: inline parameters (applied last).
        remappings: (from, to) pairs, in order.
    """

    key: str
    executable: str
    entry_point: str
    name: str
    namespace: str
    params_files: tuple[Path, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()


def default_config_path() -> Path:
    """``share/x3kd_ros/config/ros/graph.yaml`` of the installed package, else this checkout's."""
    return shipped_file(_GRAPH_FILE)


def resolve_arguments(values: Mapping[str, Any]) -> dict[str, str]:
    """Launch argument values as strings, defaults filled in.

    Raises:
        GraphError: an argument name that is not in :data:`LAUNCH_ARGUMENTS`.
    """
    unknown = sorted(set(values) - set(_ARGUMENT_NAMES))
    if unknown:
        raise GraphError(f"unknown launch arguments {unknown} (known: {', '.join(_ARGUMENT_NAMES)})")
    out = {a.name: a.default for a in LAUNCH_ARGUMENTS}
    for name, value in values.items():
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


_SUBSTITUTION = re.compile(r"\$\{([^}]*)\}")


def _substitute(value: Any, args: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        def replace(match: re.Match) -> str:
            name = match.group(1)
            if name not in args:
                raise GraphError(f"{where}: ${{{name}}} is not a launch argument ({', '.join(args)})")
            return args[name]

        return _SUBSTITUTION.sub(replace, value)
    if isinstance(value, list):
        return [_substitute(v, args, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, args, f"{where}.{k}") for k, v in value.items()}
    return value


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise GraphError(f"{where}: expected true or false, got {value!r}")


def _namespace(text: str) -> str:
    text = text.strip().strip("/")
    if not text:
        return ""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*", text):
        raise GraphError(f"namespace {text!r} is not a valid ROS namespace")
    return "/" + text


_NODE_KEYS = {"key", "executable", "entry_point", "name", "enabled", "requires", "params_files", "parameters",
              "remappings"}
_REQUIRED_KEYS = {"key", "executable", "entry_point", "name"}


def load_graph(arguments: Mapping[str, Any] = (), include_disabled: bool = False,
               skipped: Optional[list[tuple[str, str]]] = None) -> list[NodeSpec]:
    """The nodes to start for the given launch arguments (defaults for the rest).

    Args:
        arguments: launch argument name -> value (strings as ``ros2 launch`` gives them).
        include_disabled: also return nodes whose ``enabled`` is false or whose ``requires`` are
            not met (to inspect the graph).
        skipped: if given, ``(key, reason)`` is appended for every enabled node left out because a
            launch argument it ``requires`` is empty.

    Raises:
        GraphError: bad arguments, an unreadable graph file, unknown/missing keys, a missing params
            file, duplicate keys or node names.
    """
    args = resolve_arguments(dict(arguments))
    path = Path(args["config"]).expanduser() if args["config"] else default_config_path()
    if not path.is_file():
        raise GraphError(f"graph file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GraphError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict) or set(raw) != {"nodes"} or not isinstance(raw["nodes"], list):
        raise GraphError(f"{path}: expected a mapping with one key 'nodes' holding a list")
    namespace = _namespace(args["namespace"])
    use_sim_time = _as_bool(args["use_sim_time"], "launch argument use_sim_time")
    specs, keys, names = [], set(), set()
    for i, entry in enumerate(raw["nodes"]):
        where = f"{path}: nodes[{i}]"
        if not isinstance(entry, dict):
            raise GraphError(f"{where} must be a mapping")
        unknown, missing = set(entry) - _NODE_KEYS, _REQUIRED_KEYS - set(entry)
        if unknown or missing:
            raise GraphError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        entry = _substitute(entry, args, where)
        where = f"{path}: node {entry['key']!r}"
        if entry["key"] in keys or entry["name"] in names:
            raise GraphError(f"{where}: key or node name used twice")
        keys.add(entry["key"])
        names.add(entry["name"])
        if ":" not in entry["entry_point"]:
            raise GraphError(f"{where}: entry_point must be 'module:function', got {entry['entry_point']!r}")
        if not _as_bool(entry.get("enabled", True), f"{where}.enabled") and not include_disabled:
            continue
        requires = entry.get("requires") or []
        if not isinstance(requires, list) or any(name not in args for name in requires):
            raise GraphError(f"{where}.requires: expected a list of launch arguments ({', '.join(args)}), "
                             f"got {requires!r}")
        empty = [name for name in requires if not args[name].strip()]
        if empty and not include_disabled:
            if skipped is not None:
                skipped.append((str(entry["key"]), f"node {entry['name']} not started: launch argument "
                                f"{' and '.join(empty)} is empty"))
            continue
        files = []
        for name in entry.get("params_files") or []:
            file = (path.parent / name).resolve()
            if not file.is_file():
                raise GraphError(f"{where}: params file not found: {file}")
            files.append(file)
        parameters = entry.get("parameters") or {}
        remappings = entry.get("remappings") or {}
        if not isinstance(parameters, dict) or not isinstance(remappings, dict):
            raise GraphError(f"{where}: parameters and remappings must be mappings")
        if "use_sim_time" in parameters:
            raise GraphError(f"{where}.parameters: use_sim_time comes from the launch argument of that name")
        parameters = {**parameters, "use_sim_time": use_sim_time}
        specs.append(NodeSpec(
            key=str(entry["key"]),
            executable=str(entry["executable"]),
            entry_point=str(entry["entry_point"]),
            name=str(entry["name"]),
            namespace=namespace,
            params_files=tuple(files),
            parameters=dict(parameters),
            remappings=tuple((str(k), str(v)) for k, v in remappings.items()),
        ))
    return specs


def launch_node_kwargs(spec: NodeSpec) -> dict[str, Any]:
    """Keyword arguments of ``launch_ros.actions.Node`` for ``spec`` (plain values, no launch import).

    ``parameters`` lists the params files (paths, as strings) and then the inline parameters
    (one dict), the order :func:`ros_arguments` uses. The launch file wraps the inline values in
    ``ParameterValue(value, value_type=type(value))`` so that launch_ros does not re-parse strings
    as YAML (an empty checkpoint would otherwise become null).
    """
    parameters: list[Any] = [str(f) for f in spec.params_files]
    if spec.parameters:
        parameters.append(dict(spec.parameters))
    kwargs: dict[str, Any] = {
        "package": PACKAGE,
        "executable": spec.executable,
        "name": spec.name,
        "parameters": parameters,
        "remappings": list(spec.remappings),
        "output": "screen",
    }
    if spec.namespace:
        kwargs["namespace"] = spec.namespace
    return kwargs


def inline_parameters_document(spec: NodeSpec) -> dict:
    """The params-file content for ``spec.parameters`` (launch_ros writes the same mapping)."""
    return {"/**": {"ros__parameters": dict(spec.parameters)}}


def ros_arguments(spec: NodeSpec, inline_params_file: Optional[Path] = None) -> list[str]:
    """The ``--ros-args ...`` part of the node's command line (see the module docstring).

    ``inline_params_file`` is where :func:`inline_parameters_document` was written; required when
    ``spec.parameters`` is not empty.
    """
    out = ["--ros-args", "-r", f"__node:={spec.name}"]
    if spec.namespace:
        out += ["-r", f"__ns:={spec.namespace}"]
    for file in spec.params_files:
        out += ["--params-file", str(file)]
    if spec.parameters:
        if inline_params_file is None:
            raise ValueError(f"node {spec.key}: inline parameters need a params file path")
        out += ["--params-file", str(inline_params_file)]
    for src, dst in spec.remappings:
        out += ["-r", f"{src}:={dst}"]
    return out


def parse_cli_assignments(items: Sequence[str]) -> dict[str, str]:
    """``["checkpoint:=a.pt", "use_teachers:=true"]`` -> dict, as ``ros2 launch`` takes arguments."""
    out = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise GraphError(f"expected name:=value, got {item!r}")
        out[name] = value
    return out
