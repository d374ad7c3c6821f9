"""rosbag2 writing/reading (x3kd_ros.bag.io) on the tiny synthetic dataset.

Bags are read back with rosbags' own CDR decoder (an implementation independent of rclpy) and
with ``rclpy.serialization``; the contents are compared with the nuScenes tables and with what the
loader produces for the same samples.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from x3kd_core import geometry
from x3kd_core.config import ConfigError
from x3kd_core.data.nuscenes import LoaderConfig, NuScenesSource
from x3kd_core.structures import CAMERA_NAMES, RADAR_NAMES
from x3kd_ros import topics
from x3kd_ros.bag.io import (
    BagError,
    BagWriteConfig,
    bag_summary,
    make_typestore,
    read_bag,
    transform_to_matrix,
    write_bag,
)
from x3kd_ros.conversions import (
    camera_info_to_intrinsics,
    cloud_to_lidar_points,
    cloud_to_radar_points,
    compressed_to_rgb,
    detections_to_boxes,
    image_to_rgb,
    stamp_to_ns,
)

SPLIT = "synth_val"
# Upstream type hash of tf2_msgs/msg/TFMessage (as `ros2 topic info -v /tf` shows on Jazzy; tf2_msgs
# has no Python package here, so it cannot be read from an installed interface like the others).
TF_MESSAGE_RIHS01 = "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"






@pytest.fixture(scope="module")
def nusc(tiny_dataset):
    from nuscenes.nuscenes import NuScenes

    dataroot, version = tiny_dataset
    return NuScenes(version=version, dataroot=str(dataroot), verbose=False)


@pytest.fixture(scope="module")
def source(tiny_dataset, nusc):
    """The loader at the cameras' native size, keyframe-only points, as the bag writer's defaults."""
    dataroot, version = tiny_dataset
    cam = nusc.get("sample_data", nusc.sample[0]["data"]["CAM_FRONT"])
    config = LoaderConfig(version=version, split=SPLIT, image_hw=(cam["height"], cam["width"]),
                          load_masks=False, load_depth=False)
    return NuScenesSource(dataroot, config, nusc=nusc)


@pytest.fixture(scope="module")
def samples(source):
    return [source.load_sample(token) for token in source.sample_tokens]


@pytest.fixture(scope="module")
def mcap_bag(tiny_dataset, nusc, tmp_path_factory):
    """Default bag: mcap, raw rgb8 images, keyframes only."""
    dataroot, version = tiny_dataset
    out = tmp_path_factory.mktemp("bags") / "val_mcap"
    return write_bag(dataroot, version, SPLIT, out, BagWriteConfig(), nusc=nusc)


@pytest.fixture(scope="module")
def sqlite_bag(tiny_dataset, nusc, tmp_path_factory):
    """sqlite3 with the other options on: compressed images, sweeps, zstd per message."""
    dataroot, version = tiny_dataset
    out = tmp_path_factory.mktemp("bags") / "val_sqlite3"
    config = BagWriteConfig(storage="sqlite3", compressed_images=True, include_sweeps=True, zstd=True)
    return write_bag(dataroot, version, SPLIT, out, config, nusc=nusc)


def _by_topic(path, topic_names, decoder="rosbags"):
    out: dict[str, list] = {t: [] for t in topic_names}
    for m in read_bag(path, topic_names, decoder=decoder):
        out[m.topic].append(m)
    return out


def _expected_counts(nusc, tokens, compressed: bool, sweeps: bool) -> dict[str, int]:
    """Messages per topic, from the tables: one per sample_data (plus sweeps), /tf per ego pose."""
    counts: dict[str, int] = {}
    ego_poses = set()
    for token in tokens:
        sample = nusc.get("sample", token)
        for channel, sd_token in sample["data"].items():
            chain = [nusc.get("sample_data", sd_token)]
            while sweeps and chain[-1]["prev"]:
                prev = nusc.get("sample_data", chain[-1]["prev"])
                if prev["is_key_frame"]:
                    break
                chain.append(prev)
            ego_poses.update(sd["ego_pose_token"] for sd in chain)
            if channel.startswith("CAM"):
                counts[topics.camera_image_topic(channel, compressed)] = counts.get(topics.camera_image_topic(channel, compressed), 0) + len(chain)
                counts[topics.camera_info_topic(channel)] = counts.get(topics.camera_info_topic(channel), 0) + len(chain)
            elif channel.startswith("LIDAR"):
                counts[topics.lidar_topic(channel)] = counts.get(topics.lidar_topic(channel), 0) + len(chain)
            else:
                counts[topics.radar_topic(channel)] = counts.get(topics.radar_topic(channel), 0) + len(chain)
    counts[topics.TF_TOPIC] = len(ego_poses)
    counts[topics.TF_STATIC_TOPIC] = 1  # one scene, one rig
    counts[topics.GT_DETECTIONS_TOPIC] = counts[topics.GT_SAMPLE_TOKEN_TOPIC] = len(tokens)
    return counts


# ---------------------------------------------------------------------------------------------- topics


@pytest.mark.parametrize("which", ["mcap", "sqlite3"])
def test_topics_and_counts(which, mcap_bag, sqlite_bag, nusc, source):
    report = mcap_bag if which == "mcap" else sqlite_bag
    compressed = which == "sqlite3"
    summary = bag_summary(report.path)
    expected = _expected_counts(nusc, source.sample_tokens, compressed=compressed, sweeps=compressed)
    assert summary.message_counts == expected == report.message_counts
    # 3 samples x (6 cameras x 2 + 1 LiDAR + 5 radars) sensor messages, + GT, token, TF.
    n = len(source.sample_tokens)
    assert n == 3
    sensor_topics = [t for t in expected if t.startswith(("/cameras", "/lidar", "/radar"))]
    assert len(sensor_topics) == 6 * 2 + 1 + 5
    if not compressed:
        assert sum(expected[t] for t in sensor_topics) == n * 18
    else:
        # The synthetic set has 2 LiDAR/radar sweeps before each keyframe and no camera sweeps.
        assert expected[topics.LIDAR_TOPIC] == 9 and expected[topics.radar_topic("RADAR_FRONT")] == 9
        assert expected[topics.camera_image_topic("CAM_FRONT", compressed=True)] == 3
    image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    assert summary.msgtypes[topics.camera_image_topic("CAM_BACK", compressed)] == image_type
    assert summary.msgtypes[topics.GT_DETECTIONS_TOPIC] == "vision_msgs/msg/Detection3DArray"
    assert summary.msgtypes[topics.TF_STATIC_TOPIC] == "tf2_msgs/msg/TFMessage"
    assert (summary.start_ns, summary.end_ns) == (report.start_ns, report.end_ns)
    assert (report.path / f"{report.path.name}.{'mcap' if which == 'mcap' else 'db3'}").is_file()


@pytest.mark.parametrize("which", ["mcap", "sqlite3"])
def test_messages_are_time_ordered_and_header_stamped(which, mcap_bag, sqlite_bag, nusc, source):
    report = mcap_bag if which == "mcap" else sqlite_bag
    sd_stamps_ns = {int(sd["timestamp"]) * 1000 for sd in nusc.sample_data}
    last = -1
    for m in read_bag(report.path):
        assert m.stamp_ns >= last
        last = m.stamp_ns
        if m.msgtype == "tf2_msgs/msg/TFMessage":
            stamps = {stamp_to_ns(t.header.stamp) for t in m.message.transforms}
            assert stamps == {m.stamp_ns}
        elif m.msgtype != "std_msgs/msg/String":
            # Bag time == header stamp == the dataset's own timestamp of that sample_data (first
            # scene of a bag: no shift).
            assert stamp_to_ns(m.message.header.stamp) == m.stamp_ns
            assert m.stamp_ns in sd_stamps_ns


def test_type_hashes_are_the_standard_ones(mcap_bag, sqlite_bag):
    """The RIHS01 hash stored per topic equals the hash rosidl generated for the installed interface,
    and the stored definition text alone (what Foxglove or mcap tools read) rebuilds that type."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    share = Path(sys.prefix) / "share"
    for report in (mcap_bag, sqlite_bag):
        with Reader(report.path) as reader:
            assert len(reader.connections) == 22
            for conn in reader.connections:
                if conn.msgtype == "tf2_msgs/msg/TFMessage":
                    assert conn.digest == TF_MESSAGE_RIHS01
                else:
                    description = json.loads((share / f"{conn.msgtype}.json").read_text())
                    reference = {h["type_name"]: h["hash_string"] for h in description["type_hashes"]}
                    assert conn.digest == reference[conn.msgtype], conn.topic
                from_bag = get_typestore(Stores.EMPTY)
                from_bag.register(get_types_from_msg(conn.msgdef.data, conn.msgtype))
                assert from_bag.hash_rihs01(conn.msgtype) == conn.digest, conn.topic


