"""CenterHead: target encoding, targets -> predict round trip, loss, NMS, overfitting, edge cases."""

import math

import numpy as np
import pytest
import torch

from x3kd_core.config import BevGridConfig, ConfigError, from_dict
from x3kd_core.geometry import wrap_angle
from x3kd_core.models.heads.center_head import (
    CenterHead,
    CenterHeadConfig,
    HeadOutputs,
    bev_nms,
    gaussian_focal_loss,
)
from x3kd_core.models.heads.targets import draw_gaussian, gaussian_radius
from x3kd_core.structures import DETECTION_CLASSES, Boxes3D

# Asymmetric x/y extents (40 x 25 cells) so a swapped axis cannot go unnoticed.
GRID = BevGridConfig(x_range_m=(-16.0, 16.0), y_range_m=(-8.0, 12.0), cell_size_m=0.8)
CAR, TRUCK, BUS, PED = (DETECTION_CLASSES.index(n) for n in ("car", "truck", "bus", "pedestrian"))
REGRESSION_TERMS = ("offset", "height", "size", "rot", "velocity")


def _boxes(rows) -> Boxes3D:
    """rows: (x, y, z, l, w, h, yaw, vx, vy, label)."""
    a = np.array(rows, dtype=np.float64).reshape(-1, 10)
    return Boxes3D(
        center=a[:, 0:3], size_lwh=a[:, 3:6], yaw=a[:, 6], velocity=a[:, 7:9],
        label=a[:, 9].astype(np.int64), score=np.ones(len(a)),
    )


def _scene() -> list[Boxes3D]:
    nan = float("nan")
    sample0 = _boxes(
        [
            (3.37, -2.91, -0.8, 4.5, 1.9, 1.6, 0.7, 2.0, -1.0, CAR),
            (-10.05, 7.2, 0.2, 0.7, 0.6, 1.8, -2.9, nan, nan, PED),
            (15.9, 11.9, 1.0, 8.0, 2.6, 3.2, 3.0, 0.0, 0.5, TRUCK),  # last cell of the grid
        ]
    )
    sample1 = _boxes(
        [
            (-15.99, -7.99, 0.5, 11.0, 2.9, 3.5, -math.pi / 2, -3.0, 0.25, BUS),  # first cell
            (3.37, -2.91, -0.8, 4.5, 1.9, 1.6, -0.3, 0.0, 0.0, TRUCK),  # same spot as sample 0's car
            (30.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0, CAR),  # outside the grid: dropped
        ]
    )
    return [sample0, sample1]


def _head(**overrides) -> CenterHead:
    torch.manual_seed(0)
    config = CenterHeadConfig(shared_channels=16, head_channels=16, **overrides)
    return CenterHead(config, in_channels=8, grid=GRID)


def _perfect_outputs(head: CenterHead, targets) -> HeadOutputs:
    """Outputs that encode the targets exactly: logit +20 at object cells, -20 elsewhere."""
    B, K, n_x, n_y = targets.heatmap.shape
    heatmap = torch.full((B, K * n_x * n_y), -20.0)
    maps = {name: torch.zeros(B, c, n_x * n_y) for name, c in
            (("offset", 2), ("height", 1), ("log_size", 3), ("rot", 2), ("velocity", 2))}
    for b in range(B):
        for m in torch.nonzero(targets.mask[b]).squeeze(1).tolist():
            cell = int(targets.index[b, m])
            heatmap[b, int(targets.label[b, m]) * n_x * n_y + cell] = 20.0
            for name in maps:
                maps[name][b, :, cell] = getattr(targets, name)[b, m]
    return HeadOutputs(
        heatmap=heatmap.view(B, K, n_x, n_y), **{k: v.view(B, -1, n_x, n_y) for k, v in maps.items()}
    )


