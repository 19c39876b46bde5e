"""Test setup: without CUDA, Triton kernels run on CPU tensors under Triton's interpreter.

``TRITON_INTERPRET`` must be set before triton is imported, so this runs before any test module.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One intra-op thread: the suite's tensors are small, and two OpenMP threads on a 2-core machine that
# is also running anything else spin against each other (measured: a batch of synthetic renders went
# from 0.2 s to 3.8 s). Tests that spawn processes set the same in each child.
torch.set_num_threads(1)

import pytest  # noqa: E402 - after the environment is set


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests run: CUDA when present, otherwise the CPU (with the interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
