"""The launch paths the small interpreter tests used to miss: low precision for every op, the wide tiles (EAdaLN
D > 1024 and its GPU row split, composite C >= 128, 128 x 128 planes), the 2^31 guards, stride-0 planes read in
place, and the copies the launchers no longer make."""

import importlib
import math

import pytest
import torch

from export3d.gpucheck.ops import OPS, Sizes, forward_backward
from export3d.kernels import (
    composite_rays,
    composite_rays_ref,
    eadaln,
    eadaln_ref,
    triplane_sample,
    triplane_sample_ref,
    utils,
)
from tests.kernels.helpers import assert_close_lowp

ts_mod = importlib.import_module("export3d.kernels.triplane_sample")
ea_mod = importlib.import_module("export3d.kernels.eadaln")
SMALL = Sizes(batch=2, tokens=(4, 72), planes=(8, 6), points=23, rays=(6, 7, 5), shuffle=(8, 5), decoder_hidden=8)
EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", list(OPS))
def test_low_precision_every_op(name, dtype, device):
    """|kernel - ref32| <= 2 |ref_lowp - ref32| + 2 ulp at the tensor's scale, outputs and gradients."""
    entry = OPS[name]
    leaves = entry.leaves(SMALL, dtype, device, 3)
    out, grads = forward_backward(entry, leaves, "triton")
    lo, lo_grads = forward_backward(entry, leaves, "reference")
    up = tuple(t.detach().float().requires_grad_(t.requires_grad) for t in leaves)
    hi, hi_grads = forward_backward(entry, up, "reference")
    for i, (a, b, c) in enumerate(zip(out + grads, lo + lo_grads, hi + hi_grads, strict=True)):
        assert a.dtype == dtype, i
        assert_close_lowp(a, b, c, atol=2 * EPS[dtype] * max(1.0, c.abs().max().item()), name=f"{name}[{i}]")


# ----------------------------------------------------------------------------------------------- eadaln
def _eadaln_case(B, L, D, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, L, D, generator=g) * 2 + 0.5).to(device, dtype).requires_grad_(True)
    mod = (torch.randn(B, 2 * D, generator=g) * 0.5).to(device, dtype).requires_grad_(True)
    dy = torch.randn(B, L, D, generator=g).to(device, dtype)
    return x, mod, dy


def _eadaln_grads(impl, x, mod, dy):
    scale, shift = mod.chunk(2, dim=-1)  # the model's strided halves
    y = eadaln(x, scale, shift, impl=impl) if impl else eadaln_ref(x, scale, shift)
    return (y, *torch.autograd.grad(y, (x, mod), dy))


