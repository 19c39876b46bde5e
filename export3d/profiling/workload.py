"""The profiled workload: one training step and one inference frame, measured stage by stage and summarised."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from export3d.profiling.nvml import NvmlSampler, nvml_state
from export3d.profiling.stages import INFERENCE_STAGES, TRAIN_STAGES, StageStats, StageTimer, instrument


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
    memory: bool = False  # report the saved-for-backward memory per module instead (export3d.profiling.memory)


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
    from export3d.cameras import orbit_camera_deg
    from export3d.evaluation.metrics import build_lpips
    from export3d.model import Export3D
    from export3d.model.config import preset
    from export3d.model.discriminator import Discriminator
    from export3d.training.config import TRAIN_PRESETS

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
    from export3d.training.losses import discriminator_loss, generator_adversarial_loss, reconstruction_loss, resize_to

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
    from export3d.model import attention as attention_mod

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
