"""Frozen teachers: the one way a teacher is frozen for distillation (live or cached alike)."""

from __future__ import annotations

from torch import nn

__all__ = ["freeze_teacher", "is_frozen"]


class _EvalOnlyTrain:
    """Replacement ``train`` of a frozen teacher: ignores ``mode`` and keeps eval mode (BN running
    statistics, no dropout). A plain object rather than a bound function so that the module still
    pickles (``torch.save(model)``) and deep-copies."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def freeze_teacher(module: nn.Module) -> nn.Module:
    """Freeze a teacher in place and return it.

    All parameters get ``requires_grad=False`` (the engine leaves them out of the optimiser and no
    gradient is computed for them), the module goes to eval mode, and its ``train()`` is
    overridden on this instance to keep it there: a surrounding ``model.train()`` (which the
    engine calls) would otherwise switch the teacher's BatchNorm back to batch statistics and
    update its running statistics from the student's training batches.
    """
    module.requires_grad_(False)
    module.train = _EvalOnlyTrain(module)
    module.eval()
    module._x3kd_frozen = True
    return module


def is_frozen(module: nn.Module) -> bool:
    """True if ``module`` went through :func:`freeze_teacher` and is still frozen."""
    return bool(getattr(module, "_x3kd_frozen", False)) and not module.training and not any(
        p.requires_grad for p in module.parameters()
    )
