"""Camera-conditioned StyleGAN2 ResNet discriminator on 6 channels (EG3D's dual discriminator, supp. 6.3).

Input: the final image ``[B, 3, H, W]`` concatenated with the raw image ``[B, 3, H/4, W/4]`` resized to
H (bilinear), i.e. 6 channels. Layers use StyleGAN2's equalised learning rate (weights N(0, 1) scaled
at run time by ``1/sqrt(fan_in)``), leaky ReLU with gain sqrt(2), residual blocks with FIR [1, 3, 3, 1]
down-sampling scaled by sqrt(1/2), a minibatch-stddev epilogue at 4 x 4, and a projection logit:
``logit = <out(x), cmap(c)> / sqrt(cmap_dim)`` with ``cmap`` from a mapping network of the 25-d camera.
Losses (non-saturating BCE, R1) belong to the training loop.

The FIR down-sampling is ``export3d.kernels.downsample2d`` and each layer's bias, activation and gains are one
``export3d.kernels.bias_act`` after a bias-free conv or matmul of the *unscaled* weight: the leaky ReLU is
positively homogeneous, so ``lrelu(g * (W x) + b) = g * lrelu(W x + b / g)`` with the run-time weight gain ``g``
(and the residual's sqrt(1/2)) folded into bias_act's gain. No scaled copy of a weight is made or kept for
backward, and conv + bias + activation + gain read and write each activation once (docs/kernels.md, "Fusions in
the super-resolution and the discriminator"). ``kernel_impl`` follows the model's switch (``ModelConfig.impl`` /
``kernel_impl``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from export3d.kernels import bias_act, downsample2d, setup_filter
from export3d.model.blocks import LRELU_SLOPE
from export3d.model.config import DiscriminatorConfig, ModelConfig, preset
from export3d.model.network import resolve_impl
from export3d.model.superres import FIR_TAPS

LRELU_GAIN = math.sqrt(2.0)


# ----------------------------------------------------------------------------------------------- helpers
def _bias_act(y: torch.Tensor, bias: torch.Tensor | None, scale: float, activate: bool, gain: float,
              impl: str) -> torch.Tensor:  # fmt: skip
    """``act(scale * y + bias) * gain`` (act: leaky ReLU with gain sqrt(2), or linear) as one bias_act over channel
    dim 1, with ``scale > 0`` moved out of the activation."""
    b = None if bias is None else (bias / scale).to(y.dtype)
    if activate:
        return bias_act(y, b, act="lrelu", alpha=LRELU_SLOPE, gain=LRELU_GAIN * scale * gain, impl=impl)
    return bias_act(y, b, act="linear", gain=scale * gain, impl=impl)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``x / sqrt(mean(x^2))`` over the last dim."""
    return x * (x.square().mean(dim=-1, keepdim=True) + eps).rsqrt()


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(g for g in range(1, min(n, cap) + 1) if n % g == 0)


