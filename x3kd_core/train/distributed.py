"""Data-parallel training across processes (PyTorch DDP), launched with ``torchrun``.

One process per device. ``torchrun --nproc_per_node K ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them
(``env://``) and joins the group with NCCL on CUDA and Gloo on the CPU. Without those variables it
returns a single-process context and nothing here touches ``torch.distributed``.

How the engine splits work (``x3kd_core.train.engine``):

* ``TrainConfig.batch_size`` is the *global* batch; each rank loads ``batch_size / world_size``
  samples of every global batch (:class:`ShardedBatchSampler`), so K processes see exactly the
  samples one process would, and averaged DDP gradients equal the single-process gradient of a
  per-sample-mean loss.
* Only rank 0 writes logs and checkpoints; logged losses are averaged over ranks first.
* BatchNorm computes statistics per rank (over the local batch), so a model with BatchNorm does
  not match a single-process run exactly; convert it with
  ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` if that matters (costs one all-reduce per BN).

Example (2 GPUs on one machine)::

    torchrun --standalone --nproc_per_node 2 -m x3kd_core.cli train --config ...
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    rank: global process index in [0, world_size); local_rank: index on this machine (picks the
    GPU); device: the device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the torchrun / env:// variables describe a job of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by the environment (torchrun), or run single-process.

    Args:
        device: ``"cuda"``, ``"cpu"``, a full device or None (CUDA when available). Under torchrun
            a CUDA process uses ``cuda:<LOCAL_RANK>``.
        timeout_s: collective timeout; rank 0 alone runs validation while the others wait at a
            barrier, so this must exceed one validation pass.

    Returns:
        The context; call :func:`cleanup_distributed` when training ends.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if not launched_by_torchrun():
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            # Binding the default process group to the device lets NCCL set up eagerly.
            device_id=device if device.type == "cuda" else None,
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    """Leave the process group (no-op when single-process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``values`` over ranks (returns a new tensor; input unchanged). Identity when single."""
    if not ctx.is_distributed:
        return values.clone()
    out = values.detach().clone().to(ctx.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / ctx.world_size).to(values.device)


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """One picklable object from every rank, ordered by rank. ``[obj]`` when single-process."""
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    """DDP-wrap ``module`` (which must already be on ``ctx.device``); unchanged when single-process.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts equal.
    Use this also for the parameters of an extra step (e.g. the X-AT discriminator) so its
    gradients are averaged over ranks.
    """
    if not ctx.is_distributed:
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


class BatchIndices(list):
    """The sample indices of one local batch, tagged with where the batch sits in training.

    ``rank``, ``epoch`` and ``batch`` (global batch index within the epoch) travel with the
    indices into DataLoader workers, so data randomness can be seeded by position rather than by
    history (see ``engine.PositionSeededDataset``).
    """

    def __init__(self, indices: list[int], rank: int, epoch: int, batch: int) -> None:
        super().__init__(indices)
        self.rank = rank
        self.epoch = epoch
        self.batch = batch


class ShardedBatchSampler(Sampler[list[int]]):
    """Seeded, resumable batch sampler that splits every global batch across ranks.

    Epoch ``e`` is a permutation of ``range(num_samples)`` drawn from a generator seeded with
    ``seed + e`` (``shuffle=False``: the identity). It is cut into ``num_samples // global_batch``
    global batches; the incomplete tail is dropped so every rank always gets the same local batch
    size (a different tail every epoch, so no sample is starved). Rank ``r`` of ``W`` takes the
    contiguous slice ``[r * B / W, (r + 1) * B / W)`` of each global batch, so the union over ranks
    is the batch one process would see.

    Unlike ``torch.utils.data.DistributedSampler`` the order depends only on (seed, epoch), not on
    the world size, and iteration can start at any batch (:meth:`set_epoch`'s ``start_batch``) -
    which is what an exact mid-epoch resume needs.
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True) -> None:
        if global_batch % world_size != 0:
            raise ValueError(f"global batch size {global_batch} is not divisible by world size {world_size}")
        if num_samples < global_batch:
            raise ValueError(f"dataset has {num_samples} samples, fewer than one global batch of {global_batch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start_batch`` batches."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.batches_per_epoch}]")
        self.epoch = epoch
        self.start_batch = start_batch

    def global_order(self) -> list[int]:
        """The epoch's sample order before sharding (all ranks agree on it)."""
        if not self.shuffle:
            return list(range(self.num_samples))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=gen).tolist()

    def __iter__(self) -> Iterator[BatchIndices]:
        order = self.global_order()
        lo = self.rank * self.local_batch
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * self.global_batch + lo
            yield BatchIndices(order[start:start + self.local_batch], self.rank, self.epoch, b)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

