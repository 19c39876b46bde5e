"""Memorisation: does an output show the source's person, or one of the people the model was trained on?

A generator trained on few identities can learn to paint those identities instead of carrying the source's
appearance into the tri-plane (issue 28): its held-out outputs then look like a training person. For each held-out
same-identity output this module compares dlib's 128-d face descriptor (:class:`FaceFeatureExtractor`
``(images, descriptor=True)``, the descriptor behind CSIM) of the output with:

- the source frame's descriptor, and
- every training identity's descriptor: the mean of the descriptors of ``frames`` frames of that identity, spread
  evenly over its training clips (frames without a face left out; an identity with none is not in the bank).

An output *follows the source* when it is nearer (L2) the source than the nearest training identity.
``follows_source`` is the share of scored outputs that do. Outputs or sources without a face are counted and not
scored. As a reading of what the measure can give, the driving frame (the ground truth: the same person as the
source) is scored the same way on the same pairs (``driving_follows_source``). The comparison is not symmetric: an
identity's mean descriptor is less noisy than one frame's, which favours the training side, so the driving frames'
share is the ceiling to read a model's against.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from export3d.evaluation.scoring import EvalBatch, spread_indices

DEFAULT_FRAMES = 4
GRID_ROWS = 10  # pairs drawn in the grid, spread evenly over the evaluated pairs (so over the held-out clips)
GRID_COLUMNS = ("source", "driving", "output", "nearest training face")


@dataclass
class IdentityBank:
    """Mean descriptors of the training identities: ``descriptors [K, 128]``, a name and one face image each."""

    names: list[str]
    descriptors: np.ndarray  # [K, 128] float64
    images: torch.Tensor  # [K, 3, H, W]: one frame with a face of each identity (for the grid)
    frames: int  # frames asked per identity
    without_face: int = 0  # identities left out: no face in any of their frames

    def nearest(self, descriptor: np.ndarray) -> tuple[int, float]:
        """(index, L2 distance) of the training identity nearest ``descriptor``."""
        dist = np.linalg.norm(self.descriptors - descriptor[None], axis=1)
        k = int(np.argmin(dist))
        return k, float(dist[k])


def _identity_frames(source, frames: int) -> dict[int, list[tuple[int, int]]]:
    """``frames`` (clip, frame) pairs of each identity, spread evenly over all its clips' frames."""
    by_identity: dict[int, list[tuple[int, int]]] = {}
    for c, clip in enumerate(source.clips):
        by_identity.setdefault(clip.identity, []).append((c, clip.frames))
    out = {}
    for identity, clips in by_identity.items():
        flat = [(c, f) for c, n in clips for f in range(n)]
        out[identity] = [flat[i] for i in spread_indices(len(flat), frames)]
    return out


def identity_bank(sources: list[tuple[str, object]], extractor, frames: int = DEFAULT_FRAMES) -> IdentityBank:
    """The bank of every identity of ``sources`` ((label, training ClipSource) pairs), ``frames`` frames each."""
    names, descriptors, images, without = [], [], [], 0
    for label, source in sources:
        first_clip = {}
        for clip in source.clips:
            first_clip.setdefault(clip.identity, clip.name)
        for identity, keys in _identity_frames(source, frames).items():
            requests = [(c, [f]) for c, f in keys]
            pixels = torch.cat([d["image"] for d in source.load(requests)])
            found = [(i, x.descriptor) for i, x in enumerate(extractor(pixels, descriptor=True)) if x is not None]
            if not found:
                without += 1
                continue
            names.append(f"{label}:{first_clip[identity]}")
            descriptors.append(np.mean([d for _, d in found], axis=0))
            images.append(pixels[found[0][0]])
    if not names:
        raise ValueError("no training identity has a face the extractor finds")
    return IdentityBank(names, np.stack(descriptors), torch.stack(images), frames, without)


@dataclass
class MemorisationProbe:
    """Accumulates one held-out source's outputs (``update`` is :func:`scoring.evaluate`'s ``on_batch``)."""

    extractor: object
    bank: IdentityBank
    pairs: int = 0
    no_face_output: int = 0
    no_face_source: int = 0
    follows: list[bool] = field(default_factory=list)  # per scored output
    driving_follows: list[bool] = field(default_factory=list)  # per scored pair whose driving frame has a face
    margins: list[float] = field(default_factory=list)  # d(output, nearest training) - d(output, source)
    nearest: Counter = field(default_factory=Counter)  # training identity nearest each scored output
    rows: list[dict] = field(default_factory=list)  # every pair's images, distances and caption, for the grid

    def update(self, setting: str, batch: EvalBatch, predictions: dict[str, torch.Tensor]) -> None:
        if setting != "same_identity":
            return
        output = predictions["model"].detach().float().cpu()
        n = output.shape[0]
        feats = self.extractor(torch.cat([output, batch.source.float(), batch.target.float()]), descriptor=True)
        for i in range(n):
            out, src, drv = feats[i], feats[n + i], feats[2 * n + i]
            self.pairs += 1
            row = {"source": batch.source[i], "driving": batch.target[i], "output": output[i], "nearest": None,
                   "note": "no face in the source" if src is None else "no face in the output"}  # fmt: skip
            if src is not None and out is not None:
                k, d_train = self.bank.nearest(out.descriptor)
                d_source = float(np.linalg.norm(out.descriptor - src.descriptor))
                self.follows.append(d_source < d_train)
                self.margins.append(d_train - d_source)
                self.nearest[self.bank.names[k]] += 1
                if drv is not None:
                    self.driving_follows.append(
                        float(np.linalg.norm(drv.descriptor - src.descriptor)) < self.bank.nearest(drv.descriptor)[1])
                row.update(nearest=k, note=f"{'S' if d_source < d_train else 'T'} src {d_source:.2f} train "
                                           f"{d_train:.2f} {self.bank.names[k].split('/')[0][-22:]}")  # fmt: skip
            else:
                self.no_face_source += src is None
                self.no_face_output += src is not None and out is None
            self.rows.append(row)

    def result(self) -> dict:
        scored = len(self.follows)
        share = (lambda xs: float(np.mean(xs)) if xs else None)  # noqa: E731
        return {"follows_source": share(self.follows), "scored": scored, "pairs": self.pairs,
                "follow": int(sum(self.follows)), "no_face_output": self.no_face_output,
                "no_face_source": self.no_face_source, "driving_follows_source": share(self.driving_follows),
                "mean_margin": share(self.margins), "nearest_training": dict(self.nearest.most_common(5)),
                "training_identities": len(self.bank.names), "frames_per_identity": self.bank.frames,
                "identities_without_face": self.bank.without_face}  # fmt: skip


