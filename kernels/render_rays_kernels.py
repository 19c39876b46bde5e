"""The ``@triton.jit`` kernels of ``render_rays`` (the op, its maths and its memory: ``render_rays.py``).

Tiles are ``[BLOCK_R, BLOCK_*]`` (rays x channels): one program owns BLOCK_R rays of one batch element
and walks their S samples in order. Per sample it projects ``o + t d`` onto the three planes, gathers
the four corner taps of all C channels per plane (``[BLOCK_R, BLOCK_C]``, channels contiguous in the
channel-last copy), runs the decoder in registers with ``tl.dot`` and composites.

``tl.dot`` precision (constexpr DOT, chosen by the launcher): fp32-exact products, never plain TF32. TF32
rounds features and weights to 10 mantissa bits (relative error ~5e-4 per product), which the Triton
interpreter cannot reproduce (it ignores TF32), so no CPU test could hold the kernel to the fp32 reference.
``"ieee"`` (FMA, exactly what the interpreter computes) is used where it fits the registers (BLOCK_C * BLOCK_H
<= 512, e.g. the tiny preset's 16 x 32); at C = 32, hidden 64 the FMA operands spill (ptxas: 255 registers +
~500 bytes), so ``"tf32x3"`` is used there: three tensor-core products of the split operands
``a_hi b_hi + a_hi b_lo + a_lo b_hi`` (``x_hi`` = x rounded to TF32, ``x_lo = x - x_hi``), which drops only
``a_lo b_lo`` (< 2^-22 relative per product), fp32-level accuracy. ``test_tf32x3_bound`` emulates it on the
CPU and holds it to the parity tolerances. The decoder is ~4k multiply-adds per sample (C = 32, hidden 64,
1 + 32 outputs), ~3.3 GFLOP per batch element forward at the paper preset: small beside the gathers.
"""

import triton
import triton.language as tl

from .composite_rays import _alpha_transmit, _softplus_sigmoid
from .triplane_sample import _taps_1d


@triton.jit
def _plane_feats(P, gu, gv, H, W, ch_off, tile_mask, s_h, s_w):
    """Bilinear sample of one plane (pointer P at its origin) at BLOCK_R points -> ``[BLOCK_R, BLOCK_C]`` fp32."""
    x0, x1, tx, okx0, okx1 = _taps_1d(gu, W)  # u indexes width
    y0, y1, ty, oky0, oky1 = _taps_1d(gv, H)  # v indexes height
    v00 = tl.load(P + (y0 * s_h + x0 * s_w)[:, None] + ch_off, mask=tile_mask & (oky0 & okx0)[:, None], other=0.0)
    v01 = tl.load(P + (y0 * s_h + x1 * s_w)[:, None] + ch_off, mask=tile_mask & (oky0 & okx1)[:, None], other=0.0)
    v10 = tl.load(P + (y1 * s_h + x0 * s_w)[:, None] + ch_off, mask=tile_mask & (oky1 & okx0)[:, None], other=0.0)
    v11 = tl.load(P + (y1 * s_h + x1 * s_w)[:, None] + ch_off, mask=tile_mask & (oky1 & okx1)[:, None], other=0.0)
    tx = tx[:, None]
    ty = ty[:, None]
    top = v00.to(tl.float32) * (1.0 - tx) + v01.to(tl.float32) * tx
    bottom = v10.to(tl.float32) * (1.0 - tx) + v11.to(tl.float32) * tx
    return top * (1.0 - ty) + bottom * ty


