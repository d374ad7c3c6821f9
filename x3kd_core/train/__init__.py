"""Model-agnostic training: the loop (:mod:`.engine`), crash-safe checkpoints (:mod:`.checkpoint`),
multi-process data parallelism (:mod:`.distributed`) and metric logs (:mod:`.logging`).

The CLI calls :func:`run_training`; see :mod:`x3kd_core.train.engine` for the model protocol
(``model.training_losses(batch) -> dict[str, Tensor]``, optional extra steps and validation).
"""

from x3kd_core.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from x3kd_core.train.distributed import DistContext, ShardedBatchSampler, init_distributed, wrap_ddp
from x3kd_core.train.engine import TrainConfig, Trainer, TrainResult, lr_factor, run_training, seed_everything

__all__ = [
    "CheckpointError",
    "DistContext",
    "ShardedBatchSampler",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_factor",
    "run_training",
    "save_checkpoint",
    "seed_everything",
    "wrap_ddp",
]
