"""The one attention helper of the model: it picks the backend and records which one ran.

Backends:

- ``"xformers"``: ``xformers.ops.memory_efficient_attention``; used by ``"auto"`` only when the tensors
  are on CUDA and xformers imports. xformers is imported lazily, on the first CUDA call, never at
  module import (its CPU build has no kernels, and importing it is slow). An installed xformers that fails to
  import is a ``RuntimeWarning`` naming the error (:func:`xformers_available`).
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (``"auto"`` everywhere else).
- ``"math"``: the explicit ``softmax(q k^T / sqrt(d)) v`` in fp32, the oracle of ``impl="reference"``.

``last_backend`` (module attribute) and :func:`last_backend_used` tell which backend the most recent
call ran, so the choice is visible in logs and in the profiler output.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "xformers", "sdpa", "math")

log = logging.getLogger(__name__)
last_backend: str | None = None  # backend of the most recent attention() call
_xformers_ok: bool | None = None  # cached result of the lazy import


def _not_installed(exc: Exception) -> bool:
    """True when ``exc`` says only that xformers itself is absent (the usual case on CPU-only installs)."""
    return isinstance(exc, ModuleNotFoundError) and exc.name == "xformers"


def xformers_available() -> bool:
    """True when ``xformers.ops`` imports. Imports it on the first call only (only CUDA calls get here).

    xformers not installed is expected and logged at INFO. Any other failure of the import (a build for another
    torch or CUDA, a missing shared library or dependency, an error raised while it loads) means xformers is
    installed but broken, which silently costs speed and memory on a GPU: it is a ``RuntimeWarning`` that names
    the error (type and message) and the backend used instead, once per process.
    """
    global _xformers_ok
    if _xformers_ok is None:
        try:
            import xformers.ops  # noqa: F401 - probe only

            _xformers_ok = True
        except Exception as exc:  # noqa: BLE001 - a broken build raises anything at import; reported below
            _xformers_ok = False
            if _not_installed(exc):
                log.info("xformers is not installed; attention uses torch's scaled_dot_product_attention ('sdpa')")
            else:
                warnings.warn(f"xformers is installed but importing xformers.ops failed ({type(exc).__name__}: "
                              f"{exc}); attention uses torch's scaled_dot_product_attention ('sdpa') instead of "
                              "xformers' memory_efficient_attention", RuntimeWarning, stacklevel=2)  # fmt: skip
    return _xformers_ok


def select_backend(q: torch.Tensor, backend: str = "auto") -> str:
    """Resolve ``backend`` for tensors like ``q``: ``auto`` -> xformers on CUDA when it imports, else sdpa."""
    if backend not in BACKENDS:
        raise ValueError(f"attention: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "xformers" if q.is_cuda and xformers_available() else "sdpa"
    if backend == "xformers" and not (q.is_cuda and xformers_available()):
        raise RuntimeError("attention: backend='xformers' needs CUDA tensors and an importable xformers")
    return backend


def last_backend_used() -> str | None:
    """The backend the most recent :func:`attention` call ran (None before the first call)."""
    return last_backend


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [B, h, Lq, Lk]
    return torch.matmul(scores.softmax(dim=-1), v.float()).to(q.dtype)  # [B, h, Lq, Dh]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Multi-head attention without mask or dropout.

    q ``[B, heads, Lq, Dh]``, k / v ``[B, heads, Lk, Dh]`` -> ``[B, heads, Lq, Dh]``.
    """
    global last_backend
    chosen = select_backend(q, backend)
    if chosen == "xformers":
        import xformers.ops as xops  # lazy: only reached on CUDA

        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [B, L, h, Dh]
        out = out.transpose(1, 2)
    elif chosen == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = _math_attention(q, k, v)
    last_backend = chosen
    return out
