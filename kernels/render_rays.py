"""The whole tri-plane ray pipeline in one op: sample the planes, run the decoder MLP, composite.

planes ``[B, 3, C, H, W]``, origins / directions ``[B, R, 3]``, ascending depths ``[B, R, S, 1]``, decoder
``w1 [C, h]``, ``b1 [h]``, ``w2 [h, 1 + Cf]``, ``b2 [1 + Cf]`` -> rgb ``[B, R, Cf]``, depth ``[B, R, 1]`` (and the
weights ``[B, R, S-1, 1]`` on request). Semantics: ``reference.render_rays_ref`` = ``triplane_sample_ref`` at
``o + t d``, ``h = softplus(f @ w1 + b1)``, ``o = h @ w2 + b2``, raw density ``o[..., 0]``, colour
``sigmoid(o[..., 1:]) * 1.002 - 0.001``, then ``composite_rays_ref``. One head ``[h, 1 + Cf]`` is EG3D's
OSGDecoder (``axes="eg3d"`` loads its planes unchanged) or a separate density and colour head concatenated.

Forward (``render_rays_kernels._render_fwd_kernel``): one program per block of BLOCK_R rays of one batch
element walks the samples in order; per sample it gathers the three planes' taps, runs the MLP in registers
(``tl.dot`` with fp32-level products, IEEE or tf32x3, never plain TF32: see the kernels' docstring) and
composites exactly as ``composite_rays``' kernel does (same stable softplus, expm1-style alpha, depth clamp).
It keeps per ray only what ``composite_rays`` keeps: ``rgb_acc [B, R, Cf]`` and ``stats [B, R, 3]`` (fp32).
Nothing per sample is written (except the weights when asked) or saved.

Backward (``_render_bwd_kernel``; on GPU two launches, see ``_bwd_parts``): the same grid walks the samples
again, recomputing each sample's features,
hidden layer and outputs; composite_rays' suffix-sum backward gives each interval's density and colour
gradient, and one step later (when both intervals of a sample are known) the sample is back-propagated through
the decoder: ``dw2 += h^T do``, ``dh = do w2^T``, ``dpre = dh * sigmoid(pre)``, ``dw1 += f^T dpre``, ``df = dpre
w1^T``. ``df / 3`` is scatter-added to the planes with fp32 atomics into a channel-last buffer, as
``triplane_sample`` does (summation order, hence the last bits, not deterministic on GPU). The decoder gradients
are per-program partial sums written to ``[programs, n_params]`` and summed by one ``torch.sum`` after the
kernel: deterministic. The buffer is transient: 4,257 floats per program at C = 32, h = 64, Cf = 32 (256
programs per batch element at 64 x 64 rays: 4.2 MiB).

Not differentiated: origins, directions and depths (constants of the renderer: the rays come from the camera,
the depths from stratified / importance sampling) and the returned weights (they feed importance sampling,
which is not differentiated). The reference detaches them too, so both paths have one contract.

``render_rays_weights`` is the density-only coarse pass: the same forward kernel without the colour head,
storing the weights only; it runs without autograd.
"""

import torch
import triton

from .reference import render_rays_ref
from .render_rays_kernels import _render_bwd_kernel, _render_fwd_kernel
from .triplane_sample import _gather_planes
from .utils import AotSpec, check_same, check_tensor, launch, next_power_of_2, use_triton

AXES = ("xyz", "eg3d")
MAX_C, MAX_HIDDEN, MAX_CF = 32, 64, 32  # the Triton path's widths (register tiles; AOT-checked at these maxima)
BLOCK_R = 16  # rays per program: tl.dot needs M >= 16
_FWD_WARPS, _BWD_WARPS = 8, 8  # at 4 the backward spills and the forward needs ~236 registers (ptxas, sm_80)


def _blocks(C: int, hidden: int, cf: int) -> dict:
    """BLOCK_C, BLOCK_H, BLOCK_F: powers of two >= 16 (tl.dot's minimum K and N), padding masked to zero; and DOT,
    the tl.dot precision: IEEE FMA where it fits the registers, fp32-accurate tf32x3 above (kernels' docstring)."""
    block_c, block_h, block_f = (max(16, next_power_of_2(n)) for n in (C, hidden, cf))
    dot = "ieee" if block_c * block_h <= 512 else "tf32x3"
    return {"BLOCK_R": BLOCK_R, "BLOCK_C": block_c, "BLOCK_H": block_h, "BLOCK_F": block_f, "DOT": dot}


