"""pixel_shuffle_lowpass: the Triton kernels against the reference, the registered ops, compile and errors."""

import pytest
import torch
import torch.nn.functional as F

from export3d.kernels import default_lowpass_taps, pixel_shuffle_lowpass, pixel_shuffle_lowpass_ref
from export3d.kernels.pixel_shuffle_lowpass import _default_taps
from tests.kernels.helpers import assert_close_lowp

TAPS = {  # custom taps are asymmetric (and partly negative) so that a flipped filter cannot pass
    "default": None,
    "k1": [0.7],
    "k3": [0.1, 0.5, 0.25],
    "k5": [0.05, 0.3, 0.4, 0.15, -0.1],
    "k7": [0.02, 0.1, 0.3, 0.35, 0.12, 0.08, -0.05],
}
SHAPES = [  # (B, C, H, W) of the un-shuffled input is [B, C*f*f, H, W]
    (1, 1, 3, 5),  # B = 1, C = 1, odd sizes, H != W
    (1, 3, 4, 7),  # C prime, H != W
    (2, 1, 2, 1),  # B = 2; one input column per channel: most taps read padding
]
MULTI_TILE = [(2, 1, 17, 35), (4, 1, 9, 17)]  # (factor, C, H, W): output planes larger than one 32 x 64 tile


def _taps(name, device, dtype=torch.float32):
    t = TAPS[name]
    return None if t is None else torch.tensor(t, dtype=dtype, device=device)


def _x(B, C, H, W, factor, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C * factor * factor, H, W, generator=g) * 2.0 + 0.5
    return x.to(device=device, dtype=dtype).requires_grad_(True)


def _dy(y, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(y.shape, generator=g).to(device=y.device, dtype=y.dtype)


def _run(fn, x, factor, taps, dy=None):
    y = fn(x, factor, taps)
    dy = _dy(y) if dy is None else dy
    (dx,) = torch.autograd.grad(y, x, dy)
    return y, dx, dy


def _triton(x, factor, taps):
    return pixel_shuffle_lowpass(x, factor, taps, impl="triton")


def _check_fp32(B, C, H, W, factor, taps_name, device, seed=0):
    x = _x(B, C, H, W, factor, torch.float32, device, seed)
    taps = _taps(taps_name, device)
    y, dx, dy = _run(_triton, x, factor, taps)
    y_ref, dx_ref, _ = _run(pixel_shuffle_lowpass_ref, x, factor, taps, dy)
    assert y.shape == (B, C, H * factor, W * factor) and y.dtype == torch.float32 and y.is_contiguous()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=1e-5, msg=lambda m: f"dx: {m}")


@pytest.mark.parametrize("taps_name", list(TAPS))
@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp32_matches_reference(shape, factor, taps_name, device):
    _check_fp32(*shape, factor, taps_name, device)


@pytest.mark.parametrize("taps_name", ["default", "k3"])
@pytest.mark.parametrize("case", MULTI_TILE, ids=lambda c: "f{}-{}x{}x{}".format(*c))
def test_fp32_several_tiles(case, taps_name, device):
    factor, C, H, W = case
    _check_fp32(1, C, H, W, factor, taps_name, device, seed=5)


@pytest.mark.parametrize(
    "case",
    [(2, 1, 4, 7, 2, "default"), (1, 1, 3, 5, 4, "k7"), (1, 3, 5, 3, 2, "k3"), (1, 1, 2, 3, 4, "k1")],
    ids=lambda c: "{}x{}x{}x{}-f{}-{}".format(*c),
)
def test_fp16_within_flash_attention_bound(case, device):
    B, C, H, W, factor, taps_name = case
    x16 = _x(B, C, H, W, factor, torch.float16, device, seed=3)
    x32 = x16.detach().float().requires_grad_(True)
    taps = _taps(taps_name, device)
    y, dx, dy16 = _run(_triton, x16, factor, taps)
    y16, dx16, _ = _run(pixel_shuffle_lowpass_ref, x16, factor, taps, dy16)
    y32, dx32, _ = _run(pixel_shuffle_lowpass_ref, x32, factor, taps, dy16.float())
    assert y.dtype == torch.float16 and dx.dtype == torch.float16
    assert_close_lowp(y, y16, y32, atol=1e-3, name="y")
    assert_close_lowp(dx, dx16, dx32, atol=1e-3, name="dx")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("factor", [2, 4])
def test_identity_taps_is_exactly_pixel_shuffle(factor, dtype, device):
    x = _x(2, 3, 5, 4, factor, dtype, device, seed=11)
    one = torch.ones(1, device=device)
    y, dx, dy = _run(_triton, x, factor, one)
    assert torch.equal(y, F.pixel_shuffle(x.detach(), factor))
    assert torch.equal(dx, F.pixel_unshuffle(dy, factor))


