"""Datasets in nuScenes format: the synthetic generator and the nuscenes-devkit loader."""
