"""bias_act (EG3D's fused bias + activation): the Triton kernels against the reference for every activation, layout,
clamp and dtype, first and second order gradients (gradcheck / gradgradcheck in float64), the registered ops,
compile, what the backward keeps, and errors."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from export3d.kernels import bias_act, bias_act_ref, utils
from export3d.kernels.bias_act import ACTS, FROM_Y_ACTS, activation_funcs
from export3d.kernels.reference import BIAS_ACT_DEFAULTS
from tests.kernels.helpers import assert_close_lowp

# (x shape, dim, memory format): the [outer, C, inner] walks the kernels tile differently
LAYOUTS = {
    "nchw": ((2, 5, 3, 4), 1, "contiguous"),  # inner 12 -> 64 x 16 tiles
    "linear": ((3, 7), 1, "contiguous"),  # inner 1: [B, C] of a fully connected layer
    "last": ((2, 3, 11), 2, "contiguous"),  # bias along the last dim (tokens)
    "wide": ((2, 3, 1100), 1, "contiguous"),  # inner 1100 -> two 1 x 1024 tiles per channel
    "mid": ((1, 3, 130), 1, "contiguous"),  # inner 130 -> 8 x 128 tiles
    "first": ((5, 2, 3), 0, "contiguous"),  # dim 0
    "channels_last": ((2, 5, 3, 4), 1, "channels_last"),  # read in place as [N*H*W, C, 1]
}
CLAMPS = {"noclamp": None, "clamp": 0.9}


def _inputs(shape, dim, fmt, dtype, device, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 1.5 + 0.2
    x = x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x
    b = torch.randn(shape[dim], generator=g) * 0.5 if bias else None
    x = x.to(device=device, dtype=dtype).requires_grad_(True)
    return x, None if b is None else b.to(device=device, dtype=dtype).requires_grad_(True)


def _dy(x, seed=1):
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(device=x.device, dtype=x.dtype)


def _grads(impl, x, b, dim, act, clamp, dy, order=1):
    """y, (dx, db) and, with order 2, the gradients of <dx, v> + <db, w> with respect to x, b and dy."""
    dy = dy.detach().requires_grad_(order == 2)
    y = bias_act(x, b, dim, act, clamp=clamp, impl=impl)
    leaves = [t for t in (x, b) if t is not None]
    first = torch.autograd.grad(y, leaves, dy, create_graph=order == 2)
    if order == 1:
        return y, first
    v = [_dy(t, seed=5 + i) for i, t in enumerate(first)]
    total = sum((g * w).sum() for g, w in zip(first, v, strict=True))
    second = torch.autograd.grad(total, [*leaves, dy], allow_unused=True, materialize_grads=True)
    return y, first, second


def _close(got, want, atol, names):
    for name, a, b in zip(names, got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


# ----------------------------------------------------------------------------------------------- fp32
@pytest.mark.parametrize("clamp", list(CLAMPS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("act", ACTS)
def test_fp32_matches_reference(act, layout, clamp, device):
    shape, dim, fmt = LAYOUTS[layout]
    x, b = _inputs(shape, dim, fmt, torch.float32, device)
    dy = _dy(x)
    y, grads = _grads("triton", x, b, dim, act, CLAMPS[clamp], dy)
    y_ref, grads_ref = _grads("reference", x, b, dim, act, CLAMPS[clamp], dy)
    assert y.dtype == torch.float32
    if fmt == "channels_last":  # written in place in x's layout
        assert y.is_contiguous(memory_format=torch.channels_last) and grads[0].stride() == x.stride()
    _close([y, *grads], [y_ref, *grads_ref], 1e-5, ["y", "dx", "db"])


@pytest.mark.parametrize("layout", ["nchw", "linear", "wide"])
@pytest.mark.parametrize("act", [a for a in ACTS if a != "linear"])
def test_second_order_matches_reference(act, layout, device):
    """The gradients of <dx, v> + <db, w> (R1's double backward) with respect to x, b and dy, through the custom
    ops' own autograd (bias_act_bwd differentiates into bias_act_bwd and bias_act_bwd2)."""
    shape, dim, fmt = LAYOUTS[layout]
    for clamp in CLAMPS.values():
        x, b = _inputs(shape, dim, fmt, torch.float32, device, seed=2)
        dy = _dy(x, seed=3)
        y, first, second = _grads("triton", x, b, dim, act, clamp, dy, order=2)
        y_ref, first_ref, second_ref = _grads("reference", x, b, dim, act, clamp, dy, order=2)
        _close([*first, *second], [*first_ref, *second_ref], 1e-5, ["dx", "db", "d2x", "d2b", "d2dy"])


@pytest.mark.parametrize("act", ["lrelu", "swish", "linear"])
def test_no_bias_other_dims_and_odd_sizes(act, device):
    """No bias (one flat run), dim given but unused, a 0-d and a 1-element x, a prime-sized 1-D x."""
    for shape in [(), (1,), (1, 1, 1, 1), (13,), (2, 3, 5, 7)]:
        x, _ = _inputs(shape, 0, "contiguous", torch.float32, device, bias=False)
        dy = _dy(x)
        y, (dx,) = _grads("triton", x, None, 3, act, 0.7, dy)
        y_ref, (dx_ref,) = _grads("reference", x, None, 3, act, 0.7, dy)
        _close([y, dx], [y_ref, dx_ref], 1e-6, [f"y{shape}", f"dx{shape}"])


def test_alpha_gain_and_defaults(device):
    x, b = _inputs((2, 4, 5), 1, "contiguous", torch.float32, device)
    for act, kwargs in [("lrelu", {"alpha": 0.05, "gain": -1.3}), ("relu", {"alpha": 0.5}), ("elu", {"alpha": 3.0}),
                        ("tanh", {"gain": 0.0}), ("swish", {"gain": 2.5, "clamp": 1.1}), ("lrelu", {"clamp": 0.0}),
                        ("lrelu", {"alpha": -0.3}), ("lrelu", {"alpha": -0.3, "gain": -2.0, "clamp": 1.0})]:
        y = bias_act(x, b, act=act, impl="triton", **kwargs)  # fmt: skip
        y_ref = bias_act_ref(x, b, act=act, **kwargs)
        torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-6, msg=lambda m, a=act, k=kwargs: f"{a} {k}: {m}")
        dx, db = torch.autograd.grad(y, (x, b), _dy(x))
        dx_ref, db_ref = torch.autograd.grad(y_ref, (x, b), _dy(x))
        _close([dx, db], [dx_ref, db_ref], 1e-5, [f"dx {act} {kwargs}", f"db {act} {kwargs}"])
    z = (x + b[:, None]).detach()
    torch.testing.assert_close(bias_act(x, b, act="lrelu"), F.leaky_relu(z, 0.2) * math.sqrt(2))
    torch.testing.assert_close(bias_act(x, b, act="relu", alpha=0.3), F.relu(z) * math.sqrt(2))  # alpha ignored


