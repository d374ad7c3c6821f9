"""generate_dataset: world -> sensors -> nuScenes tables and files on disk.

Scenes are independent (own random streams, tokens derived from names), so they can be rendered
in any order or in parallel processes and still give byte-identical output.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from x3kd_core import geometry
from x3kd_core.config import to_dict
from x3kd_core.data.fingerprint import GENERATOR_CONFIG_FILENAME
from x3kd_core.data.synthetic import appearance as app
from x3kd_core.data.synthetic import writer
from x3kd_core.data.synthetic.config import SynthConfig
from x3kd_core.data.synthetic.raycast import local_coordinates
from x3kd_core.data.synthetic.sensors import (
    CameraRenderer, LidarScanner, RadarScene, RadarSensor, camera_specs, lidar_spec, radar_specs,
)
from x3kd_core.data.synthetic.world import SceneWorld, build_scene, scene_rng

#: Parts farther than this from the ego (m, horizontal, minus their own size) are not rendered.
RENDER_RADIUS_M = 160.0
TIMESTAMP_BASE_US = 1_600_000_000_000_000
SCENE_SPACING_US = 3_600_000_000  # one hour between scenes


def scene_timestamp_us(scene_index: int, t_s: float) -> int:
    return TIMESTAMP_BASE_US + scene_index * SCENE_SPACING_US + int(round(t_s * 1e6))


def count_points_in_boxes(points: np.ndarray, center: np.ndarray, size_lwh: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Number of points (P, 3) inside each box (N,) (boundaries inclusive, as nuscenes-devkit's
    points_in_box). All in one frame."""
    counts = np.zeros(len(center), dtype=np.int64)
    if len(points) == 0 or len(center) == 0:
        return counts
    # Only points in the boxes' height band can count; sort by x to cut each box's candidates.
    z_lo = (center[:, 2] - size_lwh[:, 2] / 2).min()
    z_hi = (center[:, 2] + size_lwh[:, 2] / 2).max()
    points = points[(points[:, 2] >= z_lo) & (points[:, 2] <= z_hi)]
    points = points[np.argsort(points[:, 0], kind="stable")]
    xs = points[:, 0]
    reach = 0.5 * np.linalg.norm(size_lwh[:, :2], axis=1) + 1e-6
    lo = np.searchsorted(xs, center[:, 0] - reach, side="left")
    hi = np.searchsorted(xs, center[:, 0] + reach, side="right")
    for i in range(len(center)):
        sub = points[lo[i]:hi[i]]
        if len(sub) == 0:
            continue
        q = local_coordinates(sub, np.broadcast_to(center[i], sub.shape), np.full(len(sub), yaw[i]))
        counts[i] = int(np.all(np.abs(q) <= size_lwh[i] / 2.0, axis=1).sum())
    return counts


class _SceneRenderer:
    """Renders the sensors of one scene at arbitrary times."""

    def __init__(self, config: SynthConfig, world: SceneWorld):
        self.config = config
        self.world = world
        self.cameras = [CameraRenderer(s) for s in camera_specs(config)]
        self.lidar = LidarScanner(lidar_spec(), config)
        self.radars = [RadarSensor(s) for s in radar_specs()]
        self.local_parts = [app.object_parts(o, fronts=config.object_fronts) for o in world.objects]
        bg = world.background
        self.background = app.place_parts(
            [app.background_parts(b) for b in bg], [-1] * len(bg),
            np.array([b.center_xyz for b in bg]).reshape(-1, 3), np.array([b.size_lwh for b in bg]).reshape(-1, 3),
            np.array([b.yaw for b in bg]),
        )

    def frame(self, t: float):
        """(ego pose (4, 4), object states (global), parts in the ego frame) at time t."""
        world = self.world
        pose = world.ego_pose(t)
        states = world.object_states(t)
        objects = app.place_parts(self.local_parts, list(range(len(world.objects))), states.center, states.size_lwh, states.yaw)
        parts = app.concat_parts([objects, self.background])
        ego_xy = pose[:2, 3]
        reach = np.hypot(*(parts.center[:, :2] - ego_xy).T) - np.linalg.norm(parts.half[:, :2], axis=1)
        parts = app.select_parts(parts, reach < RENDER_RADIUS_M)
        return pose, states, parts.transformed(geometry.invert_transform(pose))

    def radar_scene(self, t: float, pose: np.ndarray, states) -> RadarScene:
        world = self.world
        g2e = geometry.invert_transform(pose)
        rot2 = g2e[:2, :2]
        v_ego, yaw_rate = world.ego_velocity(t)
        center = states.center @ g2e[:3, :3].T + g2e[:3, 3]
        dyaw = float(np.arctan2(g2e[1, 0], g2e[0, 0]))
        return RadarScene(
            object_center=center,
            object_size=states.size_lwh,
            object_yaw=states.yaw + dyaw,
            object_velocity=states.velocity @ rot2.T,
            object_class=[o.class_name for o in world.objects],
            ego_velocity=g2e[:3, :3] @ v_ego,
            ego_yaw_rate=yaw_rate,
        )


