"""Super-resolution H/4 -> H (paper Sec. 3.3, supp. 6.2): EG3D's SuperresolutionHybrid4X without style modulation.

The feature image and the raw RGB are bilinearly resized to H/2; block 0 (two 3x3 convs at H/2, toRGB)
adds its RGB to the resized raw image; block 1 upsamples x2 with the [1, 3, 3, 1] FIR filter, runs two
3x3 convs at H, and adds its toRGB to the FIR-upsampled running image (StyleGAN2's skip architecture).
Plain convolutions replace the modulated ones because there is no style code (paper Sec. 3.3); there
is no noise input and no output squashing, so the output lives in the range of the targets ([-1, 1]).

The FIR resampling is ``export3d.kernels.upsample2d`` and every conv's bias + leaky ReLU is one
``export3d.kernels.bias_act``, both with the model's ``kernel_impl``. Outside ``kernel_impl="reference"``
block 1's "FIR-upsample, then 3x3 conv" runs as :func:`upsample_conv3x3`: a transposed conv at H/2 and a
FIR pass on its output, so the upsampled ``[B, c0, H, W]`` input never exists (docs/kernels.md, "Fusions in
the super-resolution and the discriminator").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from export3d.kernels import bias_act, setup_filter, upfirdn2d, upsample2d
from export3d.model.blocks import LRELU_SLOPE
from export3d.model.config import ModelConfig

FIR_TAPS = (1.0, 3.0, 3.0, 1.0)  # StyleGAN2 / EG3D's resample filter


# ----------------------------------------------------------------------------------------------- fused path
def _unfused(x: torch.Tensor, weight: torch.Tensor, f: torch.Tensor, impl: str) -> torch.Tensor:
    """``conv2d(upsample2d(x, f), weight, padding=1)``: x ``[N, Cin, h, w]`` -> ``[N, Cout, 2h, 2w]``."""
    return F.conv2d(upsample2d(x, f, impl=impl), weight, padding=1)


def _fold(x: torch.Tensor, weight: torch.Tensor, f: torch.Tensor, impl: str) -> torch.Tensor:
    """The conv first, as a transposed conv on x, then the FIR: x ``[N, Cin, h, w]`` -> ``[N, Cout, 2h, 2w]``.

    The conv on the zero-stuffed s (s[2i] = x[i]) is ``z[t] = sum_a w[a] s[t + a - 1]``: conv_transpose2d with the
    flipped, transposed weight gives z at t + 1 on ``[2h + 1, 2w + 1]``. upsample2d's FIR (gain 2 per axis) then
    reads z at o - 2 .. o + 1 for output o: padding 1 on each side gives the 2h x 2w image.
    """
    z = F.conv_transpose2d(x, weight.flip(2, 3).transpose(0, 1), stride=2)  # [N, Cout, 2h + 1, 2w + 1]
    return upfirdn2d(z, f, padding=1, gain=4, impl=impl)


# The border ring. The fold's conv reads the upsampled image FUx one pixel beyond the image, where the unfused conv
# reads its zero padding: the first row of y also gets w[:, :, 0, :] times the FIR's spill row FUx[-1, -1 .. 2w],
# the last row w[:, :, 2, :] times FUx[2h, -1 .. 2w], the first and last columns w[:, :, :, 0] and w[:, :, :, 2] times
# the spill columns FUx[0 .. 2h - 1, -1] and FUx[0 .. 2h - 1, 2w] (the corners belong to the rows). Each spill line
# comes from x's own border row or column alone; upfirdn2d makes it with upsample2d's padding (2 before, 1 after per
# axis) moved to keep only that line: (x0, x1, y0, y1) per side, for top, bottom, left, right.
_SPILL_PADDING = ((3, 2, 3, -1), (3, 2, 0, 2), (3, -1, 2, 1), (0, 2, 2, 1))


def _border_lines(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x ``[B, C, h, w]`` -> its first and last rows ``[B, C, 1, w]`` and first and last columns ``[B, C, h, 1]``."""
    return x[:, :, :1], x[:, :, -1:], x[..., :1], x[..., -1:]