def _bwd_parts(device: torch.device) -> tuple[tuple[bool, bool], ...]:
    """The backward's launches as (plane gradient, decoder gradient) flags. On GPU one launch each: fused, the two
    need more than 255 registers per thread at C = 32, hidden 64, Cf = 32 (ptxas -v, sm_80, 8 warps: 255 + 404
    bytes spilled; 1,300 at 4 warps), apart each fits, at the price of recomputing the samples twice. Under the
    interpreter (CPU tensors) registers do not exist and one fused launch halves the test time; both split
    variants are still tested there (``test_gradient_to_one_side_only``)."""
    return ((True, False), (False, True)) if device.type == "cuda" else ((True, True),)


def _n_params(C: int, hidden: int, cf: int) -> int:
    return C * hidden + hidden + hidden * (1 + cf) + 1 + cf


# ----------------------------------------------------------------------------------------------- launchers
def _launch_fwd(planes, origins, directions, depths, w1, b1, w2, b2, axes, box_warp, density_bias, white_back,
                need_weights, color=True):  # fmt: skip
    B, _, C, H, W = planes.shape
    R, S = depths.shape[1], depths.shape[2]
    hidden, cf = w1.shape[1], w2.shape[1] - 1
    rgb = planes.new_empty((B, R, cf) if color else (0,))
    depth = planes.new_empty((B, R, 1) if color else (0,))
    weights = planes.new_empty((B, R, S - 1, 1) if need_weights else (0,))
    rgb_acc = planes.new_empty((B, R, cf) if color else (0,), dtype=torch.float32)
    stats = planes.new_empty((B, R, 3) if color else (0,), dtype=torch.float32)
    if B * R == 0:
        return rgb, depth, weights, rgb_acc, stats
    src = _gather_planes(planes, R * S)
    launch(_render_fwd_kernel, (triton.cdiv(R, BLOCK_R), B),
        src, origins.contiguous(), directions.contiguous(), depths.contiguous(), w1.contiguous(), b1.contiguous(),
        w2.contiguous(), b2.contiguous(), rgb, depth, weights, rgb_acc, stats,
        R, S, H, W, *src.stride(), 2.0 / box_warp, density_bias,
        EG3D=axes == "eg3d", COLOR=color, STORE_WEIGHTS=need_weights, WHITE_BACK=white_back, C=C, HID=hidden, CF=cf,
        **_blocks(C, hidden, cf), num_warps=_FWD_WARPS,
    )  # fmt: skip
    return rgb, depth, weights, rgb_acc, stats


