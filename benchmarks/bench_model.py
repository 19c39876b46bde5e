"""Whole-model benchmarks: one training step and one inference frame, ``impl`` reference vs fast, eager vs compiled.

- Training step (the reconstruction stage of ``export3d.train``): forward, ``reconstruction_loss`` (MSE +
  LPIPS-VGG on the raw and the final image), backward, Adam step over the generator (f_e frozen, as after
  CLeBS). Tiny preset at batch 8, paper preset at batch 1.
- Inference frame: ``model(source, beta, camera)`` in eval mode under ``torch.no_grad`` (generate the
  tri-plane, render, super-resolve), same batches.

Variants: ``reference-eager`` (the oracle), ``fast-eager``, ``reference-compiled`` and ``fast-compiled``
(``Export3D(compile=True)``: the model body through ``torch.compile``; on CUDA the fast path also runs the
Triton kernels). Each group puts the variants beside ``reference-eager``; ``test_tiny_train_speedup``
measures the tiny training step of fast-compiled against reference-eager interleaved round by round,
which keeps the ratio honest on a loaded machine, and records it in ``extra_info["speedup"]``.

On the CPU the paper preset runs one measured round after one warm-up, and its compiled variants are
skipped (compiling the paper model takes minutes on 2 cores) unless ``--bench-full`` is given.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import pytest
import torch

from benchmarks.common import device as bench_device
from benchmarks.common import full_suite, machine_info, measure_memory, sync, threads_for_benchmarks
from export3d.kernels.utils import saved_tensor_bytes

BATCH = {"tiny": 8, "paper": 1}
VARIANTS = ("reference-eager", "fast-eager", "reference-compiled", "fast-compiled")


@dataclass
class Workload:
    model: torch.nn.Module
    optimiser: torch.optim.Optimizer
    source: torch.Tensor  # [B, 3, H, W]
    driving: torch.Tensor  # [B, 3, H, W]
    beta: torch.Tensor  # [B, 64]
    camera: torch.Tensor  # [B, 25]


@pytest.fixture(scope="module")
def lpips():
    from export3d.evaluation.metrics import build_lpips

    model, _ = build_lpips()
    return model.to(bench_device())


@pytest.fixture
def bench_threads():
    with threads_for_benchmarks() as n:
        yield n


_KEPT: dict[tuple[str, str], Workload] = {}  # tiny training workloads shared with test_tiny_train_speedup


def make_workload(preset: str, variant: str, dev: str, seed: int = 0, keep: bool = False) -> Workload:
    """A fresh model, optimiser and random batch; ``keep`` returns (and stores) a cached one instead."""
    from export3d import Export3D
    from export3d.cameras import orbit_camera_deg

    if keep and (preset, variant) in _KEPT:
        return _KEPT[(preset, variant)]
    impl, mode = variant.split("-")
    if mode == "compiled":
        torch._dynamo.reset()  # every test builds a new model: do not pile graphs up to the recompile limit
    torch.manual_seed(seed)
    model = Export3D.from_preset(preset, impl=impl, compile=mode == "compiled").to(dev)
    model.freeze_expression_encoder()
    params = [p for n, p in model.named_parameters() if not n.startswith("lebs.")]
    B, H = BATCH[preset], model.config.image_size
    yaws = torch.linspace(-30.0, 30.0, B).tolist()
    camera = torch.stack([orbit_camera_deg(y, 5.0) for y in yaws])  # [B, 25]
    w = Workload(
        model, torch.optim.Adam(params, lr=1e-4), (torch.rand(B, 3, H, H) * 2 - 1).to(dev),
        (torch.rand(B, 3, H, H) * 2 - 1).to(dev), torch.randn(B, 64).to(dev), camera.to(dev),
    )  # fmt: skip
    if keep:
        _KEPT[(preset, variant)] = w
    return w


def train_forward(w: Workload, lpips) -> torch.Tensor:
    from export3d.training.losses import reconstruction_loss

    w.model.train()
    out = w.model(w.source, w.beta, w.camera)
    loss, _ = reconstruction_loss(out.image, out.image_raw, w.driving, lpips)
    return loss


def train_step(w: Workload, lpips, count_saved: bool = False) -> int | None:
    """One step; with ``count_saved`` also returns the bytes the forward + loss saved for backward."""
    saved = None
    if count_saved:
        saved, _, loss = saved_tensor_bytes(train_forward, w, lpips)
    else:
        loss = train_forward(w, lpips)
    w.optimiser.zero_grad(set_to_none=True)
    loss.backward()
    w.optimiser.step()
    sync(w.source.device)
    return saved


def inference_frame(w: Workload) -> None:
    w.model.eval()
    with torch.no_grad():
        w.model(w.source, w.beta, w.camera)
    sync(w.source.device)


def _skip_if_too_slow(preset: str, variant: str, dev: str) -> None:
    if dev == "cpu" and preset == "paper" and variant.endswith("compiled") and not full_suite():
        pytest.skip("compiling the paper preset takes minutes on CPU; pass --bench-full to run it")


def _rounds(preset: str, dev: str, cpu_tiny: int) -> tuple[int, int]:
    """(rounds, warm-up rounds) after the explicit first call that compiles."""
    if dev == "cpu":
        return (1, 0) if preset == "paper" else (cpu_tiny, 1)
    return (3, 1) if preset == "paper" else (10, 2)


def _describe(benchmark, preset: str, variant: str, w: Workload, workload: str) -> None:
    benchmark.extra_info.update(
        preset=preset, variant=variant, workload=workload, batch=w.source.shape[0],
        image_size=w.source.shape[-1], dtype="float32", **machine_info(),
    )  # fmt: skip


def _throughput(benchmark, batch: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["images_per_s"] = round(batch / stats.stats.median, 3)


@pytest.mark.parametrize("preset", ["tiny", "paper"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_train_step(benchmark, lpips, bench_threads, preset, variant):
    dev = bench_device()
    _skip_if_too_slow(preset, variant, dev)
    w = make_workload(preset, variant, dev, keep=preset == "tiny")
    saved = train_step(w, lpips, count_saved=True)  # warm-up: compiles the forward and backward graphs
    rounds, warmup = _rounds(preset, dev, cpu_tiny=3)
    benchmark.group = f"model train step {preset} (batch {BATCH[preset]})"
    _describe(benchmark, preset, variant, w, "train step")
    benchmark.pedantic(train_step, args=(w, lpips), rounds=rounds, warmup_rounds=warmup)
    _throughput(benchmark, BATCH[preset])
    if dev == "cuda":
        benchmark.extra_info.update(measure_memory(lambda: train_step(w, lpips), dev))
    else:
        benchmark.extra_info.update(peak_memory_bytes=None, peak_memory="not available on CPU")
    benchmark.extra_info["saved_for_backward_bytes"] = saved  # forward + losses, incl. LPIPS-VGG activations


def test_tiny_train_speedup(benchmark, lpips, bench_threads):
    """Tiny training step, fast-compiled vs reference-eager, alternating A B A B within each round.

    Reuses the two workloads ``test_train_step`` built (so the compiled graphs are warm) when it ran first.
    """
    dev = bench_device()
    ref = make_workload("tiny", "reference-eager", dev, keep=True)
    fast = make_workload("tiny", "fast-compiled", dev, keep=True)
    train_step(ref, lpips)
    train_step(fast, lpips)  # compiles unless test_train_step already did
    times: dict[str, list[float]] = {"reference-eager": [], "fast-compiled": []}

    def pair() -> None:
        for name, w in (("reference-eager", ref), ("fast-compiled", fast)):
            t0 = time.perf_counter()
            train_step(w, lpips)
            times[name].append(time.perf_counter() - t0)

    benchmark.group = "model train step tiny: fast-compiled vs reference-eager, interleaved"
    _describe(benchmark, "tiny", "reference-eager + fast-compiled", ref, "pair of train steps")
    benchmark.pedantic(pair, rounds=3 if dev == "cpu" else 10, warmup_rounds=1)
    medians = {k: statistics.median(v[1:]) for k, v in times.items()}  # v[0] is the warm-up round
    benchmark.extra_info.update(
        median_reference_eager_s=medians["reference-eager"], median_fast_compiled_s=medians["fast-compiled"],
        speedup=round(medians["reference-eager"] / medians["fast-compiled"], 3),
    )  # fmt: skip
    _KEPT.clear()


@pytest.mark.parametrize("preset", ["tiny", "paper"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_inference_frame(benchmark, bench_threads, preset, variant):
    dev = bench_device()
    _skip_if_too_slow(preset, variant, dev)
    w = make_workload(preset, variant, dev)
    inference_frame(w)  # warm-up: compiles the inference graph
    rounds, warmup = _rounds(preset, dev, cpu_tiny=5)
    if dev == "cpu" and preset == "paper":
        rounds, warmup = 2, 0  # the first call above already warmed up; a frame costs seconds, not a step's tens
    benchmark.group = f"model inference frame {preset} (batch {BATCH[preset]})"
    _describe(benchmark, preset, variant, w, "inference frame")
    benchmark.pedantic(inference_frame, args=(w,), rounds=rounds, warmup_rounds=warmup)
    _throughput(benchmark, BATCH[preset])
    if dev == "cuda":
        benchmark.extra_info.update(measure_memory(lambda: inference_frame(w), dev))
    else:  # nothing is saved for backward under no_grad
        benchmark.extra_info.update(peak_memory_bytes=None, peak_memory="not available on CPU")
