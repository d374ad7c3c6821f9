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
from x3kd_core.models.teachers.centerpoint_mm import COMMON_HEADS, CenterPointMM, CenterPointMMConfig

__all__ = [
    "KNOWN_CENTERPOINT_CONFIGS",
    "MMDET3D_PREFIXES",
    "load_openmmlab_checkpoint",
    "centerpoint_state_dict",
    "config_from_mmdet3d_model",
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


def load_checkpoint_of_classes(checkpoint: str | os.PathLike, class_names: tuple[str, ...] | list[str],
                               whose: str) -> tuple[Mapping[str, torch.Tensor], Mapping]:
    """(state dict, meta) of an OpenMMLab checkpoint (:func:`load_openmmlab_checkpoint`) whose
    recorded classes, if it records any, are ``class_names`` in that order.

    Raises:
        CheckpointError: the recorded classes differ (both lists named; ``whose`` names the
            expected list in the message, e.g. "'<config>' config's").
    """
    state, meta = load_openmmlab_checkpoint(checkpoint)
    recorded = _checkpoint_classes(meta)
    if recorded is not None and tuple(recorded) != tuple(class_names):
        raise CheckpointError(
            f"{checkpoint}: its classes {list(recorded)} differ from the {whose} "
            f"classes {list(class_names)} (labels would be assigned to the wrong class)")
    return state, meta


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
    return match_state_dict(mapped, expected, stray, where, f"'{config.source or 'given'}' CenterPoint-pillar",
                            config.source)


def match_state_dict(mapped: dict, expected: Mapping, stray: list, where: str, architecture: str,
                     source: str) -> dict:
    """Check renamed source tensors against the mirror's state dict and cast them to its dtypes.

    Args:
        mapped: mirror key -> tensor from the source checkpoint. expected: the mirror's state dict.
        stray: source keys no rule renamed. where: the file, for messages. architecture / source:
            how messages name the mirror and the source config.

    Raises:
        CheckpointError: keys missing or not in the mirror (the first three named), or a shape mismatch.
    """
    missing = [k for k in expected if k not in mapped]
    extra = [k for k in mapped if k not in expected]
    if missing or extra or stray:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:3]}")
        if extra or stray:
            unknown = extra + stray
            parts.append(f"not in the mirror {len(unknown)}: {unknown[:3]}")
        raise CheckpointError(f"{where} does not match the {architecture} architecture (" + "; ".join(parts) + ")")
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{where}: {key} has shape {tuple(value.shape)}, the '{source}' "
                                  f"architecture needs {tuple(expected[key].shape)}")
        mapped[key] = value.to(expected[key].dtype) if value.is_floating_point() else value
    return mapped


def config_getter(model: Mapping, label: str):
    """``get("a.b.c")`` -> ``model["a"]["b"]["c"]`` of an OpenMMLab model config (a plain dict);
    a missing entry raises ConfigError naming ``label`` and the dotted path."""
    def get(path: str) -> Any:
        node: Any = model
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ConfigError(f"{label}: no '{path}'")
            node = node[part]
        return node
    return get


