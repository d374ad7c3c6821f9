"""Typed configuration of the four X3KD distillation components (load with ``x3kd_core.config``).

Provenance of the defaults. The paper (Klingner et al., CVPR 2023) fixes *what* each component
matches and at which stage (X-IS: perspective-view masks of an instance-segmentation teacher;
X-FD / X-AT: BEV features of a LiDAR teacher; X-OD: the teacher's dense head outputs); it also
uses all four together for its final model, hence every ``enabled`` default is True. The
numeric defaults below (loss weights, loss shapes, adapter and discriminator sizes, optimiser of
the discriminator) are OUR choices, sized so that each weighted term starts at the order of
magnitude of the detection loss (~1); each field says why where it is not obvious.

Every section (and the whole :class:`DistillConfig`) has defaults, so ``from_dict(DistillConfig,
{})`` gives the full X3KD recipe and an ablation only names what it changes, e.g.
``{"x_at": {"enabled": false}}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from x3kd_core.config import ConfigError

__all__ = [
    "XISConfig",
    "XFDConfig",
    "XATConfig",
    "XODRegressionWeights",
    "XODConfig",
    "DistillConfig",
    "SoftTargetLoss",
]

#: Soft-target binary losses shared by X-IS and X-OD (see :func:`x3kd_core.distill.x_od.soft_target_loss`).
SoftTargetLoss = Literal["qfl", "kl", "bce", "mse"]


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")


def _at_least_one(name: str, value: float) -> None:
    # |p - t|^beta with beta < 1 has an infinite derivative where p == t: NaN gradients.
    if not value >= 1.0:
        raise ConfigError(f"{name} must be >= 1, got {value}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class XISConfig:
    """X-IS: cross-task distillation from the 2D instance-segmentation teacher (perspective view).

    weight: multiplies the loss term ``x_is/mask``.
    hidden_channels / num_convs: the auxiliary mask head (``num_convs`` 3x3 conv-BN-ReLU, then a
        1x1 conv to the K class logits).
    loss: soft-target loss between the head's per-class foreground probability and the teacher's
        (downsampled) mask; ``qfl`` (quality focal loss, default: zero at equality and focusing on
        the few foreground pixels), ``kl`` (Bernoulli KL), ``bce`` (plain BCE, minimum = the
        target's entropy), ``mse`` (on probabilities).
    focal_beta: exponent of ``|p - t|`` in ``qfl`` (2, the Generalized Focal Loss default).
    """

    enabled: bool = True
    weight: float = 1.0
    hidden_channels: int = 64
    num_convs: int = 2
    loss: SoftTargetLoss = "qfl"
    focal_beta: float = 2.0

    def __post_init__(self) -> None:
        _non_negative("x_is.weight", self.weight)
        if self.hidden_channels < 1 or self.num_convs < 0:
            raise ConfigError("x_is.hidden_channels must be >= 1 and x_is.num_convs >= 0")
        _at_least_one("x_is.focal_beta", self.focal_beta)


@dataclass(frozen=True)
class XFDConfig:
    """X-FD: cross-modal feature distillation on the BEV grid (student -> LiDAR teacher features).

    weight: multiplies ``x_fd/feature``.
    adapter: ``conv1x1`` (a linear map of the student's channels) or ``conv_block`` (3x3
        conv-BN-ReLU then 1x1 conv; default, a little spatial freedom to re-align features).
    adapter_channels: hidden width of ``conv_block``.
    loss: ``mse`` or ``smooth_l1`` (per element, then the weighted mean below).
    smooth_l1_beta: transition point of ``smooth_l1``.
    foreground: where the loss concentrates: ``gt_gaussian`` (default; a gaussian over each GT
        box footprint, sigma = extent / 4 along the box axes), ``gt_box`` (1 inside each rotated
        GT footprint), ``teacher_heatmap`` (the teacher's max-class centre probability).
    foreground_weight / background_weight: the per-cell weight is
        ``background_weight + foreground_weight * fg`` with ``fg`` in [0, 1]. A small
        background weight keeps the empty road's features tied to the teacher's (a camera student
        smears objects along rays; the teacher does not), without letting the far more numerous
        background cells drown the objects.
    """

    enabled: bool = True
    weight: float = 1.0
    adapter: Literal["conv1x1", "conv_block"] = "conv_block"
    adapter_channels: int = 128
    loss: Literal["mse", "smooth_l1"] = "mse"
    smooth_l1_beta: float = 1.0
    foreground: Literal["gt_gaussian", "gt_box", "teacher_heatmap"] = "gt_gaussian"
    foreground_weight: float = 1.0
    background_weight: float = 0.05

    def __post_init__(self) -> None:
        _non_negative("x_fd.weight", self.weight)
        if self.adapter_channels < 1:
            raise ConfigError(f"x_fd.adapter_channels must be >= 1, got {self.adapter_channels}")
        _positive("x_fd.smooth_l1_beta", self.smooth_l1_beta)
        _non_negative("x_fd.foreground_weight", self.foreground_weight)
        _non_negative("x_fd.background_weight", self.background_weight)
        if self.foreground_weight + self.background_weight <= 0:
            raise ConfigError("x_fd.foreground_weight + x_fd.background_weight must be > 0")


@dataclass(frozen=True)
class XATConfig:
    """X-AT: adversarial training of the student's BEV features against the LiDAR teacher's.

    weight: multiplies the generator term ``x_at/gen`` (the student's side). Adversarial terms
        are kept small (0.1) so that they shape the feature distribution without dominating the
        detection loss (our choice).
    disc_channels: widths of the discriminator's stride-2 3x3 conv + LeakyReLU layers.
    disc_output: ``patch`` (one logit per output patch, PatchGAN-style: more, local verdicts per
        sample) or ``map`` (one logit per BEV map).
    disc_spectral_norm: spectral normalisation of every discriminator conv (Miyato et al. 2018): ``D``
        becomes (about) 1-Lipschitz per layer, so it cannot sharpen its verdict without bound and the
        student's generator gradient stays bounded. Off by default: on config/ablation/x3kd_main.yaml
        (row ``x_at_sn``, seeds 0-1) it kept the contest more open (clean accuracy 0.76 at the end of
        seed 0 vs 0.87 without) but X-AT alone stayed below the baseline (NDS -0.0087 +- 0.0044,
        plain form -0.0072 +- 0.0017).
    disc_lr / disc_betas / disc_weight_decay: Adam(W) of the discriminator, a separate optimiser
        (betas 0.5/0.999 is the usual GAN setting, DCGAN).
    adapter / adapter_channels: X-AT's OWN adapter from the student's BEV channels to the teacher's
        (as X-FD's: ``conv1x1`` or ``conv_block``). It is never X-FD's adapter: shared, the
        adversarial gradient pulled X-FD's regression target apart (issue 12: X-FD loss 0.51 alone,
        0.71 next to X-AT).
    noise_init / noise_target_acc / noise_rate / noise_max: instance noise, the same Gaussian
        added to BOTH of the discriminator's inputs (teacher and adapted student maps), with std
        ``level * std(teacher map of the batch)``. Raw LiDAR and camera BEV features are separable
        outright (a fresh discriminator reaches held-out accuracy 1.000 on them, issue 12), and a
        discriminator that always wins gives the student no useful gradient. A feedback controller
        holds the contest open: after each discriminator update ``level += noise_rate *
        sign(acc - noise_target_acc)`` (clamped to ``[0, noise_max]``), where ``acc`` is the
        discriminator's accuracy on the incoming batch *before* it trains on it (a held-out
        estimate), the idea of adaptive discriminator augmentation (Karras et al. 2020) applied
        to instance noise. ``noise_rate: 0`` keeps the level fixed at ``noise_init`` (0: no noise).
        Adding one noise to both distributions keeps their divergence's minimum where the two
        coincide, so the student is still pulled towards the teacher's distribution. The cap is
        high (16) because a patch discriminator averages the noise over many cells: on separable
        toy maps it took a level near 8 to bring its accuracy down to 0.75 (test_x_at.py).
    """

    enabled: bool = True
    weight: float = 0.1
    disc_channels: tuple[int, ...] = (64, 64)
    disc_output: Literal["patch", "map"] = "patch"
    disc_spectral_norm: bool = False
    disc_lr: float = 1e-4
    disc_betas: tuple[float, float] = (0.5, 0.999)
    disc_weight_decay: float = 0.0
    adapter: Literal["conv1x1", "conv_block"] = "conv_block"
    adapter_channels: int = 128
    noise_init: float = 1.0
    noise_target_acc: float = 0.75
    noise_rate: float = 0.02
    noise_max: float = 16.0

    def __post_init__(self) -> None:
        _non_negative("x_at.weight", self.weight)
        if self.adapter_channels < 1:
            raise ConfigError(f"x_at.adapter_channels must be >= 1, got {self.adapter_channels}")
        _non_negative("x_at.noise_init", self.noise_init)
        _non_negative("x_at.noise_rate", self.noise_rate)
        _non_negative("x_at.noise_max", self.noise_max)
        if not 0.5 < self.noise_target_acc < 1.0:
            raise ConfigError(f"x_at.noise_target_acc must be in (0.5, 1), got {self.noise_target_acc}")
        if self.noise_init > self.noise_max:
            raise ConfigError(f"x_at.noise_init ({self.noise_init}) must be <= x_at.noise_max ({self.noise_max})")
        if not self.disc_channels or any(c < 1 for c in self.disc_channels):
            raise ConfigError(f"x_at.disc_channels must be a non-empty list of widths >= 1, got {self.disc_channels}")
        _positive("x_at.disc_lr", self.disc_lr)
        if not all(0.0 <= b < 1.0 for b in self.disc_betas):
            raise ConfigError(f"x_at.disc_betas must be in [0, 1), got {self.disc_betas}")
        _non_negative("x_at.disc_weight_decay", self.disc_weight_decay)


@dataclass(frozen=True)
class XODRegressionWeights:
    """Weights of the regression branches inside ``x_od/regression`` (velocity down-weighted as
    in CenterPoint's code weights, 0.2)."""

    offset: float = 1.0
    height: float = 1.0
    log_size: float = 1.0
    rot: float = 1.0
    velocity: float = 0.2

    def __post_init__(self) -> None:
        for name in ("offset", "height", "log_size", "rot", "velocity"):
            _non_negative(f"x_od.regression_weights.{name}", getattr(self, name))


@dataclass(frozen=True)
class XODConfig:
    """X-OD: cross-modal output distillation (student head follows the LiDAR teacher's head).

    heatmap_weight: multiplies ``x_od/heatmap``; regression_weight: multiplies
        ``x_od/regression`` (0.25, the weight CenterPoint gives its own box regression).
    heatmap_loss: soft-target loss on the class heatmaps' probabilities (see :class:`XISConfig`).
    focal_beta: exponent of ``|p - t|`` in ``qfl``.
    regression_min_confidence: cells whose teacher max-class probability is below this get no
        regression weight: the teacher's box regressions are only trained at object centres, so
        elsewhere they are noise, and the many background cells would otherwise outweigh the
        objects in the normalised sum (our choice, 0.1 = the teacher's decoding threshold).
    regression_weights: per-branch weights inside the regression term.
    """

    enabled: bool = True
    heatmap_weight: float = 1.0
    regression_weight: float = 0.25
    heatmap_loss: SoftTargetLoss = "qfl"
    focal_beta: float = 2.0
    regression_min_confidence: float = 0.1
    regression_weights: XODRegressionWeights = field(default_factory=XODRegressionWeights)

    def __post_init__(self) -> None:
        _non_negative("x_od.heatmap_weight", self.heatmap_weight)
        _non_negative("x_od.regression_weight", self.regression_weight)
        _at_least_one("x_od.focal_beta", self.focal_beta)
        if not 0.0 <= self.regression_min_confidence < 1.0:
            raise ConfigError(f"x_od.regression_min_confidence must be in [0, 1), got {self.regression_min_confidence}")


#: X3KD's components in the paper's order (X-IS, X-FD, X-AT, X-OD): the fields of :class:`DistillConfig`.
COMPONENTS = ("x_is", "x_fd", "x_at", "x_od")


@dataclass(frozen=True)
class DistillConfig:
    """All four X3KD components; each has an ``enabled`` flag, its weight(s) and its parameters."""

    x_is: XISConfig = field(default_factory=XISConfig)
    x_fd: XFDConfig = field(default_factory=XFDConfig)
    x_at: XATConfig = field(default_factory=XATConfig)
    x_od: XODConfig = field(default_factory=XODConfig)

    @property
    def enabled_components(self) -> tuple[str, ...]:
        """Names of the enabled components, e.g. ``('x_is', 'x_fd', 'x_at', 'x_od')``."""
        return tuple(name for name in COMPONENTS if getattr(self, name).enabled)

    @classmethod
    def none(cls) -> "DistillConfig":
        """Every component disabled (the plain student baseline)."""
        return cls(
            x_is=XISConfig(enabled=False),
            x_fd=XFDConfig(enabled=False),
            x_at=XATConfig(enabled=False),
            x_od=XODConfig(enabled=False),
        )