@triton.jit
def _triplane(P0, P1, P2, gx, gy, gz, H, W, ch_off, tile_mask, s_h, s_w, EG3D: tl.constexpr):
    """Mean of the three planes at the scaled points (gx, gy, gz) ``[BLOCK_R]`` -> ``[BLOCK_R, BLOCK_C]`` fp32."""
    acc = _plane_feats(P0, gx, gy, H, W, ch_off, tile_mask, s_h, s_w)  # plane 0: (x, y)
    acc += _plane_feats(P1, gx, gz, H, W, ch_off, tile_mask, s_h, s_w)  # plane 1: (x, z)
    if EG3D:
        acc += _plane_feats(P2, gz, gx, H, W, ch_off, tile_mask, s_h, s_w)  # plane 2: (z, x)
    else:
        acc += _plane_feats(P2, gy, gz, H, W, ch_off, tile_mask, s_h, s_w)  # plane 2: (y, z)
    return acc * (1.0 / 3.0)


@triton.jit
def _plane_scatter(DP, gu, gv, H, W, C: tl.constexpr, ch, tile_mask, g):
    """Scatter-add ``w * g`` (g ``[BLOCK_R, BLOCK_C]`` fp32) into one plane's fp32 ``[H, W, C]`` gradient."""
    x0, x1, tx, okx0, okx1 = _taps_1d(gu, W)
    y0, y1, ty, oky0, oky1 = _taps_1d(gv, H)
    tx = tx[:, None]
    ty = ty[:, None]
    r0 = (y0 * W)[:, None]
    r1 = (y1 * W)[:, None]
    ch2 = ch[None, :]
    g0 = g * (1.0 - ty)
    g1 = g * ty
    tl.atomic_add(DP + (r0 + x0[:, None]) * C + ch2, g0 * (1.0 - tx), mask=tile_mask & (oky0 & okx0)[:, None],
                  sem="relaxed")  # fmt: skip
    tl.atomic_add(DP + (r0 + x1[:, None]) * C + ch2, g0 * tx, mask=tile_mask & (oky0 & okx1)[:, None], sem="relaxed")
    tl.atomic_add(DP + (r1 + x0[:, None]) * C + ch2, g1 * (1.0 - tx), mask=tile_mask & (oky1 & okx0)[:, None],
                  sem="relaxed")  # fmt: skip
    tl.atomic_add(DP + (r1 + x1[:, None]) * C + ch2, g1 * tx, mask=tile_mask & (oky1 & okx1)[:, None], sem="relaxed")


@triton.jit
def _load_ray(ORIGINS, DIRS, ray, rmask):
    """Origins and directions of BLOCK_R rays, fp32, six ``[BLOCK_R]`` vectors."""
    ox = tl.load(ORIGINS + ray * 3 + 0, mask=rmask, other=0.0).to(tl.float32)
    oy = tl.load(ORIGINS + ray * 3 + 1, mask=rmask, other=0.0).to(tl.float32)
    oz = tl.load(ORIGINS + ray * 3 + 2, mask=rmask, other=0.0).to(tl.float32)
    dx = tl.load(DIRS + ray * 3 + 0, mask=rmask, other=0.0).to(tl.float32)
    dy = tl.load(DIRS + ray * 3 + 1, mask=rmask, other=0.0).to(tl.float32)
    dz = tl.load(DIRS + ray * 3 + 2, mask=rmask, other=0.0).to(tl.float32)
    return ox, oy, oz, dx, dy, dz