def test_mcap_is_readable_by_the_mcap_library(mcap_bag):
    """A third, independent reader: the mcap library sees a ros2-profile file with cdr channels."""
    from mcap.reader import make_reader

    with open(mcap_bag.path / f"{mcap_bag.path.name}.mcap", "rb") as fh:
        reader = make_reader(fh)
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        assert summary.statistics.message_count == mcap_bag.num_messages == 97
        assert {c.topic for c in summary.channels.values()} == set(mcap_bag.message_counts)
        assert {c.message_encoding for c in summary.channels.values()} == {"cdr"}
        assert {sc.encoding for sc in summary.schemas.values()} == {"ros2msg"}
        assert {m.name for m in reader.iter_metadata()} == {"rosbag2"}  # what ros2 bag's mcap plugin reads
        times = [message.log_time for _, _, message in reader.iter_messages(log_time_order=False)]
        assert times == sorted(times) and len(times) == 97


def test_vision_msgs_definitions_match_the_installed_package():
    store = make_typestore()
    share = Path(sys.prefix) / "share" / "vision_msgs" / "msg"
    names = sorted(p.stem for p in share.glob("*.json"))
    assert "Detection3DArray" in names and len(names) >= 10
    for name in names:
        reference = {h["type_name"]: h["hash_string"] for h in json.loads((share / f"{name}.json").read_text())["type_hashes"]}
        assert store.hash_rihs01(f"vision_msgs/msg/{name}") == reference[f"vision_msgs/msg/{name}"]