def test_forward_shapes_and_focal_prior():
    head = _head()
    out = head(torch.randn(2, 8, 40, 25))
    assert out.heatmap.shape == (2, 10, 40, 25)
    channels = [getattr(out, n).shape[1] for n in ("offset", "height", "log_size", "rot", "velocity")]
    assert channels == [2, 1, 3, 2, 2]
    assert torch.allclose(head.branches["heatmap"][-1].bias, torch.full((10,), -2.19))
    with pytest.raises(ValueError, match=r"\(B, C, 40, 25\)"):
        head(torch.randn(2, 8, 25, 40))


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="nms_center_distance_m"):
        from_dict(CenterHeadConfig, {"num_classes": 3})
    with pytest.raises(ConfigError, match="loss_weights.velocity"):
        from_dict(CenterHeadConfig, {"loss_weights": {"velocity": "high"}})


def test_gaussian_radius_is_the_tightest_of_the_three_cases():
    a, b, o = 10.0, 4.0, 0.1
    r = gaussian_radius(a, b, o)
    iou_moved = (a - r) * (b - r) / (2 * a * b - (a - r) * (b - r))
    iou_shrunk = (a - 2 * r) * (b - 2 * r) / (a * b)
    iou_grown = a * b / ((a + 2 * r) * (b + 2 * r))
    ious = [iou_moved, iou_shrunk, iou_grown]
    assert min(ious) == pytest.approx(o, abs=1e-9)
    assert all(iou >= o - 1e-9 for iou in ious)
    # By hand: moved 2.966, shrunk (28 - sqrt(208)) / 8 = 1.6972, grown 6.61 cells.
    assert r == pytest.approx(1.6972, abs=1e-4)


def test_draw_gaussian_values_max_merge_and_border_clip():
    heat = np.zeros((6, 5), dtype=np.float32)
    draw_gaussian(heat, 0, 1, radius=2)  # clipped at the x = 0 border
    assert heat[0, 1] == 1.0
    assert heat[1, 1] == pytest.approx(math.exp(-1 / (2 * (5 / 6) ** 2)), rel=1e-6)  # 0.4868
    assert heat[0, 4] == 0.0 and heat[3, 1] == 0.0  # outside the radius-2 window
    before = heat[1, 1]
    draw_gaussian(heat, 2, 1, radius=2)  # overlapping peak: max, not sum
    assert heat[1, 1] == pytest.approx(max(before, math.exp(-0.72)), rel=1e-6) and heat.max() == 1.0


def test_get_targets_encodes_known_boxes():
    head = _head()
    t = head.get_targets(_scene())
    assert t.heatmap.shape == (2, 10, 40, 25) and t.index.shape == (2, 3)
    assert t.mask.tolist() == [[True, True, True], [True, True, False]]
    # Car of sample 0 at (3.37, -2.91): u = 19.3 / 0.8 = 24.2125, v = 5.09 / 0.8 = 6.3625.
    assert int(t.index[0, 0]) == 24 * 25 + 6
    assert t.offset[0, 0].tolist() == pytest.approx([0.2125, 0.3625], abs=1e-5)
    assert t.heatmap[0, CAR, 24, 6] == 1.0 and t.heatmap[0, TRUCK, 24, 6] < 1.0
    assert t.heatmap[1, TRUCK, 24, 6] == 1.0 and t.heatmap[1, CAR].max() == 0.0
    assert int(t.index[0, 2]) == 39 * 25 + 24 and int(t.index[1, 0]) == 0
    assert t.log_size[0, 0].tolist() == pytest.approx(np.log([4.5, 1.9, 1.6]).tolist(), abs=1e-6)
    assert t.rot[1, 0].tolist() == pytest.approx([-1.0, 0.0], abs=1e-6)
    assert t.height[0, 1, 0] == pytest.approx(0.2)
    # Exactly one peak of 1 per object; the NaN velocity is zeroed and masked.
    assert int((t.heatmap == 1).sum()) == 5 and t.num_objects == 5
    assert t.velocity_mask.tolist() == [[True, False, True], [True, True, False]]
    assert torch.equal(t.velocity[0, 1], torch.zeros(2))


