"""Reading input videos for ``prepare``: video files (mp4, mov, ...) or folders of frame images.

Every reading problem (unreadable file, broken stream, undecodable image) becomes a :class:`VideoError`
that names the file, so a run over many videos can report it and go on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_FPS = 25.0  # frame folders carry no rate; timestamps for the tracker assume this one


class VideoError(RuntimeError):
    """A video or frame folder that cannot be read; the message starts with its path."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path


def frame_files(folder: Path) -> list[Path]:
    """Image files of a frame folder in frame order (numeric names by value, others by name)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    numeric = all(re.fullmatch(r"\d+", p.stem) for p in files)
    return sorted(files, key=(lambda p: (int(p.stem), p.name)) if numeric else (lambda p: p.name))


def is_video(path: Path) -> bool:
    """A video file, or a folder holding frame images (a folder of videos is not itself a video)."""
    if path.is_file():
        return path.suffix.lower() in VIDEO_SUFFIXES
    return path.is_dir() and bool(frame_files(path))


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frames: int | None  # None when the container does not say


def video_info(path: Path) -> VideoInfo:
    if path.is_dir():
        return VideoInfo(DEFAULT_FPS, len(frame_files(path)))
    import imageio.v2 as iio

    try:
        with iio.get_reader(path, "ffmpeg") as reader:
            meta = reader.get_meta_data()
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise VideoError(path, f"cannot read video: {err}") from err
    fps = float(meta.get("fps") or DEFAULT_FPS)
    duration = meta.get("duration")
    count = int(round(duration * fps)) if duration and np.isfinite(duration) else None
    return VideoInfo(fps, count)


def read_frames(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB uint8 frame # [H, W, 3]) for every frame, in order; raises VideoError on bad data."""
    if path.is_dir():
        from PIL import Image, UnidentifiedImageError

        for index, file in enumerate(frame_files(path)):
            try:
                with Image.open(file) as im:
                    frame = np.asarray(im.convert("RGB"))
            except (OSError, UnidentifiedImageError) as err:
                raise VideoError(file, f"cannot read frame image: {err}") from err
            yield index, frame
        return
    import imageio.v2 as iio

    try:
        reader = iio.get_reader(path, "ffmpeg")
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise VideoError(path, f"cannot read video: {err}") from err
    with reader:
        index = 0
        while True:
            try:
                frame = reader.get_next_data()
            except IndexError:  # the end of the stream
                return
            except (OSError, RuntimeError, ValueError) as err:
                raise VideoError(path, f"cannot decode frame {index}: {err}") from err
            yield index, np.ascontiguousarray(np.asarray(frame)[..., :3])
            index += 1
