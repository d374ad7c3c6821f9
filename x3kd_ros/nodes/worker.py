"""The model's worker thread: a bounded queue where the newest input wins (:class:`BoundedWorker`)."""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable

from x3kd_ros.nodes.meters import ThrottledLog

__all__ = ["BoundedWorker"]


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
