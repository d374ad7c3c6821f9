"""The model's worker thread: bounded queue, newest wins, errors counted."""

from __future__ import annotations

import threading
import time

from x3kd_ros.nodes.worker import BoundedWorker


def test_bounded_worker_drops_the_oldest_and_survives_errors(logger):
    started, release = threading.Event(), threading.Event()
    done: list[int] = []

    def work(item):
        if item == 0:
            started.set()
            release.wait(10.0)  # hold the thread so that the queue fills
        if item == 3:
            raise ValueError("bad frame")
        done.append(item)

    worker = BoundedWorker(work, queue_size=2, name="test_worker", logger=logger)
    try:
        worker.submit(0)
        assert started.wait(5.0)
        for item in (1, 2, 3, 4):  # 1 and 2 wait, then 3 and 4 push them out
            worker.submit(item)
        release.set()
        deadline = time.monotonic() + 5.0
        while not worker.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert done == [0, 4]
    assert (worker.dropped, worker.errors) == (2, 1)
    assert any(level == "error" and "ValueError: bad frame" in text for level, text in logger.lines)
