"""Helpers shared by the ``bench_*.py`` suites: devices, bytes-moved formulas, peak bandwidth, extra_info.

Every benchmark records in ``benchmark.extra_info``: the shapes, dtype and device, the provider and mode,
the bytes the op must move (:func:`op_bytes`, a formula per op, see below), the achieved GB/s and, on
CUDA, its fraction of the device's peak DRAM bandwidth (:func:`peak_bandwidth`), and the memory the
measured call needs: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU, where PyTorch keeps no
allocator statistics, the bytes the autograd graph saves for backward (``saved_tensor_bytes``).

Bytes moved are *compulsory* traffic: every input read once and every output written once, gathers and
scatters assumed to hit in cache (triplane_sample reads each plane texel once, not 4 x 3 times per point).
They are a lower bound on what any implementation moves, so GB/s computed from them is a fair yardstick
for a memory-bound kernel. Times are medians; no benchmark asserts on time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from benchmarks.cases import OPS, sized_case_inputs
from export3d.gpucheck.bandwidth import PEAK_GBPS, op_bytes, peak_bandwidth  # noqa: F401 - re-exported
from export3d.kernels import (
    bias_act_ref,
    composite_rays_ref,
    downsample2d,
    eadaln_ref,
    pixel_shuffle_lowpass_ref,
    render_rays_ref,
    triplane_sample_ref,
    upsample2d,
)
from export3d.kernels.utils import saved_tensor_bytes

PROVIDERS = ("reference", "compiled", "triton")
MODES = ("forward", "backward", "full")
REFS = {
    "triplane_sample": triplane_sample_ref,
    "composite_rays": composite_rays_ref,
    "pixel_shuffle_lowpass": pixel_shuffle_lowpass_ref,
    "eadaln": eadaln_ref,
    "render_rays": render_rays_ref,
    "upsample2d": functools.partial(upsample2d, impl="reference"),  # upfirdn2d_ref with EG3D's padding and gain
    "downsample2d": functools.partial(downsample2d, impl="reference"),
    "bias_act": functools.partial(bias_act_ref, act="lrelu", clamp=256.0),
}
TRITON_SKIP = "triton provider needs CUDA (the interpreter is a correctness tool, not a benchmark)"

def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync(dev: str | torch.device) -> None:
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


SETTINGS = {"threads": 1, "full": False}  # set from the command line by benchmarks/conftest.py


def full_suite() -> bool:
    """``--bench-full`` turns on the cases too slow for the CPU budget (compiled paper-preset model)."""
    return bool(SETTINGS["full"])


def bench_threads() -> int:
    """Intra-op threads for CPU benchmarks: ``--bench-threads N`` (default 1).

    On a shared 2-core machine every multi-threaded op waits for the OS to schedule its second thread:
    ``python -m export3d.profile`` measured the tiny training step at 13.1 s wall with 2 threads and 1.55 s
    with 1 (load averages 1.9 and 1.7), so the default of 1 thread measures the code, not the neighbours.
    """
    return int(SETTINGS["threads"])


@contextlib.contextmanager
def threads_for_benchmarks() -> Iterator[int]:
    """Set ``torch.set_num_threads(bench_threads())`` on the CPU for the duration, then restore it."""
    before = torch.get_num_threads()
    if device() == "cpu":
        torch.set_num_threads(bench_threads())
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def machine_info() -> dict:
    """What the numbers depend on: device, threads, and the load average while they were taken."""
    info = {"device": device(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ----------------------------------------------------------------------------------------------- op cases
@dataclass(frozen=True)
class OpCase:
    """One op at one size: ``forward()`` returns the differentiable outputs, ``backward(outs)`` consumes them."""

    op: str
    inputs: tuple[torch.Tensor, ...]
    fn: Callable[..., tuple[torch.Tensor, ...]]
    grads: tuple[torch.Tensor, ...]  # one fixed random gradient per differentiable output

    def forward(self) -> tuple[torch.Tensor, ...]:
        return self.fn(*self.inputs)

    def backward(self, outs: tuple[torch.Tensor, ...]) -> None:
        torch.autograd.backward(outs, self.grads)
        for t in self.inputs:
            t.grad = None


_COMPILED: dict[str, Callable] = {}


def _differentiable(op: str, out) -> tuple[torch.Tensor, ...]:
    """The outputs a training step differentiates: composite_rays' rgb and depth (its weights feed sample_pdf,
    which is not differentiated); the single output of the other ops."""
    if op in ("composite_rays", "render_rays"):
        return out[0], out[1]
    return (out,)


def op_case(op: str, size: str, provider: str, dev: str) -> OpCase:
    """Inputs at ``size`` on ``dev`` and the callable of ``provider``; compiled callables are cached per op."""
    inputs = tuple(t.detach().requires_grad_(t.requires_grad) for t in sized_case_inputs(op, size, dev))
    if provider == "compiled":
        if op not in _COMPILED:
            _COMPILED[op] = torch.compile(REFS[op], dynamic=False)  # one static graph per size
        raw = _COMPILED[op]
    else:
        public, impl = OPS[op], provider

        def raw(*args):
            return public(*args, impl=impl)

    def fn(*args):
        return _differentiable(op, raw(*args))

    with torch.no_grad():
        outs = fn(*inputs)
    gen = torch.Generator(device=dev).manual_seed(0)
    grads = tuple(torch.randn(o.shape, generator=gen, device=dev, dtype=o.dtype) for o in outs)
    return OpCase(op, inputs, fn, grads)


def pick_rounds(seconds_per_call: float, budget: float, lo: int = 3, hi: int = 50) -> int:
    """Rounds that fit ``budget`` seconds, clamped to ``[lo, hi]``."""
    return max(lo, min(hi, int(budget / max(seconds_per_call, 1e-6))))


def time_once(fn: Callable[[], object], dev: str) -> float:
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t0


def measure_memory(run: Callable[[], object], dev: str, forward: Callable[[], object] | None = None) -> dict:
    """Memory of one call of ``run`` (a closure whose inputs already exist).

    CUDA: ``max_memory_allocated`` above what was allocated before the call. CPU: PyTorch keeps no
    allocator statistics there, so the bytes the autograd graph of ``forward`` (default: ``run``) saves
    for backward (``saved_tensor_bytes``) stand in for the activation memory.
    """
    if torch.device(dev).type == "cuda":
        sync(dev)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        sync(dev)
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated() - before, "peak_memory": "cuda allocator"}
    saved, _, _ = saved_tensor_bytes(forward or run)
    return {"peak_memory_bytes": None, "peak_memory": "not available on CPU", "saved_for_backward_bytes": saved}


def record_bandwidth(benchmark, nbytes: int, dev: str) -> None:
    """Add bytes, GB/s at the median time and the fraction of peak bandwidth to ``extra_info``."""
    info = benchmark.extra_info
    info["bytes_moved"] = nbytes
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: nothing was timed
        return
    median = stats.stats.median
    gbps = nbytes / median / 1e9
    peak, source = peak_bandwidth(dev)
    info["achieved_gbps"] = round(gbps, 3)
    info["peak_gbps"] = peak
    info["peak_gbps_source"] = source
    info["fraction_of_peak"] = round(gbps / peak, 4) if peak else None


def op_benchmark(benchmark, op: str, provider: str, mode: str, size: str, budget: float | None = None) -> None:
    """Benchmark ``op`` with ``provider`` ("reference" | "compiled" | "triton") in ``mode`` at ``size``.

    ``forward`` runs the op with autograd recording (as in training), ``backward`` only the backward of a
    forward done in the untimed setup, ``full`` both. Groups put every provider beside the reference.
    """
    import pytest

    dev = device()
    if provider == "triton" and dev != "cuda":
        pytest.skip(TRITON_SKIP)
    with threads_for_benchmarks():
        _op_benchmark(benchmark, op, provider, mode, size, dev, budget)


def _op_benchmark(benchmark, op: str, provider: str, mode: str, size: str, dev: str, budget: float | None) -> None:
    case = op_case(op, size, provider, dev)
    if budget is None:
        budget = 0.5 if dev == "cpu" else 0.2

    def forward():
        outs = case.forward()
        sync(dev)
        return outs

    def backward(outs):
        case.backward(outs)
        sync(dev)

    def full():
        case.backward(case.forward())
        sync(dev)

    once = time_once(full, dev)  # warm-up: compiles both graphs of the compiled provider
    once = min(once, time_once(full, dev))
    if mode == "forward":
        target, setup = forward, None
    elif mode == "backward":
        target, setup = backward, lambda: ((case.forward(),), {})
    elif mode == "full":
        target, setup = full, None
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    benchmark.group = f"{op} {size} {mode}"
    benchmark.extra_info.update(
        op=op, provider=provider, mode=mode, size=size, dtype=str(case.inputs[0].dtype).replace("torch.", ""),
        shapes=[list(t.shape) for t in case.inputs], **machine_info(),
    )  # fmt: skip
    benchmark.pedantic(target, setup=setup, rounds=pick_rounds(once, budget), warmup_rounds=1)
    record_bandwidth(benchmark, op_bytes(op, mode, case.inputs), dev)
    if mode == "backward":
        outs = case.forward()  # built outside the measured call, like the timed setup
        run = lambda: backward(outs)  # noqa: E731
    else:
        run = target
    benchmark.extra_info.update(measure_memory(run, dev, forward=case.forward))


# ----------------------------------------------------------------------------------------------- bytes table
class _TrafficCounter(TorchDispatchMode):
    """Sums, over every ATen op that is not a view, the bytes of its tensor inputs and outputs."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func not in _NO_TRAFFIC:
            for t in tree_leaves((args, kwargs, out)):
                if isinstance(t, torch.Tensor):
                    self.bytes += min(t.numel() * t.element_size(), t.untyped_storage().nbytes())
        return out


