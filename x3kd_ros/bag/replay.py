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
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from x3kd_ros import topics as topic_names
from x3kd_ros.bag.io import bag_summary, read_bag

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
]

# How often waits re-check the abort condition (s).
_POLL_S = 0.05


def fastdds_profile_xml(segment_bytes: int, heartbeat_period_s: float = 0.02) -> str:
    """A Fast DDS XML profile (see *Transport* in the module docstring).

    Args:
        segment_bytes: size of the added shared-memory segment (bytes).
        heartbeat_period_s: reliable writers' heartbeat period (s).
    """
    sec = int(heartbeat_period_s)
    nanosec = int(round((heartbeat_period_s - sec) * 1e9))
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<!-- Written by x3kd_ros.bag.replay: a shared-memory segment large enough for one bag frame, and a
     short reliable-writer heartbeat. Transports and discovery are otherwise the RMW's. -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>x3kd_replay_shm</transport_id>
        <type>SHM</type>
        <segment_size>{int(segment_bytes)}</segment_size>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="x3kd_replay_participant" is_default_profile="true">
      <rtps>
        <userTransports><transport_id>x3kd_replay_shm</transport_id></userTransports>
        <useBuiltinTransports>true</useBuiltinTransports>
      </rtps>
    </participant>
    <data_writer profile_name="x3kd_replay_writer" is_default_profile="true">
      <times>
        <heartbeat_period><sec>{sec}</sec><nanosec>{nanosec}</nanosec></heartbeat_period>
      </times>
    </data_writer>
  </profiles>
