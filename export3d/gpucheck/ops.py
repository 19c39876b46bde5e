"""The fused ops gpucheck checks, one registry entry each, and their inputs at the presets' real shapes.

An entry says how to build the op's differentiable inputs (the leaves) for a size, how to call it with an
``impl``, and whether its kernels promise bitwise run-to-run results. Shapes come from the model
configurations (:func:`sizes`), so they follow the presets; ``"small"`` is the ``--interpret`` size, with
the wide paths (EAdaLN D > 1024) kept. Adding a fused op to gpucheck is one :data:`OPS` entry (and its
bytes formula in :mod:`export3d.gpucheck.bandwidth`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from export3d.kernels import (
    bias_act,
    composite_rays,
    default_lowpass_taps,
    downsample2d,
    eadaln,
    pixel_shuffle_lowpass,
    render_rays,
    render_rays_weights,
    setup_filter,
    triplane_sample,
    upsample2d,
)
from export3d.model.config import ModelConfig, preset

Tensors = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Sizes:
    """Every fused op's shape at one size (batch included)."""

    batch: int
    tokens: tuple[int, int]  # eadaln (L, D)
    planes: tuple[int, int]  # triplane_sample (C, side)
    points: int  # triplane_sample points per batch element (rays x samples of one pass)
    rays: tuple[int, int, int]  # composite_rays and render_rays (R, S, C): the final pass over coarse + fine samples
    shuffle: tuple[int, int]  # pixel_shuffle_lowpass input (channels, side) before the x2 shuffle
    decoder_hidden: int  # render_rays' decoder MLP width
    # EG3D's ops (channels, side) of [B, C, side, side]: super-resolution block 1's FIR upsampling input (H/2), the
    # discriminator's first FIR downsampling input (H) and its largest bias + activation (from_rgb's output at H)
    upsample: tuple[int, int] = (3, 5)
    downsample: tuple[int, int] = (3, 6)
    bias_act: tuple[int, int] = (5, 7)


