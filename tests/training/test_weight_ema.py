"""The generator weight EMA (EG3D's G_ema): half-life, ramp-up, frozen parameters and buffers."""

import math

import pytest
import torch
from torch import nn

from export3d.training.weight_ema import WeightEMA


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trained = nn.Linear(3, 2)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)
        self.register_buffer("stat", torch.zeros(2))


def test_half_life_and_rampup():
    ema = WeightEMA(_Net(), half_life_images=200.0, rampup=0.5)
    assert ema.beta(images_seen=8, batch_images=8) == pytest.approx(0.5 ** (8 / 4))  # ramp-up: 0.5 * 8 images
    assert ema.beta(images_seen=400, batch_images=8) == pytest.approx(0.5 ** (8 / 200))  # capped by the half-life
    assert WeightEMA(_Net(), 200.0, None).beta(8, 8) == pytest.approx(0.5 ** (8 / 200))


def test_average_halves_the_gap_every_half_life_and_copies_frozen_weights_and_buffers():
    torch.manual_seed(0)
    net = _Net()
    ema = WeightEMA(net, half_life_images=40.0, rampup=None)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net.stat.fill_(3.0)
    for step in range(1, 6):  # 5 steps of 8 images = one half-life towards a fixed target
        ema.update(net, images_seen=8 * step, batch_images=8)
    got = ema.module.state_dict()
    torch.testing.assert_close(got["trained.weight"], start["trained.weight"] + 0.5)
    torch.testing.assert_close(got["trained.bias"], start["trained.bias"] + 0.5)
    torch.testing.assert_close(got["frozen.weight"], net.frozen.weight)  # not averaged: copied
    torch.testing.assert_close(got["stat"], net.stat)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    ema.reset(net)
    torch.testing.assert_close(ema.module.state_dict()["trained.weight"], net.trained.weight.detach())


@pytest.mark.parametrize("half_life, rampup", [(0.0, None), (-1.0, 0.5), (10.0, 0.0)])
def test_bad_settings_name_the_argument(half_life, rampup):
    with pytest.raises(ValueError, match="half_life_images|rampup"):
        WeightEMA(_Net(), half_life, rampup)


def test_beta_is_a_probability():
    ema = WeightEMA(_Net(), 2500.0, 0.05)
    assert all(0.0 <= ema.beta(n, 8) < 1.0 for n in (8, 800, 80_000)) and not math.isnan(ema.beta(0, 8))
