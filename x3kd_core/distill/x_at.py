"""X-AT: adversarial training of the camera student's BEV features against the LiDAR teacher's.

A small discriminator ``D`` looks at BEV feature maps in the teacher's channel space and tells
LiDAR-teacher features (label 1) from camera-student features (label 0); the student is trained to
make ``D`` answer 1 on its own features. Unlike X-FD this matches the *distribution* of the
features, not cell-wise values, so it also acts where the teacher's exact values are out of the
camera's reach.

Where it is applied (``DistillationLosses`` does this): to the student features mapped by X-AT's
own adapter (never X-FD's: see :class:`~x3kd_core.distill.config.XATConfig`); ``D`` therefore
always sees C_t channels.

Keeping the contest open (:class:`InstanceNoise`): the same Gaussian noise is added to both of
``D``'s inputs, at a level a feedback controller moves so that ``D``'s accuracy on each incoming
batch (measured before ``D`` trains on it) stays near a target inside (0.5, 1).

Two optimisers, two steps per training iteration:

1. main step (the engine's): the student minimises ``weight * x_at/gen`` (non-saturating GAN loss)
   with ``D`` held fixed (:meth:`XATLoss.generator_loss` runs ``D`` with detached parameters, so
   no gradient reaches them); meanwhile the student's forward records the detached adapted student
   and teacher BEV maps of this batch in :class:`XATContext`;
2. discriminator step (:class:`DiscriminatorStep`, an ``extra_steps`` entry of the engine): one
   update of ``D`` on the recorded maps with its own optimiser, without a second model forward.

Ownership: the discriminator is NOT a submodule of the student's training module (it would land in
the main optimiser and in DDP's gradient sync of the student); :class:`DiscriminatorStep` owns it
and its optimiser, and checkpoints both through ``state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from x3kd_core.distill.config import XATConfig

__all__ = [
    "BevDiscriminator",
    "BevPair",
    "InstanceNoise",
    "XATContext",
    "XATLoss",
    "DiscriminatorStep",
    "make_discriminator_optimizer",
    "make_discriminator_step",
]


class BevDiscriminator(nn.Module):
    """BEV feature maps -> real/fake logits.

    ``len(channels)`` x (3x3 conv with stride 2, LeakyReLU 0.2), then a 1x1 conv to one logit.
    No normalisation layers: the teacher and student maps of one update are scored in one batch,
    and batch statistics would let the two halves leak into each other's verdicts. With
    ``spectral_norm`` every conv's weight is divided by its largest singular value (Miyato et al.
    2018, one power iteration per training forward: ``torch.nn.utils.parametrizations``), which
    bounds how steeply ``D``'s logit can change with its input, and so the size of the push the
    student receives through the generator loss.

    Shapes: x (B, C_in, N_x, N_y) ->
    ``output='patch'``: (B, 1, P_x, P_y) with ``P = ceil(N / 2^len(channels))``, one logit per patch;
    ``output='map'``: (B, 1, 1, 1), the patch features averaged before the last conv.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...] = (64, 64),
                 output: Literal["patch", "map"] = "patch", spectral_norm: bool = False) -> None:
        super().__init__()
        if output not in ("patch", "map"):
            raise ValueError(f"unknown discriminator output {output!r} (patch, map)")

        def conv(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> nn.Module:
            layer = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)
            return nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer

        layers: list[nn.Module] = []
        c = in_channels
        for width in channels:
            layers += [conv(c, width, 3, 2, 1), nn.LeakyReLU(0.2)]
            c = width
        self.body = nn.Sequential(*layers)
        self.out = conv(c, 1, 1, 1, 0)
        self.output = output
        self.in_channels = in_channels
        self.spectral_norm = spectral_norm

    @classmethod
    def from_config(cls, config: XATConfig, in_channels: int) -> "BevDiscriminator":
        return cls(in_channels, config.disc_channels, config.disc_output, config.disc_spectral_norm)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        if self.output == "map":
            h = h.mean(dim=(2, 3), keepdim=True)
        return self.out(h)


@dataclass
class BevPair:
    """Detached BEV maps of one batch, for the discriminator step.

    student_bev: (B, C_t, N_x, N_y) adapted student features. teacher_bev: (B, C_t, N_x, N_y).
    noise_std: std of the instance noise the generator step used on this batch (feature units).
    """

    student_bev: Tensor
    teacher_bev: Tensor
    noise_std: float = 0.0


