"""``nn.Module`` wrappers of the fused ops in ``export3d.kernels`` that own parameters."""

from __future__ import annotations

import torch
from torch import nn

from export3d.kernels import eadaln


class EAdaLN(nn.Module):
    """Expression-adaptive LayerNorm: ``LN(x) * (1 + scale(c)) + shift(c)``.

    ``scale`` and ``shift`` come from ``SiLU -> Linear(cond_dim, 2 * dim)`` of the condition ``c``
    (the expression code beta'). The projection is zero-initialised (DiT's adaLN-Zero), so at
    initialisation the layer is a plain LayerNorm and the condition has no effect until trained.
    """

    def __init__(self, dim: int, cond_dim: int, affine: bool = False, eps: float = 1e-6, impl: str = "auto"):
        super().__init__()
        self.dim, self.eps, self.impl = dim, eps, impl
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)
        if self.weight is not None:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, dim]``, cond ``[B, cond_dim]`` -> ``[B, L, dim]``."""
        scale, shift = self.modulation(cond).to(x.dtype).chunk(2, dim=-1)  # [B, dim] each
        weight = None if self.weight is None else self.weight.to(x.dtype)  # no-ops outside autocast
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return eadaln(x, scale, shift, weight, bias, self.eps, impl=self.impl)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, affine={self.weight is not None}, eps={self.eps}, impl={self.impl!r}"
