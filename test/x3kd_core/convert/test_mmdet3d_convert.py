"""mmdet3d CenterPoint-pillar -> x3kd converter and mirror, on synthetic mmdet3d-shaped state dicts.

The state dicts here are written from mmdet3d 1.4's source (PillarFeatureNet / PFNLayer, SECOND,
SECONDFPN, CenterHead / SeparateHead / ConvModule), NOT from the mirror's own state_dict, so a
renamed or reshaped mirror layer fails here. Parity with the real mmdet3d forward is
test_mmdet3d_parity.py (committed fixture).
"""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch

from x3kd_core.checkpoint import CheckpointError
from x3kd_core.config import ConfigError
from x3kd_core.convert.mmdet3d import (
    KNOWN_CENTERPOINT_CONFIGS,
    centerpoint_state_dict,
    convert_centerpoint,
    load_openmmlab_checkpoint,
)
from x3kd_core.models.heads.center_head import CenterHead, CenterHeadConfig
from x3kd_core.models.teachers.centerpoint_mm import (
    CenterPointMM,
    CenterPointMMConfig,
    MMBevDetectorOutputs,
    hard_voxelize,
)
from x3kd_core.structures import DETECTION_CLASSES

NUS = "centerpoint_pillar02_second_secfpn_head-circlenms_8xb4-cyclic-20e_nus-3d"

#: A small CenterPoint-pillar on the *_tiny experiments' grid (+-25.6 m, 1.6 m cells).
TINY = CenterPointMMConfig(
    point_cloud_range=(-25.6, -25.6, -5.0, 25.6, 25.6, 3.0), voxel_size=(0.4, 0.4, 8.0), max_num_points=6,
    max_voxels=(3000, 4000), pfn_channels=(8,), backbone_channels=(8, 8, 16), backbone_layers=(1, 1, 1),
    neck_channels=(8, 8, 8), share_conv_channels=8, head_conv_channels=8,
    tasks=(("car",), ("truck", "construction_vehicle"), ("bus", "trailer"), ("barrier",),
           ("motorcycle", "bicycle"), ("pedestrian", "traffic_cone")),
    nms_type="circle", source="tiny-test",
)


def _bn(prefix: str, c: int, gen: torch.Generator) -> dict:
    return {f"{prefix}.weight": 1 + 0.1 * torch.randn(c, generator=gen), f"{prefix}.bias": 0.1 * torch.randn(c, generator=gen),
            f"{prefix}.running_mean": 0.1 * torch.randn(c, generator=gen),
            f"{prefix}.running_var": 1 + 0.1 * torch.rand(c, generator=gen),
            f"{prefix}.num_batches_tracked": torch.tensor(7)}


def mmdet3d_state_dict(cfg: CenterPointMMConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the keys and shapes mmdet3d 1.4's CenterPoint-pillar saves."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: 0.1 * torch.randn(*shape, generator=g)  # noqa: E731
    sd: dict[str, torch.Tensor] = {}
    # PillarFeatureNet: in = C + 3 (cluster) + 3 (voxel centre); PFNLayer: linear (no bias) + norm (BN1d).
    c_in = cfg.point_channels + 6
    for i, c in enumerate(cfg.pfn_channels):
        units = c if i == len(cfg.pfn_channels) - 1 else c // 2
        sd[f"pts_voxel_encoder.pfn_layers.{i}.linear.weight"] = r(units, c_in)
        sd.update(_bn(f"pts_voxel_encoder.pfn_layers.{i}.norm", units, g))
        c_in = 2 * units
    # SECOND: blocks.i = [conv, BN, ReLU] * (1 + layer_num).
    c_in = cfg.pfn_channels[-1]
    for i, (c, n) in enumerate(zip(cfg.backbone_channels, cfg.backbone_layers)):
        for k in range(n + 1):
            sd[f"pts_backbone.blocks.{i}.{3 * k}.weight"] = r(c, c_in if k == 0 else c, 3, 3)
            sd.update(_bn(f"pts_backbone.blocks.{i}.{3 * k + 1}", c, g))
        c_in = c
    # SECONDFPN: deblocks.i = [deconv (in, out, k, k) | conv (out, in, k, k), BN, ReLU].
    for i, (ci, co, s) in enumerate(zip(cfg.backbone_channels, cfg.neck_channels, cfg.neck_upsample_strides)):
        k = int(round(s)) if s > 1 else int(round(1 / s))
        sd[f"pts_neck.deblocks.{i}.0.weight"] = r(ci, co, k, k) if s > 1 else r(co, ci, k, k)
        sd.update(_bn(f"pts_neck.deblocks.{i}.1", co, g))
    # CenterHead: shared_conv ConvModule(conv, bn); per task SeparateHead with ConvModule + final conv.
    sd["pts_bbox_head.shared_conv.conv.weight"] = r(cfg.share_conv_channels, sum(cfg.neck_channels), 3, 3)
    sd.update(_bn("pts_bbox_head.shared_conv.bn", cfg.share_conv_channels, g))
    for t, names in enumerate(cfg.tasks):
        for head, out in (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2), ("heatmap", len(names))):
            p = f"pts_bbox_head.task_heads.{t}.{head}"
            sd[f"{p}.0.conv.weight"] = r(cfg.head_conv_channels, cfg.share_conv_channels, 3, 3)
            sd.update(_bn(f"{p}.0.bn", cfg.head_conv_channels, g))
            sd[f"{p}.1.weight"] = r(out, cfg.head_conv_channels, 3, 3)
            sd[f"{p}.1.bias"] = torch.full((out,), -2.19) if head == "heatmap" else r(out)
    return sd


