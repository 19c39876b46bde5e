"""Fused pixel shuffle + separable low-pass FIR: one pass that reads the un-shuffled input directly.

x ``[B, C*f*f, H, W]`` -> ``[B, C, H*f, W*f]`` (see ``reference.pixel_shuffle_lowpass_ref``):

    shuffled[c, y, x] = x[c*f*f + (y % f) * f + (x % f), y // f, x // f]          (PyTorch's order)
    out[c, y, x] = sum_{ky, kx} taps[ky] * taps[kx] * shuffled[c, y + ky - K//2, x + kx - K//2]

with zero padding. The shuffled tensor never exists: both kernels work on a tile of positions of
the shuffled grid and turn a shuffled position into its un-shuffled address with two 1-D offset
vectors (one per tile row, one per tile column; ``_unshuffled_row/col_offsets``), so the permutation costs
a few integer ops per row / column and no memory.

Tiling. One program per (b*c, tile of BLOCK_H x BLOCK_W output pixels), flattened into one grid
axis (tile index fastest, so the programs that share halo rows run side by side and meet in L2).
For each of the K*K taps a program loads a shifted [BLOCK_H, BLOCK_W] window, so every element of
the program's (BLOCK_H + K - 1) x (BLOCK_W + K - 1) footprint is requested up to K*K times, but
only the first request leaves L1/L2: DRAM traffic is about one read of the input (plus the halo
rows/columns shared with neighbouring tiles, a (1 + (K-1)/BLOCK_H) (1 + (K-1)/BLOCK_W) factor, at
most 1.3 for K = 7 on the 32 x 64 tiles used at realistic sizes) and one write of the output, with
no intermediate tensor. The inner loop computes the width pass of one input row window and the
outer loop weights it by the height tap, i.e. the same "width then height" order as the reference.

Backward (to x only; the taps are a constant buffer). The adjoint of a correlation is the
correlation with the flipped taps, and the adjoint of the shuffle is the un-shuffle:

    dx[c*f*f + sy*f + sx, iy, ix] = sum_{ky, kx} taps[ky] taps[kx] dy[c, y - ky + K//2, x - kx + K//2],
    with (y, x) = (iy*f + sy, ix*f + sx),

so the backward kernel is the forward with the roles of the layouts swapped: it tiles the shuffled
grid, reads contiguous shifted windows of dy and writes each result straight to its un-shuffled
address in dx. Every dx element is written by exactly one program: no atomics, deterministic, and
nothing is saved for backward but the taps. Accumulation is fp32, results are stored in the input dtype.
"""

import torch
import triton
import triton.language as tl

from .reference import default_lowpass_taps, pixel_shuffle_lowpass_ref
from .utils import AotSpec, check_tensor, launch, next_power_of_2, use_triton

FACTORS = (2, 4)


