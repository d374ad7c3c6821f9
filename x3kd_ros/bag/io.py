"""rosbag2 files (mcap or sqlite3) from a nuScenes-format dataset, and reading them back.

Written with the pure-Python ``rosbags`` library (``rosbag2_py`` is not installable here). The
files are standard rosbag2 (metadata version 9 by default): every topic carries the standard
message definition and its RIHS01 type hash (equal to the installed interfaces' hashes), so ROS 2
tools and mcap tools can read them. Checked here with rosbags, ``rclpy.serialization`` and the
``mcap`` library; ``ros2 bag`` itself is not installable on these machines.

Where the data comes from
    Sensor messages come from the nuScenes tables directly, not from the keyframe-ego-frame
    :class:`~x3kd_core.structures.Sample`, so the bag is what the car recorded:

    - every message is stamped with its own ``sample_data`` timestamp (cameras, LiDAR and each
      radar fire at different times), see *Time stamps* below;
    - point clouds are in their sensor frame (``lidar_top``, ``radar_front``, ...), and the
      ``base_link -> sensor`` transforms from ``calibrated_sensor`` go to ``/tf_static`` (at
      every scene start, and again if a calibration changes);
      the ego pose of every ``sample_data`` goes to ``/tf`` as ``map -> base_link``, so a
      consumer can motion-compensate exactly as the loader does;
    - camera images keep their original resolution; ``sensor_msgs/Image`` rgb8 holds the decoded
      file (bit-exact to the loader's image at native resolution), the compressed variant holds
      the original file bytes unchanged (no re-encoding);
    - LiDAR: all five columns of the ``.pcd.bin`` (x y z intensity ring); radar: x y z rcs
      vx_comp vy_comp of the clusters kept by the devkit's default filter (as the loader), in the
      radar frame (velocities are the ego-motion-compensated ones, radar-frame axes).

    Ground truth comes from :class:`~x3kd_core.data.nuscenes.NuScenesSource` so it is exactly
    what training and evaluation see (class mapping, ``min_box_points`` filter, keyframe ego
    frame): ``/ground_truth/detections`` (``vision_msgs/Detection3DArray`` in ``base_link``,
    stamped at the keyframe, i.e. the LiDAR keyframe time) and ``/ground_truth/sample_token``
    (``std_msgs/String``, same time). Velocity has no field in Detection3D and is not stored.

Keyframes and sweeps
    By default only keyframes are written (one message per sensor and sample), which is what the
    detector and the evaluation use. ``include_sweeps`` adds the non-keyframe ``sample_data``
    (LiDAR/radar sweeps, and camera sweeps where the dataset has them) before each keyframe.

Time stamps
    Header stamps and bag (receive) times are equal for every message. nuScenes scenes are hours
    or days apart; a bag with several scenes would make ``ros2 bag play`` sleep through those
    gaps. With ``pack_scenes`` (default) each scene after the first is shifted as a whole so that
    it starts ``scene_gap_s`` after the previous one ended: within a scene all relative times are
    the recorded ones, and the first scene keeps its original stamps. The per-scene shifts are in
    the bag's ``custom_data`` (``x3kd.scene_offsets_ns``), and ``/ground_truth/sample_token``
    links every keyframe to the dataset.

Reading
    :func:`read_bag` yields :class:`BagMessage` (topic, stamp_ns, msgtype, message) in time order,
    decoded by ``rosbags`` (pure Python, any type in the bag), by ``rclpy`` (the message classes
    nodes use; needs the interface's Python package) or left as raw CDR bytes (to republish).
    :func:`bag_summary` gives topics, types and message counts.

Type store
    :func:`make_typestore`: rosbags' ROS 2 Kilted store (the distribution of the installed rclpy
    wheels; its hashes equal those of the installed interface packages) plus ``vision_msgs`` from
    its ``.msg`` files. ``tf2_msgs`` (not installable as a Python package here) is in rosbags'
    store, so ``/tf`` and ``/tf_static`` are serialized by rosbags; every other message is built by
    :mod:`x3kd_ros.conversions` and serialized by ``rclpy.serialization``, which is exactly the
    CDR ROS produces.

One file on purpose (issue 14): writing a dataset as a bag and reading it back share the
typestore, the topic layout and the message encodings, so the bag format is defined in one place.
"""

