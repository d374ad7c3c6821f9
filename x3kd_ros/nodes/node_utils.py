"""What every x3kd node shares: declared + validated parameters, QoS, diagnostics, extrinsics, main().

Thin rclpy glue only; the algorithms live in ``x3kd_core`` and the pure ``x3kd_ros`` modules.

Parameters
    A node lists its parameters as :class:`ParamSpec` (name, default, description, constraint text,
    check) and calls :func:`declare_parameters`. Every parameter is declared with a
    ``ParameterDescriptor`` (so ``ros2 param describe`` shows the description and the constraint)
    and read-only (a node does not rebuild its subscriptions at run time). All values are checked
    before the node builds anything; bad values raise :class:`ParameterError` listing *every*
    offending parameter with its value and what was expected, and ``main()`` exits with code 2.
    Doubles accept integers (``-p score_threshold:=0`` works; rclpy alone would refuse it).

QoS
    Sensor inputs default to the sensor-data profile (best effort, volatile, keep last 5): a best
    effort subscription matches both reliable and best-effort publishers, and a slow consumer
    drops old frames instead of stalling the publisher. Outputs default to reliable, keep last 10.
    ``qos.input.*`` / ``qos.output.*`` parameters change that per node, and rclpy's standard
    per-topic ``qos_overrides.<topic>.<publisher|subscription>.*`` parameters work on top (the
    nodes pass ``QoSOverridingOptions.with_default_policies()``). Every node logs the QoS each
    subscription actually got (:func:`describe_qos`).

Diagnostics
    :class:`RateMeter`, :class:`LatencyWindow`, :class:`ThrottledLog` and :func:`make_status`
    build the ``diagnostic_msgs/DiagnosticArray`` each node publishes on ``/diagnostics``;
    :class:`StreamWatch` names input streams that went silent. Timers that drive diagnostics and
    synchronizer timeouts run on the steady clock (:func:`steady_timer`), so they keep running
    with ``use_sim_time`` when ``/clock`` pauses or jumps back.

Extrinsics
    :class:`ExtrinsicsProvider` serves ``base_link <- sensor`` matrices from ``/tf_static``
    (``tf2_msgs/TFMessage``, when that Python package is importable) and/or a calibration YAML
    (:mod:`x3kd_ros.extrinsics`).
"""

from __future__ import annotations

import collections
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterUninitializedException,
)
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from x3kd_core.paths import REPO_ROOT, find_file
from x3kd_ros import topics
from x3kd_ros.extrinsics import ExtrinsicsError, StaticTransformTree, load_calibration_yaml
from x3kd_ros.share import share_dir

__all__ = [
    "ParameterError",
    "ParamSpec",
    "declare_parameters",
    "one_of",
    "in_range",
    "non_empty",
    "same_length",
    "check_device",
    "resolve_device",
    "resolve_config_file",
    "config_search_dirs",
    "RELIABILITY_CHOICES",
    "qos_profile",
    "qos_param_specs",
    "static_tf_qos",
    "describe_qos",
    "RateMeter",
    "StreamWatch",
    "DeliveryMeter",
    "silence_param_specs",
    "steady_timer",
    "LatencyWindow",
    "ThrottledLog",
    "BoundedWorker",
    "make_status",
    "diagnostics_values",
    "EXTRINSICS_SOURCES",
    "extrinsics_param_specs",
    "ExtrinsicsProvider",
    "tf_message_type",
    "spin_node",
    "spin_until",
]


class ParameterError(ValueError):
    """One or more node parameters are invalid; the text names each parameter, value and rule."""


# ----------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter.

    Fields:
        name: parameter name (dots group them: ``sync.slop_s``).
        default: default value; its Python type fixes the parameter type (bool, int, float, str,
            or a non-empty list of str / float / int).
        description: shown by ``ros2 param describe``; say the unit.
        constraints: the rule in words (``ParameterDescriptor.additional_constraints``).
        check: returns an error text for a bad value, None for a good one.
    """

    name: str
    default: Any
    description: str
    constraints: str = ""
    check: Optional[Callable[[Any], Optional[str]]] = None


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "integer"
    if isinstance(default, float):
        return "double"
    if isinstance(default, str):
        return "string"
    if isinstance(default, (list, tuple)) and default:
        return _kind(default[0]) + "_array"
    raise TypeError(f"unsupported parameter default {default!r} (use bool, int, float, str or a non-empty list)")


def _coerce(kind: str, value: Any) -> Any:
    """The value as the spec's Python type; raises ValueError with a readable reason."""
    if kind == "double":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if kind == "double_array":
        values = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else None
        if values is None or any(isinstance(v, (bool, str)) for v in values):
            raise ValueError(f"expected a list of numbers, got {value!r}")
        return [float(v) for v in values]
    if kind.endswith("_array"):
        return list(value)
    return value


