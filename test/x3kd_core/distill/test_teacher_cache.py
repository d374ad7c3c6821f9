"""Teacher cache: stored outputs equal the live teacher's, training reads them by token, and a
cache that does not fit (other checkpoint, augmentation, unknown sample) is refused by name."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from x3kd_core.config import ConfigError
from x3kd_core.distill.teacher_cache import CachedTeacher, TeacherCacheError
from x3kd_core.experiment import build_distillation, build_model, load_experiment, train_experiment
from x3kd_core.paths import REPO_ROOT

X3KD_TINY = REPO_ROOT / "config" / "train" / "x3kd_tiny.yaml"


def _experiment(tiny_dataset, tiny_teachers, cache: Path, *extra: str):
    dataroot, _ = tiny_dataset
    return load_experiment(X3KD_TINY, [
        f"data.dataroot={dataroot}", f"teachers.lidar={tiny_teachers['lidar']}",
        f"teachers.instance_seg={tiny_teachers['instance_seg']}", f"teachers.cache={cache}",
        "augment.image={}", "augment.bev={}", "data.lidar_sweeps=1", "train.max_steps=2", *extra])


@pytest.fixture(scope="module")
def cached(tiny_dataset, tiny_teachers, tmp_path_factory):
    """(experiment, teachers by name) with both caches built."""
    cache = tmp_path_factory.mktemp("teacher_cache")
    exp = _experiment(tiny_dataset, tiny_teachers, cache)
    _, teachers, _ = build_distillation(exp, build_model(exp))
    return exp, teachers, cache


def _live(tiny_teachers, name):
    from x3kd_core.distill import freeze_teacher
    from x3kd_core.experiment import load_model

    model, texp = load_model(tiny_teachers[name], kinds=(name,))
    return freeze_teacher(model), texp


def _train_batch(exp, texp, n=2):
    """First n train samples loaded with the teacher's own LiDAR sweeps (what the cache saw)."""
    import dataclasses

    from x3kd_core.data.nuscenes import NuScenesDataset, NuScenesSource, collate_samples
    from x3kd_core.experiment import loader_config, open_nuscenes

    nusc = open_nuscenes(exp)
    cfg = dataclasses.replace(loader_config(exp, exp.data.train_split, training=True),
                              lidar_sweeps=texp.data.lidar_sweeps, box_range=None)
    ds = NuScenesDataset(NuScenesSource(nusc.dataroot, cfg, nusc=nusc))
    return collate_samples([ds[i] for i in range(n)])


def test_cached_outputs_equal_the_live_teachers(cached, tiny_teachers):
    exp, teachers, cache = cached
    assert all(isinstance(t, CachedTeacher) for t in teachers.values())
    meta = json.loads((cache / "lidar" / "meta.json").read_text())
    assert meta["key"]["lidar_sweeps"] == 3 and len(meta["tokens"]) == len(teachers["lidar"])

    lidar, texp = _live(tiny_teachers, "lidar")
    batch = _train_batch(exp, texp)
    with torch.no_grad():
        live = lidar(batch.lidar_points)
    stored = teachers["lidar"](batch.tokens)
    assert stored.bev_features.dtype == torch.float32
    for live_t, stored_t in [(live.bev_features, stored.bev_features), (live.head.heatmap, stored.head.heatmap),
                             (live.head.velocity, stored.head.velocity)]:
        assert stored_t.shape == live_t.shape
        scale = live_t.abs().max().item()
        assert (stored_t - live_t).abs().max().item() <= 2e-3 * max(scale, 1.0)  # float16 storage

    seg, _ = _live(tiny_teachers, "instance_seg")
    with torch.no_grad():
        live_masks = seg.mask_targets(batch.images)
    stored_masks = teachers["instance_seg"](batch.tokens)
    assert stored_masks.shape == live_masks.shape == (2, 6, 10, *exp.image_hw)
    assert (stored_masks - live_masks).abs().max().item() <= 0.5 / 255 + 1e-6  # 8-bit quantisation


def test_training_with_the_cache_gives_every_term(cached, tmp_path):
    exp, _, _ = cached
    result = train_experiment(exp, tmp_path / "run", device="cpu")
    terms = {"x_is/mask", "x_fd/feature", "x_at/gen", "x_od/heatmap", "x_od/regression"}
    assert result.step == 2 and terms <= set(result.last_losses)
    assert all(math.isfinite(result.last_losses[t]) and result.last_losses[t] > 0 for t in terms)


def test_augmentation_that_invalidates_the_cache_is_refused(tiny_dataset, tiny_teachers, tmp_path):
    with pytest.raises(ConfigError, match=r"teachers\.cache: .*augment\.bev is on"):
        _experiment(tiny_dataset, tiny_teachers, tmp_path, "augment.bev.flip_x_prob=0.5")
    with pytest.raises(ConfigError, match=r"teachers\.cache: .*augment\.image is on"):
        _experiment(tiny_dataset, tiny_teachers, tmp_path, "augment.image.flip_prob=0.5")
    # Image augmentation leaves a BEV cache valid (X-IS off: no mask cache in use).
    exp = _experiment(tiny_dataset, tiny_teachers, tmp_path, "augment.image.flip_prob=0.5", "distill.x_is.enabled=false")
    assert exp.teachers.cache == str(tmp_path)


def test_a_cache_of_another_checkpoint_is_refused_not_overwritten(cached, tiny_dataset, tiny_teachers, tmp_path):
    _, _, cache = cached
    other = tmp_path / "lidar_other.pt"
    state = torch.load(tiny_teachers["lidar"], map_location="cpu", weights_only=True)
    state["step"] = 12345  # same model, other file contents
    torch.save(state, other)
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    exp = _experiment(tiny_dataset, {**tiny_teachers, "lidar": other}, copy, "distill.x_is.enabled=false")
    before = (copy / "lidar" / "meta.json").read_text()
    with pytest.raises(ConfigError, match=r"teachers\.cache: .*checkpoint_sha256"):
        build_distillation(exp, build_model(exp))
    assert (copy / "lidar" / "meta.json").read_text() == before


def test_unfinished_cache_and_unknown_tokens(cached, tmp_path):
    _, teachers, cache = cached
    with pytest.raises(TeacherCacheError, match="meta.json missing"):
        CachedTeacher(tmp_path)
    with pytest.raises(KeyError, match="no outputs for sample"):
        teachers["lidar"](["not-a-token"])


def test_a_second_builder_is_refused_while_one_builds(cached, tmp_path):
    from x3kd_core.distill.teacher_cache import build_teacher_cache

    exp, teachers, cache = cached
    folder = tmp_path / "lidar"
    folder.mkdir()
    (folder / "build.lock").write_text("12345")
    key = teacher_cache_key_of(cache)
    with pytest.raises(TeacherCacheError, match="another process is building"):
        build_teacher_cache(torch.nn.Identity(), key, [], folder)
    assert not (folder / "meta.json").exists() and (folder / "build.lock").exists()


def teacher_cache_key_of(cache: Path):
    from x3kd_core.distill.teacher_cache import CacheKey

    raw = json.loads((cache / "lidar" / "meta.json").read_text())["key"]
    return CacheKey(**{**raw, "image_hw": tuple(raw["image_hw"])})
