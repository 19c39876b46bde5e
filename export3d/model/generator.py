"""Hybrid tri-plane generator G(S, beta') (paper Sec. 3.2, Fig. 3, supp. 6.2) with the tri-plane EMA.

Data flow at 256 px (paper preset; every size scales with ``image_size``)::

    S [B, 3, 256, 256]
    |- high-res branch: conv7 s2 + ConvBlock ......................... hr [B, 64, 128, 128]
    '- conv stem (3 x stride 2) ......................................... [B, 256, 32, 32]   (h/4 x H/8 x W/8)
       overlap patch merge k3 s2 ........................................ [B, 256 tokens, 1024]
       EAdaLN-ViT blocks (beta' modulates both pre-norms) ............... [B, 256, 1024]
       pixel shuffle + low-pass x2, ConvBlock ........................... [B, 256, 32, 32]
       pixel shuffle + low-pass x2, ConvBlock ........................... [B, 256, 64, 64]
       pixel shuffle + low-pass x2, concat hr, ConvBlock ................ [B, 128, 128, 128]
       overlap patch merge k3 s2, ViT blocks ............................ [B, 4096 tokens, 1024]
       pixel shuffle + low-pass x2, concat hr, ConvBlock, 1x1 head ...... T_raw [B, 3, 32, 128, 128]
    T = T_raw + T_ema   (supp. Eq. 12)

The high-resolution branch feeding the upper stages follows Live3DPortrait's E_high.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from export3d.kernels import default_lowpass_taps, pixel_shuffle_lowpass
from export3d.model.blocks import (
    LRELU_SLOPE,
    CodeCrossAttention,
    ConvBlock,
    DownStage,
    OverlapPatchMerge,
    ViTBlock,
    lrelu,
    tokens_to_map,
)
from export3d.model.config import ModelConfig
from export3d.model.layers import EAdaLN


@dataclass(frozen=True)
class SourceFeatures:
    """What the generator computes from the source image alone (no expression): computed once per source, it serves
    every expression code of an animation (:meth:`TriplaneGenerator.encode_source`)."""

    hr: torch.Tensor  # [B, hr, H/2, W/2]: the high-resolution branch
    tokens: torch.Tensor  # [B, H*W/256, h]: the conv stem's patches, before the conditioned ViT blocks
    grid: tuple[int, int]  # (H/16, W/16): the token grid

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    def expand(self, batch: int) -> SourceFeatures:
        """A batch-1 source's features seen ``batch`` times (views, no copy)."""
        if self.batch == batch:
            return self
        if self.batch != 1:
            raise ValueError(f"source features of batch {self.batch} cannot serve {batch} codes (1 or {batch})")
        return SourceFeatures(self.hr.expand(batch, -1, -1, -1), self.tokens.expand(batch, -1, -1), self.grid)