def declare_parameters(node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare ``specs`` on ``node`` (read-only, with descriptors), read and check them.

    Returns:
        name -> value (doubles as float, arrays as lists).

    Raises:
        ParameterError: listing every parameter whose override has the wrong type or fails its check.
    """
    values: dict[str, Any] = {}
    errors: list[str] = []
    for spec in specs:
        kind = _kind(spec.default)
        descriptor = ParameterDescriptor(
            name=spec.name,
            description=spec.description,
            additional_constraints=spec.constraints,
            read_only=True,
            # Numbers are checked here instead, so that an integer given for a double is accepted.
            dynamic_typing=kind in ("double", "double_array"),
        )
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        try:
            node.declare_parameter(spec.name, default, descriptor)
            raw = node.get_parameter(spec.name).value
        except (InvalidParameterTypeException, InvalidParameterValueException, ParameterUninitializedException) as err:
            reason = str(err).split(": ")[0] if isinstance(err, InvalidParameterTypeException) else str(err)
            errors.append(f"{spec.name}: expected {kind.replace('_', ' ')} (default {spec.default!r}); {reason}")
            continue
        try:
            value = _coerce(kind, raw)
        except ValueError as err:
            errors.append(f"{spec.name} = {raw!r}: {err}")
            continue
        problem = spec.check(value) if spec.check is not None else None
        if problem:
            errors.append(f"{spec.name} = {value!r}: {problem}")
            continue
        values[spec.name] = value
    if errors:
        raise ParameterError(
            f"node {node.get_fully_qualified_name()}: invalid parameters:\n  - " + "\n  - ".join(errors)
        )
    return values


def one_of(*choices: str) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v in choices else f"must be one of {', '.join(repr(c) for c in choices)}"


def in_range(low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[Any], Optional[str]]:
    """Check ``low <(=) v <(=) high`` (None = unbounded), element-wise for lists."""

    def check(value):
        for v in value if isinstance(value, list) else [value]:
            if not math.isfinite(float(v)):
                return "must be finite"
            if low is not None and (v <= low if low_open else v < low):
                return f"must be {'>' if low_open else '>='} {low}"
            if high is not None and (v >= high if high_open else v > high):
                return f"must be {'<' if high_open else '<='} {high}"
        return None

    return check


def non_empty(value) -> Optional[str]:
    if isinstance(value, list):
        if not value:
            return "must not be empty"
        if any(not str(v).strip() for v in value):
            return "must not contain empty strings"
        if len(set(value)) != len(value):
            return "must not repeat an entry"
        return None
    return None if str(value).strip() else "must not be empty"


def same_length(other_name: str, expected: int) -> Callable[[Any], Optional[str]]:
    return lambda v: None if len(v) == expected else f"needs one entry per {other_name} ({expected}), got {len(v)}"


def check_device(text: str) -> Optional[str]:
    """Error text for a device string that cannot be used on this machine, else None."""
    try:
        resolve_device(text)
    except ParameterError as err:
        return str(err)
    return None


def resolve_device(text: str):
    """``"auto"`` -> CUDA when available else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Raises:
        ParameterError: an unknown device, or CUDA asked for where there is none.
    """
    import torch

    from x3kd_core.inference import default_device

    text = str(text).strip().lower()
    if text in ("", "auto"):
        return default_device()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ParameterError(f"unknown device {text!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ParameterError(f"device {text!r} is not supported (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(f"device {text!r} asked for, but CUDA is not available here (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ParameterError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def config_search_dirs() -> list[Path]:
    """Folders a relative config file name is looked up in: the working directory, the installed
    package's ``share/x3kd_ros/config/ros`` and this checkout's ``config/ros``."""
    share = share_dir()
    return [Path.cwd(), *([share / "config" / "ros"] if share is not None else []), REPO_ROOT / "config" / "ros"]


def resolve_config_file(path: str) -> Path:
    """An absolute path as is; a relative one in :func:`config_search_dirs` order (first hit).

    Raises:
        ParameterError: not found anywhere (the folders tried are named).
    """
    candidate = Path(os.path.expanduser(path))
    folders = [] if candidate.is_absolute() else config_search_dirs()
    found = find_file(candidate, folders)
    if found is not None:
        return found if candidate.is_absolute() else found.resolve()
    if candidate.is_absolute():
        raise ParameterError(f"file not found: {candidate}")
    raise ParameterError(f"file {path!r} not found (looked in {', '.join(str(f) for f in folders)})")


# ----------------------------------------------------------------------------------------------
# QoS

RELIABILITY_CHOICES = ("best_effort", "reliable")
_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def qos_profile(reliability: str, depth: int, transient_local: bool = False) -> QoSProfile:
    """Keep-last QoS with the given reliability ("best_effort" | "reliable") and depth."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=_RELIABILITY[reliability],
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE,
    )


