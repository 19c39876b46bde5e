"""Tri-plane sampling at the paper preset's size (planes 1 x 3 x 32 x 128 x 128, 64 x 64 rays x 48 samples)
and the tiny preset's (planes 8 x 3 x 16 x 32 x 32, 16 x 16 rays x 24 samples).

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
def test_triplane_sample(benchmark, provider, mode, size):
    op_benchmark(benchmark, "triplane_sample", provider, mode, size)
