"""The synthetic generator writes a dataset that nuscenes-devkit reads, and whose annotations are
true to its sensor data (point counts, masks, depth, velocities)."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.eval.common.loaders import get_samples_of_custom_split
from nuscenes.eval.detection.utils import category_to_detection_name, detection_name_to_rel_attributes
from nuscenes.utils.data_classes import LidarPointCloud, RadarPointCloud
from nuscenes.utils.geometry_utils import points_in_box, transform_matrix, view_points
from pyquaternion import Quaternion

from x3kd_core.config import ConfigError, from_dict, load_yaml
from x3kd_core.data.synthetic import SynthConfig, generate_dataset
from x3kd_core.data.synthetic.raycast import camera_rects, ray_box_distance, spherical_windows
from x3kd_core.data.synthetic.world import build_scene
from x3kd_core.structures import CAMERA_NAMES, DETECTION_CLASSES, RADAR_NAMES

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "config" / "data" / "synthetic_tiny.yaml"
ALL_RADAR_STATES = dict(invalid_states=list(range(18)), dynprop_states=list(range(8)), ambig_states=list(range(5)))


@pytest.fixture(scope="module")
def config() -> SynthConfig:
    return load_yaml(SynthConfig, TINY)


@pytest.fixture(scope="module")
def dataroot(config, tmp_path_factory) -> Path:
    return generate_dataset(config, tmp_path_factory.mktemp("synth") / "a")


@pytest.fixture(scope="module")
def nusc(config, dataroot) -> NuScenes:
    return NuScenes(config.version, str(dataroot), verbose=False)


def _sensor_to_global(nusc: NuScenes, sd_token: str) -> np.ndarray:
    sd = nusc.get("sample_data", sd_token)
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    return transform_matrix(pose["translation"], Quaternion(pose["rotation"])) @ transform_matrix(
        cs["translation"], Quaternion(cs["rotation"]))


def _points_global(nusc: NuScenes, sd_token: str, points_xyz: np.ndarray) -> np.ndarray:
    """(3, N) sensor-frame points -> (3, N) global."""
    t = _sensor_to_global(nusc, sd_token)
    return t[:3, :3] @ points_xyz + t[:3, 3:4]


def test_tables_and_links(config, nusc):
    n_kf = config.num_scenes * config.keyframes_per_scene
    assert len(nusc.scene) == config.num_scenes
    assert len(nusc.sample) == n_kf
    channels = set(CAMERA_NAMES) | set(RADAR_NAMES) | {"LIDAR_TOP"}
    for scene in nusc.scene:
        tokens = []
        tok = scene["first_sample_token"]
        while tok:
            sample = nusc.get("sample", tok)
            assert set(sample["data"]) == channels
            tokens.append(tok)
            tok = sample["next"]
        assert tokens[-1] == scene["last_sample_token"]
        assert len(tokens) == scene["nbr_samples"] == config.keyframes_per_scene
        ts = [nusc.get("sample", t)["timestamp"] for t in tokens]
        assert np.all(np.diff(ts) == 500_000)  # 2 Hz keyframes
    # LiDAR chain: keyframe, then sweeps_per_keyframe sweeps back to the previous keyframe.
    sample = nusc.get("sample", nusc.scene[0]["last_sample_token"])
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    for _ in range(config.sweeps_per_keyframe):
        sd = nusc.get("sample_data", sd["prev"])
        assert not sd["is_key_frame"] and sd["filename"].startswith("sweeps/LIDAR_TOP/")
    assert nusc.get("sample_data", sd["prev"])["is_key_frame"]
    # Instances: the annotation chain has nbr_annotations links, first/last match.
    for inst in nusc.instance:
        chain = []
        tok = inst["first_annotation_token"]
        while tok:
            chain.append(tok)
            tok = nusc.get("sample_annotation", tok)["next"]
        assert len(chain) == inst["nbr_annotations"] >= 1
        assert chain[-1] == inst["last_annotation_token"]
    # One ego pose per sample_data, at its timestamp.
    for sd in nusc.sample_data:
        assert nusc.get("ego_pose", sd["ego_pose_token"])["timestamp"] == sd["timestamp"]


def test_categories_and_attributes(nusc):
    names = {category_to_detection_name(c["name"]) for c in nusc.category}
    assert names == set(DETECTION_CLASSES)
    seen = set()
    for ann in nusc.sample_annotation:
        det = category_to_detection_name(ann["category_name"])
        seen.add(det)
        attrs = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
        allowed = detection_name_to_rel_attributes(det)
        assert len(attrs) == (1 if allowed else 0)
        assert all(a in allowed for a in attrs)
        w, l, h = ann["size"]
        assert 0.2 < w < 3.3 and 0.2 < l < 14.0 and 0.5 < h < 4.5
        assert abs(ann["translation"][2] - h / 2) < 1e-9  # boxes stand on the ground (z = 0)
    assert len(seen) >= 6  # the tiny set already covers most classes


def test_point_files_load_with_devkit(config, nusc, dataroot):
    for sample in nusc.sample:
        lidar = LidarPointCloud.from_file(nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"]))
        assert lidar.points.shape[0] == 4 and lidar.points.shape[1] > 5000
        raw = np.fromfile(nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"]), dtype=np.float32).reshape(-1, 5)
        assert set(np.unique(raw[:, 4]).astype(int)) <= set(range(config.lidar_beams))
        assert 0 <= raw[:, 3].min() and raw[:, 3].max() <= 255
        assert np.hypot(raw[:, 0], raw[:, 1]).max() <= config.lidar_max_range_m + 0.1
        total_valid = 0
        for ch in RADAR_NAMES:
            path = nusc.get_sample_data_path(sample["data"][ch])
            pc_all = RadarPointCloud.from_file(path, **ALL_RADAR_STATES)
            pc_valid = RadarPointCloud.from_file(path)
            assert pc_all.points.shape[0] == 18
            assert pc_valid.nbr_points() <= pc_all.nbr_points()
            assert np.all(pc_all.points[2] == 0.0)  # 2D radar: z = 0 in the sensor frame
            total_valid += pc_valid.nbr_points()
        assert total_valid > 20


def test_num_lidar_and_radar_pts_match_devkit_count(nusc):
    """num_lidar_pts / num_radar_pts equal the devkit's points_in_box count of the keyframe files."""
    lidar_total = radar_total = 0
    for sample in nusc.sample:
        sd_lidar = sample["data"]["LIDAR_TOP"]
        lidar = LidarPointCloud.from_file(nusc.get_sample_data_path(sd_lidar))
        lidar_g = _points_global(nusc, sd_lidar, lidar.points[:3].astype(np.float64))
        radar_g = []
        for ch in RADAR_NAMES:
            pc = RadarPointCloud.from_file(nusc.get_sample_data_path(sample["data"][ch]), **ALL_RADAR_STATES)
            radar_g.append(_points_global(nusc, sample["data"][ch], pc.points[:3]))
        radar_g = np.concatenate(radar_g, axis=1)
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            box = nusc.get_box(ann_token)
            assert int(points_in_box(box, lidar_g).sum()) == ann["num_lidar_pts"], ann["category_name"]
            assert int(points_in_box(box, radar_g).sum()) == ann["num_radar_pts"], ann["category_name"]
            lidar_total += ann["num_lidar_pts"]
            radar_total += ann["num_radar_pts"]
    assert lidar_total > 1000 and radar_total > 5