def _launch_bwd(g_rgb, g_depth, planes, origins, directions, depths, w1, b1, w2, b2, rgb_acc, stats, axes, box_warp,
                density_bias, white_back, need_dplanes, need_dweights):  # fmt: skip
    B, _, C, H, W = planes.shape
    R, S = depths.shape[1], depths.shape[2]
    hidden, cf = w1.shape[1], w2.shape[1] - 1
    n_r = triton.cdiv(R, BLOCK_R)
    dev = planes.device
    acc = torch.zeros((B, 3, H, W, C) if need_dplanes else (0,), dtype=torch.float32, device=dev)
    part = torch.zeros((B * n_r if need_dweights else 0, _n_params(C, hidden, cf)), dtype=torch.float32, device=dev)
    if B * R > 0 and (need_dplanes or need_dweights):
        src = _gather_planes(planes, R * S)
        args = (src, origins.contiguous(), directions.contiguous(), depths.contiguous(), w1.contiguous(),
                b1.contiguous(), w2.contiguous(), b2.contiguous(), rgb_acc.contiguous(), stats.contiguous(),
                g_rgb.contiguous(), g_depth.contiguous(), acc if need_dplanes else stats,
                part if need_dweights else stats, R, S, H, W, *src.stride(), 2.0 / box_warp, density_bias)  # fmt: skip
        for dplanes_part, dw_part in _bwd_parts(dev):
            if (dplanes_part and need_dplanes) or (dw_part and need_dweights):
                launch(_render_bwd_kernel, (n_r, B),
                    *args, EG3D=axes == "eg3d", WHITE_BACK=white_back, NEED_DPLANES=dplanes_part and need_dplanes,
                    NEED_DW=dw_part and need_dweights, C=C, HID=hidden, CF=cf, **_blocks(C, hidden, cf),
                    num_warps=_BWD_WARPS,
                )  # fmt: skip
    if need_dplanes:
        dplanes = torch.empty(planes.shape, dtype=planes.dtype, device=dev)
        dplanes.copy_(acc.permute(0, 1, 4, 2, 3))  # back to [B, 3, C, H, W], cast to the planes' dtype
    else:
        dplanes = planes.new_empty(0)
    if not need_dweights:
        return dplanes, w1.new_empty(0), w1.new_empty(0), w1.new_empty(0), w1.new_empty(0)
    total = part.sum(0)  # the deterministic reduction of the per-program partial sums
    sizes = (C * hidden, hidden, hidden * (1 + cf), 1 + cf)
    # one copy per gradient (custom-op outputs may not alias each other)
    grads = [g.view(p.shape).to(p.dtype, copy=True) for g, p in zip(total.split(sizes), (w1, b1, w2, b2), strict=True)]
    return dplanes, *grads


