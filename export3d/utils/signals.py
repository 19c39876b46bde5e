"""Signals in long work: Ctrl-C and SIGTERM raise, so that training saves a checkpoint before it exits.

SIGTERM is what ``kill``, a cluster scheduler's pre-emption notice and torchrun (passing one on) send; it raises
:class:`Terminated`, a ``KeyboardInterrupt``, so one ``except KeyboardInterrupt`` handles both.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a cluster scheduler's pre-emption notice, torchrun passing one on): handled like Ctrl-C."""


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """The shell's status for a process ended by the signal: 143 (128 + SIGTERM) or 130 (128 + SIGINT)."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def raise_terminated(signum, frame) -> None:
    """A SIGTERM handler: raise :class:`Terminated`."""
    raise Terminated(f"signal {signum}")


def set_interrupt_handlers(sigint, sigterm):
    """Set the SIGINT and SIGTERM handlers; returns a function that puts the previous ones back. Only the main
    thread can change handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGINT, sigint), signal.signal(signal.SIGTERM, sigterm)

    def restore() -> None:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])

    return restore


def catch_sigterm():
    """From now on SIGTERM raises :class:`Terminated` (SIGINT keeps its handler: Python's raises KeyboardInterrupt).
    Returns a function that restores the previous handlers."""
    return set_interrupt_handlers(signal.getsignal(signal.SIGINT), raise_terminated)


@contextlib.contextmanager
def interrupts_ignored():
    """A second Ctrl-C or SIGTERM (or one forwarded by the ablation runner) must not cut the last save short."""
    restore = set_interrupt_handlers(signal.SIG_IGN, signal.SIG_IGN)
    try:
        yield
    finally:
        restore()