@triton.jit
def _load_decoder(W1, B1, W2, B2, C: tl.constexpr, HID: tl.constexpr, CF: tl.constexpr, COLOR: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_F: tl.constexpr):  # fmt: skip
    """w1 ``[BLOCK_C, BLOCK_H]``, b1 ``[BLOCK_H]``, the density column of w2 ``[BLOCK_H]`` and its bias, the colour
    columns ``[BLOCK_H, BLOCK_F]`` and biases ``[BLOCK_F]`` (zeros without COLOR); fp32, zero-padded."""
    ch = tl.arange(0, BLOCK_C)
    hd = tl.arange(0, BLOCK_H)
    fo = tl.arange(0, BLOCK_F)
    hmask = hd < HID
    w1 = tl.load(W1 + ch[:, None] * HID + hd[None, :], mask=(ch < C)[:, None] & hmask[None, :], other=0.0)
    b1 = tl.load(B1 + hd, mask=hmask, other=0.0).to(tl.float32)
    w2d = tl.load(W2 + hd * (1 + CF), mask=hmask, other=0.0).to(tl.float32)
    b2d = tl.load(B2).to(tl.float32)
    if COLOR:
        fmask = fo < CF
        w2c = tl.load(W2 + hd[:, None] * (1 + CF) + 1 + fo[None, :], mask=hmask[:, None] & fmask[None, :], other=0.0)
        w2c = w2c.to(tl.float32)
        b2c = tl.load(B2 + 1 + fo, mask=fmask, other=0.0).to(tl.float32)
    else:
        w2c = tl.zeros([BLOCK_H, BLOCK_F], dtype=tl.float32)
        b2c = tl.zeros([BLOCK_F], dtype=tl.float32)
    return w1.to(tl.float32), b1, w2d, b2d, w2c, b2c


@triton.jit
def _decode(f, w1, b1, w2d, b2d, w2c, b2c, COLOR: tl.constexpr, DOT: tl.constexpr):
    """Features ``[BLOCK_R, BLOCK_C]`` -> hidden h and softplus' ``[BLOCK_R, BLOCK_H]``, raw density ``[BLOCK_R]``,
    colour sigmoid ``[BLOCK_R, BLOCK_F]`` (the colour is ``sig * 1.002 - 0.001``; zeros without COLOR)."""
    h, dsp = _softplus_sigmoid(tl.dot(f, w1, input_precision=DOT) + b1[None, :])
    density = tl.sum(h * w2d[None, :], axis=1) + b2d
    if COLOR:
        _sp, sig = _softplus_sigmoid(tl.dot(h, w2c, input_precision=DOT) + b2c[None, :])
    else:
        sig = tl.zeros([f.shape[0], w2c.shape[1]], dtype=tl.float32)
    return h, dsp, density, sig


