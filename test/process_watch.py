"""Which processes the test session started are still running (Linux ``/proc``; elsewhere: none).

test/conftest.py puts :data:`MARKER` (= pytest's pid) into the environment at import, so every
process a test starts (a ROS node, a graph runner, a bash terminal of the README test, their
children, orphans included) inherits it, unless a test builds an environment from scratch. After
each test the session notes which marked processes are alive and which test they first appeared
after; at the end it lists those that outlived their tests (a leak eats the 2 cores the later tests
time their shutdowns on). Written here because psutil is not a dependency and the question is one
``/proc`` scan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MARKER = "X3KD_TEST_SESSION"


@dataclass(frozen=True)
class MarkedProcess:
    """A live process that carries this session's marker. cmdline: its argv joined by spaces."""

    pid: int
    cmdline: str
    state: str  # /proc/<pid>/stat state letter: R running, S sleeping, Z zombie, ...


def marked_processes(session: str, exclude: set[int] | None = None) -> list[MarkedProcess]:
    """Live processes (zombies left out) whose environment holds ``MARKER=session``."""
    needle = f"{MARKER}={session}".encode()
    exclude = exclude or set()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if needle not in environ.split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            state = stat[stat.rindex(")") + 2]
            if state == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):  # gone meanwhile, or not ours to read
            continue
        found.append(MarkedProcess(int(entry.name), cmdline, state))
    return sorted(found, key=lambda p: p.pid)


def sigint_state(pid: int) -> str:
    """How process ``pid`` treats SIGINT, from /proc/<pid>/status: 'ignored', 'blocked', 'caught' or
    'default' ('?' where unreadable). An ignored or blocked SIGINT is inherited across exec: a program
    started that way does not stop on Ctrl-C unless it installs its own handler and unblocks it."""
    bit = 1 << 1  # signal 2 (SIGINT) is bit 1 of the masks
    try:
        fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":\t" in line)
        masks = {k: int(fields[k].strip(), 16) for k in ("SigBlk", "SigIgn", "SigCgt")}
    except (OSError, KeyError, ValueError):
        return "?"
    for name, key in (("blocked", "SigBlk"), ("ignored", "SigIgn"), ("caught", "SigCgt")):
        if masks[key] & bit:
            return name
    return "default"


def describe(processes: list[MarkedProcess], width: int = 160) -> str:
    """One line per process: pid, state, how it treats SIGINT, command line (cut to ``width``)."""
    return "\n".join(f"  pid {p.pid} [{p.state}, SIGINT {sigint_state(p.pid)}] {p.cmdline[:width]}"
                     for p in processes) or "  (none)"


def load_average() -> str:
    """/proc/loadavg's first three figures, or '?' where there is none."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def marker_session() -> str:
    return os.environ.get(MARKER, "")
