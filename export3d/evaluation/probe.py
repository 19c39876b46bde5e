"""Identity leak of an expression code: held-out accuracy of a linear identity probe (paper Sec. 3.1, Fig. 8).

A code that carries no appearance should not let a linear classifier tell the people apart: its
held-out accuracy should sit near chance (1 / number of identities). The 3DMM beta leaks identity (a
probe on it is far above chance); CLeBS's beta' = f_e(beta) is meant to remove that leak.

Two probes, both plain torch in float64 on standardised features (statistics of the fitting rows):

- ``"ridge"``: least squares on one-hot targets with a small ridge term, closed form; prediction = argmax.
- ``"logistic"``: multinomial logistic regression with L2 weight decay, fitted with L-BFGS.

The split must hold frames out, never identities: every identity appears in both the fitting and the
test rows (:func:`split_rows` fits on some clips and tests on others, or alternates frames when an
identity has a single clip).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from export3d.data import SyntheticClips

if TYPE_CHECKING:
    from export3d.model import Export3D

PROBES = ("ridge", "logistic")


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float  # held-out accuracy in [0, 1]
    chance: float  # 1 / number of identities (a uniform guess)
    identities: int
    fit_rows: int
    test_rows: int
    features: int  # width of the probed code
    method: str  # "ridge" | "logistic"

    def to_dict(self) -> dict:
        return asdict(self)


def _standardise(fit: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean, unit variance per feature (fit statistics); constant features become 0. [N, D] -> [N, D]."""
    mean, std = fit.mean(0), fit.std(0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return (fit - mean) / std, (test - mean) / std


def _design(x: torch.Tensor) -> torch.Tensor:
    """Append a bias column: [N, D] -> [N, D + 1]."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)


def _ridge_scores(x_fit, y_fit, x_test, classes: int, ridge: float) -> torch.Tensor:
    a = _design(x_fit)  # [N, D + 1]
    targets = F.one_hot(y_fit, classes).double()  # [N, K]
    gram = a.T @ a + ridge * a.shape[0] * torch.eye(a.shape[1], dtype=a.dtype)
    w = torch.linalg.solve(gram, a.T @ targets)  # [D + 1, K]
    return _design(x_test) @ w  # [M, K]


def _logistic_scores(x_fit, y_fit, x_test, classes: int, weight_decay: float, steps: int) -> torch.Tensor:
    w = torch.zeros(x_fit.shape[1] + 1, classes, dtype=torch.float64, requires_grad=True)
    a = _design(x_fit)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(a @ w, y_fit) + weight_decay * w[:-1].square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return (_design(x_test) @ w).detach()


def identity_probe(
    x_fit: torch.Tensor,  # [N, D] codes of the fitting rows
    y_fit: torch.Tensor,  # [N] identity labels (any integers)
    x_test: torch.Tensor,  # [M, D] codes of the held-out rows
    y_test: torch.Tensor,  # [M] identity labels, each also present in y_fit
    method: str = "ridge",
    ridge: float = 1e-3,
    weight_decay: float = 1e-3,
    steps: int = 200,
) -> ProbeResult:
    """Fit a linear identity classifier on (x_fit, y_fit) and score it on (x_test, y_test)."""
    if method not in PROBES:
        raise ValueError(f"identity_probe: method must be one of {PROBES}, got {method!r}")
    if x_fit.dim() != 2 or x_test.dim() != 2 or x_fit.shape[1] != x_test.shape[1]:
        raise ValueError(f"identity_probe: x_fit and x_test must be [N, D] and [M, D], got {tuple(x_fit.shape)} "
                         f"and {tuple(x_test.shape)}")  # fmt: skip
    if y_fit.shape != (x_fit.shape[0],) or y_test.shape != (x_test.shape[0],) or len(y_test) == 0:
        raise ValueError("identity_probe: need one label per row and at least one held-out row")
    labels, y_fit_idx = torch.unique(y_fit.long(), return_inverse=True)  # labels sorted
    missing = set(y_test.tolist()) - set(labels.tolist())
    if missing:
        raise ValueError(f"identity_probe: held-out identities {sorted(missing)[:5]} have no fitting rows")
    if len(labels) < 2:
        raise ValueError("identity_probe: need at least 2 identities")
    y_test_idx = torch.searchsorted(labels, y_test.long())
    fit, test = _standardise(x_fit.double(), x_test.double())
    if method == "ridge":
        scores = _ridge_scores(fit, y_fit_idx, test, len(labels), ridge)
    else:
        scores = _logistic_scores(fit, y_fit_idx, test, len(labels), weight_decay, steps)
    accuracy = scores.argmax(1).eq(y_test_idx).double().mean().item()
    return ProbeResult(accuracy, 1.0 / len(labels), len(labels), len(y_fit), len(y_test), x_fit.shape[1], method)


def split_rows(identity: torch.Tensor, clip: torch.Tensor, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks ``(fit [N], test [N])`` that hold out frames, never identities.

    An identity with several clips is fitted on all but its last clip and tested on the last (new
    expressions and poses); an identity with one clip alternates: even frames fit, odd frames test.
    """
    fit = torch.zeros(len(identity), dtype=torch.bool)
    for ident in torch.unique(identity):
        rows = identity == ident
        clips = torch.unique(clip[rows])
        fit |= rows & (clip != clips.max()) if len(clips) > 1 else rows & (frame % 2 == 0)
    return fit, ~fit


# ----------------------------------------------------------------------------------------------- identity leak
def expression_table(source) -> dict[str, torch.Tensor]:
    """Every frame's beta ``[N, 64]`` with its identity / clip / frame ``[N]`` (no image is read or rendered)."""
    betas, ids, clips, frames = [], [], [], []
    for index, clip in enumerate(source.clips):
        if isinstance(source, SyntheticClips):
            beta = source.beta([source.key(index, f) for f in range(clip.frames)])
        else:
            with np.load(source.root / clip.name / "params.npz") as params:
                beta = torch.from_numpy(params["expression"].astype(np.float32))
        betas.append(beta)
        ids.append(torch.full((clip.frames,), clip.identity))
        clips.append(torch.full((clip.frames,), index))
        frames.append(torch.arange(clip.frames))
    return {"beta": torch.cat(betas), "identity": torch.cat(ids), "clip": torch.cat(clips), "frame": torch.cat(frames)}


@torch.no_grad()
def identity_leak(model: Export3D, source, method: str = "ridge") -> dict:
    """Held-out identity-probe accuracy on beta and on beta' (fit on some clips/frames, test on others)."""
    table = expression_table(source)
    if len(torch.unique(table["identity"])) < 2:
        return {"not_run": "needs at least 2 test identities"}
    fit, test = split_rows(table["identity"], table["clip"], table["frame"])
    device = next(model.parameters()).device
    codes = {"beta": table["beta"], "beta_prime": model.encode_expression(table["beta"].to(device)).float().cpu()}
    y = table["identity"]
    out = {name: identity_probe(x[fit], y[fit], x[test], y[test], method).to_dict() for name, x in codes.items()}
    return out | {"chance": out["beta"]["chance"], "method": method,
                  "encoder": model.config.expression_encoder}  # fmt: skip
