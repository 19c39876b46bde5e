"""EG3D's fused bias + activation as its layers call it (lrelu, gain sqrt(2), conv_clamp 256) on the discriminator's
largest activation: the paper preset's from_rgb output (1 x 128 x 256 x 256) and the tiny preset's (8 x 32 x 64 x 64).

Providers: ``reference`` (eager PyTorch: add, leaky_relu, scale, clamp), ``compiled`` (``torch.compile`` of the
reference), ``triton`` (the fused kernel; CUDA only, skipped on CPU). Modes: ``forward`` (with autograd recording),
``backward`` (dx and db in one pass), ``full``. Bytes moved, GB/s and memory are in ``extra_info`` (see
``benchmarks/common.py``). No timing is asserted.
"""

import pytest

from benchmarks.cases import SIZES
from benchmarks.common import MODES, PROVIDERS, op_benchmark


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_bias_act(benchmark, provider, mode, size):
    op_benchmark(benchmark, "bias_act", provider, mode, size)
