"""An in-memory frame cache in front of any ``ClipSource``.

Synthetic frames cost a few tens of milliseconds each to ray-cast on a CPU; a training run that draws
the same clips many times renders each frame once and reuses it. Frames are pure functions of their
key, so a cached frame is bit-identical to a freshly loaded one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from export3d.data.source import ClipSource


class CachedSource:
    """Wraps ``source`` (same ``clips`` and ``resolution``); ``load`` serves repeated frames from memory.

    ``max_frames`` bounds the cache (first come, first kept; later frames are loaded but not stored).
    """

    def __init__(self, source: ClipSource, max_frames: int = 100_000):
        self.source = source
        self.clips = source.clips
        self.resolution = source.resolution
        self.expression_dim = source.expression_dim
        self.max_frames = max_frames
        self._frames: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.hits = self.misses = 0

    def warm(self, batch_frames: int = 64, progress: bool = True) -> None:
        """Load every frame of every clip once (in batches of ``batch_frames``), with a progress bar."""
        todo = [(c, f) for c, clip in enumerate(self.clips) for f in range(clip.frames) if (c, f) not in self._frames]
        todo = todo[: max(0, self.max_frames - len(self._frames))]
        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="caching frames", unit="frame", mininterval=2.0)
        for i in range(0, len(todo), batch_frames):
            chunk: dict[int, list[int]] = {}
            for c, f in todo[i : i + batch_frames]:
                chunk.setdefault(c, []).append(f)
            self.load(list(chunk.items()))
            if bar is not None:
                bar.update(min(batch_frames, len(todo) - i))
        if bar is not None:
            bar.close()

    def __getattr__(self, name: str):  # e.g. ``heads`` / ``config`` of a SyntheticClips source
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def load(self, requests: Sequence[tuple[int, Sequence[int]]]) -> list[dict[str, torch.Tensor]]:
        missing: dict[int, list[int]] = {}
        for clip, frames in requests:
            for f in frames:
                if (clip, f) not in self._frames and f not in missing.get(clip, []):
                    missing.setdefault(clip, []).append(f)
        fresh: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        if missing:
            todo = list(missing.items())
            for (clip, frames), data in zip(todo, self.source.load(todo), strict=True):
                for i, f in enumerate(frames):
                    fresh[(clip, f)] = {k: v[i] for k, v in data.items()}
            for key, value in fresh.items():
                if len(self._frames) < self.max_frames:
                    self._frames[key] = value
        out = []
        for clip, frames in requests:
            rows = []
            for f in frames:
                key = (clip, f)
                if key in fresh:
                    self.misses += 1
                    rows.append(fresh[key])
                else:
                    self.hits += 1
                    rows.append(self._frames[key])
            out.append({k: torch.stack([r[k] for r in rows]) for k in rows[0]} if rows else {})
        return out
