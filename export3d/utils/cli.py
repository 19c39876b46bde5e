"""How the command lines (``python -m export3d.<name>``) report a failure: one message and a documented exit status.

A command's work can fail in three ways, and the exit status tells a script which one it was:

- ``EXIT_USER_ERROR`` (2, argparse's own status for a bad flag): an input the user can fix, such as a missing file,
  a bad checkpoint or a wrong size. One line, ``prog: error: message``, where the message names the flag.
- ``EXIT_DEVICE_ERROR`` (4): the device or a compiled kernel failed (see :func:`is_device_error`): CUDA out of
  memory, a CUDA error, a Triton compilation or launch error, a ``torch.compile`` backend failure. The inputs
  may be fine, so the line gives the exception's type with its message (``torch.OutOfMemoryError: CUDA out of
  memory. Tried to allocate ...``), which is what a bug report or a smaller batch needs.
- Any other exception is a bug: it is not caught, Python prints its traceback and exits with 1.

Other statuses in use: 0 success, 1 Python's uncaught exception (and a failed ``export3d.gpucheck``), 3
``export3d.train``'s diverged run, 130 / 143 Ctrl-C / SIGTERM (:func:`export3d.utils.signals.exit_status`).

``--debug`` (:func:`add_debug_flag`) prints the full traceback before the message of a caught error. Usage::

    parser = build_parser()
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_command("export3d.animate", animate, args, user_errors=(ValueError, OSError))
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

import torch

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_DEVICE_ERROR = 4

# Message prefixes of device errors raised as a plain RuntimeError: Triton's CUDA / HIP launcher
# (triton/backends/*/driver.c) and PyTorch's CUDA checks before torch.AcceleratorError existed (torch < 2.8).
_DEVICE_MESSAGE_PREFIXES = ("Triton Error [", "CUDA error:", "CUDA driver error:")
# Packages whose own exception classes mean that a kernel failed to compile or run.
_KERNEL_PACKAGES = ("triton", "torch._dynamo", "torch._inductor")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` to ``parser``: a caught error then prints its full traceback before the message."""
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the full traceback before the message")  # fmt: skip


def _device_exception_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [torch.cuda.OutOfMemoryError]  # torch.OutOfMemoryError in torch >= 2.5
    accelerator_error = getattr(torch, "AcceleratorError", None)  # torch >= 2.8: CUDA errors other than OOM
    if accelerator_error is not None:
        types.append(accelerator_error)
    return tuple(types)


def _from_kernel_package(cls: type) -> bool:
    return any(cls.__module__ == p or cls.__module__.startswith(p + ".") for p in _KERNEL_PACKAGES)


def is_device_error(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised ``from``) is a device or kernel failure, not a bad input.

    That is: CUDA out of memory (``torch.OutOfMemoryError``), another CUDA error (``torch.AcceleratorError``, or
    a ``RuntimeError`` starting with "CUDA error:"), any exception class of Triton (``triton.errors.TritonError``:
    compilation, out of resources, ptxas, interpreter) or a ``RuntimeError`` from Triton's launcher ("Triton Error
    [CUDA]: ..."), and the failures of ``torch.compile``'s backends (``torch._dynamo`` / ``torch._inductor``).
    """
    device_types = _device_exception_types()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, device_types) or any(_from_kernel_package(c) for c in type(current).__mro__):
            return True
        if isinstance(current, RuntimeError) and str(current).startswith(_DEVICE_MESSAGE_PREFIXES):
            return True
        current = current.__cause__
    return False


def type_name(exc: BaseException) -> str:
    """The exception's class as a user can look it up: ``ValueError``, ``torch.OutOfMemoryError``, ..."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def report_error(prog: str, exc: BaseException, debug: bool = False, file: TextIO | None = None) -> int:
    """Print ``exc`` for the user on ``file`` (stderr) and return the exit status for it.

    A device error (:func:`is_device_error`) prints ``prog: error: <type>: <message>`` and a line saying what kind
    of failure it is, and returns ``EXIT_DEVICE_ERROR``; any other error prints ``prog: error: <message>`` (its
    message names the flag) and returns ``EXIT_USER_ERROR``. ``debug`` prints the full traceback first.
    """
    file = sys.stderr if file is None else file
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=file)
    if not is_device_error(exc):
        print(f"{prog}: error: {exc}", file=file)
        return EXIT_USER_ERROR
    print(f"{prog}: error: {type_name(exc)}: {exc}", file=file)
    hint = "" if debug else "; --debug prints the full traceback"
    print(f"{prog}: this is a device or kernel failure, not a problem with the inputs (exit status "
          f"{EXIT_DEVICE_ERROR}){hint}", file=file)  # fmt: skip
    return EXIT_DEVICE_ERROR


def run_command(prog: str, func: Callable[[argparse.Namespace], Any], args: argparse.Namespace,
                user_errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> int:  # fmt: skip
    """Run ``func(args)`` and return the command's exit status.

    ``EXIT_OK`` when it returns. A device error, or an exception of one of ``user_errors`` (the command's
    bad-input types), is reported by :func:`report_error` (with the traceback when ``args.debug`` is set) and
    its status returned. Anything else is re-raised untouched: an unexpected exception is a bug and keeps its
    traceback. Device errors are checked first because ``torch.OutOfMemoryError`` is a ``RuntimeError``, which
    some commands count as a user error.
    """
    try:
        func(args)
    except Exception as exc:  # noqa: BLE001 - everything that is neither kind is re-raised below
        if is_device_error(exc) or isinstance(exc, user_errors):
            return report_error(prog, exc, debug=bool(getattr(args, "debug", False)))
        raise
    return EXIT_OK