def qos_param_specs(prefix: str, reliability: str, depth: int, what: str) -> list[ParamSpec]:
    """``<prefix>.reliability`` and ``<prefix>.depth`` parameters for the QoS of ``what``."""
    return [
        ParamSpec(f"{prefix}.reliability", reliability, f"QoS reliability of {what}",
                  "best_effort | reliable", one_of(*RELIABILITY_CHOICES)),
        ParamSpec(f"{prefix}.depth", int(depth), f"QoS keep-last depth of {what} (messages)",
                  "1..1000", in_range(1, 1000)),
    ]


def static_tf_qos() -> QoSProfile:
    """``/tf_static`` as tf2_ros' static listener reads it: reliable, transient local, keep last 100."""
    return qos_profile("reliable", 100, transient_local=True)


def describe_qos(profile: QoSProfile) -> str:
    """``"best_effort, volatile, keep_last(5)"``, for the log line every subscription gets."""

    def name(policy) -> str:
        return getattr(policy, "name", str(policy)).lower()

    history = name(profile.history)
    depth = f"({profile.depth})" if profile.history == HistoryPolicy.KEEP_LAST else ""
    return f"{name(profile.reliability)}, {name(profile.durability)}, {history}{depth}"


# ----------------------------------------------------------------------------------------------
# Diagnostics


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


def steady_timer(node, period_s: float, callback: Callable[[], Any]):
    """A node timer on the steady clock: it fires on wall time even with ``use_sim_time`` (a paused
    or restarted ``/clock`` must not stop timeouts and diagnostics)."""
    from rclpy.clock import Clock, ClockType

    return node.create_timer(period_s, callback, clock=Clock(clock_type=ClockType.STEADY_TIME))


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


