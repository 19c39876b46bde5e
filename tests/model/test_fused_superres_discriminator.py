"""The super-resolution and the discriminator on EG3D's fused ops (upsample2d, downsample2d, bias_act, and the
transposed-conv upsampling of super-resolution block 1) compute what their plain-PyTorch forms did before (issue 25):
the same weights give the same outputs, input and weight gradients, and R1's double backward, with each kernel impl.

``_old_superres`` and ``_old_discriminator`` are the plain-PyTorch forwards of the two modules as they were, written
out here against the modules' unchanged parameters (the FIR as depthwise convolutions, ``F.leaky_relu`` with separate
gains, conv biases and weight scaling as before)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from export3d.cameras import orbit_camera
from export3d.kernels import setup_filter, upsample2d
from export3d.model import Export3D
from export3d.model.config import preset
from export3d.model.discriminator import Discriminator
from export3d.model.superres import SuperResolution, upsample_conv3x3

IMPLS = ("reference", "auto", "triton")  # on the CPU "auto" is the fused path on the ops' references
SLOPE, GAIN = 0.2, math.sqrt(2.0)


# ----------------------------------------------------------------------------------------------- the old forwards
def _fir() -> torch.Tensor:
    t = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(t, t)
    return k / k.sum()  # [4, 4]


def _old_up(x: torch.Tensor) -> torch.Tensor:
    C = x.shape[1]
    return F.conv_transpose2d(x, (_fir() * 4).expand(C, 1, 4, 4), stride=2, padding=1, groups=C)


def _old_down(x: torch.Tensor) -> torch.Tensor:
    C = x.shape[1]
    return F.conv2d(F.pad(x, (1, 1, 1, 1)), _fir().expand(C, 1, 4, 4), stride=2, groups=C)


def _old_superres(sr: SuperResolution, image_raw: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    size = (sr.mid_resolution, sr.mid_resolution)
    x = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
    img = F.interpolate(image_raw, size=size, mode="bilinear", align_corners=False)
    for block in (sr.block0, sr.block1):
        if block.up:
            x, img = _old_up(x), _old_up(img)
        x = F.leaky_relu(block.conv1(F.leaky_relu(block.conv0(x), SLOPE)), SLOPE)
        img = img + block.torgb(x)
    return img


def _old_conv(layer, x: torch.Tensor) -> torch.Tensor:
    if layer.down:
        x = _old_down(x)
    y = F.conv2d(x, layer.weight * layer.weight_gain, layer.bias, padding=layer.padding)
    return F.leaky_relu(y, SLOPE) * GAIN if layer.activate else y


def _old_linear(layer, x: torch.Tensor) -> torch.Tensor:
    y = F.linear(x, layer.weight * layer.weight_gain, layer.bias * layer.lr_multiplier)
    return F.leaky_relu(y, SLOPE) * GAIN if layer.activate else y


def _old_discriminator(D: Discriminator, image: torch.Tensor, image_raw: torch.Tensor,
                       camera: torch.Tensor) -> torch.Tensor:  # fmt: skip
    raw_up = F.interpolate(image_raw, size=image.shape[-2:], mode="bilinear", align_corners=False)
    x = _old_conv(D.from_rgb, torch.cat([image, raw_up], dim=1))
    for block in D.blocks:
        y = _old_conv(block.conv1, _old_conv(block.conv0, x))
        x = (_old_conv(block.skip, x) + y) * math.sqrt(0.5)
    x = _old_conv(D.epilogue_conv, D._minibatch_std(x))
    x = _old_linear(D.out, _old_linear(D.epilogue_fc, x.flatten(1)))
    cmap = _old_linear(D.mapping.embed, camera)
    cmap = cmap * (cmap.square().mean(dim=-1, keepdim=True) + 1e-8).rsqrt()
    for layer in D.mapping.layers:
        cmap = _old_linear(layer, cmap)
    return (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(D.cmap_dim)


# ----------------------------------------------------------------------------------------------- helpers
def _perturb(module: torch.nn.Module, seed: int = 5) -> None:
    """Non-zero biases everywhere (they start at zero), so that the bias paths are compared too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _grads(loss: torch.Tensor, tensors: list[torch.Tensor], retain: bool = False) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors, retain_graph=retain, allow_unused=True, materialize_grads=True))


def _close(got, want, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, i=i: f"{what} [{i}]: {m}")