def render_scene(config: SynthConfig, scene_index: int, instance_offset: int, dataroot: str) -> writer.SceneRecords:
    """Render and write all files of one scene; return its table rows."""
    root = Path(dataroot)
    seed = config.seed
    tok = lambda *key: writer.make_token(seed, *key)  # noqa: E731
    world = build_scene(config, scene_index)
    renderer = _SceneRenderer(config, world)
    rec = writer.SceneRecords()
    tables = rec.tables
    log_name = f"synth-{seed}-{scene_index:04d}"
    scene_token = tok("scene", scene_index)
    log_token = tok("log", scene_index)
    tables["log"].append({
        "token": log_token, "logfile": log_name, "vehicle": "synth-ego", "date_captured": "2024-01-01",
        "location": "synth-city",
    })

    cam_specs = camera_specs(config)
    all_specs = cam_specs + [lidar_spec()] + radar_specs()
    calib_token = {}
    for spec in all_specs:
        calib_token[spec.name] = tok("calibrated_sensor", scene_index, spec.name)
        tables["calibrated_sensor"].append({
            "token": calib_token[spec.name],
            "sensor_token": tok("sensor", spec.name),
            "translation": [float(v) for v in spec.translation],
            "rotation": [float(v) for v in spec.rotation_wxyz],
            "camera_intrinsic": spec.intrinsics.tolist() if spec.intrinsics is not None else [],
        })

    num_kf = config.keyframes_per_scene
    num_obj = len(world.objects)
    sample_tokens = [tok("sample", scene_index, k) for k in range(num_kf)]
    for k in range(num_kf):
        tables["sample"].append({
            "token": sample_tokens[k],
            "timestamp": scene_timestamp_us(scene_index, float(world.keyframe_times_s[k])),
            "prev": sample_tokens[k - 1] if k > 0 else "",
            "next": sample_tokens[k + 1] if k + 1 < num_kf else "",
            "scene_token": scene_token,
        })
    desc_road = "straight road" if world.road.curvature == 0 else f"curve radius {abs(1 / world.road.curvature):.0f} m"
    tables["scene"].append({
        "token": scene_token, "log_token": log_token, "nbr_samples": num_kf,
        "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
        "name": world.name, "description": f"synthetic, {desc_road}, ego {world.ego_speed_mps:.1f} m/s",
    })

    # Per-channel chains of sample_data: (time, keyframe index, sweep index or -1).
    def sd_token(channel: str, k: int, j: int) -> str:
        return tok("sample_data", scene_index, channel, k, j)

    chains: dict[str, list[tuple[float, int, int]]] = {}
    for spec in all_specs:
        frames = []
        for k in range(num_kf):
            if spec.modality != "camera":
                frames += [(float(world.sweep_times_s[k, j]), k, j) for j in range(config.sweeps_per_keyframe)]
            frames.append((float(world.keyframe_times_s[k]), k, -1))
        chains[spec.name] = frames

    sd_rows: dict[tuple[str, int, int], dict] = {}
    for spec in all_specs:
        frames = chains[spec.name]
        for n, (t, k, j) in enumerate(frames):
            ts = scene_timestamp_us(scene_index, t)
            token = sd_token(spec.name, k, j)
            key_frame = j < 0
            if spec.modality == "camera":
                ext, fmt = "jpg", "jpg"
            elif spec.modality == "lidar":
                ext, fmt = "pcd.bin", "pcd"
            else:
                ext, fmt = "pcd", "pcd"
            folder = "samples" if key_frame else "sweeps"
            filename = f"{folder}/{spec.name}/{log_name}__{spec.name}__{ts}.{ext}"
            row = {
                "token": token, "sample_token": sample_tokens[k], "ego_pose_token": token,
                "calibrated_sensor_token": calib_token[spec.name], "timestamp": ts, "fileformat": fmt,
                "is_key_frame": key_frame,
                "height": spec.image_hw[0] if spec.image_hw else 0, "width": spec.image_hw[1] if spec.image_hw else 0,
                "filename": filename,
                "prev": sd_token(spec.name, *frames[n - 1][1:]) if n > 0 else "",
                "next": sd_token(spec.name, *frames[n + 1][1:]) if n + 1 < len(frames) else "",
            }
            sd_rows[(spec.name, k, j)] = row
            tables["sample_data"].append(row)
            pose = world.ego_pose(t)
            tables["ego_pose"].append({
                "token": token, "timestamp": ts,
                "rotation": [float(v) for v in geometry.matrix_to_quaternion(pose[:3, :3])],
                "translation": [float(v) for v in pose[:3, 3]],
            })

    # Render: sweeps (LiDAR + radar) and keyframes (everything).
    lidar_count = np.zeros((num_obj, num_kf), dtype=np.int64)
    radar_count = np.zeros((num_obj, num_kf), dtype=np.int64)
    vis_fraction = np.zeros((num_obj, num_kf))
    states_kf = []
    for k in range(num_kf):
        for j in range(config.sweeps_per_keyframe):
            t = float(world.sweep_times_s[k, j])
            pose, states, parts = renderer.frame(t)
            pts = renderer.lidar.scan(parts, world.road, pose, scene_rng(config, scene_index, f"lidar/{k}/{j}"))
            writer.write_lidar_bin(root / sd_rows[("LIDAR_TOP", k, j)]["filename"], pts)
            rec.num_lidar_points += len(pts)
            rscene = renderer.radar_scene(t, pose, states)
            for radar in renderer.radars:
                rp = radar.scan(parts, rscene, scene_rng(config, scene_index, f"{radar.spec.name}/{k}/{j}"))
                writer.write_radar_pcd(root / sd_rows[(radar.spec.name, k, j)]["filename"], rp)
                rec.num_radar_points += len(rp)

        t = float(world.keyframe_times_s[k])
        pose, states, parts = renderer.frame(t)
        states_kf.append(states)
        g2e = geometry.invert_transform(pose)
        center_ego = states.center @ g2e[:3, :3].T + g2e[:3, 3]
        yaw_ego = states.yaw + float(np.arctan2(g2e[1, 0], g2e[0, 0]))
        annotated = world.annotated[:, k]
        # Instance ids in the masks: only objects annotated in this sample get one.
        mask_value = np.where(annotated, instance_offset + np.arange(num_obj) + 1, 0).astype(np.int64)
        sun_ego = g2e[:3, :3] @ world.sun_dir_global
        visible = np.zeros(num_obj)
        total = np.zeros(num_obj)
        for cam in renderer.cameras:
            name = cam.spec.name
            frame = cam.render(parts, num_obj, world.road, pose, sun_ego, config.depth_max_m,
                               scene_rng(config, scene_index, f"{name}/{k}"), world.exposure)
            visible += frame.visible_px
            total += frame.total_px
            image_path = sd_rows[(name, k, -1)]["filename"]
            writer.write_image(root / image_path, frame.rgb, config.jpeg_quality)
            stem = Path(image_path).name.rsplit(".", 1)[0] + ".png"
            inst = np.where(frame.owner >= 0, mask_value[np.maximum(frame.owner, 0)] if num_obj else 0, 0)
            writer.write_png16(root / "masks" / name / stem, inst)
            depth = np.clip(np.round(frame.depth_m.astype(np.float64) * 256.0), 0, 65535)
            writer.write_png16(root / "depth" / name / stem, depth)
        vis_fraction[:, k] = np.where(total > 0, visible / np.maximum(total, 1), 0.0)

        pts = renderer.lidar.scan(parts, world.road, pose, scene_rng(config, scene_index, f"lidar/{k}/key"))
        writer.write_lidar_bin(root / sd_rows[("LIDAR_TOP", k, -1)]["filename"], pts)
        rec.num_lidar_points += len(pts)
        # Count what was written (float32), in the ego frame of this keyframe.
        lidar_to_ego = renderer.lidar.spec.to_ego
        pts_ego = pts[:, :3].astype(np.float64) @ lidar_to_ego[:3, :3].T + lidar_to_ego[:3, 3]
        lidar_count[:, k] = count_points_in_boxes(pts_ego, center_ego, states.size_lwh, yaw_ego)
        rscene = renderer.radar_scene(t, pose, states)
        radar_pts_ego = []
        for radar in renderer.radars:
            rp = radar.scan(parts, rscene, scene_rng(config, scene_index, f"{radar.spec.name}/{k}/key"))
            path = root / sd_rows[(radar.spec.name, k, -1)]["filename"]
            writer.write_radar_pcd(path, rp)
            rec.num_radar_points += len(rp)
            xyz = np.stack([rp["x"], rp["y"], rp["z"]], axis=1).astype(np.float64)
            radar_pts_ego.append(xyz @ radar.spec.to_ego[:3, :3].T + radar.spec.to_ego[:3, 3])
        radar_count[:, k] = count_points_in_boxes(np.concatenate(radar_pts_ego), center_ego, states.size_lwh, yaw_ego)

    # Instances and annotations.
    for i, obj in enumerate(world.objects):
        frames = np.flatnonzero(world.annotated[i])
        inst_token = tok("instance", scene_index, i)
        ann_tokens = [tok("sample_annotation", scene_index, i, int(k)) for k in frames]
        tables["instance"].append({
            "token": inst_token, "category_token": tok("category", obj.category),
            "nbr_annotations": len(frames), "first_annotation_token": ann_tokens[0],
            "last_annotation_token": ann_tokens[-1],
        })
        for n, k in enumerate(frames):
            st = states_kf[k]
            box = geometry.box_to_nuscenes(st.center[i], st.size_lwh[i], float(st.yaw[i]))
            tables["sample_annotation"].append({
                "token": ann_tokens[n], "sample_token": sample_tokens[k], "instance_token": inst_token,
                "visibility_token": writer.visibility_token(float(vis_fraction[i, k])),
                "attribute_tokens": [tok("attribute", obj.attribute)] if obj.attribute else [],
                "translation": list(box.center), "size": list(box.wlh), "rotation": list(box.rotation_wxyz),
                "prev": ann_tokens[n - 1] if n > 0 else "", "next": ann_tokens[n + 1] if n + 1 < len(frames) else "",
                "num_lidar_pts": int(lidar_count[i, k]), "num_radar_pts": int(radar_count[i, k]),
            })
    rec.num_keyframes = num_kf
    return rec


