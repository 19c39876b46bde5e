"""Fused upsample + pad + FIR filter + downsample (StyleGAN2 / EG3D's ``upfirdn2d``), drop-in for EG3D's plugin.

x ``[N, C, H, W]``, filter ``f`` ``[fh, fw]`` (or ``[t]``, separable: ``f[ky] * f[kx]``) -> ``[N, C, Ho, Wo]``
(see ``reference.upfirdn2d_ref``). Per axis, with w the filter as correlated (``w[k] = f[fk - 1 - k]``, a true
convolution, unless ``flip_filter``) and the zero-upsampled, padded input ``xp[s] = x[(s - p0) / up]`` where
``(s - p0) % up == 0`` (zero elsewhere and outside the image)::

    out[o] = gain * sum_k w[k] * xp[o * down + k]

Polyphase. Only the taps with ``(o * down + k - p0) % up == 0`` meet a real pixel: the kernel computes, per output
row and per output column, the first such tap ``k0`` and the input index ``i0`` it reads, then walks
``k = k0 + j * up``, ``i = i0 + j`` for ``j < cdiv(f, up)``. So an output costs ``cdiv(fh, up_y) * cdiv(fw, up_x)``
multiply-adds and loads, never the ``fh * fw`` of the zero-stuffed signal, and neither the upsampled nor the
padded image exists in memory (the reference materialises both, plus the filtered image before the
downsampling). The filter taps are gathered per row / column (a few hundred bytes: L1 hits).

Tiling. One program per (n*c, tile of BLOCK_H x BLOCK_W outputs), flattened into one grid axis (tile index
fastest). DRAM traffic is about one read of the input (plus the halo shared with neighbouring tiles) and one
write of the output. Accumulation is fp32, the result is stored in the input dtype; the filter is read as fp32.

Backward. The adjoint of upfirdn2d is upfirdn2d of the output gradient with up and down swapped, the filter
flipped and, per axis, the padding ``p0' = f - p0 - 1``, ``p1' = H * up - Ho * down + p0 - up + 1`` (derived in
docs/kernels.md). The backward calls the same custom op, so every order of gradient is again this kernel.
"""

import numbers

import torch
import triton
import triton.language as tl

from .reference import filter_size, parse_padding, parse_scaling, upfirdn2d_out_size, upfirdn2d_ref
from .utils import AotSpec, launch, next_power_of_2, use_triton

OP = "upfirdn2d"
_IMPL_ALIASES = {"cuda": "auto", "ref": "reference"}  # EG3D's impl names
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_CPU = torch.device("cpu")  # setup_filter's default device, as in EG3D

# What `from export3d.kernels.upfirdn2d import *` gives an EG3D shim (plus the three private helpers, imported by name)
__all__ = ["downsample2d", "filter2d", "setup_filter", "upfirdn2d", "upsample2d"]


# ----------------------------------------------------------------------------------------------- kernel
@triton.jit
def _phase(o, down, up, t0, q):
    """First tap ``k0`` and the input index ``i0`` it reads, of output positions ``o`` along one axis.

    ``t = o * down - p0 + M`` with ``M`` a multiple of ``up`` >= ``p0`` (so ``t >= 0`` and ``%`` / ``//`` are the
    mathematical ones), ``t0 = M - p0``, ``q = M // up``.
    """
    t = o * down + t0
    k0 = (up - t % up) % up
    return k0, (t + k0) // up - q


