"""The three training/evaluation uses of clip data as torch ``Dataset``s.

Each works on any ``ClipSource`` (``SyntheticClips`` or ``ClipFolder``) except ``CrossIdentityTriples``,
which needs ground truth and hence the synthetic generator. Items are dicts of tensors (shapes per
item below; the default ``collate_fn`` stacks them into a leading batch dimension). Sampling is a
pure function of ``(seed, epoch, index)``; call ``set_epoch`` to draw new pairs each epoch.

``ReconstructionPairs`` and ``ContrastiveGroups`` take an optional :class:`~export3d.data.augment.Augment`: one
draw per item, seeded by ``(seed, epoch, index)``, applied identically to all the item's frames.

Each class implements ``__getitems__``, which ``torch.utils.data.DataLoader`` calls with a whole
batch of indices, so a synthetic batch is rendered in one vectorised pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from export3d.data.augment import Augment
from export3d.data.source import ClipSource
from export3d.data.synthetic import FrameKey, SyntheticClips, generator

_PAIRS, _GROUPS, _TRIPLES, _AUGMENT = 11, 12, 13, 14  # sampling stream tags


def _scalar(value: int) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.int64)


class _ClipDataset(Dataset):
    def __init__(self, source: ClipSource, seed: int, augment: Augment | None = None):
        if len(source.clips) == 0:
            raise ValueError(f"{type(self).__name__}: the source has no clips")
        self.source = source
        self.seed = seed
        self.epoch = 0
        self.augment = augment if augment is not None and augment.active else None

    def _load(self, requests: list[tuple[int, list[int]]], indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """``source.load(requests)``, each request's frames augmented with one draw seeded by its item index."""
        data = self.source.load(requests)
        if self.augment is None:
            return data
        return [self.augment(d, self.augment.draw(self._rng(_AUGMENT, i))) for d, i in zip(data, indices, strict=True)]

    def set_epoch(self, epoch: int) -> None:
        """Draw different (but still deterministic) samples for each epoch."""
        self.epoch = int(epoch)

    def _rng(self, tag: int, index: int) -> torch.Generator:
        return generator(self.seed, tag, self.epoch, index)

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{type(self).__name__} index {index} out of range for length {len(self)}")
        return index % len(self)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError


class ReconstructionPairs(_ClipDataset):
    """Source and driving frames of one clip (stage 1 training, same-identity evaluation).

    One item per frame of the source (the driving frame); the source frame is drawn uniformly from
    the other frames of its clip. Item keys:
    "source" # [3, R, R], "driving" # [3, R, R] (images in [-1, 1]); "beta" # [64] and "camera" # [25]
    of the driving frame; "source_beta" # [64], "source_camera" # [25]; "identity", "clip",
    "source_frame", "driving_frame" (int64 scalars; "clip" indexes ``source.clips``); synthetic
    sources add "true_expression" # [6] of the driving frame.
    """

    def __init__(self, source: ClipSource, seed: int = 0, augment: Augment | None = None):
        super().__init__(source, seed, augment)
        self._starts = torch.cumsum(torch.tensor([0] + [c.frames for c in source.clips]), 0)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        requests, indices = [], [self._check_index(i) for i in indices]
        for index in indices:
            clip = int(torch.searchsorted(self._starts, index, right=True)) - 1
            drv = index - int(self._starts[clip])
            n = self.source.clips[clip].frames
            src = drv
            if n > 1:
                src = int(torch.randint(n - 1, (1,), generator=self._rng(_PAIRS, index)))
                src += src >= drv  # any frame but the driving one
            requests.append((clip, [src, drv]))
        items = []
        for (clip, (src, drv)), data in zip(requests, self._load(requests, indices), strict=True):
            item = {"source": data["image"][0], "driving": data["image"][1], "beta": data["beta"][1],
                    "camera": data["camera"][1], "source_beta": data["beta"][0], "source_camera": data["camera"][0],
                    "identity": _scalar(self.source.clips[clip].identity), "clip": _scalar(clip),
                    "source_frame": _scalar(src), "driving_frame": _scalar(drv)}
            if "true_expression" in data:
                item["true_expression"] = data["true_expression"][1]
            items.append(item)
        return items