def test_projected_centre_hits_instance_mask(nusc, dataroot):
    """A well-visible vehicle's centre, projected with the devkit, lands on its own mask id."""
    inst_row = {inst["token"]: i for i, inst in enumerate(nusc.instance)}
    checked = hits = 0
    for sample in nusc.sample:
        for cam in CAMERA_NAMES:
            sd_token = sample["data"][cam]
            sd = nusc.get("sample_data", sd_token)
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            stem = Path(sd["filename"]).name.rsplit(".", 1)[0]
            mask = _read_png16(dataroot / "masks" / cam / f"{stem}.png")
            assert mask.shape == (sd["height"], sd["width"])
            _, boxes, _ = nusc.get_sample_data(sd_token)  # boxes in the camera frame
            for box in boxes:
                ann = nusc.get("sample_annotation", box.token)
                if ann["visibility_token"] != "4" or category_to_detection_name(ann["category_name"]) not in (
                        "car", "truck", "bus", "trailer", "construction_vehicle"):
                    continue
                if box.center[2] < 1.0:
                    continue
                uv = view_points(box.center[:, None], np.array(cs["camera_intrinsic"]), normalize=True)[:2, 0]
                u, v = int(uv[0]), int(uv[1])
                if not (0 <= u < sd["width"] and 0 <= v < sd["height"]):
                    continue
                checked += 1
                hits += int(mask[v, u] == inst_row[ann["instance_token"]] + 1)
    assert checked >= 3
    assert hits / checked >= 0.95, (hits, checked)


