"""Converters from other toolboxes' checkpoints into x3kd checkpoints.

* :mod:`.mmdet3d` — OpenMMLab mmdet3d CenterPoint-pillar -> x3kd LiDAR teacher (``LidarTask``
  checkpoint whose model is :class:`~x3kd_core.models.teachers.centerpoint_mm.CenterPointMM`).
* :mod:`.mmdet` — OpenMMLab mmdet Mask R-CNN R50-FPN (nuImages) -> x3kd X-IS teacher
  (``InstanceSegTask`` checkpoint whose model is an
  :class:`~x3kd_core.models.teachers.instance_seg.InstanceSegmenter` with mmdet conventions).
* :mod:`.command` — the ``x3kd convert`` subcommand.

None of it imports mmcv / mmdet / mmdet3d: a converted teacher runs on plain PyTorch.
"""

from x3kd_core.convert.mmdet import (
    KNOWN_MASKRCNN_CONFIGS,
    MaskRCNNSource,
    config_from_mmdet_model,
    convert_maskrcnn,
    maskrcnn_state_dict,
)
from x3kd_core.convert.mmdet3d import (
    KNOWN_CENTERPOINT_CONFIGS,
    centerpoint_state_dict,
    convert_centerpoint,
    load_openmmlab_checkpoint,
    mirror_grid,
)

__all__ = [
    "KNOWN_CENTERPOINT_CONFIGS",
    "KNOWN_MASKRCNN_CONFIGS",
    "MaskRCNNSource",
    "config_from_mmdet_model",
    "convert_maskrcnn",
    "maskrcnn_state_dict",
    "centerpoint_state_dict",
    "convert_centerpoint",
    "load_openmmlab_checkpoint",
    "mirror_grid",
]