def memorisation_grid(probe: MemorisationProbe, path: str | Path) -> Path:
    """A PNG of ``GRID_ROWS`` held-out pairs spread evenly over those evaluated: source | driving | output | the
    nearest training identity's face, one row each, under a header naming the columns. Each row's caption says
    whether the output follows the source (S) or the training identity (T), with both descriptor distances and the
    identity, or that a face was missing."""
    from PIL import Image, ImageDraw

    from export3d.utils.images import to_uint8

    if not probe.rows:
        raise ValueError("--grid: no held-out pair was evaluated")
    rows = [probe.rows[i] for i in spread_indices(len(probe.rows), GRID_ROWS)]
    res, pad, head, caption = rows[0]["source"].shape[-1], 2, 14, 12
    width = max(len(GRID_COLUMNS) * (res + pad) + pad, 320)
    sheet = Image.new("RGB", (width, head + len(rows) * (res + caption + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(GRID_COLUMNS):
        draw.text((pad + c * (res + pad), 1), label.split()[0] if res < 96 else label, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        blank = torch.ones_like(row["source"])  # white where no training face is nearest (no face in the output)
        nearest = probe.bank.images[row["nearest"]] if row["nearest"] is not None else blank
        top = head + r * (res + caption + pad)
        images = torch.stack([x.float() for x in (row["source"], row["driving"], row["output"], nearest)])
        for c, px in enumerate(to_uint8(images)):
            sheet.paste(Image.fromarray(px), (pad + c * (res + pad), top))
        draw.text((pad, top + res), row["note"], fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


class Memorisation:
    """The measurement over several held-out sources: one extractor and identity bank, one probe per source.

    ``Memorisation.build(training_sources, frames)`` reads the bank; without the face tools (or without a face in
    the training frames) ``reason`` says why and every source's result reads ``{"not_run": reason}``."""

    def __init__(self, extractor=None, bank: IdentityBank | None = None, reason: str | None = None):
        self.extractor, self.bank, self.reason = extractor, bank, reason
        self.probes: dict[str, MemorisationProbe] = {}

    @classmethod
    def build(cls, training_sources: list[tuple[str, object]], frames: int = DEFAULT_FRAMES) -> Memorisation:
        from export3d.utils.extras import MissingExtraError

        try:
            from export3d.evaluation.face_features import FaceFeatureExtractor

            extractor = FaceFeatureExtractor()
        except (MissingExtraError, ImportError) as err:
            return cls(reason=str(err))
        try:
            return cls(extractor, identity_bank(training_sources, extractor, frames))
        except ValueError as err:
            extractor.close()
            return cls(reason=str(err))

    @classmethod
    def for_run(cls, meta: dict, names: list[str], resolution: int,
                frames: int = DEFAULT_FRAMES) -> Memorisation | None:  # fmt: skip
        """The bank of the training identities of the run behind checkpoint ``meta``, when some held-out source in
        ``names`` is a clip folder (None: not measured; ``frames`` 0 turns it off). Training data that can no longer
        be read gives a ``reason``, not an error."""
        from export3d.evaluation.loading import source_label, training_sources

        if frames == 0 or all(name == "synthetic" for name in names):
            return None
        try:
            train = training_sources(meta, resolution)
        except (OSError, ValueError) as err:
            return cls(reason=f"the run's training data cannot be read ({err})")
        return cls.build([(source_label(n), s) for n, s in train], frames)

    def hook(self, name: str):
        """The ``on_batch`` of held-out source ``name`` (None when not measured)."""
        if self.bank is None:
            return None
        self.probes[name] = MemorisationProbe(self.extractor, self.bank)
        return self.probes[name].update

    def result(self, name: str) -> dict:
        probe = self.probes.get(name)
        return probe.result() if probe is not None else {"not_run": self.reason or "not measured"}

    def close(self) -> None:
        if self.extractor is not None:
            self.extractor.close()
