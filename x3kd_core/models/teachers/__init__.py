"""Teachers used only at training time (and optionally online in ROS for comparison).

* :mod:`.lidar` — CenterPoint-pillar LiDAR detector; its BEV features and head outputs lie on the
  student's BEV grid (X-FD, X-AT, X-OD).
* :mod:`.radar` — radar BEV encoder (also the radar branch of a camera+radar student) and a
  radar-only detector.
* :mod:`.instance_seg` — Mask R-CNN per camera image (X-IS); :mod:`.rcnn_ops` — its anchor,
  RoI-pooling and mask-pasting parts in OpenMMLab mmdet's conventions (for converted zoo weights).
* :mod:`.pillars` — dynamic pillar voxelisation + PointNet pillar features, shared by LiDAR and radar.
"""

from x3kd_core.models.teachers.instance_seg import (
    MASK_RCNN_LOSS_NAMES,
    InstancePredictions,
    InstanceSegConfig,
    InstanceSegmenter,
    InstanceTargets,
    instance_map_to_targets,
    predictions_to_instance_map,
)
from x3kd_core.models.teachers.lidar import (
    LIDAR_POINT_CHANNELS,
    BevBackboneConfig,
    BevDetectorOutputs,
    LidarDetector,
    LidarDetectorConfig,
    SecondFpn,
)
from x3kd_core.models.teachers.pillars import PillarEncoder, PillarFeatureNet, Pillars, voxelize
from x3kd_core.models.teachers.radar import (
    RADAR_POINT_CHANNELS,
    RadarBevEncoder,
    RadarDetector,
    RadarDetectorConfig,
    RadarEncoderConfig,
)

__all__ = [
    "BevBackboneConfig",
    "BevDetectorOutputs",
    "InstancePredictions",
    "InstanceSegConfig",
    "InstanceSegmenter",
    "InstanceTargets",
    "LIDAR_POINT_CHANNELS",
    "LidarDetector",
    "LidarDetectorConfig",
    "MASK_RCNN_LOSS_NAMES",
    "PillarEncoder",
    "PillarFeatureNet",
    "Pillars",
    "RADAR_POINT_CHANNELS",
    "RadarBevEncoder",
    "RadarDetector",
    "RadarDetectorConfig",
    "RadarEncoderConfig",
    "SecondFpn",
    "instance_map_to_targets",
    "predictions_to_instance_map",
    "voxelize",
]
