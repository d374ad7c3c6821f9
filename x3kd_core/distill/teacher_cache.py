"""Frozen-teacher outputs computed once over a split and read back by sample token.

A frozen teacher gives the same output for the same un-augmented sample at every step, so its
forward pass can be paid for once instead of every step (the Mask R-CNN of X-IS costs ~2 s of a
~2.7 s CPU step on all six cameras). :func:`build_teacher_cache` runs one teacher over every
sample of a split and writes its outputs to a folder; :class:`CachedTeacher` stands in for the
teacher during training (``x3kd_core.train.tasks.run_teachers`` knows it) and returns the stored
outputs of ``batch.tokens``.

What is stored (one folder per teacher; ``N`` samples in ``tokens`` order):

* BEV teachers (``lidar``, ``radar``): ``bev_features.npy`` (N, C_t, N_x, N_y) and one file per
  :class:`~x3kd_core.models.heads.center_head.HeadOutputs` field (``heatmap.npy`` (N, K, N_x,
  N_y) logits, ``offset.npy``, ``height.npy``, ``log_size.npy``, ``rot.npy``, ``velocity.npy``),
  all float16 (relative precision ~1e-3, far below what distillation can resolve);
* ``instance_seg``: ``masks.npy`` (N, N_cam, K, H, W) uint8, the dense per-class masks of
  ``InstanceSegmenter.mask_targets`` quantised to 1/255 (H, W = the student's input size);
* ``meta.json``: which checkpoint (its SHA-256), split, loader inputs and array shapes; written
  last, so a folder without it is an unfinished cache.

Validity. The outputs belong to the *un-augmented* sample. Image augmentation moves pixels, so a
mask cache is wrong under it; BEV augmentation moves the scene, so a BEV cache is wrong under it
(``x3kd_core.experiment`` refuses those combinations). Image augmentation does not touch the
ego-frame points, so a BEV cache stays valid with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CACHE_VERSION",
    "BEV_TEACHERS",
    "HEAD_FIELDS",
    "TeacherCacheError",
    "CacheKey",
    "file_sha256",
    "build_teacher_cache",
    "CachedTeacher",
]

_LOG = logging.getLogger("x3kd.teacher_cache")

#: Bumped when the stored layout changes; older caches are then rejected, not misread.
CACHE_VERSION = 1
#: Teacher names whose outputs are BEV detector outputs.
BEV_TEACHERS = ("lidar", "radar")
#: HeadOutputs fields stored for a BEV teacher (same order as the dataclass).
HEAD_FIELDS = ("heatmap", "offset", "height", "log_size", "rot", "velocity")
_MASK_SCALE = 255.0


class TeacherCacheError(RuntimeError):
    """A cache folder that is missing, unfinished, or built from other inputs than asked for."""


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file (identifies the teacher checkpoint a cache was built from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Everything a cache's contents depend on; a cache is reused only when all of it matches.

    teacher: ``lidar``, ``radar`` or ``instance_seg``. checkpoint_sha256: the teacher weights.
    dataroot / version / split: the samples. image_hw / resize_scale / crop_bottom_fraction: the
    images the teacher saw (instance_seg: the student's input; (0, 0) for BEV teachers).
    lidar_sweeps / radar_sweeps: the point inputs of a BEV teacher (0 for instance_seg).
    grid: the BEV grid as a plain dict.
    """

    teacher: str
    checkpoint_sha256: str
    dataroot: str
    version: str
    split: str
    image_hw: tuple[int, int]
    lidar_sweeps: int
    radar_sweeps: int
    grid: dict
    resize_scale: Optional[float] = None
    crop_bottom_fraction: float = 0.0

    def to_json(self) -> dict:
        out = asdict(self)
        out["image_hw"] = list(self.image_hw)
        return out

    def differences(self, other: dict) -> list[str]:
        """Fields of ``other`` (a stored key) that differ from this one, as 'field: stored != wanted'."""
        mine = json.loads(json.dumps(self.to_json()))
        return [f"{k}: cached {other.get(k)!r} != wanted {v!r}" for k, v in mine.items() if other.get(k) != v]


def _write_array(folder: Path, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)


