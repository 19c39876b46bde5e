"""Fused expression-adaptive LayerNorm (EAdaLN).

    y = LN(x) * (1 + scale[:, None]) + shift[:, None],   LN over the last dim, optional affine inside LN

x ``[B, L, D]``, scale / shift ``[B, D]``, weight / bias ``[D]``. One program normalises one row in
the forward. The backward walks a chunk of rows of one batch element per program, writes dx for
each row and accumulates the reductions (dscale / dshift over L, dweight / dbias over all rows)
in fp32 registers, which it stores to a partial-sum buffer ``[B, chunks, D]`` summed afterwards
by PyTorch: no atomics, no spin locks, deterministic.
"""

import torch
import triton
import triton.language as tl

from .reference import eadaln_ref
from .utils import AotSpec, check_same, check_tensor, launch, next_power_of_2, num_programs_target, use_triton

MAX_D = 8192  # largest row the single-tile kernels take without spilling (see `python -m export3d.kernels.aot`)


# ----------------------------------------------------------------------------------------------- kernels
@triton.jit
def _eadaln_fwd_kernel(
    X,  # [B*L, D] contiguous
    Y,  # [B*L, D]
    SCALE,  # [B, D] with row stride s_scale (e.g. one half of a [B, 2D] projection: read in place)
    SHIFT,  # [B, D] with row stride s_shift
    W,  # [D] or a dummy when HAS_WEIGHT is False
    BIAS,  # [D] or a dummy when HAS_BIAS is False
    MEAN,  # [B*L] fp32
    RSTD,  # [B*L] fp32
    L,
    D,
    s_scale,
    s_shift,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    batch = row // L
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D

    x = tl.load(X + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / D
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / D
    rstd = tl.rsqrt(var + eps)
    n = xc * rstd
    if HAS_WEIGHT:
        n = n * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        n = n + tl.load(BIAS + cols, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(SCALE + batch * s_scale + cols, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(SHIFT + batch * s_shift + cols, mask=mask, other=0.0).to(tl.float32)
    y = n * (1.0 + s) + t

    tl.store(Y + row * D + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit(do_not_specialize=["rows_per_prog"])  # one binary whatever the GPU's size makes of the row split
def _eadaln_bwd_kernel(
    X,  # [B*L, D]
    DY,  # [B*L, D]
    SCALE,  # [B, D] with row stride s_scale
    W,  # [D] or dummy
    MEAN,  # [B*L] fp32
    RSTD,  # [B*L] fp32
    DX,  # [B*L, D]
    SUM_DY_P,  # [B, chunks, D] fp32: sum of dy over this program's rows
    SUM_DY_XHAT_P,  # [B, chunks, D] fp32: sum of dy * xhat over this program's rows
    L,
    D,
    s_scale,
    rows_per_prog,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Every parameter gradient is a per-batch linear function of the two sums accumulated here
    # (the launcher finishes them), so only two accumulators live in registers:
    #   dshift = sum dy,  dscale = w * sum(dy xhat) + b * sum dy,
    #   dweight = sum_b (1 + s_b) sum(dy xhat),  dbias = sum_b (1 + s_b) sum dy.
    batch = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D

    g = 1.0 + tl.load(SCALE + batch * s_scale + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_WEIGHT:
        g = g * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)  # d y / d xhat
    acc_dy = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_dy_xhat = tl.zeros([BLOCK_D], dtype=tl.float32)

    l_start = chunk * rows_per_prog
    l_end = tl.minimum(l_start + rows_per_prog, L)
    for tok in range(l_start, l_end):
        row = batch * L + tok
        x = tl.load(X + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        acc_dy += dy
        acc_dy_xhat += dy * xhat
        dxhat = dy * g
        c1 = tl.sum(dxhat * xhat, axis=0) / D
        c2 = tl.sum(dxhat, axis=0) / D
        dx = (dxhat - xhat * c1 - c2) * rstd
        tl.store(DX + row * D + cols, dx.to(DX.dtype.element_ty), mask=mask)

    part = (batch * n_chunks + chunk) * D + cols
    tl.store(SUM_DY_P + part, acc_dy, mask=mask)
    tl.store(SUM_DY_XHAT_P + part, acc_dy_xhat, mask=mask)


# ----------------------------------------------------------------------------------------------- launchers
def _num_warps(block_d: int, backward: bool = False) -> int:
    # One warp per 128 columns; the backward keeps ~7 row vectors live, and ptxas spills it at
    # 4096 columns with 16 or 32 warps on sm_80 but not with 8 (measured by kernels/aot.py).
    if backward and block_d == 4096:
        return 8
    return min(32, max(1, block_d // 128))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``[B, D]`` itself when its columns are contiguous (any row stride, e.g. a ``chunk`` of a wider
    projection), else a contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _backward_split(B: int, L: int, target: int) -> tuple[int, int]:
    """``(chunks, rows_per_prog)`` of the backward grid ``(B, chunks)``: about ``target`` programs in all.

    On a GPU ``target`` is 4 per SM (hundreds), so small batches split their rows over many programs, down to
    one row each; under the interpreter it is 4. Tests force the GPU's split through ``num_programs_target``.
    """
    if L == 0:
        return 1, 1
    chunks = max(1, min(L, -(-target // max(B, 1))))
    rows_per_prog = -(-L // chunks)
    return -(-L // rows_per_prog), rows_per_prog


def _launch_fwd(x, scale, shift, weight, bias, eps):
    B, L, D = x.shape
    x = x.contiguous()
    scale, shift = _rows(scale), _rows(shift)
    y = torch.empty_like(x)  # [B, L, D]
    mean = torch.empty((B, L), dtype=torch.float32, device=x.device)
    rstd = torch.empty((B, L), dtype=torch.float32, device=x.device)
    if B * L == 0:
        return y, mean, rstd
    block_d = next_power_of_2(D)
    launch(_eadaln_fwd_kernel, (B * L,),
        x, y, scale, shift,
        x if weight is None else weight.contiguous(),
        x if bias is None else bias.contiguous(),
        mean, rstd, L, D, scale.stride(0), shift.stride(0), eps,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        BLOCK_D=block_d, num_warps=_num_warps(block_d),
    )  # fmt: skip
    return y, mean, rstd


def _launch_bwd(dy, x, scale, weight, bias, mean, rstd):
    B, L, D = x.shape
    # autograd hands us expanded (stride-0) or otherwise strided gradients: the kernel wants rows.
    dy, x, scale = dy.contiguous(), x.contiguous(), _rows(scale)
    dx = torch.empty_like(x)
    chunks, rows_per_prog = _backward_split(B, L, num_programs_target(x.device))
    # every (batch, chunk) row of the partial sums is written by its program: zeros only when nothing runs
    alloc = torch.empty if B * L > 0 else torch.zeros
    partial = alloc((2, B, chunks, D), dtype=torch.float32, device=x.device)
    if B * L > 0:
        block_d = next_power_of_2(D)
        launch(_eadaln_bwd_kernel, (B, chunks),
            x, dy, scale, x if weight is None else weight.contiguous(), mean, rstd, dx,
            partial[0], partial[1], L, D, scale.stride(0), rows_per_prog,
            HAS_WEIGHT=weight is not None, BLOCK_D=block_d, num_warps=_num_warps(block_d, backward=True),
        )  # fmt: skip
    sum_dy, sum_dy_xhat = partial[0].sum(1), partial[1].sum(1)  # [B, D] each, separate storages
    dshift = sum_dy
    dscale = sum_dy_xhat if weight is None else sum_dy_xhat * weight.float()
    if bias is not None:
        dscale = dscale + sum_dy * bias.float()
    g = 1.0 + scale.float()  # [B, D]
    dweight = (g * sum_dy_xhat).sum(0).to(x.dtype) if weight is not None else x.new_empty(0)
    dbias = (g * sum_dy).sum(0).to(x.dtype) if bias is not None else x.new_empty(0)
    return dx, dscale.to(scale.dtype), dshift.to(scale.dtype), dweight, dbias


# ----------------------------------------------------------------------------------------------- registration
@torch.library.custom_op("export3d::eadaln_fwd", mutates_args=())
def _eadaln_fwd(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_fwd(x, scale, shift, weight, bias, eps)


@_eadaln_fwd.register_fake
def _(x, scale, shift, weight, bias, eps):
    B, L, _ = x.shape
    stats = x.new_empty((B, L), dtype=torch.float32)
    return x.new_empty(x.shape), stats, torch.empty_like(stats)


@torch.library.custom_op("export3d::eadaln_bwd", mutates_args=())
def _eadaln_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_bwd(dy, x, scale, weight, bias, mean, rstd)


@_eadaln_bwd.register_fake
def _(dy, x, scale, weight, bias, mean, rstd):
    dweight = x.new_empty(weight.shape) if weight is not None else x.new_empty(0)
    dbias = x.new_empty(bias.shape) if bias is not None else x.new_empty(0)
    return x.new_empty(x.shape), scale.new_empty(scale.shape), scale.new_empty(scale.shape), dweight, dbias


def _setup_context(ctx, inputs, output):
    x, scale, _shift, weight, bias, _eps = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, scale, weight, bias, mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x, scale, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dscale, dshift, dweight, dbias = torch.ops.export3d.eadaln_bwd(dy, x, scale, weight, bias, mean, rstd)
    return dx, dscale, dshift, dweight if weight is not None else None, dbias if bias is not None else None, None


_eadaln_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------- public function
def eadaln(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    impl: str = "auto",
) -> torch.Tensor:
    """Expression-adaptive LayerNorm ``LN(x) * (1 + scale[:, None]) + shift[:, None]``.

    Args:
        x: ``[B, L, D]`` tokens (any strides).
        scale, shift: ``[B, D]`` per-sample modulation (e.g. from a zero-initialised projection of the
            expression code, so the op starts as a plain LayerNorm).
        weight, bias: optional ``[D]`` LayerNorm affine, applied inside LN (before the modulation).
        eps: LayerNorm epsilon.
        impl: ``"auto"`` (Triton on CUDA, reference otherwise), ``"triton"`` or ``"reference"``.

    Returns ``[B, L, D]`` in ``x.dtype``; statistics are fp32. The Triton path takes ``D <= 8192``.
    """
    op = "eadaln"
    check_tensor("x", x, op=op, ndim=3)
    B, _, D = x.shape
    if D < 1:
        raise ValueError(f"{op}: x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    check_tensor("scale", scale, op=op, shape=(B, D))
    check_tensor("shift", shift, op=op, shape=(B, D))
    if weight is not None:
        check_tensor("weight", weight, op=op, shape=(D,))
    if bias is not None:
        check_tensor("bias", bias, op=op, shape=(D,))
    check_same(op, "x", x, scale=scale, shift=shift, weight=weight, bias=bias)
    if not eps > 0:
        raise ValueError(f"{op}: eps must be > 0, got {eps}")
    if use_triton(impl, x, scale, shift, weight, bias, op=op):
        if D > MAX_D:
            if impl == "triton":
                raise ValueError(f"{op}: impl='triton' takes D <= {MAX_D}, got D={D}; use impl='reference'")
        else:
            return torch.ops.export3d.eadaln_fwd(x, scale, shift, weight, bias, float(eps))[0]
    return eadaln_ref(x, scale, shift, weight, bias, eps)


# ----------------------------------------------------------------------------------------------- AOT configurations
def aot_specs() -> list[AotSpec]:
    """Configurations compiled by ``python -m export3d.kernels.aot``: every block size the launchers pick."""
    configs = [("fp32", d, True) for d in (1, 17, 96, 256, 500, 1000, 2048, 4096, MAX_D)]
    configs += [("fp32", 96, False), ("bf16", 1024, False), ("bf16", MAX_D, True)]
    specs = []
    for dtype, d, affine in configs:
        block, label = next_power_of_2(d), f"{dtype} D={d} affine={affine}"
        fwd_const = {"HAS_WEIGHT": affine, "HAS_BIAS": affine, "BLOCK_D": block}
        fwd_sig = {n: f"*{dtype}" for n in ("X", "Y", "SCALE", "SHIFT", "W", "BIAS")}
        fwd_sig.update(MEAN="*fp32", RSTD="*fp32", L="i32", D="i32", s_scale="i32", s_shift="i32", eps="fp32")
        fwd_sig.update(dict.fromkeys(fwd_const, "constexpr"))
        specs.append(AotSpec(_eadaln_fwd_kernel, fwd_sig, fwd_const, _num_warps(block), label))
        bwd_const = {"HAS_WEIGHT": affine, "BLOCK_D": block}
        bwd_sig = {n: f"*{dtype}" for n in ("X", "DY", "SCALE", "W")}
        bwd_sig.update(MEAN="*fp32", RSTD="*fp32", DX=f"*{dtype}", SUM_DY_P="*fp32", SUM_DY_XHAT_P="*fp32")
        bwd_sig.update(L="i32", D="i32", s_scale="i32", rows_per_prog="i32")
        bwd_sig.update(dict.fromkeys(bwd_const, "constexpr"))
        specs.append(AotSpec(_eadaln_bwd_kernel, bwd_sig, bwd_const, _num_warps(block, backward=True), label))
    return specs
