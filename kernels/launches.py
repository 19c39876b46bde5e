"""What a workload launches: record every kernel configuration, and compile exactly those ahead of time.

:func:`record_launches` hooks :func:`export3d.kernels.utils.launch` (the one call every launcher makes) and
turns each launch into a :class:`LaunchConfig`: the kernel, the type of every argument, the constexprs and
the arguments Triton specialises as 16-divisible (``tt.divisibility=16``: pointers whose address, and
integers whose value, is a multiple of 16; an integer equal to 1 becomes the constant 1), computed with
Triton's own specialisation function for the CUDA backend. That is the key a real GPU launch compiles
under, so :meth:`LaunchConfig.aot_spec` compiles the same binary without a GPU. ``execute=False`` records
without running anything, so a model can be walked at full size on the CPU (its fused-op outputs are then
uninitialised memory; only shapes, dtypes, strides and addresses matter to the record).

Addresses: the record is taken on CPU tensors, whose allocations are 64-byte aligned like the CUDA caching
allocator's (512 bytes), so a view's offset decides its alignment the same way on both.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .utils import LAUNCH_HOOKS, AotSpec

_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")  # launch options, not kernel arguments


@dataclass(frozen=True)
class LaunchConfig:
    """One compiled variant of one kernel, as a GPU launch would key it."""

    module: str  # "export3d.kernels.eadaln"
    kernel: str  # "_eadaln_fwd_kernel"
    signature: tuple[tuple[str, str], ...]  # (argument, "*fp32" | "i32" | "fp32" | "constexpr" ...) in order
    constexprs: tuple[tuple[str, Any], ...]  # declared constexprs and arguments Triton folded (== 1)
    aligned: tuple[str, ...]  # arguments specialised as divisible by 16
    num_warps: int

    @property
    def label(self) -> str:
        """``fp32 BLOCK_D=1024 HAS_WEIGHT=True | L=1 | aligned: X Y ...``: the dtype of the first pointer first."""
        dtype = next((t[1:] for _, t in self.signature if t.startswith("*")), "-")
        consts = " ".join(f"{k}={v}" for k, v in self.constexprs)
        return f"{dtype} {consts} warps={self.num_warps} align16={len(self.aligned)}"

    def to_json(self) -> dict:
        return {"module": self.module, "kernel": self.kernel, "signature": [list(s) for s in self.signature],
                "constexprs": [list(c) for c in self.constexprs], "aligned": list(self.aligned),
                "num_warps": self.num_warps}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict) -> LaunchConfig:
        return cls(d["module"], d["kernel"], tuple(map(tuple, d["signature"])),
                   tuple(map(tuple, d["constexprs"])), tuple(d["aligned"]), int(d["num_warps"]))  # fmt: skip

    def aot_spec(self, label: str | None = None) -> AotSpec:
        """The :class:`AotSpec` that compiles this configuration (needs Triton's compiler: not the interpreter)."""
        kernel = getattr(importlib.import_module(self.module), self.kernel)
        names = [n for n, _ in self.signature]
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in self.aligned}
        return AotSpec(kernel, dict(self.signature), dict(self.constexprs), self.num_warps,
                       label or self.label, attrs)  # fmt: skip


def _do_not_specialize(kernel, names: list[str]) -> set[str]:
    raw = getattr(kernel, "do_not_specialize", None) or getattr(kernel, "kwargs", {}).get("do_not_specialize") or ()
    return {names[r] if isinstance(r, int) else r for r in raw}


def specialize(kernel, args: tuple, kwargs: dict) -> LaunchConfig:
    """The :class:`LaunchConfig` of ``kernel[grid](*args, **kwargs)`` on an NVIDIA GPU (JIT or interpreted kernel)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    fn = getattr(kernel, "fn", kernel)
    params = list(inspect.signature(fn).parameters.values())
    names = [p.name for p in params]
    values = dict(zip(names, args, strict=False))
    values.update({k: v for k, v in kwargs.items() if k not in _OPTIONS})
    frozen = _do_not_specialize(kernel, names)
    signature, constexprs, aligned = [], [], []
    for p in params:
        value = values[p.name] if p.name in values else p.default
        if "constexpr" in str(p.annotation):
            signature.append((p.name, "constexpr"))
            constexprs.append((p.name, value))
            continue
        ty, spec = native_specialize_impl(CUDABackend, value, False, p.name not in frozen, True)
        if ty == "constexpr":  # an integer equal to 1 (or None): Triton compiles it in
            signature.append((p.name, "constexpr"))
            constexprs.append((p.name, spec))
        else:
            signature.append((p.name, ty))
            if spec == "D":
                aligned.append(p.name)
    return LaunchConfig(fn.__module__, fn.__name__, tuple(signature), tuple(constexprs), tuple(aligned),
                        int(kwargs.get("num_warps", 4)))  # fmt: skip


@contextlib.contextmanager
def record_launches(execute: bool = True) -> Iterator[list[LaunchConfig]]:
    """Collect the :class:`LaunchConfig` of every launch in the block (in order, repeats included).

    ``execute=False`` skips the launches themselves: outputs stay uninitialised.
    """
    seen: list[LaunchConfig] = []

    def hook(kernel, grid, args, kwargs) -> bool:
        seen.append(specialize(kernel, args, kwargs))
        return not execute

    LAUNCH_HOOKS.append(hook)
    try:
        yield seen
    finally:
        LAUNCH_HOOKS.remove(hook)


def dumps(configs: dict[LaunchConfig, list[str]]) -> str:
    """JSON of configurations and the workloads (tags) that launch each."""
    return json.dumps([{"config": c.to_json(), "tags": tags} for c, tags in configs.items()], indent=1)


def loads(text: str) -> dict[LaunchConfig, list[str]]:
    return {LaunchConfig.from_json(d["config"]): list(d["tags"]) for d in json.loads(text)}
