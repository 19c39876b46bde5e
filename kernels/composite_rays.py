"""Fused ray compositing (EG3D's MipRayMarcher2) with a backward that stores no per-sample tensors.

colors ``[B, R, S, C]``, densities ``[B, R, S, 1]``, depths ``[B, R, S, 1]`` -> rgb ``[B, R, C]``,
depth ``[B, R, 1]``, weights ``[B, R, S-1, 1]`` (see ``reference.composite_rays_ref``).

Kernels. One program owns ``BLOCK_R`` rays and walks their S samples in order, holding a
``[BLOCK_R, BLOCK_C]`` colour tile (``BLOCK_C = next_power_of_2(C)``) and one scalar per ray for the
density, depth and transmittance; every sample is loaded once (the previous one is carried in
registers for the midpoints). No atomics: each ray is written by exactly one program.

Forward: the three outputs plus two per-ray fp32 tensors kept for the backward: ``rgb_acc [B, R, C]``
(``sum_i w_i c_mid_i`` before the white background) and ``stats [B, R, 3]`` = (total weight ``W``,
unclamped depth ``sum_i w_i d_mid_i / W``, depth-gradient factor ``f``). ``f`` is what autograd of the
reference multiplies the depth gradient by: 0 when the depth is nan (``W == 0``, reference: nan
gradients, here: zero) or infinite, times 1 / 0.5 / 0 for the ``maximum`` with the ray's minimum depth
(inside / tie / clamped) and the same for the ``minimum`` with its maximum depth.

Backward (with ``a_i`` = alpha, ``q_i = 1 - a_i + 1e-10``, ``T_i = prod_{j<i} q_j``, ``w_i = a_i T_i``):
the loss depends on ``w`` through rgb, depth and weights, so with ``g_k = dL/dw_k``

    g_k = <dL/drgb, c_mid_k> - [white_back] sum_c dL/drgb_c + a d_mid_k + b + dL/dweights_k,
    a = dL/ddepth * f / W,  b = -dL/ddepth * f * depth_raw / W               (autograd's division),
    dL/da_j = g_j T_j - (1 / q_j) sum_{k>j} g_k w_k                          (w_k, k > j, holds q_j).

The suffix ``sum_{k>j} g_k w_k`` is ``G - prefix_j`` with the per-ray total
``G = <dL/drgb, rgb_acc> - [white_back] sum_c dL/drgb_c * W + sum_k dL/dweights_k w_k`` (the depth terms
sum to ``dL/ddepth f (num/W - depth_raw) = 0``); the last sum needs one cheap scalar pre-pass over S
(density, depth and weight gradient only). With ``e = exp(-sigma delta)``, ``alpha = 1 - e`` and
``q = e + 1e-10``: ``dL/dsigma_j = delta e_j dL/da_j = delta (e_j g_j T_j - (e_j / q_j) suffix_j)``.

Numerics. ``e_j / q_j <= 1`` always, so an opaque interval (alpha = 1, q = 1e-10) cannot blow the
rounding error of ``G - prefix_j`` up by 1e10, and every gradient stays finite for densities of +-1e4
(``e_j = 0`` gives exactly 0); the reference divides by its ``q = (1 - alpha) + 1e-10``, which is 1e-10
already for ``e`` < 3e-8, a difference below 3e-8 * T_j * |g|. Alpha is computed as ``-expm1(-sigma
delta)`` (Kahan's trick: no libdevice), not ``1 - exp``: the reference's form loses all but a few bits of
alpha for nearly transparent intervals, e.g. with ``density_bias = -10`` its fp32 depth is off by 5e-4
from float64 while the kernel's is within 1e-6. Sigma is a stable softplus ``max(x, 0) + log1p(exp(-|x|))``
of ``x = density_mid + density_bias`` whose derivative is ``sigmoid(x)``. Each sample gets half of the
gradients of the intervals on either side.

Depths get no gradient (the model treats them as constants); the reference would give one.
"""

import torch
import triton
import triton.language as tl

from .reference import composite_rays_ref
from .utils import AotSpec, check_same, check_tensor, launch, next_power_of_2, use_triton

MAX_C = 1024  # widest colour the single-tile kernels take (BLOCK_R = 1 at this width)
_MAX_BLOCK_R = 128


