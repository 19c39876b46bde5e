"""Fused tri-plane bilinear sampling: the mean over three planes of ``grid_sample`` at projected points.

planes ``[B, 3, C, Hp, Wp]``, coords ``[B, N, 3]`` -> ``[B, N, C]``, EG3D semantics (see
``reference.triplane_sample_ref``): coords are scaled by ``2 / box_warp``, projected to (u, v) per plane,
unnormalised with ``align_corners=False`` (``pix = ((g + 1) * size - 1) / 2``) and sampled bilinearly with
zero padding (a corner tap outside the plane contributes 0), then averaged over the three planes.

Forward: one program per (batch, block of ``BLOCK_N`` points). It reads its points' coords once, then for
each of the three planes (unrolled at compile time) gathers the four corner taps of all channels as
``[BLOCK_C, BLOCK_N]`` tiles (``C <= 64``: every channel of a point in one tile) and accumulates the
weighted sum in fp32 registers; the mean is stored once, in the planes' dtype. Nothing is written per plane.

Backward: the same grid. The gradient to the planes is a scatter-add: every tap adds ``w * dy / 3`` to its
texel with ``tl.atomic_add`` into an fp32 buffer laid out channel-last ``[B, 3, Hp, Wp, C]`` (the C atomics
of one tap hit consecutive addresses), which the launcher transposes and casts to the planes' dtype at the
end. Because many points hit the same texel and the atomics land in whatever order the hardware schedules
them, the summation order of the plane gradient - and therefore its last bits - is NOT deterministic on GPU
(run-to-run differences of a few ulp; under the Triton interpreter the order happens to be fixed). The
gradient to coords is computed only when coords require grad (constexpr ``NEED_DCOORDS``): per plane,
``d out / d pix`` from the four corner values (taps outside the plane count as 0, as in ``grid_sample``'s
backward), times ``size / 2`` (unnormalisation) and ``2 / box_warp`` (box scaling), summed over channels and
planes in registers - no atomics. Likewise the atomics are skipped when the planes need no gradient.
Nothing per point is saved for backward except coords (plus the planes, the input itself, only when coords
need a gradient, because ``d out / d coords`` reads plane values); the bilinear weights are recomputed.
"""

import torch
import triton
import triton.language as tl

from .reference import triplane_sample_ref
from .utils import AotSpec, check_same, check_tensor, launch, next_power_of_2, use_triton

AXES = ("xyz", "eg3d")
MAX_C = 64  # one tile holds every channel of BLOCK_N >= 32 points; beyond 64 it would need a channel loop
_TILE = 1024  # elements of one [BLOCK_C, BLOCK_N] tile (C = 64 takes 2048: at least 32 points per program)
_PER_THREAD = 8  # tile elements per thread in the forward (num_warps follows); the backward takes half
# Gather layout (see `_gather_planes`): copy the planes channel-last when a batch element has at least this
# many points per texel of one plane: the break-even below is about 1/6, rounded up towards in place.
_CHANNEL_LAST_MIN_POINTS_PER_TEXEL = 0.25

# Memory-access trade-off (forward gathers, and the backward's corner reads for dcoords):
# * The planes arrive as [B, 3, C, H, W]: the C values of one texel are H*W elements apart, so gathering
#   a point's corner costs one 32-byte sector per channel; the taps x0 and x0 + 1 of a row usually share
#   it, so a point costs about 2 * C sectors per plane.
# * Channel-last [B, 3, H, W, C] makes each corner tap one contiguous C-vector (C * 4 bytes in fp32):
#   4 * C * 4 / 32 = C / 2 sectors per point and plane (C / 4 in 16-bit), 4x (8x) fewer, as 16-byte vector
#   loads. The copy costs one read and one write of the planes, 2 * 3 * C * H * W * 4 / 32 = 0.75 * C * H * W
#   sectors per batch element, against a saving of 3 * 1.5 * C = 4.5 * C sectors per point: it pays from
#   about N = H * W / 6 points. Volume rendering samples N = rays * samples >> H * W (64^2 rays * 96 samples
#   against 128^2 texels: 24 points per texel), so the launcher copies there and gathers in place for small
#   point sets. The kernels take the planes' strides, so planes that already are channel-last in memory (a
#   channels_last conv output viewed as [B, 3, C, H, W]) and other strided views are read without any copy.
#   These are sector counts, not GPU measurements (this project's machines have no GPU).
# * One program per (batch, block of points) looping over the 3 planes, rather than a program per plane,
#   reads the coords once, keeps the 3-plane mean in registers and stores the output once, with no
#   cross-program reduction; C <= 64 fits in one tile, so there is no channel grid axis either and the
#   per-point bilinear weights are computed once per plane for all channels. B * ceil(N / BLOCK_N)
#   programs are plenty at rendering sizes. The price is register pressure (12 gathered tiles per program,
#   which the compiler hoists), kept without spills by the tile size and warp counts of `_config`.


