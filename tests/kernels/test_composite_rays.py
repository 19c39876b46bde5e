"""composite_rays: the Triton kernels against the reference, saved tensors, the registered op, compile, errors."""

import pytest
import torch

from export3d.kernels import composite_rays, composite_rays_ref
from export3d.kernels.composite_rays import MAX_C
from tests.kernels.helpers import assert_close_lowp

SHAPES = [  # (B, R, S, C): one interval, primes, the model's C = 32, C = 64, size 1, empty R
    (1, 1, 2, 1),
    (2, 37, 13, 3),
    (1, 11, 48, 32),
    (2, 5, 2, 32),
    (1, 7, 13, 64),
    (2, 13, 7, 5),
    (1, 3, 48, 1),
    (2, 0, 13, 3),
    (1, 4, 5, 0),  # no channels: rgb is empty, depth and weights still work
]
NAMES = ("rgb", "depth", "weights", "dcolors", "ddensities")


def _ids(shape):
    return "x".join(map(str, shape))


def _inputs(B, R, S, C, dtype=torch.float32, device="cpu", seed=0):
    """Colours, densities spanning transparent to opaque, ascending depths in EG3D's range, upstream grads."""
    g = torch.Generator().manual_seed(seed)
    colors = torch.randn(B, R, S, C, generator=g)
    densities = torch.randn(B, R, S, 1, generator=g) * 4 + 0.5
    steps = torch.rand(B, R, S, 1, generator=g) * (2.0 / S) + 0.002
    depths = 2.25 + torch.cumsum(steps, dim=2) - steps[:, :, :1]
    grads = (
        torch.randn(B, R, C, generator=g),
        torch.randn(B, R, 1, generator=g),
        torch.randn(B, R, S - 1, 1, generator=g),
    )
    leaves = [t.to(device=device, dtype=dtype).requires_grad_(True) for t in (colors, densities, depths)]
    return leaves, [t.to(device=device, dtype=dtype) for t in grads]


def _run(fn, leaves, grads, outputs=(0, 1, 2)):
    """Outputs of ``fn`` and the gradients of colors and densities for the upstream grads of ``outputs``."""
    out = fn(*leaves)
    d = torch.autograd.grad([out[i] for i in outputs], leaves[:2], [grads[i] for i in outputs], allow_unused=True)
    return [o.detach() for o in out], list(d)


def _triton(**kw):
    return lambda c, d, z: composite_rays(c, d, z, impl="triton", **kw)


def _ref(**kw):
    return lambda c, d, z: composite_rays_ref(c, d, z, **kw)


