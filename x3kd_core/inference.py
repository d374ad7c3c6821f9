"""Inference on raw sensor input -> ego-frame 3D boxes (no ROS imports, no training code).

    predictor = Predictor.from_checkpoint("runs/student_small/last.pt")          # cuda if available
    boxes = predictor.predict(images, intrinsics, cam_to_ego)                    # -> Boxes3D
    teacher = TeacherPredictor.from_checkpoint("runs/lidar_small/last.pt", "lidar")
    boxes = teacher.predict(points)                                              # (P, 5) ego frame

:class:`Predictor` runs a camera (or camera + radar) student, :class:`TeacherPredictor` a LiDAR or
radar teacher (what the ROS teacher nodes run). Both load their checkpoint through
:func:`x3kd_core.experiment.loader.load_model`. The rest of this docstring is the Predictor's.

Input handling matches training exactly:

* every image is resized and cropped to the model's input size by the loader's own
  :class:`~x3kd_core.data.nuscenes.ImageTransform` with the experiment's policy
  (``data.resize_scale``, ``data.crop_bottom_fraction``), and its K by the same pixel map, so an
  image of any resolution (and each camera its own) gives what the data loader would have given;
* normalisation is :func:`~x3kd_core.data.nuscenes.collate_samples`' (ImageNet mean / std on
  [0, 1] RGB), so on a dataset sample the Predictor and the training task's ``predict`` on the
  collated batch agree to float precision.

Missing cameras. ``camera_mask[n] = False`` (or ``images[n] = None``) marks camera ``n`` as absent:
its features are zero, i.e. it adds nothing to the BEV map. Because lift-splat *sums* the lifted
features of all cameras into the BEV grid and nothing before that mixes cameras (backbone, neck
and depth net run per image, BatchNorm in eval mode), a zero-feature camera is exactly the same
as leaving it out of the camera axis, which is how it is implemented (cheaper, and no fake image
needs inventing). The other cameras' detections are unaffected; objects only the missing camera
saw are lost. With every camera missing, no box is returned.

Backends. ``backend="torch"`` runs the PyTorch model. ``backend="onnxruntime"`` runs the network
(images -> head maps) as the ONNX graph of :mod:`x3kd_core.deploy.onnx_export` in onnxruntime on the
CPU, exported in memory from the checkpoint when no ``onnx_model`` file is given; decoding and NMS
stay the PyTorch head's, so on the same input both backends return the same boxes to float
rounding (tested: head maps within 1e-4, boxes within 1 mm / 1e-3 rad). The BEV geometry is the
graph's ``bev_row_index`` input, computed by PyTorch once per calibration and cached (a fixed rig
pays for it once). A missing camera keeps its slot in the graph with zero image and no BEV
contribution, which equals leaving it out.

Images already at the network input. ``predict(..., resized=True)`` takes images that are exactly
``image_hw`` with K already mapped by :meth:`Predictor.input_transform` (the ROS node resizes each
image straight from its message buffer that way), and skips the resize.
"""

from __future__ import annotations

import os
from typing import Literal, Optional, Sequence, get_args

import cv2
import numpy as np
import torch
from torch import nn

from x3kd_core.data.nuscenes import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from x3kd_core.structures import Boxes3D

__all__ = ["Backend", "Predictor", "TeacherPredictor", "default_device"]

