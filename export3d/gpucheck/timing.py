"""gpucheck's measurements: per-op forward / backward times and bandwidth, and the training step.

Times are medians over repeated calls after warm-up, taken with CUDA events on a GPU (``perf_counter`` on the
CPU, where they mean nothing under the interpreter and are reported as such). Bandwidth is the op's compulsory
bytes (:func:`export3d.gpucheck.bandwidth.op_bytes`) over the median time, and its fraction of the device's
peak. Nothing here asserts on a time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from export3d.gpucheck.bandwidth import op_bytes, peak_bandwidth
from export3d.gpucheck.ops import OPS, OpEntry, Sizes

PROVIDERS = ("triton", "reference", "compiled")


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def cuda_time(fn) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def cpu_time(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return cuda_time if device.type == "cuda" else cpu_time


def median_time(fn: Callable[[], object], device: torch.device, reps: int, warmup: int) -> float:
    timed = _timer(device)
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn) for _ in range(reps))


def time_op(entry: OpEntry, z: Sizes, provider: str, device: torch.device, reps: int, warmup: int) -> dict:
    """Forward (with autograd recording, as in training) and backward median seconds, GB/s and fraction of peak."""
    leaves = entry.leaves(z, torch.float32, device, 0)
    if provider == "compiled":
        compiled = torch.compile(lambda *t: entry.run(t, "reference"), dynamic=False)
        fn = lambda: compiled(*leaves)  # noqa: E731
    else:
        impl = "triton" if provider == "triton" else "reference"
        fn = lambda: entry.run(leaves, impl)  # noqa: E731
    wrt = [t for t in leaves if t.requires_grad]
    grads_out = [torch.randn_like(o) for o in fn()]
    timed, backward_s = _timer(device), []
    for _ in range(warmup + reps if wrt else 0):  # a fresh graph each time: compiled backward graphs need not be
        outs = fn()  # retainable
        backward_s.append(timed(lambda outs=outs: torch.autograd.grad(outs, wrt, grads_out)))
    row = {"op": entry.name, "provider": provider, "forward_s": median_time(fn, device, reps, warmup),
           "backward_s": statistics.median(backward_s[warmup:]) if wrt else None}  # fmt: skip
    peak, _ = peak_bandwidth(device)
    inputs = list(leaves)
    for mode in ("forward", "backward"):
        if row[f"{mode}_s"] is None:  # no gradient (render_rays_weights)
            row[f"{mode}_gbps"] = row[f"{mode}_peak_fraction"] = None
            continue
        gbps = op_bytes(entry.name, mode, inputs) / row[f"{mode}_s"] / 1e9
        row[f"{mode}_gbps"] = gbps
        row[f"{mode}_peak_fraction"] = gbps / peak if peak else None
    return row


def op_timings(z: Sizes, device: torch.device, providers: tuple[str, ...], reps: int, warmup: int) -> list[dict]:
    return [time_op(entry, z, p, device, reps, warmup) for entry in OPS.values() for p in providers]


# ----------------------------------------------------------------------------------------------- training step
def train_step_timings(preset_name: str, device: torch.device, batch_size: int, variants: tuple[str, ...],
                       steps: int, warmup: int, kernel_impl: str | None = None,
                       overrides: dict | None = None) -> list[dict]:  # fmt: skip
    """The reconstruction-stage generator step without LPIPS (forward, MSE on both images, backward, Adam) per
    variant (``reference``, ``fast``, ``fast+compile``): median seconds, images/s and peak memory (CUDA)."""
    from export3d import Export3D
    from export3d.cameras import orbit_camera_deg

    rows = []
    for variant in variants:
        torch._dynamo.reset()
        torch.manual_seed(0)
        impl = "reference" if variant == "reference" else "fast"
        model = Export3D.from_preset(preset_name, impl=impl, kernel_impl=kernel_impl if impl == "fast" else None,
                                     compile=variant.endswith("compile"), **(overrides or {})).to(device)  # fmt: skip
        model.train()
        opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("lebs.")], lr=1e-4)
        H, E = model.config.image_size, model.config.expression_dim
        cams = torch.stack([orbit_camera_deg(y, 5.0) for y in torch.linspace(-20, 20, batch_size).tolist()])
        src, drv = (torch.rand(batch_size, 3, H, H, device=device) * 2 - 1 for _ in range(2))
        beta, cams = torch.randn(batch_size, E, device=device), cams.to(device)
        raw_target = torch.nn.functional.interpolate(drv, size=model.config.render_resolution, mode="area")

        def step(model=model, opt=opt, src=src, drv=drv, beta=beta, cams=cams, raw_target=raw_target):
            out = model(src, beta, cams)
            loss = (out.image - drv).square().mean() + (out.image_raw - raw_target).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        seconds = median_time(step, device, steps, warmup)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        label = f"{preset_name} (shrunk)" if overrides else preset_name
        rows.append({"preset": label, "variant": variant, "batch": batch_size, "step_s": seconds,
                     "images_per_s": batch_size / seconds, "peak_memory_bytes": peak})  # fmt: skip
    return rows
