"""A minimal EG3D-style render (planes -> triplane_sample -> MLP -> composite_rays) through both paths."""

import pytest
import torch

from benchmarks.cases import minimal_render, render_scene


def _forward_backward(fn, seed=0):
    planes, weights, origins, dirs, depths = render_scene(B=2, C=8, res=12, R=10, S=9, hidden=16, seed=seed)
    rgb, depth = fn(planes, weights, origins, dirs, depths)
    loss = rgb.square().sum() + 0.1 * depth.sum()
    grads = torch.autograd.grad(loss, [planes, *weights])
    return rgb.detach(), depth.detach(), grads


def test_triton_render_matches_reference():
    rgb_t, depth_t, grads_t = _forward_backward(lambda *a: minimal_render(*a, impl="triton"))
    rgb_r, depth_r, grads_r = _forward_backward(lambda *a: minimal_render(*a, impl="reference"))
    assert rgb_r.abs().sum() > 0 and grads_r[0].abs().sum() > 0  # the scene is not trivially empty
    torch.testing.assert_close(rgb_t, rgb_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(depth_t, depth_r, atol=1e-5, rtol=1e-5)
    for name, a, b in zip(["planes", "w1", "w_sigma", "w_rgb"], grads_t, grads_r, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_compiled_render_matches_eager(impl):
    torch._dynamo.reset()
    fn = torch.compile(lambda *a: minimal_render(*a, impl=impl), fullgraph=True)
    rgb_c, depth_c, grads_c = _forward_backward(fn, seed=1)
    rgb_e, depth_e, grads_e = _forward_backward(lambda *a: minimal_render(*a, impl=impl), seed=1)
    torch.testing.assert_close(rgb_c, rgb_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(depth_c, depth_e, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
