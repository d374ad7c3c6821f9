"""The replaying process's Fast DDS profile: a shared-memory segment sized to a frame of the bag
and a fast writer heartbeat (see *Transport* in :mod:`x3kd_ros.bag.replay`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from x3kd_ros.bag.io import bag_summary, read_bag

__all__ = ["fastdds_profile_xml", "fastdds_profile_environment", "shm_segment_bytes"]


def fastdds_profile_xml(segment_bytes: int, heartbeat_period_s: float = 0.02) -> str:
    """A Fast DDS XML profile (see *Transport* in :mod:`x3kd_ros.bag.replay`).

    Args:
        segment_bytes: size of the added shared-memory segment (bytes).
        heartbeat_period_s: reliable writers' heartbeat period (s).
    """
    sec = int(heartbeat_period_s)
    nanosec = int(round((heartbeat_period_s - sec) * 1e9))
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<!-- Written by x3kd_ros.bag.replay: a shared-memory segment large enough for one bag frame, and a
     short reliable-writer heartbeat. Transports and discovery are otherwise the RMW's. -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>x3kd_replay_shm</transport_id>
        <type>SHM</type>
        <segment_size>{int(segment_bytes)}</segment_size>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="x3kd_replay_participant" is_default_profile="true">
      <rtps>
        <userTransports><transport_id>x3kd_replay_shm</transport_id></userTransports>
        <useBuiltinTransports>true</useBuiltinTransports>
      </rtps>
    </participant>
    <data_writer profile_name="x3kd_replay_writer" is_default_profile="true">
      <times>
        <heartbeat_period><sec>{sec}</sec><nanosec>{nanosec}</nanosec></heartbeat_period>
      </times>
    </data_writer>
  </profiles>
</dds>
"""


def fastdds_profile_environment(path: str | Path, segment_bytes: int,
                                environ: Optional[dict] = None) -> tuple[dict[str, str], str]:
    """Write :func:`fastdds_profile_xml` to ``path`` and return the environment variables that load
    it, plus a note for logs/reports. Nothing is written (empty dict) when the RMW is not Fast DDS or
    the user already points Fast DDS at a profile file: theirs wins
    (:func:`x3kd_ros.graph.transport.user_transport_setting`, the rule the launch file follows too).
    The segment is sized to a bag here; the graph's nodes use the shipped
    ``config/dds/fastdds_large_images.xml`` (:mod:`x3kd_ros.graph.transport`), the same profile at 64 MiB.
    """
    from x3kd_ros.graph.transport import user_transport_setting  # the one rule (launch file, runner, replay)

    reason = user_transport_setting(environ)
    if reason is not None:
        return {}, f"not used: {reason}"
    path = Path(path)
    path.write_text(fastdds_profile_xml(segment_bytes))
    return {"FASTDDS_DEFAULT_PROFILES_FILE": str(path)}, f"{path} (shared-memory segment {segment_bytes >> 20} MiB)"


def shm_segment_bytes(bag: str | Path, min_bytes: int = 8 << 20, max_bytes: int = 512 << 20,
                      shm_dir: str = "/dev/shm") -> int:
    """Shared-memory segment for replaying ``bag``: 4 x the bytes of one message of every topic
    (the first of each), within [min_bytes, max_bytes] and at most a quarter of the free space
    in ``shm_dir`` (where the segment lives on Linux)."""
    import shutil

    summary = bag_summary(bag)
    sizes: dict[str, int] = {}
    for msg in read_bag(bag, decoder="raw"):
        sizes.setdefault(msg.topic, len(msg.message))
        if len(sizes) == len(summary.msgtypes):
            break
    wanted = min(max(4 * sum(sizes.values()), min_bytes), max_bytes)
    try:
        wanted = min(wanted, shutil.disk_usage(shm_dir).free // 4)
    except OSError:
        pass
    return int(max(wanted, 1 << 20))
