"""Shared benchmark cases: each fused op at the paper preset's sizes, and a minimal EG3D-style render.

``python benchmarks/cases.py`` prints the bytes each op's autograd graph saves for backward with
``impl="reference"`` and ``impl="triton"``. They are measured on fake CUDA tensors
(``FakeTensorMode``), so no GPU and no memory is needed: the custom ops' fake registrations and
autograd ``setup_context`` run exactly as they would on a GPU. ``tests/kernels/test_saved_memory.py``
checks the same numbers.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from export3d.kernels import (
    bias_act,
    composite_rays,
    downsample2d,
    eadaln,
    pixel_shuffle_lowpass,
    render_rays,
    setup_filter,
    triplane_sample,
    upsample2d,
)
from export3d.kernels.utils import saved_tensor_bytes

RAYS, SAMPLES, CHANNELS, PLANE = 64 * 64, 48, 32, 128  # paper preset: 64 x 64 rays, 48 samples, C = 32


def minimal_render(planes, weights, origins, dirs, depths, impl):
    """EG3D's pipeline in miniature: planes -> triplane_sample -> MLP -> composite_rays.

    planes ``[B, 3, C, H, W]``, weights ``(w1 [C, h], w_sigma [h, 1], w_rgb [h, Cf])``, origins / dirs
    ``[B, R, 3]``, depths ``[B, R, S, 1]`` -> rgb ``[B, R, Cf]`` (white background), depth ``[B, R, 1]``.
    """
    w1, w_sigma, w_rgb = weights
    B, R, S, _ = depths.shape
    points = origins[:, :, None] + dirs[:, :, None] * depths  # [B, R, S, 3]
    feats = triplane_sample(planes, points.reshape(B, R * S, 3), axes="xyz", impl=impl)  # [B, R*S, C]
    hidden = F.softplus(feats @ w1)
    sigma = (hidden @ w_sigma).view(B, R, S, 1)
    rgb = (torch.sigmoid(hidden @ w_rgb) * 1.002 - 0.001).view(B, R, S, -1)
    out_rgb, out_depth, _ = composite_rays(rgb, sigma, depths, white_back=True, impl=impl)
    return out_rgb, out_depth


def render_scene(B=1, C=CHANNELS, res=PLANE, R=RAYS, S=SAMPLES, hidden=64, seed=0, device="cpu"):
    """Inputs of :func:`minimal_render`: cameras on the +z axis looking at the box, rays hitting it."""
    # seeded on the CPU; elsewhere (e.g. fake CUDA tensors for memory accounting) the values do not matter
    g = torch.Generator().manual_seed(seed) if torch.device(device).type == "cpu" else None

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, device=device) * scale

    planes = (randn(B, 3, C, res, res + 3, scale=0.5)).requires_grad_(True)  # [B, 3, C, H, W]
    weights = (randn(C, hidden, scale=C**-0.5).requires_grad_(True), randn(hidden, 1).requires_grad_(True),
               randn(hidden, 4, scale=hidden**-0.5).requires_grad_(True))  # fmt: skip
    origins = torch.tensor([0.0, 0.0, 2.7], device=device).expand(B, R, 3)
    target = torch.rand(B, R, 3, generator=g, device=device) * 0.6 - 0.3
    target = target * torch.tensor([1.0, 1.0, 0.0], device=device)
    dirs = F.normalize(target - origins, dim=-1)  # [B, R, 3]
    jitter = torch.rand(B, R, S, 1, generator=g, device=device) * 0.02
    depths = (torch.linspace(2.25, 3.3, S, device=device).view(1, 1, S, 1) + jitter).sort(dim=2).values
    return planes, weights, origins, dirs, depths


# Tiny preset (export3d.model.config.TINY, 64 px): 16 x 16 rays, 24 samples per pass, C = 16, planes 32 x 32,
# token width h = 128 on a 4 x 4 grid, upper ViT width 128 on 16 x 16; its training batch is 8.
TINY_RAYS, TINY_SAMPLES, TINY_CHANNELS, TINY_PLANE, TINY_BATCH = 16 * 16, 24, 16, 32, 8
SIZES = ("paper", "tiny")


@dataclass(frozen=True)
class OpSizes:
    batch: int
    rays: int  # R
    samples: int  # S
    channels: int  # C of the tri-plane / composited features
    plane: int  # tri-plane side
    shuffle_in: tuple[int, int]  # pixel_shuffle_lowpass input (channels, side) before the x2 shuffle
    tokens: tuple[int, int]  # eadaln (L, D)
    decoder: tuple[int, int]  # render_rays: decoder hidden width, output features Cf (its S is 2 * samples)
    # EG3D's ops, (channels, side) of [B, C, side, side]: the super-resolution's FIR upsampling input (block 1 at H/2),
    # the discriminator's first FIR downsampling input (at H) and its largest bias + lrelu (from_rgb's output at H)
    upsample: tuple[int, int]
    downsample: tuple[int, int]
    bias_act: tuple[int, int]


OP_SIZES = {
    # paper: 1024-wide 32 x 32 map -> 256 x 64 x 64; 256 tokens of h = 1024; SR 128 x 128 x 128 -> 256 x 256,
    # discriminator 128 channels at 256 x 256
    "paper": OpSizes(1, RAYS, SAMPLES, CHANNELS, PLANE, (4 * 256, 32), (256, 1024), (64, 32), (128, 128), (128, 256),
                     (128, 256)),
    # tiny: the upper ViT's 128-wide 16 x 16 map -> 32 x 32 x 32; 4 x 4 tokens of h = 128; SR 32 x 32 x 32 -> 64 x 64,
    # discriminator 32 channels at 64 x 64
    "tiny": OpSizes(TINY_BATCH, TINY_RAYS, TINY_SAMPLES, TINY_CHANNELS, TINY_PLANE, (4 * 32, 16), (16, 128), (32, 16),
                    (32, 32), (32, 64), (32, 64)),
}


def sized_case_inputs(op: str, size: str = "paper", device: str = "cuda") -> tuple:
    """Inputs (requiring grad) for ``op`` at the ``paper`` preset's sizes (batch 1) or the ``tiny`` preset's
    (batch 8, its training batch); call inside ``FakeTensorMode`` to get them for free."""
    if size not in OP_SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    z = OP_SIZES[size]
    B, R, S, C, P = z.batch, z.rays, z.samples, z.channels, z.plane
    if op == "triplane_sample":
        planes = torch.randn(B, 3, C, P, P, device=device, requires_grad=True)  # [B, 3, C, H, W]
        coords = torch.rand(B, R * S, 3, device=device) - 0.5  # [B, N, 3]
        return planes, coords
    if op == "composite_rays":
        colors = torch.rand(B, R, S, C, device=device, requires_grad=True)  # [B, R, S, C]
        densities = torch.randn(B, R, S, 1, device=device, requires_grad=True)
        depths = torch.linspace(2.25, 3.3, S, device=device).view(1, 1, S, 1).expand(B, R, -1, -1)
        return colors, densities, depths.contiguous()
    if op == "pixel_shuffle_lowpass":
        channels, side = z.shuffle_in
        return (torch.randn(B, channels, side, side, device=device, requires_grad=True),)
    if op == "eadaln":
        L, D = z.tokens
        x = torch.randn(B, L, D, device=device, requires_grad=True)  # [B, L, D]
        mod = torch.randn(B, D, device=device, requires_grad=True)
        return x, mod, mod * 0.5
    if op == "render_rays":  # the final pass: coarse + fine samples per ray, the decoder's widths
        hidden, cf = z.decoder
        planes = (torch.randn(B, 3, C, P, P, device=device) * 0.5).requires_grad_(True)
        origins = torch.tensor([0.0, 0.0, 2.7], device=device).expand(B, R, 3)
        target = (torch.rand(B, R, 3, device=device) - 0.5) * torch.tensor([0.6, 0.6, 0.0], device=device)
        directions = F.normalize(target - origins, dim=-1)
        depths = torch.linspace(2.25, 3.3, 2 * S, device=device).view(1, 1, 2 * S, 1).expand(B, R, -1, -1)
        w1 = (torch.randn(C, hidden, device=device) * C**-0.5).requires_grad_(True)
        b1 = torch.zeros(hidden, device=device, requires_grad=True)
        w2 = (torch.randn(hidden, 1 + cf, device=device) * hidden**-0.5).requires_grad_(True)
        b2 = torch.zeros(1 + cf, device=device, requires_grad=True)
        return planes, origins.contiguous(), directions, depths.contiguous(), w1, b1, w2, b2
    if op in ("upsample2d", "downsample2d"):  # x [B, C, side, side] and StyleGAN2's [4, 4] FIR filter (a constant)
        channels, side = z.upsample if op == "upsample2d" else z.downsample
        x = torch.randn(B, channels, side, side, device=device, requires_grad=True)
        return x, setup_filter([1, 3, 3, 1], device=device)
    if op == "bias_act":  # a conv output [B, C, side, side] and its bias [C]
        channels, side = z.bias_act
        x = torch.randn(B, channels, side, side, device=device, requires_grad=True)
        return x, torch.randn(channels, device=device, requires_grad=True)
    raise ValueError(f"unknown op {op!r}")


OPS = {
    "triplane_sample": triplane_sample,
    "composite_rays": composite_rays,
    "pixel_shuffle_lowpass": pixel_shuffle_lowpass,
    "eadaln": eadaln,
    "render_rays": render_rays,
    "upsample2d": upsample2d,
    "downsample2d": downsample2d,
    "bias_act": functools.partial(bias_act, act="lrelu", clamp=256.0),  # EG3D's layers: gain sqrt(2), conv_clamp 256
}


def saved_bytes(op: str, impl: str) -> tuple[int, list[torch.Tensor], tuple]:
    """(bytes saved, saved tensors, inputs) of one forward of ``op`` with ``impl`` on fake CUDA tensors.

    ``op="render"`` measures the whole :func:`minimal_render` at the paper preset's sizes.
    """
    with FakeTensorMode():
        if op == "render":
            inputs = render_scene(device="cuda")
            total, saved, _ = saved_tensor_bytes(minimal_render, *inputs, impl=impl)
        else:
            inputs = sized_case_inputs(op, "paper")
            total, saved, _ = saved_tensor_bytes(OPS[op], *inputs, impl=impl)
    return total, saved, inputs


def renderer_saved_bytes(kernel_impl: str, batch: int, size: str = "paper", split: bool = False) -> int:
    """Bytes the preset's ``VolumeRenderer`` forward in training mode saves for backward *beyond the planes*, on fake
    CUDA tensors: ``kernel_impl="triton"`` is the fused path (render_rays), ``"reference"`` the split path of plain
    PyTorch; ``split=True`` forces the split path with the Triton kernels (the fast path before render_rays)."""
    from unittest import mock

    from export3d.model.config import preset  # the model only here: the op cases above stay kernel-only
    from export3d.model.render import VolumeRenderer

    cfg = preset(size)
    force_split = mock.patch("export3d.model.render.renderer.use_triton", return_value=False)
    with FakeTensorMode(), torch.device("cuda"), force_split if split else contextlib.nullcontext():
        renderer = VolumeRenderer(cfg, kernel_impl=kernel_impl).train()
        P = cfg.plane_resolution
        planes = torch.randn(batch, 3, cfg.generator.plane_channels, P, P, device="cuda", requires_grad=True)
        camera = torch.randn(batch, 25, device="cuda")
        total, saved, _ = saved_tensor_bytes(renderer, planes, camera)
    planes_kept = any(t.untyped_storage()._cdata == planes.untyped_storage()._cdata for t in saved)
    return total - (planes.untyped_storage().nbytes() if planes_kept else 0)


def renderer_table() -> str:
    """Markdown table: the renderer's saved bytes per batch element beyond the planes, split vs fused path."""
    lines = ["| batch | split path, `reference` | split path, Triton kernels (before) | fused `render_rays` (now) |",
             "|---|---|---|---|"]  # fmt: skip
    for batch in (1, 8):
        ref, before, now = (renderer_saved_bytes(impl, batch, split=split) / batch
                            for impl, split in (("reference", False), ("triton", True), ("triton", False)))  # fmt: skip
        lines.append(f"| {batch} | {_size(ref)} | {_size(before)} | {_size(now)} |")
    return "\n".join(lines)


def table() -> str:
    """Markdown table of saved bytes per op (and the whole minimal render), reference vs triton."""
    lines = ["| op (paper-preset size) | reference saves | triton saves | ratio |", "|---|---|---|---|"]
    for op in [*OPS, "render"]:
        ref, tri = saved_bytes(op, "reference")[0], saved_bytes(op, "triton")[0]
        ratio = f"{ref / tri:.1f}x" if tri >= 2**10 else "-"
        lines.append(f"| {op} | {_size(ref)} | {_size(tri)} | {ratio} |")
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n} B"


if __name__ == "__main__":
    print(table())
    print()
    print(renderer_table())
