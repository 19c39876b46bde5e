"""render_rays: the fused Triton op against render_rays_ref, the density-only pass, the registered ops and errors."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from export3d.kernels import composite_rays_ref, render_rays, render_rays_ref, render_rays_weights, triplane_sample_ref
from export3d.kernels.render_rays import MAX_C
from export3d.kernels.utils import saved_tensor_bytes
from tests.kernels.helpers import assert_close_lowp

GRADS = ("dplanes", "dw1", "db1", "dw2", "db2")


def _scene(B, R, S, C=32, hidden=64, cf=32, res=(9, 11), dtype=torch.float32, device="cpu", seed=0, miss=0,
           density_scale=1.0):  # fmt: skip
    """Planes, an MLP with non-zero biases (leaves), rays from the EG3D camera distance, ascending jittered depths.

    The first ``miss`` rays of every batch element point away from the box (all their samples read zeros).
    ``density_scale`` multiplies the density column of w2 (1e4-ish raw densities for the extreme case).
    """
    g = torch.Generator().manual_seed(seed)
    planes = torch.randn(B, 3, C, *res, generator=g) * 0.8
    w1 = torch.randn(C, hidden, generator=g) * C**-0.5 * 2
    b1 = torch.randn(hidden, generator=g) * 0.5
    w2 = torch.randn(hidden, 1 + cf, generator=g) * hidden**-0.5 * 2
    w2[:, 0] *= density_scale
    b2 = torch.randn(1 + cf, generator=g) * 0.5
    b2[0] += 1.0  # densities mostly positive: the rays are not all transparent
    origins = torch.tensor([0.0, 0.0, 2.7]) + torch.randn(B, R, 3, generator=g) * 0.05
    target = (torch.rand(B, R, 3, generator=g) - 0.5) * 0.9
    target[:, :miss] += torch.tensor([3.0, 3.0, 0.0])  # these rays pass far outside the box
    directions = F.normalize(target - origins, dim=-1)
    steps = torch.rand(B, R, S, 1, generator=g) * (2.1 / S) + 0.001
    depths = 2.25 + torch.cumsum(steps, dim=2) - steps[:, :, :1]  # [B, R, S, 1] ascending from 2.25
    leaves = [t.to(device=device, dtype=dtype).requires_grad_(True) for t in (planes, w1, b1, w2, b2)]
    rays = [t.to(device) for t in (origins, directions, depths)]
    up = [torch.randn(B, R, cf, generator=g).to(device, dtype), torch.randn(B, R, 1, generator=g).to(device, dtype)]
    return leaves, rays, up


def _run(fn, leaves, rays, up, **kw):
    """(rgb, depth) and the gradients of (planes, w1, b1, w2, b2) for the upstream gradients ``up``."""
    planes, w1, b1, w2, b2 = leaves
    rgb, depth = fn(planes, *rays, w1, b1, w2, b2, **kw)
    grads = torch.autograd.grad([rgb, depth], leaves, up)
    return [rgb.detach(), depth.detach()], list(grads)


def _triton(*args, **kw):
    return render_rays(*args, impl="triton", **kw)


def _ref(planes, origins, directions, depths, w1, b1, w2, b2, **kw):
    return render_rays_ref(planes, origins, directions, depths, w1, b1, w2, b2, **kw)


def _assert_all_close(got, want, atol=2e-5, rtol=1e-4):
    for name, a, b in zip(("rgb", "depth", *GRADS), got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


CASES = [  # (B, R, S, C, hidden, Cf, axes, white_back)
    (1, 16, 96, 32, 64, 32, "xyz", False),  # the model's widths and 48 + 48 samples
    (1, 13, 96, 32, 64, 32, "eg3d", True),  # R not a multiple of BLOCK_R
    (2, 17, 5, 17, 40, 3, "xyz", True),  # two ray blocks, every width masked
    (2, 5, 2, 32, 64, 32, "eg3d", False),  # S = 2: a single interval
    (1, 9, 13, 16, 32, 16, "eg3d", False),  # the tiny preset's widths
]


def _case_id(c):
    return "x".join(map(str, c[:6])) + f"-{c[6]}-{'white' if c[7] else 'black'}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fp32_matches_reference(case, device):
    B, R, S, C, hidden, cf, axes, white_back = case
    leaves, rays, up = _scene(B, R, S, C, hidden, cf, device=device, miss=2, seed=R)
    out, grads = _run(_triton, leaves, rays, up, axes=axes, white_back=white_back)
    out_ref, grads_ref = _run(_ref, leaves, rays, up, axes=axes, white_back=white_back)
    assert out_ref[0].abs().max() > 1e-3 and grads_ref[0].abs().max() > 0  # the scene is not trivially empty
    _assert_all_close(out + grads, out_ref + grads_ref)


@pytest.mark.parametrize("white_back", [False, True], ids=["black", "white"])
def test_missed_rays_and_extreme_densities(white_back, device):
    """Raw densities of +-1e4 (alpha exactly 0 or 1) and rays that never enter the box stay finite and exact."""
    leaves, rays, up = _scene(1, 16, 13, 32, 64, 8, device=device, miss=5, seed=3, density_scale=3e3)
    planes, w1, b1, w2, b2 = leaves
    with torch.no_grad():
        f = render_rays_ref(planes, *rays, w1, b1, w2, b2, return_weights=True)[2]
        h = F.softplus(torch.randn(1000, 32, generator=torch.Generator().manual_seed(0)) @ w1 + b1)
        assert (h @ w2[:, 0] + b2[0]).abs().max() > 1e3  # the density head really is extreme
    assert (f.sum((2, 3)) > 0.999).any() and (f[0, :5] >= 0).all()
    out, grads = _run(_triton, leaves, rays, up, white_back=white_back)
    out_ref, grads_ref = _run(_ref, leaves, rays, up, white_back=white_back)
    for t in out + grads:
        assert torch.isfinite(t).all()
    _assert_all_close(out + grads, out_ref + grads_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_within_flash_attention_bound(dtype, device):
    """fp16 / bf16 planes and weights (rays fp32): the kernel is at most twice as far from fp32 as the reference."""
    leaves, rays, up = _scene(1, 11, 16, dtype=dtype, device=device, seed=4, miss=1)
    leaves32 = [t.detach().float().requires_grad_(True) for t in leaves]
    out, grads = _run(_triton, leaves, rays, up, axes="eg3d")
    out_lo, grads_lo = _run(_ref, leaves, rays, up, axes="eg3d")
    out32, grads32 = _run(_ref, leaves32, rays, [u.float() for u in up], axes="eg3d")
    eps = 2.0**-10 if dtype == torch.float16 else 2.0**-7
    names = ("rgb", "depth", *GRADS)
    for name, got, lo, hi in zip(names, out + grads, out_lo + grads_lo, out32 + grads32, strict=True):
        assert got.dtype == dtype, name
        assert_close_lowp(got, lo, hi, atol=eps * hi.abs().max().item(), name=name)


def test_density_only_pass_returns_the_weights(device):
    leaves, rays, _ = _scene(2, 7, 12, 16, 32, 16, device=device, seed=6, miss=1)
    planes, w1, b1, w2, b2 = leaves
    _, _, weights = render_rays(planes, *rays, w1, b1, w2, b2, return_weights=True, impl="triton")
    want = render_rays_ref(planes, *rays, w1, b1, w2, b2, return_weights=True)[2]
    coarse = render_rays_weights(planes, *rays, w1, b1, w2, b2, impl="triton")
    density_head = render_rays_weights(planes, *rays, w1, b1, w2[:, :1], b2[:1], impl="triton")  # no colour columns
    for got in (weights, coarse, density_head):
        assert got.shape == (2, 7, 11, 1) and not got.requires_grad
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert torch.equal(coarse, density_head)
    torch.testing.assert_close(render_rays_weights(planes, *rays, w1, b1, w2, b2, impl="reference"), want)


@pytest.mark.parametrize("frozen", ["planes", "decoder"])
def test_gradient_to_one_side_only(frozen, device):
    """Frozen decoder (only dplanes is launched) and constant planes (only the decoder's partial sums)."""
    leaves, rays, up = _scene(1, 6, 9, 8, 16, 4, device=device, seed=7)
    if frozen == "planes":
        leaves[0] = leaves[0].detach()
    else:
        leaves[1:] = [t.detach() for t in leaves[1:]]
    wanted = [t for t in leaves if t.requires_grad]

    def go(fn):
        rgb, depth = fn(leaves[0], *rays, *leaves[1:])
        return torch.autograd.grad([rgb, depth], wanted, up)

    for a, b in zip(go(_triton), go(_ref), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_rays_and_depths_get_no_gradient(device):
    leaves, rays, _ = _scene(1, 4, 5, 8, 16, 3, device=device)
    rays = [t.clone().requires_grad_(True) for t in rays]
    for fn in (_triton, _ref):
        rgb, depth = fn(leaves[0], *rays, *leaves[1:])
        (rgb.sum() + depth.sum()).backward()
        assert all(t.grad is None for t in rays) and leaves[0].grad is not None


def test_saves_per_ray_state_only(device):
    """Besides its inputs the Triton path keeps rgb_acc [B, R, Cf] and stats [B, R, 3]; the reference keeps
    per-sample tensors ([B, R*S, hidden] and up)."""
    leaves, rays, _ = _scene(2, 6, 11, 8, 16, 5, device=device)
    inputs = {t.untyped_storage()._cdata for t in [*leaves, *rays]}

    def kept(fn):
        _, saved, _ = saved_tensor_bytes(fn, leaves[0], *rays, *leaves[1:])
        return [tuple(t.shape) for t in saved if t.untyped_storage()._cdata not in inputs]

    assert sorted(kept(_triton)) == [(2, 6, 3), (2, 6, 5)]
    assert any(11 * 6 in shape or 11 in shape for shape in kept(_ref))  # the check does see per-sample tensors


def test_empty_ray_set(device):
    leaves, rays, _ = _scene(2, 0, 5, 8, 16, 3, device=device)
    rgb, depth = _triton(leaves[0], *rays, *leaves[1:])
    assert rgb.shape == (2, 0, 3) and depth.shape == (2, 0, 1)
    grads = torch.autograd.grad(rgb.sum() + depth.sum(), leaves)
    assert all(g.shape == t.shape and not g.any() for g, t in zip(grads, leaves, strict=True))


@pytest.mark.parametrize("white_back", [False, True], ids=["black", "white"])
def test_reference_gradcheck_float64(white_back):
    leaves, rays, _ = _scene(1, 3, 4, 3, 5, 2, res=(4, 5), dtype=torch.float64, seed=8, miss=1)
    rays = [t.double() for t in rays]

    def fn(planes, w1, b1, w2, b2):
        return render_rays_ref(planes, *rays, w1, b1, w2, b2, axes="eg3d", white_back=white_back)

    assert torch.autograd.gradcheck(fn, tuple(leaves))


def test_opcheck(device):
    leaves, rays, _ = _scene(1, 5, 4, 4, 8, 3, device=device, seed=9)
    planes, w1, b1, w2, b2 = leaves
    torch.library.opcheck(torch.ops.export3d.render_rays_fwd.default,
                          (planes, *rays, w1, b1, w2, b2, "eg3d", 1.0, -1.0, True, False))  # fmt: skip
    detached = [t.detach() for t in (planes, *rays, w1, b1, w2, b2)]
    torch.library.opcheck(torch.ops.export3d.render_rays_weights.default, (*detached, "xyz", 1.0, -1.0))


def test_torch_compile_fullgraph_matches_eager(device):
    torch._dynamo.reset()
    leaves, rays, _ = _scene(1, 6, 5, 8, 16, 4, device=device, seed=10)
    target = torch.rand(1, 6, 4, generator=torch.Generator().manual_seed(0)).to(device)

    def loss_fn(planes, w1, b1, w2, b2):
        rgb, depth = render_rays(planes, *rays, w1, b1, w2, b2, white_back=True, impl="triton")
        return (rgb - target).square().mean() + 0.1 * depth.mean()

    eager = loss_fn(*leaves)
    # aot_eager: one graph through dynamo and AOT autograd (what fullgraph is about) without inductor's slow codegen
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(*leaves)
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)
    for a, b in zip(torch.autograd.grad(compiled, leaves), torch.autograd.grad(eager, leaves), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def _tf32(x):
    """Round fp32 to TF32 (10 mantissa bits), to nearest with ties away from zero, like ``cvt.rna.tf32.f32``."""
    return ((x.contiguous().view(torch.int32) + 0x1000) & ~0x1FFF).view(torch.float32)


def _mm_tf32x3(a, b):
    """What ``tl.dot(..., input_precision="tf32x3")`` computes on a GPU: a_hi b_hi + a_hi b_lo + a_lo b_hi."""
    a_hi, b_hi = _tf32(a), _tf32(b)
    a_lo, b_lo = _tf32(a - a_hi), _tf32(b - b_hi)
    return a_lo @ b_hi + a_hi @ b_lo + a_hi @ b_hi


def test_tf32x3_bound():
    """The interpreter computes every tl.dot in exact fp32; on a GPU the kernels use tf32x3 at the paper's widths.

    Emulated here: every product the kernels form (forward and backward shapes, model-like magnitudes) stays within
    fp32's own error bound ``2^-17 |a| |b|`` of float64 (plain TF32 does not), and a whole forward render with
    emulated decoder products stays within the parity tolerances of the fp32 reference.
    """
    leaves, rays, _ = _scene(1, 16, 24, seed=11)
    planes, w1, b1, w2, b2 = (t.detach() for t in leaves)
    g = torch.Generator().manual_seed(1)
    f, d_pre, d_logit = (torch.randn(16, n, generator=g) for n in (32, 64, 32))
    h = F.softplus(f @ w1 + b1)
    for a, b in [(f, w1), (h, w2[:, 1:]), (d_logit, w2[:, 1:].T), (d_pre, w1.T), (h.T, d_logit), (f.T, d_pre)]:
        exact = a.double() @ b.double()
        bound = 2.0**-17 * (a.double().abs() @ b.double().abs())
        assert ((_mm_tf32x3(a, b) - exact).abs() <= bound).all()
        assert ((a @ b - exact).abs() <= bound).all()  # fp32 itself meets the same bound
        assert not ((_tf32(a) @ _tf32(b) - exact).abs() <= bound).all()  # plain TF32 does not

    B, R, S, _ = rays[2].shape
    points = rays[0][:, :, None] + rays[2] * rays[1][:, :, None]
    feats = triplane_sample_ref(planes, points.reshape(B, R * S, 3))
    out = _mm_tf32x3(F.softplus(_mm_tf32x3(feats[0], w1) + b1), w2) + b2
    color = (torch.sigmoid(out[:, 1:]) * 1.002 - 0.001).view(B, R, S, -1)
    rgb, depth, _ = composite_rays_ref(color, out[:, :1].reshape(B, R, S, 1), rays[2])
    rgb_ref, depth_ref = render_rays_ref(planes, *rays, w1, b1, w2, b2)
    torch.testing.assert_close(rgb, rgb_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(depth, depth_ref, atol=2e-5, rtol=1e-4)


def _docs_example() -> str:
    """The EG3D example of docs/kernels.md (the python block of its render_rays section)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "kernels.md").read_text()
    section = text.split("## `render_rays` in an EG3D-style renderer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_eg3d_example_in_the_docs(device):
    """The documented OSGDecoder renderer runs as written, and through the Triton op it equals the reference."""
    ns: dict = {}
    exec(_docs_example(), ns)  # our own documentation: it runs on the CPU reference path
    assert ns["features"].shape == (2, 100, 32) and ns["depth"].shape == (2, 100, 1)
    assert ns["planes"].grad.abs().sum() > 0 and all(p.grad is not None for p in ns["decoder"].parameters())

    torch.manual_seed(0)
    decoder = ns["OSGDecoder"]().to(device)
    planes = (torch.randn(1, 3, 32, 16, 16) * 2).to(device).requires_grad_(True)
    origins = torch.tensor([0.0, 0.0, 2.7]).expand(1, 16, 3)
    directions = F.normalize(torch.rand(1, 16, 3) * 0.6 - 0.3 - origins, dim=-1)
    leaves = [planes, *decoder.parameters()]

    def run(impl):
        out = ns["render"](planes, origins.to(device), directions.to(device), decoder, 8, 8, training=False, impl=impl)
        return [t.detach() for t in out] + list(torch.autograd.grad(out[0].square().mean() + out[1].mean(), leaves))

    for a, b in zip(run("triton"), run("reference"), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_auto_is_the_reference_on_cpu():
    leaves, rays, _ = _scene(1, 3, 4, 4, 8, 3)
    got, want = render_rays(leaves[0], *rays, *leaves[1:]), render_rays_ref(leaves[0], *rays, *leaves[1:])
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


# ------------------------------------------------------------------------------------------- errors
def _ok():
    """planes [2, 3, 4, 5, 6], rays [2, 3, *], depths S = 5, decoder 4 -> 8 -> 1 + 3."""
    leaves, rays, _ = _scene(2, 3, 5, 4, 8, 3, res=(5, 6))
    return [t.detach() for t in leaves[:1] + rays + leaves[1:]]


def _with(i, fn):
    return lambda args: [fn(a) if j == i else a for j, a in enumerate(args)]


@pytest.mark.parametrize(
    "make, match",
    [
        (_with(0, lambda p: p[0]), r"planes must have 5 dimensions"),
        (_with(0, lambda p: p[:, :2]), r"planes must have shape \[B, 3, C, H, W\]"),
        (_with(1, lambda o: o[:1]), r"origins must have shape \[2, \*, 3\]"),
        (_with(1, lambda o: o[..., :2]), r"origins must have shape \[2, \*, 3\]"),
        (_with(2, lambda d: d[:, :2]), r"directions must have shape \[2, 3, 3\]"),
        (_with(3, lambda z: z[..., 0]), r"depths must have shape \[2, 3, \*, 1\]"),
        (_with(3, lambda z: z[:, :, :1]), r"S >= 2"),
        (_with(4, lambda w: w[:3]), r"w1 must have shape \[4, \*\]"),
        (_with(5, lambda b: b[:7]), r"b1 must have shape \[8\]"),
        (_with(6, lambda w: w[:7]), r"w2 must have shape \[8, \*\]"),
        (_with(6, lambda w: w[:, :1]), r"w2 must have shape \[hidden, 1 \+ Cf\] with Cf >= 1"),
        (_with(7, lambda b: b[:3]), r"b2 must have shape \[4\]"),
        (_with(4, lambda w: w.half()), r"w1 has dtype torch.float16 but planes has torch.float32"),
        (_with(0, lambda p: p.long()), r"planes must be float32, float16 or bfloat16"),
        (_with(3, lambda z: z.half()), r"depths has dtype torch.float16 but origins has torch.float32"),
        (_with(7, lambda b: b.to("meta")), r"b2 is on meta but planes is on cpu"),
        (_with(2, lambda d: d.to("meta")), r"directions is on meta but origins is on cpu"),
    ],
)
def test_bad_inputs_name_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        render_rays(*make(_ok()))


def test_bad_options_and_too_wide_planes(device):
    args = _ok()
    with pytest.raises(ValueError, match=r"impl must be one of"):
        render_rays(*args, impl="cuda")
    with pytest.raises(ValueError, match=r"axes must be one of"):
        render_rays(*args, axes="zyx")
    with pytest.raises(ValueError, match=r"box_warp must be > 0"):
        render_rays_weights(*args, box_warp=0.0)
    leaves, rays, _ = _scene(1, 2, 3, MAX_C + 1, 8, 3, res=(2, 2), device=device)
    wide = [leaves[0], *rays, *leaves[1:]]
    with pytest.raises(ValueError, match=rf"impl='triton' takes C <= {MAX_C}"):
        render_rays(*wide, impl="triton")
    assert render_rays(*wide)[0].shape == (1, 2, 3)  # auto falls back to the reference
