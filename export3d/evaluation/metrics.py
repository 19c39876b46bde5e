"""Image metrics and the LPIPS-VGG perceptual loss, for images in [-1, 1] of shape ``[B, 3, H, W]``.

LPIPS needs torchvision's ImageNet VGG16, which this project never downloads. :func:`build_lpips`
loads it from an explicit path or from the torch hub cache when present; otherwise it says so
loudly, once, and falls back to lpips' randomly initialised VGG (``pnet_rand=True``). The network
records which one ran (:func:`lpips_info_of`), and every table, JSON key and log entry takes its name from
:attr:`LPIPSInfo.metric_name` / :attr:`LPIPSInfo.label`: ``lpips`` only for the real network,
``lpips_random_vgg`` for the fallback, so numbers from the two are never confused.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

VGG16_FILENAME = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16 weights, as the torch hub cache names them


# ----------------------------------------------------------------------------------------------- pixel metrics
def _check_pair(pred: torch.Tensor, target: torch.Tensor, fn: str) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"{fn}: pred and target must both be [B, C, H, W] of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")  # fmt: skip


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB ``[B]`` for images in [-1, 1] (equivalently: on [0, 1] with peak 1)."""
    _check_pair(pred, target, "psnr")
    mse = ((pred.float() - target.float()) / 2).square().flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, device) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM ``[B]`` (Wang et al. 2004: Gaussian window 11 / sigma 1.5, K1 0.01, K2 0.03) on [0, 1].

    Images smaller than the window use a window of the image's smaller side (odd).
    """
    _check_pair(pred, target, "ssim")
    x, y = (pred.float() + 1) / 2, (target.float() + 1) / 2
    size = min(window, min(x.shape[-2:]) // 2 * 2 - 1) if min(x.shape[-2:]) < window else window
    g = _gaussian_window(max(size, 1), sigma, x.device)
    channels = x.shape[1]
    kh = g.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    kw = g.view(1, 1, 1, -1).expand(channels, 1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # valid-mode separable Gaussian
        return F.conv2d(F.conv2d(t, kh, groups=channels), kw, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


# ----------------------------------------------------------------------------------------------- LPIPS
@dataclass(frozen=True)
class LPIPSInfo:
    pretrained: bool  # True: ImageNet VGG16 weights were loaded; False: random VGG (pnet_rand)
    source: str  # the weights file used, or why there was none

    @property
    def metric_name(self) -> str:
        """The key its values are stored and logged under: ``lpips`` is reserved for the real LPIPS (ImageNet
        VGG16); the random-VGG fallback is another metric, not comparable to published LPIPS numbers."""
        return "lpips" if self.pretrained else "lpips_random_vgg"

    @property
    def label(self) -> str:
        """The column header of its values in printed tables."""
        return "LPIPS" if self.pretrained else "LPIPS(rand)"

    def describe(self) -> str:
        kind = "pretrained VGG16" if self.pretrained else "RANDOM VGG16 (pnet_rand=True)"
        return f"LPIPS-VGG with {kind}: {self.source}"


_warned_fallback = False


def find_vgg16_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The VGG16 weights to use: ``path`` if given (it must exist), else the torch hub cache's copy, else None."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"--vgg-weights: no file at {p} (expected torchvision's {VGG16_FILENAME})")
        return p
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME
    return cached if cached.is_file() else None


def build_lpips(vgg_weights: str | os.PathLike | None = None) -> tuple[nn.Module, LPIPSInfo]:
    """LPIPS-VGG (frozen, eval mode) with real VGG16 weights when available, else the loud random fallback."""
    import lpips  # heavy (torchvision); imported only when a loss or metric is built

    path = find_vgg16_weights(vgg_weights)
    # A fixed seed (without touching the caller's RNG): the random-VGG fallback is the same network in every
    # run, so training's metrics.json and `python -m export3d.evaluate` agree on the same checkpoint.
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)  # torchvision's deprecation notes about `pretrained=`
        torch.manual_seed(0)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)  # linear heads ship with lpips
    if path is not None:
        try:  # weights_only: a state_dict of tensors, never arbitrary objects
            state = torch.load(path, map_location="cpu", weights_only=True)
            for slice_ in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
                for name, layer in slice_.named_children():
                    if isinstance(layer, nn.Conv2d):
                        layer.weight.data.copy_(state[f"features.{name}.weight"])
                        layer.bias.data.copy_(state[f"features.{name}.bias"])
        except Exception as exc:  # noqa: BLE001 - torch.load and the copies raise many types for a wrong file
            raise ValueError(f"--vgg-weights: {path} is not torchvision's VGG16 state_dict ({VGG16_FILENAME}): "
                             f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
        info = LPIPSInfo(True, str(path))
    else:
        info = LPIPSInfo(False, f"no {VGG16_FILENAME} given (--vgg-weights) or in {torch.hub.get_dir()}/checkpoints")
        global _warned_fallback
        if not _warned_fallback:
            _warned_fallback = True
            msg = (f"WARNING: {info.describe()}. LPIPS values are NOT comparable to published numbers; "
                   "pass --vgg-weights PATH to use the real network.")  # fmt: skip
            print(msg, file=sys.stderr, flush=True)
    model.eval().requires_grad_(False)
    model.lpips_info = info  # travels with the network, so the losses and the scores name what they computed
    return model, info


def lpips_info_of(model: nn.Module) -> LPIPSInfo:
    """Which VGG the LPIPS network ``model`` (from :func:`build_lpips`) runs on; it decides the metric's name."""
    info = getattr(model, "lpips_info", None)
    if not isinstance(info, LPIPSInfo):
        raise ValueError(f"lpips_model: {type(model).__name__} was not built by build_lpips, so it is unknown "
                         "whether it holds the real VGG16 or the random fallback")  # fmt: skip
    return info


def lpips_distance(model: nn.Module, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS ``[B]`` for images in [-1, 1]."""
    _check_pair(pred, target, "lpips")
    return model(pred, target, normalize=False).flatten(1).mean(1)
