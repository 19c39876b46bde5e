"""Model configuration: frozen dataclasses and the two presets, ``paper`` (256 px) and ``tiny`` (64 px).

Every model number of docs/design.md, "Numbers", is a field here, with where it comes from. Resolutions that the
paper ties to the image size are derived, not stored, so that one override (``image_size``) keeps the
model consistent: the tri-plane is ``H/2 x W/2`` (paper Eq. 4), the rendered raw image ``H/4 x W/4``
(paper Sec. 3.3), the ViT tokens ``H/16 x W/16`` (``H*W/2^8`` tokens, paper Sec. 3.2).

Usage::

    cfg = preset("tiny", image_size=32, render={"n_coarse": 8, "n_fine": 8})
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMPLS = ("reference", "fast")  # the whole-model switch (docs/design.md, "Dispatch")
EXPRESSION_ENCODERS = ("lebs", "direct")  # f_e = LeBS (paper) | "direct": beta itself conditions G (Table 3 ablation)
KERNEL_IMPLS = ("auto", "triton", "reference")  # export3d.kernels dispatch, see kernels/utils.py
# How the expression code enters the conditional ViT blocks: "eadaln" (paper) or "cross_attention" (Table 4 ablation)
CONDITIONINGS = ("eadaln", "cross_attention")


@dataclass(frozen=True)
class LeBSConfig:
    """Learned basis scaling f_e (paper Sec. 3.1, supp. 6.2) and the CLeBS image encoder f_I."""

    expression_dim: int = 64  # beta: Deep3DFaceRecon/BFM expression coefficients 80:144
    hidden: int = 256  # FC(64 -> 256) - act - FC(256 -> n)
    n_basis: int = 10  # n, number of basis vectors / coefficients lambda (paper: n = 10)
    dim: int = 256  # d = h / 4, width of beta' = V @ lambda (supp. 6.2)
    image_channels: tuple[int, ...] = (64, 128, 256, 512)  # SE-ResNet-18 stage widths of f_I
    image_blocks: tuple[int, ...] = (2, 2, 2, 2)  # SE-ResNet-18 basic blocks per stage
    se_reduction: int = 16  # squeeze-and-excitation bottleneck ratio (Hu et al.)
    temperature: float = 0.07  # InfoNCE tau (supp. 6.4.1)
    num_negatives: int = 32  # K negatives per positive, all from the same clip (supp. 6.4.1)


@dataclass(frozen=True)
class GeneratorConfig:
    """Hybrid tri-plane generator G(S, beta') (paper Sec. 3.2, Fig. 3, supp. 6.2).

    Fig. 12 of the paper (block counts, conv widths) is an image that is not in our copy of the text;
    the block counts and conv widths below are our choice, the rest is stated in the paper.
    """

    hidden: int = 1024  # h, token width of the EAdaLN-ViT and the ViT blocks (supp. 6.2)
    heads: int = 4  # attention heads in every ViT block (supp. 6.2)
    stem_channels: tuple[int, ...] = (64, 128, 256)  # stride-2 conv stem widths; 3 stages -> H/8, last = h/4
    low_blocks: int = 4  # EAdaLN-ViT blocks on the H/16 x W/16 tokens (our choice)
    low_sr_ratio: int = 2  # SegFormer sequence reduction of keys/values in the EAdaLN-ViT blocks
    mlp_ratio: int = 4  # Mix-FFN expansion (SegFormer)
    up_channels: tuple[int, int] = (256, 256)  # conv widths after the 1st and 2nd pixel-shuffle + low-pass (x2 each)
    hr_channels: int = 64  # high-resolution conv branch from S at H/2 (Live3DPortrait's E_high)
    high_in_channels: int = 128  # conv width at H/2 before the upper ViT (after concatenating the branch)
    high_hidden: int = 1024  # token width of the upper ViT (on H/4 x W/4 tokens; paper: 1024 everywhere)
    high_blocks: int = 1  # plain ViT blocks in the upper stage (our choice)
    high_sr_ratio: int = 4  # sequence reduction of the upper ViT (4096 tokens -> 256 keys at 256 px)
    out_channels: int = 128  # width of the final conv blocks before the 1x1 tri-plane head
    plane_channels: int = 32  # C of the tri-plane [3, C, H/2, W/2] (paper Eq. 4)
    ema_decay: float = 0.998  # delta of the tri-plane EMA (supp. Eq. 12)
    lowpass_taps: int = 5  # taps of the Gaussian low-pass after each pixel shuffle (sigma 1 output px)
    # The source is resampled into the xy plane's frame before the conv stem and the high-resolution branch:
    # a frontal image spans +-radius * 0.5 / focal = +-0.317 at the pivot (EG3D FFHQ camera: 2.7, 4.2647), the
    # planes +-box_warp / 2 = +-0.5, so the image shrinks by this factor (1.0: no resampling). Our choice.
    source_zoom: float = 0.633
    # conditioning="cross_attention" only (paper Table 4; the paper does not say how the code is tokenised): each
    # conditional block maps the code [B, d] by one Linear to this many key/value tokens of the block's width.
    cross_attention_tokens: int = 4


@dataclass(frozen=True)
class RenderConfig:
    """EG3D volume rendering (paper Sec. 3.3); rays per side are ``image_size // 4``."""

    n_coarse: int = 48  # stratified samples per ray (EG3D depth_resolution)
    n_fine: int = 48  # importance samples per ray (EG3D depth_resolution_importance)
    ray_start: float = 2.25  # near depth (EG3D FFHQ)
    ray_end: float = 3.3  # far depth (EG3D FFHQ)
    box_warp: float = 1.0  # the tri-plane spans [-box_warp/2, box_warp/2]^3
    axes: str = "xyz"  # plane projection mode of triplane_sample (docs/design.md, "Tri-planes")
    density_bias: float = -1.0  # EG3D softplus(sigma - 1)
    white_back: bool = False  # EG3D FFHQ renders without a white background
    decoder_hidden: int = 64  # decoder MLP: mean-of-planes C -> FC 64 -> softplus -> heads
    feature_channels: int = 32  # colour head width: the feature image fed to super-resolution; 0..2 = raw RGB


@dataclass(frozen=True)
class SuperResConfig:
    """EG3D's 4x super-resolution without style modulation (paper Sec. 3.3, supp. 6.2)."""

    channels: tuple[int, int] = (128, 64)  # conv widths of the block at H/2 and of the block at H


@dataclass(frozen=True)
class DiscriminatorConfig:
    """StyleGAN2 ResNet discriminator on 6 channels, camera-conditioned by projection (supp. 6.3)."""

    channel_base: int = 32768  # channels at resolution r: min(channel_base // r, channel_max) (StyleGAN2)
    channel_max: int = 512  # StyleGAN2 cap
    camera_dim: int = 25  # c: 16 cam2world + 9 intrinsics
    cmap_dim: int = 512  # width of the camera embedding used by the projection logit (StyleGAN2-ADA: channels at 4x4)
    mapping_layers: int = 8  # FC layers of the camera mapping network (StyleGAN2-ADA MappingNetwork default)
    mapping_lr_multiplier: float = 0.01  # equalised-lr multiplier of the mapping network (StyleGAN2-ADA)
    mbstd_group: int = 4  # minibatch-stddev group size
    mbstd_channels: int = 1  # minibatch-stddev features


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines an Export3D model. Build with :func:`preset`."""

    name: str = "paper"
    image_size: int = 256  # H = W of source, driving and output images (paper: 256)
    camera_dim: int = 25  # 16 cam2world (row-major, OpenCV axes) + 9 normalised intrinsics
    lebs: LeBSConfig = field(default_factory=LeBSConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    superres: SuperResConfig = field(default_factory=SuperResConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    impl: str = "fast"  # "reference": plain PyTorch everywhere (the oracle); "fast": fused ops + xformers
    kernel_impl: str | None = None  # force every fused op to "auto" | "triton" | "reference"; None follows impl
    compile: bool = False  # run forward through torch.compile
    # "lebs": beta' = f_e(beta) (paper); "direct": the 64-d beta itself is the EAdaLN condition ("Direct 3DMM")
    expression_encoder: str = "lebs"
    # "eadaln": the code modulates both pre-norms of each conditional ViT block (paper Eq. 5); "cross_attention":
    # plain LayerNorms, and a cross-attention sublayer to the code's tokens after self-attention (Table 4 ablation)
    conditioning: str = "eadaln"

    def __post_init__(self) -> None:
        g, r, lebs = self.generator, self.render, self.lebs
        H = self.image_size
        checks = [
            (self.impl in IMPLS, f"impl must be one of {IMPLS}, got {self.impl!r}"),
            (self.kernel_impl is None or self.kernel_impl in KERNEL_IMPLS,
             f"kernel_impl must be None or one of {KERNEL_IMPLS}, got {self.kernel_impl!r}"),
            (self.expression_encoder in EXPRESSION_ENCODERS,
             f"expression_encoder must be one of {EXPRESSION_ENCODERS}, got {self.expression_encoder!r}"),
            (self.conditioning in CONDITIONINGS,
             f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}"),
            (g.cross_attention_tokens >= 1,
             f"generator.cross_attention_tokens must be >= 1, got {g.cross_attention_tokens}"),
            (H >= 16 and H % 16 == 0, f"image_size must be a positive multiple of 16, got {H}"),
            (len(g.stem_channels) == 3, f"generator.stem_channels needs 3 stages (-> H/8), got {g.stem_channels}"),
            (g.hidden % 4 == 0 and g.stem_channels[-1] == g.hidden // 4,
             f"generator.stem_channels[-1] must be hidden / 4 = {g.hidden // 4} (paper: h/4 x H/8 x W/8)"),
            (g.hidden % g.heads == 0 and g.high_hidden % g.heads == 0, "generator widths must divide by heads"),
            (all(c % 4 == 0 for c in g.up_channels) and g.high_hidden % 4 == 0,
             "generator.up_channels and high_hidden must divide by 4 (pixel shuffle x2)"),
            ((H // 16) % g.low_sr_ratio == 0, f"token grid {H // 16} must divide by low_sr_ratio {g.low_sr_ratio}"),
            ((H // 4) % g.high_sr_ratio == 0, f"upper token grid {H // 4} must divide by high_sr_ratio"),
            (g.lowpass_taps % 2 == 1, f"generator.lowpass_taps must be odd, got {g.lowpass_taps}"),
            (0.0 < g.source_zoom <= 1.0, f"generator.source_zoom must be in (0, 1], got {g.source_zoom}"),
            (0.0 <= g.ema_decay < 1.0, f"generator.ema_decay must be in [0, 1), got {g.ema_decay}"),
            (r.n_coarse >= 3 and r.n_fine >= 1, "render needs n_coarse >= 3 and n_fine >= 1 (EG3D sample_pdf)"),
            (0 < r.ray_start < r.ray_end, f"render needs 0 < ray_start < ray_end, got {r.ray_start}, {r.ray_end}"),
            (r.feature_channels >= 3, "render.feature_channels must be >= 3 (channels 0..2 are the raw RGB)"),
            (lebs.n_basis <= lebs.dim, f"lebs.n_basis ({lebs.n_basis}) must be <= lebs.dim ({lebs.dim}) for QR"),
            (self.camera_dim == 25 and self.discriminator.camera_dim == 25, "cameras are 25-d (16 + 9)"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ModelConfig({self.name!r}): {message}")

    # derived resolutions -----------------------------------------------------------------------
    @property
    def plane_resolution(self) -> int:
        """Tri-plane side, H / 2 (paper Eq. 4: 128 at 256 px)."""
        return self.image_size // 2

    @property
    def render_resolution(self) -> int:
        """Rays per side and raw image side, H / 4 (paper Sec. 3.3: 64 x 64 rays at 256 px)."""
        return self.image_size // 4

    @property
    def token_resolution(self) -> int:
        """Side of the EAdaLN-ViT token grid, H / 16 (H*W / 2^8 tokens, paper Sec. 3.2)."""
        return self.image_size // 16

    @property
    def expression_dim(self) -> int:
        return self.lebs.expression_dim

    @property
    def code_dim(self) -> int:
        """Width of the generator's condition: d (beta' from LeBS), or 64 for ``expression_encoder="direct"``."""
        return self.lebs.dim if self.expression_encoder == "lebs" else self.lebs.expression_dim


PAPER = ModelConfig()

TINY = ModelConfig(
    name="tiny",
    image_size=64,
    lebs=LeBSConfig(hidden=64, dim=32, image_channels=(16, 32, 64, 128), image_blocks=(1, 1, 1, 1), se_reduction=8),
    generator=GeneratorConfig(
        hidden=128,
        stem_channels=(16, 32, 32),
        low_blocks=2,
        up_channels=(64, 64),
        hr_channels=32,  # the high-resolution branch carries the detail: 16 -> 32 with 64-wide convs after it gave
        high_in_channels=64,  # +0.4 / +0.2 dB held-out PSNR after 5 / 7 min of one-thread reconstruction (MSE only)
        high_hidden=128,
        high_blocks=1,
        high_sr_ratio=4,
        out_channels=64,
        plane_channels=16,
    ),
    render=RenderConfig(n_coarse=24, n_fine=24, decoder_hidden=32, feature_channels=16),
    superres=SuperResConfig(channels=(32, 16)),
    discriminator=DiscriminatorConfig(channel_base=2048, channel_max=128, cmap_dim=128, mapping_layers=2),
)

PRESETS: dict[str, ModelConfig] = {"paper": PAPER, "tiny": TINY}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The preset ``name`` with top-level fields replaced.

    A sub-config (``lebs``, ``generator``, ``render``, ``superres``, ``discriminator``) may be given as
    a dataclass instance, or as a mapping of its fields to replace (``render={"n_fine": 8}``).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[name]
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"preset({name!r}): unknown override(s) {unknown}; fields are {sorted(names)}")
    resolved = {}
    for key, value in overrides.items():
        current = getattr(base, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            value = dataclasses.replace(current, **value)
        resolved[key] = value
    return dataclasses.replace(base, **resolved)