# ----------------------------------------------------------------------------------------------- kernels
@triton.jit
def _softplus_sigmoid(x):
    # softplus(x) = max(x, 0) + log1p(exp(-|x|)) and its derivative sigmoid(x), without overflow for any x.
    # log1p(u) = log(v) * u / (v - 1) with v = 1 + u is accurate for small u (and u itself once v == 1).
    u = tl.exp(-tl.abs(x))
    v = 1.0 + u
    big = v != 1.0
    log1p_u = tl.where(big, tl.log(v) * (u / tl.where(big, v - 1.0, 1.0)), u)
    softplus = tl.maximum(x, 0.0) + log1p_u
    sigmoid = tl.where(x >= 0, 1.0 / v, u / v)
    return softplus, sigmoid


@triton.jit
def _alpha_transmit(sigma, delta):
    # alpha = 1 - exp(-sigma delta) and e = exp(-sigma delta) (so q = 1 - alpha + 1e-10 = e + 1e-10).
    # For small sigma delta, 1 - e cancels; Kahan's expm1: (e - 1) * y / log(e) with y = -sigma delta is
    # accurate even for an approximate exp (the ratio (e - 1) / log(e) is smooth), exact 0 for e == 1.
    y = -sigma * delta
    e = tl.exp(y)
    em1 = e - 1.0
    near = (tl.abs(em1) < 0.5) & (em1 != 0.0)  # else e - 1 is accurate (or e == 1: alpha = -y)
    ratio = y / tl.log(tl.where(near, e, 0.5))
    alpha = -tl.where(near, em1 * ratio, tl.where(em1 == 0.0, y, em1))
    return alpha, e


@triton.jit
def _composite_fwd_kernel(
    COLORS,  # [N, S, C] contiguous, N = B * R rays
    DENS,  # [N, S]
    DEPTHS,  # [N, S]
    RGB,  # [N, C] out, input dtype
    DEPTH,  # [N] out, input dtype
    WEIGHTS,  # [N, S-1] out, input dtype
    RGB_ACC,  # [N, C] fp32: sum_i w_i c_mid_i (no white background)
    STATS,  # [N, 3] fp32: total weight, unclamped depth, depth-gradient factor
    n_rays,
    S,
    C,
    density_bias,
    WHITE_BACK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rays = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    rmask = rays < n_rays
    rays = rays.to(tl.int64)
    cols = tl.arange(0, BLOCK_C)  # [BLOCK_C]
    cmask = rmask[:, None] & (cols[None, :] < C)  # [BLOCK_R, BLOCK_C]
    col_base = rays[:, None] * S * C + cols[None, :]  # sample 0 of every ray, [BLOCK_R, BLOCK_C]
    base = rays * S  # [BLOCK_R]
    w_base = rays * (S - 1)

    c_prev = tl.load(COLORS + col_base, mask=cmask, other=0.0).to(tl.float32)
    dn_prev = tl.load(DENS + base, mask=rmask, other=0.0).to(tl.float32)
    dp_prev = tl.load(DEPTHS + base, mask=rmask, other=0.0).to(tl.float32)
    d_min = dp_prev
    d_max = dp_prev
    trans = tl.full([BLOCK_R], 1.0, tl.float32)  # T_i
    total = tl.zeros([BLOCK_R], dtype=tl.float32)  # sum w
    num = tl.zeros([BLOCK_R], dtype=tl.float32)  # sum w d_mid
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)  # sum w c_mid
    for s in range(1, S):
        c_next = tl.load(COLORS + col_base + s * C, mask=cmask, other=0.0).to(tl.float32)
        dn_next = tl.load(DENS + base + s, mask=rmask, other=0.0).to(tl.float32)
        dp_next = tl.load(DEPTHS + base + s, mask=rmask, other=0.0).to(tl.float32)
        sigma, _ = _softplus_sigmoid((dn_prev + dn_next) * 0.5 + density_bias)
        alpha, e = _alpha_transmit(sigma, dp_next - dp_prev)
        w = alpha * trans
        trans = trans * (e + 1e-10)
        acc += w[:, None] * ((c_prev + c_next) * 0.5)
        total += w
        num += w * ((dp_prev + dp_next) * 0.5)
        tl.store(WEIGHTS + w_base + (s - 1), w.to(WEIGHTS.dtype.element_ty), mask=rmask)
        d_min = tl.minimum(d_min, dp_next)
        d_max = tl.maximum(d_max, dp_next)
        c_prev = c_next
        dn_prev = dn_next
        dp_prev = dp_next

    # depth = min(max(nan_to_num(num / total, nan=inf), d_min), d_max), and autograd's factor for it.
    raw = tl.where(total != 0.0, num / tl.where(total != 0.0, total, 1.0), float("nan"))  # 0 / 0 without warnings
    finite = (raw == raw) & (tl.abs(raw) < float("inf"))
    d1 = tl.where(raw == raw, raw, float("inf"))
    d2 = tl.maximum(d1, d_min)
    depth = tl.minimum(d2, d_max)
    f_lo = tl.where(d1 > d_min, 1.0, tl.where(d1 == d_min, 0.5, 0.0))
    f_hi = tl.where(d2 < d_max, 1.0, tl.where(d2 == d_max, 0.5, 0.0))
    factor = tl.where(finite, f_lo * f_hi, 0.0)

    rgb = acc
    if WHITE_BACK:
        rgb = acc + 1.0 - total[:, None]
    out = rays[:, None] * C + cols[None, :]
    tl.store(RGB + out, rgb.to(RGB.dtype.element_ty), mask=cmask)
    tl.store(RGB_ACC + out, acc, mask=cmask)
    tl.store(DEPTH + rays, depth.to(DEPTH.dtype.element_ty), mask=rmask)
    tl.store(STATS + rays * 3, total, mask=rmask)
    tl.store(STATS + rays * 3 + 1, raw, mask=rmask)
    tl.store(STATS + rays * 3 + 2, factor, mask=rmask)


