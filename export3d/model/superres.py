"""Super-resolution H/4 -> H (paper Sec. 3.3, supp. 6.2): EG3D's SuperresolutionHybrid4X without style modulation.

The feature image and the raw RGB are bilinearly resized to H/2; block 0 (two 3x3 convs at H/2, toRGB)
adds its RGB to the resized raw image; block 1 upsamples x2 with the [1, 3, 3, 1] FIR filter, runs two
3x3 convs at H, and adds its toRGB to the FIR-upsampled running image (StyleGAN2's skip architecture).
Plain convolutions replace the modulated ones because there is no style code (paper Sec. 3.3); there
is no noise input and no output squashing, so the output lives in the range of the targets ([-1, 1]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from export3d.model.blocks import LRELU_SLOPE, fir_kernel_2d, lrelu, upsample2x
from export3d.model.config import ModelConfig


class SRBlock(nn.Module):
    """Two 3x3 conv + leaky ReLU layers and a 1x1 toRGB; optionally upsamples its input x2 first."""

    def __init__(self, in_channels: int, out_channels: int, up: bool):
        super().__init__()
        self.up = up
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.torgb = nn.Conv2d(out_channels, 3, 1)

    def forward(self, x: torch.Tensor, img: torch.Tensor, fir: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[B, Cin, h, w]``, img ``[B, 3, h, w]`` -> ``[B, Cout, h', w']``, ``[B, 3, h', w']``; h' = 2h if up."""
        if self.up:
            x, img = upsample2x(x, fir), upsample2x(img, fir)
        x = lrelu(self.conv1(lrelu(self.conv0(x))))
        return x, img + self.torgb(x)


class SuperResolution(nn.Module):
    """``forward(image_raw [B, 3, H/4, W/4], features [B, Cf, H/4, W/4]) -> image [B, 3, H, W]``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c0, c1 = config.superres.channels
        self.mid_resolution = config.image_size // 2
        self.block0 = SRBlock(config.render.feature_channels, c0, up=False)  # at H/2
        self.block1 = SRBlock(c0, c1, up=True)  # H/2 -> H
        self.register_buffer("fir", fir_kernel_2d((1.0, 3.0, 3.0, 1.0)), persistent=False)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Kaiming (leaky ReLU 0.2) convs; toRGB N(0, 1/fan_in) like EG3D's equalised toRGB; zero biases."""
        for block in (self.block0, self.block1):
            for conv in (block.conv0, block.conv1):
                nn.init.kaiming_normal_(conv.weight, a=LRELU_SLOPE, nonlinearity="leaky_relu")
                nn.init.zeros_(conv.bias)
            nn.init.normal_(block.torgb.weight, std=1.0 / math.sqrt(block.torgb.in_channels))
            nn.init.zeros_(block.torgb.bias)

    def forward(self, image_raw: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        size = (self.mid_resolution, self.mid_resolution)
        x = F.interpolate(features, size=size, mode="bilinear", align_corners=False)  # [B, Cf, H/2, W/2]
        img = F.interpolate(image_raw, size=size, mode="bilinear", align_corners=False)  # [B, 3, H/2, W/2]
        fir = self.fir.to(x.dtype)
        x, img = self.block0(x, img, fir)  # [B, c0, H/2, W/2], [B, 3, H/2, W/2]
        _, img = self.block1(x, img, fir)  # [B, c1, H, W], [B, 3, H, W]
        return img