</dds>
"""


def fastdds_profile_environment(path: str | Path, segment_bytes: int,
                                environ: Optional[dict] = None) -> tuple[dict[str, str], str]:
    """Write :func:`fastdds_profile_xml` to ``path`` and return the environment variables that load
    it, plus a note for logs/reports. Nothing is written (empty dict) when the RMW is not Fast DDS or
    the user already points Fast DDS at a profile file: theirs wins
    (:func:`x3kd_ros.graph.transport.user_transport_setting`, the rule the launch file follows too).
    The segment is sized to a bag here; the graph's nodes use the shipped
    ``config/dds/fastdds_large_images.xml`` (:mod:`x3kd_ros.graph.transport`), the same profile at 64 MiB.
    """
    from x3kd_ros.graph.transport import user_transport_setting  # the one rule (launch file, runner, replay)

    reason = user_transport_setting(environ)
    if reason is not None:
        return {}, f"not used: {reason}"
    path = Path(path)
    path.write_text(fastdds_profile_xml(segment_bytes))
    return {"FASTDDS_DEFAULT_PROFILES_FILE": str(path)}, f"{path} (shared-memory segment {segment_bytes >> 20} MiB)"


def shm_segment_bytes(bag: str | Path, min_bytes: int = 8 << 20, max_bytes: int = 512 << 20,
                      shm_dir: str = "/dev/shm") -> int:
    """Shared-memory segment for replaying ``bag``: 4 x the bytes of one message of every topic
    (the first of each), within [min_bytes, max_bytes] and at most a quarter of the free space
    in ``shm_dir`` (where the segment lives on Linux)."""
    import shutil

    summary = bag_summary(bag)
    sizes: dict[str, int] = {}
    for msg in read_bag(bag, decoder="raw"):
        sizes.setdefault(msg.topic, len(msg.message))
        if len(sizes) == len(summary.msgtypes):
            break
    wanted = min(max(4 * sum(sizes.values()), min_bytes), max_bytes)
    try:
        wanted = min(wanted, shutil.disk_usage(shm_dir).free // 4)
    except OSError:
        pass
    return int(max(wanted, 1 << 20))


class ReplayError(RuntimeError):
    """The replay cannot go on: the graph did not come up, or the abort check fired."""


@dataclass(frozen=True)
class FrameGroup:
    """Input topics that together make one model input, and the topic that answers each input.

    Fields:
        name: e.g. "detector", "lidar", "radar".
        input_topics: the topics whose messages form one frame (camera images, not CameraInfo).
        output_topic: where the model publishes one answer per frame.
        output_type: ROS type of the answers (``pkg/msg/Name``).
        span_s: largest stamp spread within one frame (s); keep it equal to the node's sync slop.
    """

    name: str
    input_topics: tuple[str, ...]
    output_topic: str
    output_type: str = "vision_msgs/msg/Detection3DArray"
    span_s: float = 0.06

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_topics", tuple(self.input_topics))
        if not self.input_topics:
            raise ValueError(f"frame group {self.name!r} has no input topic")
        if not self.span_s >= 0:
            raise ValueError(f"frame group {self.name!r}: span_s must be >= 0, got {self.span_s}")


@dataclass(frozen=True)
class ReplayConfig:
    """How :class:`BagPlayer` replays (see the module docstring).

    Fields:
        rate: 0 = as fast as the graph answers (flow control); > 0 = this factor x real time.
        max_outstanding: with rate 0, frames of one group that may wait for an answer at once.
        ack_timeout_s: with rate 0, longest wait for an answer before going on (s).
        ready_timeout_s: longest wait for subscribers / publishers to match (s).
        drain_timeout_s: longest wait for the last answers after the last message (s).
        settle_s: extra wait once everything visible has matched, and after priming (s).
        depth: keep-last depth of the publishers and of the answer subscriptions.
        topics: topics to replay (None = every topic of the bag).
        exclude_topics: topics not to replay.
        prime_topics: topics whose first message is sent before the timeline (None = every
            ``.../camera_info`` topic replayed); ``/tf_static`` is always primed.
        expected_subscribers: topic -> subscriptions to wait for (default 1 for every group input).
        clock_hz: publish the bag's time on ``/clock`` this many times a second, and before every
            message (0 = no ``/clock``; see *Bag time on /clock* in the module docstring).
    """

    rate: float = 0.0
    max_outstanding: int = 1
    ack_timeout_s: float = 30.0
    ready_timeout_s: float = 120.0
    drain_timeout_s: float = 30.0
    settle_s: float = 0.5
    depth: int = 100
    topics: Optional[tuple[str, ...]] = None
    exclude_topics: tuple[str, ...] = ()
    prime_topics: Optional[tuple[str, ...]] = None
    expected_subscribers: Optional[Mapping[str, int]] = None
    clock_hz: float = 0.0

    def __post_init__(self) -> None:
        if not self.rate >= 0:
            raise ValueError(f"rate must be >= 0 (0 = flow-controlled, as fast as answered), got {self.rate}")
        if self.max_outstanding < 1:
            raise ValueError(f"max_outstanding must be >= 1, got {self.max_outstanding}")
        for name in ("ack_timeout_s", "ready_timeout_s", "drain_timeout_s", "settle_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.depth <= 10000:
            raise ValueError(f"depth must be in 1..10000, got {self.depth}")
        if not 0 <= self.clock_hz <= 1000:
            raise ValueError(f"clock_hz must be in 0..1000 (0 = no /clock), got {self.clock_hz}")


@dataclass
class SentFrame:
    """One frame of a group as it was sent.

    Fields:
        group: the :class:`FrameGroup` name. index: 0, 1, ... within the group.
        stamps_ns: input topic -> bag stamp of its message (ns).
        first_sent_ns / last_sent_ns: wall time (``time.time_ns()``) right after its first / last
            message was published.
        complete: every input topic of the group is in it.
    """

    group: str
    index: int
    stamps_ns: dict[str, int] = field(default_factory=dict)
    first_sent_ns: int = 0
    last_sent_ns: int = 0
    complete: bool = False

    @property
    def first_stamp_ns(self) -> int:
        return min(self.stamps_ns.values())


@dataclass
class Answer:
    """One message received on a group's output topic.

    Fields:
        group: the :class:`FrameGroup` name.
        stamp_ns: the message's header stamp (ns).
        message: the deserialized message.
        source_ns: when its publisher handed it to rmw (CLOCK_REALTIME ns; 0 if rmw gave none).
        received_ns: when this process received it (CLOCK_REALTIME ns).
    """

    group: str
    stamp_ns: int
    message: Any
    source_ns: int
    received_ns: int


@dataclass
class ReplayResult:
    """What :meth:`BagPlayer.play` sent and received.

    Fields:
        frames / answers: group name -> frames sent / answers received, in order.
        published: topic -> messages published on the timeline (priming not included).
        primed: topics primed before the timeline.
        ack_timeouts: group name -> waits for an answer that ran out (rate 0 only).
        drained: every frame was answered before the drain timeout.
        wall_s: wall time of the timeline plus the drain (s).
        bag_span_s: bag time from the first to the last message replayed (s).
    """

    frames: dict[str, list[SentFrame]]
    answers: dict[str, list[Answer]]
    published: dict[str, int]
    primed: list[str]
    ack_timeouts: dict[str, int]
    drained: bool
    wall_s: float
    bag_span_s: float


def _message_class(msgtype: str):
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as err:
        raise ReplayError(f"cannot replay {msgtype}: its Python interface package '{package}' "
                          "is not importable") from err


class FrameCutter:
    """Cuts one group's messages into frames (see the module docstring)."""

    def __init__(self, group: FrameGroup) -> None:
        self.group = group
        self.frames: list[SentFrame] = []
        self.open: Optional[SentFrame] = None
        self._span_ns = int(round(group.span_s * 1e9))

    def opens_new_frame(self, topic: str, stamp_ns: int) -> bool:
        """Would a message of ``topic`` at ``stamp_ns`` start a new frame?"""
        if self.open is None:
            return True
        return topic in self.open.stamps_ns or stamp_ns - self.open.first_stamp_ns > self._span_ns

    def add(self, topic: str, stamp_ns: int, sent_ns: int) -> None:
        if self.opens_new_frame(topic, stamp_ns):
            self.close()
            self.open = SentFrame(self.group.name, len(self.frames), first_sent_ns=sent_ns)
        self.open.stamps_ns[topic] = stamp_ns
        self.open.last_sent_ns = sent_ns
        if len(self.open.stamps_ns) == len(self.group.input_topics):
            self.open.complete = True
            self.close()

    def close(self) -> None:
        if self.open is not None:
            self.frames.append(self.open)
            self.open = None

    @property
    def sent(self) -> int:
        """Frames closed so far (an open frame is not counted: its answer cannot come yet)."""
        return len(self.frames)