class BoundedWorker:
    """Runs ``fn(item)`` on its own thread for submitted items, oldest first.

    At most ``queue_size`` items wait; submitting one more drops the oldest waiting item
    (``dropped``): a model slower than its input falls behind by at most ``queue_size`` frames
    instead of without bound. An exception in ``fn`` is logged (throttled) and counted
    (``errors``); the thread goes on with the next item.
    """

    def __init__(self, fn: Callable[[Any], Any], queue_size: int, name: str, logger) -> None:
        self._fn = fn
        self._queue: collections.deque = collections.deque()
        self._queue_size = int(queue_size)
        self._logger = logger
        self._log = ThrottledLog(logger)
        self._wake = threading.Condition()
        self._stopping = False
        self.dropped = 0
        self.errors = 0
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> None:
        with self._wake:
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.dropped += 1
                self._log.warn("busy", "model busy: dropped the oldest input waiting for it")
            self._queue.append(item)
            self._wake.notify()

    def idle(self) -> bool:
        """Nothing queued and nothing running."""
        with self._wake:
            return not self._queue and not self._busy

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait(timeout=0.5)
                if self._stopping:
                    return
                item = self._queue.popleft()
                self._busy = True
            try:
                self._fn(item)
            except Exception as err:  # a bad input or a model error must not end the node
                self.errors += 1
                self._logger.error(f"processing failed: {type(err).__name__}: {err}", throttle_duration_sec=5.0)
            finally:
                with self._wake:
                    self._busy = False

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop after the item in progress (waiting items are discarded); wait at most ``timeout_s``.

        A second call does not wait again (the node's ``destroy_node`` after :func:`spin_node` has
        already waited its bounded time).

        Returns:
            True when the thread has ended; False when it is still busy with its item.
        """
        with self._wake:
            again = self._stopping
            self._stopping = True
            self._queue.clear()
            self._wake.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread and not again:
            self._thread.join(timeout=timeout_s)
        return not self._thread.is_alive()

    def alive(self) -> bool:
        """The worker thread is still running (e.g. a model call that :meth:`stop` did not wait out)."""
        return self._thread.is_alive()


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


# ----------------------------------------------------------------------------------------------
# Extrinsics


def tf_message_type():
    """``tf2_msgs.msg.TFMessage``, or None where the tf2_msgs Python package is not installed
    (it is not on PyPI; a ROS 2 install provides it)."""
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError:
        return None
    return TFMessage


EXTRINSICS_SOURCES = ("auto", "tf_static", "file")


def extrinsics_param_specs(base_frame: str = topics.BASE_FRAME) -> list[ParamSpec]:
    """``base_frame``, ``extrinsics_source`` and ``calibration_file`` (read by :class:`ExtrinsicsProvider`)."""
    return [
        ParamSpec("base_frame", base_frame, "ego frame of the outputs (x forward, y left, z up)", check=non_empty),
        ParamSpec(
            "extrinsics_source", "auto",
            "where sensor -> base_frame transforms come from: tf_static (/tf_static, needs tf2_msgs), "
            "file (calibration_file), or auto (calibration_file if given, overridden per frame by "
            "/tf_static where tf2_msgs is importable)",
            "auto | tf_static | file", one_of(*EXTRINSICS_SOURCES)),
        ParamSpec(
            "calibration_file", "",
            "calibration YAML (format: x3kd_ros/extrinsics.py); relative names are looked up in the "
            "working directory, then in the package's config/ros folder. Empty: none"),
    ]


class ExtrinsicsProvider:
    """``base_frame <- sensor`` transforms for a node, from a calibration file and/or ``/tf_static``.

    Precedence: a frame connected to ``base_frame`` in the ``/tf_static`` tree uses that; otherwise
    the calibration file's transform (if any); otherwise :meth:`lookup` returns None (the caller
    counts it). Call :meth:`describe` for a log line.

    Raises (constructor):
        ParameterError: ``source`` cannot work here (``tf_static`` without tf2_msgs, ``file``
            without a file, ``auto`` with neither) or the calibration file is bad.
    """

    def __init__(self, node, base_frame: str, source: str, calibration_file: str) -> None:
        self.base_frame = base_frame
        self.source = source
        self._file_tree: Optional[StaticTransformTree] = None
        self._tf_tree = StaticTransformTree()
        self.calibration_path = ""
        self.tf_messages = 0
        self.tf_errors = 0
        self._log = ThrottledLog(node.get_logger())
        tf_type = tf_message_type()
        if source == "file" and not calibration_file:
            raise ParameterError("extrinsics_source is 'file' but calibration_file is empty")
        if source == "tf_static" and tf_type is None:
            raise ParameterError(
                "extrinsics_source is 'tf_static' but the tf2_msgs Python package is not installed here; "
                "set extrinsics_source:=file (or auto) and calibration_file:=<yaml>"
            )
        if source == "auto" and tf_type is None and not calibration_file:
            raise ParameterError(
                "no source of sensor extrinsics: tf2_msgs is not installed (no /tf_static) and "
                "calibration_file is empty; set calibration_file:=<yaml> (e.g. calibration_synthetic.yaml)"
            )
        if calibration_file and source in ("auto", "file"):
            try:
                path = resolve_config_file(calibration_file)
            except ParameterError as err:
                raise ParameterError(f"calibration_file: {err}") from None
            try:
                calibration = load_calibration_yaml(path)
            except ExtrinsicsError as err:
                raise ParameterError(f"calibration_file: {err}") from None
            if calibration.base_frame != base_frame:
                raise ParameterError(
                    f"calibration_file {path} gives transforms in {calibration.base_frame!r}, the node's "
                    f"base_frame is {base_frame!r}"
                )
            self._file_tree = calibration.tree()
            self.calibration_path = str(path)
        self.subscription = None
        if tf_type is not None and source in ("auto", "tf_static"):
            self.subscription = node.create_subscription(
                tf_type, topics.TF_STATIC_TOPIC, self.on_tf_static, static_tf_qos()
            )

    def on_tf_static(self, msg) -> None:
        """Add every transform of a ``tf2_msgs/TFMessage`` (bad ones are counted and logged)."""
        self.tf_messages += 1
        for transform in msg.transforms:
            try:
                self._tf_tree.add_transform_stamped(transform)
            except ExtrinsicsError as err:
                self.tf_errors += 1
                self._log.warn("tf_static", f"/tf_static: ignoring a transform: {err}")

    def lookup(self, frame: str) -> Optional[Any]:
        """(4, 4) matrix mapping ``frame`` points into ``base_frame``, or None if unknown."""
        matrix = self._tf_tree.lookup(self.base_frame, frame)
        if matrix is None and self._file_tree is not None:
            matrix = self._file_tree.lookup(self.base_frame, frame)
        return matrix

    def describe(self, frames: Iterable[str]) -> str:
        parts = []
        if self.calibration_path:
            parts.append(f"calibration file {self.calibration_path}")
        if self.subscription is not None:
            parts.append(f"{topics.TF_STATIC_TOPIC} ({describe_qos(static_tf_qos())}, overrides the file per frame)"
                         if self.calibration_path else f"{topics.TF_STATIC_TOPIC} ({describe_qos(static_tf_qos())})")
        missing = [f for f in frames if self.lookup(f) is None]
        known = f"; not yet known: {', '.join(missing)}" if missing else "; all frames known"
        return f"extrinsics {self.base_frame} <- sensor from " + " + ".join(parts) + known


# ----------------------------------------------------------------------------------------------
# main()


def spin_until(executor, condition: Callable[[], bool], deadline_s: float, step_s: float = 0.02) -> bool:
    """Spin ``executor`` (``spin_once`` with ``step_s`` timeouts) until ``condition()`` holds or
    ``deadline_s`` seconds pass; returns the final ``condition()`` (for tests and benchmarks that
    drive their own executor)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        executor.spin_once(timeout_sec=step_s)
    return condition()


