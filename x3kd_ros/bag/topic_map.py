"""Topic map: where the graph's inputs are in a bag, resolved exactly as the nodes resolve them
(their parameters from params files and inline values, then ROS 2 remap rules); see *Other
people's bags* in :mod:`x3kd_ros.bag.evaluate`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import yaml

from x3kd_core.structures import CAMERA_NAMES, RADAR_NAMES
from x3kd_ros import topics
from x3kd_ros.bag.eval_config import BagEvalError

if TYPE_CHECKING:
    from x3kd_ros.bag.eval_config import BagEvalConfig

__all__ = ["parse_remap", "apply_remaps", "node_parameters", "BagTopics", "resolve_bag_topics"]


_NODE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IMAGE_TYPE = "sensor_msgs/msg/Image"
_COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
_CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"


def parse_remap(text: str) -> tuple[str, str]:
    """``"FROM:=TO"`` (as ``--ros-args -r`` takes it) -> ``(FROM, TO)``.

    Raises:
        BagEvalError: no ``:=`` or an empty side.
    """
    src, sep, dst = text.partition(":=")
    if not sep or not src.strip() or not dst.strip():
        raise BagEvalError(f"expected a remap rule FROM:=TO, got {text!r}")
    return src.strip(), dst.strip()


def _absolute(name: str, namespace: str = "") -> str:
    name = name.strip()
    return name if name.startswith(("/", "~")) else f"{namespace.rstrip('/')}/{name}"


def apply_remaps(name: str, rules: Sequence[tuple[str, str]], node_name: str = "", namespace: str = "") -> str:
    """Topic ``name`` of node ``namespace/node_name`` after ROS 2 remap rules, as rcl applies them:
    names made absolute in the node's namespace, the first rule whose FROM equals the name wins,
    a ``node:FROM`` rule applies to that node only."""
    target = _absolute(name, namespace)
    for src, dst in rules:
        node, sep, rest = src.partition(":")
        if sep and _NODE_NAME.fullmatch(node):
            if node != node_name:
                continue
            src = rest
        if _absolute(src, namespace) == target:
            return _absolute(dst, namespace)
    return target


def _node_key_pattern(key: str) -> re.Pattern:
    """rclcpp / rclpy's match of a params-file node key with a node's full name: ``/**`` any
    number of namespace tokens, ``/*`` one token (resolve_parameter_overrides)."""
    key = key if key.startswith("/") else "/" + key
    parts = re.split(r"(/\*\*|/\*)", key)
    return re.compile("".join("(/\\w+)*" if p == "/**" else "(/\\w+)" if p == "/*" else re.escape(p) for p in parts))


def _flatten(prefix: str, value: Any, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value


def node_parameters(params_files: Sequence[str | os.PathLike], node_name: str, namespace: str = "",
                    inline: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The parameter values that ROS 2 params files (in order, later wins) and then ``inline``
    give node ``namespace/node_name``, under their dotted names (``sync.slop_s``). Node keys may
    be nested (``ns: {node: {ros__parameters: ...}}``) and use ``/**`` / ``/*`` wildcards.

    Raises:
        BagEvalError: an unreadable file or one that is not a params file.
    """
    fqn = f"{namespace.rstrip('/')}/{node_name}"
    out: dict[str, Any] = {}

    def walk(key: str, entry: Any, file) -> None:
        if not isinstance(entry, dict):
            raise BagEvalError(f"params file {file}: node entry {key!r} is not a mapping")
        for name, value in entry.items():
            if name == "ros__parameters":
                if _node_key_pattern(key).fullmatch(fqn):
                    _flatten("", value or {}, out)
            else:
                walk(f"{key.rstrip('/')}/{name}" if key else str(name), value, file)

    for file in params_files:
        try:
            document = yaml.safe_load(Path(file).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise BagEvalError(f"params file {file}: {err}") from None
        if not isinstance(document, dict):
            raise BagEvalError(f"params file {file}: expected a mapping of node names to ros__parameters")
        walk("", document, file)
    if inline:
        _flatten("", dict(inline), out)
    return out


@dataclass(frozen=True)
class BagTopics:
    """Where the graph's inputs are in a bag, resolved as the nodes resolve them (their parameters,
    then the remap rules; see *Other people's bags* in :mod:`x3kd_ros.bag.evaluate`).

    Fields:
        cameras: the detector's cameras whose images the bag has (the detector's order).
        compressed: those images are CompressedImage (else Image).
        image: camera -> image topic in the bag. camera_info: camera -> CameraInfo topic in the
            bag (only those the bag has).
        lidar: the LiDAR teacher's cloud topic in the bag ("" where the bag lacks it).
        radars: radars whose clouds the bag has; radar: radar -> topic in the bag.
        names: graph name -> bag name of ``/ground_truth/*``, ``/tf`` and ``/tf_static``.
        camera_candidates: the image topics looked for (for error messages).
        detector_parameters / radar_parameters: node-side (before remapping) parameter values for
            the cameras / radars present, which the evaluation sets (dotted names).
    """

    cameras: list[str]
    compressed: bool
    image: dict[str, str]
    camera_info: dict[str, str]
    lidar: str
    radars: list[str]
    radar: dict[str, str]
    names: dict[str, str]
    camera_candidates: list[str] = field(default_factory=list)
    detector_parameters: dict[str, Any] = field(default_factory=dict)
    radar_parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def has_lidar(self) -> bool:
        return bool(self.lidar)

    def image_topics(self) -> list[str]:
        return [self.image[c] for c in self.cameras]

    def remapped(self) -> dict[str, str]:
        """Graph name -> bag name of every input whose name differs (for the report)."""
        out = {topics.camera_image_topic(c, self.compressed): self.image[c] for c in self.cameras}
        out.update({topics.camera_info_topic(c): t for c, t in self.camera_info.items()})
        if self.lidar:
            out[topics.LIDAR_TOPIC] = self.lidar
        out.update({topics.radar_topic(r): t for r, t in self.radar.items()})
        out.update(self.names)
        return {k: v for k, v in out.items() if k != v}


def _per_entry(params: Mapping[str, Any], name: str, n: int, node: str) -> Optional[list]:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n:
        raise BagEvalError(f"node {node}: parameter {name} must have one entry per sensor ({n}), got {value!r}")
    return list(value)


def resolve_bag_topics(specs, msgtypes: Mapping[str, str]) -> BagTopics:
    """Where the inputs of the graph ``specs`` (:class:`~x3kd_ros.graph.description.NodeSpec`, as started:
    params files, inline parameters, remappings) are in a bag with topics ``msgtypes``.

    Cameras: the detector's ``cameras`` with ``image_topics`` (default
    ``/cameras/<cam>/image_raw`` and ``.../compressed``) remapped; raw or compressed, whichever
    more cameras of the bag have. Raises BagEvalError for malformed per-sensor lists.
    """
    by_key = {s.key: s for s in specs}
    anchor = by_key.get("detector") or (specs[0] if specs else None)

    def params(spec) -> dict[str, Any]:
        return node_parameters(spec.params_files, spec.name, spec.namespace, spec.parameters)

    def remap(spec, name: str) -> str:
        return apply_remaps(name, spec.remappings, spec.name, spec.namespace) if spec is not None else name

    cameras, compressed, image, info, candidates, det = [], False, {}, {}, [], {}
    detector = by_key.get("detector")
    if detector is not None:
        p = params(detector)
        all_cameras = list(p.get("cameras") or CAMERA_NAMES)
        n = len(all_cameras)
        explicit = _per_entry(p, "image_topics", n, detector.name)
        options: dict[bool, list[tuple[int, str, str]]] = {}
        for comp in (False, True):
            node_side = explicit or [topics.camera_image_topic(c, comp) for c in all_cameras]
            bag_side = [remap(detector, t) for t in node_side]
            candidates += [t for t in bag_side if t not in candidates]
            want = _COMPRESSED_TYPE if comp else _IMAGE_TYPE
            options[comp] = [(i, node_side[i], bag_side[i]) for i in range(n) if msgtypes.get(bag_side[i]) == want]
        compressed = len(options[True]) > len(options[False])
        chosen = options[compressed]
        index = [i for i, _, _ in chosen]
        cameras = [all_cameras[i] for i in index]
        image = {all_cameras[i]: bag for i, _, bag in chosen}
        info_node = (_per_entry(p, "camera_info_topics", n, detector.name)
                     or [topics.camera_info_topic(c) for c in all_cameras])
        info = {all_cameras[i]: remap(detector, info_node[i]) for i in index
                if remap(detector, info_node[i]) in msgtypes}
        det = {"cameras": cameras, "image_transport": "compressed" if compressed else "raw",
               "image_topics": [t for _, t, _ in chosen], "camera_info_topics": [info_node[i] for i in index]}
        for name in ("camera_frames", "sync.offsets_s"):
            values = _per_entry(p, name, n, detector.name)
            if values is not None:
                det[name] = [values[i] for i in index]

    lidar_spec = by_key.get("lidar_teacher")
    lidar_node = params(lidar_spec).get("input_topic") if lidar_spec is not None else None
    lidar = remap(lidar_spec or anchor, lidar_node or topics.LIDAR_TOPIC)
    lidar = lidar if msgtypes.get(lidar) == _CLOUD_TYPE else ""

    radar_spec = by_key.get("radar_teacher")
    rp = params(radar_spec) if radar_spec is not None else {}
    all_radars = list(rp.get("radars") or RADAR_NAMES)
    m = len(all_radars)
    radar_node = (_per_entry(rp, "input_topics", m, "x3kd_radar_teacher")
                  or [topics.radar_topic(r) for r in all_radars])
    radar_index = [i for i in range(m) if msgtypes.get(remap(radar_spec or anchor, radar_node[i])) == _CLOUD_TYPE]
    radars = [all_radars[i] for i in radar_index]
    radar = {all_radars[i]: remap(radar_spec or anchor, radar_node[i]) for i in radar_index}
    rad = {"radars": radars, "input_topics": [radar_node[i] for i in radar_index]}
    frames = _per_entry(rp, "radar_frames", m, "x3kd_radar_teacher")
    if frames is not None:
        rad["radar_frames"] = [frames[i] for i in radar_index]

    names = {t: remap(anchor, t) for t in (topics.GT_SAMPLE_TOKEN_TOPIC, topics.GT_DETECTIONS_TOPIC,
                                           topics.TF_TOPIC, topics.TF_STATIC_TOPIC)}
    if names[topics.TF_STATIC_TOPIC] != topics.TF_STATIC_TOPIC:
        raise BagEvalError(f"{topics.TF_STATIC_TOPIC} cannot be remapped in an evaluation (the player replays "
                           f"it latched under its own name), got {names[topics.TF_STATIC_TOPIC]}")
    return BagTopics(cameras=cameras, compressed=compressed, image=image, camera_info=info, lidar=lidar,
                     radars=radars, radar=radar, names=names, camera_candidates=candidates,
                     detector_parameters=det, radar_parameters=rad)


def _topic_warnings(config: BagEvalConfig, sensors: BagTopics, msgtypes: Mapping[str, str]) -> list[str]:
    """Likely mistakes in a topic map: cameras without CameraInfo in the bag, and remap rules whose
    TO is a bag topic that no node input resolved to (a FROM that names no topic the graph uses)."""
    used = (set(sensors.image.values()) | set(sensors.camera_info.values()) | set(sensors.radar.values())
            | set(sensors.names.values()) | ({sensors.lidar} if sensors.lidar else set()))
    out = [f"{c}: the bag has no CameraInfo for it (its images wait {topics.camera_info_topic(c)} "
           "remapped, then count as missing_camera_info)" for c in sensors.cameras if c not in sensors.camera_info]
    for src, dst in config.remappings:
        if _absolute(dst) in msgtypes and _absolute(dst) not in used:
            out.append(f"remap {src}:={dst}: {dst} is in the bag but no node listens to it through this rule "
                       f"(graph topics are named like {topics.camera_info_topic(CAMERA_NAMES[0])})")
    return out