def generate_dataset(config: SynthConfig, dataroot: str | Path) -> Path:
    """Write a nuScenes-format dataset for ``config`` at ``dataroot`` and return ``dataroot``.

    Layout: ``<dataroot>/<version>/*.json`` (13 tables) and ``splits.json`` (synth_train /
    synth_val -> scene names), ``samples/`` and ``sweeps/`` sensor files, ``masks/<CAM>/*.png``
    (uint16 instance maps: v > 0 is row v - 1 of instance.json, only for objects annotated in that
    sample) and ``depth/<CAM>/*.png`` (uint16 depth * 256, 0 = none) for keyframe images.
    Deterministic: the same config gives byte-identical tables and files.
    """
    root = Path(dataroot)
    root.mkdir(parents=True, exist_ok=True)
    # Worlds are cheap; build them first to know each scene's instance-row offset.
    counts = [len(build_scene(config, i).objects) for i in range(config.num_scenes)]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    if sum(counts) >= 65535:
        raise ValueError(f"{sum(counts)} instances do not fit the uint16 instance masks; use fewer scenes/objects")

    args = [(config, i, offsets[i], str(root)) for i in range(config.num_scenes)]
    if config.num_workers > 1 and config.num_scenes > 1:
        # fork (as torch's DataLoader on Linux): works from scripts without a __main__ guard;
        # workers only run numpy/OpenCV code.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=min(config.num_workers, config.num_scenes), mp_context=ctx) as pool:
            records = list(pool.map(render_scene, *zip(*args)))
    else:
        records = [render_scene(*a) for a in args]

    tables = {name: [] for name in writer.TABLE_NAMES}
    tables.update(writer.static_tables(config.seed))
    seed = config.seed
    tables["sensor"] = [
        {"token": writer.make_token(seed, "sensor", s.name), "channel": s.name, "modality": s.modality}
        for s in camera_specs(config) + [lidar_spec()] + radar_specs()
    ]
    for rec in records:
        for name, rows in rec.tables.items():
            tables[name].extend(rows)
    tables["map"] = [{
        "token": writer.make_token(seed, "map", 0), "log_tokens": [row["token"] for row in tables["log"]],
        "category": "semantic_prior", "filename": writer.MAP_FILENAME,
    }]
    writer.write_map_png(root)
    table_dir = root / config.version
    writer.write_tables(table_dir, tables)
    names = [row["name"] for row in tables["scene"]]
    n_val = config.num_val_scenes
    splits = {"synth_train": names[: len(names) - n_val], "synth_val": names[len(names) - n_val:]}
    with open(table_dir / "splits.json", "w") as fh:
        json.dump(splits, fh, indent=1)
    # The config this world came from, part of its fingerprint (x3kd_core.data.fingerprint). Options
    # added after the first worlds were made are written only when set, so that regenerating an
    # older world gives the file (and fingerprint) it had.
    recorded = to_dict(config)
    if not config.object_fronts:
        recorded.pop("object_fronts")
    with open(root / GENERATOR_CONFIG_FILENAME, "w") as fh:
        yaml.safe_dump(recorded, fh, sort_keys=True)
    return root