class InstanceNoise:
    """Gaussian instance noise on the discriminator's inputs, its level held by a feedback controller.

    The noise std of a batch is ``level * std(teacher map)`` (:meth:`std_for`); after each
    discriminator update :meth:`update` moves ``level`` by ``rate`` towards more noise when the
    discriminator's pre-update accuracy is above ``target_acc`` and less when below, clamped to
    ``[0, max_level]`` (see :class:`~x3kd_core.distill.config.XATConfig`). ``rate = 0`` keeps the
    level fixed; ``level = rate = 0`` is no noise (the default).

    Args: level: initial level; target_acc: in (0.5, 1); rate: step per update; max_level: cap.
    """

    def __init__(self, level: float = 0.0, target_acc: float = 0.75, rate: float = 0.0,
                 max_level: float = 4.0) -> None:
        if level < 0 or rate < 0 or max_level < level:
            raise ValueError(f"instance noise needs 0 <= level <= max_level and rate >= 0, got "
                             f"level={level}, rate={rate}, max_level={max_level}")
        self.level = float(level)
        self.target_acc = float(target_acc)
        self.rate = float(rate)
        self.max_level = float(max_level)

    @classmethod
    def from_config(cls, config: XATConfig) -> "InstanceNoise":
        return cls(config.noise_init, config.noise_target_acc, config.noise_rate, config.noise_max)

    def std_for(self, teacher_bev: Tensor) -> float:
        """Noise std (feature units) for a batch whose teacher map is ``teacher_bev``."""
        if self.level == 0.0:
            return 0.0
        return self.level * float(teacher_bev.detach().float().std())

    @staticmethod
    def apply(x: Tensor, std: float) -> Tensor:
        """``x + N(0, std^2)`` (``x`` itself when std is 0)."""
        return x + std * torch.randn_like(x) if std > 0 else x

    def update(self, accuracy: float) -> None:
        """One controller step from the discriminator's pre-update accuracy on a batch."""
        if self.rate == 0.0 or accuracy == self.target_acc:
            return
        step = self.rate if accuracy > self.target_acc else -self.rate
        self.level = min(self.max_level, max(0.0, self.level + step))

    def state_dict(self) -> dict:
        return {"level": self.level}

    def load_state_dict(self, state: dict) -> None:
        self.level = float(state["level"])


class XATContext:
    """Hand-over of the current batch's BEV maps from the student's forward to the discriminator step.

    :meth:`record` (called during the main forward) keeps detached copies; :meth:`take` (called by
    :class:`DiscriminatorStep`) returns them and empties the context, so a step can never train
    ``D`` on a stale batch.
    """

    def __init__(self) -> None:
        self.pending: BevPair | None = None

    def record(self, student_bev: Tensor, teacher_bev: Tensor, noise_std: float = 0.0) -> None:
        """Keep detached student (adapted) / teacher BEV maps (B, C_t, N_x, N_y) of this batch and
        the instance-noise std the generator step used."""
        if student_bev.shape != teacher_bev.shape:
            raise ValueError(f"student {tuple(student_bev.shape)} and teacher {tuple(teacher_bev.shape)} BEV differ")
        self.pending = BevPair(student_bev.detach(), teacher_bev.detach(), noise_std)

    @property
    def filled(self) -> bool:
        return self.pending is not None

    def take(self) -> BevPair:
        """The recorded pair; the context is empty afterwards.

        Raises:
            RuntimeError: nothing was recorded since the last ``take`` (X-AT did not run in training
                mode in the main step).
        """
        if self.pending is None:
            raise RuntimeError(
                "X-AT discriminator step: no BEV features recorded for this batch; the main step must run "
                "DistillationLosses (with X-AT enabled, in training mode) before the discriminator step"
            )
        pair, self.pending = self.pending, None
        return pair


