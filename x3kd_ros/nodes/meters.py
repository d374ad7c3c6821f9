"""What the nodes measure and report on ``/diagnostics``.

:class:`RateMeter`, :class:`LatencyWindow`, :class:`ThrottledLog` and :func:`make_status` build
the ``diagnostic_msgs/DiagnosticArray`` each node publishes; :class:`StreamWatch` names input
streams that went silent and :class:`DeliveryMeter` reads transport loss from gaps in a stream's
stamps.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any, Callable, Mapping, Optional, Sequence
import numpy as np

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from x3kd_ros.nodes.params import ParamSpec, in_range

__all__ = [
    "RateMeter",
    "StreamWatch",
    "DeliveryMeter",
    "silence_param_specs",
    "LatencyWindow",
    "ThrottledLog",
    "make_status",
    "diagnostics_values",
]


class RateMeter:
    """Event rate (Hz) over a sliding window of monotonic times (ns)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_ns = int(window_s * 1e9)
        self._times: collections.deque[int] = collections.deque()
        self.count = 0

    def tick(self, now_ns: int) -> None:
        self._times.append(int(now_ns))
        self.count += 1
        self._trim(now_ns)

    def _trim(self, now_ns: int) -> None:
        while self._times and self._times[0] < now_ns - self.window_ns:
            self._times.popleft()

    def rate_hz(self, now_ns: int) -> float:
        """(events - 1) / (their time span) within the window; 0 with fewer than two events."""
        self._trim(now_ns)
        if len(self._times) < 2 or self._times[-1] == self._times[0]:
            return 0.0
        return (len(self._times) - 1) * 1e9 / (self._times[-1] - self._times[0])