def test_targets_round_trip_through_predict():
    head = _head()
    scene = _scene()
    predictions = head.predict(_perfect_outputs(head, head.get_targets(scene)))
    for gt, pred in zip(scene, predictions):
        gt = gt[np.abs(gt.center[:, 0]) < 16]
        assert len(pred) == len(gt)
        for k in range(len(gt)):
            match = int(np.argmin(np.linalg.norm(pred.center - gt.center[k], axis=1)))
            assert np.abs(pred.center[match] - gt.center[k]).max() < 1e-4
            assert np.abs(pred.size_lwh[match] - gt.size_lwh[k]).max() < 1e-4
            assert abs(float(wrap_angle(pred.yaw[match] - gt.yaw[k]))) < 1e-5
            expected_velocity = np.nan_to_num(gt.velocity[k], nan=0.0)
            assert np.abs(pred.velocity[match] - expected_velocity).max() < 1e-5
            assert pred.label[match] == gt.label[k]
            assert pred.score[match] == pytest.approx(1 / (1 + math.exp(-20)))


def test_gaussian_focal_loss_golden_value():
    logits = torch.zeros(1, 1, 1, 3)
    target = torch.tensor([1.0, 0.5, 0.0]).view(1, 1, 1, 3)
    # pos: 0.5^2 ln2; neg at 0.5: 0.5^4 * 0.5^2 ln2; neg at 0: 0.5^2 ln2.
    expected = (0.25 + 0.0625 * 0.25 + 0.25) * math.log(2.0)
    assert float(gaussian_focal_loss(logits, target)) == pytest.approx(expected, rel=1e-6)
    # Saturated logits stay finite (log-sigmoid, no clamping needed).
    assert torch.isfinite(gaussian_focal_loss(torch.tensor([[[[-1e4, 1e4, 1e4]]]]), target))


def test_loss_of_perfect_outputs_vs_random():
    head = _head()
    targets = head.get_targets(_scene())
    perfect = head.loss(_perfect_outputs(head, targets), targets)
    assert set(perfect) == {"heatmap", *REGRESSION_TERMS}
    for name in perfect:  # logits of -20 off-peak also make the focal loss vanish
        assert float(perfect[name]) < 1e-6, name
    torch.manual_seed(1)
    with torch.no_grad():
        random = head.loss(head(torch.randn(2, 8, 40, 25)), targets)
    for name in perfect:
        assert float(random[name].detach()) > 10 * float(perfect[name]) + 1e-3, name
    # Seen here: random heatmap 7.98, offset 0.23, size 0.77 (weighted).
    assert float(random["heatmap"]) > 1.0


def test_nan_velocity_is_masked_in_loss():
    head = _head()
    targets = head.get_targets(_scene())
    outputs = _perfect_outputs(head, targets)
    cell = int(targets.index[0, 1])  # the pedestrian with unknown velocity
    outputs.velocity.view(2, 2, -1)[0, :, cell] = 7.0
    losses = head.loss(outputs, targets)
    assert float(losses["velocity"]) < 1e-6 and all(torch.isfinite(v) for v in losses.values())
    outputs.velocity.view(2, 2, -1)[0, :, int(targets.index[0, 0])] += 1.0  # the car: known velocity
    # L1 over 2 components / 4 objects with a known velocity, times the 0.05 weight.
    assert float(head.loss(outputs, targets)["velocity"]) == pytest.approx(0.05 * 2.0 / 4, rel=1e-5)


