"""Radar BEV encoder (sparsity contract, motion compensation, pooling) and the radar-only detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from x3kd_core.config import BevGridConfig, load_yaml
from x3kd_core.models.teachers.radar import (
    RadarBevEncoder,
    RadarDetector,
    RadarDetectorConfig,
    RadarEncoderConfig,
)
from x3kd_core.structures import Boxes3D

CONFIG_DIR = Path(__file__).resolve().parents[4] / "config" / "model"

# 16 x 16 cells of 0.8 m.
GRID = BevGridConfig(x_range_m=(-6.4, 6.4), y_range_m=(-6.4, 6.4), z_range_m=(-3.0, 3.0), cell_size_m=0.8)


def _radar(xy, rcs=5.0, v=(0.0, 0.0), lag=0.0) -> torch.Tensor:
    """(Q, 7) radar points at the given (x, y) (m), z = 0.5."""
    xy = torch.as_tensor(xy, dtype=torch.float32).reshape(-1, 2)
    q = xy.shape[0]
    pts = torch.zeros(q, 7)
    pts[:, :2] = xy
    pts[:, 2] = 0.5
    pts[:, 3] = rcs
    pts[:, 4:6] = torch.tensor(v, dtype=torch.float32)
    pts[:, 6] = lag
    return pts


def _random_radar(rng, q: int) -> torch.Tensor:
    pts = np.c_[
        rng.uniform(-7.0, 7.0, (q, 2)),  # some fall outside the 12.8 m grid
        rng.uniform(-0.5, 1.5, q),
        rng.normal(5.0, 5.0, q),
        rng.normal(0.0, 3.0, (q, 2)),
        rng.choice([0.0, 0.05, 0.1, 0.15], q),
    ]
    return torch.tensor(pts, dtype=torch.float32)


@pytest.mark.parametrize("pillar_size_m", [0.8, 0.4])
@pytest.mark.parametrize("train", [True, False])
def test_encoder_is_exactly_zero_where_there_are_no_points(pillar_size_m, train):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = RadarEncoderConfig(pillar_size_m=pillar_size_m, pillar_channels=(16, 16), motion_compensate=True)
    encoder = RadarBevEncoder(config, GRID).train(train)
    clouds = [_random_radar(rng, 60), _random_radar(rng, 5), torch.zeros(0, 7)]
    out = encoder(clouds).detach()
    occupancy = encoder.occupancy(clouds)
    assert out.shape == (3, 16, 16, 16)
    assert occupancy.shape == (3, 1, 16, 16)
    assert float(occupancy.sum()) > 50  # most of the 65 points are in range
    empty = occupancy[:, 0] == 0
    assert float(out.permute(0, 2, 3, 1)[empty].abs().sum()) == 0.0
    assert float(out.min()) >= 0.0
    # The converse holds on this seeded cloud: every occupied cell has some non-zero feature.
    assert bool((out.amax(dim=1)[~empty] > 0).all())


def test_motion_compensation_moves_old_returns():
    encoder = RadarBevEncoder(RadarEncoderConfig(pillar_size_m=0.8, pillar_channels=(4,)), GRID)
    # A return 0.5 s old of an object moving at +4 m/s in x: at the keyframe it is 2 m further.
    cloud = [_radar([(0.3, -1.2)], v=(4.0, 0.0), lag=0.5)]
    occupancy = encoder.occupancy(cloud)[0, 0]
    assert occupancy.nonzero().tolist() == [[10, 6]]  # x = 2.3 -> cell 10; y = -1.2 -> cell 6
    off = RadarBevEncoder(RadarEncoderConfig(pillar_size_m=0.8, pillar_channels=(4,), motion_compensate=False), GRID)
    assert off.occupancy(cloud)[0, 0].nonzero().tolist() == [[8, 6]]
    assert cloud[0][0, 0].item() == pytest.approx(0.3)  # the input is not modified in place


def test_fine_pillars_are_max_pooled_to_the_cell():
    torch.manual_seed(0)
    encoder = RadarBevEncoder(RadarEncoderConfig(pillar_size_m=0.4, pillar_channels=(8,)), GRID).eval()
    cloud = [_radar([(0.1, 0.1), (0.5, 0.7), (3.3, -2.1)], rcs=10.0)]
    pillar_image = encoder.pillars(cloud)
    assert pillar_image.shape == (1, 8, 32, 32)
    torch.testing.assert_close(encoder(cloud), F.max_pool2d(pillar_image, 2))
    assert (encoder(cloud).amax(dim=1)[0] > 0).nonzero().tolist() == [[8, 8], [12, 5]]


def test_radar_detector_shapes_and_learning():
    torch.manual_seed(0)
    config = load_yaml(RadarDetectorConfig, CONFIG_DIR / "radar_tiny.yaml")
    load_yaml(RadarDetectorConfig, CONFIG_DIR / "radar_small.yaml")
    model = RadarDetector(config, GRID)
    # Two cars, each seen by a handful of returns around its centre, one moving.
    rng = np.random.default_rng(0)
    centers = np.array([[2.5, -3.1], [-4.2, 1.7]])
    pts = [
        torch.tensor(np.c_[c + rng.normal(0, 0.6, (8, 2)), np.full(8, 0.5), np.full(8, 12.0),
                           np.tile(v, (8, 1)), np.zeros(8)], dtype=torch.float32)
        for c, v in zip(centers, [(5.0, 0.0), (0.0, 0.0)])
    ]
    cloud = [torch.cat(pts)]
    boxes = [Boxes3D(center=np.c_[centers, [-0.8, -0.8]], size_lwh=[[4.5, 1.9, 1.6]] * 2, yaw=[0.0, 0.5],
                     velocity=[[5.0, 0.0], [0.0, 0.0]], label=[0, 0], score=[1.0, 1.0])]
    out = model(cloud)
    assert out.bev_features.shape == (1, 32, 16, 16)
    assert model.encoder.out_channels == 16
    assert out.head.heatmap.shape == (1, 10, 16, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(40):
        losses = model.loss(model(cloud), boxes)
        total = sum(losses.values())
        history.append(total.item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert history[-1] < 0.1 * history[0]
    model.eval()
    with torch.no_grad():
        pred = model.predict(model(cloud))[0]
    top = pred[np.argsort(-pred.score)[:2]]
    dist = np.linalg.norm(top.center[:, None, :2] - centers[None], axis=-1)
    assert dist.min(axis=0).max() < 0.8
