"""Ray compositing at the paper preset's size (1 x 4,096 rays x 48 samples x 32 channels) and the
tiny preset's (8 x 256 rays x 24 samples x 16 channels); gradients flow from rgb and depth.

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
def test_composite_rays(benchmark, provider, mode, size):
    op_benchmark(benchmark, "composite_rays", provider, mode, size)
