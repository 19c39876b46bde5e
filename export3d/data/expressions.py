"""Landmarker expressions for the synthetic data (``--expression-source landmarker``), cached on disk.

With this source, a synthetic frame's expression vector is not the generator's 64-d beta but what MediaPipe's
face landmarker reads from the rendered frame: its 52 blendshapes, the same vector ``export3d.data.prepare``
writes for real videos, so a model trained on it can be driven by a real video. Like a real 3DMM fit it is
measured, not constructed: noisy, and leaking some identity (face shape moves blendshapes too).

Each frame is rendered at the dataset's resolution (the pixels the model sees), resized (bicubic) to
``READ_SIZE`` and read in IMAGE mode (every frame on its own). The table of one split, ``[clips, frames, 52]``,
is computed once, with a progress bar, and cached as ``<cache dir>/landmarker-<hash>.npz`` (written to a
temporary file, then renamed); the hash covers everything that changes the rendered frames, the bundle and the
reader, and the first frame's pixels. Cache dir: ``$EXPORT3D_CACHE`` or ``~/.cache/export3d``.

Frames where the landmarker finds no face are not silently zero: they are counted (printed, and stored as
``found`` in the cache file) and take the expression linearly interpolated from the nearest frames of the same
clip that have a face; a clip with no face at all takes the split's mean expression. A split without a single
face is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from export3d.data.landmarker import N_BLENDSHAPES
from export3d.utils.outputs import replacing_file

EXPRESSION_SOURCES = ("beta", "landmarker")
READ_SIZE = 256
VERSION = 1
_NOT_IN_KEY = ("expression_source", "beta_noise")  # config fields that do not change the rendered frames


def cache_dir() -> Path:
    return Path(os.environ.get("EXPORT3D_CACHE") or Path.home() / ".cache" / "export3d")


def cache_path(clips) -> Path:
    """The cache file of a ``SyntheticClips`` split: named by a hash of its settings, the landmarker bundle, and
    the pixels of its first frame (so a change of the renderer or of the camera convention misses the cache)."""
    from export3d.utils.extras import bundle_path

    bundle = bundle_path()
    settings = {k: v for k, v in asdict(clips.config).items() if k not in _NOT_IN_KEY}
    first = clips.heads.frames([clips.key(0, 0)])["image"] if clips.clips else None
    pixels = hashlib.blake2b(first.numpy().tobytes(), digest_size=8).hexdigest() if first is not None else ""
    key = json.dumps({"config": settings, "split": clips.split, "read_size": READ_SIZE, "version": VERSION,
                      "bundle": [bundle.name, bundle.stat().st_size], "first_frame": pixels},
                     sort_keys=True)  # fmt: skip
    return cache_dir() / f"landmarker-{hashlib.blake2b(key.encode(), digest_size=10).hexdigest()}.npz"


def fill_missing(table: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, int]:
    """Faceless frames of ``table [C, F, E]`` (``found [C, F]`` False) from their clip's neighbours.

    Linear interpolation over the frame index between the nearest frames with a face (held constant past the
    ends); a clip without any face takes the mean of every found frame. Returns (filled table, faceless clips).
    """
    if not found.any():
        raise ValueError("the landmarker found no face in any frame")
    out = table.astype(np.float32).copy()
    mean = table[found].mean(0)
    empty = 0
    frames = np.arange(table.shape[1])
    for c in range(table.shape[0]):
        ok = found[c]
        if ok.all():
            continue
        if not ok.any():
            out[c] = mean
            empty += 1
            continue
        for e in range(table.shape[2]):
            out[c, ~ok, e] = np.interp(frames[~ok], frames[ok], table[c, ok, e])
    return out, empty


def compute_table(clips, batch_frames: int = 32, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read every frame of a ``SyntheticClips`` split: (blendshapes ``[C, F, 52]`` raw, ``found [C, F]``)."""
    from tqdm import tqdm

    from export3d.data.landmarker import FaceLandmarker
    from export3d.utils.extras import require
    from export3d.utils.images import to_uint8

    cv2 = require("cv2")
    requests = [(c, f) for c, clip in enumerate(clips.clips) for f in range(clip.frames)]
    frames = clips.config.frames_per_clip
    table = np.zeros((len(clips.clips), frames, N_BLENDSHAPES), np.float32)
    found = np.zeros((len(clips.clips), frames), bool)
    with FaceLandmarker(video=False) as landmarker, tqdm(total=len(requests), desc=f"landmarker expressions "
                                                         f"({clips.split})", unit="frame", disable=not progress,
                                                         mininterval=2.0) as bar:  # fmt: skip
        for start in range(0, len(requests), batch_frames):
            chunk = requests[start:start + batch_frames]
            keys = [clips.key(c, f) for c, f in chunk]
            images = clips.heads.render([k.identity for k in keys], clips.heads.expression(keys),
                                        clips.heads.camera(keys))  # fmt: skip
            for (c, f), px in zip(chunk, to_uint8(images), strict=True):
                big = cv2.resize(px, (READ_SIZE, READ_SIZE), interpolation=cv2.INTER_CUBIC)
                face = landmarker.detect(big)
                if face is not None:
                    table[c, f], found[c, f] = face.blendshapes, True
            bar.update(len(chunk))
    return table, found


def landmarker_expressions(clips, progress: bool = True) -> np.ndarray:
    """The (cached) landmarker expression of every frame of a ``SyntheticClips`` split. # [C, F, 52] float32"""
    path = cache_path(clips)
    if path.is_file():
        with np.load(path) as data:
            return data["expression"]
    raw, found = compute_table(clips, progress=progress)
    try:
        table, empty = fill_missing(raw, found)
    except ValueError as err:
        raise ValueError(f"--expression-source landmarker: {err} of the synthetic {clips.split} split "
                         f"({found.size} frames at {clips.config.resolution} px)") from err
    missing = int((~found).sum())
    if missing:
        print(f"landmarker expressions ({clips.split}): no face found in {missing} of {found.size} frames; they take "
              f"the expression interpolated from their clip's neighbouring frames ({empty} clips without any face "
              f"take the split's mean)", file=sys.stderr)  # fmt: skip
    with replacing_file(path) as tmp:
        np.savez(tmp, expression=table, raw=raw, found=found, faceless_clips=np.int64(empty))
    return table
