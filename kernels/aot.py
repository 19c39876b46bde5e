"""Ahead-of-time compile check: ``python -m export3d.kernels.aot``.

Compiles every Triton kernel of ``export3d.kernels`` for real GPUs (sm_80 and sm_90) with
``triton.compile`` and a ``GPUTarget`` - no GPU needed - then runs Triton's bundled ``ptxas -v`` on
the PTX and prints registers, shared memory and spill bytes per kernel and configuration.
Exits non-zero when a kernel fails to compile or spills.

Two sets of configurations:

- **preset**: exactly what the ``paper`` and ``tiny`` models launch (training step in fp32 and under bf16
  autocast, inference), recorded by ``python -m export3d.gpucheck.presets`` in a subprocess (it walks the
  models with the launches recorded, not run: see ``kernels/launches.py``), with the alignment
  specialisation a real launch gets (``tt.divisibility=16`` on 16-byte aligned pointers and on integers
  divisible by 16; integers equal to 1 compiled in). The ``covers`` column names the workloads of each.
- **hand**: each op module's ``aot_specs()``, the block sizes its launchers can pick for other shapes
  (library users), compiled without alignment promises.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .launches import loads
from .utils import AotSpec, interpreter_enabled

ARCHS = (80, 90)
# One module per fused op, each with an ``aot_specs()`` list.
OP_MODULES = ("eadaln", "triplane_sample", "composite_rays", "pixel_shuffle_lowpass", "render_rays", "upfirdn2d",
              "bias_act")


@dataclass
class AotResult:
    kernel: str
    config: str
    arch: str
    registers: int
    shared_bytes: int
    spill_bytes: int
    error: str = ""
    covers: str = "hand"  # the preset workloads that launch this configuration, or "hand" (aot_specs())


def preset_configs() -> list[tuple[AotSpec, str]]:
    """``(spec, covers)`` for every configuration the presets launch (``python -m export3d.gpucheck.presets``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "configs.json"
        env = {**os.environ, "TRITON_INTERPRET": "1"}  # the recorder walks the models on CPU tensors
        done = subprocess.run([sys.executable, "-m", "export3d.gpucheck.presets", "--json", str(out)],
                              env=env, capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"recording the presets' launches failed:\n{done.stderr[-4000:]}")
        configs = loads(out.read_text())
    return [(config.aot_spec(), _covers(tags)) for config, tags in configs.items()]


def _covers(tags: list[str]) -> str:
    """``["paper train fp32", "paper infer", "tiny train bf16"]`` -> ``"paper[train-fp32,infer] tiny[train-bf16]"``."""
    groups: dict[str, list[str]] = {}
    for tag in tags:
        preset, _, what = tag.partition(" ")
        groups.setdefault(preset, []).append(what.replace(" ", "-"))
    return " ".join(f"{p}[{','.join(w)}]" for p, w in groups.items())


def all_specs() -> list[AotSpec]:
    """The AOT configurations of every op module (each module lists its own in ``aot_specs()``)."""
    specs: list[AotSpec] = []
    for name in OP_MODULES:
        specs.extend(importlib.import_module(f"{__package__}.{name}").aot_specs())
    return specs


def _ptxas() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def _parse_ptxas(text: str) -> tuple[int, int]:
    """Registers and spill bytes (stores + loads) from ``ptxas -v`` output."""
    regs = re.search(r"Used (\d+) registers", text)
    stores = re.search(r"(\d+) bytes spill stores", text)
    loads = re.search(r"(\d+) bytes spill loads", text)
    if regs is None or stores is None or loads is None:
        raise RuntimeError(f"could not read ptxas -v output:\n{text}")
    return int(regs.group(1)), int(stores.group(1)) + int(loads.group(1))


def compile_one(spec: AotSpec, arch: int, covers: str = "hand") -> AotResult:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name = spec.kernel.__name__
    try:
        compiled = triton.compile(
            ASTSource(spec.kernel, spec.signature, spec.constexprs, spec.attrs),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": spec.num_warps},
        )
        with tempfile.TemporaryDirectory() as tmp:
            ptx = Path(tmp) / f"{name}.ptx"
            ptx.write_text(compiled.asm["ptx"])
            out = subprocess.run(
                [str(_ptxas()), "-v", f"--gpu-name=sm_{arch}a" if arch == 90 else f"--gpu-name=sm_{arch}",
                 str(ptx), "-o", str(Path(tmp) / "k.cubin")],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip() or out.stdout.strip())
        regs, spills = _parse_ptxas(out.stdout + out.stderr)
        return AotResult(name, spec.label, f"sm_{arch}", regs, int(compiled.metadata.shared), spills, "", covers)
    except Exception as exc:  # noqa: BLE001 - every failure is reported in the table and fails the run
        return AotResult(name, spec.label, f"sm_{arch}", -1, -1, -1, f"{type(exc).__name__}: {exc}", covers)


def run(archs: tuple[int, ...] = ARCHS, presets: bool = True, hand: bool = True) -> list[AotResult]:
    if interpreter_enabled():
        raise RuntimeError("the AOT check compiles real GPU code: unset TRITON_INTERPRET before running it")
    jobs = preset_configs() if presets else []
    if hand:
        jobs += [(spec, "hand") for spec in all_specs()]
    return [compile_one(spec, arch, covers) for spec, covers in jobs for arch in archs]


def coverage_summary(results: list[AotResult]) -> str:
    """Per arch and preset: configurations compiled, the most registers, spill bytes and failures."""
    lines = []
    for arch in sorted({r.arch for r in results}):
        for preset in ("paper", "tiny", "hand"):
            rows = [r for r in results if r.arch == arch and (r.covers == "hand") == (preset == "hand")
                    and (preset == "hand" or f"{preset}[" in r.covers)]  # fmt: skip
            if not rows:
                continue
            bad = sum(1 for r in rows if r.error or r.spill_bytes != 0)
            what = "hand-written configurations" if preset == "hand" else f"configurations the {preset} preset launches"
            spills = sum(max(r.spill_bytes, 0) for r in rows)
            lines.append(f"{arch}: {len(rows)} {what}; max {max(r.registers for r in rows)} registers, "
                         f"{spills} spill bytes, {bad} failed or spilled")  # fmt: skip
    return "\n".join(lines)


def format_table(results: list[AotResult]) -> str:
    header = ("kernel", "config", "arch", "regs", "smem B", "spill B", "status", "covers")
    rows = [
        (r.kernel, r.config, r.arch, str(r.registers), str(r.shared_bytes), str(r.spill_bytes),
         "ok" if not r.error and r.spill_bytes == 0 else ("SPILL" if not r.error else "FAIL"), r.covers)
        for r in results
    ]  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    for r in results:
        if r.error:
            lines.append(f"\n{r.kernel} [{r.config}] {r.arch} failed:\n{r.error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export3d.kernels.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="SM versions (default: 80 90)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--only", choices=("presets", "hand"), help="compile one set only (default: both)")
    args = parser.parse_args(argv)
    results = run(tuple(args.arch), presets=args.only != "hand", hand=args.only != "presets")
    print(format_table(results))
    print("\n" + coverage_summary(results))
    if args.json:
        import json

        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    bad = [r for r in results if r.error or r.spill_bytes != 0]
    print(f"\n{len(results)} compiles, {len(bad)} failed or spilled")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
