"""DistillConfig: defaults (the full X3KD recipe), YAML-style loading, rejection of bad values by key path."""

from __future__ import annotations

import pytest

from x3kd_core.config import ConfigError, from_dict, to_dict
from x3kd_core.distill.config import DistillConfig, XATConfig


def test_config_defaults_load_and_reject_bad_values():
    assert from_dict(DistillConfig, {}) == DistillConfig()
    assert DistillConfig().enabled_components == ("x_is", "x_fd", "x_at", "x_od")
    assert DistillConfig.none().enabled_components == ()
    cfg = from_dict(DistillConfig, {"x_at": {"disc_channels": [16, 32, 8]},
                                    "x_od": {"regression_weights": {"velocity": 0.5}}})
    assert cfg.x_at.disc_channels == (16, 32, 8) and cfg.x_od.regression_weights.velocity == 0.5
    assert cfg.x_od.regression_weights.offset == 1.0
    with pytest.raises(ConfigError, match="x_fd.foregound"):
        from_dict(DistillConfig, {"x_fd": {"foregound": "gt_box"}})
    with pytest.raises(ConfigError, match="x_fd.foreground"):
        from_dict(DistillConfig, {"x_fd": {"foreground": "lidar"}})
    with pytest.raises(ConfigError, match="x_is.weight must be >= 0"):
        from_dict(DistillConfig, {"x_is": {"weight": -1.0}})
    with pytest.raises(ConfigError, match="regression_min_confidence"):
        from_dict(DistillConfig, {"x_od": {"regression_min_confidence": 1.0}})
    with pytest.raises(ConfigError, match="disc_channels"):
        from_dict(DistillConfig, {"x_at": {"disc_channels": []}})


def test_round_trip_through_plain_data():
    cfg = DistillConfig(x_at=XATConfig(enabled=False, disc_betas=(0.0, 0.9)))
    assert from_dict(DistillConfig, to_dict(cfg)) == cfg
    assert to_dict(cfg)["x_at"]["disc_betas"] == [0.0, 0.9]


def test_focal_beta_below_one_is_rejected():
    # |p - t|^beta with beta < 1 has an infinite slope at p == t (NaN gradients).
    with pytest.raises(ConfigError, match="x_od.focal_beta must be >= 1"):
        from_dict(DistillConfig, {"x_od": {"focal_beta": 0.5}})