# ---------------------------------------------------------------------------------------------- content


def test_raw_images_are_bit_exact_to_the_loader(mcap_bag, source, samples, nusc):
    msgs = _by_topic(mcap_bag.path, [topics.camera_image_topic(c) for c in CAMERA_NAMES])
    for cam_index, channel in enumerate(CAMERA_NAMES):
        images = msgs[topics.camera_image_topic(channel)]
        assert len(images) == len(samples)
        for msg, sample in zip(images, samples):
            sd = nusc.get("sample_data", nusc.get("sample", sample.token)["data"][channel])
            assert msg.stamp_ns == int(sd["timestamp"]) * 1000
            assert msg.message.encoding == "rgb8" and msg.message.header.frame_id == channel.lower()
            rgb = image_to_rgb(msg.message)
            assert rgb.shape == (112, 200, 3)
            np.testing.assert_array_equal(rgb, sample.images[cam_index].transpose(1, 2, 0))


def test_compressed_images_are_the_dataset_files(sqlite_bag, source, samples, nusc, tiny_dataset):
    dataroot, _ = tiny_dataset
    topic = topics.camera_image_topic("CAM_FRONT_RIGHT", compressed=True)
    cam_index = CAMERA_NAMES.index("CAM_FRONT_RIGHT")
    msgs = _by_topic(sqlite_bag.path, [topic])[topic]
    for msg, sample in zip(msgs, samples):
        sd = nusc.get("sample_data", nusc.get("sample", sample.token)["data"]["CAM_FRONT_RIGHT"])
        assert msg.message.format == "rgb8; jpeg compressed bgr8"
        assert bytes(msg.message.data) == (Path(dataroot) / sd["filename"]).read_bytes()
        # Same bytes, same decoder: the decoded pixels equal the loader's image exactly.
        np.testing.assert_array_equal(compressed_to_rgb(msg.message), sample.images[cam_index].transpose(1, 2, 0))


