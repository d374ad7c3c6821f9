"""OpenMMLab CenterPoint-pillar checkpoint -> x3kd LiDAR-teacher checkpoint.

``x3kd convert mmdet3d-centerpoint --checkpoint X.pth --config-name NAME --out teacher.pt`` calls
:func:`convert_centerpoint`. NAME is one of :data:`KNOWN_CENTERPOINT_CONFIGS` (the mmdet3d config
file names, without ``.py``); each entry is the typed :class:`CenterPointMMConfig` that the
config file implies (grid, voxel size, point range, sweeps, task groups, decoding). The output
is an ordinary ``x3kd train`` checkpoint of kind ``LidarTask`` whose experiment carries that
config under ``model.mmdet3d`` and whose ``grid`` is the model's head grid, so everything that
loads a LiDAR teacher (distillation, the teacher-output cache, ``x3kd_lidar_teacher``) loads it.

Safety: the source file is read with ``torch.load(weights_only=True)``; the only globals allowed
beyond PyTorch's defaults are numpy's scalar / array / dtype reconstructors (mmengine's ``meta``
holds numpy numbers). Anything else (a pickled class) is refused, naming the global.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from x3kd_core.checkpoint import CHECKPOINT_FORMAT, CheckpointError, save_checkpoint
from x3kd_core.config import BevGridConfig, ConfigError, TrainConfig, to_dict
from x3kd_core.models.teachers.centerpoint_mm import CenterPointMM, CenterPointMMConfig

__all__ = [
    "KNOWN_CENTERPOINT_CONFIGS",
    "MMDET3D_PREFIXES",
    "load_openmmlab_checkpoint",
    "centerpoint_state_dict",
    "convert_centerpoint",
    "mirror_grid",
]

_NUSCENES_CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle",
                     "bicycle", "pedestrian", "traffic_cone")

#: mmdet3d config name -> the network and decoding it defines (configs/centerpoint/*.py of mmdet3d 1.4
#: over configs/_base_/models/centerpoint_pillar02_second_secfpn_nus.py).
KNOWN_CENTERPOINT_CONFIGS: dict[str, CenterPointMMConfig] = {
    "centerpoint_pillar02_second_secfpn_8xb4-cyclic-20e_nus-3d": CenterPointMMConfig(
        nms_type="rotate", source="centerpoint_pillar02_second_secfpn_8xb4-cyclic-20e_nus-3d"),
    "centerpoint_pillar02_second_secfpn_head-circlenms_8xb4-cyclic-20e_nus-3d": CenterPointMMConfig(
        nms_type="circle", source="centerpoint_pillar02_second_secfpn_head-circlenms_8xb4-cyclic-20e_nus-3d"),
}

#: Checkpoint prefix (mmdet3d ``CenterPoint`` attribute) -> mirror submodule.
MMDET3D_PREFIXES: dict[str, str] = {
    "pts_voxel_encoder.": "voxel_encoder.",
    "pts_backbone.": "backbone.",
    "pts_neck.": "neck.",
    "pts_bbox_head.": "bbox_head.",
}

#: Parameter-free parts of the mmdet3d model; keys under them would mean a different architecture.
_IGNORED_PREFIXES = ("pts_middle_encoder.", "data_preprocessor.")


def _numpy_safe_globals() -> list[Any]:
    """numpy's reconstructors that mmengine ``meta`` entries need (module paths differ in numpy 1 / 2)."""
    found: list[Any] = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            mod = __import__(module, fromlist=["scalar", "_reconstruct"])
        except ImportError:
            continue
        found += [getattr(mod, "scalar"), getattr(mod, "_reconstruct")]
    found += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return found