def _points(n: int, seed: int = 0, span: float = 24.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = (torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor([span, span, 2.5])
    return torch.cat([xyz, torch.rand(n, 1, generator=g) * 255, torch.rand(n, 1, generator=g) * 0.5], dim=1)


def test_full_nuscenes_config_key_set_and_shapes_match_mmdet3d():
    cfg = KNOWN_CENTERPOINT_CONFIGS[NUS]
    sd = mmdet3d_state_dict(cfg)
    mapped = centerpoint_state_dict(sd, cfg)
    assert len(mapped) == len(sd) == 414
    model = CenterPointMM(cfg)
    model.load_state_dict(mapped)
    # ~6 M parameters: CenterPoint-pillar's published size.
    assert 5.9e6 < sum(p.numel() for p in model.parameters()) < 6.1e6
    assert cfg.grid_shape == (512, 512, 1) and cfg.bev_cell_m == pytest.approx(0.8)


def test_mismatched_weights_are_named():
    cfg = TINY
    sd = mmdet3d_state_dict(cfg)
    dropped = dict(sd)
    del dropped["pts_bbox_head.task_heads.2.vel.1.bias"]
    with pytest.raises(CheckpointError, match=r"missing 1: \['bbox_head.task_heads.2.vel.1.bias'\]"):
        centerpoint_state_dict(dropped, cfg)
    dcn = dict(sd, **{"pts_bbox_head.task_heads.0.feature_adapt_cls.conv_offset.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="feature_adapt_cls"):
        centerpoint_state_dict(dcn, cfg)
    wide = dict(sd, **{"pts_bbox_head.shared_conv.conv.weight": torch.zeros(16, 24, 3, 3)})
    with pytest.raises(CheckpointError, match=r"shared_conv.conv.weight has shape \(16, 24, 3, 3\).*needs \(8, 24, 3, 3\)"):
        centerpoint_state_dict(wide, cfg)


def test_unknown_class_and_config_name_are_clear_errors():
    with pytest.raises(ConfigError, match="'van' is not a nuScenes detection class"):
        dataclasses.replace(TINY, tasks=(("car", "van"),), min_radius=(1.0,))
    with pytest.raises(ConfigError, match="known: "):
        convert_centerpoint("x.pth", "centerpoint_voxel0075", "out.pt")


class _NotAllowed:
    pass


def test_safe_loading_allows_numpy_meta_and_refuses_classes(tmp_path):
    sd = mmdet3d_state_dict(TINY)
    ok = tmp_path / "ok.pth"
    torch.save({"meta": {"epoch": np.int64(20), "best": np.float64(0.5), "arr": np.arange(3),
                         "dataset_meta": {"classes": list(TINY.class_names)}},
                "state_dict": sd}, ok)
    state, meta = load_openmmlab_checkpoint(ok)
    assert len(state) == len(sd) and int(meta["epoch"]) == 20
    bad = tmp_path / "bad.pth"
    torch.save({"meta": {"hook": _NotAllowed()}, "state_dict": sd}, bad)
    with pytest.raises(CheckpointError, match="_NotAllowed"):
        load_openmmlab_checkpoint(bad)


def test_class_order_mismatch_names_both_lists(tmp_path):
    src = tmp_path / "cp.pth"
    swapped = list(TINY.class_names)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    torch.save({"meta": {"CLASSES": tuple(swapped)}, "state_dict": mmdet3d_state_dict(TINY)}, src)
    with pytest.raises(CheckpointError, match=r"classes \['truck', 'car'.*differ.*\['car', 'truck'"):
        convert_centerpoint(src, TINY, tmp_path / "out.pt")


# ------------------------------------------------------------------------------ voxelisation


def _mmcv_hard_voxelize_loop(points: np.ndarray, cfg: CenterPointMMConfig, max_voxels: int):
    """mmcv's CPU hard_voxelize_forward, transcribed as a plain loop (the reference)."""
    rng = np.asarray(cfg.point_cloud_range, np.float32)
    vs = np.asarray(cfg.voxel_size, np.float32)
    grid = np.round((rng[3:] - rng[:3]) / vs).astype(np.int64)
    index_of: dict[tuple, int] = {}
    voxels = np.zeros((max_voxels, cfg.max_num_points, points.shape[1]), np.float32)
    coors, counts = [], []
    for p in points.astype(np.float32):
        c = np.floor((p[:3] - rng[:3]) / vs).astype(np.int64)
        if (c < 0).any() or (c >= grid).any():
            continue
        key = (int(c[2]), int(c[1]), int(c[0]))
        v = index_of.get(key)
        if v is None:
            if len(coors) >= max_voxels:
                continue
            v = index_of[key] = len(coors)
            coors.append(key)
            counts.append(0)
        if counts[v] < cfg.max_num_points:
            voxels[v, counts[v]] = p
            counts[v] += 1
    return voxels[: len(coors)], np.asarray(coors, np.int32).reshape(-1, 3), np.asarray(counts, np.int32)


@pytest.mark.parametrize("max_voxels", [4000, 150])
def test_hard_voxelize_equals_mmcv_loop(max_voxels):
    """Crowded pillars (many points over max_num_points) and a pillar budget that runs out."""
    cfg = dataclasses.replace(TINY, max_voxels=(max_voxels, max_voxels))
    g = torch.Generator().manual_seed(3)
    pts = _points(3000, seed=1, span=30.0)  # part of it out of range
    pts[:800, :2] = torch.round(pts[:800, :2] / 4) * 4 + 0.1 * torch.rand(800, 2, generator=g)  # stacked pillars
    got = hard_voxelize(pts, cfg, training=False)
    ref_v, ref_c, ref_n = _mmcv_hard_voxelize_loop(pts.numpy(), cfg, max_voxels)
    assert got.coors.shape[0] == ref_c.shape[0] and (max_voxels == 4000 or ref_c.shape[0] == 150)
    np.testing.assert_array_equal(got.coors.numpy(), ref_c)
    np.testing.assert_array_equal(got.num_points.numpy(), ref_n)
    np.testing.assert_array_equal(got.voxels.numpy(), ref_v)
    assert int(ref_n.max()) == cfg.max_num_points


# ------------------------------------------------------------------------------ layout and decoding


def test_decoded_box_lands_where_x3kd_decodes_it():
    """One peak written into mmdet3d's (N_y, N_x) maps decodes to the same box through the mirror
    and, after the merge to x3kd's (N_x, N_y) layout, through x3kd's own CenterHead decoding."""
    cfg = dataclasses.replace(TINY, nms_type="circle")
    model = CenterPointMM(cfg).eval()
    n = 32
    row_y, col_x = 10, 20
    tasks = []
    for names in cfg.tasks:
        maps = {k: torch.zeros(1, c, n, n) for k, c in (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))}
        maps["heatmap"] = torch.full((1, len(names), n, n), -10.0)
        tasks.append(maps)
    truck = tasks[1]
    truck["heatmap"][0, 0, row_y, col_x] = 3.0
    truck["reg"][0, :, row_y, col_x] = torch.tensor([0.5, 0.25])
    truck["height"][0, 0, row_y, col_x] = 1.0
    truck["dim"][0, :, row_y, col_x] = torch.log(torch.tensor([6.0, 2.5, 3.0]))
    truck["rot"][0, :, row_y, col_x] = torch.tensor([math.sin(0.3), math.cos(0.3)])
    truck["vel"][0, :, row_y, col_x] = torch.tensor([2.0, -1.0])
    outputs = MMBevDetectorOutputs(bev_features=torch.zeros(1, 1, n, n), head=model.merged_head(tasks), task_outputs=tasks)
    (boxes,) = model.predict(outputs)
    assert len(boxes.label) == 1 and DETECTION_CLASSES[boxes.label[0]] == "truck"
    expect = [(col_x + 0.5) * 1.6 - 25.6, (row_y + 0.25) * 1.6 - 25.6, 1.0]
    np.testing.assert_allclose(boxes.center[0], expect, atol=1e-5)
    np.testing.assert_allclose(boxes.size_lwh[0], [6.0, 2.5, 3.0], rtol=1e-5)
    assert boxes.yaw[0] == pytest.approx(0.3, abs=1e-6) and boxes.score[0] == pytest.approx(1 / (1 + math.exp(-3)))
    # x3kd layout: heatmap[b, class, i_x, j_y]; x3kd's decoder finds the same box.
    assert outputs.head.heatmap[0, DETECTION_CLASSES.index("truck"), col_x, row_y] == 3.0
    from x3kd_core.config import BevGridConfig

    grid = BevGridConfig(x_range_m=(-25.6, 25.6), y_range_m=(-25.6, 25.6), cell_size_m=1.6)
    (x3kd_boxes,) = CenterHead(CenterHeadConfig(), 8, grid).predict(outputs.head)
    assert len(x3kd_boxes.label) == 1
    np.testing.assert_allclose(x3kd_boxes.center[0], expect, atol=1e-5)
    np.testing.assert_allclose(x3kd_boxes.velocity[0], [2.0, -1.0], atol=1e-6)


def test_converted_checkpoint_loads_as_a_lidar_teacher(tmp_path):
    from x3kd_core.experiment.loader import load_model
    from x3kd_core.models.teachers.lidar import LidarDetector

    src = tmp_path / "centerpoint.pth"
    sd = mmdet3d_state_dict(TINY, seed=4)
    torch.save({"meta": {"dataset_meta": {"classes": list(TINY.class_names)}}, "state_dict": sd}, src)
    out = convert_centerpoint(src, TINY, tmp_path / "teacher.pt", grid_z_range_m=(-3.0, 5.0))
    model, exp = load_model(out, kinds=("lidar",))
    assert isinstance(model, LidarDetector) and exp.grid.cell_size_m == pytest.approx(1.6)
    assert exp.grid.z_range_m == (-3.0, 5.0) and exp.data.lidar_sweeps == 10
    model.eval()
    torch.testing.assert_close(model.mirror.bbox_head.task_heads[3].rot[1].weight,
                               sd["pts_bbox_head.task_heads.3.rot.1.weight"])
    with torch.no_grad():
        out_a = model([_points(2000, seed=5), _points(500, seed=6)])
    assert out_a.bev_features.shape == (2, 24, 32, 32) and model.bev_channels == 24
    assert out_a.head.heatmap.shape == (2, 10, 32, 32) and torch.isfinite(out_a.head.heatmap).all()
    boxes = model.predict(out_a)
    assert len(boxes) == 2 and all(np.isin(b.label, [DETECTION_CLASSES.index(c) for c in TINY.class_names]).all()
                                   for b in boxes)


def _nus_pillar_model_config(nms_type: str) -> dict:
    """mmdet3d 1.4's configs/_base_/models/centerpoint_pillar02_second_secfpn_nus.py with the
    overrides of configs/centerpoint/centerpoint_pillar02_second_secfpn_8xb4-cyclic-20e_nus-3d.py,
    as ``Config.fromfile(...).model`` gives it (parts the mirror does not read left out)."""
    pcr = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
    return dict(
        type="CenterPoint",
        data_preprocessor=dict(type="Det3DDataPreprocessor", voxel=True, voxel_layer=dict(
            max_num_points=20, voxel_size=[0.2, 0.2, 8], max_voxels=(30000, 40000), point_cloud_range=pcr)),
        pts_voxel_encoder=dict(type="PillarFeatureNet", in_channels=5, feat_channels=[64], with_distance=False,
                               voxel_size=(0.2, 0.2, 8), norm_cfg=dict(type="BN1d", eps=1e-3, momentum=0.01),
                               legacy=False, point_cloud_range=pcr),
        pts_middle_encoder=dict(type="PointPillarsScatter", in_channels=64, output_shape=(512, 512)),
        pts_backbone=dict(type="SECOND", in_channels=64, out_channels=[64, 128, 256], layer_nums=[3, 5, 5],
                          layer_strides=[2, 2, 2], norm_cfg=dict(type="BN", eps=1e-3, momentum=0.01),
                          conv_cfg=dict(type="Conv2d", bias=False)),
        pts_neck=dict(type="SECONDFPN", in_channels=[64, 128, 256], out_channels=[128, 128, 128],
                      upsample_strides=[0.5, 1, 2], norm_cfg=dict(type="BN", eps=1e-3, momentum=0.01),
                      upsample_cfg=dict(type="deconv", bias=False), use_conv_for_no_stride=True),
        pts_bbox_head=dict(
            type="CenterHead", in_channels=384,
            tasks=[dict(num_class=1, class_names=["car"]), dict(num_class=2, class_names=["truck", "construction_vehicle"]),
                   dict(num_class=2, class_names=["bus", "trailer"]), dict(num_class=1, class_names=["barrier"]),
                   dict(num_class=2, class_names=["motorcycle", "bicycle"]),
                   dict(num_class=2, class_names=["pedestrian", "traffic_cone"])],
            common_heads=dict(reg=(2, 2), height=(1, 2), dim=(3, 2), rot=(2, 2), vel=(2, 2)),
            share_conv_channel=64,
            bbox_coder=dict(type="CenterPointBBoxCoder", post_center_range=[-61.2, -61.2, -10.0, 61.2, 61.2, 10.0],
                            max_num=500, score_threshold=0.1, out_size_factor=4, voxel_size=[0.2, 0.2], code_size=9,
                            pc_range=pcr[:2]),
            separate_head=dict(type="SeparateHead", init_bias=-2.19, final_kernel=3), norm_bbox=True),
        test_cfg=dict(pts=dict(post_center_limit_range=[-61.2, -61.2, -10.0, 61.2, 61.2, 10.0], max_per_img=500,
                               max_pool_nms=False, min_radius=[4, 12, 10, 1, 0.85, 0.175], score_threshold=0.1,
                               pc_range=pcr[:2], out_size_factor=4, voxel_size=[0.2, 0.2], nms_type=nms_type,
                               pre_max_size=1000, post_max_size=83, nms_thr=0.2)),
    )


@pytest.mark.parametrize("name,nms", [(NUS, "circle"), (NUS.replace("_head-circlenms", ""), "rotate")])
def test_known_configs_equal_what_mmdet3d_config_files_say(name, nms):
    from x3kd_core.convert.mmdet3d import config_from_mmdet3d_model

    assert config_from_mmdet3d_model(_nus_pillar_model_config(nms), source=name) == KNOWN_CENTERPOINT_CONFIGS[name]


def test_unsupported_mmdet3d_settings_are_refused_by_name():
    from x3kd_core.convert.mmdet3d import config_from_mmdet3d_model

    dcn = _nus_pillar_model_config("circle")
    dcn["pts_bbox_head"]["separate_head"] = dict(type="DCNSeparateHead", dcn_config={}, init_bias=-2.19, final_kernel=3)
    with pytest.raises(ConfigError, match="DCNSeparateHead"):
        config_from_mmdet3d_model(dcn)
    legacy = _nus_pillar_model_config("circle")
    legacy["pts_voxel_encoder"]["legacy"] = True
    with pytest.raises(ConfigError, match="legacy=True"):
        config_from_mmdet3d_model(legacy)


def test_converted_teacher_drives_a_tiny_x3kd_run(tiny_dataset, tmp_path):
    """`x3kd convert` output as `--teachers lidar=...`: X-FD and X-OD from the mmdet3d mirror, one step."""
    import json
    from pathlib import Path

    from x3kd_core.cli import main

    repo = Path(__file__).resolve().parents[3]
    dataroot, _ = tiny_dataset
    config = dataclasses.replace(TINY, sweeps=3)
    src = tmp_path / "centerpoint.pth"
    torch.save({"meta": {"CLASSES": TINY.class_names}, "state_dict": mmdet3d_state_dict(config, seed=8)}, src)
    teacher = convert_centerpoint(src, config, tmp_path / "teacher.pt", grid_z_range_m=(-3.0, 5.0))
    args = ["train", "--experiment", str(repo / "config" / "train" / "student_tiny.yaml"), "--out", str(tmp_path / "r"),
            "--distill", "x-fd,x-od", "--teachers", f"lidar={teacher}", "--device", "cpu",
            "--set", f"data.dataroot={dataroot}", "--set", "train.max_steps=1", "--set", "data.lidar_sweeps=3"]
    assert main(args) == 0
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert report["distill"] == ["x_fd", "x_od"]
    assert math.isfinite(report["last_losses"]["x_od/heatmap"]) and math.isfinite(report["last_losses"]["x_fd/feature"])
    # The same teacher through the teacher-output cache (built on first use).
    cached = [a.replace(f"lidar={teacher}", f"lidar={teacher},cache={tmp_path / 'cache'}") for a in args]
    cached[cached.index(str(tmp_path / "r"))] = str(tmp_path / "r_cached")
    cached += ["--set", "augment.bev={}"]  # cached outputs belong to un-augmented samples
    assert main(cached) == 0
    assert (tmp_path / "cache" / "lidar" / "meta.json").is_file()
    report = json.loads((tmp_path / "r_cached" / "metrics.json").read_text())
    assert math.isfinite(report["last_losses"]["x_od/heatmap"])


def test_teacher_predictor_runs_a_converted_checkpoint(tmp_path):
    """What the x3kd_lidar_teacher node runs: TeacherPredictor over a converted checkpoint."""
    from x3kd_core.inference import TeacherPredictor

    src = tmp_path / "cp.pth"
    torch.save({"state_dict": mmdet3d_state_dict(TINY, seed=2)}, src)
    teacher = convert_centerpoint(src, TINY, tmp_path / "teacher.pt")
    predictor = TeacherPredictor.from_checkpoint(teacher, "lidar")
    boxes = predictor.predict(_points(3000, seed=9).numpy())
    assert len(boxes.label) > 0 and np.isfinite(boxes.center).all()
    assert set(DETECTION_CLASSES[k] for k in boxes.label) <= set(TINY.class_names)


def test_cli_convert(tmp_path, capsys):
    import json

    from x3kd_core.cli import main

    src = tmp_path / "cp.pth"
    torch.save({"meta": {}, "state_dict": mmdet3d_state_dict(KNOWN_CENTERPOINT_CONFIGS[NUS])}, src)
    out = tmp_path / "teacher.pt"
    assert main(["convert", "mmdet3d-centerpoint", "--checkpoint", str(src), "--config-name", NUS, "--out", str(out),
                 "--grid-z-range", "-3", "5"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["grid"]["cell_size_m"] == pytest.approx(0.8) and line["grid"]["z_range_m"] == [-3.0, 5.0]
    assert line["nms"] == "circle" and line["lidar_sweeps"] == 10 and out.is_file()
    torch.save({"state_dict": {"pts_backbone.blocks.0.0.weight": torch.zeros(1)}}, src)
    assert main(["convert", "mmdet3d-centerpoint", "--checkpoint", str(src), "--config-name", NUS,
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not match" in capsys.readouterr().err


def test_rotated_iou_and_rotate_nms():
    from x3kd_core.models.teachers.centerpoint_mm import _rotate_nms, rotated_bev_iou

    square = np.array([[0, 0, 0, 2, 2, 1, 0.0, 0, 0]])
    turned = np.array([[0, 0, 0, 2, 2, 1, math.pi / 4, 0, 0]])
    inter = 8 * (math.sqrt(2) - 1)  # the octagon shared by a square and itself turned 45 deg
    assert rotated_bev_iou(square, turned)[0, 0] == pytest.approx(inter / (8 - inter), rel=1e-9)
    # Greedy by score; the lower box goes at IoU >= threshold (mmcv's rule), a distant box stays.
    boxes = torch.tensor(np.concatenate([square, turned, square + [[10, 0, 0, 0, 0, 0, 0, 0, 0]]]), dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.3])
    iou = inter / (8 - inter)
    assert _rotate_nms(boxes, scores, iou - 1e-6, 1000, 83).tolist() == [1, 2]
    assert _rotate_nms(boxes, scores, iou + 1e-6, 1000, 83).tolist() == [1, 0, 2]
    assert _rotate_nms(boxes, scores, iou + 1e-6, 1000, 2).tolist() == [1, 0]
