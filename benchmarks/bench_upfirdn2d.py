"""EG3D's FIR resampling (upfirdn2d with StyleGAN2's [1, 3, 3, 1] filter) at the paper preset's sizes: the
super-resolution's upsample2d (1 x 128 x 128 x 128 -> 1 x 128 x 256 x 256) and the discriminator's first downsample2d
(1 x 128 x 256 x 256 -> 1 x 128 x 128 x 128); and the tiny preset's (8 x 32 x 32 x 32 up, 8 x 32 x 64 x 64 down).

Providers: ``reference`` (eager PyTorch: zero-stuffing, padding and a depthwise conv), ``compiled`` (``torch.compile``
of the reference), ``triton`` (the fused polyphase kernel; CUDA only, skipped on CPU). Modes: ``forward`` (with
autograd recording), ``backward``, ``full``. Bytes moved, GB/s and memory are in ``extra_info`` (see
``benchmarks/common.py``). No timing is asserted.
"""

import pytest

from benchmarks.cases import SIZES
from benchmarks.common import MODES, PROVIDERS, op_benchmark


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("op", ["upsample2d", "downsample2d"])
def test_upfirdn2d(benchmark, op, provider, mode, size):
    op_benchmark(benchmark, op, provider, mode, size)
