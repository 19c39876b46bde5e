"""Video files of an animation: a streaming H.264 writer that carries the driver's sound over, and a chunked reader.

:class:`VideoWriter` pipes frames to the ffmpeg binary of imageio-ffmpeg (libx264, yuv420p, at any frame rate, e.g.
the driver's 29.97) one at a time, so memory does not grow with the video's length. It runs ffmpeg itself rather
than through imageio's writer so that a failed encode is an error (the return code is checked) and an abandoned
one is killed at once. On :meth:`~VideoWriter.close` the driver's first audio track, if it has one, is muxed in:

    ffmpeg -i VIDEO -ss START -t FRAMES/FPS -i DRIVER -map 0:v:0 -map 1:a:0? -c:v copy -c:a aac OUT

- the video is copied, not encoded again;
- the audio is cut to the video's length on its own input (``-t``), starting ``audio_start`` seconds into the
  driver (where output frame 0 is in the driver): audio time 0 is the first video frame's time, so sound and
  picture stay in sync, and a driver whose sound is shorter than the video leaves the rest silent. (``-shortest``
  would instead cut the *video* to a shorter sound track, and with a copied audio stream it cuts at packet
  boundaries only);
- the audio is re-encoded to AAC rather than copied: any driver codec fits an mp4 (PCM from .mov, Opus from
  .webm), and the decoder drops the source's AAC priming samples (its edit list) before the cut;
- ``1:a:0?``: a driver without sound gives a silent video, not an error.

Frames of odd width or height are padded to even sizes (yuv420p halves the chroma resolution) by repeating the last
column or row. Everything is written under hidden temporary names beside the destination and renamed onto it only
when complete (:func:`export3d.utils.outputs.replacing_file`): an error, Ctrl-C or a killed process leaves no
partial output file.

:class:`VideoReader` gives a video's (or frame folder's) frame rate, its frame count and its frames in chunks,
on top of :func:`export3d.data.frames.video_info` and :func:`export3d.data.frames.read_frames`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from export3d.data.frames import VideoError, read_frames, video_info
from export3d.utils.outputs import replacing_file

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")  # containers that hold H.264 + AAC


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def has_audio(path: str | os.PathLike) -> bool:
    """Whether ffmpeg finds an audio stream in the file (``ffmpeg -i``'s stream list)."""
    if not Path(path).is_file():
        raise VideoError(Path(path), "no such file")
    # without an output file ffmpeg exits with 1 by design: only its stream list on stderr is wanted
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                         errors="replace").stderr  # fmt: skip
    if "Invalid data" in out:
        raise VideoError(Path(path), f"ffmpeg cannot read it: {out.strip().splitlines()[-1]}")
    return any(line.lstrip().startswith("Stream #") and " Audio:" in line for line in out.splitlines())


def _fps(fps) -> Fraction:
    try:
        rate = fps if isinstance(fps, Fraction) else Fraction(float(fps)).limit_denominator(1_000_000)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"fps must be a positive number, got {fps!r}") from err
    if not rate > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return rate


