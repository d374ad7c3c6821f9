"""Replay a rosbag2 file into a running ROS 2 graph, with flow control, and record the answers.

``ros2 bag play`` (rosbag2_py) is not installable here, and a plain player has two problems for
an evaluation: messages published before a subscriber has matched are lost, and a model slower
than the bag falls behind until its queue drops frames. :class:`BagPlayer` publishes the bag's
raw CDR bytes with rclpy publishers of the recorded types (no decode / re-encode) and adds what an
evaluation needs:

Start-up (:meth:`BagPlayer.wait_until_ready`)
    1. A publisher per topic is created with the recorded type (``/tf_static`` reliable +
       transient local, depth 1, as tf2's static broadcaster; every other topic reliable, keep
       last ``ReplayConfig.depth``: a lost sample can only be repaired while the writer still
       holds it, so the depth must not be 1).
    2. The first ``/tf_static`` message is published (transient local: late subscribers get it).
    3. It waits until every publisher has matched its expected number of subscriptions
       (``expected_subscribers``), every frame group's output subscription has matched a
       publisher, and the caller's extra condition holds.
    4. *Priming*: the first message of every ``ReplayConfig.prime_topics`` topic (default: the
       ``camera_info`` topics) is published. In a bag an image and its CameraInfo carry the same
       stamp, the image first; a detector drops images that arrive before any CameraInfo, so
       without priming the first frame would be lost. Primed messages are sent again in their turn.
    5. ``settle_s`` more: DDS matching between *other* processes (detector -> comparison node)
       cannot be observed from here.

Frames and flow control (:meth:`BagPlayer.play`)
    A :class:`FrameGroup` names input topics that together make one model input (the six camera
    images of the detector; the LiDAR cloud of the LiDAR teacher; the five radar clouds) and the
    topic that answers it. Messages of a group are cut into *frames*: a frame is complete when it
    holds one message of every input topic; a message opens a new frame when its topic is already
    in the open frame or its stamp is more than ``span_s`` after the frame's first stamp (so a
    frame missing a camera is closed by the next frame's first image).

    - ``rate == 0`` (default, "as fast as the graph answers"): before the first message of a new
      frame of a group is sent, the player waits until that group's output topic has answered all
      but ``max_outstanding - 1`` of the group's earlier frames (default: all of them), or
      ``ack_timeout_s`` passes (counted in :attr:`ReplayResult.ack_timeouts`, then it goes on).
      Groups wait independently, so the detector and the teachers work in parallel, but no model
      ever has more than ``max_outstanding`` frames queued: nothing is dropped and latencies are
      not inflated by queueing. Messages outside every group (``/tf``, CameraInfo, ...) are sent
      as soon as their turn in the bag comes.
    - ``rate > 0``: bag time is replayed at ``rate`` x real time (1.0 = as recorded), without
      waiting for answers (what a live sensor does); a model slower than that queues or drops
      frames as its node is configured to.

    After the last message the player waits (``drain_timeout_s``) until every frame has been
    answered.

Bag time on ``/clock`` (``ReplayConfig.clock_hz > 0``, CLI ``--clock [HZ]``)
    As ``ros2 bag play --clock``: the player is a ROS time source, so nodes started with
    ``use_sim_time:=true`` read the bag's time from ``node.get_clock()``. It publishes
    ``rosgraph_msgs/Clock`` (best effort, depth 1, as rosbag2 does) ``clock_hz`` times a second from
    its own thread, and once more right before every replayed message whose stamp is ahead of the
    clock, so a node never sees a message stamped later than its clock by more than the transport's
    reordering. With ``rate == 0`` the clock stands while the player waits for answers; with
    ``rate > 0`` it runs at ``rate`` x real time between messages. During start-up it holds the
    bag's first stamp, after the last message the last one; every :meth:`BagPlayer.play` (each
    ``--loop``) starts it again from the first, so the clock jumps back exactly as the stamps do.

Records (:class:`ReplayResult`)
    For every frame: its input stamps and the wall time (``time.time_ns()``, CLOCK_REALTIME) at
    which its first and last messages were handed to rmw. For every answer: the message, its
    header stamp, and the publisher's source timestamp and the receive time from rmw's
    ``MessageInfo`` (same clock). End-to-end latency of a frame = answer source timestamp - last
    input sent.

The player creates its publishers and subscriptions on a node the caller owns and spins (an
executor in another thread): answers arrive through that executor while :meth:`play` blocks.

Transport (Fast DDS, the default RMW)
    Fast DDS sends to processes on the same host through a shared-memory segment of 512 KiB per
    participant by default. A frame of a bag (six camera images and a LiDAR cloud, published
    back to back) does not fit; what does not fit is dropped and only repaired by the reliable
    protocol at the writer's next heartbeat, about a second later (seen here: images 1-2 s late,
    so the detector's synchronizer gave up on them and ran on partial sets). The replaying process
    therefore loads a Fast DDS profile (:func:`fastdds_profile_xml`, set through
    ``FASTDDS_DEFAULT_PROFILES_FILE`` before its first participant is created) that adds a
    shared-memory transport with a segment sized to the bag (:func:`shm_segment_bytes`) and a
    20 ms writer heartbeat (fast repair of anything still lost). Shared memory never leaves the
    host, so the localhost-only network rule is untouched; discovery settings are not changed.

Where each part lives (the names are re-exported here)
    :class:`BagPlayer` is here; its settings, frame groups, frame cutter and records in
    :mod:`x3kd_ros.bag.replay_frames`; the ``/clock`` publisher in :mod:`x3kd_ros.bag.playback_clock`;
    the Fast DDS profile in :mod:`x3kd_ros.bag.replay_transport`; ``python -m x3kd_ros.bag.replay``
    runs :func:`x3kd_ros.bag.replay_cli.main`.
"""

