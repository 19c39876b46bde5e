"""Fused ray compositing (EG3D's MipRayMarcher2) with a backward that stores no per-sample tensors.

colors ``[B, R, S, C]``, densities ``[B, R, S, 1]``, depths ``[B, R, S, 1]`` -> rgb ``[B, R, C]``,
depth ``[B, R, 1]``, weights ``[B, R, S-1, 1]`` (see ``reference.composite_rays_ref``).
"""

import torch

from .reference import composite_rays_ref
from .utils import AotSpec, check_same, check_tensor, use_triton


# ----------------------------------------------------------------------------------------------- public function
def composite_rays(
    colors: torch.Tensor,
    densities: torch.Tensor,
    depths: torch.Tensor,
    density_bias: float = -1.0,
    white_back: bool = False,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Alpha-composite S samples per ray the way EG3D's MipRayMarcher2 does.

    Args:
        colors: ``[B, R, S, C]`` per-sample features (C >= 1).
        densities: ``[B, R, S, 1]`` raw densities; ``softplus(midpoint + density_bias)`` is sigma.
        depths: ``[B, R, S, 1]`` sample depths, ascending along S (S >= 2).
        density_bias: added to the midpoint densities before softplus (EG3D: -1).
        white_back: add the leftover transmittance ``1 - sum(weights)`` to rgb.
        impl: ``"auto"`` (Triton on CUDA, reference otherwise), ``"triton"`` or ``"reference"``.

    Returns ``(rgb [B, R, C], depth [B, R, 1], weights [B, R, S-1, 1])`` in ``colors.dtype``. Depths get no
    gradient. Colours are not rescaled (EG3D's ``* 2 - 1`` is the caller's business).
    """
    op = "composite_rays"
    check_tensor("colors", colors, op=op, ndim=4)
    B, R, S, _ = colors.shape
    check_tensor("densities", densities, op=op, shape=(B, R, S, 1))
    check_tensor("depths", depths, op=op, shape=(B, R, S, 1))
    if S < 2:
        raise ValueError(f"{op}: need at least 2 samples per ray (S >= 2), got colors of shape {tuple(colors.shape)}")
    check_same(op, "colors", colors, densities=densities, depths=depths)
    if use_triton(impl, colors, densities, depths, op=op):
        raise NotImplementedError(f"{op}: the Triton kernels are not written yet; use impl='reference'")
    return composite_rays_ref(colors, densities, depths, density_bias, white_back)


# ----------------------------------------------------------------------------------------------- AOT configurations
def aot_specs() -> list[AotSpec]:
    """Configurations compiled by ``python -m export3d.kernels.aot``."""
    return []
