"""X-OD: cross-modal output distillation (the camera student's dense head follows the LiDAR teacher's).

Both heads are CenterHeads on the same BEV grid (:class:`~x3kd_core.models.heads.center_head.HeadOutputs`),
so the teacher's outputs are dense, cell-aligned pseudo-targets for every student output:

* heatmap: the student's class probabilities ``p = sigmoid(s)`` follow the teacher's
  ``t = sigmoid(s_T)`` under a soft-target binary loss (:func:`soft_target_loss`), summed over
  classes and cells and normalised by the teacher's probability mass ``max(1, sum t)`` (the soft
  analogue of CenterPoint's normalisation by the number of objects);
* regression maps (offset, height, log_size, rot, velocity): L1 to the teacher's maps, weighted per
  cell by the teacher's max-class confidence ``c = max_k t_k`` (0 where ``c`` is below
  ``min_confidence``), normalised by the weight sum.

Also home of :func:`soft_target_loss`, shared with X-IS.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x3kd_core.distill.config import SoftTargetLoss, XODConfig, XODRegressionWeights
from x3kd_core.models.heads.center_head import HeadOutputs

__all__ = ["soft_target_loss", "XODLoss", "REGRESSION_BRANCHES"]

#: The CenterHead regression branches that X-OD distils, in HeadOutputs field names.
REGRESSION_BRANCHES: tuple[str, ...] = ("offset", "height", "log_size", "rot", "velocity")


def soft_target_loss(logits: Tensor, target: Tensor, kind: SoftTargetLoss = "qfl", beta: float = 2.0) -> Tensor:
    """Element-wise binary loss of logits against soft targets in [0, 1] (no reduction).

    With ``p = sigmoid(logits)``, ``t = target`` and ``BCE(p, t) = -t log p - (1 - t) log(1 - p)``:

    * ``qfl``: ``|t - p|^beta * BCE(p, t)`` (quality focal loss, Generalized Focal Loss): zero
      where ``p == t``, and the easy, matching background cells fade out like in a focal loss;
    * ``kl``: ``BCE(p, t) - H(t)``, the Bernoulli KL divergence ``KL(t || p)``: zero iff ``p == t``;
    * ``bce``: ``BCE(p, t)``; minimal (= the entropy ``H(t)``, not 0) at ``p == t``;
    * ``mse``: ``(p - t)^2``.

    Computed in float32 from logits (``binary_cross_entropy_with_logits``), so saturated logits do
    not overflow.

    Args:
        logits: (...) unnormalised scores. target: (...) same shape, in [0, 1].

    Returns:
        (...) float32, >= 0.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    logits = logits.float()
    target = target.float()
    if kind == "mse":
        return (torch.sigmoid(logits) - target) ** 2
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if kind == "bce":
        return bce
    if kind == "kl":
        entropy = -(torch.xlogy(target, target) + torch.xlogy(1.0 - target, 1.0 - target))
        return (bce - entropy).clamp_min(0.0)  # rounding can leave -1e-7 at equality
    if kind == "qfl":
        return (target - torch.sigmoid(logits)).abs().pow(beta) * bce
    raise ValueError(f"unknown soft-target loss {kind!r} (qfl, kl, bce, mse)")


