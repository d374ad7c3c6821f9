"""The live part of a bag evaluation: start the graph's node processes, replay the bag with
:class:`~x3kd_ros.bag.replay.BagPlayer`, collect the answers, the comparison nodes' JSON and
``/diagnostics`` beside it, stop the graph (:func:`_live_run`). rclpy is imported inside the
functions, not at module level."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from x3kd_ros import topics
from x3kd_ros.bag.eval_config import CAMERA_SPAN_S, PAIR_SLOP_S, RADAR_SPAN_S, BagEvalConfig, BagEvalError
from x3kd_ros.bag.matching import match_to_keyframes
from x3kd_ros.bag.topic_map import BagTopics


class _Collector:
    """Comparison JSON and /diagnostics, received on the executor thread."""

    def __init__(self, node, comparisons: Sequence[str]) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import String

        from x3kd_ros.nodes.qos import qos_profile

        self._lock = threading.Lock()
        self.comparison: dict[str, list[dict]] = {t: [] for t in comparisons}
        self.diagnostics: dict[str, dict[str, str]] = {}
        # node name -> published count -> model_ms.last at the first report showing that count
        self.model_ms: dict[str, dict[int, float]] = {}
        qos = qos_profile("reliable", 1000)
        self.subscriptions = {
            t: node.create_subscription(String, topics.comparison_topic(t), self._on_comparison(t), qos)
            for t in comparisons
        }
        self.subscriptions["/diagnostics"] = node.create_subscription(
            DiagnosticArray, topics.DIAGNOSTICS_TOPIC, self._on_diagnostics, qos)

    def _on_comparison(self, teacher: str):
        def callback(msg) -> None:
            data = json.loads(msg.data)
            with self._lock:
                self.comparison[teacher].append(data)

        return callback

    def _on_diagnostics(self, msg) -> None:
        with self._lock:
            for status in msg.status:
                node = status.name.split(":", 1)[0]
                values = {kv.key: kv.value for kv in status.values}
                self.diagnostics[node] = values
                if "published" in values and "model_ms.last" in values:
                    published = int(values["published"])
                    if published > 0:
                        self.model_ms.setdefault(node, {}).setdefault(published, _float(values["model_ms.last"]))

    def snapshot(self) -> tuple[dict, dict, dict]:
        with self._lock:
            return ({t: list(v) for t, v in self.comparison.items()}, {k: dict(v) for k, v in self.diagnostics.items()},
                    {k: dict(v) for k, v in self.model_ms.items()})


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


class _Spinner:
    """Spins an executor with the given nodes on a daemon thread until :meth:`stop`."""

    def __init__(self, context, nodes) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.context = context
        self.executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            self.executor.add_node(node)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="x3kd_bag_eval_spin", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5.0)
        self.executor.shutdown()


def _transport_environment(bag: Path, out: Path, enabled: bool) -> tuple[dict[str, str], str]:
    """Environment variables that load the replay's Fast DDS profile, and a note for the report."""
    from x3kd_ros.bag.replay import fastdds_profile_environment, shm_segment_bytes

    if not enabled:
        return {}, "off"
    return fastdds_profile_environment(out / "fastdds_replay_profile.xml", shm_segment_bytes(bag))


def _log_tail(runner, key: str, lines: int = 15) -> str:
    try:
        text = runner.log_text(key)
    except RuntimeError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class _LiveRun:
    """What the live part of an evaluation collected (graph stopped)."""

    replay: Any  # x3kd_ros.bag.replay.ReplayResult
    comparison: dict[str, list[dict]]
    diagnostics: dict[str, dict[str, str]]
    model_samples: dict[str, dict[int, float]]
    expected_pairs: dict[str, int]
    exit_codes: dict[str, int]
    ready_s: float
    wall_s: float
    transport_note: str


def _eval_groups(sensors: BagTopics, teachers: Sequence[str]):
    """The player's frame groups: the detector's camera frames, and each teacher's input."""
    from x3kd_ros.bag.replay import FrameGroup

    groups = [FrameGroup("detector", tuple(sensors.image_topics()), topics.DETECTIONS_TOPIC, span_s=CAMERA_SPAN_S)]
    if "lidar" in teachers:
        groups.append(FrameGroup("lidar", (sensors.lidar,), topics.teacher_detections_topic("lidar"), span_s=0.0))
    if "radar" in teachers:
        groups.append(FrameGroup("radar", tuple(sensors.radar[r] for r in sensors.radars),
                                 topics.teacher_detections_topic("radar"), span_s=RADAR_SPAN_S))
    return groups


def _model_node_key(group: str) -> str:
    return "detector" if group == "detector" else f"{group}_teacher"