@triton.jit
def _composite_bwd_kernel(
    COLORS,  # [N, S, C]
    DENS,  # [N, S]
    DEPTHS,  # [N, S]
    RGB_ACC,  # [N, C] fp32
    STATS,  # [N, 3] fp32
    G_RGB,  # [N, C] dL/drgb
    G_DEPTH,  # [N] dL/ddepth
    G_W,  # [N, S-1] dL/dweights
    D_COLORS,  # [N, S, C] out
    D_DENS,  # [N, S] out
    n_rays,
    S,
    C,
    density_bias,
    WHITE_BACK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rays = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    rmask = rays < n_rays
    rays = rays.to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    cmask = rmask[:, None] & (cols[None, :] < C)  # [BLOCK_R, BLOCK_C]
    col_base = rays[:, None] * S * C + cols[None, :]
    base = rays * S
    w_base = rays * (S - 1)
    ray_c = rays[:, None] * C + cols[None, :]

    # ---- per-ray constants
    g_rgb = tl.load(G_RGB + ray_c, mask=cmask, other=0.0).to(tl.float32)  # [BLOCK_R, BLOCK_C]
    total = tl.load(STATS + rays * 3, mask=rmask, other=1.0)
    raw = tl.load(STATS + rays * 3 + 1, mask=rmask, other=0.0)
    factor = tl.load(STATS + rays * 3 + 2, mask=rmask, other=0.0)
    g_depth = tl.load(G_DEPTH + rays, mask=rmask, other=0.0).to(tl.float32) * factor
    live = factor != 0.0  # else raw may be nan and total 0: no depth gradient at all
    safe_total = tl.where(live, total, 1.0)
    coef_d = tl.where(live, g_depth / safe_total, 0.0)  # a: multiplies d_mid_k in g_k
    coef_1 = tl.where(live, -g_depth * (raw / safe_total), 0.0)  # b: constant in g_k
    if WHITE_BACK:
        coef_1 += -tl.sum(g_rgb, axis=1)
    grand = tl.sum(g_rgb * tl.load(RGB_ACC + ray_c, mask=cmask, other=0.0), axis=1)  # <dL/drgb, rgb_acc>
    if WHITE_BACK:
        grand += -tl.sum(g_rgb, axis=1) * total

    # ---- pre-pass: sum_k dL/dweights_k w_k (scalars only)
    dn_prev = tl.load(DENS + base, mask=rmask, other=0.0).to(tl.float32)
    dp_prev = tl.load(DEPTHS + base, mask=rmask, other=0.0).to(tl.float32)
    dn0 = dn_prev
    dp0 = dp_prev
    trans = tl.full([BLOCK_R], 1.0, tl.float32)
    for s in range(1, S):
        dn_next = tl.load(DENS + base + s, mask=rmask, other=0.0).to(tl.float32)
        dp_next = tl.load(DEPTHS + base + s, mask=rmask, other=0.0).to(tl.float32)
        g_w = tl.load(G_W + w_base + (s - 1), mask=rmask, other=0.0).to(tl.float32)
        sigma, _ = _softplus_sigmoid((dn_prev + dn_next) * 0.5 + density_bias)
        alpha, e = _alpha_transmit(sigma, dp_next - dp_prev)
        grand += g_w * (alpha * trans)
        trans = trans * (e + 1e-10)
        dn_prev = dn_next
        dp_prev = dp_next

    # ---- main pass: forward order, suffix_j = grand - prefix_j
    c_prev = tl.load(COLORS + col_base, mask=cmask, other=0.0).to(tl.float32)
    dn_prev = dn0
    dp_prev = dp0
    trans = tl.full([BLOCK_R], 1.0, tl.float32)
    prefix = tl.zeros([BLOCK_R], dtype=tl.float32)
    half_dc_prev = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)  # interval s-2's colour gradient / 2
    half_dx_prev = tl.zeros([BLOCK_R], dtype=tl.float32)  # interval s-2's density gradient / 2
    for s in range(1, S):
        c_next = tl.load(COLORS + col_base + s * C, mask=cmask, other=0.0).to(tl.float32)
        dn_next = tl.load(DENS + base + s, mask=rmask, other=0.0).to(tl.float32)
        dp_next = tl.load(DEPTHS + base + s, mask=rmask, other=0.0).to(tl.float32)
        g_w = tl.load(G_W + w_base + (s - 1), mask=rmask, other=0.0).to(tl.float32)
        sigma, dsig_dx = _softplus_sigmoid((dn_prev + dn_next) * 0.5 + density_bias)
        delta = dp_next - dp_prev
        alpha, e = _alpha_transmit(sigma, delta)
        w = alpha * trans
        c_mid = (c_prev + c_next) * 0.5
        g = tl.sum(g_rgb * c_mid, axis=1) + coef_d * ((dp_prev + dp_next) * 0.5) + coef_1 + g_w  # dL/dw
        prefix += g * w
        suffix = grand - prefix  # sum_{k>j} g_k w_k
        ratio = e / (e + 1e-10)  # e / q <= 1 (see the module docstring)
        dx = delta * (e * g * trans - ratio * suffix) * dsig_dx  # dL/d(density_mid)
        half_dc = (0.5 * w)[:, None] * g_rgb
        half_dx = 0.5 * dx
        tl.store(D_COLORS + col_base + (s - 1) * C, (half_dc_prev + half_dc).to(D_COLORS.dtype.element_ty), mask=cmask)
        tl.store(D_DENS + base + (s - 1), (half_dx_prev + half_dx).to(D_DENS.dtype.element_ty), mask=rmask)
        half_dc_prev = half_dc
        half_dx_prev = half_dx
        trans = trans * (e + 1e-10)
        c_prev = c_next
        dn_prev = dn_next
        dp_prev = dp_next
    tl.store(D_COLORS + col_base + (S - 1) * C, half_dc_prev.to(D_COLORS.dtype.element_ty), mask=cmask)
    tl.store(D_DENS + base + (S - 1), half_dx_prev.to(D_DENS.dtype.element_ty), mask=rmask)


