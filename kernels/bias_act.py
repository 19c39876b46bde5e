"""Fused bias + activation + gain + clamp (StyleGAN2 / EG3D's ``bias_act``), drop-in for EG3D's plugin.

    y = clamp(act(x + b broadcast along dim, alpha) * gain, -clamp, clamp)      (no clamp when clamp < 0)

(the ``@triton.jit`` kernels are in ``bias_act_kernels.py``)

x of any shape is walked as ``[outer, C, inner]`` in memory (``C = x.shape[dim]``; a channels-last 4-D x with
``dim=1`` is ``[N*H*W, C, 1]``, read in place; no bias: one ``[1, 1, numel]`` run). A program owns a tile of
``BLOCK_C x BLOCK_I`` positions of the ``[C, inner]`` plane (``_tile``: 1024 elements, shaped by ``inner``) and
walks ``rows_per_prog`` of the outer rows, so each bias value is loaded once per program.

Backward (``_bias_act_bwd_kernel``, ORDER = 1): ``dx = dy * gain * act'(z) * [|u| <= clamp]`` with
``u = act(z) * gain``, and ``db = sum of dx over every dim but dim``, reduced inside the same pass: each program
sums its tile over its rows in fp32 registers and writes one partial per channel to a small
``[chunks, tiles_i, C]`` buffer (C padded to whole tiles), summed by PyTorch (no atomics, deterministic, no second
read of dx). The derivative comes from what the forward saved:

- relu, lrelu, linear: from ``y`` (the sign of ``y * gain`` is the sign of ``z``; ``|y| < clamp`` is the clamp
  mask), as EG3D does; ``y`` is the next layer's input, which that layer keeps anyway. Below fp32 with a clamp,
  a ``u`` just under the clamp can round to it in ``y``, so those save ``x`` (and ``b``) instead: exact masks.
- tanh, sigmoid, elu, selu, softplus, swish: from ``x`` and ``b``, recomputing ``z = x + b`` in fp32.

Second order (ORDER = 2, for R1 penalties on the discriminator): the backward is linear in ``dy`` with a
coefficient ``D(z) = gain * act'(z) * mask``. Differentiating it gives ``d_dy = d_dx * D(z)`` (the ORDER = 1 kernel
again), ``d_x = d_dx * dy * gain * act''(z) * mask`` (ORDER = 2) and ``d_b = sum d_x``; relu, lrelu and linear have
``act'' = 0``. A third order raises.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton

from .bias_act_kernels import _bias_act_bwd_kernel, _bias_act_fwd_kernel
from .reference import BIAS_ACT_DEFAULTS, _activation, bias_act_params, bias_act_ref
from .utils import AotSpec, check_same, check_tensor, launch, num_programs_target, use_triton

OP = "bias_act"
ACTS = tuple(BIAS_ACT_DEFAULTS)  # kernel ids: 0 linear, 1 relu, 2 lrelu, 3 tanh, 4 sigmoid, 5 elu, 6 selu, ...
FROM_Y_ACTS = ("linear", "relu", "lrelu")  # act'' = 0, act' readable from y
_IMPL_ALIASES = {"cuda": "auto", "ref": "reference"}  # EG3D's impl names
TILE = 1024  # elements per program and row
NUM_WARPS = 8  # 4 elements per thread (with 8, ptxas spilled some of the lane masks kept live over the row loop)

__all__ = ["activation_funcs", "bias_act"]  # what `from export3d.kernels.bias_act import *` gives an EG3D shim


@dataclass(frozen=True)
class ActivationSpec:
    """An entry of EG3D's ``bias_act.activation_funcs`` (StyleGAN2 layers read ``.def_gain``)."""

    func: Callable[..., torch.Tensor]  # func(x, alpha=...) in plain PyTorch
    def_alpha: float
    def_gain: float
    cuda_idx: int
    ref: str  # what EG3D's CUDA backward reads: "" nothing, "y" the output, "x" the input
    has_2nd_grad: bool


