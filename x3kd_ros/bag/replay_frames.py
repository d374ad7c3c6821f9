"""What a replay is given and what it records: its settings (:class:`ReplayConfig`), the frame
groups and how a group's messages are cut into frames (:class:`FrameGroup`, :class:`FrameCutter`),
the frames sent and answers received (:class:`SentFrame`, :class:`Answer`, :class:`ReplayResult`);
see *Frames and flow control* and *Records* in :mod:`x3kd_ros.bag.replay`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

__all__ = ["ReplayError", "FrameGroup", "ReplayConfig", "SentFrame", "FrameCutter", "Answer", "ReplayResult"]


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
    """How :class:`BagPlayer` replays (see :mod:`x3kd_ros.bag.replay`).

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
            message (0 = no ``/clock``; see *Bag time on /clock* in :mod:`x3kd_ros.bag.replay`).
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


class FrameCutter:
    """Cuts one group's messages into frames (see :mod:`x3kd_ros.bag.replay`)."""

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
