"""The graph an evaluation starts: the graph description's nodes for the checkpoints given, with
the user's remaps / params files and the evaluation's overrides (:func:`eval_graph_specs`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from x3kd_ros import topics
from x3kd_ros.bag.eval_config import CAMERA_SPAN_S, PAIR_SLOP_S, RADAR_SPAN_S, BagEvalConfig, BagEvalError
from x3kd_ros.bag.topic_map import resolve_bag_topics

__all__ = ["eval_graph_specs"]

_DIAGNOSTICS_PERIOD_S = 0.2


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _nested(dotted: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        target = out
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return out


def eval_graph_specs(config: BagEvalConfig, msgtypes: Mapping[str, str]):
    """The graph's :class:`~x3kd_ros.graph.description.NodeSpec` s for an evaluation of a bag with these topics.

    The student detector always; the LiDAR / radar teacher and its comparison node when its
    checkpoint is given. ``config.remappings`` go to every node ahead of the graph's own and
    ``config.params_files`` after the graph's own files. Inline parameters added to the graph's
    (they are applied last):

    ========================  =================================================================
    all model nodes           ``qos.input`` reliable depth 100, ``qos.output.depth`` 100,
                              ``processing_queue_size`` 1000 (nothing dropped), no markers,
                              ``diagnostics_period_s`` 0.2
    detector                  ``cameras`` / ``image_transport`` of the bag (with their
                              ``image_topics`` / ``camera_info_topics`` and, where set,
                              ``camera_frames``: :class:`BagTopics`), ``sync.slop_s``
                              :data:`CAMERA_SPAN_S`, ``sync.timeout_s`` 1, ``max_input_age_s`` 0
                              (bag stamps are old)
    radar teacher             ``radars`` of the bag (with their ``input_topics``), ``sync.slop_s``
                              :data:`RADAR_SPAN_S`
    comparison                ``qos.input.depth`` 100, ``pair.slop_s`` :data:`PAIR_SLOP_S`,
                              ``pair.timeout_s`` 10, ``window_frames`` 100000
    ========================  =================================================================

    Raises:
        BagEvalError: a checkpoint file is missing, or the bag lacks the sensors a node needs.
    """
    return _eval_graph(config, msgtypes)[0]


def _eval_graph(config: BagEvalConfig, msgtypes: Mapping[str, str]):
    """(specs, :class:`BagTopics`) of :func:`eval_graph_specs`."""
    from x3kd_ros.graph.description import GraphError, load_graph

    for name, path in (("checkpoint", config.checkpoint), ("lidar checkpoint", config.lidar_checkpoint),
                       ("radar checkpoint", config.radar_checkpoint)):
        if path and not Path(path).is_file():
            raise BagEvalError(f"{name} not found: {path}")
    use_teachers = bool(config.lidar_checkpoint or config.radar_checkpoint)
    arguments = {"checkpoint": str(Path(config.checkpoint).resolve()), "device": config.device,
                 "use_teachers": use_teachers,
                 "lidar_checkpoint": str(Path(config.lidar_checkpoint).resolve()) if config.lidar_checkpoint else "",
                 "radar_checkpoint": str(Path(config.radar_checkpoint).resolve()) if config.radar_checkpoint else ""}
    if config.graph_config:
        arguments["config"] = config.graph_config
    try:
        specs = load_graph(arguments)
    except GraphError as err:
        raise BagEvalError(str(err)) from None
    wanted = {"detector"}
    if config.lidar_checkpoint:
        wanted |= {"lidar_teacher", "comparison_lidar"}
    if config.radar_checkpoint:
        wanted |= {"radar_teacher", "comparison_radar"}
    user_files = tuple(Path(f).resolve() for f in config.params_files)
    specs = [replace(s, params_files=tuple(s.params_files) + user_files,
                     remappings=tuple(config.remappings) + tuple(s.remappings))
             for s in specs if s.key in wanted]
    if {s.key for s in specs} != wanted:
        raise BagEvalError(f"the graph description lacks nodes {sorted(wanted - {s.key for s in specs})}")
    sensors = resolve_bag_topics(specs, msgtypes)
    if not sensors.cameras:
        shown = ", ".join(sensors.camera_candidates[:4]) + (", ..." if len(sensors.camera_candidates) > 4 else "")
        raise BagEvalError(f"the bag has none of the camera image topics the detector listens to ({shown}); "
                           "map them with --remap GRAPH_TOPIC:=BAG_TOPIC or image_topics in a --params-file")
    if config.lidar_checkpoint and not sensors.has_lidar:
        raise BagEvalError(f"a LiDAR teacher needs {topics.LIDAR_TOPIC} (or its remapped name), which the bag lacks")
    if config.radar_checkpoint and not sensors.radars:
        raise BagEvalError("a radar teacher needs /radar/<radar>/points topics (or their remapped names), "
                           "which the bag lacks")
    model_common = {"qos": {"input": {"reliability": "reliable", "depth": 100}, "output": {"depth": 100}},
                    "processing_queue_size": 1000, "publish_markers": False,
                    "diagnostics_period_s": _DIAGNOSTICS_PERIOD_S}
    overrides = {
        "detector": _deep_merge(
            {**model_common,
             # A set waits longer for a late camera: with flow control nothing newer comes meanwhile.
             "sync": {"slop_s": CAMERA_SPAN_S, "timeout_s": 1.0}, "max_input_age_s": 0.0},
            _nested(sensors.detector_parameters)),
        "lidar_teacher": dict(model_common),
        "radar_teacher": _deep_merge({**model_common, "sync": {"slop_s": RADAR_SPAN_S}},
                                     _nested(sensors.radar_parameters)),
        "comparison_lidar": {"qos": {"input": {"depth": 100}, "output": {"depth": 100}},
                             "pair": {"slop_s": PAIR_SLOP_S, "timeout_s": 10.0}, "window_frames": 100000,
                             "diagnostics_period_s": _DIAGNOSTICS_PERIOD_S},
    }
    overrides["comparison_radar"] = overrides["comparison_lidar"]
    out = [replace(spec, parameters=_deep_merge(dict(spec.parameters), overrides.get(spec.key, {}))) for spec in specs]
    return out, sensors