def _spec(act: str, idx: int) -> ActivationSpec:
    alpha, gain = BIAS_ACT_DEFAULTS[act]
    ref = "" if act == "linear" else "x" if act == "swish" else "y"
    return ActivationSpec(lambda x, alpha=alpha, **_: _activation(x, act, float(alpha)), alpha, gain, idx + 1, ref,
                          act not in FROM_Y_ACTS)  # fmt: skip


activation_funcs: dict[str, ActivationSpec] = {act: _spec(act, i) for i, act in enumerate(ACTS)}


# ----------------------------------------------------------------------------------------------- launchers
def _fmt(t: torch.Tensor) -> torch.memory_format:
    """Channels-last for a 4-D tensor stored that way (and not also contiguous), else contiguous."""
    cl = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


def _layout(t: torch.Tensor, dim: int, has_bias: bool) -> tuple[torch.memory_format, int, int, int]:
    """``(memory format, outer, C, inner)`` of the ``[outer, C, inner]`` walk of ``t`` (see the module docstring)."""
    fmt, n = _fmt(t), t.numel()
    if not has_bias:
        return fmt, 1, 1, n
    C = t.shape[dim]
    if fmt == torch.channels_last and dim == 1:
        return fmt, n // max(C, 1), C, 1
    inner = 1
    for s in t.shape[dim + 1:]:
        inner *= s
    return torch.contiguous_format, n // max(C * inner, 1), C, inner