# ----------------------------------------------------------------------------------------------- kernels
# Tiles are [BLOCK_C, BLOCK_N] (channels x points): with no contiguity to exploit (planes gathered in their
# [C, H, W] layout) Triton's default layout puts the 32 lanes of a warp on 32 different points, so each
# thread keeps the bilinear state of one point only (a [BLOCK_N, BLOCK_C] tile would give every thread 8
# points' state and ~1.5x the registers); with channel-last planes the C axis is contiguous and the lanes
# walk channels instead, VEC at a time.
@triton.jit
def _taps_1d(g, size):
    """Along one axis: the two tap indices (int32, clamped into the plane), the fraction and tap validity.

    g: ``[BLOCK_N]`` fp32 grid coordinate (-1 and 1 are the outer edges of the plane); size: H or W.
    """
    pix = (g + 1.0) * (size * 0.5) - 0.5  # align_corners=False, written like ATen's CPU kernel
    f0 = tl.floor(pix)
    frac = pix - f0
    ok0 = (f0 >= 0.0) & (f0 <= size - 1.0)
    ok1 = (f0 >= -1.0) & (f0 <= size - 2.0)
    # clamped so that even masked-off addresses stay inside the plane (and far-away points do not overflow)
    i0 = tl.minimum(tl.maximum(f0, 0.0), size - 1.0).to(tl.int32)
    i1 = tl.minimum(tl.maximum(f0 + 1.0, 0.0), size - 1.0).to(tl.int32)
    return i0, i1, frac, ok0, ok1


