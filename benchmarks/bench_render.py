"""The minimal EG3D-style render (planes -> triplane_sample -> MLP -> composite_rays), forward + backward.

Providers: ``reference`` (eager PyTorch), ``compiled`` (``torch.compile`` of the reference), and
``triton`` (the fused kernels; CUDA only). Sizes: the paper preset's (64 x 64 rays, 48 samples, C = 32,
planes 3 x 32 x 128 x 128) and a tiny one. No timing is asserted.
"""

import pytest
import torch

from benchmarks.cases import minimal_render, render_scene

SIZES = {"paper": {"R": 64 * 64, "S": 48, "C": 32, "res": 128}, "tiny": {"R": 16 * 16, "S": 24, "C": 16, "res": 32}}


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("provider", ["reference", "compiled", "triton"])
def test_render_forward_backward(benchmark, provider, size):
    device = _device()
    if provider == "triton" and device != "cuda":
        pytest.skip("triton provider needs CUDA (the interpreter is a correctness tool, not a benchmark)")
    impl = "triton" if provider == "triton" else "reference"
    dims = SIZES[size]
    planes, weights, origins, dirs, depths = render_scene(**dims, device=device)
    fn = lambda *a: minimal_render(*a, impl=impl)  # noqa: E731 - a one-line closure reads best here
    if provider == "compiled":
        torch._dynamo.reset()
        fn = torch.compile(fn)

    def step():
        rgb, depth = fn(planes, weights, origins, dirs, depths)
        (rgb.square().sum() + depth.sum()).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (compiles)
    benchmark.group = f"render fwd+bwd {size}"
    benchmark.extra_info.update(dims, device=device, provider=provider)
    benchmark.pedantic(step, rounds=5 if size == "paper" else 20, warmup_rounds=1)