def test_pixel_shuffle_channel_order_is_the_documented_one():
    """The index formula the kernels implement is PyTorch's pixel_shuffle order."""
    f, C, H, W = 2, 2, 3, 4
    x = torch.arange(C * f * f * H * W, dtype=torch.float32).view(1, C * f * f, H, W)
    want = torch.empty(1, C, H * f, W * f)
    for c in range(C):
        for y in range(H * f):
            for xx in range(W * f):
                want[0, c, y, xx] = x[0, c * f * f + (y % f) * f + (xx % f), y // f, xx // f]
    assert torch.equal(F.pixel_shuffle(x, f), want)


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("factor", [2, 4])
def test_impulse_response_is_a_correlation(factor, impl, device):
    """A single input pixel spreads as out[Y - ky + K//2, X - kx + K//2] = taps[ky] * taps[kx]."""
    C, H, W = 2, 3, 4
    taps = torch.tensor([1.0, 2.0, 3.0], device=device)
    c, sy, sx, iy, ix = 1, factor - 1, 0, 1, 2
    x = torch.zeros(1, C * factor * factor, H, W, device=device)
    x[0, c * factor * factor + sy * factor + sx, iy, ix] = 1.0
    Y, X = iy * factor + sy, ix * factor + sx  # where the impulse lands in the shuffled grid
    want = torch.zeros(1, C, H * factor, W * factor, device=device)
    for ky in range(3):
        for kx in range(3):
            want[0, c, Y - ky + 1, X - kx + 1] = taps[ky] * taps[kx]
    got = pixel_shuffle_lowpass(x, factor, taps, impl=impl)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("shape", [(0, 2, 3, 3), (2, 0, 3, 3), (1, 1, 0, 5), (1, 2, 3, 0)], ids=str)
def test_empty_inputs(shape, factor, device):
    B, C, H, W = shape
    x = torch.randn(B, C * factor * factor, H, W, device=device, requires_grad=True)
    y = pixel_shuffle_lowpass(x, factor, impl="triton")
    assert y.shape == (B, C, H * factor, W * factor)
    assert torch.equal(y, pixel_shuffle_lowpass_ref(x, factor))
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert dx.shape == x.shape


def test_unseen_seeds_and_shapes(device):
    """Random shapes, factors, tap counts and seeds the parametrised cases do not list."""
    gen = torch.Generator().manual_seed(4321)
    for trial in range(4):
        B, C = (int(torch.randint(1, 3, (1,), generator=gen)) for _ in range(2))
        H, W = (int(torch.randint(1, 10, (1,), generator=gen)) for _ in range(2))
        factor = (2, 4)[trial % 2]
        K = 2 * int(torch.randint(0, 4, (1,), generator=gen)) + 1
        taps_dtype = torch.float16 if trial == 3 else torch.float32  # taps may be of another float dtype
        taps = (torch.rand(K, generator=gen) - 0.2).to(device=device, dtype=taps_dtype)
        x = _x(B, C, H, W, factor, torch.float32, device, seed=200 + trial)
        y, dx, dy = _run(_triton, x, factor, taps)
        y_ref, dx_ref, _ = _run(pixel_shuffle_lowpass_ref, x, factor, taps, dy)
        msg = f"trial {trial}: B={B} C={C} H={H} W={W} f={factor} K={K}"
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5, msg=lambda m, s=msg: f"{s}: {m}")
        torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=1e-5, msg=lambda m, s=msg: f"{s} dx: {m}")


