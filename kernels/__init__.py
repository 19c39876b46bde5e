"""Fused Triton ops for tri-plane models, each with a plain-PyTorch reference (``export3d.kernels.reference``).

Every op takes ``impl="auto" | "triton" | "reference"``: ``auto`` runs Triton on CUDA tensors and the
reference elsewhere. Importing this package does not import the Export3D model, lpips or xformers.
"""

from .eadaln import eadaln
from .reference import eadaln_ref
from .utils import IMPLS

__all__ = ["IMPLS", "eadaln", "eadaln_ref"]