def test_depth_map_agrees_with_lidar(nusc, dataroot):
    """LiDAR returns above the ground, projected into a camera, see the surface the depth map holds
    (same scene, same timestamp). Ground is left out: at 200 px width one pixel row spans metres
    of grazing ground."""
    errors, rel = [], []
    for sample in nusc.sample:
        sd_lidar = sample["data"]["LIDAR_TOP"]
        pts = LidarPointCloud.from_file(nusc.get_sample_data_path(sd_lidar)).points[:3].astype(np.float64)
        pts_g = _points_global(nusc, sd_lidar, pts)
        pts_g = pts_g[:, pts_g[2] > 0.2]
        for cam in CAMERA_NAMES:
            sd_token = sample["data"][cam]
            sd = nusc.get("sample_data", sd_token)
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            g2c = np.linalg.inv(_sensor_to_global(nusc, sd_token))
            pc = g2c[:3, :3] @ pts_g + g2c[:3, 3:4]
            front = pc[2] > 1.0
            uv = view_points(pc[:, front], np.array(cs["camera_intrinsic"]), normalize=True)[:2]
            z = pc[2, front]
            u, v = np.floor(uv).astype(int)
            ok = (u >= 0) & (u < sd["width"]) & (v >= 0) & (v < sd["height"])
            stem = Path(sd["filename"]).name.rsplit(".", 1)[0]
            depth = _read_png16(dataroot / "depth" / cam / f"{stem}.png").astype(np.float64) / 256.0
            d = depth[v[ok], u[ok]]
            valid = d > 0
            errors.append(np.abs(d[valid] - z[ok][valid]))
            rel.append(errors[-1] / z[ok][valid])
    errors, rel = np.concatenate(errors), np.concatenate(rel)
    assert len(errors) > 5000
    assert np.median(errors) < 0.03  # LiDAR noise (~1 cm) plus the 1.5 cm inward nudge
    assert np.mean(rel < 0.05) > 0.9  # the rest: pixel-centre vs point offsets at object edges


def test_velocities_match_ground_truth(config, nusc):
    """nusc.box_velocity (centred differences of annotations) equals the generator's velocity."""
    truth = {}
    row = 0
    for scene_index in range(config.num_scenes):
        world = build_scene(config, scene_index)
        for k, t in enumerate(world.keyframe_times_s):
            vel = world.object_states(float(t)).velocity
            for i in range(len(world.objects)):
                truth[(row + i, k)] = vel[i]
        row += len(world.objects)
    assert row == len(nusc.instance)
    inst_row = {inst["token"]: i for i, inst in enumerate(nusc.instance)}
    sample_index = {}
    for scene in nusc.scene:
        tok, k = scene["first_sample_token"], 0
        while tok:
            sample_index[tok] = k
            tok, k = nusc.get("sample", tok)["next"], k + 1
    n_interior = 0
    for ann in nusc.sample_annotation:
        est = nusc.box_velocity(ann["token"])[:2]
        true = truth[(inst_row[ann["instance_token"]], sample_index[ann["sample_token"]])]
        if ann["prev"] and ann["next"]:
            n_interior += 1
            assert np.allclose(est, true, atol=0.1), (ann["category_name"], est, true)
        elif ann["prev"] or ann["next"]:
            assert np.allclose(est, true, atol=0.25), (ann["category_name"], est, true)
    assert n_interior > 10
    moving = [np.hypot(*truth[k]) for k in truth]
    assert max(moving) > 2.0  # there is traffic