class XATLoss(nn.Module):
    """Adversarial BEV losses around a :class:`BevDiscriminator`.

    Formulas (``D`` logits; ``BCE(z, y)`` = binary cross-entropy with logits, mean over samples and
    patches; ``a`` adapted student features, ``f_t`` teacher features, both (B, C_t, N_x, N_y)):

        disc = 0.5 * (BCE(D(f_t), 1) + BCE(D(a.detach()), 0))       (discriminator's objective)
        gen  = BCE(D(a), 1)  with D's parameters held fixed          (student's, non-saturating)

    ``disc`` is ``log 2`` for a discriminator that cannot tell (logits 0) and tends to 0 for one
    that separates; ``gen`` is ``log 2`` at logits 0 and tends to 0 when the student fools ``D``.

    Default weight in the total objective: 0.1 on ``gen`` (see
    :class:`~x3kd_core.distill.config.XATConfig`); ``disc`` is optimised by its own optimiser.

    Attributes:
        discriminator: the ``D`` (owned by whoever registers this module; see the module docstring).
        context: :class:`XATContext` filled by :meth:`forward`.
    """

    def __init__(self, discriminator: BevDiscriminator, noise: InstanceNoise | None = None) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.noise = noise if noise is not None else InstanceNoise()
        self.context = XATContext()

    @classmethod
    def from_config(cls, config: XATConfig, teacher_channels: int) -> "XATLoss":
        return cls(BevDiscriminator.from_config(config, teacher_channels), InstanceNoise.from_config(config))

    def _follow_device(self, x: Tensor) -> None:
        # The discriminator lives outside the student's module tree, so model.to(device) does not
        # move it; follow the features instead. Parameters are moved in place (same objects), so an
        # optimiser built before still holds them; its state is created lazily on the first step.
        p = next(self.discriminator.parameters(), None)
        if p is not None and p.device != x.device:
            self.discriminator.to(x.device)

    def discriminator_loss(
        self, student_bev: Tensor, teacher_bev: Tensor, discriminator: nn.Module | None = None,
        noise_std: float = 0.0,
    ) -> dict[str, Tensor]:
        """The discriminator's objective on detached maps.

        Args:
            student_bev / teacher_bev: (B, C_t, N_x, N_y); detached here.
            discriminator: the module to call instead of ``self.discriminator`` (its DDP wrapper).
            noise_std: instance noise added to both halves (independent draws).

        Returns:
            ``disc`` (scalar, with gradient w.r.t. D's parameters) and detached diagnostics:
            ``stat/disc_acc`` (fraction of teacher patches with logit > 0 and student patches with
            logit < 0, averaged over the two), ``stat/p_teacher`` / ``stat/p_student`` (mean D
            probability of "teacher" on each).
        """
        self._follow_device(teacher_bev)
        module = discriminator if discriminator is not None else self.discriminator
        B = teacher_bev.shape[0]
        # One forward over both halves: a DDP-wrapped D must see exactly one forward per backward.
        both = torch.cat([teacher_bev.detach(), student_bev.detach()]).float()
        logits = module(InstanceNoise.apply(both, noise_std))
        lt, ls = logits[:B], logits[B:]
        loss = 0.5 * (
            F.binary_cross_entropy_with_logits(lt, torch.ones_like(lt))
            + F.binary_cross_entropy_with_logits(ls, torch.zeros_like(ls))
        )
        with torch.no_grad():
            acc = 0.5 * ((lt > 0).float().mean() + (ls < 0).float().mean())
            p_t, p_s = torch.sigmoid(lt).mean(), torch.sigmoid(ls).mean()
        return {"disc": loss, "stat/disc_acc": acc, "stat/p_teacher": p_t, "stat/p_student": p_s}

    def generator_loss(self, student_bev: Tensor, noise_std: float = 0.0) -> dict[str, Tensor]:
        """The student's adversarial objective; gradients reach ``student_bev`` only.

        Args: student_bev: (B, C_t, N_x, N_y) adapted student features (with grad); noise_std:
            instance noise added before ``D`` (the same level the discriminator trains under).

        Returns: ``gen`` (scalar) and ``stat/p_student`` (detached mean D probability of "teacher").
        """
        self._follow_device(student_bev)
        # D with detached parameters: the student's backward leaves D's .grad untouched, so the
        # main step cannot move D even if D's parameters were (wrongly) in the main optimiser.
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        frozen.update(dict(self.discriminator.named_buffers()))
        logits = functional_call(self.discriminator, frozen, (InstanceNoise.apply(student_bev.float(), noise_std),))
        gen = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        return {"gen": gen, "stat/p_student": torch.sigmoid(logits.detach()).mean()}

    def forward(self, student_bev: Tensor, teacher_bev: Tensor, record: bool = True) -> dict[str, Tensor]:
        """Generator loss on the adapted student features; with ``record``, also hand the detached
        (student, teacher) maps of this batch to :attr:`context` for the discriminator step.
        Instance noise (:attr:`noise`) applies with ``record`` only (the training forward; this
        module is outside the student's tree, so its own ``training`` flag is not the student's).

        Args: student_bev: (B, C_t, N_x, N_y) adapted student features. teacher_bev: same shape.

        Returns: ``gen``, ``stat/p_student`` and ``stat/noise_std`` (the instance-noise std used).
        """
        noise_std = self.noise.std_for(teacher_bev) if record else 0.0
        if record:
            self.context.record(student_bev, teacher_bev, noise_std)
        out = self.generator_loss(student_bev, noise_std)
        out["stat/noise_std"] = student_bev.new_tensor(noise_std).detach()
        return out