# ----------------------------------------------------------------------------------------------- launchers
def _blocks(n_rays: int, C: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) for ``n_rays`` rays of C channels.

    Triton lays a ``[BLOCK_R, BLOCK_C]`` tile out with a warp's lanes over up to 32 channels, then its
    warps over the remaining channel groups, and only the rest over rays; every per-ray scalar
    (softplus, exp, transmittance, ...) is held and computed by each lane of its row. BLOCK_R is chosen
    so that a thread owns at most two rays and two elements of a colour tile (four at C = 1024; the
    backward keeps ~5 tiles and their pointers live), which keeps ptxas far from spilling (it spilled
    at 4 rays x 8 elements, and oddly at BLOCK_R = 2 with C = 512); tiny launches get fewer rows.
    """
    block_c = next_power_of_2(C)
    num_warps = 8 if block_c >= 128 else 4
    lanes_r = 32 // min(32, block_c)
    warps_r = num_warps // min(num_warps, max(1, block_c // 32))
    block_r = min(_MAX_BLOCK_R, 2 * lanes_r * warps_r, max(1, 2 * 32 * num_warps // block_c))
    return max(1, min(block_r, next_power_of_2(n_rays))), block_c, num_warps


def _launch_fwd(colors, densities, depths, density_bias, white_back):
    B, R, S, C = colors.shape
    n = B * R
    colors, densities, depths = colors.contiguous(), densities.contiguous(), depths.contiguous()
    rgb = colors.new_empty((B, R, C))
    depth = colors.new_empty((B, R, 1))
    weights = colors.new_empty((B, R, S - 1, 1))
    rgb_acc = colors.new_empty((B, R, C), dtype=torch.float32)
    stats = colors.new_empty((B, R, 3), dtype=torch.float32)
    if n == 0:
        return rgb, depth, weights, rgb_acc, stats
    block_r, block_c, num_warps = _blocks(n, C)
    launch(_composite_fwd_kernel, (triton.cdiv(n, block_r),),
        colors, densities, depths, rgb, depth, weights, rgb_acc, stats,
        n, S, C, density_bias,
        WHITE_BACK=white_back, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=num_warps,
    )  # fmt: skip
    return rgb, depth, weights, rgb_acc, stats


def _launch_bwd(g_rgb, g_depth, g_weights, colors, densities, depths, rgb_acc, stats, density_bias, white_back):
    B, R, S, C = colors.shape
    n = B * R
    # autograd hands us expanded (stride-0) or otherwise strided gradients: the kernel wants rows.
    g_rgb, g_depth, g_weights = g_rgb.contiguous(), g_depth.contiguous(), g_weights.contiguous()
    colors, densities, depths = colors.contiguous(), densities.contiguous(), depths.contiguous()
    d_colors = colors.new_empty((B, R, S, C))
    d_densities = colors.new_empty((B, R, S, 1))
    if n == 0:
        return d_colors, d_densities
    block_r, block_c, num_warps = _blocks(n, C)
    launch(_composite_bwd_kernel, (triton.cdiv(n, block_r),),
        colors, densities, depths, rgb_acc.contiguous(), stats.contiguous(), g_rgb, g_depth, g_weights,
        d_colors, d_densities, n, S, C, density_bias,
        WHITE_BACK=white_back, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=num_warps,
    )  # fmt: skip
    return d_colors, d_densities


# ----------------------------------------------------------------------------------------------- registration
@torch.library.custom_op("export3d::composite_rays_fwd", mutates_args=())
def _composite_rays_fwd(
    colors: torch.Tensor,
    densities: torch.Tensor,
    depths: torch.Tensor,
    density_bias: float,
    white_back: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_fwd(colors, densities, depths, density_bias, white_back)


@_composite_rays_fwd.register_fake
def _(colors, densities, depths, density_bias, white_back):
    B, R, S, C = colors.shape
    return (
        colors.new_empty((B, R, C)),
        colors.new_empty((B, R, 1)),
        colors.new_empty((B, R, S - 1, 1)),
        colors.new_empty((B, R, C), dtype=torch.float32),
        colors.new_empty((B, R, 3), dtype=torch.float32),
    )


@torch.library.custom_op("export3d::composite_rays_bwd", mutates_args=())
def _composite_rays_bwd(
    g_rgb: torch.Tensor,
    g_depth: torch.Tensor,
    g_weights: torch.Tensor,
    colors: torch.Tensor,
    densities: torch.Tensor,
    depths: torch.Tensor,
    rgb_acc: torch.Tensor,
    stats: torch.Tensor,
    density_bias: float,
    white_back: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_bwd(g_rgb, g_depth, g_weights, colors, densities, depths, rgb_acc, stats, density_bias, white_back)


@_composite_rays_bwd.register_fake
def _(g_rgb, g_depth, g_weights, colors, densities, depths, rgb_acc, stats, density_bias, white_back):
    B, R, S, C = colors.shape
    return colors.new_empty((B, R, S, C)), colors.new_empty((B, R, S, 1))


def _setup_context(ctx, inputs, output):
    colors, densities, depths, density_bias, white_back = inputs
    _rgb, _depth, _weights, rgb_acc, stats = output
    # Inputs plus per-ray totals only: alpha, T and the weights are recomputed in the backward.
    ctx.save_for_backward(colors, densities, depths, rgb_acc, stats)
    ctx.density_bias, ctx.white_back = density_bias, white_back


def _backward(ctx, g_rgb, g_depth, g_weights, _g_rgb_acc, _g_stats):
    colors, densities, depths, rgb_acc, stats = ctx.saved_tensors
    B, R, S, C = colors.shape
    g_rgb = colors.new_zeros((B, R, C)) if g_rgb is None else g_rgb
    g_depth = colors.new_zeros((B, R, 1)) if g_depth is None else g_depth
    g_weights = colors.new_zeros((B, R, S - 1, 1)) if g_weights is None else g_weights
    d_colors, d_densities = torch.ops.export3d.composite_rays_bwd(
        g_rgb, g_depth, g_weights, colors, densities, depths, rgb_acc, stats, ctx.density_bias, ctx.white_back
    )
    return d_colors, d_densities, None, None, None  # depths: no gradient (constants in our model)


_composite_rays_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------- public function
def composite_rays(
    colors: torch.Tensor,
    densities: torch.Tensor,
    depths: torch.Tensor,
    density_bias: float = -1.0,
    white_back: bool = False,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Alpha-composite S samples per ray the way EG3D's MipRayMarcher2 does.

    Args:
        colors: ``[B, R, S, C]`` per-sample features (C >= 1; the Triton path takes C <= 1024).
        densities: ``[B, R, S, 1]`` raw densities; ``softplus(midpoint + density_bias)`` is sigma.
        depths: ``[B, R, S, 1]`` sample depths, ascending along S (S >= 2).
        density_bias: added to the midpoint densities before softplus (EG3D: -1).
        white_back: add the leftover transmittance ``1 - sum(weights)`` to rgb.
        impl: ``"auto"`` (Triton on CUDA, reference otherwise), ``"triton"`` or ``"reference"``.

    Returns ``(rgb [B, R, C], depth [B, R, 1], weights [B, R, S-1, 1])`` in ``colors.dtype``. Colors and
    densities get gradients from all three outputs; depths get no gradient on the Triton path (they are
    constants in our model; the reference would differentiate them). A ray whose weights are all zero has
    depth = its largest sample depth and no depth gradient. Colours are not rescaled (EG3D's ``* 2 - 1`` is
    the caller's business).
    """
    op = "composite_rays"
    check_tensor("colors", colors, op=op, ndim=4)
    B, R, S, C = colors.shape
    check_tensor("densities", densities, op=op, shape=(B, R, S, 1))
    check_tensor("depths", depths, op=op, shape=(B, R, S, 1))
    if S < 2:
        raise ValueError(f"{op}: need at least 2 samples per ray (S >= 2), got colors of shape {tuple(colors.shape)}")
    check_same(op, "colors", colors, densities=densities, depths=depths)
    if use_triton(impl, colors, densities, depths, op=op):
        if C > MAX_C:
            if impl == "triton":
                raise ValueError(f"{op}: impl='triton' takes C <= {MAX_C}, got C={C}; use impl='reference'")
        else:
            out = torch.ops.export3d.composite_rays_fwd(
                colors, densities, depths, float(density_bias), bool(white_back)
            )
            return out[0], out[1], out[2]
    return composite_rays_ref(colors, densities, depths, density_bias, white_back)


