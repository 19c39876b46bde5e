"""Per-stage time and memory of one training step and one inference frame.

    python -m export3d.profile [--preset tiny|paper] [--device cpu|cuda] [--impl reference|fast] [--compile]
                               [--batch N] [--steps N] [--warmup N] [--threads N] [--json OUT] [--trace OUT.json]

The training step is the adversarial stage's generator step of ``export3d.train.train_generator_step``
(forward, reconstruction loss with LPIPS, ``0.01 * L_adv`` through the frozen discriminator, backward,
Adam step) followed by its discriminator step (D on real and fake, BCE loss, backward, Adam step; the lazy
R1 term, applied every 16th step in training, is left out). The inference frame is ``model(source, beta,
camera)`` in eval mode under ``torch.no_grad`` (generate + render + super-resolution). Inputs are random
tensors of the preset's shapes: the cost does not depend on the pixel values.

How the stages are measured, without touching the model's code:

- Module stages: forward pre / post hooks on the model's submodules (the expression encoder, the
  generator's conv stem, ViT blocks, conv blocks, the renderer, its decoder MLP, the super-resolution,
  the discriminator) start and stop a stage timer.
- Function stages: the model calls the fused ops and the attention helper through module globals
  (``export3d.render.renderer.triplane_sample`` / ``composite_rays``, ``export3d.generator.pixel_shuffle_lowpass``,
  ``export3d.blocks.attention``). While profiling, those names are rebound to timing wrappers, and
  restored afterwards.
- Step stages (losses, backward, optimiser) are timed around the calls of the step itself. Backward is
  measured as a whole; ``backward_split`` adds when the gradient of the final image became available
  (a tensor hook): before it the autograd engine ran the losses' and the discriminator's backward,
  after it the generator's.

Times come from ``time.perf_counter`` (with ``torch.cuda.synchronize`` at every stage boundary on CUDA)
and are *exclusive*: a nested stage (tri-plane sampling inside the renderer) is subtracted from its
parent, so the stage times plus "other" (glue outside every stage) add up to the step's wall time. With
``--steps N`` each stage reports its median over N measured steps and shares are taken of the sum of
the medians. Memory per stage: on CUDA the peak of ``torch.cuda.max_memory_allocated`` while the stage
ran (nested stages included); on the CPU PyTorch keeps no allocator statistics, so the table shows the
bytes each stage's forward saved for backward instead, plus the process's peak RSS.

``--compile`` compiles each profiled unit separately (every hooked module's ``forward`` and the fused
ops), so the stage boundaries stay visible; ``Export3D(compile=True)`` compiles the whole model body into
one graph instead (that is what ``benchmarks/bench_model.py`` measures). The attention helper runs inside
the compiled ViT blocks then and is not timed on its own.

On CUDA a background thread samples NVML (GPU and memory utilisation, memory used, power, SM clock)
during the measured steps; without a GPU the report says "NVML: no GPU". ``--trace`` writes a
``torch.profiler`` Chrome trace of one extra step and frame, with every stage as a ``record_function`` range.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

TRAIN_STAGES = (
    "expression encoder",
    "generator: stem, high-res branch, patch merges",
    "generator: ViT blocks",
    "generator: attention",
    "generator: pixel shuffle + low-pass",
    "generator: conv blocks + head",
    "generator: other (norms, reshapes, EMA)",
    "rendering: rays, depth sampling, sort",
    "tri-plane sampling",
    "decoder MLP",
    "compositing",
    "super-resolution",
    "discriminator",
    "losses",
    "backward",
    "optimiser",
    "other",
)
INFERENCE_STAGES = tuple(s for s in TRAIN_STAGES if s not in ("discriminator", "losses", "backward", "optimiser"))
NVML_NO_GPU = "no GPU"


# ----------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class ProfileOptions:
    preset: str = "tiny"
    device: str = "cpu"
    impl: str = "fast"
    compile: bool = False
    batch: int = 8
    steps: int = 3  # measured steps (medians per stage)
    warmup: int = 1  # unmeasured steps first (compilation, allocator, oneDNN primitive caches)
    threads: int | None = None  # torch.set_num_threads; None keeps torch's default
    seed: int = 0
    json_path: str | None = None
    trace_path: str | None = None


# ----------------------------------------------------------------------------------------------- stage timer
@dataclass
class _Frame:
    name: str
    start: float
    children: float = 0.0  # inclusive time of nested stages
    record: object | None = None  # the open record_function range when tracing


@dataclass
class StageStats:
    time_s: float = 0.0
    calls: int = 0
    peak_memory_bytes: int = 0  # CUDA only
    saved_bytes: int = 0  # bytes saved for backward while this stage was on top of the stack


@dataclass
class StageTimer:
    """Exclusive wall time per named stage from nested ``push`` / ``pop`` calls (see the module docstring)."""

    cuda: bool
    trace: bool = False
    stats: dict[str, StageStats] = field(default_factory=dict)
    stack: list[_Frame] = field(default_factory=list)
    _peaks: list[int] = field(default_factory=list)  # running CUDA peak of each open frame
    _storages: set[int] = field(default_factory=set)
    events: list[tuple[str, float]] = field(default_factory=list)  # (label, perf_counter) markers

    def _fold_peak(self) -> None:
        if self.cuda and self._peaks:
            peak = torch.cuda.max_memory_allocated()
            self._peaks = [max(p, peak) for p in self._peaks]

    def push(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self._fold_peak()
            torch.cuda.reset_peak_memory_stats()
            self._peaks.append(torch.cuda.memory_allocated())
        record = None
        if self.trace:
            record = torch.profiler.record_function(name)
            record.__enter__()
        self.stack.append(_Frame(name, time.perf_counter(), record=record))

    def pop(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        frame = self.stack.pop()
        if frame.name != name:
            raise RuntimeError(f"export3d.profile: stage {name!r} ended while {frame.name!r} was open")
        if frame.record is not None:
            frame.record.__exit__(None, None, None)
        elapsed = now - frame.start
        s = self.stats.setdefault(name, StageStats())
        s.time_s += elapsed - frame.children
        s.calls += 1
        if self.cuda:
            self._fold_peak()
            s.peak_memory_bytes = max(s.peak_memory_bytes, self._peaks.pop())
        if self.stack:
            self.stack[-1].children += elapsed

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.push(name)
        try:
            yield
        finally:
            self.pop(name)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """saved_tensors_hooks pack hook: charge the saved storage (once) to the stage on top of the stack."""
        storage = t.untyped_storage()
        key = storage.data_ptr() if storage.data_ptr() else id(storage)
        if key not in self._storages:
            self._storages.add(key)
            name = self.stack[-1].name if self.stack else "other"
            self.stats.setdefault(name, StageStats()).saved_bytes += storage.nbytes()
        return t

    def reset(self) -> None:
        self.stats, self._storages, self.events = {}, set(), []


# ----------------------------------------------------------------------------------------------- instrumentation
def _module_stages(model: nn.Module, disc: nn.Module | None) -> list[tuple[nn.Module, str, bool]]:
    """``(module, stage, compile_it)`` for every hooked module; compile_it marks the leaves compiled by --compile."""
    g, r = model.generator, model.renderer
    units: list[tuple[nn.Module, str, bool]] = [
        (model.lebs, "expression encoder", True),
        (g, "generator: other (norms, reshapes, EMA)", False),
        (r, "rendering: rays, depth sampling, sort", False),
        (r.decoder, "decoder MLP", True),
        (model.superres, "super-resolution", True),
    ]
    for name in ("hr_branch", "stem", "patch_merge", "high_merge"):
        units.append((getattr(g, name), "generator: stem, high-res branch, patch merges", True))
    for block in [*g.low_blocks, *g.high_blocks]:
        units.append((block, "generator: ViT blocks", True))
    for name in ("up1", "up2", "high_in", "out_block", "head"):
        units.append((getattr(g, name), "generator: conv blocks + head", True))
    if disc is not None:
        units.append((disc, "discriminator", True))
    return units


def _function_stages(compiled: bool) -> list[tuple[object, str, str]]:
    """``(namespace module, global name, stage)`` of the functions the model calls through module globals."""
    import export3d.blocks
    import export3d.generator
    import export3d.render.renderer

    units = [
        (export3d.generator, "pixel_shuffle_lowpass", "generator: pixel shuffle + low-pass"),
        (export3d.render.renderer, "triplane_sample", "tri-plane sampling"),
        (export3d.render.renderer, "composite_rays", "compositing"),
    ]
    if not compiled:  # inside the compiled ViT blocks a timing wrapper would only add graph breaks
        units.append((export3d.blocks, "attention", "generator: attention"))
    return units


@contextlib.contextmanager
def instrument(model: nn.Module, disc: nn.Module | None, timer: StageTimer, compile_units: bool) -> Iterator[None]:
    """Install the stage hooks and wrappers (and, with ``compile_units``, the per-unit compiled forwards)."""
    handles, patched, compiled_forwards = [], [], []
    # One static graph per shape and mode: units share code objects (every ConvBlock.forward, both kinds of
    # ViT block), so the default limit of 8 graphs per code object would silently fall back to eager.
    limits = torch._dynamo.config.patch(recompile_limit=64) if compile_units else contextlib.nullcontext()
    try:
        limits.__enter__()
        for module, stage, leaf in _module_stages(model, disc):
            handles.append(module.register_forward_pre_hook(lambda m, a, s=stage: timer.push(s)))
            handles.append(module.register_forward_hook(lambda m, a, o, s=stage: timer.pop(s)))
            if compile_units and leaf:
                module.forward = torch.compile(module.forward, dynamic=False)  # instance attribute; removed on exit
                compiled_forwards.append(module)
        for namespace, name, stage in _function_stages(compile_units):
            original = getattr(namespace, name)
            inner = torch.compile(original, dynamic=False) if compile_units else original

            def wrapper(*args, _inner=inner, _stage=stage, **kwargs):
                with timer.stage(_stage):
                    return _inner(*args, **kwargs)

            setattr(namespace, name, wrapper)
            patched.append((namespace, name, original))
        yield
    finally:
        for h in handles:
            h.remove()
        for namespace, name, original in patched:
            setattr(namespace, name, original)
        for module in compiled_forwards:
            del module.forward
        limits.__exit__(None, None, None)


# ----------------------------------------------------------------------------------------------- NVML
class NvmlSampler:
    """Samples NVML counters of one GPU every ``interval`` seconds in a background thread."""

    FIELDS = ("gpu_util_pct", "memory_util_pct", "memory_used_mib", "power_w", "sm_clock_mhz")

    def __init__(self, device: torch.device, interval: float = 0.05):
        import pynvml

        self._nvml, self.interval = pynvml, interval
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        try:  # NVML numbers GPUs by PCI order, CUDA by speed unless CUDA_DEVICE_ORDER=PCI_BUS_ID: match the bus
            bus_id = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            self.handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        except (AttributeError, pynvml.NVMLError):
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.name = pynvml.nvmlDeviceGetName(self.handle)
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)

    def _read(self) -> dict[str, float]:
        n, h = self._nvml, self.handle
        util = n.nvmlDeviceGetUtilizationRates(h)
        sample = {"gpu_util_pct": float(util.gpu), "memory_util_pct": float(util.memory),
                  "memory_used_mib": n.nvmlDeviceGetMemoryInfo(h).used / 2**20,
                  "sm_clock_mhz": float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM))}  # fmt: skip
        with contextlib.suppress(n.NVMLError):  # some boards do not report power
            sample["power_w"] = n.nvmlDeviceGetPowerUsage(h) / 1000.0
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._read())
            self._stop.wait(self.interval)

    def __enter__(self) -> NvmlSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self._read())
        self._nvml.nvmlShutdown()

    def summary(self) -> dict:
        out: dict = {"state": "sampled", "gpu": self.name, "samples": len(self.samples), "interval_s": self.interval}
        for key in self.FIELDS:
            values = [s[key] for s in self.samples if key in s]
            if values:
                out[key] = {"min": min(values), "mean": statistics.fmean(values), "max": max(values)}
        return out


def nvml_state(device: torch.device) -> str:
    """``"no GPU"``, ``"not sampled (--device cpu)"`` or ``"available"``, as NVML sees this machine."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, or no device
        return NVML_NO_GPU
    if count == 0:
        return NVML_NO_GPU
    return "available" if device.type == "cuda" else "not sampled (--device cpu)"