class VideoWriter:
    """``with VideoWriter(out, fps, audio_from=driver) as w: w.write(frame)``: H.264 with the driver's sound.

    ``fps``: frames per second (a float or a ``Fraction``); ``audio_from``: a video whose first audio track is
    copied in (None: silent); ``audio_start``: seconds into it where frame 0 is; ``crf``, ``preset``: libx264's
    quality (18: visually lossless) and speed; ``threads``: ffmpeg's encoder threads (None: its choice). Leaving
    the ``with`` block by an exception, or :meth:`abort`, discards everything; :meth:`close` finishes the file and
    returns its path.
    """

    def __init__(self, path: str | os.PathLike, fps, audio_from: str | os.PathLike | None = None,
                 audio_start: float = 0.0, crf: int = 18, preset: str = "medium",
                 threads: int | None = None):  # fmt: skip
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"path: {self.path} must end in one of {', '.join(VIDEO_SUFFIXES)} (H.264 + AAC)")
        self.fps = _fps(fps)
        self.audio_from = None if audio_from is None else Path(audio_from)
        if self.audio_from is not None and not self.audio_from.exists():
            raise ValueError(f"audio_from: {self.audio_from} does not exist")
        if not audio_start >= 0:
            raise ValueError(f"audio_start must be >= 0 seconds, got {audio_start}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in [0, 51] (libx264), got {crf}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.audio_start, self.crf, self.preset, self.threads = float(audio_start), int(crf), preset, threads
        self.frames = 0  # frames written so far
        self.size: tuple[int, int] | None = None  # (height, width) of the frames given, fixed by the first
        self._encoder: subprocess.Popen | None = None
        self._log = None
        self._files = contextlib.ExitStack()  # the temporary files and the final rename
        self._final = self._files.enter_context(replacing_file(self.path))
        if self.audio_from is None:
            self._video = self._final
        else:
            self._video = self._final.with_name(f".{self.path.stem}.video-{os.getpid()}{self.path.suffix}")
            self._files.callback(self._video.unlink, missing_ok=True)
        self._open = True

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _start(self, height: int, width: int) -> None:
        self.size = (height, width)
        self._log = tempfile.TemporaryFile()
        cmd = [ffmpeg_exe(), "-y", "-hide_banner", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width + width % 2}x{height + height % 2}", "-r", str(self.fps), "-i", "-", "-an",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(self.crf), "-preset", self.preset,
               *(["-threads", str(self.threads)] if self.threads else []), "-movflags", "+faststart",
               str(self._video)]  # fmt: skip
        self._encoder = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)

    def _ffmpeg_errors(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()

    def write(self, frames) -> None:
        """Append one frame ``[H, W, 3]`` or several ``[N, H, W, 3]``, RGB uint8, all of one size."""
        if not self._open:
            raise ValueError(f"{self.path}: the writer is closed")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[1:3]) < 1:
            raise ValueError(f"frames must be RGB uint8 [H, W, 3] or [N, H, W, 3], got {frames.dtype} {frames.shape}")
        height, width = frames.shape[1:3]
        if self.size is None:
            self._start(height, width)
        elif self.size != (height, width):
            raise ValueError(f"frames must all be {self.size[0]}x{self.size[1]} (height x width), got {height}x{width}")
        if height % 2 or width % 2:
            frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        try:
            for frame in frames:
                self._encoder.stdin.write(np.ascontiguousarray(frame).data)
        except (BrokenPipeError, OSError) as err:
            self._encoder.wait()
            message = self._ffmpeg_errors()
            self.abort()
            raise OSError(f"{self.path}: ffmpeg stopped encoding: {message or err}") from err
        self.frames += len(frames)

    def close(self) -> Path:
        """Finish the video, mux the driver's sound in and rename it onto ``path``; returns ``path``."""
        if not self._open:
            raise ValueError(f"{self.path}: the writer is already closed")
        try:
            if self.frames == 0:
                raise ValueError(f"{self.path}: no frames were written")
            self._encoder.stdin.close()
            if self._encoder.wait() != 0:
                raise OSError(f"{self.path}: ffmpeg failed to encode the video: {self._ffmpeg_errors()}")
            if self.audio_from is not None:
                self._mux()
        except BaseException:
            self.abort()
            raise
        self._open = False
        self._files.close()  # renames the finished file onto path
        self._close_log()
        return self.path

    def _mux(self) -> None:
        duration = self.frames / self.fps
        cmd = [ffmpeg_exe(), "-y", "-hide_banner", "-v", "error", "-i", str(self._video),
               "-ss", f"{self.audio_start:.6f}", "-t", f"{float(duration):.6f}", "-i", str(self.audio_from),
               "-map", "0:v:0", "-map", "1:a:0?", "-c:v", "copy", "-c:a", "aac", "-b:a", "192k",
               "-movflags", "+faststart", str(self._final)]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        if result.returncode != 0:
            raise OSError(f"{self.path}: ffmpeg failed to add the sound of {self.audio_from}: {result.stderr.strip()}")

    def abort(self) -> None:
        """Stop ffmpeg and delete every temporary file; ``path`` is left as it was. Safe to call twice."""
        if not self._open:
            return
        self._open = False
        if self._encoder is not None and self._encoder.poll() is None:
            self._encoder.kill()
            self._encoder.wait()
        if self._encoder is not None and self._encoder.stdin is not None:
            with contextlib.suppress(OSError):
                self._encoder.stdin.close()
        aborted = RuntimeError("aborted")
        self._files.__exit__(RuntimeError, aborted, None)  # replacing_file deletes its file and renames nothing
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class VideoReader:
    """A video file or frame folder read in order: its ``fps``, frame count and frames in chunks.

    ``frames`` is the container's count (cheap; None when it does not say, and it can be off by one);
    :meth:`count_frames` decodes the stream to count exactly.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise VideoError(self.path, "no such file or folder")
        info = video_info(self.path)
        self.fps: float = info.fps
        self.frames: int | None = info.frames

    def count_frames(self) -> int:
        """The exact number of frames (a frame folder's files; a video's stream, decoded by ffmpeg)."""
        if self.path.is_dir():
            return int(self.frames or 0)
        import imageio_ffmpeg

        try:
            return int(imageio_ffmpeg.count_frames_and_secs(str(self.path))[0])
        except RuntimeError as err:
            raise VideoError(self.path, f"cannot count frames: {err}") from err

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frames ``[H, W, 3]`` RGB uint8, one at a time."""
        for _, frame in read_frames(self.path):
            yield frame

    def chunks(self, size: int = 32, max_frames: int | None = None) -> Iterator[np.ndarray]:
        """Frames in chunks ``[n, H, W, 3]`` of ``size`` (the last may be shorter), at most ``max_frames`` in all."""
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        chunk: list[np.ndarray] = []
        for index, frame in read_frames(self.path):
            if max_frames is not None and index >= max_frames:
                break
            chunk.append(frame)
            if len(chunk) == size:
                yield np.stack(chunk)
                chunk = []
        if chunk:
            yield np.stack(chunk)