class StreamWatch:
    """Which input streams went silent: no message for longer than ``periods`` x the expected period.

    The expected period is the median over streams of each stream's median interval between its
    last messages (so a 12 Hz rig expects 83 ms, a 2 Hz bag 0.5 s); it is kept when every stream
    stops. The silence threshold is ``max(periods x period, min_silent_s)``. Until some stream has
    delivered two messages nothing is reported (the nodes report STALE then). Times are monotonic ns.
    """

    def __init__(self, streams: Sequence[str], periods: float = 5.0, min_silent_s: float = 1.0,
                 now_ns: Optional[int] = None) -> None:
        self.streams = list(streams)
        self.periods = float(periods)
        self.min_silent_ns = int(min_silent_s * 1e9)
        self._start_ns = time.monotonic_ns() if now_ns is None else int(now_ns)
        self._last: dict[str, Optional[int]] = {s: None for s in self.streams}
        self._intervals: dict[str, collections.deque] = {s: collections.deque(maxlen=10) for s in self.streams}

    def tick(self, stream: str, now_ns: int) -> None:
        last = self._last[stream]
        if last is not None and now_ns > last:
            self._intervals[stream].append(int(now_ns) - last)
        self._last[stream] = int(now_ns)

    def period_ns(self) -> Optional[int]:
        """The expected period (ns), or None before any stream has delivered two messages."""
        per_stream = [sorted(d)[len(d) // 2] for d in self._intervals.values() if d]
        if not per_stream:
            return None
        return sorted(per_stream)[len(per_stream) // 2]

    def threshold_ns(self) -> Optional[int]:
        period = self.period_ns()
        return None if period is None else max(int(self.periods * period), self.min_silent_ns)

    def silent(self, now_ns: int) -> dict[str, float]:
        """stream -> seconds since its last message (since start if none), for the silent ones."""
        threshold = self.threshold_ns()
        if threshold is None:
            return {}
        out = {}
        for stream in self.streams:
            since = self._last[stream] if self._last[stream] is not None else self._start_ns
            if now_ns - since > threshold:
                out[stream] = (now_ns - since) / 1e9
        return out

    def seconds_since(self, stream: str, now_ns: int) -> float:
        """Seconds since ``stream``'s last message (nan if none yet)."""
        last = self._last[stream]
        return math.nan if last is None else (now_ns - last) / 1e9

    def describe(self, silent: Mapping[str, float], what: str = "input") -> str:
        """``"CAM_BACK silent for 3.2 s"`` / ``"all 6 cameras silent for 4.0 s"`` (threshold in words)."""
        period, threshold = self.period_ns(), self.threshold_ns()
        rule = f"> {threshold / 1e9:.1f} s = max({self.periods:g} periods of {period / 1e9:.2f} s, " \
               f"{self.min_silent_ns / 1e9:g} s)"
        if len(silent) == len(self.streams) and len(self.streams) > 1:
            return f"all {len(self.streams)} {what}s silent for {min(silent.values()):.1f} s ({rule})"
        return ", ".join(f"{name} silent for {secs:.1f} s" for name, secs in silent.items()) + f" ({rule})"


class DeliveryMeter:
    """How many of a stream's messages arrive, judged from the gaps in the stamps that do arrive.

    A camera stamps its frames at a fixed period, so a transport that loses messages shows as gaps
    in the received stamp sequence: received 0.0, 0.083, 0.333 s -> 2 of 4 frames lost. Over the
    stamps of the last ``window_s`` (stamp time), the camera period is estimated from the gaps
    themselves (the shortest gap, refined as total time / frames), each gap counts
    ``round(gap / period)`` frames, and ``fraction() = gaps received / frames expected``.

    What does not count as loss: a gap longer than ``max(silent_after_periods x period,
    silent_after_min_s)`` (a camera that stopped, a paused bag: :class:`StreamWatch` reports that
    as silence), repeated or out-of-order stamps (sorted, duplicates ignored), and a jump back by
    more than ``jump_s`` (a looped bag, a simulator reset: the history starts afresh).

    Limits: a loss with a regular pattern (exactly every other frame) looks like a camera at half
    the rate; transport loss is irregular, and a few consecutive frames in the window give the
    period away. Times are integer ns.
    """

    def __init__(self, window_s: float = 5.0, min_frames: int = 10, silent_after_periods: float = 5.0,
                 silent_after_min_s: float = 1.0, jump_s: float = 0.5) -> None:
        self.window_ns = int(window_s * 1e9)
        self.min_frames = int(min_frames)
        self.silent_after_periods = float(silent_after_periods)
        self.silent_after_min_ns = int(silent_after_min_s * 1e9)
        self.jump_ns = int(jump_s * 1e9)
        self._stamps: list[int] = []
        self.resets = 0

    def tick(self, stamp_ns: int) -> None:
        """A message stamped ``stamp_ns`` arrived."""
        import bisect

        stamp_ns = int(stamp_ns)
        stamps = self._stamps
        if stamps and stamps[-1] - stamp_ns > self.jump_ns:
            stamps.clear()
            self.resets += 1
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return  # a repeated stamp
        stamps.insert(i, stamp_ns)
        cut = bisect.bisect_left(stamps, stamps[-1] - self.window_ns)
        if cut:
            del stamps[:cut]

    def counts(self) -> tuple[int, int, float]:
        """(frames received after the first, frames expected, period s) over the window; the period
        is nan and both counts 0 while there is no gap to judge."""
        gaps = [b - a for a, b in zip(self._stamps, self._stamps[1:])]
        if not gaps:
            return 0, 0, math.nan
        period = float(min(gaps))
        silent_ns = max(self.silent_after_periods * period, self.silent_after_min_ns)
        gaps = [g for g in gaps if g < silent_ns]
        if not gaps:
            return 0, 0, math.nan
        for _ in range(2):  # refine: a jittery shortest gap would bias the frame counts
            period = sum(gaps) / sum(max(1, round(g / period)) for g in gaps)
        expected = sum(max(1, round(g / period)) for g in gaps)
        return len(gaps), int(expected), period / 1e9

    def fraction(self) -> float:
        """Received / expected frames over the window; nan until ``min_frames`` are expected."""
        received, expected, _ = self.counts()
        return received / expected if expected >= self.min_frames else math.nan


def silence_param_specs(what: str) -> list[ParamSpec]:
    """``silent_after_periods`` / ``silent_after_min_s``: when an input counts as silent (StreamWatch)."""
    return [
        ParamSpec("silent_after_periods", 5.0, f"a {what} without a message for this many expected periods is "
                  "reported by name in /diagnostics (WARN; OK again when it is back)", "> 0",
                  in_range(0.0, low_open=True)),
        ParamSpec("silent_after_min_s", 1.0, f"a {what} counts as silent only after at least this long (s)", ">= 0",
                  in_range(0.0)),
    ]


class LatencyWindow:
    """Last ``size`` latencies (ms, or any per-frame figure): last, mean, max and the percentiles
    p50 / p90 / p99 (linear interpolation between the values, numpy's default)."""

    def __init__(self, size: int = 100) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self._values.append(float(value_ms))

    def __len__(self) -> int:
        return len(self._values)

    def summary(self) -> dict[str, float]:
        if not self._values:
            return {"last": math.nan, "mean": math.nan, "max": math.nan, "p50": math.nan, "p90": math.nan,
                    "p99": math.nan}
        p50, p90, p99 = (float(v) for v in np.percentile(np.asarray(self._values), (50, 90, 99)))
        return {"last": self._values[-1], "mean": sum(self._values) / len(self._values), "max": max(self._values),
                "p50": p50, "p90": p90, "p99": p99}


class ThrottledLog:
    """At most one log line per key and period; the line says how many were suppressed."""

    def __init__(self, logger, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._period_s = float(period_s)
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter = collections.Counter()

    def warn(self, key: str, text: str) -> bool:
        """Log ``text`` as a warning unless ``key`` was logged less than a period ago; True if logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._period_s:
            self._suppressed[key] += 1
            return False
        skipped = self._suppressed.pop(key, 0)
        suffix = f" (+{skipped} more like this in the last {now - last:.0f} s)" if skipped and last is not None else ""
        self._logger.warning(text + suffix)
        self._last[key] = now
        return True


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def make_status(name: str, hardware_id: str, level: bytes, message: str, values: Mapping[str, Any]) -> DiagnosticStatus:
    """A DiagnosticStatus with ``values`` as key/value strings (floats with 3 decimals)."""
    status = DiagnosticStatus()
    status.name = name
    status.hardware_id = hardware_id
    status.level = level
    status.message = message
    status.values = [KeyValue(key=str(k), value=_format_value(v)) for k, v in values.items()]
    return status


def diagnostics_values(status: DiagnosticStatus) -> dict[str, str]:
    """key -> value of a DiagnosticStatus (for tests and tools reading /diagnostics)."""
    return {kv.key: kv.value for kv in status.values}
