"""An exponential moving average of the generator's weights (EG3D's ``G_ema``), used for samples and evaluation.

Not the tri-plane EMA of the paper (supp. Eq. 12, a buffer inside the generator): this one averages the
*parameters* of the whole Export3D model over training steps, as EG3D and StyleGAN2 do for ``G_ema``.
The half-life is given in images; EG3D's ramp-up caps it at ``rampup * images seen`` so that the average
does not drag the weights of the first steps along for long::

    half_life = min(half_life_images, rampup * images_seen)
    beta = 0.5 ** (batch_images / half_life)
    p_ema <- beta * p_ema + (1 - beta) * p            (trainable parameters)
    p_ema <- p                                        (frozen parameters and buffers, e.g. f_e and the tri-plane EMA)
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """Holds ``module``, a frozen copy of the model in eval mode whose weights follow the trained model's."""

    def __init__(self, model: nn.Module, half_life_images: float, rampup: float | None):
        if half_life_images <= 0:
            raise ValueError(f"half_life_images must be > 0, got {half_life_images}")
        if rampup is not None and rampup <= 0:
            raise ValueError(f"rampup must be > 0 or None, got {rampup}")
        self.half_life_images, self.rampup = half_life_images, rampup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def beta(self, images_seen: int, batch_images: int) -> float:
        """The weight kept from the average at a step that brought ``images_seen`` to its value."""
        half_life = self.half_life_images
        if self.rampup is not None:
            half_life = min(half_life, self.rampup * images_seen)
        return 0.5 ** (batch_images / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, model: nn.Module, images_seen: int, batch_images: int) -> None:
        """Move the average toward ``model`` after one optimiser step over ``batch_images`` images."""
        beta = self.beta(images_seen, batch_images)
        for p_ema, p in zip(self.module.parameters(), model.parameters(), strict=True):
            if p.requires_grad:
                p_ema.lerp_(p.detach(), 1.0 - beta)
            else:
                p_ema.copy_(p.detach())
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Make the average equal to ``model`` (e.g. when a run resumes from a checkpoint without one)."""
        self.module.load_state_dict(model.state_dict())
