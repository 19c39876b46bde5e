"""Depth sampling and the volume renderer (the cameras and their rays: tests/test_cameras.py)."""

import math

import pytest
import torch

from benchmarks.cases import renderer_saved_bytes
from export3d.cameras import orbit_camera
from export3d.model.config import preset
from export3d.model.render import VolumeRenderer, importance_depths, sample_pdf, stratified_depths


def test_stratified_depths_grid_and_jitter():
    grid = stratified_depths(2, 3, 5, 2.25, 3.3, jitter=False)
    assert grid.shape == (2, 3, 5, 1)
    torch.testing.assert_close(grid[0, 0, :, 0], torch.linspace(2.25, 3.3, 5))
    torch.manual_seed(0)
    jit = stratified_depths(2, 3, 5, 2.25, 3.3, jitter=True)
    step = (3.3 - 2.25) / 4
    offset = jit - grid
    assert (offset >= 0).all() and (offset < step).all() and offset.std() > 0.05 * step
    assert (jit[..., 1:, :] > jit[..., :-1, :]).all()


def _inverse_cdf(u: torch.Tensor, edges: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Analytic inverse CDF of a piecewise-constant density (reference for sample_pdf)."""
    p = weights / weights.sum()
    cdf = torch.cat([torch.zeros(1, dtype=p.dtype), p.cumsum(0)])
    out = torch.empty_like(u)
    for i, x in enumerate(u.tolist()):
        k = min(max(int(torch.searchsorted(cdf, torch.tensor(x, dtype=p.dtype), right=True)) - 1, 0), len(p) - 1)
        while p[k] == 0:  # a zero-probability bin is skipped: its CDF is flat
            k += 1
        out[i] = edges[k] + (x - cdf[k]) / p[k] * (edges[k + 1] - edges[k])
    return out


def test_sample_pdf_is_inverse_cdf_sampling():
    edges = torch.tensor([0.0, 0.5, 1.0, 2.0, 2.25], dtype=torch.float64)
    weights = torch.tensor([1.0, 3.0, 0.0, 4.0], dtype=torch.float64)
    n = 32  # u = k / 31 never hits a CDF knot (1/8, 1/2), where the quantile is not unique
    got = sample_pdf(edges[None], weights[None], n, deterministic=True, eps=1e-9)[0]
    want = _inverse_cdf(torch.linspace(0, 1, n, dtype=torch.float64), edges, weights)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not ((got > 1.0) & (got < 2.0)).any(), "samples landed in the zero-weight bin"
    # Random draws: bin frequencies follow the weights.
    torch.manual_seed(0)
    draws = sample_pdf(edges[None].expand(4, -1), weights[None].expand(4, -1), 5000, eps=1e-9).flatten()
    freq = torch.histogram(draws, edges).hist / draws.numel()
    torch.testing.assert_close(freq, weights / weights.sum(), atol=0.015, rtol=0)


def test_importance_depths_concentrate_where_the_weight_is():
    depths = stratified_depths(1, 2, 24, 2.25, 3.3, jitter=False)  # [1, 2, 24, 1]
    weights = torch.zeros(1, 2, 23, 1)
    weights[0, 0, 10] = 1.0  # ray 0: a surface in interval 10; ray 1: empty
    fine = importance_depths(depths, weights, 64, deterministic=True)
    assert fine.shape == (1, 2, 64, 1) and not fine.requires_grad
    # Smoothed weights (max-pool, avg-pool, + 0.01): 0.5, 1, 0.5 on intervals 9..11, 0.01 elsewhere; the inner
    # 21 of them weight the bins between the first 22 midpoints (EG3D's indexing), so intervals 9..11 own
    # the bins from midpoint 8 to midpoint 11 and (0.5 + 1 + 0.5 + 3 * 0.01) / (2 + 21 * 0.01) of the mass.
    z = depths[0, 0, :, 0]
    lo, hi = (z[8] + z[9]) / 2, (z[11] + z[12]) / 2
    inside = ((fine[0, 0] >= lo) & (fine[0, 0] <= hi)).float().mean().item()
    assert abs(inside - 2.03 / 2.21) < 0.02, f"{inside:.3f} of the samples near the surface"
    spread = fine[0, 1, :, 0]
    assert spread.min() < 2.4 and spread.max() > 3.1, "an empty ray should sample its whole range"


def test_renderer_outputs_and_eval_is_deterministic():
    torch.manual_seed(0)
    cfg = preset("tiny", image_size=32, render={"n_coarse": 8, "n_fine": 8})
    renderer = VolumeRenderer(cfg, kernel_impl="reference")
    planes = torch.randn(2, 3, cfg.generator.plane_channels, 16, 16)
    camera = orbit_camera(torch.tensor([0.0, 0.3]), torch.zeros(2))
    renderer.eval()
    a, b = renderer(planes, camera), renderer(planes, camera)
    assert a.features.shape == (2, cfg.render.feature_channels, 8, 8)
    assert a.image_raw.shape == (2, 3, 8, 8) and a.depth.shape == (2, 1, 8, 8)
    torch.testing.assert_close(a.features, b.features, atol=0, rtol=0)
    torch.testing.assert_close(a.image_raw, a.features[:, :3] * 2 - 1)
    assert a.image_raw.min() >= -1.002 and a.image_raw.max() <= 1.002
    assert (a.depth >= 2.25).all() and (a.depth <= 3.3).all()
    renderer.train()
    torch.manual_seed(1)
    c = renderer(planes, camera)
    assert not torch.equal(c.features, a.features), "training mode should jitter the samples"
    assert math.isfinite(c.features.sum().item())


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_fused_renderer_equals_the_split_reference(training):
    """kernel_impl="triton" (render_rays_weights + render_rays, under the interpreter) against "reference" (today's
    split path): same samples from the same seed, same images, depths and gradients to planes and decoder."""
    torch.manual_seed(0)
    cfg = preset("tiny", image_size=32, render={"n_coarse": 8, "n_fine": 8})
    renderer = VolumeRenderer(cfg, kernel_impl="reference").train(training)
    renderer.resolution = 4  # 4 x 4 rays: one program per batch element under the interpreter
    with torch.no_grad():
        for p in renderer.decoder.parameters():  # non-zero biases, and a density head that makes surfaces
            p.add_(torch.randn(p.shape) * 0.3)
        renderer.decoder.density.bias.add_(2.0)
    planes = (torch.randn(2, 3, cfg.generator.plane_channels, 8, 8) * 2).requires_grad_(True)
    camera = orbit_camera(torch.tensor([0.0, 0.3]), torch.tensor([0.1, -0.1]))
    leaves = [planes, *renderer.decoder.parameters()]

    def run(kernel_impl):
        renderer.kernel_impl = kernel_impl
        torch.manual_seed(1)  # the jittered and importance samples of training mode
        out = renderer(planes, camera)
        loss = out.features.square().mean() + out.depth.mean()
        return [out.features.detach(), out.depth.detach(), *torch.autograd.grad(loss, leaves)]

    fused, split = run("triton"), run("reference")
    assert split[0].std() > 0.01 and (split[1] < 3.29).any()  # something is rendered in front of the far plane
    for name, a, b in zip(["features", "depth", "dplanes", *(n for n, _ in renderer.decoder.named_parameters())],
                          fused, split, strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("batch", [1, 8])
def test_fused_renderer_training_forward_saves_under_8_mib_per_batch_element(batch):
    """Issue 14's bound at the paper preset on fake CUDA tensors: at most 8 MiB per batch element beyond the planes
    (the split path: ~417 MiB)."""
    fused = renderer_saved_bytes("triton", batch)
    split = renderer_saved_bytes("reference", batch)
    assert fused <= 8 * 2**20 * batch, f"{fused / batch / 2**20:.2f} MiB per batch element"
    assert split > 50 * fused