# allocations and metadata; prim.device is a device query, dispatched only for fake tensors
_NO_TRAFFIC = {torch.ops.aten.detach.default, torch.ops.aten.empty.memory_format, torch.ops.aten.empty_like.default,
               torch.ops.prim.device.default}  # fmt: skip


def reference_bytes(op: str, mode: str, size: str) -> int:
    """Bytes the eager reference moves when every ATen op reads its inputs and writes its outputs once.

    Counted on meta tensors (nothing is computed or allocated). Against :func:`op_bytes` this estimates how
    much traffic fusing saves; caches make real traffic lower for small intermediates.
    """
    if mode == "full":
        return reference_bytes(op, "forward", size) + reference_bytes(op, "backward", size)
    inputs = sized_case_inputs(op, size, "meta")
    counter = _TrafficCounter()
    if mode == "forward":
        with counter:
            _differentiable(op, REFS[op](*inputs))
        return counter.bytes
    outs = _differentiable(op, REFS[op](*inputs))
    grads = [torch.empty_like(o) for o in outs]
    with counter:
        torch.autograd.backward(outs, grads)
    return counter.bytes


def bytes_table(peaks: Sequence[str] = ("A100-SXM4-40GB", "H100 80GB HBM3")) -> str:
    """Markdown table: compulsory bytes of the fused op vs the bytes the unfused reference moves, per op and
    mode at the paper size, and the time the fused op's traffic takes at the data-sheet bandwidth of ``peaks``
    (an *estimate*: a lower bound for a memory-bound kernel, reached by none)."""
    cols = " | ".join(f"fused floor at {PEAK_GBPS[p]:,.0f} GB/s ({p})" for p in peaks)
    lines = [f"| op (paper size) | mode | fused op moves | reference moves | ratio | {cols} |",
             "|---" * (5 + len(peaks)) + "|"]  # fmt: skip
    for op in OPS:
        inputs = sized_case_inputs(op, "paper", "meta")  # shapes only: nothing is allocated
        for mode in ("forward", "backward"):
            n, ref = op_bytes(op, mode, inputs), reference_bytes(op, mode, "paper")
            floors = " | ".join(f"{n / (PEAK_GBPS[p] * 1e9) * 1e6:,.1f} us" for p in peaks)
            mib = f"{n / 2**20:,.2f} MiB | {ref / 2**20:,.2f} MiB"
            lines.append(f"| {op} | {mode} | {mib} | {ref / n:.1f}x | {floors} |")
    for mode in ("forward", "backward"):  # render_rays' work done the split way, as the renderer did before it
        n, ref = split_render_bytes(mode), reference_bytes("render_rays", mode, "paper")
        floors = " | ".join(f"{n / (PEAK_GBPS[p] * 1e9) * 1e6:,.1f} us" for p in peaks)
        mib = f"{n / 2**20:,.2f} MiB | {ref / 2**20:,.2f} MiB"
        lines.append(f"| triplane_sample + MLP + composite_rays | {mode} | {mib} | {ref / n:.1f}x | {floors} |")
    return "\n".join(lines)