# ----------------------------------------------------------------------------------------------- kernels
@triton.jit
def _unshuffled_row_offsets(y, H, W, FACTOR: tl.constexpr):
    """Offsets inside one ``[f*f, H, W]`` channel group of the shuffled rows y (in range), ``[BLOCK_H]`` int64.

    Shuffled (y, x) lives at ``row(y) + col(x)`` = ``((y % f) * f + x % f) * H * W + (y // f) * W + x // f``.
    """
    return ((y % FACTOR) * FACTOR * H + y // FACTOR).to(tl.int64) * W


@triton.jit
def _unshuffled_col_offsets(x, H, W, FACTOR: tl.constexpr):
    """The column part of the offset of the shuffled columns x (in range), ``[BLOCK_W]`` int64."""
    return (x % FACTOR).to(tl.int64) * H * W + x // FACTOR


@triton.jit
def _psl_fwd_kernel(
    X,  # [B*C, f*f, H, W] contiguous (the un-shuffled input)
    Y,  # [B*C, H*f, W*f] contiguous
    TAPS,  # [K] contiguous, any float dtype
    H,
    W,
    K,
    tiles_w,  # tiles along the output width
    tiles_per_plane,  # tiles_w * tiles along the output height
    FACTOR: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid = tl.program_id(0)
    bc = (pid // tiles_per_plane).to(tl.int64)
    tile = pid % tiles_per_plane
    Ho = H * FACTOR
    Wo = W * FACTOR
    oy = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H] output rows
    ox = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)  # [BLOCK_W] output cols
    pad = K // 2
    src = X + bc * Ho * Wo  # this (b, c)'s [f*f, H, W] channel group (f*f*H*W == Ho*Wo)

    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for ky in range(0, K):
        t_y = tl.load(TAPS + ky).to(tl.float32)
        sy = oy + (ky - pad)  # [BLOCK_H] shuffled source rows
        y_ok = (sy >= 0) & (sy < Ho)
        sy = tl.minimum(tl.maximum(sy, 0), Ho - 1)  # keep the (masked) addresses in range
        src_rows = src + _unshuffled_row_offsets(sy, H, W, FACTOR)[:, None]  # [BLOCK_H, 1] pointers
        row_part = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)  # width pass of this source row window
        for kx in range(0, K):
            t_x = tl.load(TAPS + kx).to(tl.float32)
            sx = ox + (kx - pad)  # [BLOCK_W] shuffled source cols
            x_ok = (sx >= 0) & (sx < Wo)
            sx = tl.minimum(tl.maximum(sx, 0), Wo - 1)
            col = _unshuffled_col_offsets(sx, H, W, FACTOR)
            v = tl.load(src_rows + col[None, :], mask=y_ok[:, None] & x_ok[None, :], other=0.0)
            row_part += t_x * v.to(tl.float32)
        acc += t_y * row_part

    out = Y + bc * Ho * Wo + oy.to(tl.int64)[:, None] * Wo + ox[None, :]
    tl.store(out, acc.to(Y.dtype.element_ty), mask=(oy < Ho)[:, None] & (ox < Wo)[None, :])


@triton.jit
def _psl_bwd_kernel(
    DY,  # [B*C, H*f, W*f] contiguous
    DX,  # [B*C, f*f, H, W] contiguous (the un-shuffled layout)
    TAPS,  # [K] contiguous, any float dtype
    H,
    W,
    K,
    tiles_w,
    tiles_per_plane,
    FACTOR: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid = tl.program_id(0)
    bc = (pid // tiles_per_plane).to(tl.int64)
    tile = pid % tiles_per_plane
    Ho = H * FACTOR
    Wo = W * FACTOR
    oy = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H] shuffled rows of the dx elements
    ox = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)  # [BLOCK_W] shuffled cols
    pad = K // 2
    dy_plane = DY + bc * Ho * Wo

    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for ky in range(0, K):
        t_y = tl.load(TAPS + ky).to(tl.float32)
        gy = oy - ky + pad  # [BLOCK_H] dy rows that read (oy, ox) through tap ky
        y_ok = (gy >= 0) & (gy < Ho)
        gy = tl.minimum(tl.maximum(gy, 0), Ho - 1)
        dy_rows = dy_plane + gy.to(tl.int64)[:, None] * Wo  # [BLOCK_H, 1] pointers
        row_part = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        for kx in range(0, K):
            t_x = tl.load(TAPS + kx).to(tl.float32)
            gx = ox - kx + pad  # [BLOCK_W]
            x_ok = (gx >= 0) & (gx < Wo)
            gx = tl.minimum(tl.maximum(gx, 0), Wo - 1)
            g = tl.load(dy_rows + gx[None, :], mask=y_ok[:, None] & x_ok[None, :], other=0.0)
            row_part += t_x * g.to(tl.float32)
        acc += t_y * row_part

    in_y = oy < Ho
    in_x = ox < Wo
    row = _unshuffled_row_offsets(tl.where(in_y, oy, 0), H, W, FACTOR)
    col = _unshuffled_col_offsets(tl.where(in_x, ox, 0), H, W, FACTOR)
    tl.store(DX + bc * Ho * Wo + row[:, None] + col[None, :], acc.to(DX.dtype.element_ty),
             mask=in_y[:, None] & in_x[None, :])  # fmt: skip


# ----------------------------------------------------------------------------------------------- launchers
_DEFAULT_TAPS: dict[torch.device, torch.Tensor] = {}