def test_camera_info_matches_the_calibration(mcap_bag, samples, nusc):
    info_topics = [topics.camera_info_topic(c) for c in CAMERA_NAMES]
    msgs = _by_topic(mcap_bag.path, info_topics + [topics.camera_image_topic("CAM_BACK")])
    for cam_index, channel in enumerate(CAMERA_NAMES):
        for msg, sample in zip(msgs[topics.camera_info_topic(channel)], samples):
            sd = nusc.get("sample_data", nusc.get("sample", sample.token)["data"][channel])
            calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            intrinsics = camera_info_to_intrinsics(msg.message)
            np.testing.assert_array_equal(intrinsics.k, np.asarray(calib["camera_intrinsic"]))
            # At native size the loader's K is the calibration's too.
            np.testing.assert_allclose(intrinsics.k, sample.rig.intrinsics[cam_index], atol=1e-9)
            assert intrinsics.image_hw == (112, 200)
            assert msg.message.header.frame_id == channel.lower()
            assert msg.stamp_ns == int(sd["timestamp"]) * 1000
    # CAM_BACK's wide lens: fx differs from the front cameras' (the calibration, not a constant).
    k_back = camera_info_to_intrinsics(msgs[topics.camera_info_topic("CAM_BACK")][0].message).k
    k_front = camera_info_to_intrinsics(msgs[topics.camera_info_topic("CAM_FRONT")][0].message).k
    assert k_back[0, 0] < 0.6 * k_front[0, 0]


@pytest.mark.parametrize("which", ["mcap", "sqlite3"])
def test_ground_truth_round_trips_to_the_loader_boxes(which, mcap_bag, sqlite_bag, samples):
    report = mcap_bag if which == "mcap" else sqlite_bag
    msgs = _by_topic(report.path, [topics.GT_DETECTIONS_TOPIC, topics.GT_SAMPLE_TOKEN_TOPIC])
    detections, tokens = msgs[topics.GT_DETECTIONS_TOPIC], msgs[topics.GT_SAMPLE_TOKEN_TOPIC]
    assert [t.message.data for t in tokens] == [s.token for s in samples]
    assert sum(len(s.boxes) for s in samples) > 20
    for det, tok, sample in zip(detections, tokens, samples):
        assert det.stamp_ns == tok.stamp_ns == sample.timestamp_us * 1000
        assert det.message.header.frame_id == topics.BASE_FRAME
        boxes = detections_to_boxes(det.message)
        expected = sample.boxes
        assert len(boxes) == len(expected)
        assert boxes.token == list(expected.token)
        np.testing.assert_array_equal(boxes.label, expected.label)
        np.testing.assert_allclose(boxes.center, expected.center, atol=1e-5, rtol=0)
        np.testing.assert_allclose(boxes.size_lwh, expected.size_lwh, atol=1e-5, rtol=0)
        np.testing.assert_allclose(geometry.wrap_angle(boxes.yaw - expected.yaw), 0.0, atol=1e-6)


def _static_tf(path) -> dict[str, np.ndarray]:
    (msg,) = list(read_bag(path, [topics.TF_STATIC_TOPIC]))
    assert {t.header.frame_id for t in msg.message.transforms} == {topics.BASE_FRAME}
    return {t.child_frame_id: transform_to_matrix(t.transform) for t in msg.message.transforms}


def _ego_poses(path) -> dict[int, np.ndarray]:
    poses = {}
    for msg in read_bag(path, [topics.TF_TOPIC]):
        (tf,) = msg.message.transforms
        assert (tf.header.frame_id, tf.child_frame_id) == (topics.GLOBAL_FRAME, topics.BASE_FRAME)
        poses[msg.stamp_ns] = transform_to_matrix(tf.transform)
    return poses


def test_static_tf_is_the_calibration(mcap_bag, nusc, source):
    static = _static_tf(mcap_bag.path)
    sample = nusc.get("sample", source.sample_tokens[0])
    assert set(static) == {c.lower() for c in sample["data"]}
    for channel, sd_token in sample["data"].items():
        calib = nusc.get("calibrated_sensor", nusc.get("sample_data", sd_token)["calibrated_sensor_token"])
        np.testing.assert_allclose(static[channel.lower()], geometry.make_transform(calib["rotation"], calib["translation"]), atol=1e-12)


