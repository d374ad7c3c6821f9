"""Pillar voxelisation, decoration, feature net and scatter on hand-made clouds."""

from __future__ import annotations

import pytest
import torch

from x3kd_core.config import BevGridConfig, ConfigError
from x3kd_core.models.teachers.pillars import (
    PillarEncoder,
    PillarFeatureNet,
    decorate_points,
    pillar_stride,
    scatter_to_bev,
    voxelize,
)

# 10 x 10 cells of 0.8 m; pillars of 0.4 m -> 20 x 20 pillars.
GRID = BevGridConfig(x_range_m=(-4.0, 4.0), y_range_m=(-4.0, 4.0), z_range_m=(-2.0, 2.0), cell_size_m=0.8)


def _cloud(rows):
    """rows of (x, y, z) -> (P, 5) with intensity = row index and time lag 0."""
    pts = torch.zeros(len(rows), 5)
    pts[:, :3] = torch.tensor(rows, dtype=torch.float32)
    pts[:, 3] = torch.arange(len(rows), dtype=torch.float32)
    return pts


def test_pillar_stride_must_divide_cell():
    assert pillar_stride(GRID, 0.4) == 2
    assert pillar_stride(GRID, 0.2) == 4
    assert pillar_stride(GRID, 0.8) == 1
    with pytest.raises(ConfigError, match="divide"):
        pillar_stride(GRID, 0.3)
    with pytest.raises(ConfigError, match="divide"):
        pillar_stride(GRID, 1.6)


def test_voxelize_counts_points_and_drops_out_of_range():
    cloud0 = _cloud(
        [
            (0.1, 0.1, 0.0),    # pillar (10, 10)
            (0.3, 0.05, 1.0),   # pillar (10, 10)
            (0.39, 0.39, -1.0),  # pillar (10, 10)
            (-4.0, 3.99, 0.0),  # pillar (0, 19): x_min is inside, y just below y_max
            (-3.7, 3.7, 0.5),   # pillar (0, 19)
            (4.0, 0.0, 0.0),    # x == x_max: outside ([min, max) range)
            (0.0, -4.01, 0.0),  # y below range
            (0.0, 0.0, 2.0),    # z == z_max: outside
            (0.0, 0.0, -2.5),   # z below range
            (float("nan"), 0.0, 0.0),  # non-finite
        ]
    )
    cloud1 = _cloud([(-0.1, -0.1, 0.0)])  # sample 1, pillar (9, 9)
    pillars = voxelize([cloud0, cloud1], GRID, 0.4)

    assert pillars.grid_size_xy == (20, 20)
    assert pillars.batch_size == 2
    assert pillars.coords.tolist() == [[0, 0, 19], [0, 10, 10], [1, 9, 9]]
    assert pillars.num_points.tolist() == [2, 3, 1]
    assert pillars.point_features.shape == (6, 5)
    # Kept points keep their order and their extra columns (intensity = original row index).
    assert pillars.point_features[:, 3].tolist() == [0, 1, 2, 3, 4, 0]
    assert pillars.point_pillar.tolist() == [1, 1, 1, 0, 0, 2]
    assert pillars.point_batch.tolist() == [0, 0, 0, 0, 0, 1]
    torch.testing.assert_close(pillars.pillar_mean_xyz[1], torch.tensor([0.79 / 3, 0.54 / 3, 0.0]))
    torch.testing.assert_close(pillars.pillar_center_xy, torch.tensor([[-3.8, 3.8], [0.2, 0.2], [-0.2, -0.2]]))


def test_voxelize_empty_clouds():
    pillars = voxelize([torch.zeros(0, 5), _cloud([(10.0, 0.0, 0.0)])], GRID, 0.8)
    assert pillars.num_pillars == 0
    enc = PillarEncoder(grid=GRID, pillar_size_m=0.8, point_channels=5, feature_channels=(8,))
    out = enc([torch.zeros(0, 5), torch.zeros(0, 5)])
    assert out.shape == (2, 8, 10, 10)
    assert float(out.abs().sum()) == 0.0


def test_decorate_points_offsets():
    pillars = voxelize([_cloud([(0.1, 0.1, 0.0), (0.3, 0.3, 1.0)])], GRID, 0.4)
    dec = decorate_points(pillars)
    assert dec.shape == (2, 10)
    # mean (0.2, 0.2, 0.5), pillar centre (0.2, 0.2)
    torch.testing.assert_close(dec[:, 5:8], torch.tensor([[-0.1, -0.1, -0.5], [0.1, 0.1, 0.5]]))
    torch.testing.assert_close(dec[:, 8:10], torch.tensor([[-0.1, -0.1], [0.1, 0.1]]))


def test_feature_net_is_a_per_pillar_max_and_order_invariant():
    torch.manual_seed(0)
    net = PillarFeatureNet(in_channels=10, channels=(16, 8)).eval()
    points = torch.randn(7, 10)
    index = torch.tensor([0, 1, 0, 2, 1, 0, 2])
    out = net(points, index, 3)
    assert out.shape == (3, 8)
    perm = torch.randperm(7)
    torch.testing.assert_close(net(points[perm], index[perm], 3), out)
    # A pillar's feature depends only on its own points.
    only0 = net(points[index == 0], torch.zeros(3, dtype=torch.long), 1)
    torch.testing.assert_close(only0[0], out[0])


def test_scatter_layout_is_batch_channel_x_y():
    cloud = _cloud([(-3.9, 0.1, 0.0)])  # pillar i_x = 0, i_y = 10 at 0.4 m
    pillars = voxelize([torch.zeros(0, 5), cloud], GRID, 0.4)
    feats = torch.tensor([[1.0, 2.0, 3.0]])
    image = scatter_to_bev(feats, pillars)
    assert image.shape == (2, 3, 20, 20)
    assert image[1, :, 0, 10].tolist() == [1.0, 2.0, 3.0]
    assert float(image.abs().sum()) == 6.0


def test_encoder_single_point_in_training_mode():
    """One point in the whole batch cannot be batch-normalised; the running statistics are used."""
    torch.manual_seed(0)
    enc = PillarEncoder(grid=GRID, pillar_size_m=0.4, point_channels=5, feature_channels=(8,)).train()
    cloud = [_cloud([(0.1, 0.1, 0.0)])]
    out = enc(cloud).detach()
    assert out.shape == (1, 8, 20, 20)
    torch.testing.assert_close(out, enc.eval()(cloud))
    out[0, :, 10, 10] = 0.0
    assert float(out.abs().sum()) == 0.0
