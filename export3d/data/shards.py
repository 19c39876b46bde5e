"""Shards: N machines preparing one dataset into one output folder on shared storage, each a stable 1/N of it.

``prepare --shard K/N`` (K = 0 ... N-1) takes the videos whose name hashes to K (:meth:`Shard.holds`: SHA-1 of the
video's path relative to its input folder, without the suffix, modulo N; not Python's ``hash``, which changes
from one process to the next). Every shard lists the same inputs, so the shards split the videos without talking
to each other, and a video's shard does not depend on the rest of the dataset. Each shard writes only its
videos' folders, and its part of the manifest, ``manifest.parts/shard-KKKKK-of-NNNNN.json`` (the records of its
videos, the settings, and whether the shard finished). The manifest is written from the parts by :func:`merge`:
``prepare --merge OUT``, or the shard that finds, after writing its own part, that every part is complete (two
shards finishing together may both write it: the same file, each write atomic).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from export3d.data.manifest import write_manifest
from export3d.utils.outputs import atomic_write_json

PARTS = "manifest.parts"
SAME_IN_EVERY_PART = ("split_by", "test_fraction", "size", "generator")


@dataclass(frozen=True)
class Shard:
    index: int  # K, from 0
    count: int  # N

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise ValueError(f"--shard K/N needs N >= 1 and 0 <= K < N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` -> the shard (ValueError naming the flag otherwise)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard must be K/N with integers 0 <= K < N (e.g. 3/16), got {text!r}") from None
        return cls(index, count)

    def holds(self, name: str) -> bool:
        """Whether the video of (relative) name ``name`` belongs to this shard."""
        digest = hashlib.sha1(name.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    @property
    def part_name(self) -> str:
        return f"shard-{self.index:05d}-of-{self.count:05d}.json"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def write_part(out: Path, shard: Shard, content: dict, complete: bool) -> Path:
    """Write this shard's part: ``content`` (``records``, ``skipped`` and :data:`SAME_IN_EVERY_PART`, plus
    ``info``) and whether the shard got through all its videos."""
    path = out / PARTS / shard.part_name
    atomic_write_json(path, {"shard": shard.index, "shards": shard.count, "complete": complete, **content})
    return path


def read_parts(out: Path, count: int | None = None) -> tuple[int, dict[int, dict]]:
    """(N, the parts of ``out`` by shard index) for ``count`` shards, or for the only N found when None."""
    folder = out / PARTS
    paths = sorted(folder.glob("shard-*-of-*.json")) if folder.is_dir() else []
    counts = {int(p.stem.rsplit("-", 1)[1]) for p in paths}
    if count is None:
        if not counts:
            raise ValueError(f"--merge: {folder} holds no manifest parts (prepare --shard K/N writes them)")
        if len(counts) > 1:
            raise ValueError(f"--merge: {folder} holds parts of runs with {sorted(counts)} shards; remove the parts "
                             "of the runs that are not current")  # fmt: skip
        count = counts.pop()
    parts = {}
    for path in paths:
        if int(path.stem.rsplit("-", 1)[1]) != count:
            continue
        try:
            part = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); rerun its shard to write it again") from err
        parts[int(part["shard"])] = part
    return count, parts


def merge(out: Path, count: int | None = None, strict: bool = True) -> dict | None:
    """Write ``out/manifest.json`` from the complete parts of ``count`` (default: the only N present) shards and
    return it. When a part is missing or incomplete: ``ValueError`` naming the shards, or None if not ``strict``."""
    count, parts = read_parts(out, count)
    missing = [k for k in range(count) if k not in parts]
    unfinished = [k for k, part in sorted(parts.items()) if not part.get("complete")]
    if missing or unfinished:
        if not strict:
            return None
        problems = [f"no part from shard(s) {_listed(missing)}" if missing else "",
                    f"shard(s) {_listed(unfinished)} did not finish (interrupted, or still running)" if unfinished
                    else ""]  # fmt: skip
        raise ValueError(f"--merge: {out / PARTS}: {'; '.join(p for p in problems if p)} of {count}: run them "
                         "(again) first")
    first = parts[0]
    for k, part in sorted(parts.items()):
        differs = [key for key in SAME_IN_EVERY_PART if part.get(key) != first.get(key)]
        if differs:
            raise ValueError(f"--merge: {out / PARTS / Shard(k, count).part_name} was made with other settings "
                             f"({', '.join(differs)}) than shard 0; prepare every shard with the same flags")
    records = sorted((r for part in parts.values() for r in part["records"]), key=lambda r: r["clip"])
    skipped = sorted((s for part in parts.values() for s in part["skipped"]), key=lambda s: s["clip"])
    info = next((p["info"] for p in parts.values() if p["info"]["expression"].get("names")), first["info"])
    generator = {**first["generator"], "shards": count}
    path = write_manifest(out, records, first["split_by"], first["test_fraction"], first["size"], skipped, info,
                          generator)  # fmt: skip
    return json.loads(path.read_text())


def _listed(indices: list[int], most: int = 10) -> str:
    shown = ", ".join(map(str, indices[:most]))
    return shown + (f" and {len(indices) - most} more" if len(indices) > most else "")
