"""Fused Triton ops for tri-plane models, each with a plain-PyTorch reference (``export3d.kernels.reference``).

Every op takes ``impl="auto" | "triton" | "reference"``: ``auto`` runs Triton on CUDA tensors and the
reference elsewhere. Importing this package does not import the Export3D model, lpips or xformers.
"""

from .composite_rays import composite_rays
from .eadaln import eadaln
from .pixel_shuffle_lowpass import pixel_shuffle_lowpass
from .reference import (
    composite_rays_ref,
    default_lowpass_taps,
    eadaln_ref,
    pixel_shuffle_lowpass_ref,
    render_rays_ref,
    triplane_sample_ref,
)
from .render_rays import render_rays, render_rays_weights
from .triplane_sample import prepare_planes, triplane_sample
from .utils import IMPLS

__all__ = [
    "IMPLS",
    "composite_rays",
    "composite_rays_ref",
    "default_lowpass_taps",
    "eadaln",
    "eadaln_ref",
    "pixel_shuffle_lowpass",
    "pixel_shuffle_lowpass_ref",
    "prepare_planes",
    "render_rays",
    "render_rays_ref",
    "render_rays_weights",
    "triplane_sample",
    "triplane_sample_ref",
]
