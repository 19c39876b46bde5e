"""Depth sampling along rays: EG3D's stratified samples and importance sampling (``sample_pdf``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def stratified_depths(
    batch: int,
    rays: int,
    samples: int,
    ray_start: float,
    ray_end: float,
    jitter: bool,
    device=None,
    dtype=torch.float32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """EG3D ``sample_stratified`` -> ``[B, R, S, 1]`` ascending depths.

    ``S`` evenly spaced depths from ``ray_start`` to ``ray_end`` (both included); with ``jitter`` each is
    moved forward by ``U[0, 1) * (ray_end - ray_start) / (S - 1)`` (EG3D does this in training, so the
    last sample may pass ``ray_end``), without jitter they are the grid itself (evaluation).
    """
    depths = torch.linspace(ray_start, ray_end, samples, device=device, dtype=dtype)  # [S]
    depths = depths.view(1, 1, samples, 1).expand(batch, rays, samples, 1)
    if jitter:
        delta = (ray_end - ray_start) / (samples - 1)
        noise = torch.rand(batch, rays, samples, 1, device=device, dtype=dtype, generator=generator)
        depths = depths + noise * delta
    return depths.contiguous()


def sample_pdf(
    bins: torch.Tensor,  # [N, M + 1] ascending bin edges
    weights: torch.Tensor,  # [N, M] non-negative weight of each bin
    samples: int,
    deterministic: bool = False,
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Inverse-CDF sampling of the piecewise-constant density given by ``weights`` over ``bins`` -> ``[N, samples]``.

    ``eps`` is added to every weight (so an all-zero ray samples uniformly). ``deterministic`` uses
    ``u = linspace(0, 1, samples)`` instead of ``U[0, 1)`` draws. Within a bin the CDF is linear, so a
    sample is the linear interpolation of the bin edges at ``(u - cdf_lo) / (cdf_hi - cdf_lo)``.
    """
    N, M = weights.shape
    if bins.shape != (N, M + 1):
        raise ValueError(f"sample_pdf: bins must have shape [N, M + 1] = [{N}, {M + 1}], got {tuple(bins.shape)}")
    w = weights + eps
    pdf = w / w.sum(dim=-1, keepdim=True)  # [N, M]
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)  # [N, M + 1]
    if deterministic:
        u = torch.linspace(0.0, 1.0, samples, device=bins.device, dtype=cdf.dtype).expand(N, samples)
    else:
        u = torch.rand(N, samples, device=bins.device, dtype=cdf.dtype, generator=generator)
    u = u.contiguous()
    idx = torch.searchsorted(cdf.contiguous(), u, right=True)  # [N, samples] in 0..M+1
    lo, hi = (idx - 1).clamp(min=0), idx.clamp(max=M)  # bracketing CDF knots
    cdf_lo, cdf_hi = cdf.gather(1, lo), cdf.gather(1, hi)
    bin_lo, bin_hi = bins.gather(1, lo), bins.gather(1, hi)
    span = cdf_hi - cdf_lo
    span = torch.where(span < eps, torch.ones_like(span), span)
    return bin_lo + (u - cdf_lo) / span * (bin_hi - bin_lo)


def importance_depths(
    depths: torch.Tensor,  # [B, R, S, 1] coarse depths, ascending
    weights: torch.Tensor,  # [B, R, S - 1, 1] compositing weights of the coarse intervals
    samples: int,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """EG3D ``sample_importance`` -> ``[B, R, samples, 1]`` new depths (no gradient).

    The weights are smoothed as in EG3D: ``max_pool1d(k=2, s=1, p=1)`` then ``avg_pool1d(k=2, s=1)``
    then ``+ 0.01``. As in EG3D's released code (which reuses NeRF's indexing with one weight fewer per
    ray), the inner S - 3 smoothed weights are the densities of the S - 3 bins between the first S - 2
    midpoints of the coarse depths; the last midpoint is not used. (So the samples sit about half an
    interval nearer the camera than the coarse weights they follow; we keep EG3D's behaviour.)
    """
    B, R, S, _ = depths.shape
    z = depths.detach().reshape(B * R, S)
    w = weights.detach().reshape(B * R, 1, S - 1).float()
    w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1).reshape(B * R, S - 1) + 0.01  # [BR, S-1]
    mids = 0.5 * (z[:, :-1] + z[:, 1:])  # [BR, S-1]
    fine = sample_pdf(mids[:, :-1], w[:, 1:-1].to(mids.dtype), samples, deterministic, generator=generator)  # [BR, n]
    return fine.reshape(B, R, samples, 1)
