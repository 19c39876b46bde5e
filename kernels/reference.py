"""Plain-PyTorch references of every fused op: the specification the Triton kernels are tested against.

This module never imports Triton. Each ``<op>_ref`` takes the same arguments as the public op
(minus ``impl``) and is differentiable by autograd, so it is also the CPU path.
"""

from __future__ import annotations

import math

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


# ----------------------------------------------------------------------------------------------- upfirdn2d
def _is_int(v) -> bool:
    """An int (not a bool), or a symbolic int of a traced shape (torch.compile with dynamic shapes)."""
    return isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool)


def parse_scaling(scaling, name: str = "up") -> tuple[int, int]:
    """EG3D's ``up`` / ``down`` argument: an int or ``[x, y]`` -> ``(sx, sy)``, each an int >= 1."""
    if _is_int(scaling):
        scaling = (scaling, scaling)
    if not isinstance(scaling, (list, tuple)) or len(scaling) != 2 or not all(_is_int(s) for s in scaling):
        raise ValueError(f"upfirdn2d: {name} must be an int or a pair [x, y] of ints, got {scaling!r}")
    sx, sy = scaling
    if sx < 1 or sy < 1:
        raise ValueError(f"upfirdn2d: {name} must be >= 1, got {scaling!r}")
    return sx, sy


def parse_padding(padding) -> tuple[int, int, int, int]:
    """EG3D's ``padding``: an int, ``[x, y]`` or ``[x0, x1, y0, y1]`` -> ``(x0, x1, y0, y1)``; negative crops."""
    if _is_int(padding):
        padding = (padding, padding)
    ok = isinstance(padding, (list, tuple)) and len(padding) in (2, 4)
    if not ok or not all(_is_int(p) for p in padding):
        raise ValueError(f"upfirdn2d: padding must be an int, [x, y] or [x0, x1, y0, y1] of ints, got {padding!r}")
    if len(padding) == 2:
        padding = (padding[0], padding[0], padding[1], padding[1])
    return tuple(padding)


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """``(fw, fh)`` of a 2-D ``[fh, fw]`` or 1-D ``[taps]`` filter (EG3D's ``_get_filter_size`` order); None is 1x1."""
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])


def upfirdn2d_out_size(H: int, W: int, fh: int, fw: int, up, down, padding) -> tuple[int, int]:
    """Output ``(Ho, Wo)``: ``(H * up + pad0 + pad1 - f) // down + 1`` per axis (EG3D's ``_upfirdn2d_ref``)."""
    (upx, upy), (downx, downy) = parse_scaling(up, "up"), parse_scaling(down, "down")
    px0, px1, py0, py1 = parse_padding(padding)
    return (H * upy + py0 + py1 - fh) // downy + 1, (W * upx + px0 + px1 - fw) // downx + 1


