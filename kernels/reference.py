"""Plain-PyTorch references of every fused op: the specification the Triton kernels are tested against.

This module never imports Triton. Each ``<op>_ref`` takes the same arguments as the public op
(minus ``impl``) and is differentiable by autograd, so it is also the CPU path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc(t: torch.Tensor | None) -> torch.Tensor | None:
    """Upcast to the accumulation dtype: fp32, or fp64 when given fp64 (so gradcheck runs in double)."""
    if t is None or t.dtype == torch.float64:
        return t
    return t.float()


def eadaln_ref(
    x: torch.Tensor,  # [B, L, D]
    scale: torch.Tensor,  # [B, D]
    shift: torch.Tensor,  # [B, D]
    weight: torch.Tensor | None = None,  # [D]
    bias: torch.Tensor | None = None,  # [D]
    eps: float = 1e-6,
) -> torch.Tensor:
    """Expression-adaptive LayerNorm: ``LN(x) * (1 + scale) + shift`` with LN over the last dim.

    Statistics are computed in fp32 and the result is returned in ``x.dtype``, as the kernel does.
    """
    y = F.layer_norm(_acc(x), (x.shape[-1],), _acc(weight), _acc(bias), eps)
    y = y * (1 + _acc(scale)[:, None, :]) + _acc(shift)[:, None, :]
    return y.to(x.dtype)
