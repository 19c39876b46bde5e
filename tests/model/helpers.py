"""Shared builders for the model tests: small seeded models and inputs."""

from __future__ import annotations

import torch

from export3d import Export3D
from export3d.cameras import orbit_camera
from export3d.model.layers import EAdaLN

SMALL = {"image_size": 32, "render": {"n_coarse": 8, "n_fine": 8}}  # the tiny preset, shrunk for speed


def small_model(seed: int = 0, **overrides) -> Export3D:
    """The ``tiny`` preset at 32 px with 8 + 8 samples (unless overridden), seeded."""
    torch.manual_seed(seed)
    return Export3D.from_preset("tiny", **{**SMALL, **overrides})


def inputs(model: Export3D, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """source [B, 3, H, W] in [-1, 1], expression [B, 64], camera [B, 25] (near-frontal orbit cameras)."""
    g = torch.Generator().manual_seed(seed)
    H = model.config.image_size
    source = torch.rand(batch, 3, H, H, generator=g) * 2 - 1
    expression = torch.randn(batch, model.config.expression_dim, generator=g)
    yaw = (torch.rand(batch, generator=g) - 0.5) * 0.6
    pitch = (torch.rand(batch, generator=g) - 0.5) * 0.3
    return source, expression, orbit_camera(yaw, pitch)


def perturb_modulation(model: torch.nn.Module, std: float = 0.05, seed: int = 3) -> None:
    """Give every zero-initialised EAdaLN modulation random weights, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, EAdaLN):
                lin = m.modulation[1]
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * std)
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * std)