def test_points_and_tf_rebuild_the_loader_sample(mcap_bag, samples):
    """Sensor-frame clouds + /tf_static + /tf give the loader's keyframe-ego-frame points."""
    static = _static_tf(mcap_bag.path)
    poses = _ego_poses(mcap_bag.path)
    radar_topics = [topics.radar_topic(c) for c in RADAR_NAMES]
    msgs = _by_topic(mcap_bag.path, [topics.LIDAR_TOPIC] + radar_topics)
    for k, sample in enumerate(samples):
        lidar_msg = msgs[topics.LIDAR_TOPIC][k]
        assert lidar_msg.message.header.frame_id == "lidar_top"
        lidar = cloud_to_lidar_points(lidar_msg.message)
        assert lidar.fields == ("x", "y", "z", "intensity", "ring") and lidar.num_nan == 0
        key_from_global = geometry.invert_transform(poses[lidar_msg.stamp_ns])
        np.testing.assert_allclose(poses[lidar_msg.stamp_ns], sample.ego_to_global, atol=1e-9)
        xyz = geometry.transform_points(static["lidar_top"], lidar.points[:, :3].astype(np.float64))
        np.testing.assert_allclose(xyz, sample.lidar_points[:, :3], atol=1e-4)
        np.testing.assert_array_equal(lidar.column("intensity"), sample.lidar_points[:, 3])
        ring = lidar.column("ring")
        assert ring.min() >= 0 and ring.max() <= 31 and len(np.unique(ring)) > 16

        parts = []
        for channel in RADAR_NAMES:
            msg = msgs[topics.radar_topic(channel)][k]
            radar = cloud_to_radar_points(msg.message)
            # Radars fire at their own time: through the global frame with their own ego pose.
            to_key = key_from_global @ poses[msg.stamp_ns] @ static[channel.lower()]
            xyz = geometry.transform_points(to_key, radar.points[:, :3].astype(np.float64))
            vel = np.concatenate([radar.points[:, 4:6], np.zeros((len(radar.points), 1))], axis=1) @ to_key[:3, :3].T
            parts.append(np.concatenate([xyz, radar.points[:, 3:4], vel[:, :2]], axis=1))
        rebuilt = np.concatenate(parts)
        assert len(rebuilt) == len(sample.radar_points) > 0
        np.testing.assert_allclose(rebuilt, sample.radar_points[:, :6], atol=1e-4)


def test_rclpy_deserializes_the_bag_messages(mcap_bag, samples):
    """rclpy's own CDR reader accepts the bytes (the serialization ROS nodes expect)."""
    from sensor_msgs.msg import Image, PointCloud2
    from vision_msgs.msg import Detection3DArray

    wanted = [topics.camera_image_topic("CAM_FRONT"), topics.GT_DETECTIONS_TOPIC, topics.LIDAR_TOPIC]
    by_rclpy = _by_topic(mcap_bag.path, wanted, decoder="rclpy")
    image = by_rclpy[wanted[0]][0].message
    assert isinstance(image, Image)
    front = CAMERA_NAMES.index("CAM_FRONT")
    np.testing.assert_array_equal(image_to_rgb(image), samples[0].images[front].transpose(1, 2, 0))
    det = by_rclpy[wanted[1]][1].message
    assert isinstance(det, Detection3DArray) and det.header.frame_id == "base_link"
    np.testing.assert_allclose(detections_to_boxes(det).center, samples[1].boxes.center, atol=1e-5)
    assert isinstance(by_rclpy[wanted[2]][2].message, PointCloud2)
    # Raw bytes are what both decoders read.
    raw = next(read_bag(mcap_bag.path, [wanted[0]], decoder="raw"))
    assert isinstance(raw.message, bytes) and len(raw.message) > 112 * 200 * 3


# ---------------------------------------------------------------------------------------------- options / errors


