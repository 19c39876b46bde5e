"""The manifest of a prepared dataset: built from the ``clip.json`` of every finished clip, written atomically.

``prepare`` writes each clip folder whole (``clip.json`` last, inside the folder that is renamed into place), so
the finished clips are exactly the ``clip.json`` files outside temporary folders, and the manifest can always be
rebuilt from them: after every video, on a resumed run, or by hand. The split of a clip is a stable hash of its
identity (or clip) name, so adding videos moves nobody between train and test. The format is the one
:class:`~export3d.data.clips.ClipFolder` reads (see :mod:`~export3d.data.clips`).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from export3d.data.clips import FORMAT, VERSION
from export3d.utils.outputs import atomic_write_json

MANIFEST = "manifest.json"
SPLITS_BY = ("identity", "clip", "none")
PARTIAL = (".tmp-", ".old-")  # markers of folders a writer has not finished or is replacing (utils.outputs)


def split_of(key: str, fraction: float) -> str:
    """'test' for a stable share ``fraction`` of names (a hash of the name: adding videos moves nobody)."""
    return "test" if zlib.crc32(key.encode()) % 10_000 < fraction * 10_000 else "train"


def finished_records(out: Path) -> list[dict]:
    """The ``clip.json`` record of every complete clip under ``out``, sorted by clip name."""
    paths = (p for p in out.rglob("clip.json") if not any(mark in p.relative_to(out).as_posix() for mark in PARTIAL))
    return sorted((json.loads(p.read_text()) for p in paths), key=lambda r: r["clip"])


def write_manifest(out: Path, records: list[dict], split_by: str, test_fraction: float, size: int,
                   skipped: list[dict], info: dict, generator: dict) -> Path:  # fmt: skip
    """Write ``out/manifest.json`` listing ``records`` with their splits, the skipped videos and ``info``."""
    if split_by not in SPLITS_BY:
        raise ValueError(f"--split-by must be one of {SPLITS_BY}, got {split_by!r}")
    dims = {r["expression_dim"] for r in records}
    if len(dims) > 1:
        raise ValueError(f"{out}: clips with different expression sizes {sorted(dims)}; use separate --out folders")
    clips = []
    for r in records:
        key = r["identity"] if split_by == "identity" else r["clip"]
        clips.append({**r, "split": "train" if split_by == "none" else split_of(str(key), test_fraction)})
    meta = {"format": FORMAT, "version": VERSION, "resolution": size, "expression_dim": dims.pop() if dims else None,
            **info, "clips": clips, "skipped": skipped, "generator": generator}  # fmt: skip
    path = out / MANIFEST
    atomic_write_json(path, meta)
    return path


def read_manifest(out: Path) -> dict:
    """The manifest of an earlier run into ``out``, or ``{}`` when there is none."""
    path = out / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); remove it to rebuild it from the clips") from err
