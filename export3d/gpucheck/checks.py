"""gpucheck's correctness checks: each fused op against its reference, run-to-run determinism, the whole model.

Tolerance rule (the project's, ``tests/kernels/helpers.py``): in fp32 ``|kernel - ref| <= atol * s + rtol * |ref|``
with ``s = max(1, max |ref|)`` (sums over thousands of terms, such as a plane gradient, scale with their size);
in fp16 / bf16 ``|kernel - ref32| <= 2 |ref_lowp - ref32| + atol`` (flash-attention's bound: the kernel may be at
most twice as far from the fp32 reference as PyTorch itself is in that precision), where ``ref32`` runs the
reference in fp32 on the same (upcast) inputs and ``atol`` is two units in the last place of the dtype at the
tensor's scale.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from export3d.gpucheck.ops import OPS, OpEntry, Sizes, forward_backward

FP32_TOL = {"outputs": (1e-5, 1e-4), "gradients": (1e-4, 1e-4)}  # (atol at unit scale, rtol)
EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TRIPLANE_ATOMICS_BOUND = 1e-5  # run-to-run |difference| of the plane gradient, relative to its largest entry


@dataclass
class Check:
    """One row of the report: a named check, whether it passed, and its numbers."""

    name: str
    ok: bool
    detail: str
    numbers: dict = field(default_factory=dict)


def _scale(ref: torch.Tensor) -> float:
    return max(1.0, ref.float().abs().max().item()) if ref.numel() else 1.0


def compare(out: torch.Tensor, ref32: torch.Tensor, ref_lowp: torch.Tensor | None, kind: str) -> tuple[bool, float]:
    """``(within the rule, worst error / allowed error)``; ``ref_lowp`` None means fp32."""
    if out.shape != ref32.shape:
        return False, float("inf")
    if out.numel() == 0:
        return True, 0.0
    err = (out.float() - ref32.float()).abs()
    if ref_lowp is None:
        atol, rtol = FP32_TOL[kind]
        allowed = atol * _scale(ref32) + rtol * ref32.float().abs()
    else:
        allowed = 2 * (ref_lowp.float() - ref32.float()).abs() + 2 * EPS[out.dtype] * _scale(ref32)
    finite = bool(torch.isfinite(out).all()) or not bool(torch.isfinite(ref32).all())
    ratio = (err / allowed).max().item()
    return finite and ratio <= 1.0, ratio


def check_op(entry: OpEntry, z: Sizes, dtype_name: str, device: torch.device, seed: int = 0) -> Check:
    """Outputs and gradients of ``entry`` against the reference in ``dtype_name``."""
    dtype = DTYPES[dtype_name]
    leaves = entry.leaves(z, dtype, device, seed)
    out, grads = forward_backward(entry, leaves, "triton")
    ref, ref_grads = forward_backward(entry, leaves, "reference")
    lowp = dtype != torch.float32
    if lowp:  # the fp32 reference on the same values
        up = tuple(t.detach().float().requires_grad_(t.requires_grad) for t in leaves)
        ref32, ref32_grads = forward_backward(entry, up, "reference")
    else:
        ref32, ref32_grads = ref, ref_grads
    worst, ok = {}, True
    for kind, got, hi, lo in (("outputs", out, ref32, ref), ("gradients", grads, ref32_grads, ref_grads)):
        for i, (a, b, c) in enumerate(zip(got, hi, lo, strict=True)):
            good, ratio = compare(a, b, c if lowp else None, kind)
            ok &= good and a.dtype == dtype
            worst[f"{kind[0]}{i}"] = ratio
    detail = "worst error / allowed: " + ", ".join(f"{k} {v:.2g}" for k, v in worst.items())
    return Check(f"{entry.name} {dtype_name}", ok, detail, {"worst_ratio": worst, "dtype": dtype_name})


def check_determinism(entry: OpEntry, z: Sizes, device: torch.device, seed: int = 0) -> Check:
    """Two fp32 runs of the kernels on the same inputs: bitwise equal where promised, else within a bound."""
    leaves = entry.leaves(z, torch.float32, device, seed)
    first = forward_backward(entry, leaves, "triton")
    second = forward_backward(entry, leaves, "triton")
    diffs = [(a.float() - b.float()).abs().max().item() if a.numel() else 0.0
             for a, b in zip(first[0] + first[1], second[0] + second[1], strict=True)]  # fmt: skip
    if entry.bitwise:
        ok = all(torch.equal(a, b) for a, b in zip(first[0] + first[1], second[0] + second[1], strict=True))
        promise = "bitwise"
    else:  # outputs bitwise (no atomics in the forward), gradients within a bound relative to their size
        ok = all(torch.equal(a, b) for a, b in zip(first[0], second[0], strict=True))
        ok &= all(d <= TRIPLANE_ATOMICS_BOUND * _scale(g) for d, g in zip(diffs[len(first[0]):], first[1], strict=True))
        promise = f"outputs bitwise, gradients within {TRIPLANE_ATOMICS_BOUND:g} x their largest entry (atomics)"
    detail = f"{promise}; largest run-to-run difference {max(diffs, default=0.0):.3g}"
    return Check(f"{entry.name} determinism", ok, detail, {"max_diff": max(diffs, default=0.0)})


def op_checks(size: str, z: Sizes, device: torch.device, dtypes: tuple[str, ...]) -> list[Check]:
    checks = []
    for entry in OPS.values():
        for dtype in dtypes:
            c = check_op(entry, z, dtype, device)
            c.name = f"{c.name} ({size})"
            checks.append(c)
        d = check_determinism(entry, z, device)
        d.name = f"{d.name} ({size})"
        checks.append(d)
    return checks


# ----------------------------------------------------------------------------------------------- whole model
MODEL_IMAGE_TOL = 2e-3  # max |fast - reference| of the images (range [-1, 1])
MODEL_GRAD_TOL = 2e-2  # max over parameters of ||g_fast - g_ref|| / ||g_ref||


def _model_pass(model, batch) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    model.eval()  # fixed sample depths (no jitter): both paths sample the same points
    model.zero_grad(set_to_none=True)
    out = model(*batch)
    (out.image.square().mean() + out.image_raw.square().mean() + 0.1 * out.depth_raw.mean()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return [out.image.detach(), out.image_raw.detach()], grads


def check_model(preset_name: str, device: torch.device, batch_size: int, kernel_impl: str | None,
                overrides: dict | None = None) -> Check:  # fmt: skip
    """``impl="fast"`` against ``impl="reference"`` from the same weights: one batch, images and gradients."""
    from export3d import Export3D
    from export3d.cameras import orbit_camera_deg

    torch.manual_seed(0)
    ref = Export3D.from_preset(preset_name, impl="reference", **(overrides or {})).to(device)
    for m in ref.modules():  # non-zero EAdaLN modulation, so that the condition path is exercised too
        if hasattr(m, "modulation"):
            torch.nn.init.normal_(m.modulation[1].weight, std=0.02)
    fast = copy.deepcopy(ref).set_impl("fast", kernel_impl)
    H, E = ref.config.image_size, ref.config.expression_dim
    g = torch.Generator().manual_seed(1)
    cams = torch.stack([orbit_camera_deg(y, 5.0) for y in torch.linspace(-20, 20, batch_size).tolist()])
    batch = [t.to(device) for t in (torch.rand(batch_size, 3, H, H, generator=g) * 2 - 1,
                                    torch.randn(batch_size, E, generator=g), cams)]  # fmt: skip
    imgs_ref, grads_ref = _model_pass(ref, batch)
    imgs_fast, grads_fast = _model_pass(fast, batch)
    image_err = max((a - b).abs().max().item() for a, b in zip(imgs_fast, imgs_ref, strict=True))
    rel = {n: ((grads_fast[n] - r).norm() / r.norm().clamp_min(1e-12)).item() for n, r in grads_ref.items()
           if r.norm() > 0}  # fmt: skip
    worst = max(rel, key=rel.get) if rel else "-"
    grad_err = rel.get(worst, 0.0)
    ok = image_err <= MODEL_IMAGE_TOL and grad_err <= MODEL_GRAD_TOL and set(grads_fast) == set(grads_ref)
    detail = (f"images: largest difference {image_err:.3g} (<= {MODEL_IMAGE_TOL:g}); gradients worst relative error "
              f"{grad_err:.3g} (<= {MODEL_GRAD_TOL:g}) at {worst}, {len(rel)} parameters")  # fmt: skip
    label = f"{preset_name} (shrunk)" if overrides else preset_name
    return Check(f"model {label} fast vs reference", ok, detail,
                 {"image_max_abs": image_err, "grad_worst_rel": grad_err, "grad_worst_param": worst})  # fmt: skip
