"""The fused tri-plane render op at the paper preset's size (1 x 4,096 rays x 96 samples, planes 3 x 32 x 128 x 128,
decoder 32 -> 64 -> 1 + 32) and the tiny preset's (8 x 256 rays x 48 samples, planes 3 x 16 x 32 x 32, 16 -> 32 -> 17);
gradients flow from rgb and depth to the planes and the decoder.

Providers: ``reference`` (eager PyTorch: triplane_sample_ref, the MLP, composite_rays_ref), ``compiled``
(``torch.compile`` of the reference), ``triton`` (the fused kernels; CUDA only, skipped on CPU). Modes: ``forward``
(with autograd recording), ``backward``, ``full``. Bytes moved, GB/s and memory are in ``extra_info`` (see
``benchmarks/common.py``). No timing is asserted.
"""

import pytest

from benchmarks.cases import SIZES
from benchmarks.common import MODES, PROVIDERS, op_benchmark


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_render_rays(benchmark, provider, mode, size):
    op_benchmark(benchmark, "render_rays", provider, mode, size)