def test_empty_boxes_give_finite_loss_and_no_predictions():
    head = _head()
    targets = head.get_targets([Boxes3D.empty(), Boxes3D.empty()])
    assert targets.index.shape == (2, 0) and float(targets.heatmap.sum()) == 0.0
    outputs = head(torch.randn(2, 8, 40, 25))
    losses = head.loss(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(losses[n].item() == 0.0 for n in REGRESSION_TERMS)
    # Negatives only: 20000 cells near the 0.1 prior at ~0.0015 each, divided by max(0, 1) objects
    # (seen here: 30.2).
    assert 5.0 < losses["heatmap"].item() < 100.0
    sum(losses.values()).backward()
    assert head.branches["heatmap"][-1].bias.grad.abs().sum() > 0
    outputs.heatmap = torch.full_like(outputs.heatmap, -10.0)
    assert [len(p) for p in head.predict(outputs)] == [0, 0]


def test_bev_nms_iou_per_class_and_center_distance_for_small_classes():
    rows = [  # x, y, l, w, yaw, score, label
        (0.0, 0.0, 4.5, 1.9, 0.0, 0.9, CAR),
        (0.5, 0.0, 4.5, 1.9, 0.1, 0.8, CAR),      # overlaps the first car: dropped
        (0.0, 0.0, 4.5, 1.9, 0.0, 0.7, TRUCK),    # other class at the same place: kept
        (10.0, 0.0, 0.7, 0.6, 0.0, 0.6, PED),
        (10.3, 0.0, 0.7, 0.6, 0.0, 0.95, PED),    # 0.3 m from the other: suppresses it (higher score)
        (10.0, 0.8, 0.7, 0.6, 0.0, 0.5, PED),     # 0.8 m away: kept
        (20.0, 0.0, 4.0, 0.5, math.pi / 4, 0.4, CAR),
        # Parallel neighbour 0.71 m to the side: the rotated footprints do not touch, but their
        # enclosing axis-aligned boxes have IoU 0.55 > 0.2, so it is dropped (documented trade-off).
        (19.5, 0.5, 4.0, 0.5, math.pi / 4, 0.3, CAR),
    ]
    a = torch.tensor(rows, dtype=torch.float64)
    radii = CenterHeadConfig().nms_center_distance_m
    keep = bev_nms(a[:, 0:2], a[:, 2:4], a[:, 4], a[:, 5], a[:, 6].long(), 0.2, radii)
    assert keep.tolist() == [4, 0, 2, 5, 6]


@pytest.fixture
def one_thread():
    """Tiny convolutions gain nothing from threads and slow down badly on a loaded 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_head_overfits_two_maps_and_finds_the_boxes(one_thread):
    # ~2 s of CPU time. Seen here: total loss 0.079 after 200 steps (heatmap 0.001), every box
    # found within 0.05 m with its label, size within 0.9 m, yaw within 0.07 rad.
    torch.manual_seed(0)
    grid = BevGridConfig(x_range_m=(-12.0, 12.0), y_range_m=(-12.0, 12.0), cell_size_m=1.0)
    head = CenterHead(CenterHeadConfig(shared_channels=16, head_channels=16), in_channels=8, grid=grid)
    bev = torch.randn(2, 8, 24, 24)
    scene = [
        _boxes([(5.3, -4.6, -0.5, 4.4, 1.9, 1.6, 0.4, 3.0, 0.0, CAR),
                (-9.7, 8.2, 0.1, 0.8, 0.7, 1.7, 2.0, 0.5, 0.5, PED),
                (0.4, 10.1, 0.9, 9.0, 2.8, 3.4, -1.2, 0.0, -6.0, TRUCK)]),
        _boxes([(-3.2, -10.5, -0.3, 4.6, 2.0, 1.5, -2.5, -1.0, 1.0, CAR),
                (8.6, 3.3, 0.7, 11.5, 2.9, 3.6, 1.5, 0.0, 0.0, BUS),
                (-10.1, -0.7, 0.0, 0.6, 0.6, 1.8, 0.0, 0.0, 1.2, PED)]),
    ]
    targets = head.get_targets(scene)
    optimizer = torch.optim.Adam(head.parameters(), lr=5e-3)
    for _ in range(200):
        losses = head.loss(head(bev), targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert total.item() < 0.12 and losses["heatmap"].item() < 0.005
    head.eval()
    predictions = head.predict(head(bev))
    for gt, pred in zip(scene, predictions):
        assert len(pred) == len(gt)  # no spurious peak above the 0.1 score threshold
        for k in range(len(gt)):
            dist = np.linalg.norm(pred.center[:, :2] - gt.center[k, :2], axis=1)
            match = int(np.argmin(dist))
            assert dist[match] < 0.5
            assert pred.label[match] == gt.label[k]
            assert pred.score[match] > 0.5
            assert np.abs(pred.size_lwh[match] - gt.size_lwh[k]).max() < 1.0
            assert abs(float(wrap_angle(pred.yaw[match] - gt.yaw[k]))) < 0.15