def config_requirer(label: str):
    """``require(ok, what)``: raise ConfigError "<label>: <what> is not supported by the mirror" unless ok."""
    def require(ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{label}: {what} is not supported by the mirror")
    return require


def config_from_mmdet3d_model(model: Mapping[str, Any], source: str = "", sweeps: int = 10) -> CenterPointMMConfig:
    """An mmdet3d CenterPoint-pillar ``model`` config (``Config.fromfile(...).model`` as a dict) -> the
    typed mirror config. Settings the mirror does not implement are refused by name.

    Raises:
        ConfigError: a missing entry, or an unsupported choice (DCN head, legacy PillarFeatureNet,
            distance feature, other head branches, two different score thresholds, ...).
    """
    get = config_getter(model, "mmdet3d model config")
    require = config_requirer(f"mmdet3d model config ({source or 'given'})")

    vl, pfn, bb, neck, head = (get("data_preprocessor.voxel_layer"), get("pts_voxel_encoder"), get("pts_backbone"),
                               get("pts_neck"), get("pts_bbox_head"))
    test = get("test_cfg.pts")
    require(pfn.get("type") == "PillarFeatureNet", f"voxel encoder {pfn.get('type')}")
    require(not pfn.get("with_distance", False), "PillarFeatureNet with_distance=True")
    require(pfn.get("legacy", True) is False, "PillarFeatureNet legacy=True")
    require(pfn.get("with_cluster_center", True) and pfn.get("with_voxel_center", True), "a PillarFeatureNet without "
            "cluster / voxel centre offsets")
    require(pfn.get("mode", "max") == "max", f"PillarFeatureNet mode {pfn.get('mode')}")
    require(bb.get("type") == "SECOND" and neck.get("type") == "SECONDFPN", f"{bb.get('type')} + {neck.get('type')}")
    strides = tuple(float(s) for s in neck["upsample_strides"])
    require(neck.get("use_conv_for_no_stride", False) or 1.0 not in strides, "SECONDFPN deconv at stride 1")
    require(head.get("type") == "CenterHead", f"head {head.get('type')}")
    sep = head.get("separate_head", {})
    require(sep.get("type", "SeparateHead").split(".")[-1] == "SeparateHead", f"separate head {sep.get('type')}")
    common = {k: tuple(v) for k, v in head.get("common_heads", {}).items()}
    convs = {v[1] for v in common.values()}
    require(tuple((k, v[0]) for k, v in common.items()) == COMMON_HEADS and len(convs) == 1,
            f"common_heads {common} (the mirror has {dict(COMMON_HEADS)}, each with the same conv count)")
    require(head.get("num_heatmap_convs", 2) == next(iter(convs)), "a heatmap conv count unlike the other branches'")
    require(head.get("norm_bbox", True), "norm_bbox=False")
    coder = head["bbox_coder"]
    require(abs(float(coder["score_threshold"]) - float(test["score_threshold"])) < 1e-12,
            "bbox_coder and test_cfg score thresholds that differ")
    pcr = tuple(float(v) for v in vl["point_cloud_range"])
    max_voxels = vl.get("max_voxels", 20000)
    max_voxels = tuple(max_voxels) if isinstance(max_voxels, (list, tuple)) else (max_voxels, max_voxels)
    return CenterPointMMConfig(
        point_cloud_range=pcr,  # type: ignore[arg-type]
        voxel_size=tuple(float(v) for v in vl["voxel_size"]),  # type: ignore[arg-type]
        max_num_points=int(vl["max_num_points"]),
        max_voxels=(int(max_voxels[0]), int(max_voxels[1])),
        point_channels=int(pfn["in_channels"]),
        pfn_channels=tuple(int(c) for c in pfn["feat_channels"]),
        pfn_bn_eps=float(pfn.get("norm_cfg", {}).get("eps", 1e-3)),
        backbone_channels=tuple(int(c) for c in bb["out_channels"]),
        backbone_layers=tuple(int(c) for c in bb["layer_nums"]),
        backbone_strides=tuple(int(c) for c in bb["layer_strides"]),
        neck_channels=tuple(int(c) for c in neck["out_channels"]),
        neck_upsample_strides=strides,
        bn_eps=float(bb.get("norm_cfg", {}).get("eps", 1e-3)),
        share_conv_channels=int(head.get("share_conv_channel", 64)),
        head_conv_channels=int(sep.get("head_conv", 64)),
        head_convs=int(next(iter(convs))),
        final_kernel=int(sep.get("final_kernel", 1)),
        tasks=tuple(tuple(t["class_names"]) for t in head["tasks"]),
        out_size_factor=int(coder["out_size_factor"]),
        max_num=int(coder.get("max_num", 100)),
        score_threshold=float(coder["score_threshold"]),
        post_center_range=tuple(float(v) for v in coder["post_center_range"]),  # type: ignore[arg-type]
        nms_type=test["nms_type"],
        nms_iou_threshold=float(test.get("nms_thr", 0.2)),
        pre_max_size=int(test.get("pre_max_size", 1000)),
        post_max_size=int(test.get("post_max_size", 83)),
        min_radius=tuple(float(r) for r in test["min_radius"]),
        source=source,
        sweeps=sweeps,
    )


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
    state, meta = load_checkpoint_of_classes(checkpoint, config.class_names, f"'{config.source}' task groups'")
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
