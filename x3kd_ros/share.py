"""Where the files x3kd_ros ships (``config/ros``, ``config/dds``) are: the installed package's
``share/x3kd_ros`` (colcon / ament install), else this checkout (:data:`x3kd_core.paths.REPO_ROOT`).
The one place that asks the ament index."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from x3kd_core.paths import REPO_ROOT

__all__ = ["PACKAGE", "share_dir", "shipped_file"]

PACKAGE = "x3kd_ros"


def share_dir() -> Optional[Path]:
    """``share/x3kd_ros`` of the installed ament package; None in a plain checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # not installed as an ament package (plain checkout)
        return None


def shipped_file(relative: str | Path) -> Path:
    """``share/x3kd_ros/<relative>`` of the installed package when it is there, else the checkout's."""
    share = share_dir()
    if share is not None and (share / relative).is_file():
        return share / relative
    return REPO_ROOT / relative