#: How long a node's model thread may finish the item in progress at shutdown (s). ``ros2 launch``
#: escalates to SIGTERM 5 s after SIGINT; the rest of the clean-up needs well under a second.
SHUTDOWN_WORKER_WAIT_S = 2.0


def _install_stop_handlers() -> threading.Event:
    """SIGINT / SIGTERM handlers for a node process; returns the event they set.

    The first signal raises KeyboardInterrupt in the main thread (ending the spin, or a model load
    in progress); every later one does nothing. A Ctrl-C in the terminal of ``ros2 launch`` /
    ``ros2 run`` reaches every node twice (the terminal signals the whole process group, then launch
    signals each child): the second one must not interrupt the clean-up the first one started (it
    did: exit code -2 with a KeyboardInterrupt traceback). rclpy installs its own handlers on top at
    ``rclpy.init`` (they wake the executor and shut the context down) and chains to these; when
    rclpy shuts down it restores these, so they also cover the interpreter's exit.
    """
    import signal

    stopping = threading.Event()

    def on_stop_signal(signum, frame) -> None:
        if stopping.is_set():
            return
        stopping.set()
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_stop_signal)
    return stopping


def spin_node(factory: Callable[[], Any], args: Optional[Sequence[str]] = None) -> int:
    """``main()`` of every node: network rule, ``rclpy.init``, spin until Ctrl-C / shutdown, clean up.

    Shutdown: the first SIGINT or SIGTERM ends the spin; later ones are ignored while the node
    cleans up (:func:`_install_stop_handlers`); the model thread gets :data:`SHUTDOWN_WORKER_WAIT_S` to finish its
    item. If it is still inside a model call after that, the process ends with ``os._exit`` (after
    flushing its output) rather than tearing the interpreter down under a running torch call.

    Returns the process exit code: 0 after a normal stop (Ctrl-C, SIGTERM, shutdown), 2 for invalid
    parameters (the message names them), 1 for another start-up error.
    """
    from x3kd_ros.graph.environment import apply_network_rule

    apply_network_rule()  # keeps a ROS_DOMAIN_ID / ROS_LOG_DIR the caller chose
    import rclpy
    from rclpy.executors import ExternalShutdownException

    stopping = _install_stop_handlers()
    node = None
    code = 0
    try:
        rclpy.init(args=list(args) if args is not None else sys.argv)
        node = factory()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParameterError as err:
        rclpy.logging.get_logger("x3kd").fatal(str(err))
        code = 2
    finally:
        stopping.set()  # from here on SIGINT / SIGTERM do nothing: the clean-up is under way
        worker = getattr(node, "worker", None)
        if worker is not None:
            worker.stop(timeout_s=SHUTDOWN_WORKER_WAIT_S)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if worker is not None and worker.alive():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
