"""Synthetic, deterministic nuScenes-format world generator.

A procedural road scene (ego on a straight or gently curved road, objects of all 10 nuScenes
detection classes moving along lanes, parking strips, bike paths and sidewalks) rendered by one
numpy ray caster into six cameras (with instance masks and depth), a 32-beam LiDAR and five radars,
and written as a dataset that nuscenes-devkit loads unchanged.

Modules: config (SynthConfig), world (layout, motion, classes), appearance (object parts, colours),
raycast (ray-box / ray-ground kernels), sensors (rig, cameras, LiDAR, radar), writer (tables and
file formats), generate (generate_dataset).
"""

from x3kd_core.data.synthetic.config import SynthConfig
from x3kd_core.data.synthetic.generate import generate_dataset

__all__ = ["SynthConfig", "generate_dataset"]