def _spill_terms(lines: tuple[torch.Tensor, ...], weight: torch.Tensor, f: torch.Tensor, impl: str
                 ) -> list[torch.Tensor]:  # fmt: skip
    """What the fold adds to y's border ring beyond the unfused conv, from x's border lines: the top and bottom rows
    ``[B, Cout, 1, 2w]``, the left and right columns ``[B, Cout, 2h, 1]``."""
    kernel_lines = (weight[:, :, :1], weight[:, :, 2:], weight[..., :1], weight[..., 2:])  # [Cout, Cin, 1 | 3, 3 | 1]
    terms = []
    for i, (line, pad, k) in enumerate(zip(lines, _SPILL_PADDING, kernel_lines, strict=True)):
        spill = upfirdn2d(line, f, up=2, padding=list(pad), gain=4, impl=impl)  # [B, Cin, 1, 2w + 2] / [B, Cin, 2h, 1]
        if i >= 2:
            spill = F.pad(spill, (0, 0, 1, 1))  # the rows beyond the corners are the rows' business: zero here
        terms.append(F.conv2d(spill, k))
    return terms


def _subtract_ring(y: torch.Tensor, terms: list[torch.Tensor]) -> None:
    """In place: y's first row, last row, first column, last column minus ``terms`` (in that order)."""
    for view, term in zip(_border_lines(y), terms, strict=True):
        view -= term