def _default_taps(device: torch.device) -> torch.Tensor:
    """The default 5-tap Gaussian (fp32), computed once per device and kept."""
    taps = _DEFAULT_TAPS.get(device)
    if taps is None:
        taps = _DEFAULT_TAPS[device] = default_lowpass_taps(dtype=torch.float32, device=device)
    return taps


def _blocks(ho: int, wo: int) -> tuple[int, int, int]:
    """(BLOCK_H, BLOCK_W, num_warps) for an output plane ``[ho, wo]``.

    Tiles of up to 32 x 64 pixels (64 fp32 = 256 B per row: full 128 B lines for both the output and,
    in the un-shuffled layout, the f sub-channel runs of a row); at least 8 x 16 so that small planes
    still fill a warp. One warp per 256 pixels (8 pixels per thread; ptxas needs ~72 registers for that,
    but 128 at 16 pixels per thread, which would halve the occupancy of this memory-bound kernel).
    """
    block_w = min(64, max(16, next_power_of_2(wo)))
    block_h = min(32, max(8, next_power_of_2(ho)))
    return block_h, block_w, max(1, block_h * block_w // 256)


def _launch(kernel, src, dst, taps, factor: int, H: int, W: int, planes: int) -> None:
    """Run ``kernel`` over ``planes`` (b, c) pairs of a ``[H*f, W*f]`` shuffled grid; nothing when empty."""
    if planes == 0 or H == 0 or W == 0:
        return
    block_h, block_w, num_warps = _blocks(H * factor, W * factor)
    tiles_w = triton.cdiv(W * factor, block_w)
    tiles_per_plane = tiles_w * triton.cdiv(H * factor, block_h)
    grid = (planes * tiles_per_plane,)
    if grid[0] >= 2**31:  # one flat grid axis, int32 program ids
        raise ValueError(f"pixel_shuffle_lowpass: {planes} planes of {H * factor}x{W * factor} are too many tiles")
    launch(kernel, grid,
        src, dst, taps, H, W, taps.numel(), tiles_w, tiles_per_plane,
        FACTOR=factor, BLOCK_H=block_h, BLOCK_W=block_w, num_warps=num_warps,
    )  # fmt: skip


def _launch_fwd(x, factor, taps):
    B, Cff, H, W = x.shape
    C = Cff // (factor * factor)
    x = x.contiguous()  # [B, C*f*f, H, W]
    y = torch.empty((B, C, H * factor, W * factor), dtype=x.dtype, device=x.device)
    taps = _default_taps(x.device) if taps is None else taps.contiguous()  # [K]
    _launch(_psl_fwd_kernel, x, y, taps, factor, H, W, B * C)
    return y


def _launch_bwd(dy, factor, taps):
    B, C, Ho, Wo = dy.shape
    H, W = Ho // factor, Wo // factor
    dy = dy.contiguous()  # autograd may hand us an expanded (stride-0) gradient
    dx = torch.empty((B, C * factor * factor, H, W), dtype=dy.dtype, device=dy.device)
    taps = _default_taps(dy.device) if taps is None else taps.contiguous()
    _launch(_psl_bwd_kernel, dy, dx, taps, factor, H, W, B * C)
    return dx


# ----------------------------------------------------------------------------------------------- registration
@torch.library.custom_op("export3d::pixel_shuffle_lowpass_fwd", mutates_args=())
def _pixel_shuffle_lowpass_fwd(x: torch.Tensor, factor: int, taps: torch.Tensor | None) -> torch.Tensor:
    return _launch_fwd(x, factor, taps)


@_pixel_shuffle_lowpass_fwd.register_fake
def _(x, factor, taps):
    B, Cff, H, W = x.shape
    return x.new_empty((B, Cff // (factor * factor), H * factor, W * factor))


@torch.library.custom_op("export3d::pixel_shuffle_lowpass_bwd", mutates_args=())
def _pixel_shuffle_lowpass_bwd(dy: torch.Tensor, factor: int, taps: torch.Tensor | None) -> torch.Tensor:
    return _launch_bwd(dy, factor, taps)


@_pixel_shuffle_lowpass_bwd.register_fake
def _(dy, factor, taps):
    B, C, Ho, Wo = dy.shape
    return dy.new_empty((B, C * factor * factor, Ho // factor, Wo // factor))


def _setup_context(ctx, inputs, output):
    _x, factor, taps = inputs
    ctx.factor = factor
    ctx.save_for_backward(taps)


def _backward(ctx, dy):
    (taps,) = ctx.saved_tensors
    dx = torch.ops.export3d.pixel_shuffle_lowpass_bwd(dy, ctx.factor, taps)
    return dx, None, None  # the taps are a fixed buffer: no gradient


_pixel_shuffle_lowpass_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------- public function
def pixel_shuffle_lowpass(
    x: torch.Tensor,
    factor: int = 2,
    taps: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """``F.pixel_shuffle(x, factor)`` followed by a same-size separable depthwise low-pass filter.

    Args:
        x: ``[B, C * factor**2, H, W]`` (any strides).
        factor: upsampling factor, 2 or 4.
        taps: 1-D filter ``[K]`` with K odd, applied along width then height as a correlation with
            zero padding; default a normalised 5-tap Gaussian with sigma 1 output pixel
            (``reference.default_lowpass_taps``). The taps are a constant: they get no gradient
            from the Triton path.
        impl: ``"auto"`` (Triton on CUDA, reference otherwise), ``"triton"`` or ``"reference"``.

    Returns ``[B, C, H * factor, W * factor]`` in ``x.dtype``. The Triton path never materialises the
    shuffled tensor, in the forward or the backward.
    """
    op = "pixel_shuffle_lowpass"
    check_tensor("x", x, op=op, ndim=4)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor not in FACTORS:
        raise ValueError(f"{op}: factor must be one of {FACTORS}, got {factor!r}")
    if x.shape[1] % (factor * factor) != 0:
        raise ValueError(
            f"{op}: x must have a channel count divisible by factor**2 = {factor * factor}, got shape {tuple(x.shape)}"
        )
    if taps is not None:
        check_tensor("taps", taps, op=op, ndim=1)
        if taps.numel() % 2 != 1:
            raise ValueError(f"{op}: taps must have an odd number of elements, got {taps.numel()}")
        if taps.device != x.device:
            raise ValueError(f"{op}: taps is on {taps.device} but x is on {x.device}; put them on one device")
    if use_triton(impl, x, taps, op=op):
        return torch.ops.export3d.pixel_shuffle_lowpass_fwd(x, factor, taps)
    return pixel_shuffle_lowpass_ref(x, factor, taps)


# ----------------------------------------------------------------------------------------------- AOT configurations
def aot_specs() -> list[AotSpec]:
    """Configurations compiled by ``python -m export3d.kernels.aot``: every tile ``_blocks`` can pick.

    All nine (BLOCK_H, BLOCK_W, num_warps) tiles in fp32 with f = 2; the 32 x 64 tile of realistic
    planes (>= 32 x 64 output pixels) also with f = 4 and in bf16 / fp16.
    """
    configs = [("fp32", 2, ho, wo) for ho in (8, 16, 32) for wo in (16, 32, 64)]  # ho/wo = the tile picked
    configs += [("fp32", 4, 256, 256), ("bf16", 2, 256, 256), ("bf16", 4, 128, 128), ("fp16", 2, 256, 256)]
    specs = []
    for dtype, factor, ho, wo in configs:
        block_h, block_w, num_warps = _blocks(ho, wo)
        label = f"{dtype} f={factor} tile={block_h}x{block_w} warps={num_warps}"
        const = {"FACTOR": factor, "BLOCK_H": block_h, "BLOCK_W": block_w}
        for kernel, ptrs in ((_psl_fwd_kernel, ("X", "Y")), (_psl_bwd_kernel, ("DY", "DX"))):
            sig = {n: f"*{dtype}" for n in ptrs}
            sig.update(TAPS="*fp32", H="i32", W="i32", K="i32", tiles_w="i32", tiles_per_plane="i32")
            sig.update(dict.fromkeys(const, "constexpr"))
            specs.append(AotSpec(kernel, sig, const, num_warps, label))
    return specs
