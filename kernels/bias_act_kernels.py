"""The ``@triton.jit`` kernels of ``bias_act`` (the op, its layouts and its autograd: ``bias_act.py``).

Tiles are ``[BLOCK_C, BLOCK_I]`` positions of one ``[C, inner]`` row of x (``BLOCK_C * BLOCK_I = 1024``); a program
walks ``rows_per_prog`` outer rows with the same tile, so its bias values are loaded once and db's partial sums stay
in registers. ``_act`` gives an activation with its first and second derivatives in fp32 (unused ones are compiled
away): exp-based forms that neither overflow nor cancel (tanh' as ``4 e / (1 + e)^2``, Kahan's expm1 for elu and
selu, composite_rays' log1p-accurate softplus and sigmoid), since the interpreter has no libdevice.
"""

import triton
import triton.language as tl

from .composite_rays import _softplus_sigmoid


@triton.jit
def _expm1(y):
    # exp(y) - 1 without the cancellation for small |y| (Kahan: (e - 1) * y / log(e)), as composite_rays does
    e = tl.exp(y)
    em1 = e - 1.0
    near = (tl.abs(em1) < 0.5) & (em1 != 0.0)
    return tl.where(near, em1 * (y / tl.log(tl.where(near, e, 0.5))), tl.where(em1 == 0.0, y, em1))


@triton.jit
def _act(z, alpha, ACT: tl.constexpr):
    """``(act(z), act'(z), act''(z))`` in fp32 (unused ones are compiled away)."""
    if ACT == 0:  # linear
        return z, tl.full(z.shape, 1.0, tl.float32), tl.zeros(z.shape, tl.float32)
    elif ACT == 1:  # relu
        return tl.maximum(z, 0.0), tl.where(z > 0, 1.0, 0.0), tl.zeros(z.shape, tl.float32)
    elif ACT == 2:  # lrelu
        return tl.where(z > 0, z, z * alpha), tl.where(z > 0, 1.0, alpha), tl.zeros(z.shape, tl.float32)
    elif ACT == 3:  # tanh = sign(z) (1 - e) / (1 + e), e = exp(-2|z|); tanh' = 4e / (1 + e)^2 (no 1 - t^2 cancel)
        e = tl.exp(-2.0 * tl.abs(z))
        t = -_expm1(-2.0 * tl.abs(z)) / (1.0 + e)
        t = tl.where(z < 0, -t, t)
        d1 = 4.0 * e / ((1.0 + e) * (1.0 + e))
        return t, d1, -2.0 * t * d1
    elif ACT == 4:  # sigmoid
        s = _softplus_sigmoid(z)[1]
        d1 = s * (1.0 - s)
        return s, d1, d1 * (1.0 - 2.0 * s)
    elif ACT == 5:  # elu (alpha 1, as EG3D)
        e = tl.exp(tl.minimum(z, 0.0))
        return tl.where(z > 0, z, _expm1(tl.minimum(z, 0.0))), tl.where(z > 0, 1.0, e), tl.where(z > 0, 0.0, e)
    elif ACT == 6:  # selu
        e = 1.7580993408473766 * tl.exp(tl.minimum(z, 0.0))  # scale 1.0507009873554805, scale * alpha 1.75809934...
        y = tl.where(z > 0, 1.0507009873554805 * z, 1.7580993408473766 * _expm1(tl.minimum(z, 0.0)))
        return y, tl.where(z > 0, 1.0507009873554805, e), tl.where(z > 0, 0.0, e)
    elif ACT == 7:  # softplus
        sp, s = _softplus_sigmoid(z)
        return sp, s, s * (1.0 - s)
    else:  # swish = z * sigmoid(z)
        s = _softplus_sigmoid(z)[1]
        s1 = s * (1.0 - s)
        return z * s, s + z * s1, s1 * (2.0 + z * (1.0 - 2.0 * s))