def test_non_contiguous_inputs_and_expanded_grad(device):
    """A permuted and a sliced x, strided taps, and the stride-0 gradient of ``.sum()``."""
    g = torch.Generator().manual_seed(7)
    factor, C, H, W = 2, 2, 5, 6
    x_big = torch.randn(2, H, C * factor * factor, 2 * W, generator=g).to(device).requires_grad_(True)
    taps_big = torch.tensor([0.1, 9.0, 0.6, 9.0, 0.3], device=device)

    def go(impl):
        x = x_big.transpose(1, 2)[..., ::2]  # [B, C*f*f, H, W], neither contiguous nor dense
        assert not x.is_contiguous()
        taps = taps_big[::2]  # [3], stride 2
        y = pixel_shuffle_lowpass(x, factor, taps, impl=impl)
        (y * 0.5).sum().backward()  # the gradient reaching the op is an expanded scalar
        out = [y.detach(), x_big.grad.clone()]
        x_big.grad = None
        return out

    for got, want in zip(go("triton"), go("reference"), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_taps_get_no_gradient_and_default_taps_are_cached(device):
    taps = torch.tensor([0.2, 0.5, 0.3], device=device, requires_grad=True)
    x = _x(1, 1, 3, 3, 2, torch.float32, device)
    pixel_shuffle_lowpass(x, 2, taps, impl="triton").sum().backward()
    assert taps.grad is None and x.grad is not None
    first = _default_taps(x.device)
    assert _default_taps(x.device) is first  # computed on the device once, then reused
    torch.testing.assert_close(first, default_lowpass_taps(device=device), atol=0, rtol=0)


def test_backward_is_the_adjoint_of_forward(device):
    """<op(x), dy> == <x, op^T(dy)>: the backward op is the exact transpose, default and custom taps."""
    g = torch.Generator().manual_seed(9)
    for factor, taps in ((2, None), (4, torch.tensor([0.3, -0.2, 0.9, 0.1, 0.4]))):
        taps = None if taps is None else taps.to(device)
        x = torch.randn(1, 2 * factor * factor, 3, 4, generator=g).to(device)
        dy = torch.randn(1, 2, 3 * factor, 4 * factor, generator=g).to(device)
        lhs = (torch.ops.export3d.pixel_shuffle_lowpass_fwd(x, factor, taps).double() * dy.double()).sum()
        rhs = (x.double() * torch.ops.export3d.pixel_shuffle_lowpass_bwd(dy, factor, taps).double()).sum()
        torch.testing.assert_close(lhs, rhs, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("factor", [2, 4])
def test_reference_gradcheck_float64(factor):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, factor * factor, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    taps = torch.tensor([0.1, 0.5, 0.25], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: pixel_shuffle_lowpass_ref(t, factor, taps), (x,))
    assert torch.autograd.gradcheck(lambda t: pixel_shuffle_lowpass_ref(t, factor), (x,))


def test_auto_dispatch_is_reference_on_cpu():
    x = _x(1, 2, 3, 4, 2, torch.float32, "cpu")
    assert torch.equal(pixel_shuffle_lowpass(x), pixel_shuffle_lowpass_ref(x))  # auto on CPU -> the reference


def test_opcheck(device):
    x = _x(1, 2, 2, 3, 2, torch.float32, device)
    taps = torch.tensor([0.1, 0.5, 0.25], device=device)
    torch.library.opcheck(torch.ops.export3d.pixel_shuffle_lowpass_fwd.default, (x, 2, None))
    torch.library.opcheck(torch.ops.export3d.pixel_shuffle_lowpass_fwd.default, (x, 2, taps))
    dy = torch.randn(1, 1, 8, 4, device=device)
    torch.library.opcheck(torch.ops.export3d.pixel_shuffle_lowpass_bwd.default, (dy, 4, taps))


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_torch_compile_fullgraph_matches_eager(impl, device):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    taps = torch.tensor([0.1, 0.6, 0.3], device=device)

    def head(feat):
        up = pixel_shuffle_lowpass(feat * 2.0, 2, impl=impl)  # default taps
        return pixel_shuffle_lowpass(up.repeat(1, 4, 1, 1), 2, taps, impl=impl).square().mean()

    feat = torch.randn(1, 8, 3, 4, generator=g).to(device).requires_grad_(True)
    eager = head(feat)
    g_eager = torch.autograd.grad(eager, feat)
    compiled = torch.compile(head, fullgraph=True)(feat)
    g_comp = torch.autograd.grad(compiled, feat)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_comp, g_eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x": torch.randn(8, 3, 3)}, r"x must have 4 dimensions"),
        ({"x": torch.randn(1, 6, 3, 3)}, r"x must have a channel count divisible by factor\*\*2 = 4"),
        ({"x": torch.randn(1, 8, 3, 3), "factor": 4}, r"divisible by factor\*\*2 = 16"),
        ({"factor": 3}, r"factor must be one of \(2, 4\), got 3"),
        ({"factor": 1}, r"factor must be one of \(2, 4\), got 1"),
        ({"factor": 2.0}, r"factor must be one of \(2, 4\), got 2.0"),
        ({"taps": torch.ones(4)}, r"taps must have an odd number of elements, got 4"),
        ({"taps": torch.ones(0)}, r"taps must have an odd number of elements, got 0"),
        ({"taps": torch.ones(1, 3)}, r"taps must have 1 dimensions"),
        ({"taps": torch.ones(3, device="meta")}, r"taps is on meta but x is on cpu"),
        ({"x": torch.ones(1, 4, 3, 3, dtype=torch.int64)}, r"x must be float32, float16 or bfloat16"),
        ({"taps": torch.ones(3, dtype=torch.int32)}, r"taps must be float32, float16 or bfloat16"),
        ({"impl": "cuda"}, r"impl must be one of"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_inputs_name_the_argument(kwargs, match):
    args = {"x": torch.randn(1, 4, 3, 3), "factor": 2, "taps": None, "impl": "triton"} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        pixel_shuffle_lowpass(**args)
