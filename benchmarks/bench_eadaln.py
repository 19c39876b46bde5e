"""EAdaLN (``LN(x) * (1 + scale) + shift``) at the paper preset's EAdaLN-ViT size (1 x 256 tokens x 1024)
and the tiny preset's (8 x 16 tokens x 128).

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
def test_eadaln(benchmark, provider, mode, size):
    op_benchmark(benchmark, "eadaln", provider, mode, size)
