"""Tri-plane volume renderer: rays -> stratified + importance samples -> decoder MLP -> compositing.

Follows EG3D's ImportanceRenderer (paper Sec. 3.3): the coarse pass composites the stratified samples
only to get weights for importance sampling; the fine samples are decoded, merged with the coarse
ones in depth order, and the union is composited. The plane features of a point are the mean over
the three planes (``triplane_sample``, paper Eq. 7); the decoder has separate density and colour
heads (supp. 6.2). Colours are EG3D's ``sigmoid * 1.002 - 0.001`` in ~[0, 1]; the raw RGB image is
the first three feature channels mapped to the image range [-1, 1] by ``* 2 - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from export3d.cameras import camera_rays
from export3d.kernels import composite_rays, prepare_planes, render_rays, render_rays_weights, triplane_sample
from export3d.kernels.utils import use_triton
from export3d.model.config import ModelConfig
from export3d.model.render.sampling import importance_depths, stratified_depths


@dataclass
class RenderOutput:
    features: torch.Tensor  # [B, Cf, r, r] composited decoder colours, ~[0, 1]; channels 0..2 are RGB
    image_raw: torch.Tensor  # [B, 3, r, r] raw RGB in [-1, 1]: features[:, :3] * 2 - 1
    depth: torch.Tensor  # [B, 1, r, r] expected depth along the ray, clamped to the samples' range


class TriplaneDecoder(nn.Module):
    """Mean-of-planes feature ``C`` -> FC(hidden) -> softplus -> density FC(hidden -> 1), colour FC(hidden -> Cf)."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int):
        super().__init__()
        self.fc = nn.Linear(in_channels, hidden)
        self.density = nn.Linear(hidden, 1)
        self.color = nn.Linear(hidden, out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """EG3D's FullyConnectedLayer at lr multiplier 1: weights N(0, 1/fan_in), zero biases."""
        for fc in (self.fc, self.density, self.color):
            nn.init.normal_(fc.weight, std=1.0 / math.sqrt(fc.in_features))
            nn.init.zeros_(fc.bias)

    def fused_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(w1 [C, hidden], b1, w2 [hidden, 1 + Cf], b2)`` in :func:`export3d.kernels.render_rays`' layout: the
        density head is column 0 of the one output head, the colour head the rest (views and a small concat)."""
        w2 = torch.cat([self.density.weight, self.color.weight]).t()
        return self.fc.weight.t(), self.fc.bias, w2, torch.cat([self.density.bias, self.color.bias])

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features ``[B, N, C]`` -> colours ``[B, N, Cf]`` in [-0.001, 1.001] and raw densities ``[B, N, 1]``."""
        h = F.softplus(self.fc(features))  # [B, N, hidden]
        color = torch.sigmoid(self.color(h)) * (1 + 2 * 0.001) - 0.001  # MipNeRF's widened sigmoid, as EG3D
        return color, self.density(h)


class VolumeRenderer(nn.Module):
    """``forward(triplane [B, 3, C, P, P], camera [B, 25]) -> RenderOutput`` at ``image_size / 4`` rays per side.

    Training mode jitters the stratified depths and draws the importance samples at random; eval mode
    uses the fixed grid and ``u = linspace(0, 1)``, so evaluation is deterministic. Rays, plane sampling
    and compositing run in fp32 whatever the tri-plane dtype; the outputs are fp32.

    Two paths with the same samples and results. When the fused ops run Triton (``kernel_impl="triton"``, or
    ``"auto"`` on CUDA), the coarse pass is :func:`render_rays_weights` (density only, no autograd) and the final
    pass :func:`render_rays` over the sorted union of coarse and fine depths, which recomputes every sample in
    its backward: nothing ``[B, R, S, C]``-shaped is materialised or saved, and the decoder runs in fp32 inside
    the kernel (autocast does not apply to it). Otherwise (``"reference"``, or ``"auto"`` on the CPU) the split
    path runs: ``triplane_sample``, the decoder module (which follows autocast), ``composite_rays``; it is the
    oracle the fused path is tested against.
    """

    def __init__(self, config: ModelConfig, kernel_impl: str = "auto"):
        super().__init__()
        r = config.render
        self.resolution = config.render_resolution
        self.n_coarse, self.n_fine = r.n_coarse, r.n_fine
        self.ray_start, self.ray_end, self.box_warp, self.axes = r.ray_start, r.ray_end, r.box_warp, r.axes
        self.density_bias, self.white_back = r.density_bias, r.white_back
        self.kernel_impl = kernel_impl  # impl of the fused ops (render_rays or triplane_sample + composite_rays)
        self.decoder = TriplaneDecoder(config.generator.plane_channels, r.decoder_hidden, r.feature_channels)

    def initialize_weights(self) -> None:
        self.decoder.initialize_weights()

    def _query(
        self, planes: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor, depths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode points ``o + t d``: depths ``[B, R, S, 1]`` -> colours ``[B, R, S, Cf]``, densities ``[.., 1]``."""
        B, R, S, _ = depths.shape
        points = origins[:, :, None] + depths * directions[:, :, None]  # [B, R, S, 3]
        feats = triplane_sample(planes, points.reshape(B, R * S, 3), self.axes, self.box_warp, impl=self.kernel_impl)
        color, density = self.decoder(feats)  # [B, R*S, Cf], [B, R*S, 1] (lower precision under autocast)
        return color.float().reshape(B, R, S, -1), density.float().reshape(B, R, S, 1)

    def _composite(self, colors, densities, depths):
        return composite_rays(colors, densities, depths, self.density_bias, self.white_back, impl=self.kernel_impl)

    def _render_fused(self, planes, origins, directions, coarse):
        """The Triton path: -> rgb ``[B, R, Cf]``, depth ``[B, R, 1]`` (same samples as the split path)."""
        decoder = self.decoder.fused_weights()
        if not (torch.is_grad_enabled() and planes.requires_grad):
            # Inference: the plane layout the kernels gather best from (a channel-last copy at rendering sizes),
            # made once for the coarse and the final pass instead of once in each. Not in training: render_rays
            # would then save the copy for its backward, 6 MiB per batch element at the paper preset beyond
            # issue 14's 8 MiB bound, to spare two copies of ~13 us each on an A100 (estimate).
            planes = prepare_planes(planes, coarse.shape[1] * coarse.shape[2], impl=self.kernel_impl)
        opts = {"axes": self.axes, "box_warp": self.box_warp, "density_bias": self.density_bias}
        weights_c = render_rays_weights(planes, origins, directions, coarse, *decoder, **opts, impl=self.kernel_impl)
        fine = importance_depths(coarse, weights_c, self.n_fine, deterministic=not self.training)  # [B, R, Sf, 1]
        depths = torch.sort(torch.cat([coarse, fine], dim=2), dim=2).values  # [B, R, Sc+Sf, 1]
        return render_rays(planes, origins, directions, depths, *decoder, **opts, white_back=self.white_back,
                           impl=self.kernel_impl)  # fmt: skip

    def forward(self, planes: torch.Tensor, camera: torch.Tensor) -> RenderOutput:
        B, res = planes.shape[0], self.resolution
        planes = planes.float()  # geometry, sampling and compositing run in fp32, also under autocast
        with torch.autocast(planes.device.type, enabled=False):  # ray geometry in fp32 under --amp too: autocast
            origins, directions = camera_rays(camera.float(), res)  # would make directions bf16 ([B, R, 3], R = res^2)
        R = origins.shape[1]
        coarse = stratified_depths(B, R, self.n_coarse, self.ray_start, self.ray_end, jitter=self.training,
                                   device=planes.device)  # [B, R, Sc, 1]  # fmt: skip
        if use_triton(self.kernel_impl, planes, op="VolumeRenderer"):
            rgb, depth = self._render_fused(planes, origins, directions, coarse)
            return self._output(rgb, depth, B, res)
        colors_c, densities_c = self._query(planes, origins, directions, coarse)
        _, _, weights_c = self._composite(colors_c, densities_c, coarse)  # [B, R, Sc-1, 1]
        fine = importance_depths(coarse, weights_c, self.n_fine, deterministic=not self.training)  # [B, R, Sf, 1]
        colors_f, densities_f = self._query(planes, origins, directions, fine)

        depths, order = torch.sort(torch.cat([coarse, fine], dim=2), dim=2)  # [B, R, Sc+Sf, 1]
        colors = torch.cat([colors_c, colors_f], dim=2).gather(2, order.expand(-1, -1, -1, colors_c.shape[-1]))
        densities = torch.cat([densities_c, densities_f], dim=2).gather(2, order)
        rgb, depth, _ = self._composite(colors, densities, depths)  # [B, R, Cf], [B, R, 1]
        return self._output(rgb, depth, B, res)

    @staticmethod
    def _output(rgb: torch.Tensor, depth: torch.Tensor, B: int, res: int) -> RenderOutput:
        features = rgb.transpose(1, 2).reshape(B, -1, res, res)  # [B, Cf, r, r]
        return RenderOutput(
            features=features,
            image_raw=features[:, :3] * 2 - 1,
            depth=depth.transpose(1, 2).reshape(B, 1, res, res),
        )

    def extra_repr(self) -> str:
        return (
            f"resolution={self.resolution}, samples={self.n_coarse}+{self.n_fine}, depth=[{self.ray_start}, "
            f"{self.ray_end}], axes={self.axes!r}, kernel_impl={self.kernel_impl!r}"
        )
