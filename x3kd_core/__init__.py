"""x3kd core: X3KD (Klingner et al., CVPR 2023) multi-camera 3D detection with cross-modal,
cross-task and cross-stage knowledge distillation, in plain PyTorch (no ROS imports here).

Data flow through the subpackages: ``data`` -> ``models`` -> ``distill`` -> ``train`` -> ``eval``;
``inference`` turns raw camera images plus calibration into :class:`x3kd_core.structures.Boxes3D`.
"""

__version__ = "0.1.0"