class ContrastiveGroups(_ClipDataset):
    """K + 1 aligned (image, beta) pairs from one clip, for CLeBS pre-training.

    For every i, (images[i], beta[i]) is a positive pair and beta[j != i] are its K negatives; all
    frames share one appearance, so only expression can tell them apart. ``groups_per_clip`` items
    per clip. Item keys: "images" # [K+1, 3, R, R], "beta" # [K+1, 64], "camera" # [K+1, 25],
    "frames" # [K+1] int64 (ascending), "identity", "clip" (int64 scalars); synthetic sources add
    "true_expression" # [K+1, 6].
    """

    def __init__(self, source: ClipSource, k: int = 32, groups_per_clip: int = 1, seed: int = 0,
                 augment: Augment | None = None):
        super().__init__(source, seed, augment)
        if k < 1 or groups_per_clip < 1:
            raise ValueError(f"ContrastiveGroups: k and groups_per_clip must be >= 1, got {k}, {groups_per_clip}")
        short = [c for c in source.clips if c.frames < k + 1]
        if short:
            raise ValueError(f"ContrastiveGroups: k = {k} needs clips of at least {k + 1} frames, but clip "
                             f"{short[0].name!r} has {short[0].frames} ({len(short)} clips are too short)")
        self.k = k
        self.groups_per_clip = groups_per_clip

    def __len__(self) -> int:
        return len(self.source.clips) * self.groups_per_clip

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        requests, indices = [], [self._check_index(i) for i in indices]
        for index in indices:
            clip = index // self.groups_per_clip
            perm = torch.randperm(self.source.clips[clip].frames, generator=self._rng(_GROUPS, index))
            requests.append((clip, sorted(perm[: self.k + 1].tolist())))
        items = []
        for (clip, frames), data in zip(requests, self._load(requests, indices), strict=True):
            item = {"images": data["image"], "beta": data["beta"], "camera": data["camera"],
                    "frames": torch.tensor(frames, dtype=torch.int64),
                    "identity": _scalar(self.source.clips[clip].identity), "clip": _scalar(clip)}
            if "true_expression" in data:
                item["true_expression"] = data["true_expression"]
            items.append(item)
        return items


class CrossIdentityTriples(_ClipDataset):
    """Person A's frame, person B's driving frame, and the ground truth: A with B's expression from B's camera.

    Synthetic only (real clips have no cross-identity ground truth). Per item, A's clip and frame
    and a different identity B's clip and frame are drawn from ``(seed, epoch, index)``. Item keys:
    "source" # [3, R, R] (A), "driving" # [3, R, R] (B), "target" # [3, R, R] (A rendered with B's
    true expression from B's camera); "beta" # [64] and "camera" # [25] of B's frame (B's beta still
    carries B's appearance: the leak CLeBS removes); "true_expression" # [6] (B's); "source_beta",
    "source_camera" (A's); "identity" (A) and "driving_identity" (B) as int64 scalars.
    """

    def __init__(self, source: SyntheticClips, length: int | None = None, seed: int = 0):
        if not isinstance(source, SyntheticClips):
            raise TypeError(f"CrossIdentityTriples needs a SyntheticClips source (ground truth), got {type(source)}")
        super().__init__(source, seed)
        self.identities = sorted({c.identity for c in source.clips})
        if len(self.identities) < 2:
            raise ValueError(f"CrossIdentityTriples needs at least 2 identities, the source has {len(self.identities)}")
        self.length = sum(c.frames for c in source.clips) if length is None else int(length)

    def __len__(self) -> int:
        return self.length

    def _draw(self, index: int) -> tuple[FrameKey, FrameKey]:
        g = self._rng(_TRIPLES, index)
        cfg = self.source.config
        n = len(self.identities)
        a = int(torch.randint(n, (1,), generator=g))
        b = (a + 1 + int(torch.randint(n - 1, (1,), generator=g))) % n  # any identity but A
        clip_a, clip_b, frame_a, frame_b = (int(torch.randint(m, (1,), generator=g)) for m in (
            cfg.clips_per_identity, cfg.clips_per_identity, cfg.frames_per_clip, cfg.frames_per_clip))
        return FrameKey(self.identities[a], clip_a, frame_a), FrameKey(self.identities[b], clip_b, frame_b)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        heads = self.source.heads
        pairs = [self._draw(self._check_index(i)) for i in indices]
        keys = [k for pair in pairs for k in pair]  # A0, B0, A1, B1, ...
        expr, cams = heads.expression(keys), heads.camera(keys)
        betas = self.source.beta(keys, expr)  # the split's expression source (beta or landmarker blendshapes)
        # One render pass: every A frame, every B frame, and every A-with-B's-expression-from-B's-camera.
        ids = [k.identity for k in keys] + [a.identity for a, _ in pairs]
        images = heads.render(ids, torch.cat([expr, expr[1::2]]), torch.cat([cams, cams[1::2]]))
        n = len(pairs)
        items = []
        for i, (a, b) in enumerate(pairs):
            items.append({"source": images[2 * i], "driving": images[2 * i + 1], "target": images[2 * n + i],
                          "beta": betas[2 * i + 1], "camera": cams[2 * i + 1], "true_expression": expr[2 * i + 1],
                          "source_beta": betas[2 * i], "source_camera": cams[2 * i],
                          "identity": _scalar(a.identity), "driving_identity": _scalar(b.identity)})
        return items