class _UpsampleConv3x3(torch.autograd.Function):
    """:func:`upsample_conv3x3` with its backward written out: the fold's adjoint, and the ring's correction through
    x's border lines only, so neither pass touches a full-size tensor beyond the fold's own."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, f: torch.Tensor, impl: str) -> torch.Tensor:
        ctx.save_for_backward(x, weight, f)  # x is also the previous bias_act's output: no new memory
        ctx.impl = impl
        y = _fold(x, weight, f, impl)  # [B, Cout, 2h, 2w], with the FIR's spill in its border ring
        _subtract_ring(y, _spill_terms(_border_lines(x), weight.to(y.dtype), f, impl))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, f = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        # The fold's adjoint on all of dy: upfirdn2d with the flipped filter and the adjoint padding, then the
        # transposed conv's input and weight gradients (aten's own backward of conv_transpose2d).
        dz = upfirdn2d(dy, f, padding=2, flip_filter=True, gain=4, impl=ctx.impl)  # [B, Cout, 2h + 1, 2w + 1]
        wt = weight.flip(2, 3).transpose(0, 1).to(dz.dtype)  # [Cin, Cout, 3, 3]
        dx, dwt, _ = torch.ops.aten.convolution_backward(dz, x.to(dz.dtype), wt, None, [2, 2], [0, 0], [1, 1], True,
                                                         [0, 0], 1, [need_x, need_w, False])  # fmt: skip
        # Minus the spill terms' product with dy's ring, which enters and leaves through x's border lines.
        with torch.enable_grad():
            lines = [t.detach().to(dy.dtype).requires_grad_(need_x) for t in _border_lines(x)]
            w = weight.detach().to(dy.dtype).requires_grad_(need_w)
            terms = _spill_terms(tuple(lines), w, f, ctx.impl)
            leaves = (lines if need_x else []) + ([w] if need_w else [])
            grads = list(torch.autograd.grad(terms, leaves, [g.contiguous() for g in _border_lines(dy)]))
        if need_x:
            for view in _border_lines(dx):
                view -= grads.pop(0)
        dw = (dwt.transpose(0, 1).flip(2, 3) - grads.pop(0)).to(weight.dtype) if need_w else None
        return dx, dw, None, None


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, f: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """``conv2d(upsample2d(x, f), weight, padding=1)`` without the upsampled image: x ``[B, Cin, h, w]``, weight
    ``[Cout, Cin, 3, 3]``, f the ``[4, 4]`` FIR filter -> ``[B, Cout, 2h, 2w]``.

    The conv and the FIR filter commute, so the conv runs first as a stride-2 transposed conv on x (a quarter of
    the multiply-adds, on the zero-stuffed image) and the FIR filter follows on its ``Cout`` channels: EG3D's
    ``conv2d_resample`` for ``up=2``. That order also filters across the image border, where the unfused conv sees
    its zero padding instead of the FIR's spill: the one-pixel border ring differs. The spill's terms are subtracted
    there, computed from x's border rows and columns, forward and backward (:class:`_UpsampleConv3x3`), so the result
    and the gradients equal the unfused ones. Not differentiable twice.
    """
    h, w = x.shape[2:]
    if weight.shape[2:] != (3, 3) or f.shape != (4, 4) or h < 2 or w < 2:
        raise ValueError(f"upsample_conv3x3: needs a [Cout, Cin, 3, 3] weight, a [4, 4] filter and x of at least "
                         f"2 x 2 pixels, got weight {tuple(weight.shape)}, f {tuple(f.shape)}, x {tuple(x.shape)}")
    return _UpsampleConv3x3.apply(x, weight, f, impl)


# ----------------------------------------------------------------------------------------------- modules
class SRBlock(nn.Module):
    """Two 3x3 conv + leaky ReLU layers and a 1x1 toRGB; optionally upsamples its input x2 first."""

    def __init__(self, in_channels: int, out_channels: int, up: bool):
        super().__init__()
        self.up = up
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.torgb = nn.Conv2d(out_channels, 3, 1)

    def forward(self, x: torch.Tensor, img: torch.Tensor, fir: torch.Tensor, impl: str
                ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """x ``[B, Cin, h, w]``, img ``[B, 3, h, w]`` -> ``[B, Cout, h', w']``, ``[B, 3, h', w']``; h' = 2h if up."""
        if self.up:
            img = upsample2d(img, fir, impl=impl)  # [B, 3, 2h, 2w]
            if impl == "reference":  # the oracle: the upsampled x exists
                x = _unfused(x, self.conv0.weight, fir, impl)
            else:
                x = upsample_conv3x3(x, self.conv0.weight, fir, impl)
        else:
            x = F.conv2d(x, self.conv0.weight, padding=1)
        x = self._act(x, self.conv0.bias, impl)
        x = self._act(F.conv2d(x, self.conv1.weight, padding=1), self.conv1.bias, impl)
        return x, img + self.torgb(x)

    @staticmethod
    def _act(x: torch.Tensor, bias: torch.Tensor, impl: str) -> torch.Tensor:
        """The conv's bias and leaky ReLU (gain 1) in one pass."""
        return bias_act(x, bias.to(x.dtype), act="lrelu", alpha=LRELU_SLOPE, gain=1.0, impl=impl)


class SuperResolution(nn.Module):
    """``forward(image_raw [B, 3, H/4, W/4], features [B, Cf, H/4, W/4]) -> image [B, 3, H, W]``.

    ``kernel_impl`` ("auto" | "triton" | "reference") is the fused ops' impl (``Export3D.set_impl`` changes it).
    """

    def __init__(self, config: ModelConfig, kernel_impl: str = "auto"):
        super().__init__()
        c0, c1 = config.superres.channels
        self.mid_resolution = config.image_size // 2
        self.kernel_impl = kernel_impl
        self.block0 = SRBlock(config.render.feature_channels, c0, up=False)  # at H/2
        self.block1 = SRBlock(c0, c1, up=True)  # H/2 -> H
        self.register_buffer("fir", setup_filter(FIR_TAPS), persistent=False)  # [4, 4] float32, sums to 1
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
        x, img = self.block0(x, img, self.fir, self.kernel_impl)  # [B, c0, H/2, W/2], [B, 3, H/2, W/2]
        _, img = self.block1(x, img, self.fir, self.kernel_impl)  # [B, c1, H, W], [B, 3, H, W]
        return img

    def extra_repr(self) -> str:
        return f"kernel_impl={self.kernel_impl!r}"