def load_openmmlab_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an mmengine / mmcv checkpoint safely.

    Returns:
        (state_dict, meta): the tensors under ``state_dict`` (or the file itself when it is a
        bare state dict) and the ``meta`` dict ({} when absent).

    Raises:
        CheckpointError: unreadable, refused global (named), or no state dict in it.
    """
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as err:  # noqa: BLE001 - weights_only refusals are UnpicklingErrors with the global named
        raise CheckpointError(
            f"{path}: not loadable with weights_only=True and x3kd's allow-list (numpy scalars/arrays): {err}. "
            "Strip it to its state_dict where mmengine is installed and the file is trusted"
        ) from None
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        state, meta = dict(raw["state_dict"]), dict(raw.get("meta") or {})
    elif isinstance(raw, Mapping) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state, meta = dict(raw), {}
    else:
        keys = sorted(raw)[:8] if isinstance(raw, Mapping) else type(raw).__name__
        raise CheckpointError(f"{path}: no 'state_dict' in this checkpoint (found {keys})")
    # DataParallel / DDP checkpoints prefix every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, meta


def _checkpoint_classes(meta: Mapping) -> tuple[str, ...] | None:
    """Class names recorded by mmdet3d 1.x (``meta.dataset_meta.classes``) or 1.0 (``meta.CLASSES``)."""
    dataset_meta = meta.get("dataset_meta")
    if isinstance(dataset_meta, Mapping) and dataset_meta.get("classes"):
        return tuple(dataset_meta["classes"])
    if meta.get("CLASSES"):
        return tuple(meta["CLASSES"])
    return None


def centerpoint_state_dict(state: Mapping[str, torch.Tensor], config: CenterPointMMConfig,
                           where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """mmdet3d CenterPoint state dict -> :class:`CenterPointMM` state dict (renamed, checked).

    Raises:
        CheckpointError: a key the mirror needs is missing, a key is left over (another
            architecture, e.g. a DCN head), or a shape differs; the first few are named.
    """
    expected = CenterPointMM(config).state_dict()
    mapped: dict[str, torch.Tensor] = {}
    stray = []
    for key, value in state.items():
        for src, dst in MMDET3D_PREFIXES.items():
            if key.startswith(src):
                mapped[dst + key[len(src):]] = value
                break
        else:
            if not key.startswith(_IGNORED_PREFIXES):
                stray.append(key)
    missing = [k for k in expected if k not in mapped]
    extra = [k for k in mapped if k not in expected]
    if missing or extra or stray:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:3]}")
        if extra or stray:
            unknown = extra + stray
            parts.append(f"not in the mirror {len(unknown)}: {unknown[:3]}")
        raise CheckpointError(
            f"{where} does not match the '{config.source or 'given'}' CenterPoint-pillar architecture ("
            + "; ".join(parts) + ")")
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{where}: {key} has shape {tuple(value.shape)}, the '{config.source}' "
                                  f"architecture needs {tuple(expected[key].shape)}")
        mapped[key] = value.to(expected[key].dtype) if value.is_floating_point() else value
    return mapped


def mirror_grid(config: CenterPointMMConfig, z_range_m: tuple[float, float] | None = None) -> BevGridConfig:
    """The BEV grid the converted teacher's features and head lie on (its head grid).

    ``z_range_m`` (default: the model's point range in z) is the experiment's vertical extent; the
    mirror itself always uses its own point range, so this only has to match the student's grid.
    """
    pcr = config.point_cloud_range
    z = (pcr[2], pcr[5]) if z_range_m is None else tuple(z_range_m)
    return BevGridConfig(x_range_m=(pcr[0], pcr[3]), y_range_m=(pcr[1], pcr[4]), z_range_m=z,  # type: ignore[arg-type]
                         cell_size_m=config.bev_cell_m)


def convert_centerpoint(checkpoint: str | os.PathLike, config: str | CenterPointMMConfig,
                        out: str | os.PathLike, grid_z_range_m: tuple[float, float] | None = None) -> Path:
    """Write an x3kd LiDAR-teacher checkpoint from an mmdet3d CenterPoint-pillar checkpoint.

    Args:
        checkpoint: the ``.pth`` of mmdet3d (mmengine format, or a bare state dict).
        config: a name of :data:`KNOWN_CENTERPOINT_CONFIGS` or the typed config itself.
        out: the x3kd checkpoint to write.
        grid_z_range_m: z range recorded in the experiment grid (see :func:`mirror_grid`); a
            student distilling from the teacher must use the same grid, z range included.

    Raises:
        ConfigError: unknown config name (the known ones listed).
        CheckpointError: unsafe / unreadable file, weights that do not fit, or classes recorded
            in the checkpoint that differ from the config's (both lists named).
    """
    if isinstance(config, str):
        if config not in KNOWN_CENTERPOINT_CONFIGS:
            raise ConfigError(f"unknown mmdet3d config '{config}'; known: {sorted(KNOWN_CENTERPOINT_CONFIGS)}")
        config = KNOWN_CENTERPOINT_CONFIGS[config]
    state, meta = load_openmmlab_checkpoint(checkpoint)
    recorded = _checkpoint_classes(meta)
    if recorded is not None and tuple(recorded) != config.class_names:
        raise CheckpointError(
            f"{checkpoint}: its classes {list(recorded)} differ from the '{config.source}' task groups' "
            f"classes {list(config.class_names)} (labels would be assigned to the wrong class)")
    weights = centerpoint_state_dict(state, config, where=str(checkpoint))

    # Imported here: the experiment schema pulls in every model config, the converter core does not need it.
    from x3kd_core.experiment.config import TASK_KINDS, DataConfig, ExperimentConfig
    from x3kd_core.models.teachers.lidar import LidarDetectorConfig

    exp = ExperimentConfig(
        kind="lidar",
        model=LidarDetectorConfig(mmdet3d=config),
        grid=mirror_grid(config, grid_z_range_m),
        train=TrainConfig(max_steps=1),  # required by the schema; the weights were trained in mmdet3d
        data=DataConfig(lidar_sweeps=config.sweeps),
        name=f"mmdet3d:{config.source}",
    )
    state_out = {
        "format": CHECKPOINT_FORMAT,
        "kind": TASK_KINDS["lidar"],
        "config": to_dict(exp),
        "model": {"detector.mirror." + k: v for k, v in weights.items()},
        "converted_from": {
            "file": os.path.basename(str(checkpoint)),
            "mmdet3d_config": config.source,
            "classes": list(config.class_names),
            "meta": {k: str(meta[k]) for k in ("mmdet3d_version", "mmengine_version", "mmcv_version", "time")
                     if k in meta},
        },
        "finished": True,
    }
    return save_checkpoint(out, state_out, keep_previous=False)
