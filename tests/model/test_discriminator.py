"""Camera-conditioned dual discriminator and super-resolution."""

import pytest
import torch
import torch.nn.functional as F

from export3d.cameras import orbit_camera
from export3d.model.config import preset
from export3d.model.discriminator import Discriminator
from export3d.model.superres import SuperResolution


def _batch(B=4, H=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(B, 3, H, H, generator=g) * 2 - 1
    raw = torch.rand(B, 3, H // 4, H // 4, generator=g) * 2 - 1
    camera = orbit_camera(torch.linspace(-0.5, 0.5, B), torch.zeros(B))
    return image, raw, camera


@pytest.mark.parametrize("name, size", [("tiny", 32), ("tiny", 64), ("paper", 256)])
def test_logits_shape_and_layout(name, size):
    torch.manual_seed(0)
    D = Discriminator.from_preset(name, image_size=size)
    assert D.from_rgb.weight.shape[1] == 6  # final image + raw image resized up
    assert len(D.blocks) == int(torch.log2(torch.tensor(size / 4)))  # H -> 4 by halving
    if name == "paper":
        assert D.from_rgb.weight.shape[0] == 128 and D.epilogue_conv.weight.shape[0] == 512
        return  # the shape check above is the point; a 256 px forward is slow on CPU
    image, raw, camera = _batch(B=3, H=size)  # B = 3: minibatch-stddev groups of 3
    logits = D(image, raw, camera)
    assert logits.shape == (3, 1) and torch.isfinite(logits).all()


def test_gradients_reach_every_parameter_and_the_inputs():
    torch.manual_seed(0)
    D = Discriminator.from_preset("tiny", image_size=32)
    image, raw, camera = _batch()
    image.requires_grad_(True)
    raw.requires_grad_(True)
    F.softplus(-D(image, raw, camera)).mean().backward()  # non-saturating loss on "reals"
    missing = [n for n, p in D.named_parameters() if p.grad is None or not (p.grad.abs().sum() > 0)]
    assert not missing, missing
    assert image.grad.abs().sum() > 0 and raw.grad.abs().sum() > 0  # R1 needs d logits / d image


def test_camera_and_raw_image_change_the_logit():
    torch.manual_seed(0)
    D = Discriminator.from_preset("tiny", image_size=32)
    image, raw, camera = _batch()
    with torch.no_grad():
        base = D(image, raw, camera)
        other_cam = D(image, raw, camera.flip(0))
        other_raw = D(image, raw.flip(0), camera)
    assert (base - other_cam).abs().max() > 1e-4
    assert (base - other_raw).abs().max() > 1e-4


def test_discriminator_rejects_bad_inputs():
    D = Discriminator.from_preset("tiny", image_size=32)
    image, raw, camera = _batch()
    with pytest.raises(ValueError, match="image must be"):
        D(image[..., :16, :16], raw, camera)
    with pytest.raises(ValueError, match="image_raw must be"):
        D(image, raw[..., :4, :4], camera)
    with pytest.raises(ValueError, match="camera must be"):
        D(image, raw, camera[:, :16])


def test_superres_output_and_skip_path():
    torch.manual_seed(0)
    cfg = preset("tiny")
    sr = SuperResolution(cfg)
    raw = torch.rand(2, 3, 16, 16) * 2 - 1
    feats = torch.rand(2, cfg.render.feature_channels, 16, 16)
    out = sr(raw, feats)
    assert out.shape == (2, 3, 64, 64)
    # With the toRGB layers zeroed the output is the raw image carried up the RGB skip path
    # (bilinear to H/2, then FIR x2): a constant raw image stays constant away from the border.
    with torch.no_grad():
        for block in (sr.block0, sr.block1):
            block.torgb.weight.zero_()
        flat = sr(torch.full_like(raw, 0.25), feats)
    torch.testing.assert_close(flat[..., 4:-4, 4:-4], torch.full_like(flat[..., 4:-4, 4:-4], 0.25))