@triton.jit
def _render_fwd_kernel(
    PLANES,  # [B, 3, C, H, W] with strides (s_b, s_p, s_c, s_h, s_w), read in the launcher's layout
    ORIGINS,  # [B, R, 3] contiguous
    DIRS,  # [B, R, 3] contiguous
    DEPTHS,  # [B, R, S] contiguous, ascending
    W1,  # [C, HID] contiguous
    B1,  # [HID]
    W2,  # [HID, 1 + CF] contiguous: column 0 density, 1.. colour
    B2,  # [1 + CF]
    RGB,  # [B, R, CF] out, planes' dtype (COLOR only)
    DEPTH,  # [B, R] out, planes' dtype (COLOR only)
    WEIGHTS,  # [B, R, S-1] out, planes' dtype (STORE_WEIGHTS only)
    RGB_ACC,  # [B, R, CF] fp32: sum_i w_i c_mid_i, kept for the backward (COLOR only)
    STATS,  # [B, R, 3] fp32: total weight, unclamped depth, depth-gradient factor (COLOR only)
    R,
    S,
    H,
    W,
    s_b,
    s_p,
    s_c,
    s_h,
    s_w,
    scale,  # 2 / box_warp
    density_bias,
    EG3D: tl.constexpr,
    COLOR: tl.constexpr,  # False: the density-only coarse pass (weights only)
    STORE_WEIGHTS: tl.constexpr,
    WHITE_BACK: tl.constexpr,
    C: tl.constexpr,
    HID: tl.constexpr,
    CF: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_F: tl.constexpr,
    DOT: tl.constexpr,  # tl.dot input_precision: "ieee" or "tf32x3" (see the module docstring)
):
    b = tl.program_id(1).to(tl.int64)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    rmask = r < R
    ray = b * R + r  # [BLOCK_R] int64
    ch = tl.arange(0, BLOCK_C)
    fo = tl.arange(0, BLOCK_F)
    tile_mask = rmask[:, None] & (ch < C)[None, :]  # [BLOCK_R, BLOCK_C]
    ch_off = (ch * s_c)[None, :]  # [1, BLOCK_C]
    ox, oy, oz, dx, dy, dz = _load_ray(ORIGINS, DIRS, ray, rmask)
    w1, b1, w2d, b2d, w2c, b2c = _load_decoder(W1, B1, W2, B2, C, HID, CF, COLOR, BLOCK_C, BLOCK_H, BLOCK_F)
    P0 = PLANES + b * s_b  # int64 offsets: b is int64, one stride at a time
    P1 = P0 + s_p
    P2 = P1 + s_p
    base = ray * S
    w_base = ray * (S - 1)

    # sample 0; then each step decodes sample s and composites the interval (s-1, s)
    dp_prev = tl.load(DEPTHS + base, mask=rmask, other=0.0).to(tl.float32)  # [BLOCK_R]
    f = _triplane(P0, P1, P2, (ox + dp_prev * dx) * scale, (oy + dp_prev * dy) * scale, (oz + dp_prev * dz) * scale,
                  H, W, ch_off, tile_mask, s_h, s_w, EG3D)  # fmt: skip
    _h0, _dsp0, dn_prev, sig_prev = _decode(f, w1, b1, w2d, b2d, w2c, b2c, COLOR, DOT)  # (unused outputs are dropped)
    c_prev = sig_prev * 1.002 - 0.001  # [BLOCK_R, BLOCK_F]
    d_min = dp_prev
    d_max = dp_prev
    trans = tl.full([BLOCK_R], 1.0, tl.float32)  # T_i
    total = tl.zeros([BLOCK_R], dtype=tl.float32)  # sum w
    num = tl.zeros([BLOCK_R], dtype=tl.float32)  # sum w d_mid
    acc = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.float32)  # sum w c_mid
    for s in range(1, S):
        dp_next = tl.load(DEPTHS + base + s, mask=rmask, other=0.0).to(tl.float32)
        f = _triplane(P0, P1, P2, (ox + dp_next * dx) * scale, (oy + dp_next * dy) * scale,
                      (oz + dp_next * dz) * scale, H, W, ch_off, tile_mask, s_h, s_w, EG3D)  # fmt: skip
        # reloaded every sample on purpose (cache hits): kept live across the loop instead, the paper forward needs
        # 215 registers instead of 174 and the tiny density pass spills 12 bytes (ptxas, sm_80, 2026-11-29)
        w1, b1, w2d, b2d, w2c, b2c = _load_decoder(W1, B1, W2, B2, C, HID, CF, COLOR, BLOCK_C, BLOCK_H, BLOCK_F)
        _h1, _dsp1, dn_next, sig_next = _decode(f, w1, b1, w2d, b2d, w2c, b2c, COLOR, DOT)
        c_next = sig_next * 1.002 - 0.001
        sigma, _dsig = _softplus_sigmoid((dn_prev + dn_next) * 0.5 + density_bias)
        alpha, e = _alpha_transmit(sigma, dp_next - dp_prev)
        w = alpha * trans
        trans = trans * (e + 1e-10)
        if STORE_WEIGHTS:
            tl.store(WEIGHTS + w_base + (s - 1), w.to(WEIGHTS.dtype.element_ty), mask=rmask)
        if COLOR:
            acc += w[:, None] * ((c_prev + c_next) * 0.5)
            total += w
            num += w * ((dp_prev + dp_next) * 0.5)
            d_min = tl.minimum(d_min, dp_next)
            d_max = tl.maximum(d_max, dp_next)
        c_prev = c_next
        dn_prev = dn_next
        dp_prev = dp_next

    if COLOR:  # depth and its autograd factor exactly as composite_rays' forward
        raw = tl.where(total != 0.0, num / tl.where(total != 0.0, total, 1.0), float("nan"))
        finite = (raw == raw) & (tl.abs(raw) < float("inf"))
        d1 = tl.where(raw == raw, raw, float("inf"))
        d2 = tl.maximum(d1, d_min)
        f_lo = tl.where(d1 > d_min, 1.0, tl.where(d1 == d_min, 0.5, 0.0))
        f_hi = tl.where(d2 < d_max, 1.0, tl.where(d2 == d_max, 0.5, 0.0))
        rgb = acc
        if WHITE_BACK:
            rgb = acc + 1.0 - total[:, None]
        out = ray[:, None] * CF + fo[None, :]
        fmask = rmask[:, None] & (fo < CF)[None, :]
        tl.store(RGB + out, rgb.to(RGB.dtype.element_ty), mask=fmask)
        tl.store(RGB_ACC + out, acc, mask=fmask)
        tl.store(DEPTH + ray, tl.minimum(d2, d_max).to(DEPTH.dtype.element_ty), mask=rmask)
        tl.store(STATS + ray * 3, total, mask=rmask)
        tl.store(STATS + ray * 3 + 1, raw, mask=rmask)
        tl.store(STATS + ray * 3 + 2, tl.where(finite, f_lo * f_hi, 0.0), mask=rmask)