def test_scenes_are_packed_on_one_timeline(tiny_dataset, nusc, tmp_path):
    """Two scenes an hour apart: the second is shifted to start scene_gap_s after the first ends."""
    dataroot, version = tiny_dataset
    # A private copy of the tables with a split over both scenes; sensor files are linked, not copied.
    root = tmp_path / "both"
    root.mkdir()
    for name in ("samples", "sweeps", "maps"):
        (root / name).symlink_to(Path(dataroot) / name)
    shutil.copytree(Path(dataroot) / version, root / version)
    (root / version / "splits.json").write_text(json.dumps({"both": ["scene-0001", "scene-0002"]}))
    report = write_bag(root, version, "both", tmp_path / "bag", BagWriteConfig(max_samples=4, scene_gap_s=2.0))
    assert (report.num_samples, report.num_scenes) == (4, 2)
    assert report.scene_offsets_ns["scene-0001"] == 0

    scene_of = {s["token"]: s["name"] for s in nusc.scene}
    first_tokens = [s["first_sample_token"] for s in nusc.scene]
    msgs = list(read_bag(report.path))
    stamps = [m.stamp_ns for m in msgs]
    assert stamps == sorted(stamps)
    tokens = [m.message.data for m in msgs if m.topic == topics.GT_SAMPLE_TOKEN_TOPIC]
    assert tokens[3] == first_tokens[1] and len(tokens) == 4
    second = nusc.get("sample", tokens[3])
    assert scene_of[second["scene_token"]] == "scene-0002"
    # The second scene's first message comes 2 s after the first scene's last one.
    first_of_second = min(int(nusc.get("sample_data", t)["timestamp"]) for t in second["data"].values()) * 1000
    offset = report.scene_offsets_ns["scene-0002"]
    assert offset < -3_000 * 10**9  # an hour apart in the dataset
    last_of_first = max(m.stamp_ns for m in msgs if m.stamp_ns < first_of_second + offset)
    assert first_of_second + offset - last_of_first == 2 * 10**9
    # Within the scene, times are the recorded ones (shifted as a whole).
    gt = [m for m in msgs if m.topic == topics.GT_DETECTIONS_TOPIC][3]
    cam = [m for m in msgs if m.topic == topics.camera_image_topic("CAM_BACK")][3]
    cam_sd = nusc.get("sample_data", second["data"]["CAM_BACK"])
    assert cam.stamp_ns - gt.stamp_ns == (int(cam_sd["timestamp"]) - int(second["timestamp"])) * 1000
    # One /tf_static per scene start.
    static = [m for m in msgs if m.topic == topics.TF_STATIC_TOPIC]
    assert len(static) == 2 and static[1].stamp_ns == first_of_second + offset
    assert json.loads((report.path / "metadata.yaml").read_text().split("x3kd.scene_offsets_ns: '")[1].split("'")[0]) == report.scene_offsets_ns


def test_errors(tiny_dataset, mcap_bag, tmp_path):
    dataroot, version = tiny_dataset
    with pytest.raises(BagError, match="already exists"):
        write_bag(dataroot, version, SPLIT, mcap_bag.path)
    with pytest.raises(ConfigError, match="max_samples"):
        BagWriteConfig(max_samples=0)
    with pytest.raises(BagError, match="no topic /nope"):
        list(read_bag(mcap_bag.path, ["/nope"]))
    with pytest.raises(BagError, match="decoder"):
        list(read_bag(mcap_bag.path, decoder="json"))
    with pytest.raises(FileNotFoundError, match="sample.json"):
        write_bag(tmp_path / "missing", version, SPLIT, tmp_path / "bag")
    assert not (tmp_path / "bag").exists()


def test_failed_write_leaves_no_bag(tiny_dataset, nusc, tmp_path):
    dataroot, version = tiny_dataset
    root = tmp_path / "broken"
    (root / "samples").mkdir(parents=True)
    for folder in Path(dataroot, "samples").iterdir():
        if folder.name != "LIDAR_TOP":
            (root / "samples" / folder.name).symlink_to(folder)
    shutil.copytree(Path(dataroot) / "samples" / "LIDAR_TOP", root / "samples" / "LIDAR_TOP")
    for name in ("sweeps", "maps"):
        (root / name).symlink_to(Path(dataroot) / name)
    shutil.copytree(Path(dataroot) / version, root / version)
    # Truncate the LiDAR file of the split's last keyframe by one float.
    last = nusc.get("sample", NuScenesSource(root, LoaderConfig(version=version, split=SPLIT)).sample_tokens[-1])
    lidar_file = root / nusc.get("sample_data", last["data"]["LIDAR_TOP"])["filename"]
    lidar_file.write_bytes(lidar_file.read_bytes()[:-4])
    with pytest.raises(BagError, match="not a whole number of 5-column LiDAR points"):
        write_bag(root, version, SPLIT, tmp_path / "bag")
    assert not (tmp_path / "bag").exists()


def test_cli_bag_write(tiny_dataset, tmp_path, capsys):
    from x3kd_core.cli import main

    dataroot, version = tiny_dataset
    out = tmp_path / "cli_bag"
    argv = ["bag", "write", "--dataroot", str(dataroot), "--version", version, "--split", SPLIT,
            "--out", str(out), "--storage", "sqlite3", "--compressed", "--max-samples", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 samples in 1 scenes" in printed and "/cameras/cam_front/image_raw/compressed: 2" in printed
    assert (out / "cli_bag.db3").is_file()
    assert bag_summary(out).message_counts[topics.GT_DETECTIONS_TOPIC] == 2
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
