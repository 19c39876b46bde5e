"""triplane_sample: the Triton kernels against the reference, the registered ops, compile and errors."""

import importlib
import math

import pytest
import torch

from export3d.kernels import triplane_sample, triplane_sample_ref
from export3d.kernels.utils import saved_tensor_bytes
from tests.kernels.helpers import assert_close_lowp

# the module, not the function of the same name that export3d.kernels re-exports
ts_mod = importlib.import_module("export3d.kernels.triplane_sample")

SHAPES = [  # (B, N, C, H, W): size 1, primes, N not a multiple of BLOCK_N, H != W, empty N
    (1, 1, 1, 1, 1),
    (2, 37, 32, 9, 13),  # N >= H*W/4: gathers from the channel-last copy
    (2, 5, 32, 16, 16),  # few points: gathers in place from [C, H, W]
    (1, 131, 3, 16, 5),
    (1, 257, 1, 4, 11),  # N > BLOCK_N = 128: several programs
    (2, 41, 64, 6, 7),
    (2, 13, 17, 3, 5),  # C not a power of two: masked channels
    (2, 0, 32, 8, 8),
]


def _ids(shape):
    return "x".join(map(str, shape))


def _inputs(B, N, C, H, W, dtype=torch.float32, device="cpu", seed=0, box_warp=1.0, spread=1.3):
    """Planes ~ N(0, 1) and points uniform in ``spread`` times the box (so some fade out or fall outside)."""
    g = torch.Generator().manual_seed(seed)
    planes = torch.randn(B, 3, C, H, W, generator=g)
    coords = (torch.rand(B, N, 3, generator=g) - 0.5) * (spread * box_warp)
    return (
        planes.to(device=device, dtype=dtype).requires_grad_(True),
        coords.to(device=device, dtype=dtype).requires_grad_(True),
    )


def _run(fn, planes, coords, dy, **kw):
    y = fn(planes, coords, **kw)
    leaves = [t for t in (planes, coords) if t.requires_grad]
    return y, torch.autograd.grad(y, leaves, dy)


def _triton(planes, coords, **kw):
    return triplane_sample(planes, coords, impl="triton", **kw)


def _check_fp32(planes, coords, axes, box_warp=1.0, seed=1):
    B, N, C = planes.shape[0], coords.shape[1], planes.shape[2]
    dy = torch.randn(B, N, C, generator=torch.Generator().manual_seed(seed)).to(planes.device)
    y, grads = _run(_triton, planes, coords, dy, axes=axes, box_warp=box_warp)
    y_ref, grads_ref = _run(triplane_sample_ref, planes, coords, dy, axes=axes, box_warp=box_warp)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    names = [n for n, t in (("dplanes", planes), ("dcoords", coords)) if t.requires_grad]
    for name, got, want in zip(names, grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    return y


@pytest.mark.parametrize("axes", ["xyz", "eg3d"])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_fp32_matches_reference(shape, axes, device):
    planes, coords = _inputs(*shape, device=device)
    _check_fp32(planes, coords, axes)


@pytest.mark.parametrize("box_warp", [0.5, 2.0])
def test_box_warp(box_warp, device):
    planes, coords = _inputs(2, 29, 8, 7, 10, device=device, box_warp=box_warp, seed=5)
    _check_fp32(planes, coords, "eg3d", box_warp=box_warp)


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((2, 37, 32, 9, 13), torch.float16),
        ((1, 23, 3, 5, 12), torch.float16),
        ((2, 11, 64, 4, 6), torch.float16),
        ((2, 29, 32, 7, 6), torch.bfloat16),  # the interpreter only converts bf16, which is all the kernels do
    ],
    ids=lambda v: _ids(v) if isinstance(v, tuple) else str(v).removeprefix("torch."),
)
def test_low_precision_within_flash_attention_bound(shape, dtype, device):
    planes16, coords16 = _inputs(*shape, dtype=dtype, device=device, seed=3)
    planes32 = planes16.detach().float().requires_grad_(True)
    coords32 = coords16.detach().float().requires_grad_(True)
    B, N, C = shape[:3]
    dy16 = torch.randn(B, N, C, generator=torch.Generator().manual_seed(4)).to(device, dtype)
    y, grads = _run(_triton, planes16, coords16, dy16, axes="xyz")
    y16, grads16 = _run(triplane_sample_ref, planes16, coords16, dy16, axes="xyz")
    y32, grads32 = _run(triplane_sample_ref, planes32, coords32, dy16.float(), axes="xyz")
    assert y.dtype == dtype
    ulp = 2.0**-10 if dtype == torch.float16 else 2.0**-7
    assert_close_lowp(y, y16, y32, atol=ulp, name="y")
    for name, got, lo, hi in zip(["dplanes", "dcoords"], grads, grads16, grads32, strict=True):
        assert got.dtype == dtype, name
        # one ulp at the gradient's scale: the kernel and PyTorch may round a near-tie differently
        assert_close_lowp(got, lo, hi, atol=ulp * max(1.0, hi.abs().max().item()), name=name)


