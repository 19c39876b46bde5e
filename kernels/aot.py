"""Ahead-of-time compile check: ``python -m export3d.kernels.aot``.

Compiles every Triton kernel of ``export3d.kernels`` for real GPUs (sm_80 and sm_90) with
``triton.compile`` and a ``GPUTarget`` - no GPU needed - then runs Triton's bundled ``ptxas -v`` on
the PTX and prints registers, shared memory and spill bytes per kernel and configuration.
Exits non-zero when a kernel fails to compile or spills.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .utils import AotSpec, interpreter_enabled

ARCHS = (80, 90)
# One module per fused op, each with an ``aot_specs()`` list.
OP_MODULES = ("eadaln", "triplane_sample", "composite_rays", "pixel_shuffle_lowpass", "render_rays")


@dataclass
class AotResult:
    kernel: str
    config: str
    arch: str
    registers: int
    shared_bytes: int
    spill_bytes: int
    error: str = ""


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


def compile_one(spec: AotSpec, arch: int) -> AotResult:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name = spec.kernel.__name__
    try:
        compiled = triton.compile(
            ASTSource(spec.kernel, spec.signature, spec.constexprs),
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
        return AotResult(name, spec.label, f"sm_{arch}", regs, int(compiled.metadata.shared), spills)
    except Exception as exc:  # noqa: BLE001 - every failure is reported in the table and fails the run
        return AotResult(name, spec.label, f"sm_{arch}", -1, -1, -1, error=f"{type(exc).__name__}: {exc}")


def run(archs: tuple[int, ...] = ARCHS) -> list[AotResult]:
    if interpreter_enabled():
        raise RuntimeError("the AOT check compiles real GPU code: unset TRITON_INTERPRET before running it")
    return [compile_one(spec, arch) for spec in all_specs() for arch in archs]


def format_table(results: list[AotResult]) -> str:
    header = ("kernel", "config", "arch", "regs", "smem B", "spill B", "status")
    rows = [
        (r.kernel, r.config, r.arch, str(r.registers), str(r.shared_bytes), str(r.spill_bytes),
         "ok" if not r.error and r.spill_bytes == 0 else ("SPILL" if not r.error else "FAIL"))
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
    args = parser.parse_args(argv)
    results = run(tuple(args.arch))
    print(format_table(results))
    if args.json:
        import json

        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    bad = [r for r in results if r.error or r.spill_bytes != 0]
    print(f"\n{len(results)} compiles, {len(bad)} failed or spilled")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