# ----------------------------------------------------------------------------------------------- upsample + conv
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("hw", [(2, 2), (3, 5), (6, 4)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_upsample_conv3x3_is_upsample_then_conv(hw, impl):
    """The transposed-conv form with its recomputed border ring equals FIR-upsampling then a 'same' 3x3 conv,
    values and gradients, on the smallest images it takes (2 x 2: every pixel is in the border)."""
    g = torch.Generator().manual_seed(hw[0] * 10 + hw[1])
    x = torch.randn(2, 3, *hw, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=g, requires_grad=True)
    f = setup_filter([1, 3, 3, 1])
    want = F.conv2d(upsample2d(x, f, impl="reference"), w, padding=1)  # [2, 4, 2h, 2w]
    got = upsample_conv3x3(x, w, f, impl=impl)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    dy = torch.randn(want.shape, generator=g)
    _close(_grads((got * dy).sum(), [x, w]), _grads((want * dy).sum(), [x, w]), f"grads {impl}")


def test_upsample_conv3x3_rejects_what_it_does_not_fold():
    f = setup_filter([1, 3, 3, 1])
    with pytest.raises(ValueError, match=r"upsample_conv3x3: .*weight \(4, 3, 1, 1\)"):
        upsample_conv3x3(torch.zeros(1, 3, 4, 4), torch.zeros(4, 3, 1, 1), f)
    with pytest.raises(ValueError, match=r"at least 2 x 2 pixels.*x \(1, 3, 1, 4\)"):
        upsample_conv3x3(torch.zeros(1, 3, 1, 4), torch.zeros(4, 3, 3, 3), f)


# ----------------------------------------------------------------------------------------------- super-resolution
@pytest.mark.parametrize("impl", IMPLS)
def test_superres_matches_its_plain_pytorch_form(impl):
    torch.manual_seed(0)
    cfg = preset("tiny", image_size=32, superres={"channels": (8, 4)})  # narrow: the interpreter runs it in seconds
    sr = SuperResolution(cfg, kernel_impl=impl)
    _perturb(sr)
    g = torch.Generator().manual_seed(1)
    raw = (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1).requires_grad_(True)
    feats = torch.rand(2, cfg.render.feature_channels, 8, 8, generator=g).requires_grad_(True)
    got, want = sr(raw, feats), _old_superres(sr, raw, feats)
    assert got.shape == (2, 3, 32, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    dy = torch.randn(want.shape, generator=g)
    leaves = [raw, feats, *sr.parameters()]
    _close(_grads((got * dy).sum(), leaves), _grads((want * dy).sum(), leaves), f"superres {impl}")


def test_superres_and_discriminator_follow_the_models_kernel_impl():
    model = Export3D.from_preset("tiny", image_size=32, impl="reference")
    assert model.superres.kernel_impl == "reference"
    model.set_impl("fast", kernel_impl="triton")
    assert model.superres.kernel_impl == "triton"
    assert Discriminator(preset("tiny", image_size=32)).kernel_impl == "auto"
    assert Discriminator(preset("tiny", image_size=32, impl="reference")).kernel_impl == "reference"
    assert Discriminator(preset("tiny", image_size=32, kernel_impl="triton")).kernel_impl == "triton"


def test_parameter_counts_are_unchanged():
    """Same parameters as before the swap (counted at commit 1182581), so old checkpoints load."""
    torch.manual_seed(0)
    model, D = Export3D.from_preset("paper"), Discriminator.from_preset("paper")
    assert sum(p.numel() for p in model.parameters()) == 109_623_633
    assert sum(p.numel() for p in model.superres.parameters()) == 295_878
    assert sum(p.numel() for p in D.parameters()) == 31_241_216
    assert not any(k.endswith("fir") for k in [*model.state_dict(), *D.state_dict()])  # the filter is not saved


# ----------------------------------------------------------------------------------------------- discriminator
# A narrow discriminator (32 px, 4 to 8 channels), so that the Triton interpreter runs R1 in seconds
SMALL_D = {"image_size": 32, "discriminator": {"channel_base": 128, "channel_max": 8, "cmap_dim": 16,
                                               "mapping_layers": 2}}  # fmt: skip


def _d_inputs(B: int = 2, H: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(B, 3, H, H, generator=g) * 2 - 1).requires_grad_(True)
    raw = (torch.rand(B, 3, H // 4, H // 4, generator=g) * 2 - 1).requires_grad_(True)
    camera = orbit_camera(torch.linspace(-0.5, 0.5, B), torch.zeros(B))
    return image, raw, camera


@pytest.mark.parametrize("impl", IMPLS)
def test_discriminator_matches_its_plain_pytorch_form_with_r1(impl):
    """Logits, the gradients of every parameter and input, and R1: the gradient of ``||d logits / d inputs||^2``
    (the double backward through conv, upfirdn2d and bias_act) with respect to every parameter."""
    torch.manual_seed(0)
    D = Discriminator(preset("tiny", kernel_impl=impl, **SMALL_D))
    _perturb(D)
    image, raw, camera = _d_inputs()
    got, want = D(image, raw, camera), _old_discriminator(D, image, raw, camera)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    leaves = [image, raw, *D.parameters()]
    got_grads = _grads(F.softplus(-got).sum(), leaves, retain=True)
    _close(got_grads, _grads(F.softplus(-want).sum(), leaves, retain=True), f"D {impl}")

    def r1(logits):
        grads = torch.autograd.grad(logits.sum(), [image, raw], create_graph=True)
        return sum(g.square().sum() for g in grads)

    params = list(D.parameters())
    _close(_grads(r1(got), params), _grads(r1(want), params), f"R1 {impl}", atol=1e-4)


def test_r1_through_bias_act_keeps_no_incoming_gradient():
    """lrelu's second derivative is zero, so R1's graph through bias_act keeps y (or x) and b but not the gradient
    that reached the activation (a fix in kernels/bias_act.py: it kept one copy per activation)."""
    from export3d.kernels import bias_act

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g, requires_grad=True)
    b = torch.randn(3, generator=g, requires_grad=True)
    v = torch.randn(2, 3, 4, 5, generator=g)  # becomes the incoming gradient dy
    kept = []
    y = bias_act(x, b, act="lrelu", impl="triton")
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        (dx,) = torch.autograd.grad(y, x, grad_outputs=v, create_graph=True)
    assert kept and not any(t.untyped_storage()._cdata == v.untyped_storage()._cdata for t in kept)
    assert any(t.untyped_storage()._cdata == y.untyped_storage()._cdata for t in kept)
    dx.square().sum().backward()  # the double backward still runs, and gives lrelu's zero second derivative to x
    torch.testing.assert_close(x.grad, torch.zeros_like(x))
