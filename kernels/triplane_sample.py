"""Fused tri-plane bilinear sampling: the mean over three planes of ``grid_sample`` at projected points.

planes ``[B, 3, C, Hp, Wp]``, coords ``[B, N, 3]`` -> ``[B, N, C]``, EG3D semantics (see
``reference.triplane_sample_ref``).
"""

import torch

from .reference import triplane_sample_ref
from .utils import AotSpec, check_same, check_tensor, use_triton

AXES = ("xyz", "eg3d")


# ----------------------------------------------------------------------------------------------- public function
def triplane_sample(
    planes: torch.Tensor,
    coords: torch.Tensor,
    axes: str = "xyz",
    box_warp: float = 1.0,
    impl: str = "auto",
) -> torch.Tensor:
    """Sample a tri-plane at world points: the mean over the planes of bilinear ``grid_sample``.

    Args:
        planes: ``[B, 3, C, Hp, Wp]`` features; u indexes width and v height, like ``grid_sample``.
        coords: ``[B, N, 3]`` world points; the box ``[-box_warp/2, box_warp/2]^3`` covers the planes.
        axes: ``"xyz"`` projects to (x, y), (x, z), (y, z); ``"eg3d"`` to (x, y), (x, z), (z, x),
            EG3D's released convention, so EG3D planes work unchanged.
        box_warp: side length of the box the planes span.
        impl: ``"auto"`` (Triton on CUDA, reference otherwise), ``"triton"`` or ``"reference"``.

    Returns ``[B, N, C]`` in ``planes.dtype``. Points outside the box get zeros, as ``grid_sample``
    with ``align_corners=False`` and zero padding gives.
    """
    op = "triplane_sample"
    check_tensor("planes", planes, op=op, ndim=5)
    B = planes.shape[0]
    if planes.shape[1] != 3:
        raise ValueError(f"{op}: planes must have shape [B, 3, C, H, W], got {tuple(planes.shape)}")
    check_tensor("coords", coords, op=op, shape=(B, None, 3))
    check_same(op, "planes", planes, coords=coords)
    if axes not in AXES:
        raise ValueError(f"{op}: axes must be one of {AXES}, got {axes!r}")
    if not box_warp > 0:
        raise ValueError(f"{op}: box_warp must be > 0, got {box_warp}")
    if use_triton(impl, planes, coords, op=op):
        raise NotImplementedError(f"{op}: the Triton kernels are not written yet; use impl='reference'")
    return triplane_sample_ref(planes, coords, axes, box_warp)


# ----------------------------------------------------------------------------------------------- AOT configurations
def aot_specs() -> list[AotSpec]:
    """Configurations compiled by ``python -m export3d.kernels.aot``."""
    return []