#: Where the network runs (see the module docstring).
Backend = Literal["torch", "onnxruntime"]


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """Runs a trained camera (or camera + radar) student on raw multi-camera input.

    Args:
        model: a :class:`~x3kd_core.models.student.CameraStudent` or
            :class:`~x3kd_core.models.camera_radar.CameraRadarStudent` (weights loaded).
        experiment: the :class:`~x3kd_core.experiment.ExperimentConfig` it was trained with (input
            size, resize policy, camera order).
        device: where to run; None -> :func:`default_device` (the torch backend); onnxruntime runs on
            the CPU, so there it must be None or a CPU device.
        backend: "torch" or "onnxruntime" (module docstring; camera-only students).
        onnx_model: for onnxruntime, an exported file (path or bytes) of this checkpoint; None
            exports one in memory at construction.
        num_threads: onnxruntime intra-op threads (None: torch.get_num_threads()).

    Raises:
        ValueError: a non-student experiment, an unknown backend, onnxruntime with a camera + radar
            model or a CUDA device, or an ONNX file made for other cameras.
    """

    def __init__(self, model: nn.Module, experiment, device: str | torch.device | None = None,
                 backend: Backend = "torch", onnx_model: bytes | str | os.PathLike | None = None,
                 num_threads: Optional[int] = None) -> None:
        from x3kd_core.models.camera_radar import CameraRadarStudent

        if experiment.kind not in ("student", "camera_radar"):
            raise ValueError(f"the Predictor runs camera students, not kind '{experiment.kind}'")
        if backend not in get_args(Backend):
            raise ValueError(f"backend must be one of {list(get_args(Backend))}, got {backend!r}")
        self.experiment = experiment
        self.backend: Backend = backend
        self.uses_radar = isinstance(model, CameraRadarStudent)
        self.cameras: tuple[str, ...] = tuple(experiment.data.cameras)
        self.image_hw: tuple[int, int] = tuple(experiment.image_hw)
        self.runner = None
        if backend == "onnxruntime":
            if self.uses_radar:
                raise ValueError("backend onnxruntime exports camera-only students; this is a camera + radar model")
            if device is not None and torch.device(device).type != "cpu":
                raise ValueError(f"backend onnxruntime runs on the CPU here (no onnxruntime-gpu), not {device}")
            device = "cpu"
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        if backend == "onnxruntime":
            self._start_onnxruntime(onnx_model, num_threads)
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
        self._geometry_key: Optional[bytes] = None
        self._geometry_rows: Optional[np.ndarray] = None

    def _start_onnxruntime(self, onnx_model, num_threads: Optional[int]) -> None:
        import io

        from x3kd_core.deploy.onnx_export import export_student
        from x3kd_core.deploy.onnx_runner import OnnxStudentRunner

        if onnx_model is None:
            buffer = io.BytesIO()
            export_student(self.model, buffer, self.cameras, self.image_hw)
            onnx_model = buffer.getvalue()
        self.runner = OnnxStudentRunner(onnx_model, num_threads=num_threads)
        info = self.runner.info
        if tuple(info.cameras) != self.cameras:
            raise ValueError(f"the ONNX model was exported for cameras {list(info.cameras)}, the checkpoint has "
                             f"{list(self.cameras)}")
        self.image_hw = tuple(info.image_hw)  # an export may choose another input size

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        backend: Backend = "torch", onnx_model: bytes | str | os.PathLike | None = None,
                        num_threads: Optional[int] = None) -> "Predictor":
        """Load a ``last.pt`` of ``x3kd train`` (read with ``torch.load(weights_only=True)``);
        ``backend`` / ``onnx_model`` / ``num_threads`` as in the constructor.

        Raises:
            CheckpointError: not a camera-student checkpoint, or weights that do not fit.
        """
        from x3kd_core.experiment.loader import load_model

        model, exp = load_model(path, kinds=("student", "camera_radar"))
        return cls(model, exp, device, backend=backend, onnx_model=onnx_model, num_threads=num_threads)

    def input_transform(self, image_hw: tuple[int, int]) -> ImageTransform:
        """The resize + crop the model's input gets for an image of ``image_hw`` (H, W) pixels:
        the training loader's policy (``data.resize_scale``, ``data.crop_bottom_fraction``)."""
        cfg = self.experiment.data
        return ImageTransform.fit(tuple(image_hw), self.image_hw, cfg.resize_scale, cfg.crop_bottom_fraction)

    # -------------------------------------------------------------------------------- pre-processing
    def prepare(
        self,
        images: Sequence[Optional[np.ndarray]] | np.ndarray,
        intrinsics: np.ndarray,
        resized: bool = False,
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Resize / crop / normalise the present cameras (``resized``: they are already at
        ``image_hw`` and ``intrinsics`` already theirs; only normalise).

        Returns:
            images (1, N_present, 3, H, W) float32 normalised, intrinsics (N_present, 3, 3) float64
            for them, and the indices of the present cameras.
        """
        present = [n for n, img in enumerate(images) if img is not None]
        out_images, out_k = [], []
        for n in present:
            img = np.asarray(images[n])
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"camera {n}: expected an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
            if resized:
                if img.shape[:2] != self.image_hw:
                    raise ValueError(f"camera {n}: resized=True needs {self.image_hw} images, got {img.shape[:2]}")
                out_images.append(np.ascontiguousarray(img.transpose(2, 0, 1)))
                out_k.append(np.asarray(intrinsics[n], dtype=np.float64))
                continue
            tf = self.input_transform(img.shape[:2])
            out_images.append(np.ascontiguousarray(tf.apply(img, cv2.INTER_LINEAR).transpose(2, 0, 1)))
            out_k.append(tf.intrinsics(np.asarray(intrinsics[n], dtype=np.float64)))
        if not present:
            return torch.zeros(1, 0, 3, *self.image_hw), np.zeros((0, 3, 3)), np.zeros(0, dtype=np.int64)
        # Same arithmetic, in the same order, as collate_samples: bit-identical inputs.
        stacked = torch.from_numpy(np.stack(out_images)[None]).float().div_(255.0)
        return (stacked - self._mean) / self._std, np.stack(out_k), np.asarray(present, dtype=np.int64)

    # ------------------------------------------------------------------------------------- predict
    def predict(
        self,
        images: Sequence[Optional[np.ndarray]] | np.ndarray,
        intrinsics: np.ndarray,
        cam_to_ego: np.ndarray,
        camera_mask: Optional[Sequence[bool] | np.ndarray] = None,
        radar_points: Optional[np.ndarray] = None,
        resized: bool = False,
    ) -> Boxes3D:
        """Detect 3D boxes in one multi-camera frame.

        Args:
            images: N_cam RGB uint8 images (H_n, W_n, 3), any resolution, in the experiment's camera
                order (``self.cameras``); a (N_cam, H, W, 3) array or a list; None = camera missing.
            intrinsics: (N_cam, 3, 3) K of exactly those images (pixels).
            cam_to_ego: (N_cam, 4, 4) camera -> ego transforms (m).
            camera_mask: optional (N_cam,) bool, False = camera missing (see the module docstring).
            radar_points: (Q, 7) x, y, z (m, ego), rcs, vx, vy (m/s), time_lag_s; required by a
                camera + radar model (an empty (0, 7) array means "no returns").
            resized: the images are already at ``image_hw`` and ``intrinsics`` are theirs
                (:meth:`input_transform` applied by the caller).

        Returns:
            Boxes3D in the ego frame (score = confidence), as decoded by the model's head.
        """
        n_cam = len(images)
        intrinsics = np.asarray(intrinsics, dtype=np.float64)
        cam_to_ego = np.asarray(cam_to_ego, dtype=np.float64)
        if intrinsics.shape != (n_cam, 3, 3) or cam_to_ego.shape != (n_cam, 4, 4):
            raise ValueError(f"{n_cam} images need intrinsics ({n_cam}, 3, 3) and cam_to_ego ({n_cam}, 4, 4), got "
                             f"{intrinsics.shape} and {cam_to_ego.shape}")
        images = list(images)
        if camera_mask is not None:
            mask = np.asarray(camera_mask, dtype=bool)
            if mask.shape != (n_cam,):
                raise ValueError(f"camera_mask must be ({n_cam},), got {mask.shape}")
            images = [img if keep else None for img, keep in zip(images, mask)]
        if self.uses_radar and radar_points is None:
            raise ValueError("this camera + radar model needs radar_points ((0, 7) for none)")
        batch_images, k, present = self.prepare(images, intrinsics, resized)
        if len(present) == 0:
            return Boxes3D.empty()
        if self.runner is not None:
            return self._predict_onnxruntime(batch_images, k, present, cam_to_ego)
        with torch.inference_mode():
            args = [
                batch_images.to(self.device),
                torch.from_numpy(k[None]).float().to(self.device),
                torch.from_numpy(cam_to_ego[present][None]).float().to(self.device),
            ]
            if self.uses_radar:
                args.append([torch.from_numpy(np.asarray(radar_points, dtype=np.float32)).to(self.device)])
            outputs = self.model(*args)
            return self.model.predict(outputs)[0]

    def _predict_onnxruntime(self, batch_images: torch.Tensor, k: np.ndarray, present: np.ndarray,
                             cam_to_ego: np.ndarray) -> Boxes3D:
        """The exported graph on all N camera slots (absent ones: zero image, no BEV contribution)."""
        from x3kd_core.deploy.onnx_export import bev_row_index

        n_graph = self.runner.info.num_cameras
        if cam_to_ego.shape[0] != n_graph:
            raise ValueError(f"backend onnxruntime takes all {n_graph} cameras of the export (None for a missing "
                             f"one), got {cam_to_ego.shape[0]}")
        H, W = self.image_hw
        images = torch.zeros(1, n_graph, 3, H, W)
        images[0, present] = batch_images[0]
        mask = np.zeros(n_graph, dtype=bool)
        mask[present] = True
        # Absent slots: any finite calibration (their points are sent to a scratch row).
        full_k = np.tile(np.array([[W, 0.0, W / 2.0], [0.0, W, H / 2.0], [0.0, 0.0, 1.0]]), (n_graph, 1, 1))
        full_k[present] = k
        full_t = np.tile(np.eye(4), (n_graph, 1, 1))
        full_t[present] = cam_to_ego[present]
        key = full_k.astype(np.float32).tobytes() + full_t.astype(np.float32).tobytes() + mask.tobytes()
        if key != self._geometry_key:
            self._geometry_rows = bev_row_index(self.model, full_k, full_t, self.image_hw, mask)
            self._geometry_key = key
        head = self.runner.run(images, full_k[None], full_t[None], self._geometry_rows)
        with torch.inference_mode():
            return self.model.head.predict(head)[0]


class TeacherPredictor:
    """Runs a LiDAR or radar teacher (``LidarDetector`` / ``RadarDetector``) on one ego-frame point set.

    Args:
        model: the detector (weights loaded), or any object with ``model(points_list) -> outputs``
            and ``model.predict(outputs) -> list[Boxes3D]`` (tests pass stand-ins). It is put in eval
            mode when it has ``eval``; it is not moved.
        kind: "lidar" or "radar" (what :meth:`predict`'s columns are).
    """

    def __init__(self, model: nn.Module, kind: Literal["lidar", "radar"]) -> None:
        if kind not in ("lidar", "radar"):
            raise ValueError(f"kind must be 'lidar' or 'radar', got {kind!r}")
        self.kind = kind
        self.model = model.eval() if hasattr(model, "eval") else model
        params = model.parameters() if hasattr(model, "parameters") else iter(())
        first = next(iter(params), None)
        self.device = first.device if first is not None else torch.device("cpu")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, kind: Literal["lidar", "radar"],
                        device: str | torch.device | None = None) -> "TeacherPredictor":
        """The teacher of a ``x3kd train`` checkpoint of ``kind`` on ``device`` (None: :func:`default_device`).

        Raises:
            CheckpointError: the file is missing, unreadable or of another kind.
        """
        from x3kd_core.experiment.loader import load_model

        model, _ = load_model(path, kinds=(kind,))
        return cls(model.to(torch.device(device) if device is not None else default_device()), kind)

    def predict(self, points: np.ndarray) -> Boxes3D:
        """Boxes of one input.

        Args:
            points: LiDAR (P, 5) x, y, z (m, ego), intensity, time_lag_s; or radar (Q, 7) x, y, z
                (m, ego), rcs, vx, vy (m/s), time_lag_s. Zero rows is a valid input.

        Returns:
            Boxes3D in the ego frame, as decoded by the model's head.
        """
        with torch.inference_mode():
            outputs = self.model([torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(self.device)])
            return self.model.predict(outputs)[0]