def test_radar_doppler_matches_object_velocity(nusc):
    """vx_comp/vy_comp of returns inside a box is the box's true velocity projected on the ray (radial),
    and the raw Doppler differs from it by the sensor's own motion."""
    checked = 0
    for sample in nusc.sample:
        for ch in RADAR_NAMES:
            sd_token = sample["data"][ch]
            pc = RadarPointCloud.from_file(nusc.get_sample_data_path(sd_token), **ALL_RADAR_STATES)
            if pc.nbr_points() == 0:
                continue
            s2g = _sensor_to_global(nusc, sd_token)
            pts_g = s2g[:3, :3] @ pc.points[:3] + s2g[:3, 3:4]
            for ann_token in sample["anns"]:
                inside = points_in_box(nusc.get_box(ann_token), pts_g)
                if not inside.any():
                    continue
                v_sensor = s2g[:3, :3].T @ np.append(nusc.box_velocity(ann_token)[:2], 0.0)
                if np.any(np.isnan(v_sensor)):
                    continue
                xy = pc.points[:2, inside]
                u = xy / np.linalg.norm(xy, axis=0)
                radial_true = v_sensor[:2] @ u
                radial_comp = np.sum(pc.points[8:10, inside] * u, axis=0)
                assert np.allclose(radial_comp, radial_true, atol=0.6), (radial_comp, radial_true)
                checked += int(inside.sum())
    assert checked >= 5


def test_splits_are_disjoint_and_devkit_readable(config, nusc):
    with open(Path(nusc.dataroot) / config.version / "splits.json") as fh:
        splits = json.load(fh)
    train, val = set(splits["synth_train"]), set(splits["synth_val"])
    assert train and val and not train & val
    assert train | val == {s["name"] for s in nusc.scene}
    tokens = get_samples_of_custom_split("synth_val", nusc)
    assert len(tokens) == len(val) * config.keyframes_per_scene