@pytest.mark.parametrize("D", [1500, 4100], ids=["D1500", "D4100"])  # BLOCK_D 2048 (16 warps), 8192 (32 warps)
def test_eadaln_wide_rows(D, device):
    x, mod, dy = _eadaln_case(2, 3, D, device)
    for got, want in zip(_eadaln_grads("triton", x, mod, dy), _eadaln_grads(None, x, mod, dy), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_eadaln_backward_split():
    assert ea_mod._backward_split(2, 37, 4) == (2, 19)  # interpreter: 4 programs
    assert ea_mod._backward_split(2, 37, 432) == (37, 1)  # an A100's 4 x 108: one row per program
    assert ea_mod._backward_split(8, 256, 432) == (52, 5)
    assert ea_mod._backward_split(3, 0, 432) == (1, 1)


@pytest.mark.parametrize("target", [432, 24], ids=["one_row_per_program", "ragged_last_chunk"])
def test_eadaln_gpu_row_split(target, monkeypatch, device):
    """The backward's row split as a GPU picks it (4 programs per SM), forced here through num_programs_target."""
    monkeypatch.setattr(ea_mod, "num_programs_target", lambda dev: target)
    x, mod, dy = _eadaln_case(2, 37, 40, device, seed=1)
    for got, want in zip(_eadaln_grads("triton", x, mod, dy), _eadaln_grads(None, x, mod, dy), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_eadaln_reads_scale_shift_halves_in_place_and_fills_its_partial_sums(monkeypatch, device):
    """No copy of the chunked projection; the backward's partial-sum buffer (not zero-filled) is fully written."""
    x, mod, dy = _eadaln_case(2, 5, 24, device, seed=2)
    seen = {}

    def hook(kernel, grid, args, kwargs):
        name = kernel.fn.__name__
        seen[name] = args
        if name == "_eadaln_bwd_kernel":
            args[7].fill_(float("nan"))  # whatever the allocator hands back: the kernel must overwrite it all
            args[8].fill_(float("nan"))
        return False

    monkeypatch.setattr(utils, "LAUNCH_HOOKS", [hook])
    got = _eadaln_grads("triton", x, mod, dy)
    fwd = seen["_eadaln_fwd_kernel"]
    assert fwd[2].data_ptr() == mod.data_ptr() and fwd[3].data_ptr() == mod.data_ptr() + 24 * mod.element_size()
    assert seen["_eadaln_bwd_kernel"][2].data_ptr() == mod.data_ptr()
    for a, b in zip(got, _eadaln_grads(None, x, mod, dy), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- composite_rays
@pytest.mark.parametrize("C", [128, 130])  # BLOCK_C 128 / 256 with 8 warps
def test_composite_wide_colours(C, device):
    g = torch.Generator().manual_seed(4)
    B, R, S = 1, 3, 6
    colors = torch.rand(B, R, S, C, generator=g).to(device).requires_grad_(True)
    dens = (torch.randn(B, R, S, 1, generator=g) * 3).to(device).requires_grad_(True)
    depths = (2.25 + torch.cumsum(torch.rand(B, R, S, 1, generator=g) * 0.2, 2)).to(device)
    grads = [torch.randn(B, R, C, generator=g).to(device), torch.randn(B, R, 1, generator=g).to(device)]

    def run(fn):
        rgb, depth, _ = fn(colors, dens, depths)
        return (rgb, depth, *torch.autograd.grad((rgb, depth), (colors, dens), grads))

    got, want = run(lambda *a: composite_rays(*a, impl="triton")), run(composite_rays_ref)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- triplane_sample
def _planes_check(planes, coords, leaf):
    dy = torch.randn(coords.shape[0], coords.shape[1], planes.shape[2], generator=torch.Generator().manual_seed(9))
    dy = dy.to(planes.device)
    out = []
    for fn in (lambda p, c: triplane_sample(p, c, impl="triton"), triplane_sample_ref):
        y = fn(planes, coords)
        out.append((y, *torch.autograd.grad(y, leaf, dy)))
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("threshold", [0.25, 0.0], ids=["in_place", "channel_last_copy"])
def test_model_sized_planes_with_few_points(threshold, monkeypatch, device):
    """The model's 32 x 128 x 128 planes, few points: in place (N << H W) and through the copy (forced)."""
    monkeypatch.setattr(ts_mod, "_CHANNEL_LAST_MIN_POINTS_PER_TEXEL", threshold)
    g = torch.Generator().manual_seed(5)
    planes = torch.randn(1, 3, 32, 128, 128, generator=g).to(device).requires_grad_(True)
    coords = ((torch.rand(1, 40, 3, generator=g) - 0.5) * 1.05).to(device)
    src = ts_mod._gather_planes(planes.detach(), 40)
    assert (src.data_ptr() == planes.data_ptr() and src.stride() == planes.stride()) == (threshold > 0)
    _planes_check(planes, coords, planes)


def test_planes_of_2_31_elements_are_refused_without_allocating():
    planes = torch.empty(1, 3, 64, 8192, 4097, device="meta")  # C H W > 2^31: int32 offsets would overflow
    with pytest.raises(ValueError, match=r"takes C <= 64 and C\*H\*W < 2\^31"):
        triplane_sample(planes, torch.empty(1, 5, 3, device="meta"), impl="triton")


def test_a_view_spanning_2_31_elements_is_copied():
    base = torch.empty(2**31 + 64, device="meta")
    planes = base.as_strided((1, 3, 2, 4, 4), (96, 32, 2**31, 4, 1))  # channels 2^31 apart
    src = ts_mod._gather_planes(planes, n_points=1)  # few points would read in place: the span forbids it
    assert src.stride(2) == 1 and max(src.stride()) < 2**31


@pytest.mark.parametrize("threshold", [math.inf, 0.0], ids=["in_place", "channel_last_copy"])
def test_expanded_batch_one_planes(threshold, monkeypatch, device):
    """One tri-plane expanded over 3 cameras (stride 0, as Export3D.render does): read in place without any copy,
    or copied channel-last once (the copy keeps stride 0), never once per batch element."""
    monkeypatch.setattr(ts_mod, "_CHANNEL_LAST_MIN_POINTS_PER_TEXEL", threshold)
    g = torch.Generator().manual_seed(6)
    base = torch.randn(1, 3, 8, 7, 9, generator=g).to(device).requires_grad_(True)
    planes = base.expand(3, -1, -1, -1, -1)
    coords = ((torch.rand(3, 50, 3, generator=g) - 0.5) * 1.1).to(device)
    src = ts_mod._gather_planes(planes.detach(), 50)
    if threshold == math.inf:
        assert src.data_ptr() == base.data_ptr() and src.stride() == planes.stride()
    else:
        assert src.stride(0) == 0 and src.stride(2) == 1 and src.untyped_storage().nbytes() == base.numel() * 4
    _planes_check(planes, coords, base)


def test_renderer_copies_the_planes_once_per_frame(monkeypatch):
    """Inference: render_rays_weights (coarse) and render_rays (final pass) read one channel-last copy, made for the
    one plane set of an expanded batch. (Training leaves the copies to render_rays, so that it saves no copy:
    tests/model/test_render.py bounds what the training forward saves.)"""
    from export3d import Export3D

    copies = []
    real = ts_mod._channel_last_copy
    monkeypatch.setattr(ts_mod, "_channel_last_copy", lambda p: copies.append(tuple(p.shape)) or real(p))
    torch.manual_seed(0)
    model = Export3D.from_preset("tiny", impl="fast", kernel_impl="triton", image_size=32,
                                 render={"n_coarse": 4, "n_fine": 4}).eval()  # fmt: skip
    with torch.no_grad():
        model.renderer(torch.randn(1, 3, 16, 16, 16).expand(2, -1, -1, -1, -1), torch.randn(2, 25).clamp(-1, 1))
    assert copies == [(1, 3, 16, 16, 16)]
    copies.clear()
    planes = torch.randn(1, 3, 16, 16, 16, requires_grad=True)
    model.train().renderer(planes.expand(2, -1, -1, -1, -1), torch.randn(2, 25).clamp(-1, 1)).features.sum().backward()
    assert copies and all(c == (1, 3, 16, 16, 16) for c in copies)  # expanded planes: never a per-camera copy


def test_fused_renderer_under_bf16_autocast():
    """--amp: the rays stay fp32 (autocast used to make the directions bf16, which render_rays refuses by name)."""
    from export3d import Export3D

    torch.manual_seed(0)
    model = Export3D.from_preset("tiny", impl="fast", kernel_impl="triton", image_size=32,
                                 render={"n_coarse": 4, "n_fine": 4}).eval()  # fmt: skip
    planes, camera = torch.randn(1, 3, 16, 16, 16), torch.randn(1, 25).clamp(-1, 1)
    with torch.no_grad():
        want = model.renderer(planes, camera).features
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model.renderer(planes, camera).features
    torch.testing.assert_close(got, want)  # the renderer's fused path is fp32 under autocast
