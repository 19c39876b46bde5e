"""Fused Triton ops for tri-plane models, each with a plain-PyTorch reference (``export3d.kernels.reference``).

Every op takes ``impl="auto" | "triton" | "reference"``: ``auto`` runs Triton on CUDA tensors and the
reference elsewhere. Importing this package does not import the Export3D model, lpips or xformers.
"""

from .bias_act import bias_act
from .composite_rays import composite_rays
from .eadaln import eadaln
from .pixel_shuffle_lowpass import pixel_shuffle_lowpass
from .reference import (
    bias_act_ref,
    composite_rays_ref,
    default_lowpass_taps,
    eadaln_ref,
    pixel_shuffle_lowpass_ref,
    render_rays_ref,
    triplane_sample_ref,
    upfirdn2d_ref,
)
from .render_rays import render_rays, render_rays_weights
from .triplane_sample import prepare_planes, triplane_sample
from .upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d
from .utils import IMPLS

__all__ = [
    "IMPLS",
    "bias_act",
    "bias_act_ref",
    "composite_rays",
    "composite_rays_ref",
    "default_lowpass_taps",
    "downsample2d",
    "eadaln",
    "eadaln_ref",
    "filter2d",
    "pixel_shuffle_lowpass",
    "pixel_shuffle_lowpass_ref",
    "prepare_planes",
    "render_rays",
    "render_rays_ref",
    "render_rays_weights",
    "setup_filter",
    "triplane_sample",
    "triplane_sample_ref",
    "upfirdn2d",
    "upfirdn2d_ref",
    "upsample2d",
]