# ----------------------------------------------------------------------------------------------- registration
@torch.library.custom_op("export3d::render_rays_fwd", mutates_args=())
def _render_rays_fwd(
    planes: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    depths: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    axes: str,
    box_warp: float,
    density_bias: float,
    white_back: bool,
    need_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(rgb, depth, weights, rgb_acc, stats)``; weights is empty unless ``need_weights``."""
    return _launch_fwd(planes, origins, directions, depths, w1, b1, w2, b2, axes, box_warp, density_bias,
                       white_back, need_weights)  # fmt: skip


@_render_rays_fwd.register_fake
def _(planes, origins, directions, depths, w1, b1, w2, b2, axes, box_warp, density_bias, white_back, need_weights):
    B, R, S, cf = planes.shape[0], depths.shape[1], depths.shape[2], w2.shape[1] - 1
    return (
        planes.new_empty((B, R, cf)),
        planes.new_empty((B, R, 1)),
        planes.new_empty((B, R, S - 1, 1) if need_weights else (0,)),
        planes.new_empty((B, R, cf), dtype=torch.float32),
        planes.new_empty((B, R, 3), dtype=torch.float32),
    )


@torch.library.custom_op("export3d::render_rays_bwd", mutates_args=())
def _render_rays_bwd(
    g_rgb: torch.Tensor,
    g_depth: torch.Tensor,
    planes: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    depths: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    rgb_acc: torch.Tensor,
    stats: torch.Tensor,
    axes: str,
    box_warp: float,
    density_bias: float,
    white_back: bool,
    need_dplanes: bool,
    need_dweights: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(dplanes, dw1, db1, dw2, db2)``; unrequested ones are empty."""
    return _launch_bwd(g_rgb, g_depth, planes, origins, directions, depths, w1, b1, w2, b2, rgb_acc, stats, axes,
                       box_warp, density_bias, white_back, need_dplanes, need_dweights)  # fmt: skip


@_render_rays_bwd.register_fake
def _(g_rgb, g_depth, planes, origins, directions, depths, w1, b1, w2, b2, rgb_acc, stats, axes, box_warp,
      density_bias, white_back, need_dplanes, need_dweights):  # fmt: skip
    dplanes = planes.new_empty(planes.shape if need_dplanes else (0,))
    if not need_dweights:
        return dplanes, w1.new_empty(0), w1.new_empty(0), w1.new_empty(0), w1.new_empty(0)
    return dplanes, w1.new_empty(w1.shape), w1.new_empty(b1.shape), w1.new_empty(w2.shape), w1.new_empty(b2.shape)


def _setup_context(ctx, inputs, output):
    planes, origins, directions, depths, w1, b1, w2, b2, axes, box_warp, density_bias, white_back, _ = inputs
    _rgb, _depth, weights, rgb_acc, stats = output
    # The inputs (no new memory) and per-ray totals only: every sample is recomputed in the backward.
    ctx.save_for_backward(planes, origins, directions, depths, w1, b1, w2, b2, rgb_acc, stats)
    ctx.mark_non_differentiable(weights, rgb_acc, stats)
    ctx.axes, ctx.box_warp, ctx.density_bias, ctx.white_back = axes, box_warp, density_bias, white_back
    ctx.need_dplanes = ctx.needs_input_grad[0]
    ctx.need_dweights = any(ctx.needs_input_grad[4:8])


def _backward(ctx, g_rgb, g_depth, _g_weights, _g_rgb_acc, _g_stats):
    planes, origins, directions, depths, w1, b1, w2, b2, rgb_acc, stats = ctx.saved_tensors
    g_rgb = torch.zeros_like(rgb_acc, dtype=planes.dtype) if g_rgb is None else g_rgb
    g_depth = planes.new_zeros(stats.shape[:2] + (1,)) if g_depth is None else g_depth
    dplanes, dw1, db1, dw2, db2 = torch.ops.export3d.render_rays_bwd(
        g_rgb, g_depth, planes, origins, directions, depths, w1, b1, w2, b2, rgb_acc, stats, ctx.axes, ctx.box_warp,
        ctx.density_bias, ctx.white_back, ctx.need_dplanes, ctx.need_dweights,
    )  # fmt: skip
    dw = (dw1, db1, dw2, db2) if ctx.need_dweights else (None,) * 4
    # rays and depths: no gradient (constants of the renderer); then the 5 non-tensor arguments
    return dplanes if ctx.need_dplanes else None, None, None, None, *dw, None, None, None, None, None


_render_rays_fwd.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("export3d::render_rays_weights", mutates_args=())
def _render_rays_weights(
    planes: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    depths: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    axes: str,
    box_warp: float,
    density_bias: float,
) -> torch.Tensor:
    """The density-only pass: weights ``[B, R, S-1, 1]`` (no colour head, no autograd)."""
    return _launch_fwd(planes, origins, directions, depths, w1, b1, w2, b2, axes, box_warp, density_bias, False,
                       True, color=False)[2]  # fmt: skip


@_render_rays_weights.register_fake
def _(planes, origins, directions, depths, w1, b1, w2, b2, axes, box_warp, density_bias):
    return planes.new_empty((planes.shape[0], depths.shape[1], depths.shape[2] - 1, 1))


# ----------------------------------------------------------------------------------------------- public functions
def _check(op, planes, origins, directions, depths, w1, b1, w2, b2, axes, box_warp, min_cf):
    """Shapes, dtypes and devices of every argument, with messages that name it."""
    check_tensor("planes", planes, op=op, ndim=5)
    B, _, C = planes.shape[:3]
    if planes.shape[1] != 3:
        raise ValueError(f"{op}: planes must have shape [B, 3, C, H, W], got {tuple(planes.shape)}")
    check_tensor("origins", origins, op=op, shape=(B, None, 3))
    R = origins.shape[1]
    check_tensor("directions", directions, op=op, shape=(B, R, 3))
    check_tensor("depths", depths, op=op, shape=(B, R, None, 1))
    if depths.shape[2] < 2:
        raise ValueError(f"{op}: need at least 2 samples per ray (S >= 2), got depths of shape {tuple(depths.shape)}")
    check_tensor("w1", w1, op=op, shape=(C, None))  # C from the planes
    hidden = w1.shape[1]
    check_tensor("b1", b1, op=op, shape=(hidden,))
    check_tensor("w2", w2, op=op, shape=(hidden, None))
    if w2.shape[1] < 1 + min_cf:
        raise ValueError(f"{op}: w2 must have shape [hidden, 1 + Cf] with Cf >= {min_cf} (column 0 is the density), "
                         f"got {tuple(w2.shape)}")  # fmt: skip
    check_tensor("b2", b2, op=op, shape=(w2.shape[1],))
    check_same(op, "planes", planes, w1=w1, b1=b1, w2=w2, b2=b2)
    check_same(op, "origins", origins, directions=directions, depths=depths)
    if origins.device != planes.device:
        raise ValueError(f"{op}: origins is on {origins.device} but planes is on {planes.device}; use one device")
    if axes not in AXES:
        raise ValueError(f"{op}: axes must be one of {AXES}, got {axes!r}")
    if not box_warp > 0:
        raise ValueError(f"{op}: box_warp must be > 0, got {box_warp}")


def _triton_fits(op, impl, planes, w1, w2) -> bool:
    _, _, C, H, W = planes.shape
    hidden, cf = w1.shape[1], w2.shape[1] - 1
    if C <= MAX_C and hidden <= MAX_HIDDEN and cf <= MAX_CF and C * H * W < 2**31:
        return True
    if impl == "triton":
        raise ValueError(
            f"{op}: impl='triton' takes C <= {MAX_C}, hidden <= {MAX_HIDDEN}, Cf <= {MAX_CF} and C*H*W < 2^31, got "
            f"planes {tuple(planes.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}; use impl='reference'"
        )
    return False


def render_rays(planes, origins, directions, depths, w1, b1, w2, b2, *, axes: str = "xyz", box_warp: float = 1.0,
                density_bias: float = -1.0, white_back: bool = False, return_weights: bool = False,
                impl: str = "auto") -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Render S samples per ray through a tri-plane and a decoder MLP in one pass (EG3D's renderer, fused).

    Args:
        planes: ``[B, 3, C, Hp, Wp]`` features (any strides); fp32, fp16 or bf16, like the decoder weights.
        origins, directions: ``[B, R, 3]`` rays (any float dtype, shared with depths); points are ``o + t d``.
        depths: ``[B, R, S, 1]`` ascending sample depths, S >= 2.
        w1, b1: ``[C, hidden]``, ``[hidden]``: ``h = softplus(f @ w1 + b1)`` on the mean-of-planes feature f.
        w2, b2: ``[hidden, 1 + Cf]``, ``[1 + Cf]``: column 0 is the raw density, the rest the colour logits
            (``sigmoid * 1.002 - 0.001``); EG3D's OSGDecoder head as it is, or density and colour heads concatenated.
        axes, box_warp: plane projection and box size, as :func:`triplane_sample`.
        density_bias, white_back: as :func:`composite_rays`.
        return_weights: also return the compositing weights ``[B, R, S-1, 1]`` (detached: for importance sampling).
        impl: ``"auto"`` (Triton on CUDA, reference otherwise), ``"triton"`` or ``"reference"``.

    Returns ``(rgb [B, R, Cf], depth [B, R, 1])`` (``+ (weights,)``) in ``planes.dtype``. Gradients flow to planes,
    w1, b1, w2 and b2 only: rays and depths are treated as constants on both paths. The Triton path takes
    ``C <= MAX_C``, ``hidden <= MAX_HIDDEN`` and ``Cf <= MAX_CF`` (32, 64, 32), saves per-ray state only (no
    ``[B, R, S, *]`` tensor) and recomputes every sample in
    the backward; its plane gradient is summed with atomics, so its last bits are not deterministic on GPU.
    """
    op = "render_rays"
    _check(op, planes, origins, directions, depths, w1, b1, w2, b2, axes, box_warp, min_cf=1)
    args = (planes, origins, directions, depths, w1, b1, w2, b2)
    if use_triton(impl, *args, op=op) and _triton_fits(op, impl, planes, w1, w2):
        rgb, depth, weights, _, _ = torch.ops.export3d.render_rays_fwd(
            *args, axes, float(box_warp), float(density_bias), bool(white_back), bool(return_weights)
        )
        return (rgb, depth, weights) if return_weights else (rgb, depth)
    return render_rays_ref(*args, axes, box_warp, density_bias, white_back, return_weights)


def render_rays_weights(planes, origins, directions, depths, w1, b1, w2, b2, *, axes: str = "xyz",
                        box_warp: float = 1.0, density_bias: float = -1.0, impl: str = "auto"):  # fmt: skip
    """The density-only coarse pass of :func:`render_rays`: compositing weights ``[B, R, S-1, 1]``, no gradient.

    Takes the same arguments; only column 0 of w2 / b2 (the density) is used, so ``w2 [hidden, 1]`` works too.
    The weights are those :func:`render_rays` returns (``return_weights=True``), without running the colour head.
    """
    op = "render_rays_weights"
    _check(op, planes, origins, directions, depths, w1, b1, w2, b2, axes, box_warp, min_cf=0)
    args = tuple(t.detach() for t in (planes, origins, directions, depths, w1, b1, w2, b2))
    if use_triton(impl, *args, op=op) and _triton_fits(op, impl, planes, w1, w2):
        return torch.ops.export3d.render_rays_weights(*args, axes, float(box_warp), float(density_bias))
    with torch.no_grad():
        return render_rays_ref(*args[:6], args[6][:, :1], args[7][:1], axes, box_warp, density_bias, False, True)[2]


# ----------------------------------------------------------------------------------------------- AOT configurations
def aot_specs() -> list[AotSpec]:
    """Configurations compiled by ``python -m export3d.kernels.aot``: the paper preset's widths (C = 32, hidden 64,
    Cf = 32, the Triton path's maxima) in fp32 and bf16, both axis modes and backgrounds, the tiny preset's (16, 32,
    16), the density-only pass and both backward launches. Planes are the channel-last copy (``s_c`` = 1, as Triton
    specialises it at run time). Other widths are masked inside these tiles: correct (tested under the
    interpreter) but not spill-checked."""
    scalars = {"R": "i32", "S": "i32", "H": "i32", "W": "i32", "s_b": "i32", "s_p": "i32", "s_c": "i32", "s_h": "i32",
               "s_w": "i32", "scale": "fp32", "density_bias": "fp32"}  # fmt: skip
    rays = ("ORIGINS", "DIRS", "DEPTHS")
    configs = [  # dtype, (C, hidden, Cf), eg3d, white_back, with the density-only pass
        ("fp32", (32, 64, 32), False, False, True),
        ("bf16", (32, 64, 32), True, True, False),
        ("fp32", (16, 32, 16), False, False, True),
    ]
    specs = []
    for dtype, (C, hidden, cf), eg3d, white_back, density_only in configs:
        blocks = {"C": C, "HID": hidden, "CF": cf, **_blocks(C, hidden, cf), "s_c": 1}
        label = f"{dtype} C={C} hidden={hidden} Cf={cf} {'eg3d' if eg3d else 'xyz'}{' white' if white_back else ''}"
        ptr = {n: "*fp32" if n in rays else f"*{dtype}" for n in ("PLANES", *rays, "W1", "B1", "W2", "B2")}
        for color in (True, False) if density_only else (True,):
            const = {"EG3D": eg3d, "COLOR": color, "STORE_WEIGHTS": not color, "WHITE_BACK": white_back, **blocks}
            sig = {**ptr, **{n: f"*{dtype}" for n in ("RGB", "DEPTH", "WEIGHTS")}, "RGB_ACC": "*fp32", "STATS": "*fp32",
                   **scalars}  # fmt: skip
            sig.update(dict.fromkeys(const, "constexpr"))
            name = label if color else f"{label} density-only"
            specs.append(AotSpec(_render_fwd_kernel, sig, const, _FWD_WARPS, name))
        for need_dp, need_dw in _bwd_parts(torch.device("cuda")):
            const = {"EG3D": eg3d, "WHITE_BACK": white_back, "NEED_DPLANES": need_dp, "NEED_DW": need_dw, **blocks}
            sig = {**ptr, "RGB_ACC": "*fp32", "STATS": "*fp32", "G_RGB": f"*{dtype}", "G_DEPTH": f"*{dtype}",
                   "DPLANES": "*fp32", "PART": "*fp32", **scalars}  # fmt: skip
            sig.update(dict.fromkeys(const, "constexpr"))
            part = "dplanes" if need_dp else "dw1 db1 dw2 db2"
            specs.append(AotSpec(_render_bwd_kernel, sig, const, _BWD_WARPS, f"{label} {part}"))
    return specs