def split_render_bytes(mode: str, size: str = "paper") -> int:
    """Bytes the split fast path moves for ``render_rays``' work: the fused ``triplane_sample`` over the R * S points,
    the decoder MLP as ATen ops (counted like :func:`reference_bytes`) and the fused ``composite_rays`` on its
    ``[B, R, S, Cf]`` colours. The renderer's concatenation and sort of the coarse and fine samples come on top."""
    planes, _, _, depths, w1, b1, w2, b2 = sized_case_inputs("render_rays", size, "meta")
    B, R, S, _ = depths.shape
    C, cf = planes.shape[2], w2.shape[1] - 1
    n = op_bytes("triplane_sample", mode, (planes, torch.empty(B, R * S, 3, device="meta")))
    colors, densities = torch.empty(B, R, S, cf, device="meta"), torch.empty(B, R, S, 1, device="meta")
    n += op_bytes("composite_rays", mode, (colors, densities, depths))
    feats = torch.empty(B, R * S, C, device="meta", requires_grad=True)

    def mlp():
        out = torch.nn.functional.softplus(feats @ w1 + b1) @ w2 + b2
        return out[..., :1], torch.sigmoid(out[..., 1:]) * 1.002 - 0.001

    counter = _TrafficCounter()
    if mode == "forward":
        with counter:
            mlp()
    else:
        outs = mlp()
        with counter:
            torch.autograd.backward(outs, [torch.empty_like(o) for o in outs])
    return n + counter.bytes


if __name__ == "__main__":
    print(bytes_table())
