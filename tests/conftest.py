"""Test setup: without CUDA, Triton kernels run on CPU tensors under Triton's interpreter.

``TRITON_INTERPRET`` must be set before triton is imported, so this runs before any test module.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402 - after the environment is set


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests run: CUDA when present, otherwise the CPU (with the interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