@triton.jit
def _tile_offsets(pid, C, inner, tiles_i, tiles_per_row, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr):
    """Channels ``[BLOCK_C]``, offsets ``[BLOCK_C, BLOCK_I]`` in one outer row, their mask, the outer chunk and the
    tile's inner-block index of program ``pid``."""
    tile = pid % tiles_per_row
    c = (tile // tiles_i) * BLOCK_C + tl.arange(0, BLOCK_C)
    i = (tile % tiles_i) * BLOCK_I + tl.arange(0, BLOCK_I)
    offs = c.to(tl.int64)[:, None] * inner + i[None, :]
    return c, offs, (c < C)[:, None] & (i < inner)[None, :], pid // tiles_per_row, tile % tiles_i


@triton.jit(do_not_specialize=["rows_per_prog"])
def _bias_act_fwd_kernel(
    X,  # [outer, C, inner] contiguous
    B,  # [C] or a dummy when has_bias == 0
    Y,  # [outer, C, inner]
    C,
    inner,
    tiles_i,
    tiles_per_row,
    n_rows,  # outer
    rows_per_prog,
    has_bias,
    alpha,
    gain,
    clamp,  # < 0: no clamp
    ACT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    c, offs, mask, chunk, _ = _tile_offsets(tl.program_id(0), C, inner, tiles_i, tiles_per_row, BLOCK_C, BLOCK_I)
    bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    if has_bias != 0:
        bias = tl.load(B + c, mask=c < C, other=0.0).to(tl.float32)
    row_end = tl.minimum(chunk * rows_per_prog + rows_per_prog, n_rows)
    for row in range(chunk * rows_per_prog, row_end):
        base = (C * inner).to(tl.int64) * row  # C * inner < 2**31: one row
        z = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32) + bias[:, None]
        y = _act(z, alpha, ACT)[0] * gain
        y = tl.where(clamp >= 0, tl.minimum(tl.maximum(y, -clamp), clamp), y)
        tl.store(Y + base + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["rows_per_prog"])
def _bias_act_bwd_kernel(
    G,  # [outer, C, inner]: dy (ORDER 1) or the gradient of dx (ORDER 2)
    DY,  # [outer, C, inner]: the first backward's dy (ORDER 2), else a dummy
    X,  # [outer, C, inner] (unless FROM_Y)
    B,  # [C] or a dummy when has_bias == 0 (read unless FROM_Y)
    Y,  # [outer, C, inner] (FROM_Y), else a dummy
    OUT,  # [outer, C, inner]: dx (ORDER 1) or d_x (ORDER 2)
    DB_PART,  # [chunks, tiles_i, C_pad] fp32 partial sums of OUT over rows and inner (need_db), else a dummy
    C,
    inner,
    tiles_i,
    tiles_per_row,
    n_rows,
    rows_per_prog,
    has_bias,
    need_db,
    alpha,
    gain,
    clamp,
    ACT: tl.constexpr,
    ORDER: tl.constexpr,
    FROM_Y: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    c, offs, mask, chunk, tile_i = _tile_offsets(tl.program_id(0), C, inner, tiles_i, tiles_per_row, BLOCK_C,
                                                 BLOCK_I)  # fmt: skip
    bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    if not FROM_Y and has_bias != 0:
        bias = tl.load(B + c, mask=c < C, other=0.0).to(tl.float32)
    db = tl.zeros([BLOCK_C, BLOCK_I], dtype=tl.float32)  # reduced over inner once, after the rows
    limit = tl.where(clamp < 0, float("inf"), clamp)  # the gradient passes where |u| <= clamp (torch.clamp's rule)
    row_end = tl.minimum(chunk * rows_per_prog + rows_per_prog, n_rows)
    for row in range(chunk * rows_per_prog, row_end):
        base = (C * inner).to(tl.int64) * row  # C * inner < 2**31: one row
        g = tl.load(G + base + offs, mask=mask, other=0.0).to(tl.float32)
        if FROM_Y:  # relu / lrelu / linear: act' from the sign of y * gain, the clamp mask from |y|
            y = tl.load(Y + base + offs, mask=mask, other=0.0).to(tl.float32)
            if ACT == 0:
                d = tl.full(y.shape, 1.0, tl.float32)
            elif ACT == 1:
                d = tl.where(y * gain > 0, 1.0, 0.0)
            else:
                d = tl.where(y * gain > 0, 1.0, alpha)
            keep = tl.abs(y) < limit
        else:
            z = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32) + bias[:, None]
            a0, a1, a2 = _act(z, alpha, ACT)
            u = a0 * gain
            keep = tl.abs(u) <= limit
            if ORDER == 1:
                d = a1
            else:
                d = a2
        out = g * gain * d
        if ORDER == 2:
            out = out * tl.load(DY + base + offs, mask=mask, other=0.0).to(tl.float32)
        out = tl.where(keep, out, 0.0)  # masked lanes loaded g = 0 (and a finite z): they are 0 already
        tl.store(OUT + base + offs, out.to(OUT.dtype.element_ty), mask=mask)
        if need_db != 0:
            db += out
    if need_db != 0:  # unmasked: the buffer's channels are padded to whole tiles (no mask kept live over the loop)
        c_pad = (tiles_per_row // tiles_i) * BLOCK_C
        tl.store(DB_PART + (chunk * tiles_i + tile_i).to(tl.int64) * c_pad + c, tl.sum(db, axis=1))