@triton.jit
def _upfirdn2d_kernel(
    X,  # [N*C, H, W] contiguous
    F,  # [fh, fw] or [fw] (SEPARABLE) contiguous fp32
    Y,  # [N*C, Ho, Wo] contiguous
    H,
    W,
    Ho,
    Wo,
    fh,
    fw,
    up_x,
    up_y,
    down_x,
    down_y,
    t0_x,
    t0_y,
    q_x,
    q_y,
    rev,  # 1: correlate with the flipped filter (a convolution, flip_filter=False); 0: as given
    gain,
    tiles_w,
    tiles_per_plane,
    SEPARABLE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid = tl.program_id(0)
    plane = (pid // tiles_per_plane).to(tl.int64)
    tile = pid % tiles_per_plane
    oy = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H] output rows
    ox = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)  # [BLOCK_W] output cols
    k0_y, i0_y = _phase(oy, down_y, up_y, t0_y, q_y)  # [BLOCK_H] each
    k0_x, i0_x = _phase(ox, down_x, up_x, t0_x, q_x)  # [BLOCK_W] each
    src = X + plane * H * W

    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for jy in range(0, (fh + up_y - 1) // up_y):
        ky = k0_y + jy * up_y  # [BLOCK_H] tap of each row
        iy = i0_y + jy  # [BLOCK_H] input row it reads
        tap_y = ky < fh
        y_ok = tap_y & (iy >= 0) & (iy < H)
        fy = tl.where(rev != 0, fh - 1 - ky, ky)  # filter row of the tap
        rows = src + tl.minimum(tl.maximum(iy, 0), H - 1).to(tl.int64)[:, None] * W  # [BLOCK_H, 1] pointers
        if SEPARABLE:  # width pass of this row window, then weighted by the row tap (the reference's x-then-y)
            part = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
            for jx in range(0, (fw + up_x - 1) // up_x):
                kx = k0_x + jx * up_x  # [BLOCK_W] tap of each column
                ix = i0_x + jx  # [BLOCK_W] input column it reads
                tap_x = kx < fw
                x_ok = tap_x & (ix >= 0) & (ix < W)
                fx = tl.where(rev != 0, fw - 1 - kx, kx)
                v = tl.load(rows + tl.minimum(tl.maximum(ix, 0), W - 1)[None, :],
                            mask=y_ok[:, None] & x_ok[None, :], other=0.0).to(tl.float32)  # fmt: skip
                part += tl.load(F + tl.where(tap_x, fx, 0), mask=tap_x, other=0.0)[None, :] * v
            acc += tl.load(F + tl.where(tap_y, fy, 0), mask=tap_y, other=0.0)[:, None] * part
        else:
            for jx in range(0, (fw + up_x - 1) // up_x):
                kx = k0_x + jx * up_x
                ix = i0_x + jx
                tap_x = kx < fw
                x_ok = tap_x & (ix >= 0) & (ix < W)
                fx = tl.where(rev != 0, fw - 1 - kx, kx)
                v = tl.load(rows + tl.minimum(tl.maximum(ix, 0), W - 1)[None, :],
                            mask=y_ok[:, None] & x_ok[None, :], other=0.0).to(tl.float32)  # fmt: skip
                w = tl.load(F + tl.where(tap_y, fy, 0)[:, None] * fw + tl.where(tap_x, fx, 0)[None, :],
                            mask=tap_y[:, None] & tap_x[None, :], other=0.0)  # fmt: skip
                acc += w * v

    out = Y + plane * Ho * Wo + oy.to(tl.int64)[:, None] * Wo + ox[None, :]
    tl.store(out, (acc * gain).to(Y.dtype.element_ty), mask=(oy < Ho)[:, None] & (ox < Wo)[None, :])


# ----------------------------------------------------------------------------------------------- launcher
_IDENTITY: dict[torch.device, torch.Tensor] = {}


def _identity(device: torch.device) -> torch.Tensor:
    """The ``f=None`` filter ``[[1]]`` (fp32), made once per device."""
    f = _IDENTITY.get(device)
    if f is None:
        f = _IDENTITY[device] = torch.ones((1, 1), dtype=torch.float32, device=device)
    return f


def _blocks(ho: int, wo: int) -> tuple[int, int, int]:
    """(BLOCK_H, BLOCK_W, num_warps) for an output plane ``[ho, wo]``: tiles of 8 x 16 up to 32 x 64 outputs
    (64 fp32 = 256 B per output row), one warp per 256 outputs (8 per thread)."""
    block_w = min(64, max(16, next_power_of_2(wo)))
    block_h = min(32, max(8, next_power_of_2(ho)))
    return block_h, block_w, max(1, block_h * block_w // 256)


def _axis(up: int, pad0: int) -> tuple[int, int]:
    """``(t0, q)`` of :func:`_phase` for one axis."""
    m = up * -(-max(pad0, 0) // up)
    return m - pad0, m // up


def _launch_fwd(x, f, up, down, padding, flip_filter, gain):
    N, C, H, W = x.shape
    (upx, upy), (downx, downy) = up, down
    px0, _, py0, _ = padding
    fw, fh = filter_size(f)
    Ho, Wo = upfirdn2d_out_size(H, W, fh, fw, up, down, padding)
    Ho, Wo = max(Ho, 0), max(Wo, 0)
    planes = N * C
    if H * W == 0:
        return x.new_zeros((N, C, Ho, Wo))
    y = x.new_empty((N, C, Ho, Wo))
    if planes * Ho * Wo == 0:
        return y
    x = x.contiguous()  # [N, C, H, W]; autograd may hand an expanded gradient
    f = f.to(torch.float32).contiguous()
    block_h, block_w, num_warps = _blocks(Ho, Wo)
    tiles_w = triton.cdiv(Wo, block_w)
    tiles_per_plane = tiles_w * triton.cdiv(Ho, block_h)
    if planes * tiles_per_plane >= 2**31:  # one flat grid axis, int32 program ids
        raise ValueError(f"{OP}: {planes} planes of {Ho}x{Wo} outputs are too many tiles")
    (t0x, qx), (t0y, qy) = _axis(upx, px0), _axis(upy, py0)
    launch(_upfirdn2d_kernel, (planes * tiles_per_plane,),
        x, f, y, H, W, Ho, Wo, fh, fw, upx, upy, downx, downy, t0x, t0y, qx, qy, int(not flip_filter), gain,
        tiles_w, tiles_per_plane, SEPARABLE=f.dim() == 1, BLOCK_H=block_h, BLOCK_W=block_w, num_warps=num_warps,
    )  # fmt: skip
    return y


def backward_padding(in_hw, out_hw, f, up, down, padding) -> list[int]:
    """Padding of the upfirdn2d that computes the input gradient: per axis ``p0' = f - p0 - 1`` and
    ``p1' = size * up - out_size * down + p0 - up + 1`` (with up and down swapped and the filter flipped)."""
    (H, W), (Ho, Wo) = in_hw, out_hw
    fw, fh = filter_size(f)
    (upx, upy), (downx, downy) = up, down
    px0, _, py0, _ = padding
    return [fw - px0 - 1, W * upx - Wo * downx + px0 - upx + 1, fh - py0 - 1, H * upy - Ho * downy + py0 - upy + 1]


# ----------------------------------------------------------------------------------------------- registration
@torch.library.custom_op("export3d::upfirdn2d_fwd", mutates_args=())
def _upfirdn2d_fwd(
    x: torch.Tensor, f: torch.Tensor, up: list[int], down: list[int], padding: list[int], flip_filter: bool,
    gain: float,
) -> torch.Tensor:  # fmt: skip
    return _launch_fwd(x, f, up, down, padding, flip_filter, gain)


@_upfirdn2d_fwd.register_fake
def _(x, f, up, down, padding, flip_filter, gain):
    N, C, H, W = x.shape
    fw, fh = filter_size(f)
    Ho, Wo = upfirdn2d_out_size(H, W, fh, fw, up, down, padding)
    return x.new_empty((N, C, max(Ho, 0), max(Wo, 0)))


def _setup_context(ctx, inputs, output):
    x, f, up, down, padding, flip_filter, gain = inputs
    ctx.in_hw, ctx.args = tuple(x.shape[2:]), (up, down, padding, flip_filter, gain)
    ctx.save_for_backward(f)


def _backward(ctx, dy):
    (f,) = ctx.saved_tensors
    up, down, padding, flip_filter, gain = ctx.args
    p = backward_padding(ctx.in_hw, tuple(dy.shape[2:]), f, up, down, padding)
    dx = torch.ops.export3d.upfirdn2d_fwd(dy, f, list(down), list(up), p, not flip_filter, gain)  # itself: any order
    return dx, None, None, None, None, None, None  # the filter is a constant (EG3D gives it no gradient either)


_upfirdn2d_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------- public functions
def _check(x, f, impl: str) -> str:
    """Validate ``x`` and ``f``; returns the project's impl name for EG3D's ``"cuda"`` / ``"ref"``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{OP}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{OP}: x must have 4 dimensions [N, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{OP}: x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if f is not None:
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"{OP}: f must be a torch.Tensor or None (see setup_filter), got {type(f).__name__}")
        if f.dim() not in (1, 2) or f.numel() == 0:
            raise ValueError(f"{OP}: f must be a non-empty [taps] or [fh, fw] filter, got shape {tuple(f.shape)}")
        if f.dtype not in _FLOATS:
            raise TypeError(f"{OP}: f must be a floating-point filter (float32, as setup_filter makes), got {f.dtype}")
        if f.device != x.device:
            raise ValueError(f"{OP}: f is on {f.device} but x is on {x.device}; put them on one device")
        if f.requires_grad:
            raise ValueError(f"{OP}: f must not require grad: the filter is a constant (as in EG3D)")
    return _IMPL_ALIASES.get(impl, impl)


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Upsample, pad, FIR-filter and downsample a batch of 2-D images (EG3D's ``upfirdn2d.upfirdn2d``).

    Args:
        x: ``[N, C, H, W]``, float32 / float16 / bfloat16 (float64 runs the reference), any strides.
        f: ``[fh, fw]`` (non-separable) or ``[taps]`` (separable: along x, then along y) float32 filter, or
            None (identity ``[[1]]``); see :func:`setup_filter`. It gets no gradient.
        up, down: int or ``[x, y]``: zeros inserted after each pixel / every ``down``-th output pixel kept.
        padding: int, ``[x, y]`` or ``[x0, x1, y0, y1]`` on the upsampled image; negative values crop.
        flip_filter: False = convolution (EG3D's default), True = correlation.
        gain: overall scale of the output.
        impl: ``"auto"`` (Triton on CUDA, the reference otherwise), ``"triton"``, ``"reference"``; EG3D's
            ``"cuda"`` and ``"ref"`` mean ``"auto"`` and ``"reference"``.

    Returns ``[N, C, (H * up_y + py0 + py1 - fh) // down_y + 1, (W * up_x + px0 + px1 - fw) // down_x + 1]`` in
    ``x.dtype``. Differentiable to any order (the gradient is again an upfirdn2d).
    """
    impl = _check(x, f, impl)
    up, down, padding = parse_scaling(up, "up"), parse_scaling(down, "down"), parse_padding(padding)
    fw, fh = filter_size(f)
    H, W = x.shape[2:]
    hp, wp = H * up[1] + padding[2] + padding[3], W * up[0] + padding[0] + padding[1]
    if wp < fw or hp < fh:
        raise ValueError(f"{OP}: the upsampled, padded x ({hp} x {wp}) is smaller than the filter f ({fh} x {fw})")
    if not isinstance(gain, numbers.Real):
        raise TypeError(f"{OP}: gain must be a real number, got {gain!r}")
    gain = float(gain)
    if x.dtype == torch.float64:  # EG3D takes float64 too: the reference runs it (there is no fp64 kernel)
        if impl == "triton":
            raise TypeError(f"{OP}: impl='triton' takes float32, float16 or bfloat16 x, got float64")
        use_triton(impl, op=OP)  # validates impl
    elif use_triton(impl, x, f, op=OP):
        f = _identity(x.device) if f is None else f
        return torch.ops.export3d.upfirdn2d_fwd(x, f, list(up), list(down), list(padding), bool(flip_filter), gain)
    return upfirdn2d_ref(x, f, up, down, padding, bool(flip_filter), gain)


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Filter with ``f`` keeping the size (EG3D's ``filter2d``): padding ``[x0 + fw // 2, x1 + (fw - 1) // 2, ...]``."""
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Upsample by ``up`` with ``f`` (EG3D's ``upsample2d``): output ``up`` times the input, gain ``* up_x * up_y``,
    padding ``[x0 + (fw + up_x - 1) // 2, x1 + (fw - up_x) // 2, ...]``."""
    upx, upy = parse_scaling(up, "up")
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Downsample by ``down`` with ``f`` (EG3D's ``downsample2d``): padding
    ``[x0 + (fw - down_x + 1) // 2, x1 + (fw - down_x) // 2, ...]``."""
    downx, downy = parse_scaling(down, "down")
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def setup_filter(f, device=_CPU, normalize=True, flip_filter=False, gain=1, separable=None):
    """A float32 FIR filter for :func:`upfirdn2d` (EG3D's ``setup_filter``), e.g. ``setup_filter([1, 3, 3, 1])``.

    ``f``: a list, array or tensor of shape ``[fh, fw]``, ``[taps]`` or ``[]`` (impulse), or None (identity).
    ``separable=None`` chooses as EG3D does: a 1-D filter stays separable only with 8 or more taps, a shorter one
    becomes the 2-D ``outer(f, f)`` (so ``[1, 3, 3, 1]`` gives a ``[4, 4]`` filter); ``separable=False`` forces the
    outer product, ``True`` requires a 1-D filter. Then ``normalize`` divides by the sum, ``flip_filter`` flips,
    and ``gain`` multiplies by ``gain ** (f.ndim / 2)`` (so the 2-D filter carries ``gain`` in all).
    Unlike EG3D, a float32 tensor passed in is never modified in place.
    """
    f = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if f.dim() not in (0, 1, 2) or f.numel() == 0:
        raise ValueError(f"setup_filter: f must be a non-empty scalar, [taps] or [fh, fw], got shape {tuple(f.shape)}")
    f = f.reshape(1) if f.dim() == 0 else f
    if separable is None:
        separable = f.dim() == 1 and f.numel() >= 8
    if f.dim() == 1 and not separable:
        f = torch.outer(f, f)
    if f.dim() != (1 if separable else 2):
        raise ValueError(f"setup_filter: separable=True needs a 1-D filter, got shape {tuple(f.shape)}")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.dim())))
    return (f * (gain ** (f.dim() / 2))).to(device=device)


def _parse_scaling(scaling):
    """EG3D's private helper (``conv2d_resample`` and ``filtered_lrelu`` import it): ``(sx, sy)``."""
    return parse_scaling(scaling, "up")


def _parse_padding(padding):
    """EG3D's private helper: ``(x0, x1, y0, y1)``."""
    return parse_padding(padding)


def _get_filter_size(f):
    """EG3D's private helper: ``(fw, fh)``."""
    return filter_size(f)


# ----------------------------------------------------------------------------------------------- AOT configurations
def aot_specs() -> list[AotSpec]:
    """Configurations compiled by ``python -m export3d.kernels.aot``: every tile ``_blocks`` can pick, with 2-D and
    separable filters, in fp32; the 32 x 64 tile of realistic planes also in bf16 and fp16. Up / down factors,
    padding, filter size and flip are runtime arguments: they do not change the binary."""
    configs = [("fp32", ho, wo, sep) for ho in (8, 16, 32) for wo in (16, 32, 64) for sep in (False, True)]
    configs += [(dtype, 256, 256, sep) for dtype in ("bf16", "fp16") for sep in (False, True)]
    specs = []
    for dtype, ho, wo, sep in configs:
        block_h, block_w, num_warps = _blocks(ho, wo)
        const = {"SEPARABLE": sep, "BLOCK_H": block_h, "BLOCK_W": block_w}
        sig = {"X": f"*{dtype}", "F": "*fp32", "Y": f"*{dtype}"}
        sig.update(dict.fromkeys(("H", "W", "Ho", "Wo", "fh", "fw", "up_x", "up_y", "down_x", "down_y", "t0_x",
                                  "t0_y", "q_x", "q_y", "rev"), "i32"))  # fmt: skip
        sig.update(gain="fp32", tiles_w="i32", tiles_per_plane="i32")
        sig.update(dict.fromkeys(const, "constexpr"))
        label = f"{dtype} {'separable' if sep else '2-D'} tile={block_h}x{block_w} warps={num_warps}"
        specs.append(AotSpec(_upfirdn2d_kernel, sig, const, num_warps, label))
    return specs
