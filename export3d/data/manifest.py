"""The manifest of a prepared dataset, written from an in-memory index of the videos' records.

``prepare`` writes each video's folder whole: its clips (``000``, ``001``, ... each with ``clip.json``) and, last,
``video.json``, the video's record (its clips' records, the segments it skipped and what the face pipeline saw),
inside a temporary folder renamed into place (:func:`export3d.utils.outputs.replacing_folder`). A video is done
exactly when its ``video.json`` exists. A run keeps the records of its videos in a :class:`DatasetIndex`: those
done before are read once at the start (one small file per video), each new one is added as its worker reports
it, and the manifest is written from the index once, at the end of the run (or of an interrupted one), in time
linear in the number of clips: no folder is walked and no file reread per video.

The split of a clip is a stable hash of its identity (or clip) name (:func:`split_of`), so adding videos moves
nobody between train and test. The format is the one :class:`~export3d.data.clips.ClipFolder` reads (see
:mod:`~export3d.data.clips`).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from export3d.data.clips import FORMAT, VERSION
from export3d.utils.outputs import atomic_write_json

MANIFEST = "manifest.json"
VIDEO_RECORD = "video.json"
SPLITS_BY = ("identity", "clip", "none")
PARTIAL = (".tmp-", ".old-")  # markers of folders a writer has not finished or is replacing (utils.outputs)


def split_of(key: str, fraction: float) -> str:
    """'test' for a stable share ``fraction`` of names (a hash of the name: adding videos moves nobody)."""
    return "test" if zlib.crc32(key.encode()) % 10_000 < fraction * 10_000 else "train"


def read_video_record(out: Path, name: str) -> dict | None:
    """The record of the finished video ``name`` in ``out`` (its ``video.json``), or None when it is not done."""
    path = out / name / VIDEO_RECORD
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:  # written inside a folder renamed into place: only damage gets here
        raise ValueError(f"{path}: not valid JSON ({err}); remove {path.parent} to prepare the video again") from err
    if not isinstance(record, dict) or not isinstance(record.get("clips"), list):
        raise ValueError(f"{path}: not a video record (no 'clips' list); remove {path.parent} to prepare it again")
    return record


class DatasetIndex:
    """The records of a run's videos, in memory: what its manifest lists.

    ``add(record)`` a finished video (replacing an earlier record or failure of it), ``fail(entry)`` a video that
    gave no record (``{"source", "clip", "kind", "reason"}``); :meth:`clips` and :meth:`skipped` list them in
    the order of the videos' names.
    """

    def __init__(self) -> None:
        self.videos: dict[str, dict] = {}
        self.failures: dict[str, dict] = {}

    def add(self, record: dict) -> None:
        self.videos[record["video"]] = record
        self.failures.pop(record["video"], None)

    def fail(self, entry: dict) -> None:
        self.failures[entry["clip"]] = entry

    def clips(self) -> list[dict]:
        return [clip for name in sorted(self.videos) for clip in self.videos[name]["clips"]]

    def skipped(self) -> list[dict]:
        """Segments and videos that gave no clip: skipped (too few frames, no face) or failed, by video name."""
        entries = {name: list(record.get("skipped", [])) for name, record in self.videos.items()}
        for name, entry in self.failures.items():
            entries.setdefault(name, []).append(entry)
        return [entry for name in sorted(entries) for entry in entries[name]]

    def expression_names(self) -> list[str] | None:
        return next((r["expression_names"] for r in self.videos.values() if r.get("expression_names")), None)


def write_manifest(out: Path, records: list[dict], split_by: str, test_fraction: float, size: int,
                   skipped: list[dict], info: dict, generator: dict) -> Path:  # fmt: skip
    """Write ``out/manifest.json`` listing ``records`` with their splits, the skipped videos and ``info``."""
    path = out / MANIFEST
    atomic_write_json(path, manifest_dict(out, records, split_by, test_fraction, size, skipped, info, generator))
    return path


def manifest_dict(out: Path, records: list[dict], split_by: str, test_fraction: float, size: int, skipped: list[dict],
             info: dict, generator: dict) -> dict:  # fmt: skip
    """The manifest of :func:`write_manifest` as a dict (``out`` only names the dataset in errors)."""
    if split_by not in SPLITS_BY:
        raise ValueError(f"--split-by must be one of {SPLITS_BY}, got {split_by!r}")
    dims = {r["expression_dim"] for r in records}
    if len(dims) > 1:
        raise ValueError(f"{out}: clips with different expression sizes {sorted(dims)}; use separate --out folders")
    clips = []
    for r in records:
        key = r["identity"] if split_by == "identity" else r["clip"]
        clips.append({**r, "split": "train" if split_by == "none" else split_of(str(key), test_fraction)})
    return {"format": FORMAT, "version": VERSION, "resolution": size, "expression_dim": dims.pop() if dims else None,
            **info, "clips": clips, "skipped": skipped, "generator": generator}  # fmt: skip


def read_manifest(out: Path) -> dict:
    """The manifest of an earlier run into ``out``, or ``{}`` when there is none."""
    path = out / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); remove it to rebuild it from the clips") from err
