"""EAdaLN: the Triton kernels against the reference, the registered op, compile and errors."""

import pytest
import torch

from export3d.kernels import eadaln, eadaln_ref
from export3d.kernels.eadaln import MAX_D
from export3d.model.layers import EAdaLN
from tests.kernels.helpers import assert_close_lowp

SHAPES = [  # (B, L, D): size-1, primes, non-powers of two, a power of two, and empty L
    (1, 1, 1),
    (3, 37, 17),
    (1, 37, 96),
    (3, 1, 1000),
    (1, 5, 1024),
    (3, 0, 96),
    (2, 11, 1),
]


def _inputs(B, L, D, affine, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, offset=0.0):
        t = torch.randn(*shape, generator=g) * scale + offset
        return t.to(device=device, dtype=dtype).requires_grad_(True)

    x = rnd(B, L, D, scale=2.0, offset=0.5)
    scale, shift = rnd(B, D, scale=0.5), rnd(B, D, scale=0.5)
    weight = rnd(D, scale=0.3, offset=1.0) if affine else None
    bias = rnd(D, scale=0.3) if affine else None
    return x, scale, shift, weight, bias


def _run(fn, inputs, dy):
    x, scale, shift, weight, bias = inputs
    y = fn(x, scale, shift, weight, bias)
    leaves = [t for t in inputs if t is not None]
    grads = torch.autograd.grad(y, leaves, dy)
    return y, grads


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp32_matches_reference(shape, affine, device):
    B, L, D = shape
    inputs = _inputs(B, L, D, affine, torch.float32, device)
    dy = torch.randn(B, L, D, generator=torch.Generator().manual_seed(1)).to(device)
    y, grads = _run(lambda *a: eadaln(*a, impl="triton"), inputs, dy)
    y_ref, grads_ref = _run(eadaln_ref, inputs, dy)
    # D = 1 normalises to exactly zero with rstd = 1/sqrt(eps): gradients there are rounding noise * 1e3.
    atol = 1e-4 if D > 1 else 1e-2
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    names = ["dx", "dscale", "dshift", "dweight", "dbias"]
    for name, got, want in zip(names, grads, grads_ref, strict=False):
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("shape", [(3, 37, 17), (1, 5, 1024), (2, 7, 1000)], ids=lambda s: "x".join(map(str, s)))
def test_fp16_within_flash_attention_bound(shape, device):
    B, L, D = shape
    inputs16 = _inputs(B, L, D, True, torch.float16, device, seed=3)
    inputs32 = [t.detach().float().requires_grad_(True) for t in inputs16]
    dy16 = torch.randn(B, L, D, generator=torch.Generator().manual_seed(4)).to(device, torch.float16)
    y, grads = _run(lambda *a: eadaln(*a, impl="triton"), inputs16, dy16)
    y16, grads16 = _run(eadaln_ref, inputs16, dy16)
    y32, grads32 = _run(eadaln_ref, inputs32, dy16.float())
    assert y.dtype == torch.float16
    assert_close_lowp(y, y16, y32, atol=1e-3, name="y")
    for name, got, lo, hi in zip(["dx", "dscale", "dshift", "dweight", "dbias"], grads, grads16, grads32, strict=True):
        assert got.dtype == torch.float16, name
        assert_close_lowp(got, lo, hi, atol=1e-2, name=name)