from __future__ import annotations

import importlib
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from x3kd_ros import topics as topic_names
from x3kd_ros.bag.io import bag_summary, read_bag
from x3kd_ros.bag.playback_clock import PlaybackClock
from x3kd_ros.bag.replay_frames import (Answer, FrameCutter, FrameGroup, ReplayConfig, ReplayError, ReplayResult,
                                       SentFrame)
# fastdds_profile_environment / _xml and shm_segment_bytes are imported from here too (replay_transport)
from x3kd_ros.bag.replay_transport import fastdds_profile_environment, fastdds_profile_xml, shm_segment_bytes


__all__ = [
    "ReplayError",
    "FrameGroup",
    "ReplayConfig",
    "SentFrame",
    "FrameCutter",
    "Answer",
    "ReplayResult",
    "BagPlayer",
    "PlaybackClock",
    "fastdds_profile_xml",
    "shm_segment_bytes",
    "fastdds_profile_environment",
]

# How often waits re-check the abort condition (s).
_POLL_S = 0.05


def _message_class(msgtype: str):
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as err:
        raise ReplayError(f"cannot replay {msgtype}: its Python interface package '{package}' "
                          "is not importable") from err


class BagPlayer:
    """Publishes a bag into the graph and records the answers (see the module docstring).

    Args:
        node: an rclpy node the caller spins in another thread for the whole replay.
        bag: rosbag2 folder.
        groups: frame groups (their input topics must be in the bag and replayed).
        config: :class:`ReplayConfig`.

    Raises:
        ReplayError / ValueError: unknown topics, a type whose Python package is missing.
    """

    def __init__(self, node, bag: str | Path, groups: Sequence[FrameGroup] = (),
                 config: ReplayConfig = ReplayConfig()) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        self.node = node
        self.bag = Path(bag)
        self.config = config
        self.groups = {g.name: g for g in groups}
        if len(self.groups) != len(groups):
            raise ValueError("frame group names must be unique")
        summary = bag_summary(self.bag)
        wanted = list(summary.msgtypes) if config.topics is None else list(config.topics)
        missing = sorted(set(wanted) - set(summary.msgtypes))
        if missing:
            raise ValueError(f"bag {self.bag} has no topic {', '.join(missing)}")
        self.topics = [t for t in wanted if t not in set(config.exclude_topics)]
        self.msgtypes = {t: summary.msgtypes[t] for t in self.topics}
        self.message_counts = {t: summary.message_counts[t] for t in self.topics}
        self._group_of: dict[str, str] = {}
        for group in groups:
            for topic in group.input_topics:
                if topic not in self.msgtypes:
                    raise ValueError(f"frame group {group.name!r}: input topic {topic} is not replayed from {self.bag}")
                if topic in self._group_of:
                    raise ValueError(f"topic {topic} is an input of two frame groups")
                self._group_of[topic] = group.name

        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=config.depth,
                              reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.publishers = {
            topic: node.create_publisher(_message_class(msgtype), topic,
                                         latched if topic == topic_names.TF_STATIC_TOPIC else reliable)
            for topic, msgtype in self.msgtypes.items()
        }
        if config.expected_subscribers is None:
            self.expected_subscribers = {t: 1 for t in self._group_of}
        else:
            unknown = sorted(set(config.expected_subscribers) - set(self.publishers))
            if unknown:
                raise ValueError(f"expected_subscribers names topics that are not replayed: {unknown}")
            self.expected_subscribers = dict(config.expected_subscribers)

        # Answers: filled by the executor thread, read by the replay thread.
        self._lock = threading.Condition()
        self.answers: dict[str, list[Answer]] = {name: [] for name in self.groups}
        self._subscriptions = {}
        for group in groups:
            self._subscriptions[group.name] = node.create_subscription(
                _message_class(group.output_type), group.output_topic, self._answer_callback(group.name), reliable)
        self.primed: list[str] = []
        self.clock: Optional[PlaybackClock] = None
        if config.clock_hz > 0:
            if topic_names.CLOCK_TOPIC in self.publishers:
                raise ValueError(f"the bag has its own {topic_names.CLOCK_TOPIC}: replay it with clock_hz 0 "
                                 "(CLI: without --clock), or exclude that topic")
            from rosgraph_msgs.msg import Clock

            # As rosbag2's player and rclpy's time source subscription: best effort, keep last 1.
            clock_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                                   reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)
            self._clock_publisher = node.create_publisher(Clock, topic_names.CLOCK_TOPIC, clock_qos)
            self.clock = PlaybackClock(self._clock_publisher, config.clock_hz)

    # ------------------------------------------------------------------------------ answers
    def _answer_callback(self, name: str) -> Callable:
        def on_answer(msg, info) -> None:  # two parameters: rclpy passes rmw's MessageInfo
            received = time.time_ns()
            stamp = msg.header.stamp
            answer = Answer(name, int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec), msg,
                            int(info.get("source_timestamp") or 0), int(info.get("received_timestamp") or received))
            with self._lock:
                self.answers[name].append(answer)
                self._lock.notify_all()

        return on_answer

    def answer_count(self, name: str) -> int:
        with self._lock:
            return len(self.answers[name])

    def _wait_answers(self, needed: dict[str, int], timeout_s: float, abort) -> bool:
        """Block until group -> at least that many answers, or timeout; True if reached."""
        end = time.monotonic() + timeout_s
        with self._lock:
            while True:
                if all(len(self.answers[g]) >= n for g, n in needed.items()):
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(timeout=min(left, _POLL_S))
                if abort is not None:
                    reason = abort()
                    if reason:
                        raise ReplayError(reason)

    # ------------------------------------------------------------------------------ start-up
    def _first_messages(self, wanted: Iterable[str]) -> dict[str, bytes]:
        wanted = set(wanted)
        first: dict[str, bytes] = {}
        if not wanted:
            return first
        for msg in read_bag(self.bag, sorted(wanted), decoder="raw"):
            first.setdefault(msg.topic, msg.message)
            if len(first) == len(wanted):
                break
        return first

    def _first_stamp_ns(self) -> Optional[int]:
        for msg in read_bag(self.bag, self.topics, decoder="raw"):
            return msg.stamp_ns
        return None

    def _not_ready(self, extra: Optional[Callable[[], Optional[str]]]) -> Optional[str]:
        waiting = [f"{t} ({self.publishers[t].get_subscription_count()}/{n} subscribers)"
                   for t, n in self.expected_subscribers.items() if self.publishers[t].get_subscription_count() < n]
        waiting += [f"{g.output_topic} (no publisher)" for name, g in self.groups.items()
                    if self._subscriptions[name].get_publisher_count() < 1]
        if not waiting and extra is not None:
            other = extra()
            if other:
                waiting.append(other)
        return ", ".join(waiting) if waiting else None

    def wait_until_ready(self, extra: Optional[Callable[[], Optional[str]]] = None,
                         abort: Optional[Callable[[], Optional[str]]] = None) -> float:
        """Prime, then wait until the graph has matched (see the module docstring).

        Args:
            extra: returns what else is still awaited (text) or None when ready.
            abort: returns a reason to give up (e.g. "node X exited with code 2") or None.

        Returns:
            Seconds spent waiting.

        Raises:
            ReplayError: ``abort`` fired, or ``ready_timeout_s`` passed (the text lists what is missing).
        """
        start = time.monotonic()
        prime = self.config.prime_topics
        if prime is None:
            prime = tuple(t for t in self.topics if t.endswith("/camera_info"))
        prime = tuple(t for t in prime if t in self.publishers)
        if topic_names.TF_STATIC_TOPIC in self.publishers:
            prime = (topic_names.TF_STATIC_TOPIC,) + tuple(t for t in prime if t != topic_names.TF_STATIC_TOPIC)
        first = self._first_messages(prime)
        if self.clock is not None:
            start_ns = self._first_stamp_ns()
            if start_ns is not None:
                self.clock.jump_to(start_ns)  # use_sim_time nodes have a time while the graph comes up
        # /tf_static is transient local: published now, every later subscriber still gets it.
        if topic_names.TF_STATIC_TOPIC in first:
            self.publishers[topic_names.TF_STATIC_TOPIC].publish(first[topic_names.TF_STATIC_TOPIC])
        end = start + self.config.ready_timeout_s
        while True:
            reason = abort() if abort is not None else None
            if reason:
                raise ReplayError(reason)
            waiting = self._not_ready(extra)
            if waiting is None:
                break
            if time.monotonic() > end:
                raise ReplayError(f"the graph did not come up within {self.config.ready_timeout_s:.0f} s; "
                                  f"still waiting for: {waiting}")
            time.sleep(_POLL_S)
        # Volatile topics (CameraInfo) only reach subscribers matched now, hence after the wait.
        for topic in prime:
            if topic != topic_names.TF_STATIC_TOPIC and topic in first:
                self.publishers[topic].publish(first[topic])
        self.primed = list(first)
        self._sleep(self.config.settle_s, abort)
        return time.monotonic() - start

    @staticmethod
    def _sleep(seconds: float, abort) -> None:
        end = time.monotonic() + seconds
        while True:
            reason = abort() if abort is not None else None
            if reason:
                raise ReplayError(reason)
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, _POLL_S))

    # ------------------------------------------------------------------------------ replay
    def play(self, abort: Optional[Callable[[], Optional[str]]] = None,
             progress: Optional[Callable[[int, int], None]] = None) -> ReplayResult:
        """Replay the whole bag (call :meth:`wait_until_ready` first); see the module docstring.

        It may be called again to replay the bag once more (``--loop``: the stamps then jump back
        to the bag's start); each result holds only its own run's frames and answers.

        Args:
            abort: as for :meth:`wait_until_ready`; checked while waiting.
            progress: called as ``progress(messages_sent, messages_total)`` every 100 messages.

        Raises:
            ReplayError: ``abort`` fired.
        """
        config = self.config
        groupers = {name: FrameCutter(g) for name, g in self.groups.items()}
        # play() may run again (a looped replay): answers of earlier runs are not this run's.
        with self._lock:
            base = {name: len(items) for name, items in self.answers.items()}
        published = {t: 0 for t in self.topics}
        timeouts = {name: 0 for name in self.groups}
        total = sum(self.message_counts.values())
        sent = 0
        first_stamp = last_stamp = None
        start_wall = time.monotonic()
        for msg in read_bag(self.bag, self.topics, decoder="raw"):
            if first_stamp is None:
                first_stamp = msg.stamp_ns
                if self.clock is not None:  # a second play() (--loop) jumps the clock back with the stamps
                    self.clock.jump_to(first_stamp, config.rate)
            last_stamp = msg.stamp_ns
            name = self._group_of.get(msg.topic)
            if config.rate > 0:
                self._sleep(start_wall + (msg.stamp_ns - first_stamp) * 1e-9 / config.rate - time.monotonic(), abort)
            elif name is not None and groupers[name].opens_new_frame(msg.topic, msg.stamp_ns):
                grouper = groupers[name]
                # The open frame (if any) closes with this message: it counts as sent now.
                needed = grouper.sent + (grouper.open is not None) - (config.max_outstanding - 1)
                if needed > 0 and not self._wait_answers({name: base[name] + needed}, config.ack_timeout_s, abort):
                    timeouts[name] += 1
                    self.node.get_logger().warning(
                        f"{name}: no answer on {self.groups[name].output_topic} for frame {needed - 1} within "
                        f"{config.ack_timeout_s} s; going on")
            if self.clock is not None:
                self.clock.advance_to(msg.stamp_ns)
            self.publishers[msg.topic].publish(msg.message)
            now = time.time_ns()
            if name is not None:
                groupers[name].add(msg.topic, msg.stamp_ns, now)
            published[msg.topic] += 1
            sent += 1
            if progress is not None and sent % 100 == 0:
                progress(sent, total)
        for grouper in groupers.values():
            grouper.close()
        if self.clock is not None:
            self.clock.hold()  # bag time ends with the bag, as when `ros2 bag play` exits
        drained = self._wait_answers({n: base[n] + g.sent for n, g in groupers.items()}, config.drain_timeout_s, abort)
        wall = time.monotonic() - start_wall
        with self._lock:
            answers = {name: list(items[base[name]:]) for name, items in self.answers.items()}
        return ReplayResult(
            frames={n: g.frames for n, g in groupers.items()},
            answers=answers,
            published=published,
            primed=list(self.primed),
            ack_timeouts=timeouts,
            drained=drained,
            wall_s=wall,
            bag_span_s=0.0 if first_stamp is None else (last_stamp - first_stamp) * 1e-9,
        )

    def destroy(self) -> None:
        """Stop the clock; remove the player's publishers and subscriptions from the node."""
        if self.clock is not None:
            self.clock.stop()
            self.node.destroy_publisher(self._clock_publisher)
            self.clock = None
        for pub in self.publishers.values():
            self.node.destroy_publisher(pub)
        for sub in self._subscriptions.values():
            self.node.destroy_subscription(sub)
        self.publishers, self._subscriptions = {}, {}


if __name__ == "__main__":
    import sys

    from x3kd_ros.bag.replay_cli import main

    sys.exit(main())