def test_defaults_are_eg3ds():
    """EG3D's activation_funcs table: gains sqrt(2) for relu, lrelu and swish, lrelu's alpha 0.2."""
    s2 = math.sqrt(2)
    want = {"linear": (0, 1), "relu": (0, s2), "lrelu": (0.2, s2), "tanh": (0, 1), "sigmoid": (0, 1), "elu": (0, 1),
            "selu": (0, 1), "softplus": (0, 1), "swish": (0, s2)}  # fmt: skip
    assert BIAS_ACT_DEFAULTS == want
    for i, act in enumerate(ACTS):
        spec = activation_funcs[act]
        assert (spec.def_alpha, spec.def_gain, spec.cuda_idx) == (*want[act], i + 1)
        assert spec.has_2nd_grad == (act not in ("linear", "relu", "lrelu"))
        assert spec.ref == {"linear": "", "swish": "x"}.get(act, "y")
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(activation_funcs["swish"].func(x), torch.sigmoid(x) * x)
    torch.testing.assert_close(activation_funcs["lrelu"].func(x, alpha=0.1), F.leaky_relu(x, 0.1))


# ----------------------------------------------------------------------------------------------- float64 checks
@pytest.mark.parametrize("clamp", [None, 0.8])
@pytest.mark.parametrize("act", ACTS)
def test_reference_gradcheck_and_gradgradcheck_float64(act, clamp):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64) * 1.5).requires_grad_(True)
    x = x + 0.05 * torch.sign(x.detach())  # keep away from the kinks of relu / lrelu (|x| >= 0.05)
    x = x.detach().requires_grad_(True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: bias_act_ref(x, b, 1, act, clamp=clamp)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(lambda x, b: bias_act(x, b, 1, act, clamp=clamp), (x, b))  # public, fp64


# ----------------------------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("act", ["lrelu", "tanh", "softplus", "swish", "linear"])
def test_low_precision_within_flash_attention_bound(act, dtype, device):
    """The interpreter only converts bf16 (loads, stores), which is all the kernels do with it: math is fp32."""
    for layout, clamp in (("nchw", None), ("linear", 0.9), ("channels_last", 0.9)):
        shape, dim, fmt = LAYOUTS[layout]
        x16, b16 = _inputs(shape, dim, fmt, dtype, device, seed=4)
        x32, b32 = (t.detach().float().requires_grad_(True) for t in (x16, b16))
        dy16 = _dy(x16, seed=6)
        out = _grads("triton", x16, b16, dim, act, clamp, dy16)
        lo = _grads("reference", x16, b16, dim, act, clamp, dy16)
        hi = _grads("reference", x32, b32, dim, act, clamp, dy16.float())
        ulp = 2.0**-10 if dtype == torch.float16 else 2.0**-7
        for name, a, c, d in zip(["y", "dx", "db"], [out[0], *out[1]], [lo[0], *lo[1]], [hi[0], *hi[1]], strict=True):
            assert a.dtype == dtype, name
            assert_close_lowp(a, c, d, atol=ulp * max(1.0, d.abs().max().item()), name=f"{layout} {name}")


def _saved(x, b, act, clamp):
    _, saved, y = utils.saved_tensor_bytes(bias_act, x, b, 1, act, clamp=clamp, impl="triton")
    return {t.untyped_storage()._cdata for t in saved}, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_backward_keeps_y_or_x(dtype, device):
    """relu / lrelu / linear keep the output (the next layer's input, kept anyway) and b (a parameter: db's shape);
    smooth activations keep x and b; below fp32 with a clamp, lrelu keeps x and b too (a value just under the clamp
    can round onto it in y)."""
    x, b = _inputs((2, 3, 4, 4), 1, "contiguous", dtype, device)
    storage = lambda t: t.untyped_storage()._cdata  # noqa: E731
    saved, y = _saved(x, b, "lrelu", None)
    assert saved == {storage(y), storage(b)}
    saved, y = _saved(x, b, "lrelu", 1.0)
    assert saved == ({storage(y), storage(b)} if dtype == torch.float32 else {storage(x), storage(b)})
    saved, y = _saved(x, b, "swish", None)
    assert saved == {storage(x), storage(b)}


def test_third_order_raises(device):
    x, b = _inputs((2, 3, 4), 1, "contiguous", torch.float32, device)
    y = bias_act(x, b, act="tanh", impl="triton")
    (dx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (ddx,) = torch.autograd.grad(dx.square().sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="third-order gradients are not supported"):
        torch.autograd.grad(ddx.sum(), x)


# ----------------------------------------------------------------------------------------------- launch paths
@pytest.mark.parametrize("target", [4, 432], ids=["runs-of-rows", "gpu-split"])
def test_program_split_and_partial_sums(target, monkeypatch, device):
    """37 outer rows over 4 programs (runs of 10, the last of 7) or, with a GPU's program count, one row each: the
    partial sums of db cover every chunk and inner tile."""
    monkeypatch.setattr(importlib.import_module("export3d.kernels.bias_act"), "num_programs_target", lambda d: target)
    for layout in ("linear", "nchw", "wide"):
        shape, dim, fmt = LAYOUTS[layout]
        shape = (37, *shape[1:])  # many outer rows
        x, b = _inputs(shape, dim, fmt, torch.float32, device, seed=8)
        dy = _dy(x)
        got = _grads("triton", x, b, dim, "swish", None, dy)
        want = _grads("reference", x, b, dim, "swish", None, dy)
        _close([got[0], *got[1]], [want[0], *want[1]], 2e-5, [f"{layout} y", "dx", "db"])


def test_non_contiguous_inputs_and_expanded_grad(device):
    g = torch.Generator().manual_seed(3)
    big = torch.randn(2, 7, 3, 10, generator=g).to(device).requires_grad_(True)
    bb = torch.randn(8, generator=g).to(device).requires_grad_(True)

    def go(impl):
        x = big.transpose(1, 2)[..., ::2]  # [2, 3, 7, 5], neither contiguous nor dense
        y = bias_act(x, bb[::2][:3], 1, "lrelu", clamp=1.0, impl=impl)  # strided bias
        (y * 0.5).sum().backward()  # the gradient reaching the op is an expanded scalar
        out = [y.detach(), big.grad.clone(), bb.grad.clone()]
        big.grad = bb.grad = None
        return out

    for got, want in zip(go("triton"), go("reference"), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0)], ids=str)