def test_unseen_seeds_and_shapes(device):
    """Random shapes and seeds the parametrised cases do not list."""
    gen = torch.Generator().manual_seed(1234)
    for trial in range(4):
        B = int(torch.randint(1, 4, (1,), generator=gen))
        L = int(torch.randint(1, 20, (1,), generator=gen))
        D = int(torch.randint(2, 700, (1,), generator=gen))
        affine = bool(trial % 2)
        inputs = _inputs(B, L, D, affine, torch.float32, device, seed=100 + trial)
        dy = torch.randn(B, L, D, generator=gen).to(device)
        y, grads = _run(lambda *a: eadaln(*a, impl="triton"), inputs, dy)
        y_ref, grads_ref = _run(eadaln_ref, inputs, dy)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        for got, want in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_non_contiguous_inputs_and_expanded_grad(device):
    """Strided x, scale/shift sliced from one projection, and the stride-0 gradient of ``.sum()``."""
    B, L, D = 2, 9, 40
    g = torch.Generator().manual_seed(7)
    x_big = torch.randn(B, D, L, generator=g).to(device).requires_grad_(True)
    mod = torch.randn(B, 2 * D, generator=g).to(device).requires_grad_(True)
    w = torch.randn(2 * D, generator=g).to(device).requires_grad_(True)

    def go(impl):
        x = x_big.transpose(1, 2)  # [B, L, D], not contiguous
        scale, shift = mod.chunk(2, dim=-1)  # strided views
        weight = w[::2]  # stride 2
        y = eadaln(x, scale, shift, weight, None, impl=impl)
        (y * 0.5).sum().backward()  # the gradient reaching the op is an expanded scalar
        out = [y.detach(), x_big.grad.clone(), mod.grad.clone(), w.grad.clone()]
        x_big.grad = mod.grad = w.grad = None
        return out

    for got, want in zip(go("triton"), go("reference"), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_reference_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    B, L, D = 2, 3, 5
    x = torch.randn(B, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(B, D, generator=g, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(B, D, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(D, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(D, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: eadaln_ref(*a, eps=1e-6), (x, scale, shift, weight, bias))


def test_auto_dispatch_is_reference_on_cpu():
    x, scale, shift, _, _ = _inputs(1, 2, 8, False, torch.float32, "cpu")
    y = eadaln(x, scale, shift)  # auto on CPU tensors -> the reference, bit for bit
    assert torch.equal(y, eadaln_ref(x, scale, shift))


def test_opcheck(device):
    x, scale, shift, weight, bias = _inputs(2, 5, 24, True, torch.float32, device)
    torch.library.opcheck(torch.ops.export3d.eadaln_fwd.default, (x, scale, shift, weight, bias, 1e-6))
    torch.library.opcheck(torch.ops.export3d.eadaln_fwd.default, (x, scale, shift, None, None, 1e-5))


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_torch_compile_fullgraph_matches_eager(impl, device):
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = EAdaLN(dim=24, cond_dim=10, affine=True, impl=impl).to(device)
    torch.nn.init.normal_(layer.modulation[1].weight, std=0.1)  # make the modulation do something
    lin = torch.nn.Linear(24, 24).to(device)

    def block(x, cond):
        return lin(layer(x, cond)).square().mean()

    x = torch.randn(3, 7, 24, device=device, requires_grad=True)
    cond = torch.randn(3, 10, device=device)
    params = [x, *layer.parameters(), *lin.parameters()]
    eager = block(x, cond)
    g_eager = torch.autograd.grad(eager, params)
    compiled = torch.compile(block, fullgraph=True)(x, cond)
    g_comp = torch.autograd.grad(compiled, params)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_comp, g_eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_module_starts_as_layernorm_and_learns_the_condition():
    torch.manual_seed(0)
    layer = EAdaLN(dim=16, cond_dim=6, affine=False)
    x, c1, c2 = torch.randn(2, 5, 16), torch.randn(2, 6), torch.randn(2, 6)
    plain = torch.nn.functional.layer_norm(x, (16,), eps=1e-6)
    torch.testing.assert_close(layer(x, c1), plain)  # zero-initialised modulation: no effect
    torch.testing.assert_close(layer(x, c2), plain)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    loss = (layer(x, c1) - torch.randn(2, 5, 16)).square().mean()
    loss.backward()
    opt.step()
    assert not torch.allclose(layer(x, c1), layer(x, c2))  # after one step the condition matters


# ------------------------------------------------------------------------------------------- errors
def _ok(device="cpu"):
    return torch.randn(2, 3, 8, device=device), torch.randn(2, 8, device=device), torch.randn(2, 8, device=device)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x, s, t: (x[0], s, t), r"x must have 3 dimensions"),
        (lambda x, s, t: (x, s[:1], t), r"scale must have shape \[2, 8\]"),
        (lambda x, s, t: (x, s, t[:, :4]), r"shift must have shape \[2, 8\]"),
        (lambda x, s, t: (x.long(), s, t), r"x must be float32, float16 or bfloat16"),
        (lambda x, s, t: (x, s.double(), t), r"scale must be float32"),
        (lambda x, s, t: (x, s.half(), t), r"scale has dtype torch.float16 but x has torch.float32"),
        (lambda x, s, t: (x, s.to("meta"), t), r"scale is on meta but x is on cpu"),
        (lambda x, s, t: (x[..., :0], s[:, :0], t[:, :0]), r"non-empty last dimension"),
    ],
)
def test_bad_inputs_name_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        eadaln(*make(*_ok()))


def test_bad_weight_impl_and_eps():
    x, s, t = _ok()
    with pytest.raises(ValueError, match=r"weight must have shape \[8\]"):
        eadaln(x, s, t, weight=torch.ones(7))
    with pytest.raises(ValueError, match=r"impl must be one of"):
        eadaln(x, s, t, impl="cuda")
    with pytest.raises(ValueError, match=r"eps must be > 0"):
        eadaln(x, s, t, eps=0.0)
    big = torch.zeros(1, 1, MAX_D + 1)
    with pytest.raises(ValueError, match=r"impl='triton' takes D <= 8192"):
        eadaln(big, torch.zeros(1, MAX_D + 1), torch.zeros(1, MAX_D + 1), impl="triton")