def upfirdn2d_ref(
    x: torch.Tensor,  # [N, C, H, W]
    f: torch.Tensor | None,  # [fh, fw] (non-separable), [taps] (separable) or None (1x1 identity)
    up=1,
    down=1,
    padding=0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """Upsample, pad, FIR-filter and downsample each channel (EG3D's ``_upfirdn2d_ref``) -> ``[N, C, Ho, Wo]``.

    1. insert ``up - 1`` zeros after each pixel (per axis), 2. pad by ``padding`` (negative values crop),
    3. convolve with ``f`` (a true convolution; ``flip_filter=True`` makes it a correlation); a 1-D filter is
    applied along x, then along y, 4. multiply by ``gain``, 5. keep every ``down``-th pixel, starting at 0.
    Runs in fp32 (fp64 for fp64 inputs) and returns ``x.dtype``. ``gain`` is applied once (EG3D scales the
    filter by ``gain ** (f.ndim / 2)``: the same product, but also defined for a negative gain).
    """
    (upx, upy), (downx, downy) = parse_scaling(up, "up"), parse_scaling(down, "down")
    px0, px1, py0, py1 = parse_padding(padding)
    N, C, H, W = x.shape
    fw, fh = filter_size(f)
    Ho, Wo = upfirdn2d_out_size(H, W, fh, fw, up, down, padding)
    xa = _acc(x)
    if min(N, C, H, W, Ho, Wo) <= 0:  # nothing to filter: zeros (still attached to x's graph)
        return (xa.new_zeros((N, C, max(Ho, 0), max(Wo, 0))) + xa.sum() * 0).to(x.dtype)
    w = torch.ones((1, 1), dtype=xa.dtype, device=x.device) if f is None else f.to(device=x.device, dtype=xa.dtype)
    if not flip_filter:
        w = w.flip(list(range(w.dim())))  # conv2d correlates: flipping makes it a convolution
    # 1. upsample by inserting zeros
    xa = F.pad(xa.reshape(N, C, H, 1, W, 1), [0, upx - 1, 0, 0, 0, upy - 1]).reshape(N, C, H * upy, W * upx)
    # 2. pad, or crop where negative
    xa = F.pad(xa, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    xa = xa[:, :, max(-py0, 0) : xa.shape[2] - max(-py1, 0), max(-px0, 0) : xa.shape[3] - max(-px1, 0)]
    # 3. + 4. filter (depthwise), with the gain folded into the last pass
    if w.dim() == 2:
        xa = F.conv2d(xa, (w * gain)[None, None].expand(C, 1, fh, fw), groups=C)
    else:
        xa = F.conv2d(xa, w.view(1, 1, 1, fw).expand(C, 1, 1, fw), groups=C)  # along x
        xa = F.conv2d(xa, (w * gain).view(1, 1, fh, 1).expand(C, 1, fh, 1), groups=C)  # along y
    # 5. downsample by keeping every down-th pixel
    return xa[:, :, ::downy, ::downx].to(x.dtype)


# ----------------------------------------------------------------------------------------------- bias_act
# EG3D's activation table: name -> (default alpha, default gain). alpha is read by lrelu only (EG3D's elu is
# always alpha = 1, whatever alpha says); swish's default gain is sqrt(2) in EG3D, as for relu and lrelu.
BIAS_ACT_DEFAULTS: dict[str, tuple[float, float]] = {
    "linear": (0.0, 1.0),
    "relu": (0.0, math.sqrt(2.0)),
    "lrelu": (0.2, math.sqrt(2.0)),
    "tanh": (0.0, 1.0),
    "sigmoid": (0.0, 1.0),
    "elu": (0.0, 1.0),
    "selu": (0.0, 1.0),
    "softplus": (0.0, 1.0),
    "swish": (0.0, math.sqrt(2.0)),
}


def bias_act_params(
    act: str, alpha: float | None, gain: float | None, clamp: float | None
) -> tuple[float, float, float]:
    """``(alpha, gain, clamp)`` with EG3D's defaults filled in; ``clamp`` < 0 means no clamp (None -> -1)."""
    if act not in BIAS_ACT_DEFAULTS:
        raise ValueError(f"bias_act: act must be one of {sorted(BIAS_ACT_DEFAULTS)}, got {act!r}")
    def_alpha, def_gain = BIAS_ACT_DEFAULTS[act]
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    clamp = float(-1.0 if clamp is None else clamp)
    return alpha, gain, clamp


def _activation(z: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
    if act == "linear":
        return z
    if act == "relu":
        return F.relu(z)
    if act == "lrelu":
        return F.leaky_relu(z, alpha)
    if act == "tanh":
        return torch.tanh(z)
    if act == "sigmoid":
        return torch.sigmoid(z)
    if act == "elu":
        return F.elu(z)
    if act == "selu":
        return F.selu(z)
    if act == "softplus":
        return F.softplus(z)
    return torch.sigmoid(z) * z  # swish


def bias_act_ref(
    x: torch.Tensor,  # any shape
    b: torch.Tensor | None = None,  # [x.shape[dim]]
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """EG3D's ``bias_act``: ``y = act(x + b broadcast along dim, alpha) * gain``, then clamped to
    ``[-clamp, clamp]`` when ``clamp >= 0``. Defaults per activation in :data:`BIAS_ACT_DEFAULTS`.

    Runs in fp32 (fp64 for fp64 inputs) and returns ``x.dtype``; differentiable to any order by autograd.
    """
    alpha, gain, clamp = bias_act_params(act, alpha, gain, clamp)
    z = _acc(x)
    if b is not None:
        dim = dim + x.dim() if dim < 0 else dim
        z = z + _acc(b).reshape([-1 if i == dim else 1 for i in range(x.dim())])
    y = _activation(z, act, alpha)
    if gain != 1:
        y = y * gain
    if clamp >= 0:
        y = y.clamp(-clamp, clamp)
    return y.to(x.dtype)
