"""Building blocks of the generator: conv blocks and ViT blocks.

The ViT blocks are SegFormer's (efficient self-attention with sequence reduction, Mix-FFN with a 3x3
depthwise conv); the conditional variant (EAdaLN-ViT, paper Fig. 3) replaces both pre-norms by
:class:`export3d.model.layers.EAdaLN`, whose zero-initialised modulation makes it a plain LayerNorm at
initialisation (DiT's adaLN-Zero without the residual gates, as paper Eq. 5 has scale and shift only).

Weights are initialised by the owning top module's ``initialize_weights()``, not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export3d.model.attention import attention
from export3d.model.layers import EAdaLN

LRELU_SLOPE = 0.2


# ----------------------------------------------------------------------------------------------- helpers
def tokens_to_map(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``[B, H*W, D]`` -> ``[B, D, H, W]``."""
    B, L, D = x.shape
    return x.transpose(1, 2).reshape(B, D, hw[0], hw[1])


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, D, H, W]`` -> ``[B, H*W, D]``."""
    return x.flatten(2).transpose(1, 2)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


# ----------------------------------------------------------------------------------------------- conv blocks
class ConvBlock(nn.Module):
    """Residual ``conv3x3 - lrelu - conv3x3 - lrelu`` with a 1x1 skip when the width changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, Cin, H, W]`` -> ``[B, Cout, H, W]``."""
        y = lrelu(self.conv1(lrelu(self.conv0(x))))
        return y + (x if self.skip is None else self.skip(x))


class DownStage(nn.Module):
    """``conv3x3 stride 2 - lrelu`` then a :class:`ConvBlock`: halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.down = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.block = ConvBlock(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, Cin, H, W]`` -> ``[B, Cout, H/2, W/2]``."""
        return self.block(lrelu(self.down(x)))


class OverlapPatchMerge(nn.Module):
    """SegFormer's overlap patch merging: conv k3 s2 p1 then LayerNorm over the tokens."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """x ``[B, Cin, H, W]`` -> tokens ``[B, H/2 * W/2, dim]`` and their grid ``(H/2, W/2)``."""
        y = self.proj(x)  # [B, dim, H/2, W/2]
        return self.norm(map_to_tokens(y)), (y.shape[2], y.shape[3])


# ----------------------------------------------------------------------------------------------- ViT blocks
class EfficientSelfAttention(nn.Module):
    """SegFormer efficient self-attention: keys/values from a ``sr_ratio``-strided conv of the tokens."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, attention_backend: str = "auto"):
        super().__init__()
        self.heads, self.sr_ratio, self.attention_backend = heads, sr_ratio, attention_backend
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """x ``[B, L, D]`` on the grid ``hw`` -> ``[B, L, D]``."""
        B, L, D = x.shape
        h, dh = self.heads, D // self.heads
        q = self.q(x).view(B, L, h, dh).transpose(1, 2)  # [B, h, L, dh]
        if self.sr_ratio > 1:
            kv_in = self.sr_norm(map_to_tokens(self.sr(tokens_to_map(x, hw))))  # [B, L / sr^2, D]
        else:
            kv_in = x
        kv = self.kv(kv_in).view(B, kv_in.shape[1], 2, h, dh).permute(2, 0, 3, 1, 4)  # [2, B, h, Lk, dh]
        out = attention(q, kv[0], kv[1], self.attention_backend)  # [B, h, L, dh]
        return self.proj(out.transpose(1, 2).reshape(B, L, D))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, sr_ratio={self.sr_ratio}, attention_backend={self.attention_backend!r}"


class CodeCrossAttention(nn.Module):
    """Cross-attention from the tokens to an expression code (the Table 4 ablation's conditioning).

    The paper replaces EAdaLN with "cross-attention blocks" without saying how the code ``[B, d]`` becomes
    keys and values. Here one Linear maps it to ``tokens`` tokens of the block's width ``[B, T, D]`` (each token
    its own projection of the whole code), which are layer-normalised and projected to keys and values; the
    queries come from the normalised image tokens. The output projection starts at zero, so at
    initialisation the block ignores the code, as an EAdaLN block with its zero-initialised modulation does.
    """

    def __init__(self, dim: int, cond_dim: int, heads: int, tokens: int, attention_backend: str = "auto"):
        super().__init__()
        self.heads, self.tokens, self.attention_backend = heads, tokens, attention_backend
        self.to_tokens = nn.Linear(cond_dim, tokens * dim)
        self.token_norm = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def initialize_weights(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, D]``, cond ``[B, cond_dim]`` -> ``[B, L, D]``."""
        B, L, D = x.shape
        h, dh, T = self.heads, D // self.heads, self.tokens
        ctx = self.token_norm(self.to_tokens(cond.to(x.dtype)).view(B, T, D))  # [B, T, D]
        q = self.q(x).view(B, L, h, dh).transpose(1, 2)  # [B, h, L, dh]
        kv = self.kv(ctx).view(B, T, 2, h, dh).permute(2, 0, 3, 1, 4)  # [2, B, h, T, dh]
        out = attention(q, kv[0], kv[1], self.attention_backend)  # [B, h, L, dh]
        return self.proj(out.transpose(1, 2).reshape(B, L, D))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, tokens={self.tokens}"


class MixFFN(nn.Module):
    """SegFormer Mix-FFN: ``fc1 - depthwise conv3x3 - GELU - fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """x ``[B, L, D]`` -> ``[B, L, D]``."""
        y = map_to_tokens(self.dwconv(tokens_to_map(self.fc1(x), hw)))  # [B, L, hidden]
        return self.fc2(F.gelu(y))


class ViTBlock(nn.Module):
    """Pre-norm SegFormer block; with ``cond_dim`` it is the EAdaLN-ViT block of paper Fig. 3.

    ``x = x + Attn(N1(x)); x = x + MixFFN(N2(x))`` with ``N = EAdaLN(., beta')`` when conditional and an
    affine LayerNorm otherwise (paper: "the same, with the exception of EAdaLN"). With
    ``conditioning="cross_attention"`` (paper Table 4) both norms are affine LayerNorms and
    ``x = x + CrossAttn(N(x), beta')`` runs between self-attention and the Mix-FFN.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        cond_dim: int | None = None,
        kernel_impl: str = "auto",
        attention_backend: str = "auto",
        conditioning: str = "eadaln",
        cross_attention_tokens: int = 4,
    ):
        super().__init__()
        self.conditional = cond_dim is not None
        self.cross = None
        if self.conditional and conditioning == "cross_attention":
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross = CodeCrossAttention(dim, cond_dim, heads, cross_attention_tokens, attention_backend)
        elif self.conditional:
            self.norm1 = EAdaLN(dim, cond_dim, impl=kernel_impl)
            self.norm2 = EAdaLN(dim, cond_dim, impl=kernel_impl)
        else:
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio, attention_backend)
        self.ffn = MixFFN(dim, dim * mlp_ratio)

    def _norm(self, norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return norm(x, cond) if isinstance(norm, EAdaLN) else norm(x)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], cond: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, L, D]``, cond ``[B, cond_dim]`` (conditional blocks only) -> ``[B, L, D]``."""
        if self.conditional and cond is None:
            raise ValueError("ViTBlock: this EAdaLN-ViT block needs cond (beta') of shape [B, cond_dim]")
        x = x + self.attn(self._norm(self.norm1, x, cond), hw)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), cond)
        return x + self.ffn(self._norm(self.norm2, x, cond), hw)