class PlaybackClock:
    """The bag's time, published on ``/clock`` (see *Bag time on /clock* in the module docstring).

    The time is ``base_ns`` plus, when ``rate > 0``, the wall time since it was set times ``rate``.
    A thread publishes it every ``1 / hz`` s until :meth:`stop`; :meth:`jump_to` and
    :meth:`advance_to` publish at once.

    Args:
        publisher: an rclpy publisher of ``rosgraph_msgs/msg/Clock``.
        hz: periodic publishing rate (Hz, > 0).
    """

    def __init__(self, publisher, hz: float) -> None:
        if not hz > 0:
            raise ValueError(f"clock rate must be > 0 Hz, got {hz}")
        from rosgraph_msgs.msg import Clock

        self._message = Clock
        self.publisher = publisher
        self.period_s = 1.0 / hz
        self._lock = threading.Lock()
        self._base_ns: Optional[int] = None
        self._base_mono_ns = 0
        self._rate = 0.0
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="x3kd_replay_clock", daemon=True)
        self._thread.start()

    def now_ns(self) -> Optional[int]:
        """The current bag time (ns), or None before the first :meth:`jump_to`."""
        with self._lock:
            return self._now_locked()

    def _now_locked(self) -> Optional[int]:
        if self._base_ns is None:
            return None
        if self._rate <= 0:
            return self._base_ns
        return self._base_ns + int((time.monotonic_ns() - self._base_mono_ns) * self._rate)

    def _publish_locked(self) -> None:
        now = self._now_locked()
        if now is None:
            return
        msg = self._message()
        msg.clock.sec, msg.clock.nanosec = divmod(now, 1_000_000_000)
        self.publisher.publish(msg)
        self.published += 1

    def jump_to(self, stamp_ns: int, rate: float = 0.0) -> None:
        """Set the time to ``stamp_ns`` (also backwards), running at ``rate`` x real time (0 = standing)."""
        with self._lock:
            self._base_ns, self._base_mono_ns, self._rate = int(stamp_ns), time.monotonic_ns(), float(rate)
            self._publish_locked()

    def advance_to(self, stamp_ns: int) -> None:
        """Move the time forward to ``stamp_ns`` if it is behind (never backwards), and publish it."""
        with self._lock:
            now = self._now_locked()
            if now is None or stamp_ns > now:
                self._base_ns, self._base_mono_ns = int(stamp_ns), time.monotonic_ns()
                self._publish_locked()

    def hold(self) -> None:
        """Stop the time where it is now (the end of a playback)."""
        with self._lock:
            now = self._now_locked()
            if now is not None:
                self._base_ns, self._base_mono_ns, self._rate = now, time.monotonic_ns(), 0.0
                self._publish_locked()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            with self._lock:
                self._publish_locked()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


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


# ---------------------------------------------------------------------------------------------- CLI


