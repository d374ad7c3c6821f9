"""LiftSplat's two BEV pooling paths (``bev_pool`` switch) agree; the student config selects them."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from x3kd_core.config import BevGridConfig, ConfigError, from_dict, load_yaml, to_dict
from x3kd_core.models.student import CameraStudent, StudentConfig
from x3kd_core.models.view_transform import CameraAwareDepthNet, DepthBinsConfig, LiftSplat

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config" / "model"


def _rig(batch: int, image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Six level cameras at 1.5 m, 60 degrees apart (camera x right, y down, z forward)."""
    H, W = image_hw
    ks, ts = [], []
    for n in range(6):
        yaw = math.radians(60.0 * n)
        t = torch.eye(4)
        t[:3, 0] = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
        t[:3, 1] = torch.tensor([0.0, 0.0, -1.0])
        t[:3, 2] = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
        t[:3, 3] = torch.tensor([math.cos(yaw), math.sin(yaw), 1.5])
        ts.append(t)
        ks.append(torch.tensor([[0.8 * W, 0.0, (W - 1) / 2], [0.0, 0.8 * W, (H - 1) / 2], [0.0, 0.0, 1.0]]))
    return torch.stack(ks).expand(batch, -1, -1, -1).clone(), torch.stack(ts).expand(batch, -1, -1, -1).clone()


def test_lift_splat_pooling_paths_agree_in_output_and_gradients():
    torch.manual_seed(0)
    bins = DepthBinsConfig(min_m=1.0, max_m=33.0, step_m=1.0)
    grid = BevGridConfig(x_range_m=(-25.6, 25.6), y_range_m=(-25.6, 25.6), cell_size_m=1.6)
    depth_net = CameraAwareDepthNet(16, 16, 8, bins.num_bins, num_res_blocks=1)
    new = LiftSplat(depth_net, bins, grid, stride=16)
    old = LiftSplat(copy.deepcopy(depth_net), bins, grid, stride=16, bev_pool="outer_product")
    assert new.bev_pool == "depth_context" and old.bev_pool == "outer_product"
    image_hw = (48, 128)
    K, T = _rig(2, image_hw)
    features = torch.randn(2, 6, 16, 3, 8)
    outs = [m(features, K, T, image_hw) for m in (new, old)]
    assert torch.count_nonzero(outs[0].bev) > 0
    assert torch.allclose(outs[0].bev, outs[1].bev, atol=1e-5, rtol=0)
    grad = torch.randn_like(outs[0].bev)
    for out in outs:
        (out.bev * grad).sum().backward()
    for (name, p_new), (_, p_old) in zip(new.named_parameters(), old.named_parameters()):
        if p_new.grad is None:
            assert p_old.grad is None, name
            continue
        assert torch.allclose(p_new.grad, p_old.grad, atol=1e-4, rtol=1e-4), name


def test_lift_splat_rejects_unknown_pooling():
    bins = DepthBinsConfig()
    with pytest.raises(ValueError, match="bev_pool"):
        LiftSplat(CameraAwareDepthNet(8, 8, 4, bins.num_bins), bins, BevGridConfig(), 16, bev_pool="cumsum")


def test_student_configs_select_the_pooling_path():
    tiny = load_yaml(StudentConfig, CONFIG_DIR / "student_tiny.yaml")
    assert tiny.bev_pool == "depth_context"
    assert CameraStudent.from_config(tiny).view_transform.bev_pool == "depth_context"
    # The committed x3kd_main baseline rows were trained with the outer-product path.
    assert load_yaml(StudentConfig, CONFIG_DIR / "student_main.yaml").bev_pool == "outer_product"
    for name in ("student_small", "student_nuscenes_r50"):
        assert load_yaml(StudentConfig, CONFIG_DIR / f"{name}.yaml").bev_pool == "depth_context"
    data = to_dict(tiny)
    data["bev_pool"] = "outer_product"
    student = CameraStudent.from_config(from_dict(StudentConfig, data))
    assert student.view_transform.bev_pool == "outer_product"
    data["bev_pool"] = "cumsum"
    with pytest.raises(ConfigError, match="bev_pool"):
        from_dict(StudentConfig, data)
