"""test/process_watch.py: the session marker reaches a test's child processes, and only live ones count."""

from __future__ import annotations

import os
import subprocess
import sys


def _watch():
    """The module as test/conftest.py loaded it (under this name in sys.modules)."""
    return sys.modules["x3kd_test_process_watch"]


def test_a_child_process_carries_the_marker_until_it_ends(marked_process_report):
    watch = _watch()
    session = os.environ[watch.MARKER]
    assert session == str(os.getpid())  # conftest marked this pytest process's environment
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    unmarked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                env={k: v for k, v in os.environ.items() if k != watch.MARKER})
    try:
        pids = [p.pid for p in watch.marked_processes(session, exclude={os.getpid()})]
        assert child.pid in pids and unmarked.pid not in pids
        assert f"pid {child.pid} [" in marked_process_report()
    finally:
        for process in (child, unmarked):
            process.kill()
            process.wait()
    # Killed and reaped: gone from the list (a zombie would be left out as well).
    assert child.pid not in [p.pid for p in watch.marked_processes(session)]
    assert watch.describe([]) == "  (none)"