@triton.jit
def _tap_ptrs(P, off, ch_off, VEC: tl.constexpr):
    """``[BLOCK_C, BLOCK_N]`` pointers to every channel of one tap; VEC > 1 adds the launcher's alignment promise."""
    ptrs = P + off + ch_off
    if VEC > 1:  # each point's C-run starts VEC-element aligned (pointer divisibility counts bytes)
        ptrs = tl.multiple_of(ptrs, [VEC * (P.dtype.element_ty.primitive_bitwidth // 8), 1])
    return ptrs


@triton.jit
def _load_corners(P, x0, x1, y0, y1, okx0, okx1, oky0, oky1, ch_off, tile_mask, s_h, s_w, VEC: tl.constexpr):
    """The four corner taps of every point, all channels: ``[BLOCK_C, BLOCK_N]`` fp32 each, 0 outside.

    Offsets inside one plane are int32 (the launcher checks that a plane spans < 2^31 elements). VEC > 1
    (channel-last planes only) promises that P and every texel offset are multiples of VEC elements, so the
    C-contiguous taps become VEC-wide vector loads.
    """
    o00 = (y0 * s_h + x0 * s_w)[None, :]  # [1, BLOCK_N]
    o01 = (y0 * s_h + x1 * s_w)[None, :]
    o10 = (y1 * s_h + x0 * s_w)[None, :]
    o11 = (y1 * s_h + x1 * s_w)[None, :]
    v00 = tl.load(_tap_ptrs(P, o00, ch_off, VEC), mask=tile_mask & (oky0 & okx0)[None, :], other=0.0)
    v01 = tl.load(_tap_ptrs(P, o01, ch_off, VEC), mask=tile_mask & (oky0 & okx1)[None, :], other=0.0)
    v10 = tl.load(_tap_ptrs(P, o10, ch_off, VEC), mask=tile_mask & (oky1 & okx0)[None, :], other=0.0)
    v11 = tl.load(_tap_ptrs(P, o11, ch_off, VEC), mask=tile_mask & (oky1 & okx1)[None, :], other=0.0)
    return v00.to(tl.float32), v01.to(tl.float32), v10.to(tl.float32), v11.to(tl.float32)


@triton.jit
def _plane_fwd(P, gu, gv, H, W, ch_off, tile_mask, s_h, s_w, VEC: tl.constexpr):
    """Bilinear sample of one plane (pointer P at its origin) -> ``[BLOCK_C, BLOCK_N]`` fp32."""
    x0, x1, tx, okx0, okx1 = _taps_1d(gu, W)  # u indexes width
    y0, y1, ty, oky0, oky1 = _taps_1d(gv, H)  # v indexes height
    v00, v01, v10, v11 = _load_corners(P, x0, x1, y0, y1, okx0, okx1, oky0, oky1, ch_off, tile_mask, s_h, s_w, VEC)
    tx = tx[None, :]
    ty = ty[None, :]
    return (v00 * (1.0 - tx) + v01 * tx) * (1.0 - ty) + (v10 * (1.0 - tx) + v11 * tx) * ty


@triton.jit
def _triplane_sample_fwd_kernel(
    PLANES,  # [B, 3, C, H, W] with strides (s_b, s_p, s_c, s_h, s_w): [C, H, W]- or [H, W, C]-major
    COORDS,  # [B, N, 3] contiguous
    OUT,  # [B, N, C] contiguous
    N,
    H,
    W,
    s_b,
    s_p,
    s_c,
    s_h,
    s_w,
    scale,  # 2 / box_warp
    EG3D: tl.constexpr,  # plane 2 is (z, x) instead of (y, z)
    C: tl.constexpr,  # channels (a compile-time constant: <= 64, one value per model)
    VEC: tl.constexpr,  # alignment promise of channel-last planes, in elements (1 otherwise)
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    ch = tl.arange(0, BLOCK_C)  # [BLOCK_C]
    n_mask = n < N
    if C == BLOCK_C:  # no channel mask: keeps the mask constant along C, so that loads can vectorise
        tile_mask = tl.broadcast_to(n_mask[None, :], [BLOCK_C, BLOCK_N])
    else:
        tile_mask = (ch < C)[:, None] & n_mask[None, :]  # [BLOCK_C, BLOCK_N]
    ch_off = (ch * s_c)[:, None]  # [BLOCK_C, 1]

    row = b * N + n  # [BLOCK_N] int64
    gx = tl.load(COORDS + row * 3 + 0, mask=n_mask, other=0.0).to(tl.float32) * scale
    gy = tl.load(COORDS + row * 3 + 1, mask=n_mask, other=0.0).to(tl.float32) * scale
    gz = tl.load(COORDS + row * 3 + 2, mask=n_mask, other=0.0).to(tl.float32) * scale

    P0 = PLANES + b * s_b  # int64 offset: b is int64
    P1 = P0 + s_p  # one stride at a time: 2 * s_p could overflow int32
    P2 = P1 + s_p
    acc = _plane_fwd(P0, gx, gy, H, W, ch_off, tile_mask, s_h, s_w, VEC)  # plane 0: (x, y)
    acc += _plane_fwd(P1, gx, gz, H, W, ch_off, tile_mask, s_h, s_w, VEC)  # plane 1: (x, z)
    if EG3D:
        acc += _plane_fwd(P2, gz, gx, H, W, ch_off, tile_mask, s_h, s_w, VEC)  # plane 2: (z, x)
    else:
        acc += _plane_fwd(P2, gy, gz, H, W, ch_off, tile_mask, s_h, s_w, VEC)  # plane 2: (y, z)

    out = OUT + row[None, :] * C + ch[:, None]  # [BLOCK_C, BLOCK_N] pointers into [B, N, C]
    tl.store(out, (acc * (1.0 / 3.0)).to(OUT.dtype.element_ty), mask=tile_mask)


@triton.jit
def _plane_bwd(
    P, DP, gu, gv, H, W, C: tl.constexpr, ch, ch_off, tile_mask, s_h, s_w, g,
    NEED_DPLANES: tl.constexpr, NEED_DCOORDS: tl.constexpr, VEC: tl.constexpr,
):  # fmt: skip
    """One plane's backward. g: ``[BLOCK_C, BLOCK_N]`` fp32 upstream gradient already divided by 3.

    Scatter-adds ``w * g`` into DP (this plane's fp32 ``[H, W, C]`` gradient) and returns
    ``(d/d pix_u, d/d pix_v)`` summed over channels, ``[BLOCK_N]`` each (zeros without NEED_DCOORDS).
    """
    x0, x1, tx, okx0, okx1 = _taps_1d(gu, W)
    y0, y1, ty, oky0, oky1 = _taps_1d(gv, H)
    tx2 = tx[None, :]
    ty2 = ty[None, :]
    if NEED_DPLANES:
        r0 = (y0 * W)[None, :]
        r1 = (y1 * W)[None, :]
        ch2 = ch[:, None]
        gy0 = g * (1.0 - ty2)
        gy1 = g * ty2
        tl.atomic_add(DP + (r0 + x0[None, :]) * C + ch2, gy0 * (1.0 - tx2),
                      mask=tile_mask & (oky0 & okx0)[None, :], sem="relaxed")  # fmt: skip
        tl.atomic_add(DP + (r0 + x1[None, :]) * C + ch2, gy0 * tx2,
                      mask=tile_mask & (oky0 & okx1)[None, :], sem="relaxed")  # fmt: skip
        tl.atomic_add(DP + (r1 + x0[None, :]) * C + ch2, gy1 * (1.0 - tx2),
                      mask=tile_mask & (oky1 & okx0)[None, :], sem="relaxed")  # fmt: skip
        tl.atomic_add(DP + (r1 + x1[None, :]) * C + ch2, gy1 * tx2,
                      mask=tile_mask & (oky1 & okx1)[None, :], sem="relaxed")  # fmt: skip
    du = tl.zeros_like(tx)
    dv = tl.zeros_like(ty)
    if NEED_DCOORDS:
        v00, v01, v10, v11 = _load_corners(P, x0, x1, y0, y1, okx0, okx1, oky0, oky1, ch_off, tile_mask, s_h, s_w,
                                           VEC)  # fmt: skip
        # d value / d pix_x = (1 - ty) (v01 - v00) + ty (v11 - v10); likewise along y. Taps outside are 0.
        du = tl.sum(g * ((v01 - v00) * (1.0 - ty2) + (v11 - v10) * ty2), axis=0) * (W * 0.5)
        dv = tl.sum(g * ((v10 - v00) * (1.0 - tx2) + (v11 - v01) * tx2), axis=0) * (H * 0.5)
    return du, dv


@triton.jit
def _triplane_sample_bwd_kernel(
    DOUT,  # [B, N, C] contiguous
    COORDS,  # [B, N, 3] contiguous
    PLANES,  # [B, 3, C, H, W] strided like the forward's; read only with NEED_DCOORDS (else a dummy)
    DPLANES,  # [B, 3, H, W, C] fp32 contiguous, zero-initialised; written only with NEED_DPLANES
    DCOORDS,  # [B, N, 3] contiguous; written only with NEED_DCOORDS
    N,
    H,
    W,
    s_b,
    s_p,
    s_c,
    s_h,
    s_w,
    scale,  # 2 / box_warp
    EG3D: tl.constexpr,
    NEED_DPLANES: tl.constexpr,
    NEED_DCOORDS: tl.constexpr,
    C: tl.constexpr,  # channels (a compile-time constant: <= 64, one value per model)
    VEC: tl.constexpr,  # alignment promise of channel-last planes, in elements (1 otherwise)
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    ch = tl.arange(0, BLOCK_C)  # [BLOCK_C]
    n_mask = n < N
    if C == BLOCK_C:  # no channel mask: keeps the mask constant along C, so that loads can vectorise
        tile_mask = tl.broadcast_to(n_mask[None, :], [BLOCK_C, BLOCK_N])
    else:
        tile_mask = (ch < C)[:, None] & n_mask[None, :]  # [BLOCK_C, BLOCK_N]
    ch_off = (ch * s_c)[:, None]  # [BLOCK_C, 1]

    row = b * N + n  # [BLOCK_N] int64
    gx = tl.load(COORDS + row * 3 + 0, mask=n_mask, other=0.0).to(tl.float32) * scale
    gy = tl.load(COORDS + row * 3 + 1, mask=n_mask, other=0.0).to(tl.float32) * scale
    gz = tl.load(COORDS + row * 3 + 2, mask=n_mask, other=0.0).to(tl.float32) * scale
    g = tl.load(DOUT + row[None, :] * C + ch[:, None], mask=tile_mask, other=0.0).to(tl.float32)
    g = g * (1.0 / 3.0)  # the mean over planes

    P0 = PLANES + b * s_b  # int64 offsets: b is int64, strides added one at a time
    P1 = P0 + s_p
    P2 = P1 + s_p
    plane_size = H * W * C  # one plane's gradient block (int32: the public function checks it)
    DP0 = DPLANES + b * 3 * plane_size
    DP1 = DP0 + plane_size
    DP2 = DP1 + plane_size
    du0, dv0 = _plane_bwd(P0, DP0, gx, gy, H, W, C, ch, ch_off, tile_mask, s_h, s_w, g,
                          NEED_DPLANES, NEED_DCOORDS, VEC)  # fmt: skip
    du1, dv1 = _plane_bwd(P1, DP1, gx, gz, H, W, C, ch, ch_off, tile_mask, s_h, s_w, g,
                          NEED_DPLANES, NEED_DCOORDS, VEC)  # fmt: skip
    du2, dv2 = _plane_bwd(P2, DP2, gz if EG3D else gy, gx if EG3D else gz, H, W, C, ch,
                          ch_off, tile_mask, s_h, s_w, g, NEED_DPLANES, NEED_DCOORDS, VEC)  # fmt: skip
    if NEED_DCOORDS:
        # planes 0, 1, 2 take (u, v) = (x, y), (x, z) and (y, z) ["xyz"] or (z, x) ["eg3d"]
        if EG3D:
            dx = du0 + du1 + dv2
            dy = dv0
            dz = dv1 + du2
        else:
            dx = du0 + du1
            dy = dv0 + du2
            dz = dv1 + dv2
        out_ty = DCOORDS.dtype.element_ty
        tl.store(DCOORDS + row * 3 + 0, (dx * scale).to(out_ty), mask=n_mask)
        tl.store(DCOORDS + row * 3 + 1, (dy * scale).to(out_ty), mask=n_mask)
        tl.store(DCOORDS + row * 3 + 2, (dz * scale).to(out_ty), mask=n_mask)


# ----------------------------------------------------------------------------------------------- launchers
def _config(C: int, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_C, num_warps). The backward keeps the tap values, the upstream gradient and the
    atomics' addresses live at once, so it spreads the same tile over twice the warps (ptxas: no spills)."""
    block_c = next_power_of_2(C)
    block_n = max(32, min(128, _TILE // block_c))
    per_thread = _PER_THREAD // 2 if backward else _PER_THREAD
    return block_n, block_c, max(4, min(16, block_n * block_c // (32 * per_thread)))


def _gather_planes(planes: torch.Tensor, n_points: int) -> torch.Tensor:
    """The ``[B, 3, C, H, W]`` tensor the kernels gather from: ``planes`` itself or a channel-last copy.

    Channel-last planes (C stride 1) and small point sets are read in place; otherwise the planes are
    copied to ``[B, 3, H, W, C]`` memory (returned as a permuted view), see the trade-off note above.
    A view whose single plane spans 2^31 elements or more (int32 in-plane offsets) is always copied. Planes
    expanded over the batch (stride 0, e.g. one tri-plane rendered from many cameras) are copied once and
    expanded again, never once per batch element.
    """
    B, _, C, H, W = planes.shape
    span = sum((size - 1) * stride for size, stride in zip(planes.shape[2:], planes.stride()[2:], strict=True))
    in_place = C == 1 or planes.stride(2) == 1 or n_points < _CHANNEL_LAST_MIN_POINTS_PER_TEXEL * H * W
    if in_place and span < 2**31:
        return planes
    if B > 1 and planes.stride(0) == 0:
        return _channel_last_copy(planes[:1]).expand(planes.shape)
    return _channel_last_copy(planes)


def _channel_last_copy(planes: torch.Tensor) -> torch.Tensor:
    """``[B, 3, C, H, W]`` view of a fresh ``[B, 3, H, W, C]`` copy."""
    return planes.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def _vec(src: torch.Tensor) -> int:
    """How many channels of a texel one vector load may take (the kernels' VEC): > 1 only for channel-last."""
    if src.shape[2] == 1 or src.stride(2) != 1:
        return 1
    vec = 16 // src.element_size()  # 16-byte vectors at most
    others = [st for i, st in enumerate(src.stride()) if i != 2]
    while vec > 1 and (any(st % vec for st in others) or src.data_ptr() % (vec * src.element_size())):
        vec //= 2
    return vec


def _launch_fwd(planes, coords, axes, box_warp):
    B, _, C, H, W = planes.shape
    N = coords.shape[1]
    out = planes.new_empty((B, N, C))  # [B, N, C]
    if B * N * C == 0:
        return out
    coords = coords.contiguous()
    src = _gather_planes(planes, N)
    block_n, block_c, num_warps = _config(C)
    launch(_triplane_sample_fwd_kernel, (triton.cdiv(N, block_n), B),
        src, coords, out, N, H, W, *src.stride(), 2.0 / box_warp,
        EG3D=axes == "eg3d", C=C, VEC=_vec(src), BLOCK_N=block_n, BLOCK_C=block_c, num_warps=num_warps,
    )  # fmt: skip
    return out


def _launch_bwd(dout, coords, planes, planes_shape, planes_dtype, axes, box_warp, need_dplanes):
    B, _, C, H, W = planes_shape
    N = coords.shape[1]
    need_dcoords = planes is not None
    # fp32 scatter-add target, channel-last so that the C atomics of one tap are contiguous
    acc = torch.zeros((B, 3, H, W, C) if need_dplanes else (0,), dtype=torch.float32, device=coords.device)
    dcoords = torch.zeros_like(coords, memory_format=torch.contiguous_format) if need_dcoords else coords.new_empty(0)
    if B * N * C > 0 and (need_dplanes or need_dcoords):
        # autograd hands us expanded (stride-0) or otherwise strided gradients: the kernel wants rows
        dout, coords = dout.contiguous(), coords.contiguous()
        src = _gather_planes(planes, N) if need_dcoords else coords  # a dummy pointer when unused
        strides = src.stride() if need_dcoords else (0,) * 5
        block_n, block_c, num_warps = _config(C, backward=True)
        launch(_triplane_sample_bwd_kernel, (triton.cdiv(N, block_n), B),
            dout, coords, src, acc if need_dplanes else coords, dcoords, N, H, W, *strides, 2.0 / box_warp,
            EG3D=axes == "eg3d", NEED_DPLANES=need_dplanes, NEED_DCOORDS=need_dcoords,
            C=C, VEC=_vec(src) if need_dcoords else 1, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=num_warps,
        )  # fmt: skip
    if need_dplanes:
        dplanes = torch.empty(planes_shape, dtype=planes_dtype, device=coords.device)
        dplanes.copy_(acc.permute(0, 1, 4, 2, 3))  # back to [B, 3, C, H, W], cast to the planes' dtype
    else:
        dplanes = torch.empty(0, dtype=planes_dtype, device=coords.device)
    return dplanes, dcoords


# ----------------------------------------------------------------------------------------------- registration
@torch.library.custom_op("export3d::triplane_sample_fwd", mutates_args=())
def _triplane_sample_fwd(planes: torch.Tensor, coords: torch.Tensor, axes: str, box_warp: float) -> torch.Tensor:
    return _launch_fwd(planes, coords, axes, box_warp)


@_triplane_sample_fwd.register_fake
def _(planes, coords, axes, box_warp):
    return planes.new_empty((planes.shape[0], coords.shape[1], planes.shape[2]))


@torch.library.custom_op("export3d::triplane_sample_bwd", mutates_args=())
def _triplane_sample_bwd(
    dout: torch.Tensor,
    coords: torch.Tensor,
    planes: torch.Tensor | None,
    planes_shape: list[int],
    planes_dtype: torch.dtype,
    axes: str,
    box_warp: float,
    need_dplanes: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(dplanes, dcoords)``; dcoords is computed when ``planes`` is given, dplanes when asked."""
    return _launch_bwd(dout, coords, planes, planes_shape, planes_dtype, axes, box_warp, need_dplanes)


@_triplane_sample_bwd.register_fake
def _(dout, coords, planes, planes_shape, planes_dtype, axes, box_warp, need_dplanes):
    dplanes = coords.new_empty(planes_shape if need_dplanes else (0,), dtype=planes_dtype)
    dcoords = coords.new_empty(coords.shape) if planes is not None else coords.new_empty(0)
    return dplanes, dcoords


def _setup_context(ctx, inputs, output):
    planes, coords, axes, box_warp = inputs
    need_dplanes, need_dcoords = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    # Only coords per point; the planes (an input, no new memory) only when d out / d coords needs their values.
    ctx.save_for_backward(coords, planes if need_dcoords else None)
    ctx.planes_shape, ctx.planes_dtype = list(planes.shape), planes.dtype
    ctx.axes, ctx.box_warp, ctx.need_dplanes = axes, box_warp, need_dplanes


def _backward(ctx, dout):
    coords, planes = ctx.saved_tensors
    dplanes, dcoords = torch.ops.export3d.triplane_sample_bwd(
        dout, coords, planes, ctx.planes_shape, ctx.planes_dtype, ctx.axes, ctx.box_warp, ctx.need_dplanes
    )
    return dplanes if ctx.need_dplanes else None, dcoords if planes is not None else None, None, None


_triplane_sample_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------- public function
def triplane_sample(
    planes: torch.Tensor,
    coords: torch.Tensor,
    axes: str = "xyz",
    box_warp: float = 1.0,
    impl: str = "auto",
) -> torch.Tensor:
    """Sample a tri-plane at world points: the mean over the planes of bilinear ``grid_sample``.

    Args:
        planes: ``[B, 3, C, Hp, Wp]`` features (any strides); u indexes width and v height, like ``grid_sample``.
        coords: ``[B, N, 3]`` world points; the box ``[-box_warp/2, box_warp/2]^3`` covers the planes.
        axes: ``"xyz"`` projects to (x, y), (x, z), (y, z); ``"eg3d"`` to (x, y), (x, z), (z, x),
            EG3D's released convention, so EG3D planes work unchanged.
        box_warp: side length of the box the planes span.
        impl: ``"auto"`` (Triton on CUDA, reference otherwise), ``"triton"`` or ``"reference"``.

    Returns ``[B, N, C]`` in ``planes.dtype``. Points outside the box get zeros, as ``grid_sample``
    with ``align_corners=False`` and zero padding gives. The Triton path takes ``C <= 64``; its plane
    gradient is summed with atomics, so its last bits are not deterministic on GPU.
    """
    op = "triplane_sample"
    check_tensor("planes", planes, op=op, ndim=5)
    B = planes.shape[0]
    if planes.shape[1] != 3:
        raise ValueError(f"{op}: planes must have shape [B, 3, C, H, W], got {tuple(planes.shape)}")
    check_tensor("coords", coords, op=op, shape=(B, None, 3))
    check_same(op, "planes", planes, coords=coords)
    if axes not in AXES:
        raise ValueError(f"{op}: axes must be one of {AXES}, got {axes!r}")
    if not box_warp > 0:
        raise ValueError(f"{op}: box_warp must be > 0, got {box_warp}")
    if use_triton(impl, planes, coords, op=op):
        _, _, C, H, W = planes.shape
        if C > MAX_C or C * H * W >= 2**31:  # one tile per point; int32 offsets inside a plane
            if impl == "triton":
                raise ValueError(
                    f"{op}: impl='triton' takes C <= {MAX_C} and C*H*W < 2^31, got planes of shape "
                    f"{tuple(planes.shape)}; use impl='reference'"
                )
        else:
            return torch.ops.export3d.triplane_sample_fwd(planes, coords, axes, float(box_warp))
    return triplane_sample_ref(planes, coords, axes, box_warp)


def prepare_planes(planes: torch.Tensor, n_points: int, impl: str = "auto") -> torch.Tensor:
    """``planes`` in the memory layout ``triplane_sample`` would gather from at ``n_points`` points per batch
    element (a differentiable channel-last copy, or ``planes`` itself), for callers that sample one tri-plane
    several times (a renderer's coarse and fine passes): the copy is then made once instead of per call.
    Returns ``planes`` unchanged when the call would not run the Triton path.
    """
    check_tensor("planes", planes, op="prepare_planes", ndim=5)
    _, _, C, H, W = planes.shape
    if use_triton(impl, planes, op="prepare_planes") and C <= MAX_C and C * H * W < 2**31:
        return _gather_planes(planes, n_points)
    return planes


# ----------------------------------------------------------------------------------------------- AOT configurations
def aot_specs() -> list[AotSpec]:
    """Configurations compiled by ``python -m export3d.kernels.aot``: every block size the launcher picks.

    "CHW" gathers the planes in their own layout (runtime ``s_c``, VEC = 1); "HWC" is the channel-last copy
    or input (``s_c`` = 1, which Triton specialises at run time, and 16-byte vectors).
    """
    specs = []
    common = {"N": "i32", "H": "i32", "W": "i32", "s_b": "i32", "s_p": "i32", "s_c": "i32",
              "s_h": "i32", "s_w": "i32", "scale": "fp32"}  # fmt: skip
    configs = [  # dtype, C, eg3d, channel-last, backward flags (need_dplanes, need_dcoords)
        ("fp32", 1, False, False, (True, True)),
        ("fp32", 3, True, False, (True, True)),
        ("fp32", 3, False, True, (True, True)),
        ("fp32", 8, True, False, (True, True)),
        ("fp32", 16, False, True, (True, True)),
        ("fp32", 17, False, False, (True, True)),
        ("fp32", 32, False, True, (True, True)),
        ("fp32", 32, True, False, (True, True)),
        ("fp32", 32, True, True, (True, False)),
        ("fp32", 64, False, True, (True, True)),
        ("fp32", 64, True, False, (True, True)),
        ("fp32", 64, True, True, (False, True)),
        ("bf16", 32, False, True, (True, True)),
        ("bf16", 32, False, False, (True, True)),
        ("bf16", 64, True, True, (True, True)),
        ("fp16", 32, True, True, (True, True)),
    ]
    for dtype, C, eg3d, channel_last, (need_dp, need_dc) in configs:
        block_n, block_c, fwd_warps = _config(C)
        bwd_warps = _config(C, backward=True)[2]
        vec = 1
        if channel_last and C > 1:
            vec = 16 // (4 if dtype == "fp32" else 2)
            while C % vec:
                vec //= 2
        layout = f"HWC VEC={vec}" if channel_last else "CHW"
        label = f"{dtype} C={C} BLOCK_N={block_n} {'eg3d' if eg3d else 'xyz'} {layout}"
        stride_const = {"s_c": 1} if channel_last else {}
        const = {"EG3D": eg3d, "C": C, "VEC": vec, "BLOCK_N": block_n, "BLOCK_C": block_c, **stride_const}
        fwd_sig = {"PLANES": f"*{dtype}", "COORDS": f"*{dtype}", "OUT": f"*{dtype}", **common}
        fwd_sig.update(dict.fromkeys(const, "constexpr"))
        specs.append(AotSpec(_triplane_sample_fwd_kernel, fwd_sig, const, fwd_warps, label))
        bwd_const = {**const, "NEED_DPLANES": need_dp, "NEED_DCOORDS": need_dc}
        bwd_sig = {"DOUT": f"*{dtype}", "COORDS": f"*{dtype}", "PLANES": f"*{dtype}", "DPLANES": "*fp32",
                   "DCOORDS": f"*{dtype}", **common}  # fmt: skip
        bwd_sig.update(dict.fromkeys(bwd_const, "constexpr"))
        bwd_label = f"{label} dplanes={need_dp} dcoords={need_dc}"
        specs.append(AotSpec(_triplane_sample_bwd_kernel, bwd_sig, bwd_const, bwd_warps, bwd_label))
    return specs