def test_unseen_seeds_and_shapes(device):
    """Random shapes, seeds, axes and box sizes the parametrised cases do not list."""
    gen = torch.Generator().manual_seed(4321)

    def rint(lo, hi):
        return int(torch.randint(lo, hi, (1,), generator=gen))

    for trial in range(4):
        B, N, C, H, W = rint(1, 3), rint(1, 90), rint(1, 65), rint(1, 12), rint(1, 12)
        box_warp = float(torch.empty(1).uniform_(0.5, 3.0, generator=gen))
        axes = ("xyz", "eg3d")[trial % 2]
        planes, coords = _inputs(B, N, C, H, W, device=device, seed=200 + trial, box_warp=box_warp)
        _check_fp32(planes, coords, axes, box_warp=box_warp, seed=300 + trial)


@pytest.mark.parametrize("threshold", [0.0, math.inf], ids=["channel_last_copy", "in_place"])
def test_both_gather_layouts(threshold, monkeypatch, device):
    """The same inputs through the channel-last copy and through in-place [C, H, W] gathers."""
    monkeypatch.setattr(ts_mod, "_CHANNEL_LAST_MIN_POINTS_PER_TEXEL", threshold)
    planes, coords = _inputs(2, 19, 32, 6, 9, device=device, seed=11)
    src = ts_mod._gather_planes(planes.detach(), coords.shape[1])
    assert (src.stride(2) == 1) == (threshold == 0.0)
    _check_fp32(planes, coords, "xyz")


def test_vector_width_promise():
    """VEC > 1 only where the channel-last run of every texel really is VEC-aligned (a wrong promise is UB)."""

    def hwc(C, dtype=torch.float32, pad=0):
        t = torch.zeros(2, 3, 4, 5, C + pad, dtype=dtype)[..., :C]
        return t.permute(0, 1, 4, 2, 3)

    assert ts_mod._vec(hwc(32)) == 4
    assert ts_mod._vec(hwc(32, torch.float16)) == 8
    assert ts_mod._vec(hwc(2)) == 2
    assert ts_mod._vec(hwc(3)) == 1
    assert ts_mod._vec(hwc(30, pad=2)) == 4  # strides of a padded buffer, not C, decide
    assert ts_mod._vec(hwc(8)[:, :, 1:]) == 1  # channels 1..7: every run starts one element off
    assert ts_mod._vec(torch.zeros(2, 3, 32, 4, 5)) == 1  # [C, H, W]: no contiguity across channels
    assert ts_mod._vec(hwc(1)) == 1


def test_non_contiguous_inputs_and_expanded_grad(device):
    """Strided planes and coords, channel-last planes, a batch-expanded plane, and ``.sum()``'s stride-0 grad."""
    g = torch.Generator().manual_seed(7)
    B, N, C, H, W = 2, 23, 12, 7, 5
    base_hwc = torch.randn(B, 3, H, W, C, generator=g).to(device).requires_grad_(True)
    base_wide = torch.randn(1, 3, 2 * C, W, H, generator=g).to(device).requires_grad_(True)
    base_coords = ((torch.rand(B, 4, N, generator=g) - 0.5) * 1.2).to(device).requires_grad_(True)
    views = {
        "channel_last": lambda: base_hwc.permute(0, 1, 4, 2, 3),  # C stride 1: read in place with vectors
        "strided_expanded": lambda: base_wide[:, :, ::2].transpose(3, 4).expand(B, -1, -1, -1, -1),
    }
    for name, make_planes in views.items():

        def go(impl, make_planes=make_planes):
            coords = base_coords[:, 1:].transpose(1, 2)  # [B, N, 3], strides (4N, 1, N)
            y = triplane_sample(make_planes(), coords, axes="eg3d", impl=impl)
            (y * 0.5).sum().backward()  # the gradient reaching the op is an expanded scalar
            out = [y.detach()] + [t.grad.clone() for t in (base_hwc, base_wide, base_coords) if t.grad is not None]
            base_hwc.grad = base_wide.grad = base_coords.grad = None
            return out

        got, want = go("triton"), go("reference")
        assert len(got) == len(want) == 3, name
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_gradient_to_one_input_only(device):
    """Only dcoords (planes frozen) and only dplanes (coords constant): the other kernel branch is skipped."""
    planes, coords = _inputs(2, 17, 8, 5, 6, device=device, seed=9)
    _check_fp32(planes.detach(), coords, "xyz")
    _check_fp32(planes, coords.detach(), "xyz")