def _live_run(bag: Path, out: Path, specs, groups, teachers: Sequence[str], msgtypes: Mapping[str, str],
              config: BagEvalConfig, network: Mapping[str, str], say: Callable[[str], None],
              sensors: BagTopics) -> _LiveRun:
    """Start the graph, replay the bag, collect answers / comparison JSON / diagnostics, stop the graph."""
    import rclpy
    from rclpy.context import Context

    from x3kd_ros.bag.replay import BagPlayer, ReplayConfig, ReplayError
    from x3kd_ros.graph.runner import GraphRunner

    # Publishers wait for these subscriptions: the detector's cameras, /tf_static of every model
    # node, each teacher's sensor topics (names in the bag: BagTopics).
    expected = {t: 1 for t in sensors.image_topics()}
    expected.update({t: 1 for t in sensors.camera_info.values()})
    if topics.TF_STATIC_TOPIC in msgtypes:
        expected[topics.TF_STATIC_TOPIC] = 1 + len(teachers)
    for g in groups[1:]:
        expected.update({t: 1 for t in g.input_topics})
    # CameraInfo first (see replay.py, Priming): the bag's camera_info topics under any name.
    prime = tuple(dict.fromkeys([t for t in msgtypes if t.endswith("/camera_info")]
                                + list(sensors.camera_info.values())))
    replay_config = ReplayConfig(rate=config.rate, max_outstanding=config.max_outstanding,
                                 ack_timeout_s=config.ack_timeout_s, ready_timeout_s=config.ready_timeout_s,
                                 drain_timeout_s=config.drain_timeout_s, expected_subscribers=expected,
                                 prime_topics=prime)
    node_names = {s.key: s.name for s in specs}

    transport_env, transport_note = _transport_environment(bag, out, config.fastdds_profile)
    runner = GraphRunner(specs, log_dir=out / "logs", env={**os.environ, **transport_env},
                         stop_timeout_s=config.stop_timeout_s)
    context = Context()
    node = spinner = player = None
    t_start = time.monotonic()
    saved = {k: os.environ.get(k) for k in transport_env}
    try:
        # The RMW reads the profile when this process creates its first participant (the CLI's
        # case; a process that already had one keeps the profile it loaded then).
        os.environ.update(transport_env)
        try:
            rclpy.init(context=context)
            node = rclpy.create_node("x3kd_bag_eval", context=context)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        player = BagPlayer(node, bag, groups, replay_config)
        collector = _Collector(node, teachers)
        spinner = _Spinner(context, [node])
        say(f"bag eval: starting {', '.join(s.name for s in specs)} (ROS_DOMAIN_ID={network['ROS_DOMAIN_ID']}, "
            f"logs in {out / 'logs'})")
        runner.start()

        def abort() -> Optional[str]:
            dead = runner.exited()
            if not dead:
                return None
            key, code = next(iter(dead.items()))
            return f"node {key} exited with code {code}; its log ends with:\n{_log_tail(runner, key)}"

        # Subscribers of each model node's detections: us, and the comparison node of each teacher
        # (the student's go to every comparison node, a teacher's to its own).
        wanted_links = {node_names["detector"]: 1 + len(teachers)}
        wanted_links.update({node_names[_model_node_key(t)]: 2 for t in teachers})
        heard_from = list(wanted_links) + [node_names[f"comparison_{t}"] for t in teachers]

        def graph_ready() -> Optional[str]:
            # Seeing a subscriber or a publisher from this side does not mean that the other side has
            # matched it, and a reliable, volatile message sent before that is lost (a comparison pair
            # short). So: every node's /diagnostics heard (its participant matched our readers, the
            # comparison readers created before the /diagnostics one), and each model node reports
            # that its detections publisher matched all its subscribers (``detections_subscribers``,
            # which also covers the subscriber counts seen from here).
            for t in teachers:
                if collector.subscriptions[t].get_publisher_count() < 1:
                    return f"{topics.comparison_topic(t)} publisher"
            _, diagnostics, _ = collector.snapshot()
            unheard = [name for name in heard_from if name not in diagnostics]
            if unheard:
                return "/diagnostics of " + ", ".join(unheard)
            for name, n in wanted_links.items():
                matched = diagnostics[name].get("detections_subscribers")
                if matched is None or int(matched) < n:
                    return f"{name}: detections publisher matched {matched} of {n} subscribers"
            return None

        try:
            ready_s = player.wait_until_ready(extra=graph_ready, abort=abort)
            say(f"bag eval: graph up after {time.monotonic() - t_start:.1f} s; replaying {bag} "
                f"({'flow-controlled' if config.rate == 0 else f'{config.rate:g} x real time'})")
            replay = player.play(abort=abort)
        except ReplayError as err:
            raise BagEvalError(str(err)) from None

        # The comparison pairs and the nodes' final counters arrive shortly after the last answer.
        expected_pairs = {t: _expected_pairs(replay.answers["detector"], replay.answers[t]) for t in teachers}

        def settled() -> bool:
            comparison, diagnostics, _ = collector.snapshot()
            if any(len(comparison[t]) < n for t, n in expected_pairs.items()):
                return False
            for g in groups:
                published = diagnostics.get(node_names[_model_node_key(g.name)], {}).get("published")
                if published != str(len(replay.answers[g.name])):
                    return False
            return all(diagnostics.get(node_names[f"comparison_{t}"], {}).get("pairs") == str(len(comparison[t]))
                       for t in teachers)

        end = time.monotonic() + config.drain_timeout_s
        while not settled() and time.monotonic() < end and abort() is None:
            time.sleep(0.05)
        comparison, diagnostics, model_samples = collector.snapshot()
    finally:
        exit_codes = runner.stop()
        if spinner is not None:
            spinner.stop()
        if player is not None:
            player.destroy()
        if node is not None:
            node.destroy_node()
        context.try_shutdown()
    return _LiveRun(replay=replay, comparison=comparison, diagnostics=diagnostics, model_samples=model_samples,
                    expected_pairs=expected_pairs, exit_codes=exit_codes, ready_s=ready_s,
                    wall_s=time.monotonic() - t_start, transport_note=transport_note)


def _expected_pairs(student, teacher) -> int:
    """How many student answers have a teacher answer within the comparison's pairing slop (one-to-one)."""
    slop = int(PAIR_SLOP_S * 1e9)
    return len(match_to_keyframes([a.stamp_ns for a in student], [a.stamp_ns for a in teacher], slop))