from __future__ import annotations

import heapq
import importlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Optional, Sequence

import cv2
import numpy as np

from x3kd_core import geometry
from x3kd_core.config import ConfigError
from x3kd_core.paths import REPO_ROOT
from x3kd_ros import topics

__all__ = [
    "BagError",
    "BagWriteConfig",
    "BagWriteReport",
    "write_bag",
    "BagMessage",
    "BagSummary",
    "read_bag",
    "bag_summary",
    "make_typestore",
    "transform_to_matrix",
    "TF_MSGTYPE",
]


TF_MSGTYPE = "tf2_msgs/msg/TFMessage"

# /tf_static is latched in ROS 2: transient local, keep last 1, reliable. ros2 bag play re-offers
# the recorded QoS, so late subscribers (tf2 buffers) still get the sensor extrinsics.
_STATIC_TF_DEPTH = 1


class BagError(ValueError):
    """A bag cannot be written or read as asked (path exists, unknown topic, bad file)."""


# ----------------------------------------------------------------------------------------------
# Type store


def _vision_msgs_msg_dir() -> Path:
    """Folder with the vision_msgs ``.msg`` files: the repo's interface package, else an install."""
    candidates = [REPO_ROOT / "interfaces" / "vision_msgs" / "msg", Path(sys.prefix) / "share" / "vision_msgs" / "msg"]
    candidates += [Path(p) / "share" / "vision_msgs" / "msg" for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for folder in candidates:
        if (folder / "Detection3DArray.msg").is_file():
            return folder
    raise BagError(f"no vision_msgs .msg definitions found (looked in {', '.join(map(str, candidates))})")


@lru_cache(maxsize=1)
def make_typestore():
    """rosbags type store: ROS 2 Kilted's standard types plus ``vision_msgs`` (from its ``.msg`` files)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict = {}
    for path in sorted(_vision_msgs_msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"vision_msgs/msg/{path.stem}"))
    store.register(types)
    return store


# ----------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class BagWriteConfig:
    """What :func:`write_bag` writes and how.

    Fields:
        storage: "mcap" (default, one ``<name>.mcap`` file) or "sqlite3" (``<name>.db3``).
        compressed_images: write ``.../image_raw/compressed`` (the dataset's JPEG bytes as they
            are) instead of rgb8 ``.../image_raw``.
        zstd: compress the storage with zstd (mcap chunks, or each sqlite3 message); readable by
            ``ros2 bag`` and rosbags.
        max_samples: write only the first N keyframes of the split (None = all).
        include_sweeps: also write the non-keyframe sample_data before each keyframe.
        radar_filter: "default" keeps the devkit's default radar cluster states (as the loader
            does); "none" keeps every cluster.
        min_box_points: ground-truth boxes need num_lidar_pts + num_radar_pts >= this (the
            loader's filter; 1 = what the nuScenes evaluation keeps).
        ego_tf: write the ego pose of every sample_data to ``/tf`` (``map -> base_link``).
        pack_scenes: shift each scene to start ``scene_gap_s`` after the previous one ended (see
            the module docstring); False keeps the dataset's stamps.
        scene_gap_s: pause between packed scenes (s).
        bag_version: rosbag2 metadata version (9: Jazzy and later; 8: Iron).
    """

    storage: Literal["mcap", "sqlite3"] = "mcap"
    compressed_images: bool = False
    zstd: bool = False
    max_samples: Optional[int] = None
    include_sweeps: bool = False
    radar_filter: Literal["default", "none"] = "default"
    min_box_points: int = 1
    ego_tf: bool = True
    pack_scenes: bool = True
    scene_gap_s: float = 1.0
    bag_version: Literal[8, 9] = 9

    def __post_init__(self) -> None:
        if self.storage not in ("mcap", "sqlite3"):
            raise ConfigError(f"storage must be 'mcap' or 'sqlite3', got {self.storage!r}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples must be >= 1 (or None for all), got {self.max_samples}")
        if self.radar_filter not in ("default", "none"):
            raise ConfigError(f"radar_filter must be 'default' or 'none', got {self.radar_filter!r}")
        if self.min_box_points < 0:
            raise ConfigError(f"min_box_points must be >= 0, got {self.min_box_points}")
        if not self.scene_gap_s >= 0:
            raise ConfigError(f"scene_gap_s must be >= 0, got {self.scene_gap_s}")
        if self.bag_version not in (8, 9):
            raise ConfigError(f"bag_version must be 8 or 9, got {self.bag_version}")


@dataclass
class BagWriteReport:
    """What :func:`write_bag` wrote.

    Fields:
        path: the bag folder (holds ``metadata.yaml`` and the storage file).
        storage: "mcap" or "sqlite3".
        num_samples / num_scenes: keyframes and scenes written.
        message_counts: topic -> number of messages.
        start_ns / end_ns: first and last stamp in the bag (ns).
        scene_offsets_ns: scene name -> shift added to the dataset's stamps (ns).
        num_bytes: size of the bag folder on disk (bytes).
        seconds: wall time of the write itself (s): reading sensor files, building, serializing
            and storing messages, closing the bag.
        setup_seconds: wall time before that (s): loading the tables and the libraries.
    """

    path: Path
    storage: str
    num_samples: int
    num_scenes: int
    message_counts: dict[str, int]
    start_ns: int
    end_ns: int
    scene_offsets_ns: dict[str, int]
    num_bytes: int
    seconds: float
    setup_seconds: float = 0.0

    @property
    def num_messages(self) -> int:
        return sum(self.message_counts.values())

    def summary(self) -> str:
        """A few human-readable lines: path, size, speed, topics."""
        mib = self.num_bytes / 2**20
        lines = [
            f"wrote {self.path} ({self.storage}): {self.num_samples} samples in {self.num_scenes} scenes, "
            f"{self.num_messages} messages, {mib:.2f} MiB, {(self.end_ns - self.start_ns) * 1e-9:.2f} s of data",
            f"  written in {self.seconds:.2f} s ({self.num_samples / max(self.seconds, 1e-9):.1f} samples/s, "
            f"{mib / max(self.seconds, 1e-9):.1f} MiB/s) after {self.setup_seconds:.2f} s loading tables and libraries",
        ]
        lines += [f"  {topic}: {count}" for topic, count in sorted(self.message_counts.items())]
        return "\n".join(lines)


class _OrderedBagSink:
    """Writes messages to a rosbags Writer in time order, holding back at most one window.

    Messages arrive window by window (one keyframe with its sweeps). Inside a window and between
    neighbouring windows stamps interleave (a camera keyframe may be later than the next
    window's first LiDAR sweep), so a window's messages wait in a heap until a later window's
    earliest stamp shows that nothing older can still come.
    """

    def __init__(self, writer, typestore) -> None:
        self._writer = writer
        self._typestore = typestore
        self._connections: dict[str, Any] = {}
        self._heap: list[tuple[int, int, str, bytes]] = []
        self._seq = 0
        self.counts: dict[str, int] = {}
        self.start_ns: Optional[int] = None
        self.end_ns: Optional[int] = None

    def connect(self, topic: str, msgtype: str, qos: Sequence = ()) -> None:
        if topic in self._connections:
            if self._connections[topic].msgtype != msgtype:
                raise BagError(f"topic {topic} written with two types: {self._connections[topic].msgtype}, {msgtype}")
            return
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self._typestore, offered_qos_profiles=list(qos)
        )

    def push_window(self, records: list[tuple[int, str, bytes]]) -> None:
        """Queue (stamp_ns, topic, cdr bytes) records; write what is now known to be oldest."""
        if not records:
            return
        window_start = min(r[0] for r in records)
        while self._heap and self._heap[0][0] < window_start:
            self._write(heapq.heappop(self._heap))
        for stamp, topic, data in records:
            # seq keeps insertion order among equal stamps (e.g. /tf_static before the sensors).
            heapq.heappush(self._heap, (stamp, self._seq, topic, data))
            self._seq += 1

    @property
    def latest_ns(self) -> int:
        """Latest stamp written or queued so far (0 before the first message)."""
        return max([self.end_ns or 0] + [item[0] for item in self._heap])

    def flush(self) -> None:
        while self._heap:
            self._write(heapq.heappop(self._heap))

    def _write(self, item: tuple[int, int, str, bytes]) -> None:
        stamp, _, topic, data = item
        self._writer.write(self._connections[topic], stamp, data)
        self.counts[topic] = self.counts.get(topic, 0) + 1
        self.start_ns = stamp if self.start_ns is None else min(self.start_ns, stamp)
        self.end_ns = stamp if self.end_ns is None else max(self.end_ns, stamp)


def _static_tf_qos():
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(0, 0)  # "unspecified": the RMW default, as tf2_ros' static broadcaster offers
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=_STATIC_TF_DEPTH,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL,
        deadline=zero,
        lifespan=zero,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )


class _TfBuilder:
    """Serializes tf2_msgs/TFMessage with rosbags (tf2_msgs has no Python package here)."""

    def __init__(self, typestore) -> None:
        self._ts = typestore
        types = typestore.types
        self._Time = types["builtin_interfaces/msg/Time"]
        self._Header = types["std_msgs/msg/Header"]
        self._Vector3 = types["geometry_msgs/msg/Vector3"]
        self._Quaternion = types["geometry_msgs/msg/Quaternion"]
        self._Transform = types["geometry_msgs/msg/Transform"]
        self._TransformStamped = types["geometry_msgs/msg/TransformStamped"]
        self._TFMessage = types[TF_MSGTYPE]

    def transform(self, stamp_ns: int, parent: str, child: str, record: dict):
        """TransformStamped parent <- child from a nuScenes pose record (rotation w x y z, translation)."""
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        w, x, y, z = (float(v) for v in record["rotation"])
        tx, ty, tz = (float(v) for v in record["translation"])
        return self._TransformStamped(
            header=self._Header(stamp=self._Time(sec=sec, nanosec=nanosec), frame_id=parent),
            child_frame_id=child,
            transform=self._Transform(
                translation=self._Vector3(x=tx, y=ty, z=tz), rotation=self._Quaternion(x=x, y=y, z=z, w=w)
            ),
        )

    def serialize(self, transforms: list) -> bytes:
        return bytes(self._ts.serialize_cdr(self._TFMessage(transforms=transforms), TF_MSGTYPE))


def transform_to_matrix(transform) -> np.ndarray:
    """``geometry_msgs/Transform`` (rosbags or rclpy) -> (4, 4) parent <- child transform."""
    q, t = transform.rotation, transform.translation
    return geometry.make_transform((q.w, q.x, q.y, q.z), (t.x, t.y, t.z))


def _read_camera_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, decoded exactly as the loader decodes it."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BagError(f"cannot read camera image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_lidar_bin(path: Path) -> np.ndarray:
    """(P, 5) float32 x y z (m, sensor frame) intensity ring of a nuScenes ``.pcd.bin``."""
    raw = np.fromfile(path, dtype="<f4")
    if raw.size % 5:
        raise BagError(f"{path}: {raw.size} floats is not a whole number of 5-column LiDAR points")
    return raw.reshape(-1, 5)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class _DatasetBagWriter:
    """Builds the messages of one keyframe window; :func:`write_bag` drives it."""

    def __init__(self, source, config: BagWriteConfig, typestore) -> None:
        from x3kd_core.data.nuscenes import _RADAR_ALL_STATES, _RADAR_DEFAULT_STATES

        self.source = source
        self.nusc = source.nusc
        self.config = config
        self.tf = _TfBuilder(typestore)
        self.dataroot = Path(source.dataroot)
        # Same radar cluster filter as the loader (shared constants, so the two cannot drift).
        self.radar_states = _RADAR_DEFAULT_STATES if config.radar_filter == "default" else _RADAR_ALL_STATES
        self.modality = {}
        for calib in self.nusc.calibrated_sensor:
            sensor = self.nusc.get("sensor", calib["sensor_token"])
            self.modality[sensor["channel"]] = sensor["modality"]
        self.current_calib: dict[str, str] = {}
        self.emitted_ego_poses: set[str] = set()

    # -- which sample_data belong to a keyframe window
    def window_sample_data(self, sample: dict) -> list[tuple[str, dict]]:
        """(channel, sample_data) of a keyframe, with the sweeps since the previous keyframe first."""
        out = []
        for channel, sd_token in sample["data"].items():
            sd = self.nusc.get("sample_data", sd_token)
            chain = [sd]
            if self.config.include_sweeps:
                prev = sd["prev"]
                while prev:
                    earlier = self.nusc.get("sample_data", prev)
                    if earlier["is_key_frame"]:
                        break
                    chain.append(earlier)
                    prev = earlier["prev"]
            out += [(channel, s) for s in reversed(chain)]
        return out

    # -- messages
    def records(
        self, sample: dict, window: list[tuple[str, dict]], offset_ns: int, scene_start: bool
    ) -> list[tuple[int, str, bytes]]:
        """Serialized (stamp_ns, topic, cdr) records of one keyframe window, stamps shifted by ``offset_ns``."""
        from rclpy.serialization import serialize_message
        from std_msgs.msg import Header, String

        from x3kd_ros import conversions as cv

        nusc, cfg = self.nusc, self.config
        records: list[tuple[int, str, bytes]] = []
        window_start = min(int(sd["timestamp"]) for _, sd in window) * 1000 + offset_ns

        # /tf_static first, at every scene start (so playback from any scene finds the extrinsics)
        # and whenever a sensor's calibration changes (nuScenes calibrates per log).
        calibs = {ch: sd["calibrated_sensor_token"] for ch, sd in window}
        if scene_start or any(self.current_calib.get(ch) != tok for ch, tok in calibs.items()):
            self.current_calib.update(calibs)
            transforms = [
                self.tf.transform(window_start, topics.BASE_FRAME, topics.sensor_frame(ch), nusc.get("calibrated_sensor", tok))
                for ch, tok in sorted(self.current_calib.items())
            ]
            records.append((window_start, topics.TF_STATIC_TOPIC, self.tf.serialize(transforms)))

        for channel, sd in window:
            stamp = int(sd["timestamp"]) * 1000 + offset_ns
            header = Header(stamp=cv.ns_to_stamp(stamp), frame_id=topics.sensor_frame(channel))
            path = self.dataroot / sd["filename"]
            modality = self.modality.get(channel)
            if cfg.ego_tf and sd["ego_pose_token"] not in self.emitted_ego_poses:
                self.emitted_ego_poses.add(sd["ego_pose_token"])
                pose = nusc.get("ego_pose", sd["ego_pose_token"])
                tf = self.tf.transform(stamp, topics.GLOBAL_FRAME, topics.BASE_FRAME, pose)
                records.append((stamp, topics.TF_TOPIC, self.tf.serialize([tf])))
            if modality == "camera":
                calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
                if cfg.compressed_images:
                    msg = self._compressed_passthrough(path, header)
                    image_hw = (int(sd.get("height") or 0), int(sd.get("width") or 0))
                    if min(image_hw) <= 0:
                        image_hw = _read_camera_rgb(path).shape[:2]
                    records.append((stamp, topics.camera_image_topic(channel, compressed=True), serialize_message(msg)))
                else:
                    rgb = _read_camera_rgb(path)
                    image_hw = rgb.shape[:2]
                    records.append((stamp, topics.camera_image_topic(channel), serialize_message(cv.rgb_to_image(rgb, header))))
                info = cv.intrinsics_to_camera_info(np.asarray(calib["camera_intrinsic"], dtype=np.float64), image_hw, header)
                records.append((stamp, topics.camera_info_topic(channel), serialize_message(info)))
            elif modality == "lidar":
                cloud = cv.lidar_points_to_cloud(_read_lidar_bin(path), header, fields=("x", "y", "z", "intensity", "ring"))
                records.append((stamp, topics.lidar_topic(channel), serialize_message(cloud)))
            elif modality == "radar":
                cloud = cv.radar_points_to_cloud(self._read_radar(path), header)
                records.append((stamp, topics.radar_topic(channel), serialize_message(cloud)))
            else:
                raise BagError(f"sample_data {sd['token']}: channel {channel} has unknown modality {modality!r}")

        # Ground truth at the keyframe time (nuScenes' sample timestamp is the LiDAR keyframe's).
        key_stamp = int(sample["timestamp"]) * 1000 + offset_ns
        boxes = self.source.load_sample(sample["token"]).boxes
        gt_header = Header(stamp=cv.ns_to_stamp(key_stamp), frame_id=topics.BASE_FRAME)
        records.append((key_stamp, topics.GT_DETECTIONS_TOPIC, serialize_message(cv.boxes_to_detections(boxes, gt_header))))
        records.append((key_stamp, topics.GT_SAMPLE_TOKEN_TOPIC, serialize_message(String(data=sample["token"]))))
        return records

    @staticmethod
    def _compressed_passthrough(path: Path, header):
        from sensor_msgs.msg import CompressedImage

        suffix = path.suffix.lower()
        kind = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}.get(suffix)
        if kind is None:
            raise BagError(f"{path}: cannot pass a {suffix!r} file through as a CompressedImage (jpeg or png only)")
        msg = CompressedImage()
        msg.header = header
        # image_transport's format string: source encoding; codec; what the codec holds (BGR order).
        msg.format = f"rgb8; {kind} compressed bgr8"
        msg.data = path.read_bytes()
        return msg

    def _read_radar(self, path: Path) -> np.ndarray:
        """(Q, 6) float32 x y z (m, radar frame) rcs vx_comp vy_comp of the kept clusters."""
        from nuscenes.utils.data_classes import RadarPointCloud

        pts = RadarPointCloud.from_file(str(path), **self.radar_states).points.T  # (Q, 18)
        # The devkit stores an empty radar cloud as one NaN point.
        pts = pts[np.all(np.isfinite(pts[:, :3]), axis=1)]
        # Columns of the 18-field nuScenes radar pcd: x y z dyn_prop id rcs vx vy vx_comp vy_comp ...
        return pts[:, [0, 1, 2, 5, 8, 9]].astype(np.float32)


def write_bag(
    dataroot: str | os.PathLike,
    version: str,
    split: str,
    out: str | os.PathLike,
    config: BagWriteConfig = BagWriteConfig(),
    nusc=None,
) -> BagWriteReport:
    """Write one split of a nuScenes-format dataset as a rosbag2 (see the module docstring).

    Args:
        dataroot / version / split: the dataset (as for :class:`~x3kd_core.data.nuscenes.NuScenesSource`).
        out: bag folder to create (must not exist); the storage file inside is ``<name>.mcap`` or
            ``<name>.db3``.
        config: what to write.
        nusc: an already loaded ``NuScenes`` for this dataroot/version (optional).

    A write that fails part-way removes ``out`` again.

    Raises:
        BagError: ``out`` exists, or a sensor file cannot be read.
        FileNotFoundError / DatasetError: as the loader (bad dataroot, version or split).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

    out = Path(out)
    if out.exists():
        raise BagError(f"bag path {out} already exists; remove it or choose another --out")
    t_setup = time.perf_counter()
    source = _boxes_source(dataroot, version, split, config, nusc)
    tokens = source.sample_tokens[: config.max_samples] if config.max_samples else list(source.sample_tokens)
    typestore = make_typestore()
    import rclpy.serialization  # noqa: F401  (import time belongs to the set-up, not the write speed)

    from x3kd_ros import conversions  # noqa: F401

    t_start = time.perf_counter()

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = Writer(
        out,
        version=config.bag_version,
        storage_plugin=StoragePlugin.MCAP if config.storage == "mcap" else StoragePlugin.SQLITE3,
    )
    if config.zstd:
        mode = CompressionMode.STORAGE if config.storage == "mcap" else CompressionMode.MESSAGE
        writer.set_compression(mode, CompressionFormat.ZSTD)
    builder = _DatasetBagWriter(source, config, typestore)
    scene_offsets: dict[str, int] = {}
    writer.open()
    try:
        sink = _OrderedBagSink(writer, typestore)
        _connect_topics(sink, builder, config)
        current_scene, offset_ns = None, 0
        for token in tokens:
            sample = source.nusc.get("sample", token)
            window = builder.window_sample_data(sample)
            scene_start = sample["scene_token"] != current_scene
            if scene_start:
                current_scene = sample["scene_token"]
                first_ns = min(int(sd["timestamp"]) for _, sd in window) * 1000
                last_ns = sink.latest_ns
                if config.pack_scenes and scene_offsets:
                    offset_ns = last_ns + int(round(config.scene_gap_s * 1e9)) - first_ns
                else:
                    offset_ns = 0
                scene_offsets[source.nusc.get("scene", current_scene)["name"]] = offset_ns
            sink.push_window(builder.records(sample, window, offset_ns, scene_start))
        sink.flush()
        dataset = {"dataroot": str(Path(dataroot).resolve()), "version": version, "split": split}
        writer.set_custom_data("x3kd.dataset", json.dumps(dataset))
        writer.set_custom_data("x3kd.scene_offsets_ns", json.dumps(scene_offsets))
        writer.close()
    except BaseException:
        # Leave no half-written bag behind (it would also block the next run's --out).
        writer.abort()
        shutil.rmtree(out, ignore_errors=True)
        raise
    return BagWriteReport(
        path=out,
        storage=config.storage,
        num_samples=len(tokens),
        num_scenes=len(scene_offsets),
        message_counts=dict(sink.counts),
        start_ns=sink.start_ns or 0,
        end_ns=sink.end_ns or 0,
        scene_offsets_ns=scene_offsets,
        num_bytes=_dir_bytes(out),
        seconds=time.perf_counter() - t_start,
        setup_seconds=t_start - t_setup,
    )


def _boxes_source(dataroot, version: str, split: str, config: BagWriteConfig, nusc):
    """A NuScenesSource that yields the ground-truth boxes cheaply.

    The loader only provides the boxes here (sensor data come from the tables), and load_sample
    decodes every camera it is configured with: so one camera, scaled to a tiny window.
    """
    from x3kd_core.data.nuscenes import LoaderConfig, NuScenesSource
    from x3kd_core.structures import CAMERA_NAMES

    if nusc is None:
        # Load the tables here to pick a camera channel; NuScenesSource reuses them.
        table_root = Path(dataroot) / version
        if not (table_root / "sample.json").is_file():
            raise FileNotFoundError(f"no nuScenes tables for version '{version}' under {dataroot} (expected {table_root}/sample.json)")
        from nuscenes.nuscenes import NuScenes

        nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    channels = {s["channel"] for s in nusc.sensor}
    cameras = [c for c in CAMERA_NAMES if c in channels] or sorted(s["channel"] for s in nusc.sensor if s["modality"] == "camera")
    if not cameras:
        raise BagError(f"{dataroot}/{version} has no camera sensor")
    loader = LoaderConfig(
        version=version,
        split=split,
        cameras=(cameras[0],),
        image_hw=(8, 8),
        load_masks=False,
        load_depth=False,
        radar_filter=config.radar_filter,
        min_box_points=config.min_box_points,
    )
    return NuScenesSource(dataroot, loader, nusc=nusc)


def _connect_topics(sink: _OrderedBagSink, builder: _DatasetBagWriter, config: BagWriteConfig) -> None:
    """Register every topic up front so the bag lists them in a stable order."""
    sink.connect(topics.TF_STATIC_TOPIC, TF_MSGTYPE, qos=[_static_tf_qos()])
    if config.ego_tf:
        sink.connect(topics.TF_TOPIC, TF_MSGTYPE)
    for channel, modality in sorted(builder.modality.items()):
        if modality == "camera":
            if config.compressed_images:
                sink.connect(topics.camera_image_topic(channel, compressed=True), "sensor_msgs/msg/CompressedImage")
            else:
                sink.connect(topics.camera_image_topic(channel), "sensor_msgs/msg/Image")
            sink.connect(topics.camera_info_topic(channel), "sensor_msgs/msg/CameraInfo")
        elif modality == "lidar":
            sink.connect(topics.lidar_topic(channel), "sensor_msgs/msg/PointCloud2")
        elif modality == "radar":
            sink.connect(topics.radar_topic(channel), "sensor_msgs/msg/PointCloud2")
    sink.connect(topics.GT_DETECTIONS_TOPIC, "vision_msgs/msg/Detection3DArray")
    sink.connect(topics.GT_SAMPLE_TOKEN_TOPIC, "std_msgs/msg/String")


# ----------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class BagMessage:
    """One message read from a bag.

    Fields:
        topic: topic name.
        stamp_ns: bag (receive) time in ns; for bags from :func:`write_bag` it equals the header
            stamp (and, for ``/ground_truth/sample_token``, the keyframe's stamp).
        msgtype: ROS type name, e.g. ``sensor_msgs/msg/Image``.
        message: the decoded message (rosbags dataclass or rclpy message) or raw CDR ``bytes``.
    """

    topic: str
    stamp_ns: int
    msgtype: str
    message: Any


@dataclass(frozen=True)
class BagSummary:
    """Topics of a bag.

    Fields:
        msgtypes: topic -> ROS type name.
        message_counts: topic -> number of messages.
        start_ns / end_ns: first and last bag time (ns), both inclusive.
    """

    msgtypes: dict[str, str]
    message_counts: dict[str, int]
    start_ns: int
    end_ns: int


def bag_summary(path: str | os.PathLike) -> BagSummary:
    """Topics, types and message counts of a rosbag2 folder (mcap or sqlite3)."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        msgtypes = {c.topic: c.msgtype for c in reader.connections}
        counts: dict[str, int] = {}
        for c in reader.connections:
            counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
        # rosbags reports end_time one past the last message (an exclusive bound).
        end = reader.end_time - 1 if reader.message_count else reader.start_time
        return BagSummary(msgtypes=msgtypes, message_counts=counts, start_ns=reader.start_time, end_ns=end)


@lru_cache(maxsize=None)
def _rclpy_class(msgtype: str):
    package, kind, name = msgtype.split("/")
    try:
        module = importlib.import_module(f"{package}.{kind}")
    except ImportError as err:
        raise BagError(
            f"cannot decode {msgtype} with rclpy: the Python package '{package}' is not installed "
            f"(use decoder='rosbags' or 'raw')"
        ) from err
    return getattr(module, name)


def read_bag(
    path: str | os.PathLike,
    topics: Optional[Iterable[str]] = None,
    decoder: Literal["rosbags", "rclpy", "raw"] = "rosbags",
) -> Iterator[BagMessage]:
    """Messages of a rosbag2 folder in bag-time order.

    Args:
        path: the bag folder (with ``metadata.yaml``).
        topics: only these topics (None = all); a topic the bag lacks raises.
        decoder: "rosbags" (pure-Python dataclasses, works for every type, including tf2_msgs),
            "rclpy" (``rclpy.serialization.deserialize_message`` into the ROS message classes;
            needs their Python packages) or "raw" (CDR bytes, e.g. to republish as they are).

    Raises:
        BagError: unknown topic or decoder, or a type rclpy cannot import.
    """
    from rosbags.rosbag2 import Reader

    if decoder not in ("rosbags", "rclpy", "raw"):
        raise BagError(f"decoder must be 'rosbags', 'rclpy' or 'raw', got {decoder!r}")
    store = make_typestore() if decoder == "rosbags" else None
    with Reader(Path(path)) as reader:
        available = {c.topic for c in reader.connections}
        wanted = set(available if topics is None else topics)
        missing = sorted(wanted - available)
        if missing:
            raise BagError(f"bag {path} has no topic {', '.join(missing)} (it has: {', '.join(sorted(available))})")
        connections = [c for c in reader.connections if c.topic in wanted]
        if store is not None:
            _register_bag_types(store, connections)
        if decoder == "rclpy":
            from rclpy.serialization import deserialize_message

            classes = {c.msgtype: _rclpy_class(c.msgtype) for c in connections}
        for conn, stamp, raw in reader.messages(connections=connections):
            if decoder == "raw":
                message = bytes(raw)
            elif decoder == "rclpy":
                message = deserialize_message(bytes(raw), classes[conn.msgtype])
            else:
                message = store.deserialize_cdr(raw, conn.msgtype)
            yield BagMessage(topic=conn.topic, stamp_ns=int(stamp), msgtype=conn.msgtype, message=message)


def _register_bag_types(store, connections) -> None:
    """Add types the store lacks from the definitions stored in the bag (bags from other tools)."""
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import get_types_from_idl, get_types_from_msg

    new: dict = {}
    for conn in connections:
        if conn.msgtype in store.fielddefs or conn.msgtype in new:
            continue
        if conn.msgdef.format == MessageDefinitionFormat.MSG:
            new.update(get_types_from_msg(conn.msgdef.data, conn.msgtype))
        elif conn.msgdef.format == MessageDefinitionFormat.IDL:
            new.update(get_types_from_idl(conn.msgdef.data))
        else:
            raise BagError(f"topic {conn.topic}: type {conn.msgtype} is unknown and the bag has no definition for it")
    if new:
        store.register(new)