# ----------------------------------------------------------------------------------------------- the workload
@dataclass
class Workload:
    model: nn.Module
    disc: nn.Module
    lpips: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    batch: dict[str, torch.Tensor]
    adv_weight: float
    lpips_weight: float


def build_workload(opts: ProfileOptions, device: torch.device) -> Workload:
    from export3d.config import preset
    from export3d.data import orbit_camera_deg
    from export3d.discriminator import Discriminator
    from export3d.metrics import build_lpips
    from export3d.model import Export3D
    from export3d.train_config import TRAIN_PRESETS

    torch.manual_seed(opts.seed)
    cfg = preset(opts.preset, impl=opts.impl)
    train_cfg = TRAIN_PRESETS[opts.preset]
    model = Export3D(cfg).to(device).freeze_expression_encoder()  # stage 2: f_e is frozen after CLeBS
    disc = Discriminator(cfg).to(device)
    lpips, _ = build_lpips()
    lpips.to(device)
    opt_g = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("lebs.")],
                             lr=train_cfg.lr, betas=train_cfg.betas)  # fmt: skip
    opt_d = torch.optim.Adam(disc.parameters(), lr=train_cfg.d_lr, betas=train_cfg.betas)
    B, H = opts.batch, cfg.image_size
    yaws = torch.linspace(-30.0, 30.0, B).tolist()
    batch = {
        "source": torch.rand(B, 3, H, H) * 2 - 1,  # [B, 3, H, W] in [-1, 1]
        "driving": torch.rand(B, 3, H, H) * 2 - 1,
        "beta": torch.randn(B, cfg.expression_dim),  # [B, 64]
        "camera": torch.stack([orbit_camera_deg(y, 5.0) for y in yaws]),  # [B, 25]
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    return Workload(model, disc, lpips, opt_g, opt_d, batch, train_cfg.adv_weight, train_cfg.lpips_weight)


def train_step(w: Workload, timer: StageTimer) -> None:
    """One generator step with the adversarial term, then one discriminator step (see the module docstring)."""
    from export3d.losses import discriminator_loss, generator_adversarial_loss, reconstruction_loss, resize_to

    b = w.batch
    w.model.train()
    w.disc.train()
    w.disc.requires_grad_(False)  # frozen for the generator's adversarial term, as in train_generator_step
    with torch.autograd.graph.saved_tensors_hooks(timer.pack, lambda t: t):
        out = w.model(b["source"], b["beta"], b["camera"])
        with timer.stage("losses"):
            loss, _ = reconstruction_loss(out.image, out.image_raw, b["driving"], w.lpips, w.lpips_weight)
        logits = w.disc(out.image, out.image_raw, b["camera"])
        with timer.stage("losses"):
            loss = loss + w.adv_weight * generator_adversarial_loss(logits)

    def image_grad_ready(grad: torch.Tensor) -> None:  # the losses' and D's backward are done by now
        timer.events.append(("image grad ready", time.perf_counter()))

    out.image.register_hook(image_grad_ready)
    with timer.stage("optimiser"):
        w.opt_g.zero_grad(set_to_none=True)
    timer.events.append(("backward start", time.perf_counter()))
    with timer.stage("backward"):
        loss.backward()
    timer.events.append(("backward end", time.perf_counter()))
    with timer.stage("optimiser"):
        w.opt_g.step()

    w.disc.requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(timer.pack, lambda t: t):
        with timer.stage("losses"):
            real_raw = resize_to(b["driving"], out.image_raw.shape[-1])
        real_logits = w.disc(b["driving"], real_raw, b["camera"])
        fake_logits = w.disc(out.image.detach(), out.image_raw.detach(), b["camera"])
        with timer.stage("losses"):
            d_loss = discriminator_loss(real_logits, fake_logits)
    with timer.stage("optimiser"):
        w.opt_d.zero_grad(set_to_none=True)
    with timer.stage("backward"):
        d_loss.backward()
    with timer.stage("optimiser"):
        w.opt_d.step()


def inference_frame(w: Workload, timer: StageTimer) -> None:
    b = w.batch
    w.model.eval()
    with torch.no_grad():
        w.model(b["source"], b["beta"], b["camera"])


# ----------------------------------------------------------------------------------------------- measurement
def _measure(fn: Callable[[], None], timer: StageTimer, device: torch.device) -> tuple[float, dict, float | None]:
    """Run ``fn`` once: (wall seconds, per-stage stats, generator share of the backward or None)."""
    timer.reset()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    marks = dict(timer.events)
    split = None
    if {"backward start", "image grad ready", "backward end"} <= marks.keys():
        split = (marks["image grad ready"] - marks["backward start"], marks["backward end"] - marks["image grad ready"])
    stats = {name: dataclasses.replace(s) for name, s in timer.stats.items()}  # later runs must not alias them
    timer.reset()
    return wall, stats, split


def summarise(runs: list[tuple[float, dict, tuple | None]], stages: tuple[str, ...], cuda: bool) -> dict:
    """Median per stage over the measured runs; shares of the sum of the medians (they add up to 1)."""
    walls = [wall for wall, _, _ in runs]
    rows = []
    for name in stages:
        if name == "other":
            times = [max(wall - sum(s.time_s for s in st.values()), 0.0) for wall, st, _ in runs]
            calls, peak, saved = 0, None, sum(st["other"].saved_bytes for _, st, _ in runs if "other" in st)
        else:
            got = [st.get(name, StageStats()) for _, st, _ in runs]
            times = [s.time_s for s in got]
            calls = got[-1].calls
            peak = max(s.peak_memory_bytes for s in got) if cuda else None
            saved = got[-1].saved_bytes
        rows.append({"name": name, "time_s": statistics.median(times), "calls": calls,
                     "peak_memory_bytes": peak, "saved_bytes": saved})  # fmt: skip
    total = sum(r["time_s"] for r in rows)
    for r in rows:
        r["share"] = r["time_s"] / total if total > 0 else 0.0
    out = {"total_s": total, "wall_s": statistics.median(walls), "steps": len(runs), "stages": rows}
    splits = [s for _, _, s in runs if s is not None]
    if splits:
        out["backward_split"] = {
            "losses_and_discriminator_s": statistics.median(s[0] for s in splits),
            "generator_s": statistics.median(s[1] for s in splits),
            "note": "generator step only: split at the moment the final image's gradient was ready",
        }
    return out


def run(opts: ProfileOptions) -> dict:
    """Profile ``opts`` and return the report (the JSON written by ``--json``)."""
    from export3d import attention as attention_mod

    device = torch.device(opts.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    cuda = device.type == "cuda"
    w = build_workload(opts, device)
    timer = StageTimer(cuda=cuda)
    nvml = nvml_state(device)
    report: dict = {
        "preset": opts.preset, "device": str(device), "impl": opts.impl, "compile": opts.compile,
        "compile_granularity": "per stage unit" if opts.compile else None, "batch": opts.batch,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
    }  # fmt: skip
    with instrument(w.model, w.disc, timer, compile_units=opts.compile):
        for _ in range(opts.warmup):
            train_step(w, timer)
            inference_frame(w, timer)
        sampler = NvmlSampler(device) if nvml == "available" else contextlib.nullcontext()
        with sampler:
            train_runs = [_measure(lambda: train_step(w, timer), timer, device) for _ in range(opts.steps)]
            infer_runs = [_measure(lambda: inference_frame(w, timer), timer, device) for _ in range(opts.steps)]
        report["nvml"] = sampler.summary() if isinstance(sampler, NvmlSampler) else {"state": nvml}
        report["attention_backend"] = attention_mod.last_backend_used()
        report["attention_backend_note"] = (
            "math: explicit softmax(QK^T)V (impl='reference'); sdpa: "
            "F.scaled_dot_product_attention; xformers: memory_efficient_attention"
        )
        if opts.trace_path:
            timer.trace = True
            activities = [torch.profiler.ProfilerActivity.CPU]
            if cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=activities, record_shapes=False) as prof:
                with torch.profiler.record_function("training step"):
                    train_step(w, timer)
                with torch.profiler.record_function("inference frame"):
                    inference_frame(w, timer)
            timer.trace = False
            prof.export_chrome_trace(opts.trace_path)
            report["trace"] = opts.trace_path
    report["training_step"] = summarise(train_runs, TRAIN_STAGES, cuda)
    report["inference_frame"] = summarise(infer_runs, INFERENCE_STAGES, cuda)
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    if cuda:
        report["cuda_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return report


# ----------------------------------------------------------------------------------------------- output
def _mib(n: int | None) -> str:
    return "-" if n is None or n == 0 else f"{n / 2**20:,.1f}"


def format_section(title: str, part: dict, cuda: bool) -> str:
    mem_head = "peak MiB" if cuda else "saved MiB"
    lines = [
        f"{title} (median of {part['steps']}; stages sum {part['total_s'] * 1e3:,.1f} ms, "
        f"wall {part['wall_s'] * 1e3:,.1f} ms)",  # fmt: skip
        f"  {'stage':<48} {'time ms':>10} {'share':>7} {'calls':>6} {mem_head:>10}",
    ]
    for r in part["stages"]:
        mem = _mib(r["peak_memory_bytes"]) if cuda else _mib(r["saved_bytes"])
        lines.append(f"  {r['name']:<48} {r['time_s'] * 1e3:>10,.1f} {r['share']:>7.1%} {r['calls']:>6} {mem:>10}")
    split = part.get("backward_split")
    if split:
        lines.append(f"  backward of the generator step: losses + discriminator "
                     f"{split['losses_and_discriminator_s'] * 1e3:,.1f} ms, generator "
                     f"{split['generator_s'] * 1e3:,.1f} ms")  # fmt: skip
    return "\n".join(lines)


def format_report(report: dict) -> str:
    cuda = report["device"].startswith("cuda")
    nv = report["nvml"]
    head = [f"export3d.profile: preset {report['preset']}, device {report['device']}"
            f"{' (' + report['gpu'] + ')' if report['gpu'] else ''}, impl {report['impl']}, "
            f"{'compiled per stage' if report['compile'] else 'eager'}, batch {report['batch']}, "
            f"{report['threads']} threads, load average {report['load_average_1m']}",
            f"attention backend: {report['attention_backend']}"]  # fmt: skip
    if nv["state"] == "sampled":
        parts = [f"{k} {v['mean']:.0f} (max {v['max']:.0f})" for k, v in nv.items() if isinstance(v, dict)]
        head.append(f"NVML ({nv['gpu']}, {nv['samples']} samples): " + ", ".join(parts))
    else:
        head.append(f"NVML: {nv['state']}")
    tail = [f"peak RSS {report['peak_rss_bytes'] / 2**20:,.0f} MiB"]
    if cuda:
        tail.append(f"CUDA max allocated {report['cuda_max_memory_allocated_bytes'] / 2**20:,.0f} MiB")
    if report.get("trace"):
        tail.append(f"trace: {report['trace']}")
    return "\n".join(
        [
            *head,
            "",
            format_section("training step", report["training_step"], cuda),
            "",
            format_section("inference frame", report["inference_frame"], cuda),
            "",
            "; ".join(tail),
        ]
    )


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> ProfileOptions:
    p = argparse.ArgumentParser(prog="python -m export3d.profile", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=("tiny", "paper"), default="tiny")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
    p.add_argument("--impl", choices=("reference", "fast"), default="fast")
    p.add_argument("--compile", action="store_true", help="torch.compile every profiled unit separately")
    p.add_argument("--batch", type=int, default=None, help="default: 8 for tiny, 1 for paper")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default: 3 for tiny, 1 for paper)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", default=None, metavar="OUT", help="write the report as JSON")
    p.add_argument("--trace", dest="trace_path", default=None, metavar="OUT.json", help="write a Chrome trace")
    a = p.parse_args(argv)
    if a.device is None:
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here (torch.cuda.is_available() is False); use --device cpu")
    for flag, value, least in (("--batch", a.batch, 1), ("--steps", a.steps, 1), ("--warmup", a.warmup, 0),
                               ("--threads", a.threads, 1)):  # fmt: skip
        if value is not None and value < least:
            p.error(f"{flag} must be >= {least}, got {value}")
    paper = a.preset == "paper"
    return ProfileOptions(
        preset=a.preset, device=a.device, impl=a.impl, compile=a.compile,
        batch=a.batch if a.batch is not None else (1 if paper else 8),
        steps=a.steps if a.steps is not None else (1 if paper else 3),
        warmup=a.warmup, threads=a.threads, seed=a.seed, json_path=a.json_path, trace_path=a.trace_path,
    )  # fmt: skip


def _finite(obj):
    """JSON has no inf / nan: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    report = run(opts)
    print(format_report(report), flush=True)
    if opts.json_path:
        with open(opts.json_path, "w") as f:
            json.dump(_finite(report), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