def test_saves_only_coords_for_backward(device):
    planes, coords = _inputs(2, 31, 16, 6, 6, device=device)
    nbytes, saved, _ = saved_tensor_bytes(_triton, planes, coords.detach())
    assert [t.shape for t in saved] == [coords.shape]
    assert nbytes == coords.numel() * coords.element_size()
    # d out / d coords reads plane values: then the planes themselves (an input, no new memory) are saved too
    nbytes, saved, _ = saved_tensor_bytes(_triton, planes, coords)
    assert sorted(tuple(t.shape) for t in saved) == sorted([tuple(coords.shape), tuple(planes.shape)])
    assert nbytes == (coords.numel() + planes.numel()) * 4


def test_points_outside_the_box_are_exactly_zero(device):
    planes, _ = _inputs(2, 1, 8, 6, 9, device=device)
    g = torch.Generator().manual_seed(2)
    # every coordinate beyond half a texel past the face: all four taps of every plane are outside
    far = (torch.rand(2, 40, 3, generator=g) + 0.6) * torch.where(torch.rand(2, 40, 3, generator=g) < 0.5, -1.0, 1.0)
    far[0, :5] = torch.tensor([50.0, -1e3, 1e6])  # and very far away
    coords = far.to(device).requires_grad_(True)
    y = _triton(planes, coords)
    dplanes, dcoords = torch.autograd.grad(y, [planes, coords], torch.ones_like(y))
    assert torch.equal(y, torch.zeros_like(y))
    assert torch.equal(dplanes, torch.zeros_like(dplanes))
    assert torch.equal(dcoords, torch.zeros_like(dcoords))
    torch.testing.assert_close(y, triplane_sample_ref(planes, coords), atol=0, rtol=0)


def test_point_at_texel_centre_returns_the_texel(device):
    """H = 3, W = 5: the box centre is the centre of texel (row 1, col 2) of every plane, in both axis modes."""
    C, H, W = 2, 3, 5
    planes = torch.zeros(1, 3, C, H, W)
    planes[0, 0, :, 1, 2] = torch.tensor([3.0, -1.5])
    planes[0, 1, :, 1, 2] = torch.tensor([6.0, 0.75])
    planes[0, 2, :, 1, 2] = torch.tensor([9.0, 3.0])
    planes += 100.0 * (torch.arange(H * W).reshape(H, W) != 7)  # every other texel is far off: weights must be 0
    planes = planes.to(device)
    coords = torch.zeros(1, 1, 3, device=device)
    want = torch.tensor([[[6.0, 0.75]]], device=device)  # the mean over planes of that texel
    for axes in ("xyz", "eg3d"):
        torch.testing.assert_close(_triton(planes, coords, axes=axes), want, atol=1e-6, rtol=1e-6)
    # a texel centre of plane 0 alone: x at column 4 (u = 0.8), y at row 0 (v = -2/3), z outside the box
    only0 = torch.zeros(1, 3, 1, H, W, device=device)
    only0[0, 0, 0] = torch.arange(H * W, dtype=torch.float32).reshape(H, W)
    pt = torch.tensor([[[0.4, -1.0 / 3.0, 0.9]]], device=device)  # box_warp 1: world = grid / 2
    torch.testing.assert_close(_triton(only0, pt), torch.tensor([[[4.0 / 3.0]]], device=device), atol=1e-6, rtol=0)


def test_axis_modes_differ_and_each_matches_reference(device):
    planes, coords = _inputs(1, 53, 4, 8, 11, device=device, seed=21)  # random planes are asymmetric
    y_xyz = _check_fp32(planes, coords, "xyz")
    y_eg3d = _check_fp32(planes, coords, "eg3d")
    assert (y_xyz - y_eg3d).abs().max() > 0.1  # plane 2 is read at (y, z) vs (z, x)
    # planes 0 and 1 agree: with plane 2 zeroed the modes coincide
    flat = planes.detach().clone()
    flat[:, 2] = 0
    torch.testing.assert_close(_triton(flat, coords, axes="xyz"), _triton(flat, coords, axes="eg3d"))


