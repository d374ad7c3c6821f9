from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from x3kd_core.config import BevGridConfig, ConfigError, from_dict, load_yaml, to_dict


@dataclass(frozen=True)
class _Inner:
    size: int = 3
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class _Outer:
    name: str
    inner: _Inner = field(default_factory=_Inner)
    grid: BevGridConfig = field(default_factory=BevGridConfig)
    weight: Optional[float] = None


def test_from_dict_builds_nested_config():
    cfg = from_dict(_Outer, {"name": "x", "inner": {"size": 5}, "grid": {"cell_size_m": 1.6}, "weight": 2})
    assert cfg.inner.size == 5 and cfg.weight == 2.0
    assert cfg.grid.size_xy == (64, 64)
    assert from_dict(_Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "inner": {"sise": 5}}, "unknown key inner.sise"),
        ({"inner": {}}, "missing key name"),
        ({"name": "x", "inner": {"size": "5"}}, "inner.size: expected an integer"),
        ({"name": "x", "inner": {"mode": "c"}}, "inner.mode: 'c' is not one of"),
        ({"name": "x", "grid": {"cell_size_m": -1.0}}, "cell_size_m must be > 0"),
        ({"name": "x", "grid": {"x_range_m": [1.0]}}, "grid.x_range_m: expected 2 values"),
        ({"name": "x", "grid": {"cell_size_m": 0.7}}, "not a whole number"),
    ],
)
def test_bad_values_name_the_key_path(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(_Outer, data)


def test_load_yaml_reports_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ninner:\n  size: 2\n  extra: 1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key inner.extra"):
        load_yaml(_Outer, path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(_Outer, tmp_path / "missing.yaml")
