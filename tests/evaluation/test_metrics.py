"""PSNR, SSIM and LPIPS against hand-computed values; LPIPS values named after the VGG that computed them."""

import math

import pytest
import torch
import torchvision

from export3d.evaluation.metrics import (
    LPIPSInfo,
    build_lpips,
    find_vgg16_weights,
    lpips_distance,
    lpips_info_of,
    psnr,
    ssim,
)
from export3d.evaluation.scoring import format_table
from export3d.training.losses import reconstruction_loss


def test_psnr_of_known_mse():
    a = torch.zeros(2, 3, 8, 8)
    b = torch.full_like(a, 0.2)  # 0.1 on the [0, 1] scale: MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(a, b), torch.full((2,), 20.0))
    b[1] = 1.0  # 0.5 on [0, 1]: MSE 0.25 -> 10 log10(4) dB
    torch.testing.assert_close(psnr(a, b)[1], torch.tensor(10 * math.log10(4)))


def test_ssim_identical_is_one_and_noise_lowers_it():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert (ssim(x, noisy) < 0.9).all()
    assert (ssim(x, -x) < ssim(x, noisy)).all()


def test_metric_shape_errors():
    with pytest.raises(ValueError, match="psnr: pred and target"):
        psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_lpips_fallback_identical_is_zero():
    model, info = build_lpips()
    assert not info.pretrained and "RANDOM" in info.describe()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    assert torch.allclose(lpips_distance(model, x, x), torch.zeros(2), atol=1e-6)
    assert (lpips_distance(model, x, x.flip(-1)) > 0).all()
    torch.manual_seed(123)  # the fallback network does not depend on (or advance) the caller's RNG
    state = torch.get_rng_state()
    again, _ = build_lpips()
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(lpips_distance(again, x, x.flip(-1)), lpips_distance(model, x, x.flip(-1)))


def test_lpips_loads_local_vgg_weights(tmp_path):
    vgg = torchvision.models.vgg16()  # random weights saved in torchvision's file layout
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    model, info = build_lpips(path)
    assert info.pretrained and info.source == str(path)
    assert lpips_info_of(model) is info and (info.metric_name, info.label) == ("lpips", "LPIPS")
    image = torch.zeros(1, 3, 64, 64)
    _, parts = reconstruction_loss(image, image[..., :16, :16], image.flip(-1) + 0.5, model)
    assert set(parts) == {"mse", "mse_raw", "lpips", "lpips_raw"}  # real VGG16 weights: the real LPIPS
    torch.testing.assert_close(model.net.slice3._modules["12"].weight, vgg.features[12].weight)
    with pytest.raises(FileNotFoundError, match="--vgg-weights: no file"):
        find_vgg16_weights(tmp_path / "missing.pth")


def test_random_vgg_values_are_not_called_lpips():
    model, info = build_lpips()
    assert lpips_info_of(model) is info and (info.metric_name, info.label) == ("lpips_random_vgg", "LPIPS(rand)")
    g = torch.Generator().manual_seed(2)
    image, target = (torch.rand(2, 3, 64, 64, generator=g) * 2 - 1 for _ in range(2))
    _, parts = reconstruction_loss(image, image[..., :16, :16], target, model)
    assert set(parts) == {"mse", "mse_raw", "lpips_random_vgg", "lpips_random_vgg_raw"}
    _, parts = reconstruction_loss(image, image[..., :16, :16], target, model, with_lpips=False)
    assert set(parts) == {"mse", "mse_raw"}
    with pytest.raises(ValueError, match="lpips_model: Identity was not built by build_lpips"):
        lpips_info_of(torch.nn.Identity())
    row = {"psnr": 20.0, "ssim": 0.5, "lpips_random_vgg": 0.125}
    table = format_table({"same_identity": {"model": row, "copy_source": row, "pairs": 2}, "cross_identity": None,
                          "lpips_network": {"pretrained": False, "source": "none"}}).splitlines()  # fmt: skip
    assert table[0].split() == ["PSNR", "SSIM", "LPIPS(rand)"] and table[2].split() == ["model", "20.00", "0.500",
                                                                                         "0.125"]  # fmt: skip
    assert LPIPSInfo(True, "vgg16.pth").metric_name == "lpips"
