"""Export a camera student to ONNX: images + calibration + precomputed BEV geometry -> head maps.

    x3kd export --checkpoint runs/student_small/last.pt --out student.onnx [--image-hw H W] [--fp16]

What is in the graph, and what is not
-------------------------------------
The graph is everything with weights: ResNet + neck per camera, the camera-aware depth net (its
camera gate reads intrinsics and cam -> ego, so both are graph inputs), depth softmax, the lift
(depth x context outer product), the BEV sum pooling, the BEV encoder and the CenterHead. Its
outputs are the six dense head maps of :class:`~x3kd_core.models.heads.center_head.HeadOutputs`.

Kept out of the graph, in PyTorch:

* **the frustum -> BEV cell geometry.** It depends only on calibration and input size, so it is an
  input: ``bev_row_index``, one int64 per frustum point, from :func:`bev_row_index` (the same
  :func:`~x3kd_core.ops.bev_pool.precompute_bev_geometry` the PyTorch model runs, in float32). A
  fixed rig computes it once. Computing it in the graph would need ``linalg.solve`` (no ONNX op)
  and could put points on a cell boundary into the other cell than PyTorch does.
* **decoding and NMS** (:meth:`CenterHead.predict`: peak picking, top-k, per-class NMS into
  ``Boxes3D``): data-dependent sizes, cheap, and the same code for both backends, so boxes from
  the two backends differ only by the head maps' rounding.

BEV pooling in the graph is always the outer-product path (ScatterElements with ``add``, opset
17): the student's default ``bev_pool: depth_context`` uses torch sparse CSR products, which ONNX
cannot express. The weights are the same and both paths compute the same sums (equal to float
rounding, tested), so the export switches path silently in the graph but says so here and in
:class:`ExportInfo`.

Graph contract (static shapes; B = 1, N = the checkpoint's cameras, h, w = H/s, W/s, D bins):

====================  ==================================  =========================================
input                 shape / dtype                       meaning
====================  ==================================  =========================================
``images``            (1, N, 3, H, W) float32 (fp16: f16) ImageNet-normalised RGB (collate_samples)
``intrinsics``        (1, N, 3, 3) float32                K of exactly these images (pixels)
``cam_to_ego``        (1, N, 4, 4) float32                camera -> ego (m)
``bev_row_index``     (N * D * h * w,) int64              :func:`bev_row_index`
====================  ==================================  =========================================

outputs (float32 even with ``--fp16``): ``heatmap`` (1, K, N_x, N_y), ``offset`` (1, 2, ...),
``height`` (1, 1, ...), ``log_size`` (1, 3, ...), ``rot`` (1, 2, ...), ``velocity`` (1, 2, ...).

A missing camera keeps its slot: zero image, any valid K, and every one of its points sent to a
scratch row (``bev_row_index(..., present=...)``); it then adds exactly nothing to the BEV map,
which is what leaving it out of the PyTorch model does (nothing mixes cameras before pooling).

``--fp16``: weights, activations and image input in float16; the calibration inputs, the depth
softmax, the pooling sums and the outputs stay float32. It is meant for GPU runtimes (TensorRT,
onnxruntime CUDA); onnxruntime's CPU provider runs it too (tested on the tiny model), not faster.

The exporter is PyTorch's TorchScript-based one (``dynamo=False``): the torch.export-based one
needs ``onnxscript``, which this venv does not carry.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from x3kd_core.models.student import FEATURE_STRIDE, CameraStudent
from x3kd_core.models.view_transform import NUM_CAMERA_PARAMS, camera_parameters, unproject_frustum
from x3kd_core.ops.bev_pool import _MAX_SCRATCH_ROWS, precompute_bev_geometry

__all__ = [
    "ONNX_OPSET",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "ExportError",
    "ExportInfo",
    "StudentHeadGraph",
    "bev_row_index",
    "export_student",
    "export_checkpoint",
]

#: ScatterElements(reduction="add") needs opset >= 16.
ONNX_OPSET = 17
INPUT_NAMES = ("images", "intrinsics", "cam_to_ego", "bev_row_index")
OUTPUT_NAMES = ("heatmap", "offset", "height", "log_size", "rot", "velocity")
#: Key of the JSON metadata (ExportInfo) stored in the ONNX file.
METADATA_KEY = "x3kd"


class ExportError(ValueError):
    """A model or a size that cannot be exported (message says which and why)."""


@dataclass(frozen=True)
class ExportInfo:
    """What an exported file expects; stored as JSON metadata in the file (key ``x3kd``).

    num_cameras / cameras: N and their names (checkpoint order). image_hw: (H, W) input (pixels).
    num_depth_bins: D. feature_hw: (h, w). grid_size: (N_x, N_y). num_points: N * D * h * w, the
    length of ``bev_row_index``. fp16: weights / image input in float16. bev_pool: the pooling in the
    graph (always "outer_product") and trained_bev_pool: the checkpoint's setting.
    """

    num_cameras: int
    cameras: tuple[str, ...]
    image_hw: tuple[int, int]
    num_depth_bins: int
    feature_hw: tuple[int, int]
    grid_size: tuple[int, int]
    num_points: int
    fp16: bool
    bev_pool: str
    trained_bev_pool: str
    opset: int = ONNX_OPSET

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ExportInfo":
        raw = json.loads(text)
        for key in ("cameras", "image_hw", "feature_hw", "grid_size"):
            raw[key] = tuple(raw[key])
        return cls(**raw)


class StudentHeadGraph(nn.Module):
    """The exported computation: a :class:`CameraStudent`'s weights, outer-product pooling with a
    given row index (module docstring), head maps out. Holds (does not copy) the student's modules.

    Args:
        student: the trained student (eval mode is set by :func:`export_student`).
        image_hw: (H, W) input size, multiples of 16 (the convolutions are size-agnostic, the BEV grid is not
            affected).
        fp16: float16 weights and images; pooling sums in float32; float32 outputs.
    """

    def __init__(self, student: CameraStudent, image_hw: tuple[int, int], fp16: bool = False) -> None:
        super().__init__()
        self.student = student
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.fp16 = fp16
        n_x, n_y = student.view_transform.grid.size_xy
        self.grid_size = (n_x, n_y)

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, cam_to_ego: torch.Tensor,
                bev_row_index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """images (1, N, 3, H, W); intrinsics (1, N, 3, 3); cam_to_ego (1, N, 4, 4); bev_row_index
        (N * D * h * w,) int64 -> the six head maps (1, C_k, N_x, N_y), float32."""
        s = self.student
        B, N, _, H, W = images.shape
        feats = s.neck(s.backbone(images.reshape(B * N, 3, H, W)))
        _, C, h, w = feats.shape
        cam_params = camera_parameters(intrinsics.float(), cam_to_ego.float(), (H, W)).reshape(B * N, NUM_CAMERA_PARAMS)
        vt = s.view_transform
        out = vt.depth_net(feats, cam_params)
        D = vt.bins.num_bins
        depth_probs = out.depth_logits.float().reshape(B, N, D, h, w).softmax(dim=2)
        context = out.context.float().reshape(B, N, vt.out_channels, h, w)
        # The outer product and the scatter of the reference path (x3kd_core.ops.bev_pool.bev_pool),
        # in float32 also for fp16 (sums of up to ~100 points per cell).
        lifted = depth_probs.unsqueeze(-1) * context.permute(0, 1, 3, 4, 2).unsqueeze(2)  # (B, N, D, h, w, C)
        rows = lifted.reshape(-1, vt.out_channels)
        n_x, n_y = self.grid_size
        num_cells = B * n_x * n_y
        pooled = rows.new_zeros(num_cells + _MAX_SCRATCH_ROWS, vt.out_channels)
        # scatter_add, not index_add: the TorchScript exporter maps index_add to a Scatter that is wrong
        # for repeated indices, scatter_add (opset >= 16) to ScatterElements(reduction="add").
        pooled = pooled.scatter_add(0, bev_row_index.unsqueeze(1).expand(-1, vt.out_channels), rows)
        bev = pooled[:num_cells].reshape(B, n_x, n_y, vt.out_channels).permute(0, 3, 1, 2)
        if self.fp16:
            bev = bev.half()
        head = s.head(s.bev_encoder(bev))
        return tuple(getattr(head, name).float() for name in OUTPUT_NAMES)


def bev_row_index(
    student: CameraStudent,
    intrinsics: np.ndarray,
    cam_to_ego: np.ndarray,
    image_hw: tuple[int, int],
    present: Optional[Sequence[bool]] = None,
) -> np.ndarray:
    """The ``bev_row_index`` graph input for one rig.

    Args:
        student: gives the depth bins, stride and BEV grid.
        intrinsics: (N, 3, 3) K of the network-input images (after resize / crop), pixels.
        cam_to_ego: (N, 4, 4) (m).
        image_hw: (H, W) network input.
        present: (N,) bool; False sends every point of that camera to a scratch row (it adds nothing).

    Returns:
        (N * D * h * w,) int64: the cell ``i * N_y + j`` of each frustum point, or a scratch row
        ``>= N_x * N_y`` for points outside the grid; computed exactly as the PyTorch model does
        (float32, :func:`~x3kd_core.ops.bev_pool.precompute_bev_geometry`).
    """
    vt = student.view_transform
    intrinsics = np.asarray(intrinsics)
    cam_to_ego = np.asarray(cam_to_ego)
    N = intrinsics.shape[0]
    if intrinsics.shape != (N, 3, 3) or cam_to_ego.shape != (N, 4, 4):
        raise ValueError(f"intrinsics must be (N, 3, 3) and cam_to_ego (N, 4, 4), got {intrinsics.shape} "
                         f"and {cam_to_ego.shape}")
    H, W = image_hw
    h, w = H // vt.stride, W // vt.stride
    # The same float32 tensors LiftSplat receives from the Predictor.
    k = torch.from_numpy(np.ascontiguousarray(intrinsics)[None]).float()
    t = torch.from_numpy(np.ascontiguousarray(cam_to_ego)[None]).float()
    with torch.no_grad():
        points = unproject_frustum(k, t, vt.bins.centers(dtype=torch.float32), (h, w), vt.stride)
        rows = precompute_bev_geometry(points, vt.grid).row_index.reshape(N, -1).clone()
    if present is not None:
        present = np.asarray(present, dtype=bool)
        if present.shape != (N,):
            raise ValueError(f"present must be ({N},), got {present.shape}")
        n_x, n_y = vt.grid.size_xy
        rows[torch.from_numpy(~present)] = n_x * n_y  # the first scratch row
    return rows.reshape(-1).numpy()


def _check_exportable(student: nn.Module, image_hw: tuple[int, int]) -> None:
    if not isinstance(student, CameraStudent):
        raise ExportError(f"only the camera student (CameraStudent) exports to ONNX, not {type(student).__name__} "
                          "(a camera + radar student's radar input has a per-frame size)")
    H, W = image_hw
    if H <= 0 or W <= 0 or H % FEATURE_STRIDE or W % FEATURE_STRIDE:
        raise ExportError(f"image_hw must be positive multiples of {FEATURE_STRIDE}, got {tuple(image_hw)}")


def _example_inputs(student: CameraStudent, num_cameras: int, image_hw: tuple[int, int], fp16: bool):
    """Tracing inputs: a plausible forward-looking rig (values do not change the traced graph)."""
    H, W = image_hw
    k = np.array([[W, 0.0, (W - 1) / 2], [0.0, W, (H - 1) / 2], [0.0, 0.0, 1.0]])
    to_ego = np.eye(4)
    to_ego[:3, :3] = [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]  # optical -> x fwd, y left, z up
    intrinsics = np.repeat(k[None], num_cameras, 0)
    cam_to_ego = np.repeat(to_ego[None], num_cameras, 0)
    rows = bev_row_index(student, intrinsics, cam_to_ego, image_hw)
    images = torch.zeros(1, num_cameras, 3, H, W, dtype=torch.float16 if fp16 else torch.float32)
    return (images, torch.from_numpy(intrinsics[None]).float(), torch.from_numpy(cam_to_ego[None]).float(),
            torch.from_numpy(rows))


def export_student(
    student: CameraStudent,
    out: str | os.PathLike | io.BytesIO,
    cameras: Sequence[str],
    image_hw: Optional[tuple[int, int]] = None,
    fp16: bool = False,
) -> ExportInfo:
    """Write ``student`` as ONNX (module docstring) to a path or a BytesIO.

    Args:
        student: a camera student with its weights (not modified; a copy is exported).
        out: file path or in-memory buffer.
        cameras: camera names in the order of the graph's camera axis.
        image_hw: (H, W) input size; None = the student's ``config.image_hw``.
        fp16: float16 weights and image input.

    Raises:
        ExportError: not a CameraStudent, a bad size, or fp16 without float16 support in this torch.
    """
    import copy

    if image_hw is None:
        if getattr(student, "config", None) is None:
            raise ExportError("the student has no config: pass image_hw")
        image_hw = tuple(student.config.image_hw)
    image_hw = (int(image_hw[0]), int(image_hw[1]))
    _check_exportable(student, image_hw)
    model = copy.deepcopy(student).eval().cpu()
    if fp16:
        model = model.half()  # the camera gate too: its inputs are O(1) (camera_parameters)
    graph = StudentHeadGraph(model, image_hw, fp16=fp16).eval()
    example = _example_inputs(model, len(cameras), image_hw, fp16)
    vt = model.view_transform
    h, w = image_hw[0] // vt.stride, image_hw[1] // vt.stride
    info = ExportInfo(
        num_cameras=len(cameras), cameras=tuple(cameras), image_hw=image_hw, num_depth_bins=vt.bins.num_bins,
        feature_hw=(h, w), grid_size=graph.grid_size, num_points=int(example[3].numel()), fp16=fp16,
        bev_pool="outer_product", trained_bev_pool=vt.bev_pool,
    )
    buffer = io.BytesIO()
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer notes
        torch.onnx.export(graph, example, buffer, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), do_constant_folding=True)
    data = _with_metadata(buffer.getvalue(), info)
    if isinstance(out, io.BytesIO):
        out.write(data)
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(data)
    return info


def _with_metadata(data: bytes, info: ExportInfo) -> bytes:
    import onnx

    model = onnx.load_from_string(data)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    return model.SerializeToString()


def read_export_info(model_bytes_or_path: bytes | str | os.PathLike) -> ExportInfo:
    """The :class:`ExportInfo` stored in an exported file.

    Raises:
        ExportError: the file has no x3kd metadata (not written by :func:`export_student`).
    """
    import onnx

    if isinstance(model_bytes_or_path, bytes):
        model = onnx.load_from_string(model_bytes_or_path)
    else:
        model = onnx.load(str(model_bytes_or_path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return ExportInfo.from_json(entry.value)
    raise ExportError(f"{model_bytes_or_path if not isinstance(model_bytes_or_path, bytes) else 'the model'} has no "
                      f"'{METADATA_KEY}' metadata: not written by x3kd export")


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike,
                      image_hw: Optional[tuple[int, int]] = None, fp16: bool = False) -> ExportInfo:
    """``x3kd export``: load a camera-student ``last.pt`` and write ``out`` (see :func:`export_student`).

    Raises:
        CheckpointError: not a camera-student checkpoint. ExportError: see :func:`export_student`.
    """
    from x3kd_core.experiment.loader import load_model

    model, exp = load_model(checkpoint, kinds=("student",))
    return export_student(model, out, tuple(exp.data.cameras), image_hw or tuple(exp.image_hw), fp16)
