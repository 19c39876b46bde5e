"""gpucheck's environment record and its two outputs: ``gpucheck.md`` (tables ready to paste into an issue)
and ``gpucheck.json`` (everything, machine-readable)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import platform
from pathlib import Path

import torch

from export3d.gpucheck.checks import Check


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _nvml(index: int) -> dict:
    """Driver version and clocks (current / max SM and memory MHz) of GPU ``index`` through NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - no library or no driver: say so in the report
        return {"nvml": f"unavailable ({type(exc).__name__})"}
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        out = {"driver": pynvml.nvmlSystemGetDriverVersion()}
        for name, clock in (("sm", pynvml.NVML_CLOCK_SM), ("mem", pynvml.NVML_CLOCK_MEM)):
            with contextlib.suppress(pynvml.NVMLError):
                out[f"{name}_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(h, clock)
                out[f"{name}_clock_max_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(h, clock)
        with contextlib.suppress(pynvml.NVMLError):
            out["power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000
        return out
    finally:
        pynvml.nvmlShutdown()


def environment(device: torch.device, interpret: bool) -> dict:
    env = {
        "device": str(device),
        "mode": "TRITON_INTERPRET=1 on CPU (correctness only)" if interpret else "CUDA",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "xformers": _version("xformers"),
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"sm_{props.major}{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1), **_nvml(device.index or 0))  # fmt: skip
    return env


def _fmt_s(s: float | None) -> str:
    return "-" if s is None else (f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s")


def _fmt_gbps(g: float | None) -> str:
    return "-" if g is None else f"{g:.1f}"


def _fmt_frac(f: float | None) -> str:
    return "-" if f is None else f"{100 * f:.0f}%"


def markdown(result: dict) -> str:
    env, checks = result["environment"], [Check(**c) for c in result["checks"]]
    failed = [c for c in checks if not c.ok]
    lines = [f"## gpucheck: {'PASS' if not failed else f'FAIL ({len(failed)} of {len(checks)} checks)'}", ""]
    lines += ["| environment | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()]
    lines += ["", f"Run time {result['seconds']:.0f} s. Sizes: {result['sizes']}.", ""]
    lines += ["### Correctness", "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c.name} | {'ok' if c.ok else '**FAIL**'} | {c.detail} |" for c in checks]
    if result["op_timings"]:
        note = " (interpreter: not a measurement)" if result["interpret"] else ""
        lines += ["", f"### Fused ops, fp32, median{note}", "",
                  "| op | provider | forward | fwd GB/s | fwd % peak | backward | bwd GB/s | bwd % peak |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in result["op_timings"]:
            lines.append(f"| {r['op']} | {r['provider']} | {_fmt_s(r['forward_s'])} | {_fmt_gbps(r['forward_gbps'])} | "
                         f"{_fmt_frac(r['forward_peak_fraction'])} | {_fmt_s(r['backward_s'])} | "
                         f"{_fmt_gbps(r['backward_gbps'])} | {_fmt_frac(r['backward_peak_fraction'])} |")  # fmt: skip
        if result["peak_gbps"][0]:
            lines.append(f"\nPeak bandwidth {result['peak_gbps'][0]:.0f} GB/s ({result['peak_gbps'][1]}).")
    if result["train_steps"]:
        lines += ["", "### Training step (generator, MSE, Adam)", "", "| preset | variant | batch | step | images/s | "
                  "peak memory |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in result["train_steps"]:
            mem = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**30:.2f} GiB"
            lines.append(f"| {r['preset']} | {r['variant']} | {r['batch']} | {_fmt_s(r['step_s'])} | "
                         f"{r['images_per_s']:.2f} | {mem} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write(result: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "gpucheck.md", out_dir / "gpucheck.json"
    md.write_text(markdown(result))
    js.write_text(json.dumps(result, indent=1, default=str))
    return md, js
