"""Typed configuration of the synthetic nuScenes-format world generator."""

from __future__ import annotations

from dataclasses import dataclass

from x3kd_core.config import ConfigError
from x3kd_core.structures import DETECTION_CLASSES

#: Relative frequency of each detection class (order of DETECTION_CLASSES). Rarer than cars, but
#: frequent enough that every class gets a few hundred annotations in the small benchmark set.
DEFAULT_CLASS_WEIGHTS: tuple[float, ...] = (0.28, 0.07, 0.04, 0.04, 0.04, 0.11, 0.06, 0.07, 0.19, 0.10)


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides a synthetic dataset; the same config and seed give identical files.

    Fields (units in names where they have one):
        seed: master seed; every scene derives its own generator from (seed, scene index).
        version: name of the table folder (``<dataroot>/<version>/*.json``).
        num_scenes: scenes in the dataset (one log per scene).
        keyframes_per_scene: annotated samples per scene, 0.5 s apart (2 Hz, as nuScenes).
        sweeps_per_keyframe: LiDAR and radar non-keyframe sweeps before each keyframe, evenly spaced
            in the preceding 0.5 s (nuScenes has 9 LiDAR / ~6 radar sweeps; fewer is cheaper).
        image_width / image_height: camera image size (px).
        objects_per_scene: mean number of annotated-class objects placed around the ego's path; the
            actual count is drawn uniformly from [0.75, 1.25] x this.
        val_fraction: fraction of scenes (the last ones) in split ``synth_val``; the rest are ``synth_train``.
        focal_px_at_1600: focal length of the five 70-degree-class cameras at 1600 px image width
            (nuScenes: ~1266); scaled with image_width.
        back_focal_px_at_1600: focal length of CAM_BACK at 1600 px width. 560 gives the ~110 degree
            horizontal field of view of the nuScenes sensor sheet (its calibration says ~809).
        lidar_beams / lidar_azimuth_steps: LiDAR ray grid (32 x ~1084 per turn for the HDL-32E at 20 Hz).
        lidar_elevation_deg: (min, max) beam elevation (deg).
        lidar_max_range_m: returns beyond this are dropped.
        lidar_range_noise_m: std of range noise (m).
        lidar_dropout: probability that a valid return is missing.
        depth_max_m: depth-map pixels farther than this are 0 (no surface).
        annotation_range_m: objects are annotated at a keyframe when within this xy distance of the ego.
        buildings: whether to place unannotated building blocks beside the road (structure for LiDAR,
            background for cameras, clutter for radar).
        class_weights: relative frequency of each detection class, in DETECTION_CLASSES order.
        jpeg_quality: quality of the camera JPEGs (0-100).
        num_workers: processes rendering scenes in parallel (1 = in-process). Output does not depend on it.
        object_fronts: give pedestrians, riders, two-wheelers and trailers a front and a back that
            LiDAR and cameras can tell apart (a backpack, feet and a face; head / tail lamps; a
            drawbar), as cars, trucks and buses always have (issue 10: with symmetric small objects
            the heading of a standing pedestrian is unobservable by pi). Off reproduces the worlds
            made before this option; the generator config records it only when on, so those worlds
            keep their fingerprint (x3kd_core.data.fingerprint).
    """

    seed: int = 0
    version: str = "v1.0-synth"
    num_scenes: int = 2
    keyframes_per_scene: int = 3
    sweeps_per_keyframe: int = 2
    image_width: int = 200
    image_height: int = 112
    objects_per_scene: int = 24
    val_fraction: float = 0.5
    focal_px_at_1600: float = 1266.0
    back_focal_px_at_1600: float = 560.0
    lidar_beams: int = 32
    lidar_azimuth_steps: int = 1084
    lidar_elevation_deg: tuple[float, float] = (-30.67, 10.67)
    lidar_max_range_m: float = 70.0
    lidar_range_noise_m: float = 0.012
    lidar_dropout: float = 0.05
    depth_max_m: float = 100.0
    annotation_range_m: float = 60.0
    buildings: bool = True
    class_weights: tuple[float, ...] = DEFAULT_CLASS_WEIGHTS
    jpeg_quality: int = 92
    num_workers: int = 1
    object_fronts: bool = False

    def __post_init__(self) -> None:
        for name in ("num_scenes", "keyframes_per_scene", "image_width", "image_height", "lidar_beams",
                     "lidar_azimuth_steps", "num_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("sweeps_per_keyframe", "objects_per_scene"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if len(self.class_weights) != len(DETECTION_CLASSES) or min(self.class_weights) < 0 or sum(self.class_weights) <= 0:
            raise ConfigError(f"class_weights needs {len(DETECTION_CLASSES)} non-negative values with a positive sum")
        if not self.lidar_elevation_deg[1] > self.lidar_elevation_deg[0]:
            raise ConfigError(f"lidar_elevation_deg must be (min, max), got {self.lidar_elevation_deg}")
        if not 0 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in [0, 100], got {self.jpeg_quality}")
        if not 0.0 <= self.lidar_dropout < 1.0:
            raise ConfigError(f"lidar_dropout must be in [0, 1), got {self.lidar_dropout}")
        if self.sweeps_per_keyframe > 20:
            raise ConfigError("sweeps_per_keyframe above 20 is not supported (timestamps collide)")

    @property
    def num_val_scenes(self) -> int:
        """Number of scenes in ``synth_val`` (the last ones); at least 1 when val_fraction > 0 and
        there are two or more scenes, never all of them."""
        if self.val_fraction <= 0 or self.num_scenes < 2:
            return 0
        return min(self.num_scenes - 1, max(1, int(round(self.val_fraction * self.num_scenes))))
