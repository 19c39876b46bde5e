"""Fused pixel shuffle + separable low-pass FIR: one pass that reads the un-shuffled input directly.

x ``[B, C*f*f, H, W]`` -> ``[B, C, H*f, W*f]`` (see ``reference.pixel_shuffle_lowpass_ref``).
"""

import torch

from .reference import pixel_shuffle_lowpass_ref
from .utils import AotSpec, check_tensor, use_triton

FACTORS = (2, 4)


# ----------------------------------------------------------------------------------------------- public function
def pixel_shuffle_lowpass(
    x: torch.Tensor,
    factor: int = 2,
    taps: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """``F.pixel_shuffle(x, factor)`` followed by a same-size separable depthwise low-pass filter.

    Args:
        x: ``[B, C * factor**2, H, W]``.
        factor: upsampling factor, 2 or 4.
        taps: 1-D filter ``[K]`` with K odd, applied along width then height as a correlation with
            zero padding; default a normalised 5-tap Gaussian with sigma 1 output pixel
            (``reference.default_lowpass_taps``). The taps are a constant: they get no gradient.
        impl: ``"auto"`` (Triton on CUDA, reference otherwise), ``"triton"`` or ``"reference"``.

    Returns ``[B, C, H * factor, W * factor]`` in ``x.dtype``.
    """
    op = "pixel_shuffle_lowpass"
    check_tensor("x", x, op=op, ndim=4)
    if factor not in FACTORS:
        raise ValueError(f"{op}: factor must be one of {FACTORS}, got {factor!r}")
    if x.shape[1] % (factor * factor) != 0:
        raise ValueError(
            f"{op}: x must have a channel count divisible by factor**2 = {factor * factor}, got shape {tuple(x.shape)}"
        )
    if taps is not None:
        check_tensor("taps", taps, op=op, ndim=1)
        if taps.numel() % 2 != 1:
            raise ValueError(f"{op}: taps must have an odd number of elements, got {taps.numel()}")
        if taps.device != x.device:
            raise ValueError(f"{op}: taps is on {taps.device} but x is on {x.device}; put them on one device")
    if use_triton(impl, x, op=op):
        raise NotImplementedError(f"{op}: the Triton kernels are not written yet; use impl='reference'")
    return pixel_shuffle_lowpass_ref(x, factor, taps)


# ----------------------------------------------------------------------------------------------- AOT configurations
def aot_specs() -> list[AotSpec]:
    """Configurations compiled by ``python -m export3d.kernels.aot``."""
    return []
