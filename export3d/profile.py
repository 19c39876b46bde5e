"""Per-stage time and memory of one training step and one inference frame.

    python -m export3d.profile [--preset tiny|paper] [--device cpu|cuda|cuda:N] [--impl reference|fast] [--compile]
                               [--batch-size N] [--steps N] [--warmup N] [--threads N] [--json OUT] [--trace OUT.json]
    python -m export3d.profile --memory [--preset paper|tiny] [--batch-size N] [--json OUT]

``--memory`` measures no time: it prints the bytes saved for backward per module by one adversarial training step
with R1 and LPIPS (the training loop's own ``train_generator_step``), run on fake tensors (``FakeTensorMode``: nothing
is allocated), by default for the paper preset at batch 1, so the next fusion can be chosen from a table
(:mod:`export3d.profiling.memory` says how it is counted).

The training step is the adversarial stage's generator step of ``export3d.training.loop.train_generator_step``
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
  (``export3d.model.render.renderer.triplane_sample`` / ``composite_rays``,
  ``export3d.model.generator.pixel_shuffle_lowpass``, ``export3d.model.blocks.attention``). While profiling, those names
  are rebound to timing wrappers, and restored afterwards.
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
import dataclasses
import json
import math
import sys
from pathlib import Path

import torch

from export3d.profiling.memory import MemoryOptions, format_memory, training_step_memory
from export3d.profiling.nvml import NVML_NO_GPU
from export3d.profiling.stages import INFERENCE_STAGES, TRAIN_STAGES, StageTimer
from export3d.profiling.workload import ProfileOptions, run
from export3d.utils.cli import add_debug_flag, run_command
from export3d.utils.distributed import resolve_device
from export3d.utils.outputs import atomic_write_bytes, check_output_file

__all__ = ["INFERENCE_STAGES", "NVML_NO_GPU", "TRAIN_STAGES", "ProfileOptions", "StageTimer", "build_parser", "main",
           "parse_args", "profile_memory", "run"]


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
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export3d.profile", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=("tiny", "paper"), default=None,
                   help="model preset (default: tiny; paper with --memory)")
    p.add_argument("--memory", action="store_true",
                   help="print the saved-for-backward memory per module of one training step on fake tensors "
                        "instead of timing (default: paper preset, batch 1)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available, else the CPU)")
    p.add_argument("--impl", choices=("reference", "fast"), default="fast", help="model implementation (default: fast)")
    p.add_argument("--compile", action="store_true", help="torch.compile every profiled unit separately")
    p.add_argument("--batch-size", dest="batch", type=int, default=None, help="(tiny: 8; paper and --memory: 1)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default: 3 for tiny, 1 for paper)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs and weights (default: 0)")
    p.add_argument("--json", dest="json_path", default=None, metavar="OUT", help="write the report as JSON")
    p.add_argument("--trace", dest="trace_path", default=None, metavar="OUT.json", help="write a Chrome trace")
    add_debug_flag(p)
    return p


def parse_args(argv: list[str] | None = None) -> ProfileOptions:
    return _parse(argv)[0]


def _parse(argv: list[str] | None) -> tuple[ProfileOptions, argparse.Namespace]:
    """The options of a run and the parsed flags (``--debug`` is not an option of the workload)."""
    p = build_parser()
    a = p.parse_args(argv)
    try:
        a.device = str(resolve_device(a.device))
    except ValueError as exc:
        p.error(str(exc))
    for flag, value, least in (("--batch-size", a.batch, 1), ("--steps", a.steps, 1), ("--warmup", a.warmup, 0),
                               ("--threads", a.threads, 1)):  # fmt: skip
        if value is not None and value < least:
            p.error(f"{flag} must be >= {least}, got {value}")
    if a.memory and (a.trace_path or a.compile):
        p.error(f"--memory measures no time: it takes no {'--trace' if a.trace_path else '--compile'}")
    preset = a.preset or ("paper" if a.memory else "tiny")
    paper = preset == "paper"
    opts = ProfileOptions(
        preset=preset, device=a.device, impl=a.impl, compile=a.compile,
        batch=a.batch if a.batch is not None else (1 if paper or a.memory else 8),
        steps=a.steps if a.steps is not None else (1 if paper else 3),
        warmup=a.warmup, threads=a.threads, seed=a.seed, json_path=a.json_path, trace_path=a.trace_path,
        memory=a.memory,
    )  # fmt: skip
    return opts, a


def _finite(obj):
    """JSON has no inf / nan: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def profile(opts: ProfileOptions) -> dict:
    """Check the destinations, measure, print the report and write its JSON."""
    for flag, path in (("--json", opts.json_path), ("--trace", opts.trace_path)):
        if path:
            check_output_file(path, flag)  # before the measurement, not after it
    if opts.memory:
        return profile_memory(opts)
    report = run(opts)
    print(format_report(report), flush=True)
    if opts.json_path:
        atomic_write_bytes(Path(opts.json_path), json.dumps(_finite(report), indent=2).encode())
    return report


def profile_memory(opts: ProfileOptions) -> dict:
    """``--memory``: the saved-for-backward table of one training step on fake tensors, printed (and its JSON)."""
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    memory = training_step_memory(MemoryOptions(preset=opts.preset, batch=opts.batch))
    print(format_memory(memory), flush=True)
    report = dataclasses.asdict(memory)
    report["ops"] = dict(memory.ops)
    report["superres_and_discriminator_bytes_per_image"] = memory.superres_and_discriminator() // memory.batch
    if opts.json_path:
        atomic_write_bytes(Path(opts.json_path), json.dumps(report, indent=2).encode())
    return report


def main(argv: list[str] | None = None) -> int:
    opts, args = _parse(argv)
    return run_command("export3d.profile", lambda _: profile(opts), args)


if __name__ == "__main__":
    sys.exit(main())