@torch.no_grad()
def build_teacher_cache(
    teacher: nn.Module,
    key: CacheKey,
    loader: torch.utils.data.DataLoader,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
) -> Path:
    """Run a frozen teacher over every batch of ``loader`` and store its outputs in ``out_dir``.

    Args:
        teacher: LidarDetector / RadarDetector (``key.teacher`` in BEV_TEACHERS) or
            InstanceSegmenter (``key.teacher == 'instance_seg'``), already loaded; put in eval mode.
        key: what the outputs depend on (stored in meta.json and checked by :class:`CachedTeacher`).
        loader: un-augmented, unshuffled batches (:class:`~x3kd_core.structures.Batch`) of the split.
        out_dir: folder to fill (created; an existing meta.json is removed first, so an interrupted
            rebuild never leaves a stale-but-valid-looking cache).

    Returns: ``out_dir``.

    Raises:
        TeacherCacheError: another process is building this cache (``build.lock`` exists). Two
            builders would truncate each other's arrays; if no builder runs any more (it was
            killed), delete the folder and build again.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / "build.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise TeacherCacheError(f"{out}: another process is building this cache ({lock} exists; if none is, "
                                "delete the folder and build again)") from None
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return _build(teacher, key, loader, out, device)
    finally:
        lock.unlink(missing_ok=True)


def _build(teacher: nn.Module, key: CacheKey, loader, out: Path, device) -> Path:
    (out / "meta.json").unlink(missing_ok=True)
    teacher = teacher.to(device).eval()
    n_total = len(loader.dataset)
    arrays: dict[str, np.ndarray] = {}
    tokens: list[str] = []
    t0 = time.perf_counter()
    for batch in loader:
        batch = batch.to(device)
        start = len(tokens)
        tokens.extend(batch.tokens)
        stop = len(tokens)
        if key.teacher in BEV_TEACHERS:
            points = batch.lidar_points if key.teacher == "lidar" else batch.radar_points
            outputs = teacher(points)
            fields = {"bev_features": outputs.bev_features}
            fields.update({name: getattr(outputs.head, name) for name in HEAD_FIELDS})
            for name, value in fields.items():
                value = value.float().cpu().numpy()
                if name not in arrays:
                    arrays[name] = _write_array(out, name, (n_total, *value.shape[1:]), np.float16)
                arrays[name][start:stop] = value.astype(np.float16)
        elif key.teacher == "instance_seg":
            masks = teacher.mask_targets(batch.images).cpu().numpy()
            if "masks" not in arrays:
                arrays["masks"] = _write_array(out, "masks", (n_total, *masks.shape[1:]), np.uint8)
            arrays["masks"][start:stop] = np.rint(np.clip(masks, 0.0, 1.0) * _MASK_SCALE).astype(np.uint8)
        else:
            raise ValueError(f"no caching rule for teacher {key.teacher!r}")
        _LOG.info("teacher cache %s: %d/%d samples (%.0f s)", key.teacher, stop, n_total, time.perf_counter() - t0)
    if len(tokens) != n_total:
        raise TeacherCacheError(f"{out}: the loader gave {len(tokens)} samples, its dataset has {n_total}")
    if len(set(tokens)) != len(tokens):
        raise TeacherCacheError(f"{out}: duplicate sample tokens in the split")
    for array in arrays.values():
        array.flush()
    meta = {
        "cache_version": CACHE_VERSION,
        "key": key.to_json(),
        "tokens": tokens,
        "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()},
        "build_s": time.perf_counter() - t0,
    }
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out / "meta.json")
    return out


class CachedTeacher(nn.Module):
    """Stand-in for a frozen teacher: the stored outputs of the samples of a batch.

    Has no parameters (nothing to freeze, move or optimise); ``forward(tokens, device)`` returns
    what the teacher returned for those samples: a
    :class:`~x3kd_core.models.teachers.lidar.BevDetectorOutputs` (float32) for a BEV teacher, or
    the (B, N_cam, K, H, W) float32 masks in [0, 1] for ``instance_seg``.

    Args:
        folder: a cache written by :func:`build_teacher_cache`.
        expect: if given, the key the cache must have been built with.

    Raises:
        TeacherCacheError: no finished cache there, an older layout, or a different key (every
            differing field is named).
    """

    def __init__(self, folder: str | os.PathLike, expect: Optional[CacheKey] = None) -> None:
        super().__init__()
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise TeacherCacheError(f"{self.folder}: no finished teacher cache (meta.json missing)")
        meta = json.loads(meta_path.read_text())
        if meta.get("cache_version") != CACHE_VERSION:
            raise TeacherCacheError(f"{self.folder}: cache layout {meta.get('cache_version')}, "
                                    f"this code reads {CACHE_VERSION}; rebuild it")
        if expect is not None:
            diff = expect.differences(meta["key"])
            if diff:
                raise TeacherCacheError(f"{self.folder} was built from other inputs: " + "; ".join(diff))
        self.teacher_name: str = meta["key"]["teacher"]
        self.index = {token: i for i, token in enumerate(meta["tokens"])}
        self._arrays = {name: np.load(self.folder / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}

    def __len__(self) -> int:
        return len(self.index)

    def _rows(self, tokens: Sequence[str]) -> list[int]:
        missing = [t for t in tokens if t not in self.index]
        if missing:
            raise KeyError(f"teacher cache {self.folder} has no outputs for sample(s) {missing[:3]} "
                           f"(it covers {len(self.index)} samples of one split)")
        return [self.index[t] for t in tokens]

    def _stack(self, name: str, rows: list[int], device) -> Tensor:
        return torch.from_numpy(np.stack([self._arrays[name][r] for r in rows])).to(device=device, dtype=torch.float32)

    def forward(self, tokens: Sequence[str], device: str | torch.device = "cpu"):
        from x3kd_core.models.heads.center_head import HeadOutputs
        from x3kd_core.models.teachers.lidar import BevDetectorOutputs

        rows = self._rows(tokens)
        if self.teacher_name == "instance_seg":
            return self._stack("masks", rows, device) / _MASK_SCALE
        head = HeadOutputs(**{name: self._stack(name, rows, device) for name in HEAD_FIELDS})
        return BevDetectorOutputs(bev_features=self._stack("bev_features", rows, device), head=head)
