"""The project's ROS network rule, in one place for tests, nodes, demos and the CLI.

DDS discovery must never leave the machine: every process that creates rclpy nodes calls
:func:`apply_network_rule` before ``rclpy.init()``. It sets

- ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (the current ROS 2 switch) and
  ``ROS_LOCALHOST_ONLY=1`` (the older one, still honoured by Humble-era peers),
- ``ROS_DOMAIN_ID``: a separate domain keeps concurrent runs (parallel test sessions, a demo
  beside a test) from discovering each other's topics,
- ``ROS_LOG_DIR``: rcl's log files go to a project folder instead of ``~/.ros/log``.

Child processes (nodes started with ``subprocess``) inherit the variables, so they land in the
same domain. This module does not import rclpy: setting the variables must happen before rcl
reads them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from x3kd_core.paths import REPO_ROOT

# Domain ids 1..101: 0 is the ROS default that other software on the host uses, and on Linux
# ids above 101 map DDS ports into the ephemeral port range, where they can clash.
_MIN_DOMAIN_ID = 1
_MAX_DOMAIN_ID = 101


def pid_domain_id(pid: int | None = None) -> int:
    """A ROS domain id in [1, 101] derived from a process id (default: this process).

    Concurrent processes get different ids unless their pids are congruent mod 101.
    """
    pid = os.getpid() if pid is None else pid
    return _MIN_DOMAIN_ID + pid % (_MAX_DOMAIN_ID - _MIN_DOMAIN_ID + 1)


def default_log_dir() -> Path:
    """``<repo>/build/ros_log`` for a source checkout (build/ is git-ignored), else a temp folder."""
    if (REPO_ROOT / "setup.py").is_file() and (REPO_ROOT / "x3kd_ros").is_dir():
        return REPO_ROOT / "build" / "ros_log"
    import tempfile

    return Path(tempfile.gettempdir()) / "x3kd_ros_log"


def apply_network_rule(domain_id: int | None = None, log_dir: str | None = None) -> dict:
    """Set the ROS network environment of this process (and its future children).

    Args:
        domain_id: ROS_DOMAIN_ID to use. ``None`` keeps a valid ROS_DOMAIN_ID already in the
            environment (so nodes join the domain the user chose for e.g. rviz), otherwise
            derives one from the pid with :func:`pid_domain_id`.
        log_dir: folder for rcl log files, created if missing. ``None`` keeps an existing
            ROS_LOG_DIR, otherwise uses :func:`default_log_dir`.

    Returns:
        ``{variable name: value}`` of the four variables as now set.

    Raises:
        ValueError: ``domain_id`` outside [0, 232] (the range DDS accepts).
        RuntimeError: rclpy is already initialised, so the settings would not take effect.
    """
    rclpy = sys.modules.get("rclpy")
    if rclpy is not None and rclpy.ok():
        raise RuntimeError(
            "apply_network_rule() must run before rclpy.init(): the running context already "
            "read ROS_DOMAIN_ID and the discovery settings"
        )

    if domain_id is None:
        existing = os.environ.get("ROS_DOMAIN_ID", "")
        domain_id = int(existing) if existing.isdigit() and int(existing) <= 232 else pid_domain_id()
    if not 0 <= int(domain_id) <= 232:
        raise ValueError(f"ROS_DOMAIN_ID must be in [0, 232], got {domain_id}")

    if log_dir is None:
        log_dir = os.environ.get("ROS_LOG_DIR") or str(default_log_dir())
    Path(log_dir).mkdir(parents=True, exist_ok=True)

    values = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOCALHOST_ONLY": "1",
        "ROS_DOMAIN_ID": str(int(domain_id)),
        "ROS_LOG_DIR": str(log_dir),
    }
    os.environ.update(values)
    # An explicit peer list would make DDS contact those hosts despite LOCALHOST.
    os.environ.pop("ROS_STATIC_PEERS", None)
    return values
