"""Training losses: reconstruction (MSE + LPIPS on raw and final images, plus the optional face terms of
:mod:`export3d.training.face_losses`) and the adversarial terms.

Every loss and logged part stays a tensor on the device: nothing here reads a value on the host, so a training step
never waits for the GPU (the loop reads the logged parts at its log intervals, export3d/training/loop.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export3d.evaluation.metrics import lpips_distance, lpips_info_of
from export3d.training.face_losses import FaceLoss


def resize_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of ``[B, 3, H, W]`` to ``size x size`` (D_raw = D at render resolution)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def reconstruction_loss(
    image: torch.Tensor,  # [B, 3, H, W] predicted
    image_raw: torch.Tensor,  # [B, 3, H/4, W/4] predicted raw render
    target: torch.Tensor,  # [B, 3, H, W] driving frame
    lpips_model: nn.Module,
    lpips_weight: float = 1.0,
    with_lpips: bool = True,
    face_loss: FaceLoss | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L_rec = MSE(raw, D_raw) + MSE(img, D) + w * (LPIPS(raw, D_raw) + LPIPS(img, D))`` -> (loss, parts), the parts
    detached 0-d tensors.

    ``with_lpips=False`` drops the two LPIPS terms (lazy LPIPS, ``TrainConfig.lpips_every``). The parts name
    the LPIPS terms after the network that computed them (``LPIPSInfo.metric_name``): ``lpips`` / ``lpips_raw``
    with ImageNet VGG16 weights, ``lpips_random_vgg`` / ``lpips_random_vgg_raw`` with the random fallback.
    ``face_loss`` (:class:`~export3d.training.face_losses.FaceLoss`, its weights inside) adds the face terms
    (landmarks, blendshapes, features; parts ``face_*``); None leaves them out (off, or not this step).
    """
    target_raw = resize_to(target, image_raw.shape[-1])
    mse_raw = F.mse_loss(image_raw.float(), target_raw.float())
    mse = F.mse_loss(image.float(), target.float())
    loss = mse_raw + mse
    parts = {"mse_raw": mse_raw.detach(), "mse": mse.detach()}
    if with_lpips:
        lp_raw = lpips_distance(lpips_model, image_raw.float(), target_raw.float()).mean()
        lp = lpips_distance(lpips_model, image.float(), target.float()).mean()
        loss = loss + lpips_weight * (lp_raw + lp)
        name = lpips_info_of(lpips_model).metric_name
        parts.update({f"{name}_raw": lp_raw.detach(), name: lp.detach()})
    if face_loss is not None:
        face, face_parts = face_loss(image, image_raw, target, target_raw)
        loss = loss + face
        parts.update(face_parts)
    return loss, parts


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss for the generator: ``softplus(-D(G(z)))``."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``softplus(D(fake)) + softplus(-D(real))`` (binary cross-entropy with logits)."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: list[torch.Tensor]) -> torch.Tensor:
    """``sum ||d D(x) / d x||^2`` over the real inputs (which must require grad), mean over the batch."""
    grads = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return sum(g.square().flatten(1).sum(1) for g in grads).mean()
