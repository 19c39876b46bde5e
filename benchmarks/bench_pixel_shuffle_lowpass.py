"""Pixel shuffle x2 + 5-tap Gaussian low-pass at the paper preset's size (1 x 1024 x 32 x 32 -> 1 x 256 x
64 x 64) and the tiny preset's (8 x 128 x 16 x 16 -> 8 x 32 x 32 x 32).

Providers: ``reference`` (eager PyTorch), ``compiled`` (``torch.compile`` of the reference), ``triton`` (the
fused kernel; CUDA only, skipped on CPU). Modes: ``forward`` (with autograd recording), ``backward``, ``full``.
Bytes moved, GB/s and memory are in ``extra_info`` (see ``benchmarks/common.py``). No timing is asserted.
"""

import pytest

from benchmarks.cases import SIZES
from benchmarks.common import MODES, PROVIDERS, op_benchmark


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_pixel_shuffle_lowpass(benchmark, provider, mode, size):
    op_benchmark(benchmark, "pixel_shuffle_lowpass", provider, mode, size)
