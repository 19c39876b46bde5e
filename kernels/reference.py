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


def _project_axes(axes: str) -> tuple[tuple[int, int], ...]:
    """(u, v) coordinate indices of each plane: u indexes width, v height, like grid_sample's grid[..., 0/1]."""
    if axes == "xyz":
        return (0, 1), (0, 2), (1, 2)
    if axes == "eg3d":  # EG3D's released planes: (x, y), (x, z), (z, x)
        return (0, 1), (0, 2), (2, 0)
    raise ValueError(f"triplane_sample: axes must be 'xyz' or 'eg3d', got {axes!r}")


def triplane_sample_ref(
    planes: torch.Tensor,  # [B, 3, C, Hp, Wp]
    coords: torch.Tensor,  # [B, N, 3] world coordinates
    axes: str = "xyz",
    box_warp: float = 1.0,
) -> torch.Tensor:
    """Mean over the three planes of bilinear ``grid_sample`` at the projected coordinates -> ``[B, N, C]``.

    Coordinates are scaled by ``2 / box_warp`` (so the box ``[-box_warp/2, box_warp/2]^3`` maps to
    ``[-1, 1]``), ``align_corners=False``, zero padding: points outside contribute zeros.
    """
    B, _, C, H, W = planes.shape
    N = coords.shape[1]
    c = _acc(coords) * (2.0 / box_warp)
    grid = torch.stack([c[..., [u, v]] for u, v in _project_axes(axes)], dim=1)  # [B, 3, N, 2]
    feats = F.grid_sample(
        _acc(planes).reshape(B * 3, C, H, W),
        grid.reshape(B * 3, 1, N, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # [B*3, C, 1, N]
    return feats.reshape(B, 3, C, N).mean(1).transpose(1, 2).to(planes.dtype)  # [B, N, C]


def composite_rays_ref(
    colors: torch.Tensor,  # [B, R, S, C]
    densities: torch.Tensor,  # [B, R, S, 1]
    depths: torch.Tensor,  # [B, R, S, 1], ascending along S
    density_bias: float = -1.0,
    white_back: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EG3D's MipRayMarcher2: alpha-composite the S - 1 interval midpoints of every ray.

    Returns ``rgb [B, R, C]``, ``depth [B, R, 1]`` (expected depth; an empty ray's 0 / 0 -> inf, then
    clamped to the ray's own [min, max] sample depth) and ``weights [B, R, S-1, 1]``. Unlike EG3D, the colour is not
    rescaled by ``* 2 - 1`` here; that belongs to the caller.
    """
    dtype = colors.dtype
    colors, densities, depths = _acc(colors), _acc(densities), _acc(depths)
    deltas = depths[:, :, 1:] - depths[:, :, :-1]  # [B, R, S-1, 1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    sigma = F.softplus(densities_mid + density_bias)
    alpha = -torch.expm1(-sigma * deltas)  # 1 - exp(-sigma delta), exact for nearly transparent intervals
    shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], dim=2)
    weights = alpha * torch.cumprod(shifted, dim=2)[:, :, :-1]  # [B, R, S-1, 1]
    rgb = (weights * colors_mid).sum(2)  # [B, R, C]
    total = weights.sum(2)  # [B, R, 1]
    # EG3D divides 0 / 0 -> nan -> inf for empty rays; the where keeps that value but gives zero gradient
    # there instead of nan (the kernel's backward does the same).
    empty = total == 0
    depth = torch.where(empty, float("inf"), (weights * depths_mid).sum(2) / torch.where(empty, 1.0, total))
    depth = torch.minimum(torch.maximum(depth, depths.amin(2)), depths.amax(2))
    if white_back:
        rgb = rgb + 1 - total
    return rgb.to(dtype), depth.to(dtype), weights.to(dtype)


def render_rays_ref(
    planes: torch.Tensor,  # [B, 3, C, Hp, Wp]
    origins: torch.Tensor,  # [B, R, 3]
    directions: torch.Tensor,  # [B, R, 3]
    depths: torch.Tensor,  # [B, R, S, 1], ascending along S
    w1: torch.Tensor,  # [C, hidden]
    b1: torch.Tensor,  # [hidden]
    w2: torch.Tensor,  # [hidden, 1 + Cf]: column 0 density, 1.. colour
    b2: torch.Tensor,  # [1 + Cf]
    axes: str = "xyz",
    box_warp: float = 1.0,
    density_bias: float = -1.0,
    white_back: bool = False,
    return_weights: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Sample, decode and composite S points per ray: :func:`triplane_sample_ref`, the MLP, :func:`composite_rays_ref`.

    Points ``o + t d``; ``h = softplus(f @ w1 + b1)``, ``o = h @ w2 + b2``; ``o[..., 0]`` is the raw density and
    ``sigmoid(o[..., 1:]) * 1.002 - 0.001`` the colour. Returns ``rgb [B, R, Cf]`` and ``depth [B, R, 1]`` in
    ``planes.dtype`` (and ``weights [B, R, S-1, 1]`` with ``return_weights``). The decoder runs in fp32 (fp64 for
    fp64 inputs). Rays and depths are constants (detached) and the weights are returned detached, as on the
    Triton path: gradients flow to the planes and the decoder only.
    """
    B, R, S, _ = depths.shape
    origins, directions, depths = origins.detach(), directions.detach(), depths.detach()
    points = origins[:, :, None] + depths * directions[:, :, None]  # [B, R, S, 3]
    feats = triplane_sample_ref(planes, points.reshape(B, R * S, 3), axes, box_warp)  # [B, R*S, C]
    h = F.softplus(_acc(feats) @ _acc(w1) + _acc(b1))  # [B, R*S, hidden]
    out = h @ _acc(w2) + _acc(b2)  # [B, R*S, 1 + Cf]
    density = out[..., :1].reshape(B, R, S, 1)
    color = (torch.sigmoid(out[..., 1:]) * 1.002 - 0.001).reshape(B, R, S, -1)
    rgb, depth, weights = composite_rays_ref(color, density, _acc(depths).to(out.dtype), density_bias, white_back)
    rgb, depth = rgb.to(planes.dtype), depth.to(planes.dtype)
    return (rgb, depth, weights.detach().to(planes.dtype)) if return_weights else (rgb, depth)


def default_lowpass_taps(num_taps: int = 5, sigma: float = 1.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (sigma in output pixels) for :func:`pixel_shuffle_lowpass_ref`."""
    t = torch.arange(num_taps, dtype=torch.float64) - (num_taps - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def pixel_shuffle_lowpass_ref(
    x: torch.Tensor,  # [B, C * f * f, H, W]
    factor: int = 2,
    taps: torch.Tensor | None = None,  # [K], K odd
) -> torch.Tensor:
    """``F.pixel_shuffle(x, factor)`` followed by a separable depthwise FIR filter -> ``[B, C, H*f, W*f]``.

    The filter is a correlation with zero padding that keeps the size:
    ``out[i] = sum_k taps[k] * in[i + k - K // 2]`` along width, then along height.
    """
    y = F.pixel_shuffle(_acc(x), factor)  # [B, C, Hf, Wf]
    k = default_lowpass_taps(dtype=y.dtype, device=x.device) if taps is None else taps.to(y.dtype)
    channels, pad = y.shape[1], k.numel() // 2
    if channels == 0 or y.numel() == 0:
        return y.to(x.dtype)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), padding=(0, pad), groups=channels)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), padding=(pad, 0), groups=channels)
    return y.to(x.dtype)
