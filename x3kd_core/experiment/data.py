"""The experiment's data: loader configs, the nuScenes tables and the (augmented) train split."""

from __future__ import annotations

from typing import Optional

import torch

from x3kd_core.data.augment import AugmentedDataset
from x3kd_core.experiment.config import UNUSED_IMAGE_HW, ExperimentConfig
from x3kd_core.experiment.paths import resolve_dataroot

__all__ = ["loader_config", "open_nuscenes", "build_train_dataset"]


def loader_config(exp: ExperimentConfig, split: str, *, training: bool,
                  teacher: Optional[tuple[str, ExperimentConfig]] = None):
    """The :class:`~x3kd_core.data.nuscenes.LoaderConfig` of ``split`` for this experiment (the one
    place one is derived from an experiment).

    Training keeps only GT boxes inside the grid (targets outside it cannot be encoded); masks are
    read for instance segmentation only; the synthetic depth maps are never needed (the student is
    supervised by LiDAR depth, as on real nuScenes).

    ``teacher=(name, teacher_experiment)``: instead, the inputs that frozen teacher ``name`` reads
    when its outputs are cached (:mod:`x3kd_core.distill.teacher_cache`): the teacher's own sweeps
    and radar filter, the student's images (and resize policy) for ``instance_seg`` only, a token
    image size otherwise, no masks, no box filter.
    """
    from x3kd_core.data.nuscenes import LoaderConfig

    d = exp.data
    if teacher is not None:
        name, texp = teacher
        images = name == "instance_seg"
        return LoaderConfig(
            version=d.version, split=split, cameras=tuple(d.cameras),
            image_hw=tuple(exp.image_hw) if images else UNUSED_IMAGE_HW,
            resize_scale=d.resize_scale if images else None,
            crop_bottom_fraction=d.crop_bottom_fraction if images else 0.0,
            lidar_sweeps=texp.data.lidar_sweeps, radar_sweeps=texp.data.radar_sweeps,
            radar_filter=texp.data.radar_filter, load_masks=False, load_depth=False,
        )
    return LoaderConfig(
        version=d.version,
        split=split,
        cameras=tuple(d.cameras),
        image_hw=exp.image_hw,
        resize_scale=d.resize_scale,
        crop_bottom_fraction=d.crop_bottom_fraction,
        lidar_sweeps=d.lidar_sweeps,
        radar_sweeps=d.radar_sweeps,
        radar_filter=d.radar_filter,
        load_masks=exp.kind == "instance_seg",
        load_depth=False,
        box_range=exp.grid if training else None,
        min_box_points=d.min_box_points,
    )


def open_nuscenes(exp: ExperimentConfig):
    """The nuscenes-devkit tables of ``data.dataroot`` / ``data.version`` (FileNotFoundError if absent)."""
    from nuscenes.nuscenes import NuScenes

    root = resolve_dataroot(exp.data.dataroot)
    if not (root / exp.data.version / "sample.json").is_file():
        raise FileNotFoundError(f"data.dataroot: no nuScenes tables '{exp.data.version}' under {root}")
    return NuScenes(version=exp.data.version, dataroot=str(root), verbose=False)


def build_train_dataset(exp: ExperimentConfig, nusc=None) -> torch.utils.data.Dataset:
    """Train split as a dataset of Samples (first ``max_train_samples`` only, if set), augmented."""
    from x3kd_core.data.nuscenes import NuScenesDataset, NuScenesSource

    nusc = nusc or open_nuscenes(exp)
    source = NuScenesSource(nusc.dataroot, loader_config(exp, exp.data.train_split, training=True), nusc=nusc)
    dataset: torch.utils.data.Dataset = NuScenesDataset(source)
    if exp.data.max_train_samples is not None and exp.data.max_train_samples < len(dataset):
        dataset = torch.utils.data.Subset(dataset, list(range(exp.data.max_train_samples)))
    if exp.augment.enabled:
        dataset = AugmentedDataset(dataset, exp.augment)
    return dataset
