"""GPU acceptance check: ``python -m export3d.gpucheck`` (also ``make gpucheck``).

On one CUDA GPU, in a few minutes (10 at most), it runs and reports:

- every fused op against its reference at the ``tiny`` and ``paper`` presets' real shapes in fp32, bf16 and
  fp16, outputs and gradients, with the project's tolerance rule (``export3d/gpucheck/checks.py``);
- run-to-run determinism of each op (bitwise where promised; a bound for the tri-plane atomics);
- the whole model, ``impl="fast"`` against ``impl="reference"``, one batch of each preset, images and gradients;
- per-op forward / backward times (paper shapes, fp32) of the Triton kernels, the eager reference and
  ``torch.compile`` of the reference, with achieved GB/s and the fraction of the device's peak bandwidth;
- the paper-preset training step (eager reference, fast, fast + compile): images/s and peak memory;
- the environment: GPU, driver, CUDA, torch, triton, xformers, NVML clocks.

It writes ``gpucheck.md`` (tables ready to paste into an issue) and ``gpucheck.json`` to ``--out`` and exits 1
when any correctness check fails. Without CUDA it prints one line and exits 2. ``--interpret`` runs the same
checks at small sizes on the CPU under ``TRITON_INTERPRET=1`` (correctness only; timings there measure the
interpreter), which is how the tool itself is tested.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from export3d.utils.cli import add_debug_flag, run_command

PROG = "python -m export3d.gpucheck"
# --interpret: the tiny preset shrunk until the interpreter runs a forward + backward in seconds (every fused op
# and code path of the model kept: EAdaLN-ViT, pixel shuffles, coarse + fine passes, super-resolution)
SMALL_MODEL = {
    "image_size": 32,
    "render": {"n_coarse": 4, "n_fine": 4, "decoder_hidden": 16, "feature_channels": 8},
    "generator": {"hidden": 32, "high_hidden": 32, "up_channels": (16, 16), "stem_channels": (8, 8, 8),
                  "hr_channels": 8, "high_in_channels": 16, "out_channels": 16, "plane_channels": 8, "lowpass_taps": 3},
    "superres": {"channels": (16, 8)},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--interpret", action="store_true", help="small sizes on the CPU under TRITON_INTERPRET=1")
    p.add_argument("--device", default="cuda", help="the GPU to check: cuda or cuda:N (default: cuda)")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for gpucheck.md and gpucheck.json")
    p.add_argument("--skip-timings", action="store_true", help="correctness checks only")
    add_debug_flag(p)
    return p.parse_args(argv)


def _guarded(results: list, name: str, fn) -> None:
    """Run one check; an exception is a failed check with its traceback, and the run goes on."""
    from export3d.gpucheck.checks import Check

    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - the report must name every failure, not stop at the first
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        out = Check(name, False, f"raised {type(exc).__name__}: {tb}")
    results.extend(out if isinstance(out, list) else [out])


def run(args: argparse.Namespace) -> dict:
    import torch

    from export3d.gpucheck import checks, report, timing
    from export3d.gpucheck.bandwidth import peak_bandwidth
    from export3d.gpucheck.ops import sizes
    from export3d.utils.distributed import resolve_device

    torch.manual_seed(0)
    start = time.perf_counter()
    if args.interpret:
        device, size_names, dtypes, kernel_impl = torch.device("cpu"), ("small",), ("fp32", "fp16", "bf16"), "triton"
        model_runs = [("tiny", 2, SMALL_MODEL)]
        timing_size, providers, reps, warmup = "small", ("triton", "reference"), 1, 0
        train = ("tiny", 2, ("reference",), 1, 0, model_runs[0][2])  # the code path; the interpreter's time is no datum
    else:
        device = resolve_device(args.device)  # cuda:N also becomes the current device
        if device.type != "cuda":
            raise ValueError(f"--device: gpucheck checks a GPU (cuda or cuda:N), got {args.device!r}")
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        size_names, dtypes, kernel_impl = ("tiny", "paper"), ("fp32", "bf16", "fp16"), None
        model_runs = [("tiny", 2, {}), ("paper", 2, {})]
        timing_size, providers, reps, warmup = "paper", timing.PROVIDERS, 20, 3
        train = ("paper", 4, ("reference", "fast", "fast+compile"), 5, 2, {})
    results: list = []
    for name in size_names:
        _guarded(results, f"ops ({name})", lambda n=name: checks.op_checks(n, sizes(n), device, dtypes))
    for preset_name, batch, overrides in model_runs:
        check = lambda p=preset_name, b=batch, o=overrides: checks.check_model(p, device, b, kernel_impl, o)  # noqa: E731
        _guarded(results, f"model {preset_name}", check)
    op_rows, train_rows = [], []
    if not args.skip_timings:
        op_rows = timing.op_timings(sizes(timing_size), device, providers, reps, warmup)
        p, b, variants, steps, warm, overrides = train
        train_rows = timing.train_step_timings(p, device, b, variants, steps, warm, kernel_impl, overrides)
    z = sizes(timing_size)
    return {
        "interpret": args.interpret,
        "environment": report.environment(device, args.interpret),
        "sizes": ", ".join(size_names) + (f"; timings at {timing_size} (batch {z.batch})" if op_rows else ""),
        "checks": [vars(c) for c in results],
        "op_timings": op_rows,
        "train_steps": train_rows,
        "peak_gbps": peak_bandwidth(device),
        "passed": all(c.ok for c in results),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.interpret and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton reads TRITON_INTERPRET when it is imported, which `import export3d` already did: start afresh.
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        os.execve(sys.executable, [sys.executable, "-m", "export3d.gpucheck", *argv], env)
    import torch

    if not args.interpret and not torch.cuda.is_available():
        print(f"{PROG}: no CUDA device here (torch {torch.__version__}); run it on a GPU machine, or pass "
              "--interpret for the CPU interpreter check")  # fmt: skip
        return 2
    if args.interpret:
        torch.set_num_threads(1)
    outcome = {}
    status = run_command(PROG, lambda a: outcome.update(failed=check_and_report(a)), args)
    return status if status else (1 if outcome["failed"] else 0)


def check_and_report(args: argparse.Namespace) -> list[dict]:
    """Run every check, write gpucheck.md / .json, print the failures and the verdict; returns the failed checks."""
    from export3d.gpucheck.report import write

    result = run(args)
    md, js = write(result, args.out)
    failed = [c for c in result["checks"] if not c["ok"]]
    for c in failed:
        print(f"FAIL {c['name']}: {c['detail']}")
    print(f"{PROG}: {'PASS' if not failed else 'FAIL'} - {len(result['checks']) - len(failed)} of "
          f"{len(result['checks'])} checks passed in {result['seconds']:.0f} s; wrote {md} and {js}")  # fmt: skip
    return failed


if __name__ == "__main__":
    sys.exit(main())
