"""The minimal EG3D-style render (planes -> triplane_sample -> MLP -> composite_rays), forward + backward.

Providers: ``reference`` (eager PyTorch), ``compiled`` (``torch.compile`` of the reference), and
``triton`` (the fused kernels; CUDA only). Sizes: the paper preset's (64 x 64 rays, 48 samples, C = 32,
planes 3 x 32 x 128 x 128) and a tiny one. CPU runs use ``--bench-threads`` threads (default 1,
see ``benchmarks/common.py``). Memory is in ``extra_info``. No timing is asserted.
"""

import pytest
import torch

from benchmarks.cases import minimal_render, render_scene
from benchmarks.common import TRITON_SKIP, device, machine_info, measure_memory, sync, threads_for_benchmarks

SIZES = {"paper": {"R": 64 * 64, "S": 48, "C": 32, "res": 128}, "tiny": {"R": 16 * 16, "S": 24, "C": 16, "res": 32}}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("provider", ["reference", "compiled", "triton"])
def test_render_forward_backward(benchmark, provider, size):
    dev = device()
    if provider == "triton" and dev != "cuda":
        pytest.skip(TRITON_SKIP)
    impl = "triton" if provider == "triton" else "reference"
    dims = SIZES[size]
    with threads_for_benchmarks():
        planes, weights, origins, dirs, depths = render_scene(**dims, device=dev)
        fn = lambda *a: minimal_render(*a, impl=impl)  # noqa: E731 - a one-line closure reads best here
        if provider == "compiled":
            torch._dynamo.reset()
            fn = torch.compile(fn)

        def forward():
            return fn(planes, weights, origins, dirs, depths)

        def step():
            rgb, depth = forward()
            (rgb.square().sum() + depth.sum()).backward()
            sync(dev)

        step()  # warm-up (compiles)
        benchmark.group = f"render fwd+bwd {size}"
        benchmark.extra_info.update(dims, provider=provider, **machine_info())
        benchmark.pedantic(step, rounds=5 if size == "paper" else 20, warmup_rounds=1)
        benchmark.extra_info.update(measure_memory(step, dev, forward=forward))


RENDERER_SIZES = {"paper": 1, "tiny": 8}  # the preset's training batch on the benchmarked device (paper: batch 1)


@pytest.mark.parametrize("size", list(RENDERER_SIZES))
@pytest.mark.parametrize("provider", ["reference", "triton"])
def test_volume_renderer_forward_backward(benchmark, provider, size):
    """The whole ``VolumeRenderer`` in training mode, forward + backward to the planes and the decoder:
    ``reference`` is the split path of plain PyTorch, ``triton`` the fused path (render_rays_weights for the
    coarse pass, render_rays for the final one; CUDA only)."""
    from export3d.cameras import orbit_camera
    from export3d.model.config import preset
    from export3d.model.render import VolumeRenderer

    dev = device()
    if provider == "triton" and dev != "cuda":
        pytest.skip(TRITON_SKIP)
    cfg, batch = preset(size), RENDERER_SIZES[size]
    with threads_for_benchmarks():
        torch.manual_seed(0)
        renderer = VolumeRenderer(cfg, kernel_impl=provider).to(dev).train()
        P = cfg.plane_resolution
        planes = torch.randn(batch, 3, cfg.generator.plane_channels, P, P, device=dev, requires_grad=True)
        camera = orbit_camera(torch.linspace(-0.3, 0.3, batch), torch.zeros(batch)).to(dev)

        def forward():
            return renderer(planes, camera)

        def step():
            out = forward()
            (out.features.square().mean() + out.depth.mean()).backward()
            sync(dev)

        step()  # warm-up
        benchmark.group = f"volume renderer fwd+bwd {size}"
        benchmark.extra_info.update(size=size, batch=batch, provider=provider, **machine_info())
        benchmark.pedantic(step, rounds=3 if size == "paper" else 10, warmup_rounds=1)
        benchmark.extra_info.update(measure_memory(step, dev, forward=forward))