def _parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m x3kd_ros.bag.replay",
        description="Replay a rosbag2 folder into a running ROS 2 graph (stands in for `ros2 bag play`, "
                    "which needs rosbag2_py): waits until the graph has subscribed, then publishes the "
                    "recorded messages, flow-controlled on the detector's answers (--rate 0) or at a fixed "
                    "rate. Prints one JSON line per loop: frames sent, answers received, their stamps.")
    parser.add_argument("bag", help="rosbag2 folder (mcap or sqlite3)")
    parser.add_argument("--loop", type=int, default=1, metavar="N",
                        help="play the bag N times in a row (stamps jump back to the start each time, as "
                             "`ros2 bag play --loop`)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="0: as fast as the detector answers (needs --answer-topic); R > 0: R x real time")
    parser.add_argument("--answer-topic", default=topic_names.DETECTIONS_TOPIC,
                        help="the detector's output (one answer per camera frame); '' = do not wait for answers")
    parser.add_argument("--span-s", type=float, default=0.06, help="stamp spread of one camera frame (s)")
    parser.add_argument("--no-prime", action="store_true",
                        help="send CameraInfo only in its turn in the bag (as `ros2 bag play`), not before")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="TOPIC", help="topics not to replay")
    parser.add_argument("--ready-timeout-s", type=float, default=120.0)
    parser.add_argument("--ack-timeout-s", type=float, default=30.0)
    parser.add_argument("--drain-timeout-s", type=float, default=30.0)
    parser.add_argument("--settle-s", type=float, default=0.5)
    parser.add_argument("--clock", type=float, nargs="?", const=40.0, default=0.0, metavar="HZ",
                        help="publish the bag's time on /clock at HZ (default 40) and before every message, "
                             "as `ros2 bag play --clock`, for nodes started with use_sim_time:=true")
    parser.add_argument("--no-fastdds-profile", action="store_true",
                        help="do not load the large shared-memory Fast DDS profile (see the module docstring)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m x3kd_ros.bag.replay BAG [--loop N] [--rate R] ...`` (see :func:`_parser`)."""
    import json
    import sys
    import tempfile

    options = _parser().parse_args(argv)
    if options.loop < 1:
        print("replay: --loop must be >= 1", file=sys.stderr)
        return 2
    if not 0 <= options.clock <= 1000:
        print(f"replay: --clock HZ must be in 0..1000, got {options.clock}", file=sys.stderr)
        return 2
    if options.rate <= 0 and not options.answer_topic:
        print("replay: --rate 0 (flow control) needs --answer-topic", file=sys.stderr)
        return 2
    from x3kd_ros.graph.environment import apply_network_rule

    apply_network_rule()
    bag = Path(options.bag)
    try:
        summary = bag_summary(bag)
    except Exception as err:  # noqa: BLE001 - any unreadable bag is a usage error here
        print(f"replay: cannot read {bag}: {err}", file=sys.stderr)
        return 2
    if not options.no_fastdds_profile:
        env, _ = fastdds_profile_environment(Path(tempfile.gettempdir()) / f"x3kd_replay_{os.getpid()}.xml",
                                             shm_segment_bytes(bag))
        os.environ.update(env)  # before the first participant of this process

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    images = sorted(t for t, kind in summary.msgtypes.items()
                    if kind in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage") and t not in options.exclude)
    groups = []
    if options.answer_topic:
        if not images:
            print(f"replay: {bag} has no image topic to count frames on", file=sys.stderr)
            return 2
        groups = [FrameGroup("detector", tuple(images), options.answer_topic, span_s=options.span_s)]
    config = ReplayConfig(rate=options.rate, ack_timeout_s=options.ack_timeout_s,
                          ready_timeout_s=options.ready_timeout_s, drain_timeout_s=options.drain_timeout_s,
                          settle_s=options.settle_s, exclude_topics=tuple(options.exclude),
                          prime_topics=() if options.no_prime else None, clock_hz=options.clock)
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("x3kd_replay", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set() and context.ok():
            executor.spin_once(timeout_sec=_POLL_S)

    thread = threading.Thread(target=spin, name="x3kd_replay_spin", daemon=True)
    thread.start()
    player = None
    code = 0
    try:
        player = BagPlayer(node, bag, groups, config)
        waited = player.wait_until_ready()
        print(f"replay: graph ready after {waited:.1f} s; playing {bag} {options.loop} time(s)", file=sys.stderr)
        for loop in range(options.loop):
            result = player.play()
            line = {"loop": loop, "published": sum(result.published.values()), "wall_s": round(result.wall_s, 3),
                    "drained": result.drained}
            if groups:
                frames = result.frames["detector"]
                line.update({"frames": len(frames), "complete_frames": sum(f.complete for f in frames),
                             "answers": len(result.answers["detector"]),
                             "answer_stamps_ns": [a.stamp_ns for a in result.answers["detector"]],
                             "frame_stamps_ns": [f.first_stamp_ns for f in frames],
                             "ack_timeouts": result.ack_timeouts["detector"]})
            print(json.dumps(line), flush=True)
    except KeyboardInterrupt:
        code = 130
    except (ReplayError, ValueError) as err:
        print(f"replay: {err}", file=sys.stderr)
        code = 1
    finally:
        stop.set()
        thread.join(timeout=5.0)
        if player is not None:
            player.destroy()
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    return code


if __name__ == "__main__":
    import sys

    sys.exit(main())
