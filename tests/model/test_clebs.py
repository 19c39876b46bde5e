"""LeBS / CLeBS: orthonormal basis, InfoNCE, editing, freezing."""

import math

import pytest
import torch

from export3d.model.clebs import CLeBS, LeBS, infonce_loss, orthonormal_basis
from export3d.model.config import PRESETS, preset


@pytest.mark.parametrize("name", ["paper", "tiny"])
def test_basis_is_orthonormal_and_sign_fixed(name):
    torch.manual_seed(0)
    lebs = LeBS(PRESETS[name].lebs)
    V = lebs.basis()
    d, n = PRESETS[name].lebs.dim, PRESETS[name].lebs.n_basis
    assert V.shape == (d, n)
    torch.testing.assert_close(V.T @ V, torch.eye(n), atol=1e-5, rtol=0)
    # Sign fix: V^T W = R is upper triangular with a positive diagonal, and V is a pure function of W.
    R = V.T @ lebs.basis_weight.detach()
    assert (torch.diagonal(R) > 0).all()
    torch.testing.assert_close(torch.tril(R, -1), torch.zeros(n, n), atol=1e-4, rtol=0)
    torch.testing.assert_close(orthonormal_basis(lebs.basis_weight.detach().clone()), V.detach(), atol=0, rtol=0)


def test_basis_stays_orthonormal_after_optimiser_steps():
    torch.manual_seed(0)
    lebs = LeBS(PRESETS["tiny"].lebs)
    opt = torch.optim.Adam(lebs.parameters(), lr=0.05)
    before = lebs.basis().detach().clone()
    beta = torch.randn(16, 64)
    target = torch.randn(16, lebs.dim)
    for _ in range(3):
        opt.zero_grad()
        loss = (lebs(beta) - target).square().mean()
        loss.backward()
        assert lebs.basis_weight.grad is not None and lebs.basis_weight.grad.abs().sum() > 0
        opt.step()
    V = lebs.basis()
    assert not torch.allclose(V, before, atol=1e-3), "the basis did not move"
    torch.testing.assert_close(V.T @ V, torch.eye(lebs.n_basis), atol=1e-5, rtol=0)


def test_code_is_a_combination_of_the_basis_and_editing_scales_one_coefficient():
    torch.manual_seed(0)
    lebs = LeBS(PRESETS["tiny"].lebs)
    beta = torch.randn(3, 64)
    lam = lebs.coefficients(beta)  # [3, n]
    V = lebs.basis()
    torch.testing.assert_close(lebs(beta), lam @ V.T)
    edited = LeBS.scale_coefficients(lam, 2, -7.0)
    torch.testing.assert_close(edited[:, 2], -7.0 * lam[:, 2])
    keep = [i for i in range(lebs.n_basis) if i != 2]
    torch.testing.assert_close(edited[:, keep], lam[:, keep], atol=0, rtol=0)
    # Moving along v_2 only: the code changes by (-7 - 1) * lambda_2 * v_2.
    delta = lebs.from_coefficients(edited) - lebs.from_coefficients(lam)
    torch.testing.assert_close(delta, (-8.0 * lam[:, 2:3]) * V[:, 2], atol=1e-5, rtol=1e-5)
    with pytest.raises(IndexError, match="out of range"):
        LeBS.scale_coefficients(lam, lebs.n_basis, 2.0)


def test_infonce_matches_hand_computed_value():
    expr = torch.tensor([[2.0, 0.0]])  # [B=1, d=2]
    images = torch.tensor([[[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])  # cos = 1 (positive), 0, -1
    tau = 0.5
    want = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0) + math.exp(-2.0)))
    got = infonce_loss(expr, images, temperature=tau)
    assert abs(got.item() - want) < 1e-6
    want_literal = -math.log(math.exp(2.0) / (math.exp(0.0) + math.exp(-2.0)))  # paper Eq. 1 as printed
    assert abs(infonce_loss(expr, images, tau, include_positive=False).item() - want_literal) < 1e-6
    # Two anchors average; a scaled embedding does not change a cosine.
    expr2 = torch.cat([expr, torch.tensor([[0.0, 5.0]])])
    images2 = torch.cat([images, torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]])])
    second = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0 + math.exp(math.sqrt(0.5) / tau)))
    assert abs(infonce_loss(expr2, images2, tau).item() - (want + second) / 2) < 1e-6


def test_infonce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="image_embedding"):
        infonce_loss(torch.zeros(2, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="at least one negative"):
        infonce_loss(torch.zeros(2, 4), torch.zeros(2, 1, 4))


def test_clebs_losses_train_both_encoders_and_clip_loss_matches_explicit_negatives():
    torch.manual_seed(0)
    cfg = preset("tiny").lebs
    model = CLeBS(cfg)
    G, N = 2, 4
    images = torch.rand(G, N, 3, 32, 32) * 2 - 1
    beta = torch.randn(G, N, 64)
    loss = model.clip_loss(images, beta)
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    # The same loss, with anchor k's positive first and the clip's other frames as negatives.
    model.eval()  # BatchNorm statistics must not depend on how the batch is laid out
    with torch.no_grad():
        clip = model.clip_loss(images, beta)
        rows, betas = [], []
        for g in range(G):
            for k in range(N):
                rows.append(torch.stack([images[g, k]] + [images[g, j] for j in range(N) if j != k]))
                betas.append(beta[g, k])
        explicit = model(torch.stack(rows), torch.stack(betas))
    torch.testing.assert_close(clip, explicit, atol=1e-5, rtol=1e-5)
    assert abs(clip.item() - math.log(N)) < 1.0  # untrained: near chance level


def test_freeze_stops_gradients():
    lebs = LeBS(PRESETS["tiny"].lebs).freeze()
    assert lebs.frozen and not any(p.requires_grad for p in lebs.parameters())
    out = lebs(torch.randn(2, 64))
    assert not out.requires_grad
