"""beta leaks identity like a real 3DMM fit; the true expression does not."""

import torch

from export3d.data import FrameKey, SyntheticConfig, SyntheticHeads

N_IDS = 12


def _probe_accuracy(train_x, train_y, test_x, test_y) -> float:
    """Ridge least-squares linear classifier on one-hot targets; accuracy on held-out rows."""
    def design(x):
        return torch.cat([x, torch.ones(len(x), 1)], 1).double()

    a = design(train_x)
    targets = torch.nn.functional.one_hot(train_y, N_IDS).double()
    w = torch.linalg.solve(a.T @ a + 1e-3 * torch.eye(a.shape[1], dtype=torch.float64), a.T @ targets)
    return (design(test_x) @ w).argmax(1).eq(test_y).double().mean().item()


def test_linear_probe_finds_identity_in_beta_but_not_in_true_expression():
    heads = SyntheticHeads(SyntheticConfig())
    frames = range(0, 64, 2)
    # Fit on clip 0 of every identity, test on clip 1: held-out frames with different expressions and poses.
    fit = [FrameKey(i, 0, f) for i in range(N_IDS) for f in frames]
    held = [FrameKey(i, 1, f) for i in range(N_IDS) for f in frames]
    y_fit = torch.tensor([k.identity for k in fit])
    y_held = torch.tensor([k.identity for k in held])
    beta_acc = _probe_accuracy(heads.beta(fit), y_fit, heads.beta(held), y_held)
    expr_acc = _probe_accuracy(heads.expression(fit), y_fit, heads.expression(held), y_held)
    print(f"identity probe accuracy: beta {beta_acc:.3f}, true expression {expr_acc:.3f}, chance {1 / N_IDS:.3f}")
    assert beta_acc > 0.9
    assert expr_acc < 0.25
