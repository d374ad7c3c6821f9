"""Objects' fronts and backs in the synthetic world (x3kd_core/data/synthetic/appearance.py).

A sensor can only tell an object's heading from its reverse when the object does not look the same
turned by pi. These tests mirror each object's parts through its own y-z plane (x -> -x) and
compare: identical parts mean a heading nobody can observe.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from x3kd_core.config import load_yaml
from x3kd_core.data.fingerprint import GENERATOR_CONFIG_FILENAME
from x3kd_core.data.synthetic import SynthConfig, generate_dataset
from x3kd_core.data.synthetic.appearance import LocalParts, object_parts
from x3kd_core.data.synthetic.world import WorldObject, build_scene

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "config" / "data" / "synthetic_tiny.yaml"
SMALL_OBJECTS = ("pedestrian", "bicycle", "motorcycle", "trailer")


def _rows(parts: LocalParts, mirror: bool) -> set[tuple]:
    """The parts as a set of rounded rows (box corners, colours, reflectivity), optionally mirrored."""
    lo, hi = parts.lo.copy(), parts.hi.copy()
    if mirror:
        lo[:, 0], hi[:, 0] = -parts.hi[:, 0], -parts.lo[:, 0]
    table = np.concatenate([lo, hi, parts.color1, parts.color2, parts.reflectivity[:, None],
                            parts.texture[:, None].astype(float)], axis=1)
    return {tuple(row) for row in np.round(table, 4)}


def _looks_the_same_turned_round(parts: LocalParts) -> bool:
    return _rows(parts, mirror=False) == _rows(parts, mirror=True)


@pytest.fixture(scope="module")
def objects_by_kind() -> dict[str, WorldObject]:
    """One object per (class, with / without rider) from scenes of the tiny world's config."""
    config = replace(load_yaml(SynthConfig, TINY), objects_per_scene=60)
    found: dict[str, WorldObject] = {}
    for scene in range(6):
        for obj in build_scene(config, scene).objects:
            kind = obj.class_name + ("+rider" if obj.attribute == "cycle.with_rider" else "")
            found.setdefault(kind, obj)
    return found


def test_without_fronts_a_pedestrian_looks_the_same_turned_round(objects_by_kind):
    """The cause of issue 10's unobservable pedestrian heading, kept for worlds made before the option."""
    assert _looks_the_same_turned_round(object_parts(objects_by_kind["pedestrian"], fronts=False))
    # cars always had a front
    assert not _looks_the_same_turned_round(object_parts(objects_by_kind["car"], fronts=False))


@pytest.mark.parametrize("kind", [*SMALL_OBJECTS, "bicycle+rider", "motorcycle+rider"])
def test_with_fronts_no_small_object_looks_the_same_turned_round(objects_by_kind, kind):
    obj = objects_by_kind[kind]
    parts = object_parts(obj, fronts=True)
    assert not _looks_the_same_turned_round(parts), kind
    # More of the object in front of or behind its centre than before, and every part inside the box.
    assert len(parts.lo) > len(object_parts(obj, fronts=False).lo)
    half_l, half_w = obj.size_lwh[0] / 2, obj.size_lwh[1] / 2
    assert np.all(parts.lo[:, 0] >= -half_l - 1e-9) and np.all(parts.hi[:, 0] <= half_l + 1e-9)
    assert np.all(np.abs(parts.lo[:, 1]) <= half_w + 1e-9) and np.all(parts.hi[:, 2] <= obj.size_lwh[2] + 1e-9)


def test_fronts_do_not_change_the_big_vehicles(objects_by_kind):
    for kind in ("car", "truck", "bus", "construction_vehicle", "barrier", "traffic_cone"):
        obj = objects_by_kind[kind]
        assert _rows(object_parts(obj, fronts=True), False) == _rows(object_parts(obj, fronts=False), False), kind


def test_generator_config_records_object_fronts_only_when_on(tmp_path):
    """Worlds made before the option regenerate with the same synth_config.yaml (and fingerprint)."""
    base = replace(load_yaml(SynthConfig, TINY), num_scenes=2, keyframes_per_scene=1, sweeps_per_keyframe=0,
                   image_width=64, image_height=36, objects_per_scene=6)
    off = yaml.safe_load((generate_dataset(base, tmp_path / "off") / GENERATOR_CONFIG_FILENAME).read_text())
    on_root = generate_dataset(replace(base, object_fronts=True), tmp_path / "on")
    on = yaml.safe_load((on_root / GENERATOR_CONFIG_FILENAME).read_text())
    assert "object_fronts" not in off and on["object_fronts"] is True
    assert {k: v for k, v in on.items() if k != "object_fronts"} == off
    assert load_yaml(SynthConfig, on_root / GENERATOR_CONFIG_FILENAME).object_fronts is True