def _assert_all_close(got, want, atol=1e-5, rtol=1e-4, grad_atol=1e-5):
    """``got`` / ``want``: the outputs, optionally followed by the gradients (NAMES order)."""
    assert len(got) == len(want) and len(got) in (3, 5)
    for i, (name, a, b) in enumerate(zip(NAMES, got, want, strict=False)):
        tol = atol if i < 3 else grad_atol
        torch.testing.assert_close(a, b.to(a.dtype), atol=tol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("white_back", [False, True], ids=["black", "white"])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_fp32_matches_reference(shape, white_back, device):
    leaves, grads = _inputs(*shape, device=device)
    out, d = _run(_triton(white_back=white_back), leaves, grads)
    out_ref, d_ref = _run(_ref(white_back=white_back), leaves, grads)
    for o, r in zip(out, out_ref, strict=True):
        assert o.shape == r.shape and o.dtype == torch.float32
    _assert_all_close(out + d, out_ref + d_ref)


@pytest.mark.parametrize("density_bias", [-1.0, 0.0, 3.5, -10.0])
def test_density_bias(density_bias, device):
    """Against float64 always; against fp32 too, except where the reference's ``1 - exp(-x)`` cancels.

    With ``density_bias = -10`` every alpha is ~1e-5 and the fp32 reference keeps only a few bits of it
    (depth off by ~5e-4 from float64); the kernel's expm1 form must then be at least as close to float64.
    """
    leaves, grads = _inputs(2, 7, 13, 3, device=device, seed=5)
    leaves64 = [t.detach().double().requires_grad_(True) for t in leaves]
    out, d = _run(_triton(density_bias=density_bias), leaves, grads)
    out_ref, d_ref = _run(_ref(density_bias=density_bias), leaves, grads)
    out64, d64 = _run(_ref(density_bias=density_bias), leaves64, [g.double() for g in grads])
    _assert_all_close(out + d, [t.float() for t in out64 + d64])
    if density_bias > -5:
        _assert_all_close(out + d, out_ref + d_ref)
    else:
        for name, got, ref32, ref64 in zip(NAMES, out + d, out_ref + d_ref, out64 + d64, strict=True):
            assert_close_lowp(got, ref32, ref64, atol=1e-5, name=name)


@pytest.mark.parametrize(
    "shape, white_back", [((2, 37, 13, 3), False), ((1, 11, 48, 32), True), ((1, 5, 2, 1), True)], ids=str
)
def test_fp16_within_flash_attention_bound(shape, white_back, device):
    leaves16, grads16 = _inputs(*shape, dtype=torch.float16, device=device, seed=3)
    leaves32 = [t.detach().float().requires_grad_(True) for t in leaves16]
    grads32 = [g.float() for g in grads16]
    out, d = _run(_triton(white_back=white_back), leaves16, grads16)
    out16, d16 = _run(_ref(white_back=white_back), leaves16, grads16)
    out32, d32 = _run(_ref(white_back=white_back), leaves32, grads32)
    for i, (name, got, lo, hi) in enumerate(zip(NAMES, out + d, out16 + d16, out32 + d32, strict=True)):
        assert got.dtype == torch.float16, name
        assert_close_lowp(got, lo, hi, atol=4e-3 if i < 3 else 1e-3, name=name)


def test_unseen_seeds_and_shapes(device):
    """Random shapes, biases and seeds the parametrised cases do not list."""
    gen = torch.Generator().manual_seed(1234)
    for trial in range(3):
        B = int(torch.randint(1, 3, (1,), generator=gen))
        R = int(torch.randint(1, 20, (1,), generator=gen))
        S = int(torch.randint(2, 30, (1,), generator=gen))
        C = int(torch.randint(1, 40, (1,), generator=gen))
        bias = float(torch.randn(1, generator=gen)) * 2
        white_back = bool(trial % 2)
        leaves, grads = _inputs(B, R, S, C, device=device, seed=100 + trial)
        out, d = _run(_triton(density_bias=bias, white_back=white_back), leaves, grads)
        out_ref, d_ref = _run(_ref(density_bias=bias, white_back=white_back), leaves, grads)
        _assert_all_close(out + d, out_ref + d_ref)


@pytest.mark.parametrize("white_back", [False, True], ids=["black", "white"])
def test_extreme_densities_and_repeated_depths(white_back, device):
    """+-1e4 densities (alpha exactly 1 or 0), zero-length intervals and all-transparent rays.

    Where the total weight is 0 the depth is 0 / 0 -> inf -> clamped, and neither the reference nor the
    kernel passes any depth gradient there: only rgb and weights carry gradient on those rays.
    """
    (colors, densities, depths), grads = _inputs(1, 9, 13, 3, device=device, seed=11)
    with torch.no_grad():
        densities[0, 0] = 1e4  # opaque from the first interval on: q = 1e-10 and T underflows
        densities[0, 1] = -1e4  # sigma = 0 exactly: all-transparent, depth nan -> max depth
        densities[0, 2, ::2], densities[0, 2, 1::2] = 1e4, -1e4  # midpoints 0
        densities[0, 3, 4:7] = 1e4  # a wall in the middle of the ray
        densities[0, 4, 8:] = -1e4
        depths[0, 5] = 2.5  # every interval of zero length: all-transparent
        depths[0, 6, 3:8] = depths[0, 6, 3]  # some zero-length intervals
        depths[0, 7, 5:] = depths[0, 7, 5]
        densities[0, 7, :6] = -1e4  # transparent, then zero-length: all-transparent again
        depths[0, 8, 2:5] = depths[0, 8, 2]
        densities[0, 8, 2:5] = 1e4  # opaque samples on a zero-length stretch
    leaves = [colors, densities, depths]
    out, d = _run(_triton(white_back=white_back), leaves, grads)
    out_ref, d_ref = _run(_ref(white_back=white_back), leaves, grads)
    _, d_ref_no_depth = _run(_ref(white_back=white_back), leaves, grads, outputs=(0, 2))
    for t in out + d:
        assert torch.isfinite(t).all()
    _assert_all_close(out, out_ref)
    transparent = torch.zeros(9, dtype=torch.bool, device=device)
    transparent[[1, 5, 7]] = True
    assert torch.equal(out_ref[2].sum((2, 3))[0] == 0, transparent)  # exactly the rays built to be
    assert torch.equal(out[1][0, transparent, 0], depths.detach()[0, transparent, -1, 0])  # depth = max depth
    for name, got, want, without_depth in zip(NAMES[3:], d, d_ref, d_ref_no_depth, strict=True):
        assert torch.isfinite(want).all(), f"{name}: the reference's gradient must be finite on empty rays"
        # on the empty rays the depth output contributes nothing: only rgb and weights carry gradient
        torch.testing.assert_close(want[0, transparent], without_depth[0, transparent])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_depth_clamp_and_tie_follow_autograd(device):
    """The depth gradient factor: 0 where the clamp is active, 1/2 at a tie (torch.maximum), 1 inside.

    Ray 0 (descending last step) has an expected depth below its minimum sample depth: clamped, so its
    densities get no depth gradient although the unclamped expected depth depends on them. Ray 1's
    expected depth rounds to exactly its minimum depth (a tie; its only weighted interval is the
    first, so the halved gradient is 0 anyway). Ray 2 is ordinary.
    """
    up = torch.nextafter(torch.tensor(2.0), torch.tensor(3.0)).item()  # (2 + up) / 2 rounds to 2
    depths = torch.tensor([[2.0, 3.0, 2.5], [2.0, up, up], [2.0, 2.5, 3.0]]).view(1, 3, 3, 1).to(device)
    densities = torch.tensor([[0.0, 1.5, 1.5], [1.0, 1.0, 1.0], [0.3, 0.7, -0.2]]).view(1, 3, 3, 1).to(device)
    colors = torch.randn(1, 3, 3, 4, generator=torch.Generator().manual_seed(0)).to(device)
    leaves = [t.requires_grad_(True) for t in (colors, densities, depths)]
    *_, stats = torch.ops.export3d.composite_rays_fwd(colors, densities, depths, -1.0, False)
    assert stats[0, :, 2].tolist() == [0.0, 0.5, 1.0]
    assert stats[0, 0, 1] < 2.0 and stats[0, 1, 1] == 2.0  # the unclamped expected depths

    w = composite_rays_ref(*leaves)[2][0, :, :, 0]
    unclamped = (w * (depths[0, :, 1:, 0] + depths[0, :, :-1, 0]) / 2).sum(1) / w.sum(1)
    assert torch.autograd.grad(unclamped[0], densities)[0].abs().max() > 0.1  # the clamp is what removes it

    zero_rgb, one_depth, zero_w = torch.zeros(1, 3, 4), torch.ones(1, 3, 1), torch.zeros(1, 3, 2, 1)
    grads = [g.to(device) for g in (zero_rgb, one_depth, zero_w)]
    out, d = _run(_triton(), leaves, grads)
    out_ref, d_ref = _run(_ref(), leaves, grads)
    assert d_ref[1][0, 0].abs().max() == 0 and d_ref[1][0, 2].abs().max() > 0
    _assert_all_close(out + d, out_ref + d_ref)
    grads = [torch.randn_like(g) for g in grads]  # every output at once
    _assert_all_close(sum(_run(_triton(), leaves, grads), []), sum(_run(_ref(), leaves, grads), []))


def test_no_per_sample_tensor_is_saved(device):
    """The Triton path saves the inputs and per-ray totals only; the reference saves per-sample tensors."""
    B, R, S, C = 2, 5, 13, 3
    (colors, densities, depths), _ = _inputs(B, R, S, C, device=device)

    def saved_by(impl):
        saved = []

        def pack(t):
            saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            rgb, depth, weights = composite_rays(colors, densities, depths, impl=impl)
        (rgb.sum() + depth.sum() + weights.sum()).backward()  # the saved tensors really serve the backward
        inputs = {t.untyped_storage().data_ptr() for t in (colors, densities, depths)}
        by_storage = {t.untyped_storage().data_ptr(): t for t in saved}
        others = [t for ptr, t in by_storage.items() if ptr not in inputs]
        per_sample = [tuple(t.shape) for t in others if t.dim() >= 3 and t.shape[2] in (S, S - 1)]
        return by_storage.keys() & inputs, others, per_sample

    kept_inputs, others, per_sample = saved_by("triton")
    assert len(kept_inputs) == 3
    assert per_sample == [], f"per-sample tensors saved: {per_sample}"
    assert all(t.numel() <= B * R * max(C, 3) for t in others), [tuple(t.shape) for t in others]
    _, _, per_sample_ref = saved_by("reference")
    assert per_sample_ref, "the check must see the reference's per-sample tensors"


def test_non_contiguous_inputs_and_expanded_grads(device):
    """Strided colours and densities, depths broadcast over the batch (stride 0), ``.sum()`` gradients."""
    B, R, S, C = 2, 6, 9, 5
    g = torch.Generator().manual_seed(7)
    colors_big = torch.randn(B, R, C, S, generator=g).to(device).requires_grad_(True)
    dens_big = (torch.randn(B, R, S, 3, generator=g) * 3).to(device).requires_grad_(True)
    depths_one = (2.25 + torch.cumsum(torch.rand(1, R, S, 1, generator=g) * 0.1, 2)).to(device)

    def go(impl):
        colors = colors_big.transpose(2, 3)  # [B, R, S, C], not contiguous
        densities = dens_big[..., 1:2]  # stride 3 along S
        depths = depths_one.expand(B, R, S, 1)  # stride 0 along B
        rgb, depth, weights = composite_rays(colors, densities, depths, white_back=True, impl=impl)
        (rgb.sum() + 0.5 * depth.sum() + 0.25 * weights.sum()).backward()  # expanded scalar gradients
        out = [rgb.detach(), depth.detach(), weights.detach(), colors_big.grad.clone(), dens_big.grad.clone()]
        colors_big.grad = dens_big.grad = None
        return out

    _assert_all_close(go("triton"), go("reference"))


def test_depths_get_no_gradient_on_the_triton_path(device):
    leaves, _ = _inputs(1, 4, 6, 3, device=device)
    rgb, depth, weights = composite_rays(*leaves, impl="triton")
    (rgb.sum() + depth.sum() + weights.sum()).backward()
    assert leaves[0].grad is not None and leaves[1].grad is not None and leaves[2].grad is None


def test_reference_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    B, R, S, C = 1, 3, 5, 2
    colors = torch.randn(B, R, S, C, generator=g, dtype=torch.float64, requires_grad=True)
    densities = torch.randn(B, R, S, 1, generator=g, dtype=torch.float64, requires_grad=True)
    depths = (2.0 + torch.cumsum(torch.rand(B, R, S, 1, generator=g, dtype=torch.float64) + 0.1, 2)).requires_grad_()
    for white_back in (False, True):
        assert torch.autograd.gradcheck(
            lambda c, d, z, wb=white_back: composite_rays_ref(c, d, z, -1.0, wb), (colors, densities, depths)
        )


def test_auto_dispatch_is_reference_on_cpu():
    (colors, densities, depths), _ = _inputs(1, 3, 5, 4)
    got, want = composite_rays(colors, densities, depths), composite_rays_ref(colors, densities, depths)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    half = [t.detach().half() for t in (colors, densities, depths)]
    assert all(t.dtype == torch.float16 for t in composite_rays(*half, impl="reference"))  # like the kernels


@pytest.mark.parametrize("white_back", [False, True], ids=["black", "white"])
def test_opcheck(white_back, device):
    (colors, densities, depths), _ = _inputs(2, 5, 7, 3, device=device)
    args = (colors, densities, depths, -1.0, white_back)
    torch.library.opcheck(torch.ops.export3d.composite_rays_fwd.default, args)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_torch_compile_fullgraph_matches_eager(impl, device):
    torch._dynamo.reset()
    (colors, densities, depths), _ = _inputs(2, 5, 7, 4, device=device, seed=2)
    target = torch.randn(2, 5, 4, device=device)

    def render_loss(colors, densities, depths):
        rgb, depth, weights = composite_rays(colors, densities, depths, white_back=True, impl=impl)
        return (rgb - target).square().mean() + depth.mean() + weights.square().sum()

    eager = render_loss(colors, densities, depths)
    g_eager = torch.autograd.grad(eager, (colors, densities))
    compiled = torch.compile(render_loss, fullgraph=True)(colors, densities, depths)
    g_comp = torch.autograd.grad(compiled, (colors, densities))
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_comp, g_eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------- errors
def _ok():
    return torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 1), torch.linspace(2, 3, 5).expand(2, 3, 5).unsqueeze(-1)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda c, d, z: (c[0], d, z), r"colors must have 4 dimensions"),
        (lambda c, d, z: (c, d[..., 0], z), r"densities must have shape \[2, 3, 5, 1\]"),
        (lambda c, d, z: (c, d, z[None]), r"depths must have shape \[2, 3, 5, 1\]"),
        (lambda c, d, z: (c, d[:1], z), r"densities must have shape \[2, 3, 5, 1\]"),  # B
        (lambda c, d, z: (c, d, z[:, :2]), r"depths must have shape \[2, 3, 5, 1\]"),  # R
        (lambda c, d, z: (c, d[:, :, :4], z), r"densities must have shape \[2, 3, 5, 1\]"),  # S
        (lambda c, d, z: (c[:, :, :4], d, z), r"densities must have shape \[2, 3, 4, 1\]"),  # S, from colors
        (lambda c, d, z: (c, d.expand(2, 3, 5, 2), z), r"densities must have shape \[2, 3, 5, 1\]"),
        (lambda c, d, z: (c, d, z.expand(2, 3, 5, 3)), r"depths must have shape \[2, 3, 5, 1\]"),
        (lambda c, d, z: (c[:, :, :1], d[:, :, :1], z[:, :, :1]), r"S >= 2"),
        (lambda c, d, z: (c.long(), d, z), r"colors must be float32, float16 or bfloat16"),
        (lambda c, d, z: (c, d.int(), z), r"densities must be float32, float16 or bfloat16"),
        (lambda c, d, z: (c, d, z.half()), r"depths has dtype torch.float16 but colors has torch.float32"),
        (lambda c, d, z: (c, d.to("meta"), z), r"densities is on meta but colors is on cpu"),
        (lambda c, d, z: (c, d, z.to("meta")), r"depths is on meta but colors is on cpu"),
    ],
)
def test_bad_inputs_name_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        composite_rays(*make(*_ok()))


def test_bad_impl_and_too_many_channels(device):
    c, d, z = _ok()
    with pytest.raises(ValueError, match=r"impl must be one of"):
        composite_rays(c, d, z, impl="cuda")
    wide, one = torch.zeros(1, 1, 2, MAX_C + 1, device=device), torch.zeros(1, 1, 2, 1, device=device)
    with pytest.raises(ValueError, match=rf"impl='triton' takes C <= {MAX_C}"):
        composite_rays(wide, one, one, impl="triton")
    assert composite_rays(wide, one, one)[0].shape == (1, 1, MAX_C + 1)  # auto falls back to the reference