def model_sizes(cfg: ModelConfig, batch: int) -> Sizes:
    """The shapes the model runs each op at: the EAdaLN-ViT tokens, the tri-plane and one render pass, the final
    composite over coarse + fine samples, and the largest pixel shuffle (the upper ViT's map)."""
    g, r, d = cfg.generator, cfg.render, cfg.discriminator
    H, rays = cfg.image_size, cfg.render_resolution**2
    disc_width = min(d.channel_base // H, d.channel_max)  # the discriminator's channels at resolution H
    return Sizes(
        batch=batch,
        tokens=((H // 16) ** 2, g.hidden),
        planes=(g.plane_channels, cfg.plane_resolution),
        points=rays * r.n_coarse,
        rays=(rays, r.n_coarse + r.n_fine, r.feature_channels),
        shuffle=(g.high_hidden, H // 4),
        decoder_hidden=r.decoder_hidden,
        upsample=(cfg.superres.channels[0], H // 2),
        downsample=(disc_width, H),
        bias_act=(disc_width, H),
    )


def sizes(name: str) -> Sizes:
    """``"paper"`` (batch 2), ``"tiny"`` (batch 8, its training batch) or ``"small"`` (for the interpreter)."""
    if name == "small":
        return Sizes(batch=2, tokens=(5, 1100), planes=(16, 8), points=40, rays=(9, 6, 16), shuffle=(16, 6),
                     decoder_hidden=16, upsample=(5, 7), downsample=(3, 10), bias_act=(7, 9))
    return model_sizes(preset(name), 2 if name == "paper" else 8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _leaf(t: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    return t.to(device=device, dtype=dtype).requires_grad_(True)


# ----------------------------------------------------------------------------------------------- per op
def _eadaln_leaves(z: Sizes, dtype, device, seed) -> Tensors:
    g, (L, D) = _gen(seed), z.tokens
    x = torch.randn(z.batch, L, D, generator=g) * 2 + 0.5  # [B, L, D]
    mod = torch.randn(z.batch, 2 * D, generator=g) * 0.5  # [B, 2D]: the model's projection, halves read in place
    return _leaf(x, dtype, device), _leaf(mod, dtype, device)


def _eadaln_run(leaves: Tensors, impl: str) -> Tensors:
    x, mod = leaves
    scale, shift = mod.chunk(2, dim=-1)
    return (eadaln(x, scale, shift, impl=impl),)


def _triplane_leaves(z: Sizes, dtype, device, seed) -> Tensors:
    g, (C, P) = _gen(seed), z.planes
    planes = torch.randn(z.batch, 3, C, P, P, generator=g)  # [B, 3, C, P, P]
    coords = (torch.rand(z.batch, z.points, 3, generator=g) - 0.5) * 1.1  # [B, N, 3], some just outside the box
    return _leaf(planes, dtype, device), coords.to(device=device, dtype=dtype)


def _triplane_run(leaves: Tensors, impl: str) -> Tensors:
    planes, coords = leaves
    return (triplane_sample(planes, coords, "xyz", 1.0, impl=impl),)


def _composite_leaves(z: Sizes, dtype, device, seed) -> Tensors:
    g, (R, S, C) = _gen(seed), z.rays
    colors = torch.rand(z.batch, R, S, C, generator=g)  # [B, R, S, C]
    densities = torch.randn(z.batch, R, S, 1, generator=g) * 4 + 0.5
    steps = torch.rand(z.batch, R, S, 1, generator=g) * (2.0 / S) + 0.002
    depths = 2.25 + torch.cumsum(steps, dim=2) - steps[:, :, :1]  # ascending
    return _leaf(colors, dtype, device), _leaf(densities, dtype, device), depths.to(device=device, dtype=dtype)


def _composite_run(leaves: Tensors, impl: str) -> Tensors:
    rgb, depth, _weights = composite_rays(*leaves, -1.0, False, impl=impl)
    return rgb, depth  # what a training step differentiates (the weights only feed importance sampling)


def _psl_leaves(z: Sizes, dtype, device, seed) -> Tensors:
    channels, side = z.shuffle
    return (_leaf(torch.randn(z.batch, channels, side, side, generator=_gen(seed)), dtype, device),)


def _psl_run(leaves: Tensors, impl: str) -> Tensors:
    (x,) = leaves
    taps = default_lowpass_taps(5, dtype=x.dtype, device=x.device)  # as the generator passes them
    return (pixel_shuffle_lowpass(x, 2, taps, impl=impl),)


def _render_leaves(z: Sizes, dtype, device, seed) -> Tensors:
    """planes and decoder in ``dtype`` (requiring grad); rays and depths fp32 constants, as the renderer passes them."""
    g, (C, P), (R, S, cf) = _gen(seed), z.planes, z.rays
    B, hidden = z.batch, z.decoder_hidden
    planes = torch.randn(B, 3, C, P, P, generator=g) * 0.5  # [B, 3, C, P, P]
    origins = torch.tensor([0.0, 0.0, 2.7]).expand(B, R, 3).contiguous()  # [B, R, 3]
    target = (torch.rand(B, R, 3, generator=g) - 0.5) * torch.tensor([0.6, 0.6, 0.0])
    directions = torch.nn.functional.normalize(target - origins, dim=-1)  # [B, R, 3]: rays through the box
    depths = (torch.linspace(2.25, 3.3, S).view(1, 1, S, 1) + torch.rand(B, R, S, 1, generator=g) * 0.01).sort(2)[0]
    w1, b1 = torch.randn(C, hidden, generator=g) * C**-0.5, torch.randn(hidden, generator=g) * 0.1
    w2, b2 = torch.randn(hidden, 1 + cf, generator=g) * hidden**-0.5, torch.randn(1 + cf, generator=g) * 0.1
    rays = [t.to(device) for t in (origins, directions, depths)]
    return (_leaf(planes, dtype, device), *rays, *(_leaf(t, dtype, device) for t in (w1, b1, w2, b2)))


def _render_run(leaves: Tensors, impl: str) -> Tensors:
    return render_rays(*leaves, axes="xyz", box_warp=1.0, density_bias=-1.0, white_back=False, impl=impl)


def _render_weights_leaves(z: Sizes, dtype, device, seed) -> Tensors:
    return tuple(t.detach() for t in _render_leaves(z, dtype, device, seed))  # the coarse pass: no gradient


def _render_weights_run(leaves: Tensors, impl: str) -> Tensors:
    return (render_rays_weights(*leaves, axes="xyz", box_warp=1.0, density_bias=-1.0, impl=impl),)


def _resample_leaves(z: Sizes, dtype, device, seed, which: str) -> Tensors:
    channels, side = getattr(z, which)
    x = torch.randn(z.batch, channels, side, side, generator=_gen(seed))  # [B, C, side, side]
    return _leaf(x, dtype, device), setup_filter([1, 3, 3, 1], device=device)  # StyleGAN2's FIR, a constant [4, 4]


def _upsample_run(leaves: Tensors, impl: str) -> Tensors:
    return (upsample2d(*leaves, impl=impl),)  # [B, C, 2 side, 2 side]


def _downsample_run(leaves: Tensors, impl: str) -> Tensors:
    return (downsample2d(*leaves, impl=impl),)  # [B, C, side / 2, side / 2]


def _bias_act_leaves(z: Sizes, dtype, device, seed) -> Tensors:
    g, (channels, side) = _gen(seed), z.bias_act
    x = torch.randn(z.batch, channels, side, side, generator=g) * 100  # a conv output; some of it beyond the clamp
    return _leaf(x, dtype, device), _leaf(torch.randn(channels, generator=g), dtype, device)


def _bias_act_run(leaves: Tensors, impl: str) -> Tensors:
    return (bias_act(*leaves, act="lrelu", clamp=256.0, impl=impl),)  # EG3D's layers: gain sqrt(2), conv_clamp 256


@dataclass(frozen=True)
class OpEntry:
    name: str
    leaves: Callable[[Sizes, torch.dtype, torch.device, int], Tensors]  # inputs; those requiring grad are checked
    run: Callable[[Tensors, str], Tensors]  # (leaves, impl) -> the differentiable outputs
    bitwise: bool  # the kernels promise bitwise-identical results run to run (no atomics)
    module: str = ""  # the kernel module under kernels/ (default: the name)

    @property
    def kernel_module(self) -> str:
        return self.module or self.name


OPS: dict[str, OpEntry] = {
    e.name: e
    for e in (
        OpEntry("eadaln", _eadaln_leaves, _eadaln_run, bitwise=True),
        OpEntry("triplane_sample", _triplane_leaves, _triplane_run, bitwise=False),  # atomics in the backward
        OpEntry("composite_rays", _composite_leaves, _composite_run, bitwise=True),
        OpEntry("pixel_shuffle_lowpass", _psl_leaves, _psl_run, bitwise=True),
        OpEntry("render_rays", _render_leaves, _render_run, bitwise=False),  # plane-gradient atomics
        OpEntry("render_rays_weights", _render_weights_leaves, _render_weights_run, bitwise=True, module="render_rays"),
        OpEntry("upsample2d", lambda *a: _resample_leaves(*a, "upsample"), _upsample_run, bitwise=True,
                module="upfirdn2d"),
        OpEntry("downsample2d", lambda *a: _resample_leaves(*a, "downsample"), _downsample_run, bitwise=True,
                module="upfirdn2d"),
        OpEntry("bias_act", _bias_act_leaves, _bias_act_run, bitwise=True),  # db: partial sums, no atomics
    )
}


def forward_backward(entry: OpEntry, leaves: Tensors, impl: str, seed: int = 1) -> tuple[Tensors, Tensors]:
    """``(outputs, gradients of the leaves that require grad)`` for fixed random output gradients."""
    outs = entry.run(leaves, impl)
    g = _gen(seed)
    grads_out = [torch.randn(o.shape, generator=g).to(device=o.device, dtype=o.dtype) for o in outs]
    wrt = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(outs, wrt, grads_out) if wrt else ()
    return tuple(o.detach() for o in outs), tuple(grads)
