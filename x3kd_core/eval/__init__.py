"""nuScenes detection metrics (mAP, NDS, TP errors) on top of nuscenes-devkit's algorithms."""