# ----------------------------------------------------------------------------------------------- layers
class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate and an optional lr multiplier (StyleGAN2)."""

    def __init__(self, in_features: int, out_features: int, activate: bool, lr_multiplier: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.activate, self.lr_multiplier = activate, lr_multiplier
        self.weight_gain = lr_multiplier / math.sqrt(in_features)

    def forward(self, x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        """x ``[B, in]`` -> ``[B, out]``: ``act(x (g W)^T + m b)`` with g the weight gain and m the lr multiplier."""
        y = F.linear(x, self.weight)  # [B, out]
        return _bias_act(y, self.bias * self.lr_multiplier, self.weight_gain, self.activate, 1.0, impl)


class EqualConv2d(nn.Module):
    """Conv with equalised learning rate, 'same' padding, optional FIR down-sampling x2 before it, and an output
    gain ``out_gain`` (the residual's sqrt(1/2))."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, activate: bool, bias: bool = True,
                 down: bool = False, out_gain: float = 1.0):  # fmt: skip
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.activate, self.down, self.padding, self.out_gain = activate, down, kernel // 2, out_gain
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)

    def forward(self, x: torch.Tensor, fir: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        """x ``[B, Cin, H, W]`` -> ``[B, Cout, H', W']`` (H' = H/2 when ``down``)."""
        if self.down:
            x = downsample2d(x, fir, impl=impl)  # [B, Cin, H/2, W/2]
        if self.bias is None and not self.activate:  # the 1x1 skip: scaling its small weight beats a pass over y
            return F.conv2d(x, self.weight * (self.weight_gain * self.out_gain), padding=self.padding)
        y = F.conv2d(x, self.weight, padding=self.padding)
        return _bias_act(y, self.bias, self.weight_gain, self.activate, self.out_gain, impl)


# ----------------------------------------------------------------------------------------------- blocks
class DiscriminatorBlock(nn.Module):
    """ResNet block: conv3x3, conv3x3 with down x2; skip = down x2 + 1x1 without bias; sum * sqrt(1/2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activate=True)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, activate=True, down=True, out_gain=math.sqrt(0.5))
        self.skip = EqualConv2d(in_channels, out_channels, 1, activate=False, bias=False, down=True,
                                out_gain=math.sqrt(0.5))  # fmt: skip

    def forward(self, x: torch.Tensor, fir: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        """x ``[B, Cin, r, r]`` -> ``[B, Cout, r/2, r/2]``: ``(skip(x) + conv1(conv0(x))) * sqrt(1/2)``, the sqrt(1/2)
        folded into both branches."""
        y = self.conv1(self.conv0(x, fir, impl), fir, impl)
        return self.skip(x, fir, impl).add_(y)  # the skip conv's output is saved by nobody: added in place


class CameraMapping(nn.Module):
    """StyleGAN2-ADA MappingNetwork with z_dim = 0: embed(c) -> normalise -> ``layers`` FC + lrelu."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        dim = config.cmap_dim
        self.embed = EqualLinear(config.camera_dim, dim, activate=False)
        self.layers = nn.ModuleList(
            [EqualLinear(dim, dim, activate=True, lr_multiplier=config.mapping_lr_multiplier)
             for _ in range(config.mapping_layers)]
        )  # fmt: skip

    def forward(self, camera: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        """camera ``[B, 25]`` -> cmap ``[B, cmap_dim]``."""
        x = normalize_2nd_moment(self.embed(camera, impl))
        for layer in self.layers:
            x = layer(x, impl)
        return x


# ----------------------------------------------------------------------------------------------- top module
class Discriminator(nn.Module):
    """``forward(image [B, 3, H, W], image_raw [B, 3, H/4, W/4], camera [B, 25]) -> logits [B, 1]``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.discriminator
        self.image_size, self.raw_size = config.image_size, config.render_resolution
        self.mbstd_group, self.mbstd_channels, self.cmap_dim = d.mbstd_group, d.mbstd_channels, d.cmap_dim
        self.kernel_impl = resolve_impl(config.impl, config.kernel_impl)[0]  # the fused ops' impl, as the model's

        def width(res: int) -> int:
            return min(d.channel_base // res, d.channel_max)

        resolutions = [self.image_size // 2**i for i in range(int(math.log2(self.image_size)) - 1)]  # H, ..., 4
        self.from_rgb = EqualConv2d(6, width(self.image_size), 1, activate=True)
        self.blocks = nn.ModuleList([DiscriminatorBlock(width(r), width(r // 2)) for r in resolutions[:-1]])
        c4 = width(4)
        self.epilogue_conv = EqualConv2d(c4 + d.mbstd_channels, c4, 3, activate=True)
        self.epilogue_fc = EqualLinear(c4 * 16, c4, activate=True)
        self.out = EqualLinear(c4, d.cmap_dim, activate=False)
        self.mapping = CameraMapping(d)
        self.register_buffer("fir", setup_filter(FIR_TAPS), persistent=False)  # [4, 4] float32, sums to 1
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> Discriminator:
        """The discriminator of preset ``name`` (``overrides`` as in :func:`export3d.model.config.preset`)."""
        return cls(preset(name, **overrides))

    def initialize_weights(self) -> None:
        """StyleGAN2: weights N(0, 1 / lr_multiplier) (the run-time gain does the scaling), zero biases."""
        for m in self.modules():
            if isinstance(m, EqualLinear):
                nn.init.normal_(m.weight, std=1.0 / m.lr_multiplier)
                nn.init.zeros_(m.bias)
            elif isinstance(m, EqualConv2d):
                nn.init.normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def extra_repr(self) -> str:
        return f"kernel_impl={self.kernel_impl!r}"

    def _minibatch_std(self, x: torch.Tensor) -> torch.Tensor:
        """Append the std over groups of samples: ``[B, C, 4, 4]`` -> ``[B, C + F, 4, 4]``."""
        B, C, H, W = x.shape
        G, F_ = _largest_divisor_at_most(B, self.mbstd_group), self.mbstd_channels
        y = x.reshape(G, B // G, F_, C // F_, H, W).float()  # [G, n, F, c, H, W]
        y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # [n, F, c, H, W]
        y = y.mean(dim=(2, 3, 4)).reshape(-1, F_, 1, 1).repeat(G, 1, H, W).to(x.dtype)  # [B, F, H, W]
        return torch.cat([x, y], dim=1)

    def forward(self, image: torch.Tensor, image_raw: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        if image.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(f"Discriminator: image must be [B, 3, {self.image_size}, {self.image_size}], "
                             f"got {tuple(image.shape)}")  # fmt: skip
        if image_raw.shape != (image.shape[0], 3, self.raw_size, self.raw_size):
            raise ValueError(f"Discriminator: image_raw must be [B, 3, {self.raw_size}, {self.raw_size}] with "
                             f"B = {image.shape[0]}, got {tuple(image_raw.shape)}")  # fmt: skip
        if camera.shape != (image.shape[0], 25):
            raise ValueError(f"Discriminator: camera must be [B, 25] with B = {image.shape[0]}, "
                             f"got {tuple(camera.shape)}")
        raw_up = F.interpolate(image_raw, size=image.shape[-2:], mode="bilinear", align_corners=False)
        fir, impl = self.fir, self.kernel_impl
        x = self.from_rgb(torch.cat([image, raw_up], dim=1), fir, impl)  # [B, c(H), H, W]
        for block in self.blocks:
            x = block(x, fir, impl)  # halves the resolution down to 4 x 4
        x = self.epilogue_conv(self._minibatch_std(x), fir, impl)  # [B, c4, 4, 4]
        x = self.out(self.epilogue_fc(x.flatten(1), impl), impl)  # [B, cmap_dim]
        cmap = self.mapping(camera.to(x.dtype), impl)  # [B, cmap_dim]
        return (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)  # [B, 1]