def make_discriminator_optimizer(
    xat: XATLoss, lr: float = 1e-4, betas: tuple[float, float] = (0.5, 0.999), weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """AdamW over the discriminator's parameters only (GAN-style betas by default)."""
    return torch.optim.AdamW(xat.discriminator.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


class DiscriminatorStep:
    """One discriminator update per training step; an ``extra_steps`` entry of the training engine.

    Called as ``step(batch, step_index) -> dict[str, float]`` after each main optimiser step
    (``x3kd_core.train.engine``); ``batch`` is not used: the BEV maps come from ``xat.context``,
    filled by the main step's forward. Returns for the training log: ``x_at/disc``,
    ``x_at/disc_acc`` (accuracy on this batch, under the batch's instance noise, BEFORE ``D``
    trains on it: a held-out estimate, the contest's scoreboard), ``x_at/disc_acc_clean`` (the
    same without noise: how separable the raw features are), ``x_at/p_teacher``,
    ``x_at/p_student`` and ``x_at/noise_level``. After the update the instance-noise controller
    takes its step from ``x_at/disc_acc``. ``state_dict`` / ``load_state_dict`` cover the
    discriminator, its optimiser and the noise level, so the engine checkpoints and resumes them
    under ``extra['x_at_discriminator']``.

    Args:
        xat: the X-AT loss whose discriminator and context are used.
        optimizer: over ``xat.discriminator``'s parameters only.
        wrap_module: e.g. ``lambda m: distributed.wrap_ddp(m, ctx)`` under torchrun, so that D's
            gradients are averaged over ranks; applied once, on the first call (after the main
            step moved D to the features' device).
        grad_clip_norm: optional L2 clip of D's gradients.
    """

    name = "x_at_discriminator"

    def __init__(
        self,
        xat: XATLoss,
        optimizer: torch.optim.Optimizer,
        *,
        wrap_module: Callable[[nn.Module], nn.Module] | None = None,
        grad_clip_norm: float | None = None,
    ) -> None:
        disc_params = {id(p) for p in xat.discriminator.parameters()}
        foreign = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in disc_params]
        if foreign:
            raise ValueError(
                f"the discriminator optimiser holds {len(foreign)} parameters that are not the discriminator's"
            )
        self.xat = xat
        self.optimizer = optimizer
        self.wrap_module = wrap_module
        self.grad_clip_norm = grad_clip_norm
        self._module: nn.Module | None = None

    def _get_module(self, device: torch.device) -> nn.Module:
        if self._module is None:
            self.xat.discriminator.to(device)
            # A resumed optimiser loaded its state while D was still on the CPU (D follows the
            # features' device only once they exist); put that state where the parameters are now.
            for p, state in self.optimizer.state.items():
                for key, value in state.items():
                    if isinstance(value, Tensor) and value.device != p.device and key != "step":
                        state[key] = value.to(p.device)
            self._module = self.wrap_module(self.xat.discriminator) if self.wrap_module else self.xat.discriminator
        return self._module

    def __call__(self, batch: object = None, step: int | None = None) -> dict[str, float]:
        pair = self.xat.context.take()
        module = self._get_module(pair.student_bev.device)
        module.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            losses = self.xat.discriminator_loss(pair.student_bev, pair.teacher_bev, discriminator=module,
                                                 noise_std=pair.noise_std)
            losses["disc"].backward()
        clean = losses  # without noise the scored inputs are the clean ones: no second forward
        if pair.noise_std > 0:
            with torch.no_grad():
                clean = self.xat.discriminator_loss(pair.student_bev, pair.teacher_bev, discriminator=module)
        if self.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.xat.discriminator.parameters(), self.grad_clip_norm)
        self.optimizer.step()
        accuracy = float(losses["stat/disc_acc"])
        self.xat.noise.update(accuracy)
        return {
            "x_at/disc": float(losses["disc"].detach()),
            "x_at/disc_acc": accuracy,
            "x_at/disc_acc_clean": float(clean["stat/disc_acc"]),
            "x_at/p_teacher": float(losses["stat/p_teacher"]),
            "x_at/p_student": float(losses["stat/p_student"]),
            "x_at/noise_level": self.xat.noise.level,
        }

    def state_dict(self) -> dict:
        return {"discriminator": self.xat.discriminator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "noise": self.xat.noise.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.xat.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.xat.noise.load_state_dict(state["noise"])


def make_discriminator_step(
    xat: XATLoss,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    config: XATConfig | None = None,
    wrap_module: Callable[[nn.Module], nn.Module] | None = None,
) -> DiscriminatorStep:
    """The engine-compatible discriminator update for ``xat``.

    Args:
        xat: the X-AT loss (e.g. ``DistillationLosses.x_at``).
        optimizer: D's optimiser; None builds :func:`make_discriminator_optimizer` from ``config``
            (or its defaults).
        config: X-AT settings for that optimiser.
        wrap_module: see :class:`DiscriminatorStep`.
    """
    if optimizer is None:
        cfg = config or XATConfig()
        optimizer = make_discriminator_optimizer(xat, cfg.disc_lr, cfg.disc_betas, cfg.disc_weight_decay)
    return DiscriminatorStep(xat, optimizer, wrap_module=wrap_module)