def test_empty_inputs(shape, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    b = torch.randn(shape[1], device=device, requires_grad=True)
    y = bias_act(x, b, act="swish", impl="triton")
    assert y.shape == x.shape
    dx, db = torch.autograd.grad(y, (x, b), torch.ones_like(y))
    assert dx.shape == x.shape and torch.equal(db, torch.zeros_like(b))


def test_linear_without_bias_is_x_itself():
    x = torch.randn(3, 4)
    assert bias_act(x, impl="triton") is x  # as EG3D: nothing to compute


def test_auto_dispatch_and_impl_aliases():
    x, b = _inputs((2, 3, 4), 1, "contiguous", torch.float32, "cpu")
    want = bias_act_ref(x, b, act="lrelu", clamp=1.0)
    for impl in ("auto", "reference", "ref", "cuda"):
        assert torch.equal(bias_act(x, b, act="lrelu", clamp=1.0, impl=impl), want)


def test_opcheck(device):
    x, b = _inputs((2, 5, 3), 1, "contiguous", torch.float32, device)
    dy = _dy(x)
    fwd, bwd, bwd2 = (getattr(torch.ops.export3d, n).default for n in ("bias_act_fwd", "bias_act_bwd", "bias_act_bwd2"))
    torch.library.opcheck(fwd, (x, b, 1, "tanh", 0.0, 1.0, 0.9))
    torch.library.opcheck(fwd, (x, None, 1, "lrelu", 0.2, 1.4, -1.0))
    y = fwd(x, b, 1, "lrelu", 0.2, 1.4, -1.0)
    torch.library.opcheck(bwd, (dy, None, b, y.detach(), 1, "lrelu", 0.2, 1.4, -1.0, True))
    torch.library.opcheck(bwd, (dy, x, b, None, 1, "swish", 0.0, 1.4, 0.9, True))
    torch.library.opcheck(bwd2, (dy, _dy(x, 2), x.detach(), b.detach(), 1, "swish", 0.0, 1.4, 0.9, True),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))  # fmt: skip


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_torch_compile_fullgraph_matches_eager(impl, device):
    torch._dynamo.reset()
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False).to(device)
    bias = torch.nn.Parameter(torch.randn(4, device=device) * 0.1)

    def block(x):
        h = bias_act(conv(x), bias, act="lrelu", clamp=2.0, impl=impl)
        return bias_act(h, None, act="softplus", impl=impl).square().mean()

    x = torch.randn(2, 3, 5, 6, device=device, requires_grad=True)
    params = [x, conv.weight, bias]
    eager = block(x)
    g_eager = torch.autograd.grad(eager, params)
    compiled = torch.compile(block, fullgraph=True)(x)
    g_comp = torch.autograd.grad(compiled, params)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    for a, c in zip(g_comp, g_eager, strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x": [1.0]}, r"x must be a torch.Tensor"),
        ({"x": torch.ones(2, 3, dtype=torch.int64)}, r"x must be float32, float16 or bfloat16"),
        ({"b": torch.ones(4)}, r"b must have shape \[3\]"),
        ({"b": torch.ones(3, 1)}, r"b must have shape \[3\]"),
        ({"b": torch.ones(3, dtype=torch.float16)}, r"b has dtype torch.float16 but x has torch.float32"),
        ({"b": torch.ones(3, device="meta")}, r"b is on meta but x is on cpu"),
        ({"b": [1.0, 2.0, 3.0]}, r"b must be a torch.Tensor"),
        ({"dim": 2}, r"dim must index one of x's 2 dimensions, got 2"),
        ({"dim": 1.0}, r"dim must index one of x's 2 dimensions"),
        ({"act": "gelu"}, r"act must be one of \['elu', 'linear'"),
        ({"impl": "fast"}, r"impl must be one of"),
        ({"x": torch.ones(2, 3, dtype=torch.float64), "b": torch.ones(3, dtype=torch.float64)},
         r"impl='triton' takes float32, float16 or bfloat16 x, got float64"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_inputs_name_the_argument(kwargs, match):
    args = {"x": torch.randn(2, 3), "b": torch.ones(3), "dim": 1, "act": "lrelu", "impl": "triton"} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        bias_act(**args)


def test_from_y_activations_have_no_second_derivative():
    assert set(FROM_Y_ACTS) == {a for a in ACTS if not activation_funcs[a].has_2nd_grad}
