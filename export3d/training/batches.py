"""What the training loop trains on: the train and test sources of a run, and a resumable stream of batches."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, default_collate

from export3d.data import ClipFolder, SyntheticClips, SyntheticConfig
from export3d.data.cache import CachedSource
from export3d.data.synthetic import stream_seed
from export3d.training.config import TrainConfig
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


def build_sources(cfg: TrainConfig, resolution: int):
    """(train source, test source): the synthetic generator or a validated clip folder."""
    if cfg.data == "synthetic":
        syn = SyntheticConfig(seed=cfg.seed, resolution=resolution, train_identities=cfg.train_identities,
                              test_identities=cfg.test_identities, clips_per_identity=cfg.clips_per_identity,
                              frames_per_clip=cfg.frames_per_clip, fps=cfg.fps,
                              expression_source=cfg.expression_source)  # fmt: skip
        train = SyntheticClips(syn, "train")
        if cfg.cache_frames > 0:
            train = CachedSource(train, max_frames=cfg.cache_frames)
            if sum(c.frames for c in train.clips) <= cfg.cache_frames:
                train.warm()  # every training frame is ray-cast once, up front, then served from memory
        return train, SyntheticClips(syn, "test")
    folder = Path(cfg.data)
    if not folder.is_dir():
        raise FileNotFoundError(f"--data: {folder} is not a folder (expected 'synthetic' or a clip-format folder)")
    train = ClipFolder(folder, split="train", resolution=resolution)
    if train.resolution != resolution:
        raise ValueError(f"--data: {folder} holds {train.resolution} px frames but preset {cfg.preset!r} "
                         f"needs {resolution} px")  # fmt: skip
    test = ClipFolder(folder, split="test", resolution=resolution)
    if not train.clips:
        raise ValueError(f"--data: {folder}/manifest.json lists no clips with split 'train'")
    return train, (test if test.clips else train)
