"""Clip folders written a frame at a time, so that a clip of any length costs the memory of one frame.

:class:`ClipWriter` writes one clip folder in the format of :mod:`~export3d.data.clips`: each frame's crop as a PNG
as soon as it comes, each frame's rows of the ``params.npz`` arrays appended to raw files beside them, and, when
the clip ends, ``params.npz`` assembled from those files (a zip of ``.npy`` entries, as ``numpy.savez`` writes it,
streamed rather than held) and ``clip.json``. :class:`VideoClipsWriter` is the sink of
:func:`~export3d.data.streaming.stream_clips`: it starts a clip folder per segment of the video, keeps the clips
with at least ``min_frames`` frames (named ``000``, ``001``, ... in the video's folder) and records the others as
skipped. Both write inside the video's temporary folder, which ``prepare`` renames into place only when the
whole video is done (:func:`export3d.utils.outputs.replacing_folder`).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

from export3d.data.streaming import ClipFrame

# the arrays of a prepared clip's params.npz, in this order: (row shape, dtype); expression's width is the data's
ARRAYS = {"expression": ((None,), np.float32), "camera": ((25,), np.float32), "frame_index": ((), np.int64),
          "landmarks": ((None, 2), np.float32), "crop": ((3,), np.float32)}  # fmt: skip


class RowFile:
    """Rows of one shape and dtype appended to a raw file; :meth:`write_npy` copies them into an ``.npy`` entry."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype = path, np.dtype(dtype)
        self.rows, self.shape = 0, None
        self._file = open(path, "wb")  # closed by write_npy or discard

    def append(self, row: np.ndarray) -> None:
        row = np.asarray(row, dtype=self.dtype)  # tobytes() writes C order (ascontiguousarray would make 0-d 1-d)
        if self.shape is None:
            self.shape = row.shape
        elif row.shape != self.shape:
            raise ValueError(f"{self.path}: row of shape {row.shape} after rows of shape {self.shape}")
        self._file.write(row.tobytes())
        self.rows += 1

    def write_npy(self, archive: zipfile.ZipFile, name: str) -> None:
        """The rows as ``name.npy`` (shape ``[rows, *row shape]``) in ``archive``; the raw file is removed."""
        self._file.close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, *(self.shape or ()))}  # fmt: skip
        with archive.open(f"{name}.npy", "w", force_zip64=True) as entry, open(self.path, "rb") as raw:
            np.lib.format.write_array_header_1_0(entry, header)
            shutil.copyfileobj(raw, entry, 1 << 20)
        self.path.unlink()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class ClipWriter:
    """One clip folder written frame by frame: ``add(crop, rows)`` per frame, then :meth:`finish` or :meth:`discard`."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True)
        self.frames = 0
        self._rows = {key: RowFile(folder / f".rows-{key}", dtype) for key, (_, dtype) in ARRAYS.items()}

    def add(self, crop: np.ndarray, rows: dict[str, np.ndarray]) -> None:
        from PIL import Image

        Image.fromarray(crop).save(self.folder / f"{self.frames:05d}.png", compress_level=1)  # as write_clip_files
        for key, row in rows.items():
            self._rows[key].append(row)
        self.frames += 1

    def width(self, key: str) -> int:
        """The length of the rows of array ``key`` (the expression's E), once a frame was added."""
        return int(self._rows[key].shape[0])

    def finish(self, record: dict) -> None:
        """Write ``params.npz`` (streamed from the row files) and ``clip.json``."""
        with zipfile.ZipFile(self.folder / "params.npz", "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            for key, rows in self._rows.items():
                rows.write_npy(z, key)
        (self.folder / "clip.json").write_text(json.dumps(record, indent=1))

    def discard(self) -> None:
        for rows in self._rows.values():
            rows.discard()
        shutil.rmtree(self.folder)


class VideoClipsWriter:
    """The clips of one video, written into ``folder`` (the video's temporary folder) as the stream gives them.

    ``video``: the fields every clip record of the video shares (``video``, ``identity``, ``source``);
    ``min_frames``: shorter segments are removed and listed in ``skipped``; ``every``: the video's frames read,
    for counting the frames without a face inside a clip. ``clips`` lists the records of the clips kept.
    """

    def __init__(self, folder: Path, video: dict, min_frames: int, every: int):
        self.folder, self.video, self.min_frames, self.every = folder, video, min_frames, every
        self.clips: list[dict] = []
        self.skipped: list[dict] = []
        self._writer: ClipWriter | None = None
        self._segments = 0
        self._stats: dict = {}

    def begin(self, reason: str) -> None:
        self._writer = ClipWriter(self.folder / f".segment-{self._segments}")
        self._segments += 1
        self._stats = {"starts_at": reason, "first": None, "last": None, "detections": 0, "errors": [], "sides": []}

    def frame(self, frame: ClipFrame) -> None:
        stats = self._stats
        rows = {"expression": frame.expression, "camera": frame.camera, "frame_index": np.int64(frame.index),
                "landmarks": frame.landmarks, "crop": frame.box}  # fmt: skip
        self._writer.add(frame.crop, rows)
        stats["first"] = frame.index if stats["first"] is None else stats["first"]
        stats["last"] = frame.index
        stats["detections"] += frame.detections
        stats["errors"] = _running(stats["errors"], frame.reprojection, "mean_max")
        stats["sides"] = _running(stats["sides"], float(frame.box[2]), "min_max")

    def end(self, reason: str) -> None:
        writer, stats = self._writer, self._stats
        self._writer = None
        n, first, last = writer.frames, stats["first"], stats["last"]
        if n < self.min_frames:
            writer.discard()
            self.skipped.append({**self._source(), "kind": "too few frames", "segment": [first, last],
                                 "reason": f"too few frames: a segment of {n} frames with a face (frames {first}-"
                                           f"{last}, {stats['starts_at']} to {reason}); --min-frames is "
                                           f"{self.min_frames}"})  # fmt: skip
            return
        name = f"{len(self.clips):03d}"
        (error_sum, error_max), (side_min, side_max) = stats["errors"], stats["sides"]
        record = {"clip": f"{self.video['video']}/{name}", **self.video, "frames": n, "first_frame": first,
                  "last_frame": last, "starts_at": stats["starts_at"], "ends_at": reason,
                  "dropped_no_face": (last - first) // self.every + 1 - n, "face_detections": stats["detections"],
                  "expression_dim": writer.width("expression"),
                  "reprojection_px": {"mean": round(error_sum / n, 3), "max": round(error_max, 3)},
                  "crop_side_px": {"min": round(side_min, 2), "max": round(side_max, 2)}}  # fmt: skip
        writer.finish(record)
        writer.folder.rename(self.folder / name)
        self.clips.append(record)

    def _source(self) -> dict:
        return {"source": self.video["source"], "clip": self.video["video"]}


def _running(state: list, value: float, kind: str) -> list:
    """Running (sum, max) or (min, max) of a clip's per-frame values, kept as a two-item list."""
    if not state:
        return [value, value]
    if kind == "mean_max":
        return [state[0] + value, max(state[1], value)]
    return [min(state[0], value), max(state[1], value)]
