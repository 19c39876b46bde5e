"""Shared plumbing for the fused ops: the one dispatch rule and the argument checks.

Every public op in ``export3d.kernels`` calls :func:`use_triton` exactly once to decide between
its Triton kernels and its reference in ``reference.py``. Nothing here imports the model,
lpips or xformers, and Triton itself is only imported lazily so that the module can be read on
machines without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

IMPLS = ("auto", "triton", "reference")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """True when Triton's own interpreter is on (``TRITON_INTERPRET=1``), which runs kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def use_triton(impl: str, *tensors: torch.Tensor | None, op: str) -> bool:
    """The single dispatch rule (docs/design.md, "Dispatch").

    ``auto`` runs Triton when every tensor is on CUDA (and Triton is installed), the reference otherwise;
    ``triton`` forces Triton and fails loudly when it cannot run; ``reference`` forces the reference.
    """
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return False
    present = [t for t in tensors if t is not None]
    on_cuda = bool(present) and all(t.is_cuda for t in present)
    if impl == "auto":
        return on_cuda and triton_installed()
    if not triton_installed():
        raise RuntimeError(f"{op}: impl='triton' needs the triton package, which is not installed")
    if not on_cuda and not interpreter_enabled():
        raise RuntimeError(
            f"{op}: impl='triton' got CPU tensors; Triton runs on CPU only under its interpreter "
            "(set TRITON_INTERPRET=1 before triton is imported) - use impl='auto' or 'reference' instead"
        )
    return True


def check_tensor(
    name: str,
    t: torch.Tensor,
    *,
    op: str,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = True,
) -> None:
    """Raise a clear error naming ``name`` when ``t`` is not a tensor of the expected rank / shape / dtype.

    ``shape`` entries that are ``None`` are free.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None:
        if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape, strict=True)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{op}: {name} must have shape {want}, got {tuple(t.shape)}")
    if floating and t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_same(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Every tensor in ``others`` must share ``ref``'s device and dtype."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; put them on one device")
        if t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match")


@contextlib.contextmanager
def on_device(t: torch.Tensor) -> Iterator[None]:
    """Make ``t``'s CUDA device torch's (and so Triton's) current device for the block; a no-op elsewhere.

    Triton launches on the *current* device and stream: without this, a launch on tensors of ``cuda:1`` from
    a process whose current device is ``cuda:0`` would run on GPU 0 with GPU 1's pointers.
    """
    if t.is_cuda:
        with torch.cuda.device(t.device):
            yield
    else:
        yield


# Called as hook(kernel, grid, args, kwargs) before every launch; a hook returning True skips the launch
# (``export3d.kernels.launches.record_launches(execute=False)`` records configurations without running them).
LAUNCH_HOOKS: list[Callable[..., bool]] = []


def launch(kernel, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)`` on the device of the first tensor argument: every launcher uses this."""
    if any([hook(kernel, grid, args, kwargs) for hook in LAUNCH_HOOKS]):
        return
    first = next(a for a in args if isinstance(a, torch.Tensor))
    with on_device(first):
        kernel[grid](*args, **kwargs)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def num_programs_target(device: torch.device) -> int:
    """How many programs a reduction kernel should launch: a few per SM on CUDA, few under the interpreter."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


@dataclass(frozen=True)
class AotSpec:
    """One ahead-of-time compile configuration of a ``@triton.jit`` kernel (see ``kernels/aot.py``)."""

    kernel: Any  # a triton JITFunction
    signature: dict[str, str]  # every argument name -> "*fp32", "i32", "fp32", "constexpr", ...
    constexprs: dict[str, Any]
    num_warps: int
    label: str  # human-readable configuration, e.g. "fp32 D=1024"
    attrs: dict = field(default_factory=dict)  # {(argument index,): [["tt.divisibility", 16]]}: alignment promises


def saved_tensor_bytes(fn, *args, **kwargs) -> tuple[int, list[torch.Tensor], Any]:
    """Run ``fn(*args, **kwargs)`` and report what its autograd graph saves for backward.

    Returns ``(bytes, saved, output)``: the bytes of the distinct storages saved (a tensor saved twice, or
    two views of one storage, count once), the saved tensors themselves, and ``fn``'s output. Works on any
    device, including fake tensors (``torch._subclasses.FakeTensorMode``), so realistic sizes cost nothing.
    """
    storages: dict[int, int] = {}
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage._cdata] = storage.nbytes()
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    return sum(storages.values()), saved, out