def test_reference_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    planes = torch.randn(2, 3, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    coords = ((torch.rand(2, 6, 3, generator=g, dtype=torch.float64) - 0.5) * 1.2).requires_grad_(True)
    for axes in ("xyz", "eg3d"):
        assert torch.autograd.gradcheck(lambda p, c, a=axes: triplane_sample_ref(p, c, a, 1.5), (planes, coords))


def test_auto_dispatch_is_reference_on_cpu():
    planes, coords = _inputs(1, 7, 4, 5, 5)
    assert torch.equal(triplane_sample(planes, coords), triplane_sample_ref(planes, coords))


def test_opcheck(device):
    planes, coords = _inputs(2, 19, 8, 5, 7, device=device)
    torch.library.opcheck(torch.ops.export3d.triplane_sample_fwd.default, (planes, coords, "xyz", 1.0))
    torch.library.opcheck(torch.ops.export3d.triplane_sample_fwd.default, (planes, coords.detach(), "eg3d", 2.0))
    dy = torch.randn(2, 19, 8, device=device)
    bwd = torch.ops.export3d.triplane_sample_bwd.default
    shape = list(planes.shape)
    torch.library.opcheck(bwd, (dy, coords.detach(), planes.detach(), shape, torch.float32, "eg3d", 1.0, True))
    torch.library.opcheck(bwd, (dy, coords.detach(), None, shape, torch.float32, "xyz", 1.0, True))


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_torch_compile_fullgraph_matches_eager(impl, device):
    torch._dynamo.reset()
    planes, coords = _inputs(2, 21, 8, 6, 7, device=device, seed=13)
    lin = torch.nn.Linear(8, 4).to(device)

    def field(planes, coords):
        return lin(triplane_sample(planes, coords * 0.9, axes="eg3d", impl=impl)).square().mean()

    params = [planes, coords, *lin.parameters()]
    eager = field(planes, coords)
    g_eager = torch.autograd.grad(eager, params)
    compiled = torch.compile(field, fullgraph=True)(planes, coords)
    g_comp = torch.autograd.grad(compiled, params)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_comp, g_eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------- errors
def _ok():
    return torch.randn(2, 3, 4, 5, 6), torch.rand(2, 7, 3) - 0.5


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p, c: (p[0], c), r"planes must have 5 dimensions"),
        (lambda p, c: (p, c[0]), r"coords must have shape \[2, \*, 3\]"),
        (lambda p, c: (p[:, :2], c), r"planes must have shape \[B, 3, C, H, W\]"),
        (lambda p, c: (p, c[:1]), r"coords must have shape \[2, \*, 3\]"),
        (lambda p, c: (p, c[..., :2]), r"coords must have shape \[2, \*, 3\]"),
        (lambda p, c: (p.long(), c), r"planes must be float32, float16 or bfloat16"),
        (lambda p, c: (p, c.int()), r"coords must be float32, float16 or bfloat16"),
        (lambda p, c: (p, c.half()), r"coords has dtype torch.float16 but planes has torch.float32"),
        (lambda p, c: (p, c.to("meta")), r"coords is on meta but planes is on cpu"),
    ],
)
def test_bad_inputs_name_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        triplane_sample(*make(*_ok()))


def test_bad_axes_box_warp_impl_and_channels():
    planes, coords = _ok()
    with pytest.raises(ValueError, match=r"axes must be one of \('xyz', 'eg3d'\), got 'yxz'"):
        triplane_sample(planes, coords, axes="yxz")
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match=r"box_warp must be > 0"):
            triplane_sample(planes, coords, box_warp=bad)
    with pytest.raises(ValueError, match=r"impl must be one of"):
        triplane_sample(planes, coords, impl="cuda")
    wide = torch.zeros(1, 3, ts_mod.MAX_C + 1, 2, 2)
    with pytest.raises(ValueError, match=r"impl=.triton. takes C <= 64 and C\*H\*W < 2\^31"):
        triplane_sample(wide, torch.zeros(1, 1, 3), impl="triton")
    assert triplane_sample(wide, torch.zeros(1, 1, 3)).shape == (1, 1, ts_mod.MAX_C + 1)  # auto: the reference