class TriplaneGenerator(nn.Module):
    """``forward(source [B, 3, H, W], code [B, d]) -> tri-plane [B, 3, C, H/2, W/2]``.

    ``code`` is beta' = f_e(beta) from :class:`export3d.model.clebs.LeBS` ``[B, d]``, or beta itself ``[B, 64]`` when
    ``config.expression_encoder == "direct"`` (the "Direct 3DMM" ablation of paper Table 3).

    Tri-plane EMA (buffer ``triplane_ema [3, C, H/2, W/2]``, zeros at start): the output is
    ``T_raw + T_ema`` with the EMA *before* this step's update; a forward in training mode with
    autograd enabled (a generator step) then updates ``T_ema <- decay * T_ema + (1 - decay) *
    mean_batch(T_raw)`` without gradient. Forwards in eval mode or under ``torch.no_grad`` (sampling,
    discriminator steps) use the stored buffer and never change it.
    """

    def __init__(self, config: ModelConfig, kernel_impl: str = "auto", attention_backend: str = "auto"):
        super().__init__()
        g, C, P = config.generator, config.generator.plane_channels, config.plane_resolution
        self.plane_channels, self.plane_resolution, self.code_dim = C, P, config.code_dim
        self.ema_decay, self.source_zoom = g.ema_decay, g.source_zoom
        self.kernel_impl = kernel_impl  # impl of pixel_shuffle_lowpass (EAdaLN modules hold their own)
        vit = {"heads": g.heads, "mlp_ratio": g.mlp_ratio, "kernel_impl": kernel_impl,
               "attention_backend": attention_backend}  # fmt: skip

        self.hr_branch = nn.Sequential(
            nn.Conv2d(3, g.hr_channels, 7, stride=2, padding=3),
            nn.LeakyReLU(LRELU_SLOPE),
            ConvBlock(g.hr_channels, g.hr_channels),
        )
        widths = (3, *g.stem_channels)
        self.stem = nn.Sequential(*[DownStage(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.patch_merge = OverlapPatchMerge(g.stem_channels[-1], g.hidden)
        cond = {"cond_dim": config.code_dim, "conditioning": config.conditioning,
                "cross_attention_tokens": g.cross_attention_tokens}  # fmt: skip
        self.low_blocks = nn.ModuleList(
            [ViTBlock(g.hidden, sr_ratio=g.low_sr_ratio, **cond, **vit) for _ in range(g.low_blocks)]
        )
        self.low_norm = nn.LayerNorm(g.hidden, eps=1e-6)
        self.up1 = ConvBlock(g.hidden // 4, g.up_channels[0])
        self.up2 = ConvBlock(g.up_channels[0] // 4, g.up_channels[1])
        self.high_in = ConvBlock(g.up_channels[1] // 4 + g.hr_channels, g.high_in_channels)
        self.high_merge = OverlapPatchMerge(g.high_in_channels, g.high_hidden)
        self.high_blocks = nn.ModuleList(
            [ViTBlock(g.high_hidden, sr_ratio=g.high_sr_ratio, **vit) for _ in range(g.high_blocks)]
        )
        self.high_norm = nn.LayerNorm(g.high_hidden, eps=1e-6)
        self.out_block = ConvBlock(g.high_hidden // 4 + g.hr_channels, g.out_channels)
        self.head = nn.Conv2d(g.out_channels, 3 * C, 1)

        self.register_buffer("lowpass_taps", default_lowpass_taps(g.lowpass_taps), persistent=False)
        self.register_buffer("triplane_ema", torch.zeros(3, C, P, P))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Kaiming (leaky ReLU 0.2) convs, Xavier linears (DiT), unit LayerNorms, zero biases and zero EAdaLN
        modulation or cross-attention output (so beta' has no effect at initialisation); the tri-plane head has
        unit gain."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=LRELU_SLOPE, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # after the generic pass: the modulation / cross-attention outputs start at zero
            if isinstance(m, (EAdaLN, CodeCrossAttention)):
                m.initialize_weights()
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(self.head.in_channels))
        self.triplane_ema.zero_()

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel shuffle x2 + Gaussian low-pass: ``[B, 4c, h, w]`` -> ``[B, c, 2h, 2w]``."""
        return pixel_shuffle_lowpass(x, 2, self.lowpass_taps.to(x.dtype), impl=self.kernel_impl)

    def to_plane_frame(self, source: torch.Tensor) -> torch.Tensor:
        """Shrink the source about its centre by ``source_zoom`` (border colours fill the margin), so that a
        frontal face lands where it lies in the xy plane: ``[B, 3, H, W]`` -> ``[B, 3, H, W]``."""
        if self.source_zoom == 1.0:
            return source
        B, _, H, W = source.shape
        theta = source.new_tensor([[1.0 / self.source_zoom, 0.0, 0.0], [0.0, 1.0 / self.source_zoom, 0.0]])
        grid = F.affine_grid(theta.expand(B, 2, 3), [B, 3, H, W], align_corners=False)  # [B, H, W, 2]
        return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def encode_source(self, source: torch.Tensor) -> SourceFeatures:
        """The source-only part of the network (plane-frame zoom, high-resolution branch, conv stem, patch merge):
        source ``[B, 3, H, W]`` -> :class:`SourceFeatures`."""
        source = self.to_plane_frame(source)  # [B, 3, H, W]
        hr = self.hr_branch(source)  # [B, hr, H/2, W/2]
        tokens, grid = self.patch_merge(self.stem(source))  # [B, H*W/256, h], grid (H/16, W/16)
        return SourceFeatures(hr, tokens, grid)

    def generate_raw(self, source: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """The network without the EMA: source ``[B, 3, H, W]``, code ``[B, d]`` -> ``[B, 3, C, H/2, W/2]``."""
        return self.decode(self.encode_source(source), code)

    def decode(self, features: SourceFeatures, code: torch.Tensor) -> torch.Tensor:
        """The expression-dependent rest of the network, without the EMA: features of batch B or 1, code ``[B, d]``
        -> ``[B, 3, C, H/2, W/2]``."""
        B = code.shape[0]
        features = features.expand(B)
        x, grid, hr = features.tokens, features.grid, features.hr
        for block in self.low_blocks:
            x = block(x, grid, code)  # [B, H*W/256, h]
        x = tokens_to_map(self.low_norm(x), grid)  # [B, h, H/16, W/16]
        x = self.up1(self._upsample(x))  # [B, up0, H/8, W/8]
        x = self.up2(self._upsample(x))  # [B, up1, H/4, W/4]
        x = self.high_in(torch.cat([self._upsample(x), hr], dim=1))  # [B, high_in, H/2, W/2]
        x, grid = self.high_merge(x)  # [B, H*W/16, hh], grid (H/4, W/4)
        for block in self.high_blocks:
            x = block(x, grid)  # [B, H*W/16, hh]
        x = tokens_to_map(self.high_norm(x), grid)  # [B, hh, H/4, W/4]
        x = self.out_block(torch.cat([self._upsample(x), hr], dim=1))  # [B, out, H/2, W/2]
        x = self.head(lrelu(x))  # [B, 3*C, H/2, W/2]
        # Image rows run top-down (-y) while the planes' rows run along +v (triplane_sample): flipping the rows
        # makes the xy plane line up with a frontal source, so the convolutional paths can paint it in place.
        return x.view(B, 3, self.plane_channels, self.plane_resolution, self.plane_resolution).flip(-2)

    def apply_ema(self, raw: torch.Tensor) -> torch.Tensor:
        """``T = T_raw + T_ema(previous)``; advances the EMA on generator training steps (see class doc)."""
        out = raw + self.triplane_ema.to(raw.dtype)  # [B, 3, C, P, P]
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                batch_mean = raw.detach().mean(dim=0).to(self.triplane_ema.dtype)  # [3, C, P, P]
                self.triplane_ema.mul_(self.ema_decay).add_(batch_mean, alpha=1.0 - self.ema_decay)
        return out

    def forward(self, source: torch.Tensor | SourceFeatures, code: torch.Tensor) -> torch.Tensor:
        """source ``[B, 3, H, W]`` in [-1, 1] (or its :class:`SourceFeatures`), code ``[B, d]`` -> tri-plane
        ``[B, 3, C, H/2, W/2]``."""
        features = source if isinstance(source, SourceFeatures) else self.encode_source(source)
        return self.apply_ema(self.decode(features, code))
