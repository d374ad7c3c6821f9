"""Run an exported student (:mod:`x3kd_core.deploy.onnx_export`) with onnxruntime.

    runner = OnnxStudentRunner(onnx_bytes_or_path, num_threads=2)
    head = runner.run(images, intrinsics, cam_to_ego, bev_row_index)     # -> HeadOutputs (torch, CPU)
    boxes = student.head.predict(head)[0]                                # decoding stays in PyTorch

Only the CPU execution provider is requested unless ``providers`` says otherwise (this project's
machines have no onnxruntime-gpu).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch

from x3kd_core.deploy.onnx_export import INPUT_NAMES, OUTPUT_NAMES, ExportInfo, read_export_info
from x3kd_core.models.heads.center_head import HeadOutputs

__all__ = ["OnnxStudentRunner"]


class OnnxStudentRunner:
    """An onnxruntime session of an exported student.

    Args:
        model: the ONNX file (path) or its bytes, written by :func:`~x3kd_core.deploy.onnx_export.export_student`.
        num_threads: onnxruntime intra-op threads (None: torch.get_num_threads(), so both backends
            use the same number of cores).
        providers: onnxruntime execution providers (default CPU only).
    """

    def __init__(self, model: bytes | str | os.PathLike, num_threads: Optional[int] = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        self.info: ExportInfo = read_export_info(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # No spin-waiting between ops (onnxruntime's default spins): on a CPU shared with other busy
        # processes spinning threads steal the cores, as OMP_WAIT_POLICY=ACTIVE does for torch.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=list(providers))
        self._image_dtype = np.float16 if self.info.fp16 else np.float32

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.info.image_hw

    def run(self, images: np.ndarray | torch.Tensor, intrinsics: np.ndarray | torch.Tensor,
            cam_to_ego: np.ndarray | torch.Tensor, bev_row_index: np.ndarray) -> HeadOutputs:
        """images (1, N, 3, H, W) normalised; intrinsics (1, N, 3, 3); cam_to_ego (1, N, 4, 4);
        bev_row_index (N * D * h * w,) int64 -> :class:`HeadOutputs` (float32 CPU tensors, (1, C, N_x, N_y))."""
        info = self.info
        N, (H, W) = info.num_cameras, info.image_hw
        expected = {"images": (1, N, 3, H, W), "intrinsics": (1, N, 3, 3), "cam_to_ego": (1, N, 4, 4),
                    "bev_row_index": (info.num_points,)}
        arrays = [np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a)
                  for a in (images, intrinsics, cam_to_ego, bev_row_index)]
        for name, array in zip(INPUT_NAMES, arrays):
            if tuple(array.shape) != expected[name]:
                raise ValueError(f"{name}: the exported model takes {expected[name]}, got {tuple(array.shape)}")
        feeds = {
            "images": np.ascontiguousarray(arrays[0], dtype=self._image_dtype),
            "intrinsics": np.ascontiguousarray(arrays[1], dtype=np.float32),
            "cam_to_ego": np.ascontiguousarray(arrays[2], dtype=np.float32),
            "bev_row_index": np.ascontiguousarray(arrays[3], dtype=np.int64),
        }
        outputs = self.session.run(list(OUTPUT_NAMES), feeds)
        return HeadOutputs(**{name: torch.from_numpy(out) for name, out in zip(OUTPUT_NAMES, outputs)})
