"""upfirdn2d (EG3D's resampling op): the reference against a direct sum, the Triton kernel against the reference, the
EG3D wrappers and setup_filter, every order of gradient, the registered op, compile, the EG3D shim and errors."""

import itertools
import re
import sys
from pathlib import Path

import pytest
import torch

from export3d.kernels import downsample2d, filter2d, setup_filter, upfirdn2d, upfirdn2d_ref, upsample2d
from export3d.kernels.reference import upfirdn2d_out_size
from export3d.kernels.upfirdn2d import _get_filter_size, _parse_padding, _parse_scaling, backward_padding
from tests.kernels.helpers import assert_close_lowp

ROOT = Path(__file__).resolve().parents[2]
FILTERS = {  # asymmetric (and partly negative) taps so that a flipped or transposed filter cannot pass
    "none": None,
    "sep1": [0.7],
    "sep3": [0.1, 0.5, -0.25],
    "sep4": [0.2, 0.6, 0.3, -0.1],
    "sep8": [0.05, 0.1, 0.3, 0.2, 0.15, -0.05, 0.1, 0.02],
    "2d1x1": [[1.3]],
    "2d3x3": [[0.1, 0.2, -0.3], [0.4, 0.5, 0.05], [0.3, -0.1, 0.2]],
    "2d2x4": [[0.1, 0.2, 0.3, -0.4], [0.5, 0.25, 0.05, 0.15]],  # non-square: fh = 2, fw = 4
    "2d4x3": [[0.1, 0.2, 0.3], [-0.4, 0.5, 0.25], [0.05, 0.15, 0.35], [0.2, -0.1, 0.1]],
}
# (x shape, filter, up [x, y], down [x, y], padding [x0, x1, y0, y1], flip_filter, gain)
CASES = [
    ((1, 1, 1, 1), "none", (1, 1), (1, 1), (0, 0, 0, 0), False, 1.0),  # 1x1 identity
    ((1, 1, 1, 1), "2d3x3", (1, 1), (1, 1), (1, 1, 1, 1), False, 1.0),  # 1x1 input, filter bigger than it
    ((2, 3, 5, 7), "sep3", (1, 1), (1, 1), (1, 1, 1, 1), False, 1.0),  # plain filter, prime C, odd sizes
    ((1, 5, 6, 4), "2d3x3", (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0),  # upsample2d-like
    ((1, 2, 8, 6), "sep4", (1, 1), (2, 2), (1, 1, 1, 1), False, 1.0),  # downsample2d-like
    ((1, 3, 5, 7), "2d2x4", (3, 1), (1, 2), (1, -1, 2, 0), True, 1.5),  # up x only, down y only, a crop, flip
    ((1, 1, 7, 5), "2d4x3", (1, 4), (3, 1), (0, 2, -2, 3), False, -0.7),  # negative gain, crop on y0
    ((2, 1, 4, 6), "sep8", (4, 2), (2, 3), (3, 4, 3, 4), True, 0.9),  # 8-tap separable, every factor differs
    ((1, 2, 3, 3), "2d3x3", (2, 3), (4, 4), (-1, 3, 0, 2), False, 2.0),  # downsample more than upsampled
    ((1, 7, 2, 9), "sep1", (1, 2), (1, 1), (0, 0, 0, -1), False, 1.0),  # 1-tap separable (EG3D: f^2 as 1x1)
    ((1, 2, 9, 2), "2d1x1", (2, 1), (1, 3), (0, 1, -3, 0), True, 1.0),  # 1x1 2-D filter, only cropping in y
    ((1, 1, 3, 4), "sep3", (4, 4), (1, 1), (-5, -4, 2, -2), False, 16.0),  # heavy crops of the upsampled x
    ((2, 2, 6, 5), "2d2x4", (1, 1), (4, 1), (-1, 0, 0, -1), False, 1.0),  # crop before the filter, down 4 in x
    ((1, 3, 5, 3), "none", (3, 2), (2, 3), (1, 0, 0, 1), False, 3.0),  # f=None with resampling
]
MULTI_TILE = [  # output planes larger than one 32 x 64 tile
    ((1, 1, 19, 40), "sep4", (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0),
    ((1, 2, 70, 37), "2d3x3", (1, 1), (1, 2), (1, 1, 1, 1), False, 1.0),
]


def _ids(case):
    shape, f, up, down, pad, flip, gain = case
    return f"{'x'.join(map(str, shape))}-{f}-up{up[0]}{up[1]}-down{down[0]}{down[1]}-pad{'_'.join(map(str, pad))}" + (
        "-flip" if flip else "") + f"-g{gain}"  # fmt: skip


def _filter(name, device="cpu", dtype=torch.float32):
    f = FILTERS[name]
    return None if f is None else torch.tensor(f, dtype=dtype, device=device)


def _x(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2 + 0.5).to(device=device, dtype=dtype).requires_grad_(True)


def _dy(y, seed=1):
    return torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(device=y.device, dtype=y.dtype)


def _run(impl, x, f, up, down, pad, flip, gain, dy=None):
    y = upfirdn2d(x, f, up, down, pad, flip, gain, impl=impl)
    dy = _dy(y) if dy is None else dy
    (dx,) = torch.autograd.grad(y, x, dy)
    return y, dx, dy


def direct_sum(x, f, up, down, pad, flip, gain):
    """EG3D's semantics written as the sum they mean (float64): zero-stuff, pad / crop, convolve, keep every down-th."""
    N, C, H, W = x.shape
    f = torch.ones(1, 1, dtype=torch.float64) if f is None else f.double()
    f = torch.outer(f, f) if f.dim() == 1 else f
    w = f if flip else f.flip([0, 1])  # a convolution correlates with the flipped filter
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    fh, fw = w.shape
    Ho, Wo = (H * uy + py0 + py1 - fh) // dy + 1, (W * ux + px0 + px1 - fw) // dx + 1
    out = torch.zeros(N, C, Ho, Wo, dtype=torch.float64)
    for oy, ox, ky, kx in itertools.product(range(Ho), range(Wo), range(fh), range(fw)):
        sy, sx = oy * dy + ky - py0, ox * dx + kx - px0  # position in the zero-stuffed image
        if sy % uy == 0 and sx % ux == 0 and 0 <= sy // uy < H and 0 <= sx // ux < W:
            out[:, :, oy, ox] += w[ky, kx] * x[:, :, sy // uy, sx // ux].double()
    return out * gain


# ----------------------------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_reference_is_the_documented_sum(case):
    shape, fname, *args = case
    x, f = _x(shape, torch.float32, "cpu").detach(), _filter(fname)
    want = direct_sum(x, f, *args)
    got = upfirdn2d_ref(x.double(), None if f is None else f.double(), *args)
    assert got.shape == want.shape == (shape[0], shape[1], *upfirdn2d_out_size(
        shape[2], shape[3], *_get_filter_size(f)[::-1], args[0], args[1], args[2]))  # fmt: skip
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("case", CASES + MULTI_TILE, ids=_ids)
def test_fp32_matches_reference(case, device):
    shape, fname, *args = case
    x, f = _x(shape, torch.float32, device), _filter(fname, device)
    y, dx, dy = _run("triton", x, f, *args)
    y_ref, dx_ref, _ = _run("reference", x, f, *args, dy=dy)
    assert y.dtype == torch.float32 and y.is_contiguous() and dx.shape == x.shape
    scale = max(1.0, abs(args[-1]))
    torch.testing.assert_close(y, y_ref, atol=1e-5 * scale, rtol=1e-5)
    torch.testing.assert_close(dx, dx_ref, atol=1e-5 * scale, rtol=1e-5, msg=lambda m: f"dx: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", [CASES[3], CASES[5], CASES[7]], ids=_ids)
def test_low_precision_within_flash_attention_bound(case, dtype, device):
    """The interpreter only converts bf16 (loads and the final store), which is all the kernel does with it."""
    shape, fname, *args = case
    x16, f = _x(shape, dtype, device, seed=3), _filter(fname, device)
    x32 = x16.detach().float().requires_grad_(True)
    y, dx, dy16 = _run("triton", x16, f, *args)
    y16, dx16, _ = _run("reference", x16, f, *args, dy=dy16)
    y32, dx32, _ = _run("reference", x32, f, *args, dy=dy16.float())
    assert y.dtype == dtype and dx.dtype == dtype
    ulp = 2.0**-10 if dtype == torch.float16 else 2.0**-7
    assert_close_lowp(y, y16, y32, atol=ulp * max(1.0, y32.abs().max().item()), name="y")
    assert_close_lowp(dx, dx16, dx32, atol=ulp * max(1.0, dx32.abs().max().item()), name="dx")


def test_unseen_seeds_and_configurations(device):
    """Random sizes, factors, paddings (some negative) and filters the parametrised cases do not list."""
    gen = torch.Generator().manual_seed(2024)

    def rint(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    for trial in range(5):
        up, down = (rint(1, 4), rint(1, 4)), (rint(1, 4), rint(1, 4))
        sep = trial % 2 == 0
        fh, fw = (rint(1, 6),) * 2 if sep else (rint(1, 5), rint(1, 5))
        f = torch.rand(fw if sep else (fh, fw), generator=gen).to(device) - 0.3
        H, W = rint(1, 7), rint(1, 7)
        pad = [rint(-1, 3) for _ in range(4)]
        pad[1] = max(pad[1], fw - W * up[0] - pad[0])  # the padded image must hold the filter
        pad[3] = max(pad[3], fh - H * up[1] - pad[2])
        args = (up, down, tuple(pad), bool(trial % 3 == 1), 1.0 + trial / 4)
        x = _x((1, rint(1, 3), H, W), torch.float32, device, seed=100 + trial)
        y, dx, dy = _run("triton", x, f, *args)
        y_ref, dx_ref, _ = _run("reference", x, f, *args, dy=dy)
        msg = f"trial {trial}: {tuple(x.shape)} f={tuple(f.shape)} {args}"
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5, msg=lambda m, s=msg: f"{s}: {m}")
        torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=1e-5, msg=lambda m, s=msg: f"{s} dx: {m}")


# ----------------------------------------------------------------------------------------------- EG3D wrappers
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_wrappers_keep_eg3d_sizes_and_match_the_depthwise_conv_forms(impl, device):
    """setup_filter([1, 3, 3, 1]) is outer([1, 3, 3, 1]) / 64; upsample2d / downsample2d equal StyleGAN2's FIR
    resampling written as depthwise convolutions (the model's plain-PyTorch blocks before it used these ops)."""
    f = setup_filter([1, 3, 3, 1], device=device)
    assert f.shape == (4, 4)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], device=device)
    torch.testing.assert_close(f, torch.outer(taps, taps) / 64)
    x = _x((2, 3, 6, 5), torch.float32, device).detach()
    up = upsample2d(x, f, impl=impl)
    down = downsample2d(x[..., :4], f, impl=impl)
    assert up.shape == (2, 3, 12, 10) and down.shape == (2, 3, 3, 2)
    assert filter2d(x, f, impl=impl).shape == x.shape
    depthwise = f.expand(3, 1, 4, 4)  # [C, 1, 4, 4]
    want_up = torch.nn.functional.conv_transpose2d(x, depthwise * 4, stride=2, padding=1, groups=3)
    want_down = torch.nn.functional.conv2d(torch.nn.functional.pad(x[..., :4], (1, 1, 1, 1)), depthwise, stride=2,
                                           groups=3)  # fmt: skip
    torch.testing.assert_close(up, want_up, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(down, want_down, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fname", ["sep3", "sep8", "2d2x4", "none"])
@pytest.mark.parametrize("factor", [(2, 2), (3, 1), (1, 4)], ids=lambda f: f"{f[0]}x{f[1]}")
def test_wrappers_paddings_and_gains_are_eg3ds(factor, fname, device):
    """upsample2d / downsample2d / filter2d are upfirdn2d with EG3D's paddings and gains, user padding on top."""
    x, f = _x((1, 2, 6, 7), torch.float32, device).detach(), _filter(fname, device)
    fw, fh = _get_filter_size(f)
    (ux, uy), extra = factor, (1, -1, 0, 2)
    pad = [extra[0] + (fw + ux - 1) // 2, extra[1] + (fw - ux) // 2, extra[2] + (fh + uy - 1) // 2,
           extra[3] + (fh - uy) // 2]  # fmt: skip
    want = upfirdn2d(x, f, up=factor, padding=pad, gain=0.5 * ux * uy, impl="reference")
    torch.testing.assert_close(upsample2d(x, f, list(factor), extra, gain=0.5, impl="triton"), want)
    pad = [extra[0] + (fw - ux + 1) // 2, extra[1] + (fw - ux) // 2, extra[2] + (fh - uy + 1) // 2,
           extra[3] + (fh - uy) // 2]  # fmt: skip
    want = upfirdn2d(x, f, down=factor, padding=pad, flip_filter=True, impl="reference")
    torch.testing.assert_close(downsample2d(x, f, factor, extra, flip_filter=True, impl="triton"), want)
    pad = [extra[0] + fw // 2, extra[1] + (fw - 1) // 2, extra[2] + fh // 2, extra[3] + (fh - 1) // 2]
    want = upfirdn2d(x, f, padding=pad, gain=2.0, impl="reference")
    torch.testing.assert_close(filter2d(x, f, extra, gain=2.0, impl="triton"), want)


def test_setup_filter_follows_eg3d():
    t = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = setup_filter(t)
    assert f.shape == (4, 4) and f.dtype == torch.float32  # short 1-D filters become outer(f, f): EG3D's rule
    torch.testing.assert_close(f, torch.outer(t, t) / 64)
    assert torch.equal(t, torch.tensor([1.0, 3.0, 3.0, 1.0]))  # the caller's tensor is not normalised in place
    eight = list(range(1, 9))
    assert setup_filter(eight).shape == (8,)  # 8 taps or more stay separable
    torch.testing.assert_close(setup_filter(eight, normalize=False, gain=4.0), torch.arange(1.0, 9.0) * 2)  # gain**0.5
    assert setup_filter(eight, separable=False).shape == (8, 8)
    assert setup_filter([1, 2], separable=True).shape == (2,)
    torch.testing.assert_close(setup_filter([[1.0, 2.0], [3.0, 4.0]], normalize=False, flip_filter=True, gain=3.0),
                               torch.tensor([[12.0, 9.0], [6.0, 3.0]]))  # fmt: skip
    assert torch.equal(setup_filter(None), torch.ones(1, 1)) and torch.equal(setup_filter(2.0, normalize=False),
                                                                              torch.full((1, 1), 4.0))  # fmt: skip
    assert setup_filter([1, 2, 1], device="meta").device.type == "meta"
    with pytest.raises(ValueError, match=r"separable=True needs a 1-D filter"):
        setup_filter([[1.0, 2.0]], separable=True)
    with pytest.raises(ValueError, match=r"setup_filter: f must be a non-empty"):
        setup_filter([])


def test_eg3d_private_helpers():
    assert _parse_scaling(2) == (2, 2) and _parse_scaling([1, 3]) == (1, 3)
    assert _parse_padding(1) == (1, 1, 1, 1) and _parse_padding([1, -2]) == (1, 1, -2, -2)
    assert _parse_padding((0, 1, 2, 3)) == (0, 1, 2, 3)
    assert _get_filter_size(None) == (1, 1) and _get_filter_size(torch.ones(2, 5)) == (5, 2)
    assert _get_filter_size(torch.ones(7)) == (7, 7)


def test_eg3d_shim_from_the_docs(tmp_path, monkeypatch):
    """The two shim files docs/kernels.md gives for an EG3D checkout work with EG3D's call patterns."""
    text = (ROOT / "docs" / "kernels.md").read_text()
    blocks = dict(re.findall(r"```python\n# (torch_utils/ops/\w+\.py)\n(.*?)```", text, re.S))
    assert set(blocks) == {"torch_utils/ops/upfirdn2d.py", "torch_utils/ops/bias_act.py"}
    for path, body in blocks.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(body)
    (tmp_path / "torch_utils" / "__init__.py").write_text("")
    (tmp_path / "torch_utils" / "ops" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("torch_utils")]:
        monkeypatch.delitem(sys.modules, name)
    from torch_utils.ops import bias_act as ba  # noqa: I001 - the shim, as EG3D imports it
    from torch_utils.ops import upfirdn2d as ud
    from torch_utils.ops.upfirdn2d import _get_filter_size as gfs, _parse_padding as pp

    f = ud.setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 4, 8, 8)
    fw, fh = gfs(f)
    px0, px1, py0, py1 = pp(0)
    y = ud.upfirdn2d(x=x, f=f, down=2, padding=[px0 + 1, px1 + 1, py0 + 1, py1 + 1])  # conv2d_resample's call
    torch.testing.assert_close(y, downsample2d(x, f))
    assert ud.upsample2d(x, f).shape == (1, 4, 16, 16) and ud.filter2d(x, f).shape == x.shape
    b = torch.randn(4)
    z = ba.bias_act(x, b, act="lrelu", gain=ba.activation_funcs["lrelu"].def_gain, clamp=256)
    torch.testing.assert_close(z, torch.nn.functional.leaky_relu(x + b[:, None, None], 0.2) * 2**0.5)
    assert ud.upfirdn2d(x, f, impl="ref").shape == (1, 4, 5, 5)  # EG3D's impl names


# ----------------------------------------------------------------------------------------------- gradients
def test_backward_padding_is_the_adjoint(device):
    """<upfirdn2d(x), dy> == <x, upfirdn2d(dy; down, up, flipped f, backward_padding)> for random configurations."""
    gen = torch.Generator().manual_seed(5)
    for case in CASES[2:9]:
        shape, fname, up, down, pad, flip, gain = case
        f = _filter(fname, device)
        f = torch.ones(1, 1, device=device) if f is None else f
        x = torch.randn(shape, generator=gen).to(device)
        y = torch.ops.export3d.upfirdn2d_fwd(x, f, list(up), list(down), list(pad), flip, gain)
        dy = torch.randn(y.shape, generator=gen).to(device)
        p = backward_padding(shape[2:], y.shape[2:], f, up, down, pad)
        dx = torch.ops.export3d.upfirdn2d_fwd(dy, f, list(down), list(up), p, not flip, gain)
        assert dx.shape == x.shape, _ids(case)
        torch.testing.assert_close((y.double() * dy.double()).sum(), (x.double() * dx.double()).sum(),
                                   atol=1e-4, rtol=1e-5, msg=lambda m, c=case: f"{_ids(c)}: {m}")  # fmt: skip


@pytest.mark.parametrize("case", [CASES[3], CASES[5], CASES[7], CASES[12]], ids=_ids)
def test_reference_gradcheck_and_gradgradcheck_float64(case):
    shape, fname, *args = case
    x = _x(shape, torch.float64, "cpu").detach().requires_grad_(True)
    f = _filter(fname)
    assert torch.autograd.gradcheck(lambda t: upfirdn2d_ref(t, f, *args), (x,))
    assert torch.autograd.gradgradcheck(lambda t: upfirdn2d_ref(t, f, *args), (x,))
    assert torch.autograd.gradcheck(lambda t: upfirdn2d(t, f, *args), (x,))  # float64 runs the reference


@pytest.mark.parametrize("case", [CASES[5], CASES[7]], ids=_ids)
def test_double_backward_through_the_custom_op(case, device):
    """The gradient is the same op again, so it is differentiable: the gradient of <dx, v> with respect to dy is
    upfirdn2d(v) itself, computed by the kernel twice removed."""
    shape, fname, *args = case
    f = _filter(fname, device)
    results = []
    for impl in ("triton", "reference"):
        x = _x(shape, torch.float32, device)
        y = upfirdn2d(x, f, *args, impl=impl)
        dy = _dy(y).requires_grad_(True)
        (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
        v = _dy(dx, seed=7)
        (ddy,) = torch.autograd.grad(dx, dy, v)
        results.append((dx.detach(), ddy))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], upfirdn2d(_dy(_x(shape, torch.float32, device), seed=7), f, *args,
                                                        impl="reference"), atol=1e-5, rtol=1e-5)  # fmt: skip


def test_non_contiguous_inputs_and_expanded_grad(device):
    g = torch.Generator().manual_seed(3)
    big = torch.randn(2, 9, 3, 14, generator=g).to(device).requires_grad_(True)
    f = torch.tensor([0.2, 9.0, 0.5, 9.0, 0.3, 9.0, -0.1], device=device)[::2]  # [4], stride 2

    def go(impl):
        x = big.transpose(1, 2)[..., ::2]  # [2, 3, 9, 7], neither contiguous nor dense
        y = upsample2d(x, f, impl=impl) + downsample2d(x.contiguous(memory_format=torch.channels_last)
                                                            [..., :7, :], f, impl=impl).sum()  # fmt: skip
        (y * 0.5).sum().backward()  # the gradient reaching the ops is an expanded scalar
        out = [y.detach(), big.grad.clone()]
        big.grad = None
        return out

    for got, want in zip(go("triton"), go("reference"), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(0, 2, 3, 3), (2, 0, 3, 3), (1, 2, 0, 4), (1, 1, 3, 0)], ids=str)
def test_empty_inputs(shape, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    f = torch.ones(3, device=device)
    for impl in ("triton", "reference"):
        y = upfirdn2d(x, f, up=2, padding=[2, 2, 3, 1], impl=impl)
        want = upfirdn2d_out_size(shape[2], shape[3], 3, 3, 2, 1, (2, 2, 3, 1))
        assert y.shape == (shape[0], shape[1], *want) and not y.any()
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
        assert dx.shape == x.shape


def test_auto_dispatch_and_impl_aliases():
    x, f = _x((1, 2, 4, 5), torch.float32, "cpu").detach(), setup_filter([1, 2, 1])
    want = upfirdn2d_ref(x, f, 2, 1, 1)
    for impl in ("auto", "reference", "ref", "cuda"):  # on CPU tensors all four run the reference, bit for bit
        assert torch.equal(upfirdn2d(x, f, 2, 1, 1, impl=impl), want)


def test_opcheck(device):
    x = _x((1, 2, 3, 4), torch.float32, device)
    op = torch.ops.export3d.upfirdn2d_fwd.default
    torch.library.opcheck(op, (x, _filter("2d2x4", device), [2, 1], [1, 2], [1, 2, 0, -1], False, 2.0))
    torch.library.opcheck(op, (x, _filter("sep3", device), [1, 3], [2, 1], [2, 1, 1, 1], True, 1.0))


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_torch_compile_fullgraph_matches_eager(impl, device):
    torch._dynamo.reset()
    f = setup_filter([1, 3, 3, 1], device=device)

    def block(x):
        y = downsample2d(upsample2d(x * 2.0, f, impl=impl).relu(), f, impl=impl)
        return filter2d(y, f, impl=impl).square().mean()

    x = _x((1, 3, 5, 6), torch.float32, device)
    eager = block(x)
    (g_eager,) = torch.autograd.grad(eager, x)
    compiled = torch.compile(block, fullgraph=True)(x)
    (g_comp,) = torch.autograd.grad(compiled, x)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_comp, g_eager, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x": torch.randn(2, 3, 4)}, r"x must have 4 dimensions"),
        ({"x": torch.ones(1, 1, 4, 4, dtype=torch.int64)}, r"x must be float32, float16, bfloat16 or float64"),
        ({"x": [1.0]}, r"x must be a torch.Tensor"),
        ({"f": torch.ones(2, 2, 2)}, r"f must be a non-empty \[taps\] or \[fh, fw\] filter"),
        ({"f": torch.ones(0)}, r"f must be a non-empty"),
        ({"f": torch.ones(3, dtype=torch.int32)}, r"f must be a floating-point filter"),
        ({"f": [1.0, 2.0]}, r"f must be a torch.Tensor or None \(see setup_filter\)"),
        ({"f": torch.ones(3, device="meta")}, r"f is on meta but x is on cpu"),
        ({"f": torch.ones(3, requires_grad=True)}, r"f must not require grad"),
        ({"up": 0}, r"up must be >= 1"),
        ({"down": [2, 0]}, r"down must be >= 1"),
        ({"up": [1, 2, 3]}, r"up must be an int or a pair \[x, y\] of ints"),
        ({"down": 1.5}, r"down must be an int or a pair"),
        ({"padding": [1, 2, 3]}, r"padding must be an int, \[x, y\] or \[x0, x1, y0, y1\]"),
        ({"padding": -3}, r"the upsampled, padded x \(-2 x -2\) is smaller than the filter f \(3 x 3\)"),
        ({"gain": "2"}, r"gain must be a real number"),
        ({"impl": "fast"}, r"impl must be one of"),
        ({"x": torch.ones(1, 1, 4, 4, dtype=torch.float64)}, r"impl='triton' takes float32, float16 or bfloat16 x"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_inputs_name_the_argument(kwargs, match):
    args = {"x": torch.randn(1, 2, 4, 4), "f": torch.ones(3), "impl": "triton"} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        upfirdn2d(**args)