class XODLoss(nn.Module):
    """Cross-modal output distillation loss (stateless; no parameters).

    Formula (B samples, K classes, N_x x N_y cells; ``s``/``s_T`` student/teacher heatmap logits,
    ``t = sigmoid(s_T)``, ``c = max_k t_k``, ``w = c * [c >= min_confidence]``):

        heatmap    = sum_{b,k,i,j} ell(s, t) / max(1, sum_{b,k,i,j} t)            (ell: soft_target_loss)
        regression = sum_r lambda_r * sum_{b,i,j} w * mean_ch |y_r - y_r^T| / sum_{b,i,j} w

    over the branches r in :data:`REGRESSION_BRANCHES` (0 when ``sum w == 0``). Teacher outputs
    are detached. Both terms are 0 when the student's outputs equal the teacher's (``bce``: the
    heatmap term is then minimal, not 0).

    Default weights in the total objective (applied by ``DistillationLosses``, see
    :class:`~x3kd_core.distill.config.XODConfig`): 1.0 x heatmap, 0.25 x regression.

    Args:
        heatmap_loss: kind of :func:`soft_target_loss`; focal_beta: its ``beta`` for ``qfl``.
        min_confidence: teacher confidence below which a cell gets no regression weight.
        regression_weights: ``lambda_r`` per branch.
    """

    def __init__(
        self,
        *,
        heatmap_loss: SoftTargetLoss = "qfl",
        focal_beta: float = 2.0,
        min_confidence: float = 0.1,
        regression_weights: XODRegressionWeights | Mapping[str, float] = XODRegressionWeights(),
    ) -> None:
        super().__init__()
        self.heatmap_loss = heatmap_loss
        self.focal_beta = focal_beta
        self.min_confidence = min_confidence
        if isinstance(regression_weights, XODRegressionWeights):
            regression_weights = {name: getattr(regression_weights, name) for name in REGRESSION_BRANCHES}
        unknown = set(regression_weights) - set(REGRESSION_BRANCHES)
        if unknown:
            raise ValueError(f"unknown regression branches {sorted(unknown)} (known: {REGRESSION_BRANCHES})")
        self.regression_weights = {name: float(regression_weights.get(name, 0.0)) for name in REGRESSION_BRANCHES}

    @classmethod
    def from_config(cls, config: XODConfig) -> "XODLoss":
        return cls(
            heatmap_loss=config.heatmap_loss,
            focal_beta=config.focal_beta,
            min_confidence=config.regression_min_confidence,
            regression_weights=config.regression_weights,
        )

    def regression_weight_map(self, teacher_heatmap_logits: Tensor) -> Tensor:
        """(B, K, N_x, N_y) teacher logits -> (B, 1, N_x, N_y) per-cell regression weight ``w``."""
        conf = torch.sigmoid(teacher_heatmap_logits.detach().float()).amax(dim=1, keepdim=True)
        return torch.where(conf >= self.min_confidence, conf, torch.zeros_like(conf))

    def forward(self, student: HeadOutputs, teacher: HeadOutputs) -> dict[str, Tensor]:
        """Args: student / teacher: HeadOutputs on the same grid (B, ., N_x, N_y).

        Returns:
            ``heatmap``, ``regression`` (scalars, unweighted), and detached diagnostics:
            ``stat/l1_<branch>`` (the weighted mean L1 of each branch), ``stat/weight_cells``
            (number of cells with regression weight > 0, per sample), ``stat/heatmap_mae``
            (mean |p - t| over all elements).
        """
        if student.heatmap.shape != teacher.heatmap.shape:
            raise ValueError(
                f"student heatmap {tuple(student.heatmap.shape)} and teacher heatmap "
                f"{tuple(teacher.heatmap.shape)} differ: are both heads on the same grid and classes?"
            )
        t = torch.sigmoid(teacher.heatmap.detach().float())
        per_elem = soft_target_loss(student.heatmap, t, self.heatmap_loss, self.focal_beta)
        heatmap = per_elem.sum() / t.sum().clamp_min(1.0)

        w = self.regression_weight_map(teacher.heatmap)  # (B, 1, N_x, N_y)
        w_sum = w.sum()
        regression = heatmap.new_zeros(())
        stats: dict[str, Tensor] = {}
        for name in REGRESSION_BRANCHES:
            s_map = getattr(student, name).float()
            t_map = getattr(teacher, name).detach().float()
            if s_map.shape != t_map.shape:
                raise ValueError(f"{name}: student {tuple(s_map.shape)} vs teacher {tuple(t_map.shape)}")
            l1 = (s_map - t_map).abs().mean(dim=1, keepdim=True)  # (B, 1, N_x, N_y)
            # clamp: with no confident cell the numerator is 0 as well, so the term is 0.
            branch = (w * l1).sum() / w_sum.clamp_min(1e-6)
            stats[f"stat/l1_{name}"] = branch.detach()
            regression = regression + self.regression_weights[name] * branch
        stats["stat/weight_cells"] = (w > 0).float().sum().detach() / w.shape[0]
        stats["stat/heatmap_mae"] = (torch.sigmoid(student.heatmap.detach().float()) - t).abs().mean()
        return {"heatmap": heatmap, "regression": regression, **stats}
