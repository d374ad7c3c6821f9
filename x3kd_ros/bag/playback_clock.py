"""The bag's time on ``/clock`` during a replay (see *Bag time on /clock* in :mod:`x3kd_ros.bag.replay`)."""

from __future__ import annotations

import threading
import time
from typing import Optional

__all__ = ["PlaybackClock"]


class PlaybackClock:
    """The bag's time, published on ``/clock`` (see *Bag time on /clock* in :mod:`x3kd_ros.bag.replay`).

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
