"""The clip-source interface shared by the synthetic generator and the on-disk clip folders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch

BETA_DIM = 64
CAMERA_DIM = 25


class ClipInfo(NamedTuple):
    """One clip: a name (unique in its source), an integer identity, its frame count and split."""

    name: str
    identity: int
    frames: int
    split: str


class ClipSource(Protocol):
    """Anything that serves frames of clips: ``SyntheticClips`` and ``ClipFolder`` implement it.

    ``load`` takes a list of (clip index, frame indices) requests and returns, per request, a dict:
    ``"image"`` # [n, 3, R, R] in [-1, 1], ``"beta"`` # [n, E], ``"camera"`` # [n, 25] and, for
    synthetic data only, ``"true_expression"`` # [n, 6]. All requests are served in one call so a
    source can batch its work (the synthetic renderer traces them in one vectorised pass).
    """

    resolution: int
    expression_dim: int  # E, the width of "beta" (64 for 3DMM / synthetic data, 52 for MediaPipe blendshapes)
    clips: Sequence[ClipInfo]

    def load(self, requests: Sequence[tuple[int, Sequence[int]]]) -> list[dict[str, torch.Tensor]]: ...
