"""What ``prepare`` is asked to do: its settings (:class:`PrepareConfig`) and its jobs, one per input video.

:func:`find_jobs` lists every video under the inputs (video files, or folders of frame images, searched
recursively; or, with ``--from-deep3d``, folders of images with Deep3DFaceRecon ``.mat`` files), each as a
:class:`Job`: its source, its name (the path relative to the input folder without the suffix: the folder its clips
are written to) and its identity, the name of the folder ``identity_level`` levels above it
(:func:`identity_of`). The list is sorted and the same on every machine that sees the same files, so shards
(:mod:`~export3d.data.shards`) can split it without talking to each other.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from export3d.data.frames import is_video
from export3d.data.manifest import PARTIAL, SPLITS_BY
from export3d.data.segments import CutConfig
from export3d.data.streaming import StreamConfig


@dataclass(frozen=True)
class PrepareConfig:
    """The settings that decide what a prepared dataset holds (recorded in its manifest)."""

    size: int = 256  # output crop side in pixels (the paper preset trains at 256, tiny at 64)
    min_frames: int = 16  # clips with fewer frames with a face are skipped (training draws 1 + 8 frames per clip)
    every: int = 1  # keep every n-th frame of a video
    max_frames: int | None = None  # stop reading a video after this many frames (None: all)
    smooth_sigma: float = 2.0  # Gaussian smoothing of the crop over time, in frames
    split_by: str = "identity"  # "identity": whole identities go to test; "clip"; "none": everything is train
    test_fraction: float = 0.1  # share of identities (or clips) in the test split, chosen by a hash of the name
    min_confidence: float = 0.5  # face detection / presence / tracking confidence of the landmarker
    identity_level: int = 1  # the folder level above a video that names its identity (1: its folder; 0: itself)
    max_gap: int = 12  # video frames in a row without a face that a clip bridges; a longer gap splits it
    cut_scene: float = 0.2  # colour-histogram change between consecutive frames that is a shot cut
    cut_jump: float = 1.0  # face move, in face sizes per frame, that is a shot cut
    cut_scale: float = 0.4  # face size change (|log ratio|) per frame that is a shot cut

    def __post_init__(self) -> None:
        checks = [(self.size >= 16, f"--size must be >= 16, got {self.size}"),
                  (self.min_frames >= 1, f"--min-frames must be >= 1, got {self.min_frames}"),
                  (self.every >= 1, f"--every must be >= 1, got {self.every}"),
                  (self.max_frames is None or self.max_frames >= 1, "--max-frames must be >= 1"),
                  (self.smooth_sigma >= 0, "--smooth-sigma must be >= 0"),
                  (self.split_by in SPLITS_BY, f"--split-by must be one of {SPLITS_BY}, got {self.split_by!r}"),
                  (0 <= self.test_fraction < 1, f"--test-fraction must be in [0, 1), got {self.test_fraction}"),
                  (0 < self.min_confidence < 1, "--min-confidence must be in (0, 1)"),
                  (self.identity_level >= 0, f"--identity-level must be >= 0, got {self.identity_level}")]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        CutConfig(self.max_gap, self.cut_scene, self.cut_jump, self.cut_scale)  # its checks name the flags

    @property
    def cuts(self) -> CutConfig:
        return CutConfig(self.max_gap, self.cut_scene, self.cut_jump, self.cut_scale)

    def stream(self) -> StreamConfig:
        """The settings of :func:`~export3d.data.streaming.stream_clips`."""
        return StreamConfig(self.size, self.every, self.max_frames, self.smooth_sigma, self.cuts)


@dataclass(frozen=True)
class Job:
    source: Path  # a video file, a frame folder or (--from-deep3d) a folder of images + .mat files
    name: str  # its folder in the output, relative to --out (the source's path below its input, no suffix)
    identity: str


def identity_of(rel: Path, name: str, level: int) -> str:
    """The identity of the video at ``rel`` (relative to its input folder; ``name``: its clip folder name): the name
    of the folder ``level`` levels above it (1: the folder it is in), or, for ``level`` 0 or a video given directly
    (no folder above it), its own name. Raises ``ValueError`` when it sits fewer than ``level`` folders deep."""
    folders = rel.parent.parts
    if level == 0 or not folders:
        return Path(name).name
    if level > len(folders):
        raise ValueError(f"--identity-level {level}: {rel} sits only {len(folders)} folder(s) deep in its input "
                         f"folder, so no folder {level} levels above it names its identity")  # fmt: skip
    return folders[-level]


def find_jobs(inputs: Sequence[str | Path], deep3d: bool = False, identity_level: int = 1) -> list[Job]:
    """Every video under the inputs, sorted by name; clip folder names must be unique and not nest."""
    jobs: list[Job] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise FileNotFoundError(f"input {item} does not exist (expected a video file or a folder)")
        if deep3d:
            found = [item] if any(item.glob("*.mat")) else sorted({p.parent for p in item.rglob("*.mat")})
        elif is_video(item):
            found = [item]
        else:
            found = sorted(p for p in item.rglob("*") if is_video(p))
        for path in found:
            rel = path.relative_to(item) if path != item else Path(path.name)
            name = rel.with_suffix("").as_posix() if path.is_file() else rel.as_posix()
            jobs.append(Job(path, name, identity_of(rel, name, identity_level)))
    if not jobs:
        raise FileNotFoundError(f"no {'Deep3DFaceRecon .mat files' if deep3d else 'videos'} under {list(inputs)}")
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.name in seen:
            raise ValueError(f"two inputs give the clip name {job.name!r}: {seen[job.name]} and {job.source}")
        seen[job.name] = job.source
    for job in jobs:  # a video's folder holds its clips: another video's folder may not lie inside it
        for parent in Path(job.name).parents:
            if parent.as_posix() in seen:
                raise ValueError(f"{job.source} would be written inside the folder of {seen[parent.as_posix()]} "
                                 f"({job.name!r} in {parent.as_posix()!r}); give them as separate inputs")
    return sorted(jobs, key=lambda j: j.name)


def remove_partial(out: Path, jobs: Sequence[Job]) -> int:
    """Remove what interrupted writers left of these jobs' folders (``<name>.tmp-<pid>``, ``<name>.old-<pid>``);
    returns how many. Only these jobs' siblings are looked at (one listing per folder), so shards running into
    the same output folder never touch each other's work."""
    wanted: dict[Path, set[str]] = {}
    for job in jobs:
        target = out / job.name
        wanted.setdefault(target.parent, set()).add(target.name)
    removed = 0
    for folder, names in wanted.items():
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            stem = next((entry.name.split(mark)[0] for mark in PARTIAL if mark in entry.name), None)
            if stem in names and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed
