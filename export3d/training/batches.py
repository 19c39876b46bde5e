"""What the training loop trains on: the sources of a run (each with its train and test split), and a resumable
stream of batches, mixed over the sources per batch when there are several."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, default_collate

from export3d.data import ClipFolder, SyntheticClips, SyntheticConfig
from export3d.data.augment import Augment, mirror_permutation
from export3d.data.cache import CachedSource
from export3d.data.synthetic import generator, stream_seed
from export3d.training.config import STAGES, TrainConfig
from export3d.utils.distributed import DistInfo


class BatchStream:
    """A resumable stream of batches: epoch e visits a permutation seeded by (seed, e); each rank takes
    an equal strided share. ``position = (epoch, batches done in it)`` is saved in checkpoints."""

    def __init__(self, dataset, batch_size: int, seed: int, dist: DistInfo, workers: int, position=(0, 0)):
        self.dataset, self.batch_size, self.seed, self.dist, self.workers = dataset, batch_size, seed, dist, workers
        self.position = tuple(position)
        per_rank = len(dataset) // dist.world_size
        if per_rank < batch_size:
            raise ValueError(f"{type(dataset).__name__} has {len(dataset)} items: too few for batch size "
                             f"{batch_size} on {dist.world_size} process(es)")  # fmt: skip
        self._iter = None

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(stream_seed(self.seed, 77, epoch))
        perm = torch.randperm(len(self.dataset), generator=g)
        usable = len(perm) // self.dist.world_size * self.dist.world_size
        share = perm[:usable][self.dist.rank :: self.dist.world_size].tolist()
        return [share[i : i + self.batch_size] for i in range(0, len(share) - self.batch_size + 1, self.batch_size)]

    def _generator(self):
        epoch, done = self.position
        while True:
            self.dataset.set_epoch(epoch)
            batches = self._epoch_batches(epoch)[done:]
            # Its own generator: creating a DataLoader iterator must not draw from the global RNG, or a resumed
            # run (which creates one more iterator) would diverge from an uninterrupted one.
            g = torch.Generator().manual_seed(stream_seed(self.seed, 78, epoch))
            loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                                collate_fn=default_collate, generator=g)  # fmt: skip
            for batch in loader:
                done += 1
                self.position = (epoch, done)
                yield batch
            epoch, done = epoch + 1, 0

    def next(self) -> dict[str, torch.Tensor]:
        if self._iter is None:
            self._iter = self._generator()
        return next(self._iter)


class MixedStream:
    """Batches drawn from several :class:`BatchStream` s, one source per batch: the batch of global step ``s`` comes
    from source k with probability ``weights_at(s)[k]``, drawn from a generator seeded by ``(seed, s)`` alone.

    Which source a step draws from is thus a pure function of the seed and the step, and each source's stream keeps
    its own position: ``position = (next step, (each source's position))`` is all a checkpoint needs for a resumed
    run to continue the same mixture."""

    def __init__(self, streams: list[BatchStream], weights_at, seed: int, first_step: int, positions=None):
        self.streams, self.weights_at, self.seed, self.step = streams, weights_at, seed, int(first_step)
        if positions is not None:
            self.step = int(positions[0])
            for stream, position in zip(streams, positions[1], strict=True):
                stream.position = tuple(position)

    @property
    def position(self) -> tuple:
        return self.step, tuple(s.position for s in self.streams)

    def choose(self, step: int) -> int:
        weights = self.weights_at(step)
        u = torch.rand((), generator=generator(self.seed, 79, step), dtype=torch.float64).item()
        total = 0.0
        for k, w in enumerate(weights):
            total += w
            if w > 0 and u < total:
                return k
        return max(k for k, w in enumerate(weights) if w > 0)  # u within rounding of 1

    def next(self) -> dict[str, torch.Tensor]:
        k = self.choose(self.step)
        batch = self.streams[k].next()
        self.step += 1
        return batch


def describe_data(cfg: TrainConfig) -> str:
    """``synthetic data`` or, for several sources, each with its weight (and its pre-training weights)."""
    if len(cfg.data) == 1:
        return f"{cfg.data[0]} data"
    parts = [f"{name} x {w:.2f}" for name, w in zip(cfg.data, cfg.weights_at(cfg.pretrain_steps), strict=True)]
    text = "data mixed per batch: " + ", ".join(parts)
    if cfg.pretrain_steps:
        text += f" (the first {cfg.pretrain_steps} steps: " + ", ".join(f"{w:.2f}" for w in cfg.weights_at(0)) + ")"
    return text


def batch_stream(cfg: TrainConfig, stage: str, data: list, batch_size: int, dist: DistInfo,
                 state: dict) -> BatchStream | MixedStream:  # fmt: skip
    """``stage``'s batches of ``data`` (one dataset per source) from the position in ``state``: a
    :class:`BatchStream` per source (the first source's seeds are those of a single-source run), mixed per batch by
    :class:`MixedStream` when there are several."""
    saved = state["positions"].get(stage)
    seed = cfg.seed + STAGES.index(stage)
    if len(data) == 1:
        return BatchStream(data[0], batch_size, seed, dist, cfg.workers, saved or (0, 0))
    streams = [BatchStream(d, batch_size, seed + 10_000 * k, dist, cfg.workers) for k, d in enumerate(data)]
    return MixedStream(streams, cfg.weights_at, cfg.seed, state["step"], saved)


class DataSource(NamedTuple):
    """One ``--data`` source: its name as given, its training and held-out splits, and its augmentation."""

    name: str
    train: object  # a ClipSource
    test: object  # a ClipSource: the held-out split (the training split when the folder has no test clips)
    augment: Augment | None  # real (clip-folder) sources with --aug-* on; None otherwise


def build_sources(cfg: TrainConfig, resolution: int) -> list[DataSource]:
    """Every ``--data`` source, validated, in the order given; their expression vectors must have one size."""
    sources = [_synthetic(cfg, resolution) if name == "synthetic" else _folder(cfg, name, resolution)
               for name in cfg.data]  # fmt: skip
    dims = {s.train.expression_dim for s in sources}
    if len(dims) > 1:
        sizes = ", ".join(f"{s.name} gives {s.train.expression_dim}" for s in sources)
        hint = ("; synthetic data gives the 52 blendshapes of real clips with --expression-source landmarker"
                if "synthetic" in cfg.data and cfg.expression_source == "beta" else "")  # fmt: skip
        raise ValueError(f"--data: the sources' expression vectors differ in size ({sizes}){hint}")
    return sources


def _synthetic(cfg: TrainConfig, resolution: int) -> DataSource:
    syn = SyntheticConfig(seed=cfg.seed, resolution=resolution, train_identities=cfg.train_identities,
                          test_identities=cfg.test_identities, clips_per_identity=cfg.clips_per_identity,
                          frames_per_clip=cfg.frames_per_clip, fps=cfg.fps,
                          expression_source=cfg.expression_source)  # fmt: skip
    train = SyntheticClips(syn, "train")
    if cfg.cache_frames > 0:
        train = CachedSource(train, max_frames=cfg.cache_frames)
        if sum(c.frames for c in train.clips) <= cfg.cache_frames:
            train.warm()  # every training frame is ray-cast once, up front, then served from memory
    return DataSource("synthetic", train, SyntheticClips(syn, "test"), None)


def expression_names(folder: Path) -> list[str] | None:
    """The names of a clip folder's expression components (``manifest.json`` "expression" -> "names"), if listed."""
    try:
        names = (json.loads((folder / "manifest.json").read_text()).get("expression") or {}).get("names")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return list(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def _folder(cfg: TrainConfig, name: str, resolution: int) -> DataSource:
    folder = Path(name)
    if not folder.is_dir():
        raise FileNotFoundError(f"--data: {folder} is not a folder (expected 'synthetic' or a clip-format folder)")
    train = ClipFolder(folder, split="train", resolution=resolution)
    if train.resolution != resolution:
        raise ValueError(f"--data: {folder} holds {train.resolution} px frames but preset {cfg.preset!r} "
                         f"needs {resolution} px")  # fmt: skip
    test = ClipFolder(folder, split="test", resolution=resolution)
    if not train.clips:
        raise ValueError(f"--data: {folder}/manifest.json lists no clips with split 'train'")
    return DataSource(name, train, test if test.clips else train, _augment(cfg, folder, train.expression_dim))


def _augment(cfg: TrainConfig, folder: Path, dim: int) -> Augment | None:
    if max(cfg.aug_flip, cfg.aug_hue, cfg.aug_colour, cfg.aug_scale) == 0:
        return None
    mirror = None
    if cfg.aug_flip > 0:
        names = expression_names(folder)
        if names is None or len(names) != dim:
            raise ValueError(f"--aug-flip: {folder}/manifest.json does not name the {dim} components of its expression "
                             "vector ('expression': {'names': [...]}, as export3d.data.prepare writes), so a flip "
                             "cannot mirror them; use --aug-flip 0 for this data")  # fmt: skip
        try:
            mirror = tuple(mirror_permutation(names))
        except ValueError as err:
            raise ValueError(f"--aug-flip: {folder}/manifest.json: {err}") from err
    return Augment(cfg.aug_flip, cfg.aug_hue, cfg.aug_colour, cfg.aug_scale, mirror)