def _tile(inner: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_I) with BLOCK_C * BLOCK_I = TILE: whole channel runs when inner is long, many channels of a
    short run (inner = 1: x [B, C] of a linear layer, or channels last)."""
    block_i = 1 if inner == 1 else 16 if inner < 128 else 128 if inner < TILE else TILE
    return TILE // block_i, block_i


def _split(outer: int, tiles: int, device: torch.device) -> tuple[int, int]:
    """``(chunks, rows_per_prog)``: about ``num_programs_target`` programs in all, each walking a run of rows."""
    chunks = max(1, min(outer, -(-num_programs_target(device) // max(tiles, 1))))
    rows = -(-outer // chunks)
    return -(-outer // rows), rows


def _grid(outer: int, C: int, inner: int, device: torch.device):
    block_c, block_i = _tile(inner)
    tiles_i = triton.cdiv(inner, block_i)
    tiles_per_row = triton.cdiv(C, block_c) * tiles_i
    chunks, rows = _split(outer, tiles_per_row, device)
    if chunks * tiles_per_row >= 2**31:
        raise ValueError(f"{OP}: x with {outer} x {C} x {inner} elements needs too many programs")
    return (block_c, block_i), tiles_i, tiles_per_row, chunks, rows


def _launch_fwd(x, b, dim, act, alpha, gain, clamp):
    fmt, outer, C, inner = _layout(x, dim, b is not None)
    x = x.contiguous(memory_format=fmt)
    y = torch.empty_like(x, memory_format=fmt)
    if x.numel() == 0:
        return y
    (block_c, block_i), tiles_i, tiles_per_row, chunks, rows = _grid(outer, C, inner, x.device)
    launch(_bias_act_fwd_kernel, (chunks * tiles_per_row,),
        x, x if b is None else b.contiguous(), y, C, inner, tiles_i, tiles_per_row, outer, rows, int(b is not None),
        alpha, gain, clamp, ACT=ACTS.index(act), BLOCK_C=block_c, BLOCK_I=block_i, num_warps=NUM_WARPS,
    )  # fmt: skip
    return y


def _launch_bwd(g, dy, x, b, y, dim, act, alpha, gain, clamp, need_db, order):
    """ORDER 1: ``(dx, db)`` from ``g = dy`` and x (with b) or y; ORDER 2: ``(d_x, d_b)`` from ``g = d(dx)``, dy, x."""
    ref = y if x is None else x
    fmt, outer, C, inner = _layout(ref, dim, b is not None)
    ref = ref.contiguous(memory_format=fmt)
    g = g.contiguous(memory_format=fmt)  # autograd may hand an expanded (stride-0) gradient
    out = torch.empty_like(ref, memory_format=fmt)
    need_db = need_db and b is not None
    db = torch.zeros(C if need_db else 0, dtype=torch.float32, device=ref.device)
    if ref.numel() == 0:
        return out, db.to(ref.dtype)
    (block_c, block_i), tiles_i, tiles_per_row, chunks, rows = _grid(outer, C, inner, ref.device)
    c_pad = tiles_per_row // tiles_i * block_c  # C rounded up to whole channel tiles
    part = torch.empty((chunks, tiles_i, c_pad), dtype=torch.float32, device=ref.device) if need_db else db
    launch(_bias_act_bwd_kernel, (chunks * tiles_per_row,),
        g, ref if dy is None else dy.contiguous(memory_format=fmt), ref, ref if b is None else b.contiguous(), ref,
        out, part, C, inner, tiles_i, tiles_per_row, outer, rows, int(b is not None), int(need_db), alpha, gain,
        clamp, ACT=ACTS.index(act), ORDER=order, FROM_Y=x is None, BLOCK_C=block_c, BLOCK_I=block_i,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return out, (part[:, :, :C].sum((0, 1)) if need_db else db).to(ref.dtype)


def _from_y(act: str, alpha: float, dtype: torch.dtype, clamp: float) -> bool:
    """Whether the backward reads y (not x and b): see the module docstring. A negative lrelu slope flips the sign
    of y, so the sign no longer tells which side of 0 z was (EG3D reads y regardless)."""
    return act in FROM_Y_ACTS and (act != "lrelu" or alpha >= 0) and (clamp < 0 or dtype == torch.float32)


# ----------------------------------------------------------------------------------------------- registration
@torch.library.custom_op("export3d::bias_act_fwd", mutates_args=())
def _bias_act_fwd(
    x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float, gain: float, clamp: float
) -> torch.Tensor:
    return _launch_fwd(x, b, dim, act, alpha, gain, clamp)


@_bias_act_fwd.register_fake
def _(x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x, memory_format=_layout(x, dim, b is not None)[0])


@torch.library.custom_op("export3d::bias_act_bwd", mutates_args=())
def _bias_act_bwd(
    dy: torch.Tensor, x: torch.Tensor | None, b: torch.Tensor | None, y: torch.Tensor | None, dim: int, act: str,
    alpha: float, gain: float, clamp: float, need_db: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return _launch_bwd(dy, None, x, b, y, dim, act, alpha, gain, clamp, need_db, 1)


@torch.library.custom_op("export3d::bias_act_bwd2", mutates_args=())
def _bias_act_bwd2(
    g: torch.Tensor, dy: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float,
    gain: float, clamp: float, need_db: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return _launch_bwd(g, dy, x, b, None, dim, act, alpha, gain, clamp, need_db, 2)


def _fake_bwd(g, x, b, y, dim, need_db):
    ref = y if x is None else x
    out = torch.empty_like(ref, memory_format=_layout(ref, dim, b is not None)[0])
    return out, ref.new_empty((b.shape[0] if need_db and b is not None else 0,))


_bias_act_bwd.register_fake(lambda dy, x, b, y, dim, act, alpha, gain, clamp, need_db:
                            _fake_bwd(dy, x, b, y, dim, need_db))  # fmt: skip
_bias_act_bwd2.register_fake(lambda g, dy, x, b, dim, act, alpha, gain, clamp, need_db:
                             _fake_bwd(g, x, b, None, dim, need_db))  # fmt: skip


def _setup_fwd(ctx, inputs, output):
    x, b, dim, act, alpha, gain, clamp = inputs
    ctx.args = (dim, act, alpha, gain, clamp)
    if _from_y(act, alpha, x.dtype, clamp):
        ctx.save_for_backward(None, b, output)
    else:
        ctx.save_for_backward(x, b, None)


def _backward_fwd(ctx, dy):
    x, b, y = ctx.saved_tensors
    dx, db = torch.ops.export3d.bias_act_bwd(dy, x, b, y, *ctx.args, ctx.needs_input_grad[1])
    return dx, db if ctx.needs_input_grad[1] else None, None, None, None, None, None


def _setup_bwd(ctx, inputs, output):
    dy, x, b, y, dim, act, alpha, gain, clamp, need_db = inputs
    ctx.args, ctx.need_db = (dim, act, alpha, gain, clamp), need_db
    # dy is read only by the act'' term, which relu / lrelu / linear do not have: R1 keeps no copy of it for those
    ctx.save_for_backward(None if act in FROM_Y_ACTS else dy, x, b, y)


def _backward_bwd(ctx, d_dx, d_db):
    """The gradients of ``(dx, db) = bias_act_bwd(dy, x, b, y)``: ``dx = dy * D(z)``, ``db = sum dx``."""
    dy, x, b, y = ctx.saved_tensors
    dim, act = ctx.args[:2]
    d_dx = torch.zeros_like(y if x is None else x) if d_dx is None else d_dx  # dy's shape (dy may not be saved)
    if ctx.need_db and b is not None and d_db is not None and d_db.numel() > 0:
        # db sums dx over every dim but dim: its gradient reaches every dx
        d_dx = d_dx + d_db.to(d_dx.dtype).reshape([-1 if i == dim else 1 for i in range(d_dx.dim())])
    d_dy = d_x = d_b = None
    if ctx.needs_input_grad[0]:
        d_dy = torch.ops.export3d.bias_act_bwd(d_dx, x, b, y, *ctx.args, False)[0]
    if x is not None and act not in FROM_Y_ACTS and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        d_x, d_b = torch.ops.export3d.bias_act_bwd2(d_dx, dy, x, b, *ctx.args, ctx.needs_input_grad[2])
        d_b = d_b if ctx.needs_input_grad[2] else None
    # relu / lrelu / linear: D is piecewise constant, so no gradient reaches x, b or y (nor does one reach y ever)
    return d_dy, d_x, d_b, None, None, None, None, None, None, None


def _backward_bwd2(ctx, *grads):
    raise NotImplementedError(f"{OP}: third-order gradients are not supported (EG3D's op stops at second order too)")


_bias_act_fwd.register_autograd(_backward_fwd, setup_context=_setup_fwd)
_bias_act_bwd.register_autograd(_backward_bwd, setup_context=_setup_bwd)
_bias_act_bwd2.register_autograd(_backward_bwd2, setup_context=lambda ctx, inputs, output: None)


# ----------------------------------------------------------------------------------------------- public function
def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="auto"):
    """Fused bias, activation, gain and clamp (EG3D's ``bias_act.bias_act``).

    Args:
        x: any shape; float32 / float16 / bfloat16 (float64 runs the reference); any strides (channels-last 4-D
            tensors are read and written in place).
        b: ``[x.shape[dim]]`` bias in x's dtype and device, or None.
        dim: the dimension of x that ``b`` runs along (negative values count from the end).
        act: ``"linear"``, ``"relu"``, ``"lrelu"``, ``"tanh"``, ``"sigmoid"``, ``"elu"``, ``"selu"``,
            ``"softplus"`` or ``"swish"``.
        alpha: lrelu's negative slope (default 0.2); the other activations ignore it, as in EG3D.
        gain: output scale; default sqrt(2) for relu, lrelu and swish, 1 for the others (EG3D's table).
        clamp: clamp the output to ``[-clamp, clamp]``; None or negative: no clamp.
        impl: ``"auto"`` (Triton on CUDA, the reference otherwise), ``"triton"``, ``"reference"``; EG3D's
            ``"cuda"`` and ``"ref"`` mean ``"auto"`` and ``"reference"``.

    Returns a tensor of x's shape and dtype. Differentiable twice (x and b), as R1 needs.
    """
    impl = _IMPL_ALIASES.get(impl, impl)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{OP}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float64:
        check_tensor("x", x, op=OP)
    alpha, gain, clamp = bias_act_params(act, alpha, gain, clamp)
    if b is not None:
        if not isinstance(dim, int) or isinstance(dim, bool) or not -x.dim() <= dim < x.dim():
            raise ValueError(f"{OP}: dim must index one of x's {x.dim()} dimensions, got {dim!r}")
        dim = dim % x.dim()
        check_tensor("b", b, op=OP, shape=(x.shape[dim],), floating=False)  # its dtype is x's (check_same)
        check_same(OP, "x", x, b=b)
    if x.dtype == torch.float64:  # EG3D takes float64 too: the reference runs it (there is no fp64 kernel)
        if impl == "triton":
            raise TypeError(f"{OP}: impl='triton' takes float32, float16 or bfloat16 x, got float64")
        use_triton(impl, op=OP)  # validates impl
    elif use_triton(impl, x, b, op=OP):
        if act == "linear" and gain == 1 and clamp < 0 and b is None:
            return x  # nothing to do (EG3D returns x itself too)
        return torch.ops.export3d.bias_act_fwd(x, b, int(dim), act, alpha, gain, clamp)
    return bias_act_ref(x, b, dim, act, alpha, gain, clamp)


# ----------------------------------------------------------------------------------------------- AOT configurations
def aot_specs() -> list[AotSpec]:
    """Configurations compiled by ``python -m export3d.kernels.aot``. Registers depend on the activation's math and on
    the tile shape, so: in fp32 every activation and every mode it uses (forward; backward from y or from x; second
    order) at both extreme tiles (inner = 1: linear layers and channels-last maps, compiled with ``inner`` = 1 as a
    real launch specialises it; inner >= 1024: NCHW maps), and the middle tiles with lrelu (the model's) and swish
    (the longest math); in bf16 linear, lrelu, tanh and swish, in fp16 linear and lrelu (EG3D's fp16 layers), at the
    extreme tiles. Bias, clamp, alpha, gain and the db reduction are runtime arguments: one binary serves them all."""
    configs = [("fp32", inner, ACTS) for inner in (1, TILE)]
    configs += [("fp32", inner, ("lrelu", "swish")) for inner in (16, 128)]
    configs += [("bf16", inner, ("linear", "lrelu", "tanh", "swish")) for inner in (1, TILE)]
    configs += [("fp16", inner, ("linear", "lrelu")) for inner in (1, TILE)]
    specs = []
    for dtype, inner, acts in configs:
        block_c, block_i = _tile(inner)
        tile = {"BLOCK_C": block_c, "BLOCK_I": block_i} | ({"inner": 1} if inner == 1 else {})
        scalars = {"C": "i32", "inner": "i32", "tiles_i": "i32", "tiles_per_row": "i32", "n_rows": "i32",
                   "rows_per_prog": "i32", "has_bias": "i32"}  # fmt: skip
        for act in acts:
            label = f"{dtype} {act} tile={block_c}x{block_i}"
            const = {"ACT": ACTS.index(act), **tile}
            sig = {"X": f"*{dtype}", "B": f"*{dtype}", "Y": f"*{dtype}", **scalars, "alpha": "fp32", "gain": "fp32",
                   "clamp": "fp32", **dict.fromkeys(const, "constexpr")}  # fmt: skip
            specs.append(AotSpec(_bias_act_fwd_kernel, sig, const, NUM_WARPS, label))
            modes = [(1, True), (1, False)] if act in FROM_Y_ACTS else [(1, False), (2, False)]
            for order, from_y in modes:
                const = {"ACT": ACTS.index(act), "ORDER": order, "FROM_Y": from_y, **tile}
                sig = {n: f"*{dtype}" for n in ("G", "DY", "X", "B", "Y", "OUT")}
                sig.update(DB_PART="*fp32", **scalars, need_db="i32", alpha="fp32", gain="fp32", clamp="fp32")
                sig.update(dict.fromkeys(const, "constexpr"))
                mode = f"order={order} from={'y' if from_y else 'x'}"
                specs.append(AotSpec(_bias_act_bwd_kernel, sig, const, NUM_WARPS, f"{label} {mode}"))
    return specs
