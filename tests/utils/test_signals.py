"""Ctrl-C and SIGTERM handling for long work (export3d.utils.signals)."""

import os
import signal
import time

import pytest

from export3d.utils.signals import Terminated, catch_sigterm, exit_status, interrupts_ignored


def test_inside_interrupts_ignored_neither_ctrl_c_nor_sigterm_does_anything_and_handlers_come_back():
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's Ctrl-C, whatever pytest inherited
    term = signal.getsignal(signal.SIGTERM)
    try:
        with interrupts_ignored():
            os.kill(os.getpid(), signal.SIGINT)  # outside the block: KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # outside the block (the default handler): the process would end
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) == term
    finally:
        signal.signal(signal.SIGINT, outer)


def test_catch_sigterm_raises_terminated_a_keyboard_interrupt_until_restored():
    term = signal.getsignal(signal.SIGTERM)
    restore = catch_sigterm()
    try:
        with pytest.raises(Terminated) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert isinstance(caught.value, KeyboardInterrupt)
        assert exit_status(caught.value) == 143 and exit_status(KeyboardInterrupt()) == 130
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) == term