# ----------------------------------------------------------------------------------------------- AOT configurations
def aot_specs() -> list[AotSpec]:
    """Configurations compiled by ``python -m export3d.kernels.aot``: every block size the launchers pick
    at realistic ray counts (C = 32 is the model's), both white-background variants."""
    configs = [("fp32", c, False) for c in (1, 2, 3, 8, 16, 32, 64, 128, 256, 512, MAX_C)]
    configs += [("fp32", 32, True), ("bf16", 3, True), ("bf16", 32, False), ("bf16", 32, True), ("bf16", MAX_C, False)]
    specs = []
    for dtype, c, white_back in configs:
        block_r, block_c, num_warps = _blocks(1 << 20, c)
        label = f"{dtype} C={c} white_back={white_back} BLOCK_R={block_r}"
        const = {"WHITE_BACK": white_back, "BLOCK_R": block_r, "BLOCK_C": block_c}
        scalars = {"n_rays": "i32", "S": "i32", "C": "i32", "density_bias": "fp32"}
        fwd_sig = {n: f"*{dtype}" for n in ("COLORS", "DENS", "DEPTHS", "RGB", "DEPTH", "WEIGHTS")}
        fwd_sig.update(RGB_ACC="*fp32", STATS="*fp32", **scalars, **dict.fromkeys(const, "constexpr"))
        specs.append(AotSpec(_composite_fwd_kernel, fwd_sig, const, num_warps, label))
        bwd_sig = {n: f"*{dtype}" for n in ("COLORS", "DENS", "DEPTHS")}
        bwd_sig.update(RGB_ACC="*fp32", STATS="*fp32")
        bwd_sig.update({n: f"*{dtype}" for n in ("G_RGB", "G_DEPTH", "G_W", "D_COLORS", "D_DENS")})
        bwd_sig.update(**scalars, **dict.fromkeys(const, "constexpr"))
        specs.append(AotSpec(_composite_bwd_kernel, bwd_sig, const, num_warps, label))
    return specs
