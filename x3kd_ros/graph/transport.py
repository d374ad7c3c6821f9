"""The DDS transport profile for big images: which file, and when the project applies it. One place.

Fast DDS (the default RMW) moves data between processes on one host through a shared-memory
segment owned by the *publishing* participant, 512 KiB by default; 1600 x 900 rgb8 images (4.3 MB
each, six per frame) do not fit, and most of them are lost (best effort) or resent a second later
(reliable). The package ships a profile with a 64 MiB segment and a 20 ms reliable heartbeat,
``config/dds/fastdds_large_images.xml`` (:func:`shipped_profile_path`; comments in the file).

The rule (:func:`profile_environment`), used by ``detector.launch.py`` (an environment action
around the nodes it starts), ``x3kd_run_graph``, the bag replayer and the rate bench:

* ``auto`` (the default): point ``FASTDDS_DEFAULT_PROFILES_FILE`` at the shipped file, **unless**
  the RMW is not Fast DDS (``RMW_IMPLEMENTATION`` names another one: its own configuration
  applies, e.g. ``CYCLONEDDS_URI``) or the user already points Fast DDS at a profile of their own
  (``FASTDDS_DEFAULT_PROFILES_FILE`` or the older ``FASTRTPS_DEFAULT_PROFILES_FILE`` is set):
  theirs wins, and nothing is set;
* ``off``: set nothing;
* a path: that XML file (it must exist), whatever the environment says: asked for by name.

It is the publisher's segment that counts (measured: a profile loaded only by the subscribing
node changes nothing), so a camera driver in another process must load the file too; the
README's "Big images" section says how. This module imports no ROS package: the variable must be
set before the first DDS participant of a process exists.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping, Optional

from x3kd_ros.share import shipped_file

__all__ = [
    "PROFILE_VARIABLES",
    "SHIPPED_PROFILE",
    "PROFILE_SEGMENT_BYTES",
    "PROFILE_CHOICES",
    "shipped_profile_path",
    "user_transport_setting",
    "profile_environment",
]

#: Variables through which Fast DDS loads an XML profile at start-up (new name first).
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
#: The shipped profile, relative to the package share folder (or this checkout).
SHIPPED_PROFILE = Path("config") / "dds" / "fastdds_large_images.xml"
#: Its shared-memory segment (bytes): a frame of six 1600 x 900 rgb8 images plus a cloud, twice.
PROFILE_SEGMENT_BYTES = 64 << 20
#: Named values of the ``fastdds_profile`` launch argument (anything else is a path).
PROFILE_CHOICES = ("auto", "off")


def shipped_profile_path() -> Path:
    """``share/x3kd_ros/config/dds/fastdds_large_images.xml`` of the installed package, else this
    checkout's ``config/dds/...``."""
    return shipped_file(SHIPPED_PROFILE)


def user_transport_setting(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Why the project must not apply its own Fast DDS profile here, or None when it may.

    Another RMW than Fast DDS, or a profile file the user already chose (either variable of
    :data:`PROFILE_VARIABLES`). The text is for logs ("not used: ...").
    """
    environ = os.environ if environ is None else environ
    rmw = environ.get("RMW_IMPLEMENTATION", "") or "rmw_fastrtps_cpp"
    if not rmw.startswith("rmw_fastrtps"):
        return f"{rmw} is the RMW (configure it yourself, e.g. CYCLONEDDS_URI; README: Big images)"
    for var in PROFILE_VARIABLES:
        if environ.get(var):
            return f"{var} is already set ({environ[var]}): that profile is used"
    return None


def _shm_note(segment_bytes: int, shm_dir: str = "/dev/shm") -> str:
    """A warning when the shared-memory file system is too small for a few such segments."""
    try:
        free = shutil.disk_usage(shm_dir).free
    except OSError:
        return ""
    if free < 4 * segment_bytes:
        return (f"; WARNING: {shm_dir} has only {free >> 20} MiB free, {segment_bytes >> 20} MiB per process "
                "may be needed (containers: a larger shm size)")
    return ""


def profile_environment(choice: str = "auto",
                        environ: Optional[Mapping[str, str]] = None) -> tuple[dict[str, str], str]:
    """Variables to add to a process environment for the transport profile, and a note for logs.

    Args:
        choice: ``auto``, ``off`` or a path to a Fast DDS XML profile (see the module docstring).
        environ: the environment the processes would get (default ``os.environ``); not modified.

    Returns:
        ``({"FASTDDS_DEFAULT_PROFILES_FILE": path}, note)``, or ``({}, note)`` when nothing is set.

    Raises:
        ValueError: ``choice`` names a file that does not exist.
    """
    choice = (choice or "auto").strip()
    if choice == "off":
        return {}, "off (fastdds_profile:=off): the RMW's defaults"
    if choice != "auto":
        path = Path(os.path.expanduser(choice)).resolve()
        if not path.is_file():
            raise ValueError(f"fastdds_profile: file not found: {path} (use auto, off or a path to an XML profile)")
        return {PROFILE_VARIABLES[0]: str(path)}, f"{path} (given by fastdds_profile)"
    reason = user_transport_setting(environ)
    if reason is not None:
        return {}, f"not used: {reason}"
    path, where = shipped_profile_path(), ""
    if not path.is_file():
        # An install without the package's config/dds folder (a colcon build whose setup.py data
        # files miss *.xml): the same profile, written by its generator (a test keeps them equal).
        import tempfile

        from x3kd_ros.bag.replay import fastdds_profile_xml

        path = Path(tempfile.gettempdir()) / f"x3kd_fastdds_large_images_{os.getuid()}.xml"
        path.write_text(fastdds_profile_xml(PROFILE_SEGMENT_BYTES))
        where = ", written here: the shipped file is not installed"
    return ({PROFILE_VARIABLES[0]: str(path)},
            f"{path} (shared-memory segment {PROFILE_SEGMENT_BYTES >> 20} MiB{where}){_shm_note(PROFILE_SEGMENT_BYTES)}")