@triton.jit
def _render_bwd_kernel(
    PLANES,  # as the forward
    ORIGINS,
    DIRS,
    DEPTHS,
    W1,
    B1,
    W2,
    B2,
    RGB_ACC,  # [B, R, CF] fp32 from the forward
    STATS,  # [B, R, 3] fp32 from the forward
    G_RGB,  # [B, R, CF] dL/drgb
    G_DEPTH,  # [B, R] dL/ddepth
    DPLANES,  # [B, 3, H, W, C] fp32, zero-initialised, channel-last (NEED_DPLANES only)
    PART,  # [programs, C*HID + HID + HID*(1+CF) + 1+CF] fp32 partial sums of dw1, db1, dw2, db2 (NEED_DW only)
    R,
    S,
    H,
    W,
    s_b,
    s_p,
    s_c,
    s_h,
    s_w,
    scale,
    density_bias,
    EG3D: tl.constexpr,
    WHITE_BACK: tl.constexpr,
    NEED_DPLANES: tl.constexpr,
    NEED_DW: tl.constexpr,
    C: tl.constexpr,
    HID: tl.constexpr,
    CF: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_F: tl.constexpr,
    DOT: tl.constexpr,  # tl.dot input_precision: "ieee" or "tf32x3" (see the module docstring)
):
    b = tl.program_id(1).to(tl.int64)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < R
    ray = b * R + r
    ch = tl.arange(0, BLOCK_C)
    hd = tl.arange(0, BLOCK_H)
    fo = tl.arange(0, BLOCK_F)
    tile_mask = rmask[:, None] & (ch < C)[None, :]
    fmask = rmask[:, None] & (fo < CF)[None, :]
    ch_off = (ch * s_c)[None, :]
    ox, oy, oz, dx, dy, dz = _load_ray(ORIGINS, DIRS, ray, rmask)
    w1, b1, w2d, b2d, w2c, b2c = _load_decoder(W1, B1, W2, B2, C, HID, CF, True, BLOCK_C, BLOCK_H, BLOCK_F)
    P0 = PLANES + b * s_b
    P1 = P0 + s_p
    P2 = P1 + s_p
    plane_size = H * W * C  # one plane's gradient block (int32: the public function checks it)
    DP0 = DPLANES + b * 3 * plane_size
    DP1 = DP0 + plane_size
    DP2 = DP1 + plane_size
    base = ray * S

    # ---- per-ray constants of composite_rays' backward (no weights gradient: the weights are not differentiable)
    ray_f = ray[:, None] * CF + fo[None, :]
    g_rgb = tl.load(G_RGB + ray_f, mask=fmask, other=0.0).to(tl.float32)  # [BLOCK_R, BLOCK_F]
    total = tl.load(STATS + ray * 3, mask=rmask, other=1.0)
    raw = tl.load(STATS + ray * 3 + 1, mask=rmask, other=0.0)
    factor = tl.load(STATS + ray * 3 + 2, mask=rmask, other=0.0)
    g_depth = tl.load(G_DEPTH + ray, mask=rmask, other=0.0).to(tl.float32) * factor
    live_d = factor != 0.0
    safe_total = tl.where(live_d, total, 1.0)
    coef_d = tl.where(live_d, g_depth / safe_total, 0.0)
    coef_1 = tl.where(live_d, -g_depth * (raw / safe_total), 0.0)
    grand = tl.sum(g_rgb * tl.load(RGB_ACC + ray_f, mask=fmask, other=0.0), axis=1)  # sum_k g_k w_k
    if WHITE_BACK:
        coef_1 += -tl.sum(g_rgb, axis=1)
        grand += -tl.sum(g_rgb, axis=1) * total

    # ---- sample 0, then one step per sample s = 1..S: interval (s-1, s), then the whole backward of sample s-1
    # (its gradient needs both intervals it touches). Step S has no sample S: its interval is masked to zero.
    dp_prev = tl.load(DEPTHS + base, mask=rmask, other=0.0).to(tl.float32)
    gx_p = (ox + dp_prev * dx) * scale
    gy_p = (oy + dp_prev * dy) * scale
    gz_p = (oz + dp_prev * dz) * scale
    f_p = _triplane(P0, P1, P2, gx_p, gy_p, gz_p, H, W, ch_off, tile_mask, s_h, s_w, EG3D)
    h_p, dsp_p, dn_prev, sig_p = _decode(f_p, w1, b1, w2d, b2d, w2c, b2c, True, DOT)
    trans = tl.full([BLOCK_R], 1.0, tl.float32)
    prefix = tl.zeros([BLOCK_R], dtype=tl.float32)
    half_dx = tl.zeros([BLOCK_R], dtype=tl.float32)  # interval s-2's density gradient / 2
    half_w = tl.zeros([BLOCK_R], dtype=tl.float32)  # interval s-2's weight / 2
    dw1 = tl.zeros([BLOCK_C, BLOCK_H], dtype=tl.float32)
    db1 = tl.zeros([BLOCK_H], dtype=tl.float32)
    dw2d = tl.zeros([BLOCK_H], dtype=tl.float32)
    dw2c = tl.zeros([BLOCK_H, BLOCK_F], dtype=tl.float32)
    db2d = tl.zeros([BLOCK_R], dtype=tl.float32)
    db2c = tl.zeros([BLOCK_F], dtype=tl.float32)
    for s in range(1, S + 1):
        live = s < S
        dp_next = tl.load(DEPTHS + base + s, mask=rmask & live, other=0.0).to(tl.float32)
        dp_next = tl.where(live, dp_next, dp_prev)  # step S: a zero-length interval
        gx_n = (ox + dp_next * dx) * scale
        gy_n = (oy + dp_next * dy) * scale
        gz_n = (oz + dp_next * dz) * scale
        f_n = _triplane(P0, P1, P2, gx_n, gy_n, gz_n, H, W, ch_off, tile_mask, s_h, s_w, EG3D)
        # reloaded every sample (cache hits), as in the forward, where keeping them live costs registers. Here ptxas
        # (paper, sm_80) shows 255 registers either way; kept live, the plane-gradient pass would need 65,664 bytes
        # of shared memory instead of 41,732 and the decoder-gradient pass 49,280 instead of 82,048. At 255
        # registers one block fills an SM's register file, so shared memory does not limit occupancy either way.
        w1, b1, w2d, b2d, w2c, b2c = _load_decoder(W1, B1, W2, B2, C, HID, CF, True, BLOCK_C, BLOCK_H, BLOCK_F)
        h_n, dsp_n, dn_next, sig_n = _decode(f_n, w1, b1, w2d, b2d, w2c, b2c, True, DOT)

        # interval s-1 (composite_rays' backward: dL/dw_j, then dL/dx_j with the suffix sum grand - prefix_j)
        sigma, dsig = _softplus_sigmoid((dn_prev + dn_next) * 0.5 + density_bias)
        delta = dp_next - dp_prev
        alpha, e = _alpha_transmit(sigma, delta)
        w = tl.where(live, alpha * trans, 0.0)
        c_mid = ((sig_p * 1.002 - 0.001) + (sig_n * 1.002 - 0.001)) * 0.5  # as the forward's midpoint
        g = tl.sum(g_rgb * c_mid, axis=1) + coef_d * ((dp_prev + dp_next) * 0.5) + coef_1
        prefix += g * w
        ratio = e / (e + 1e-10)
        d_x = tl.where(live & rmask, delta * (e * g * trans - ratio * (grand - prefix)) * dsig, 0.0)
        trans = trans * (e + 1e-10)

        # sample s-1: raw density and colour-logit gradients, then the decoder and the planes
        d_dens = half_dx + 0.5 * d_x  # [BLOCK_R]
        d_col = (half_w + 0.5 * w)[:, None] * g_rgb  # [BLOCK_R, BLOCK_F]
        d_logit = d_col * (1.002 * sig_p * (1.0 - sig_p))
        d_h = tl.dot(d_logit, tl.trans(w2c), input_precision=DOT) + d_dens[:, None] * w2d[None, :]
        d_pre = d_h * dsp_p  # [BLOCK_R, BLOCK_H]
        if NEED_DW:
            dw2c = tl.dot(tl.trans(h_p), d_logit, dw2c, input_precision=DOT)
            dw2d += tl.sum(h_p * d_dens[:, None], axis=0)
            db2c += tl.sum(d_logit, axis=0)
            db2d += d_dens
            dw1 = tl.dot(tl.trans(f_p), d_pre, dw1, input_precision=DOT)
            db1 += tl.sum(d_pre, axis=0)
        if NEED_DPLANES:
            d_f = tl.dot(d_pre, tl.trans(w1), input_precision=DOT) * (1.0 / 3.0)  # the mean over planes
            _plane_scatter(DP0, gx_p, gy_p, H, W, C, ch, tile_mask, d_f)
            _plane_scatter(DP1, gx_p, gz_p, H, W, C, ch, tile_mask, d_f)
            if EG3D:
                _plane_scatter(DP2, gz_p, gx_p, H, W, C, ch, tile_mask, d_f)
            else:
                _plane_scatter(DP2, gy_p, gz_p, H, W, C, ch, tile_mask, d_f)

        half_dx = 0.5 * d_x
        half_w = 0.5 * w
        gx_p = gx_n
        gy_p = gy_n
        gz_p = gz_n
        f_p = f_n
        h_p = h_n
        dsp_p = dsp_n
        sig_p = sig_n
        dn_prev = dn_next
        dp_prev = dp_next

    if NEED_DW:  # this program's partial sums, in the order of the parameters: w1, b1, w2, b2
        row = PART + (b * tl.num_programs(0) + tl.program_id(0)) * (C * HID + HID + HID * (1 + CF) + 1 + CF)
        hmask = hd < HID
        cfmask = fo < CF
        tl.store(row + ch[:, None] * HID + hd[None, :], dw1, mask=(ch < C)[:, None] & hmask[None, :])
        row += C * HID
        tl.store(row + hd, db1, mask=hmask)
        row += HID
        tl.store(row + hd * (1 + CF), dw2d, mask=hmask)
        tl.store(row + hd[:, None] * (1 + CF) + 1 + fo[None, :], dw2c, mask=hmask[:, None] & cfmask[None, :])
        row += HID * (1 + CF)
        tl.store(row, tl.sum(db2d, axis=0))
        tl.store(row + 1 + fo, db2c, mask=cfmask)