def test_same_seed_gives_identical_files(config, dataroot, tmp_path):
    """Byte-identical tables and sensor files, also when rendered by two worker processes."""
    from dataclasses import replace

    other = generate_dataset(replace(config, num_workers=2), tmp_path / "b")
    table_dir = Path(dataroot) / config.version
    names = sorted(p.name for p in table_dir.iterdir())
    assert len(names) == 14
    _, mismatch, errors = filecmp.cmpfiles(table_dir, other / config.version, names, shallow=False)
    assert not mismatch and not errors
    files = sorted(p.relative_to(dataroot) for p in Path(dataroot).rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in Path(other).rglob("*") if p.is_file())
    for rel in files[:: max(1, len(files) // 40)]:
        assert filecmp.cmp(Path(dataroot) / rel, other / rel, shallow=False), rel


def test_different_seed_gives_different_world(config):
    from dataclasses import replace

    a = build_scene(config, 0)
    b = build_scene(replace(config, seed=config.seed + 1), 0)
    assert [o.class_name for o in a.objects] != [o.class_name for o in b.objects] or a.road != b.road


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(SynthConfig, {"num_scene": 2})
    with pytest.raises(ConfigError, match="val_fraction"):
        from_dict(SynthConfig, {"val_fraction": 1.0})
    small = load_yaml(SynthConfig, REPO / "config" / "data" / "synthetic_small.yaml")
    assert (small.num_scenes - small.num_val_scenes) * small.keyframes_per_scene == 600
    assert small.num_val_scenes * small.keyframes_per_scene == 120
    assert (small.image_width, small.image_height) == (400, 225)


def test_radar_pcd_round_trip_including_empty(tmp_path):
    """Our PCD writer produces files the devkit reads; an empty cloud reads back as 0 points."""
    from x3kd_core.data.synthetic.sensors import RADAR_FIELDS
    from x3kd_core.data.synthetic.writer import read_radar_pcd, write_radar_pcd

    pts = np.zeros(3, dtype=[(n, t) for n, t in RADAR_FIELDS])
    pts["x"], pts["y"], pts["rcs"], pts["vx_comp"] = [1.5, 20.0, 40.0], [0.5, -3.0, 2.0], [5.0, -2.0, 10.0], [0.0, -4.0, 1.0]
    pts["dyn_prop"], pts["ambig_state"], pts["invalid_state"] = [0, 1, 2], 3, [0, 0, 1]
    write_radar_pcd(tmp_path / "a.pcd", pts)
    pc = RadarPointCloud.from_file(str(tmp_path / "a.pcd"))  # default filters drop invalid_state 1
    assert pc.nbr_points() == 2
    np.testing.assert_allclose(pc.points[0], [1.5, 20.0])
    np.testing.assert_allclose(pc.points[5], [5.0, -2.0])
    np.testing.assert_allclose(pc.points[8], [0.0, -4.0])
    assert len(read_radar_pcd(tmp_path / "a.pcd")) == 3
    write_radar_pcd(tmp_path / "empty.pcd", pts[:0])
    assert RadarPointCloud.from_file(str(tmp_path / "empty.pcd")).nbr_points() == 0
    assert len(read_radar_pcd(tmp_path / "empty.pcd")) == 0


def test_ray_box_distance_golden():
    """A ray along +x from the origin hits an axis-aligned unit box centred at (5, 0, 0) at t = 4.5;
    rotated by 45 degrees, the corner is at 5 - sqrt(0.5)."""
    d = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t = ray_box_distance(np.zeros(3), d, np.array([5.0, 0, 0]), np.full(3, 0.5), 0.0)
    assert t[0] == pytest.approx(4.5) and np.isinf(t[1])
    t = ray_box_distance(np.zeros(3), d, np.array([5.0, 0, 0]), np.full(3, 0.5), np.pi / 4)
    assert t[0] == pytest.approx(5 - np.sqrt(0.5))


def test_culling_windows_contain_every_hit():
    """The image rectangle / LiDAR window of a box contains every ray that hits it (brute force)."""
    rng = np.random.default_rng(0)
    k = np.array([[100.0, 0, 80], [0, 100.0, 45], [0, 0, 1]])
    h, w = 90, 160
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    dirs = np.stack([(u - 80) / 100, (v - 45) / 100, np.ones_like(u)], axis=-1)
    elev = np.deg2rad(np.linspace(-30, 10, 32))
    az = 2 * np.pi * np.arange(360) / 360
    ldirs = np.stack(np.broadcast_arrays(np.cos(elev)[:, None] * np.cos(az), np.cos(elev)[:, None] * np.sin(az),
                                         np.sin(elev)[:, None]), axis=-1)
    for _ in range(30):
        c = rng.uniform([-4, -3, 0.3], [4, 3, 15])
        half = rng.uniform(0.2, 3.0, 3)
        yaw = rng.uniform(-np.pi, np.pi)
        t = ray_box_distance(np.zeros(3), dirs, c, half, yaw)
        u0, u1, v0, v1 = camera_rects(_corners(c, half, yaw)[None], k, w, h)[0]
        inside = np.zeros((h, w), dtype=bool)
        inside[v0:v1, u0:u1] = True
        assert not np.any(np.isfinite(t) & ~inside)
        cl = c.copy()
        cl[2] = rng.uniform(-3, 2)
        t = ray_box_distance(np.zeros(3), ldirs, cl, half, yaw)
        r0, r1, cols = spherical_windows(cl[None], half[None], np.array([yaw]), elev, 360)[0]
        inside = np.zeros((32, 360), dtype=bool)
        inside[r0:r1, slice(None) if cols is None else cols] = True
        assert not np.any(np.isfinite(t) & ~inside)


def _corners(c, half, yaw):
    from x3kd_core.geometry import box_corners

    return box_corners(c[None], 2 * half[None], np.array([yaw]))[0]


def _read_png16(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.dtype == np.uint16, path
    return image
