"""What an animation is made of: the faces to animate, what drives each frame, and each face's frames chunk by chunk.

- :class:`Face`: a source crop with its own expression and camera, and its way back into the photo.
- :class:`Drive`: the driving signal of every output frame: a video streamed frame by frame
  (:class:`~export3d.animation.driver.VideoSignal`), per-frame arrays (a clip folder, a synthetic clip), or a sweep
  whose codes come from each face (orbit, basis). :meth:`Drive.chunks` gives consecutive frames' expressions and
  cameras; :meth:`Drive.reference` the reference frame of relative motion.
- :class:`FaceJob`: one face prepared once (the generator's source-only work) and turned, chunk by chunk, into the
  codes and cameras of its frames (:meth:`FaceJob.chunk`: the motion transferred, relative or absolute).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export3d.animation.driver import VideoSignal
from export3d.animation.motion import MotionSettings, transfer_motion
from export3d.animation.pasteback import PasteBack
from export3d.model.generator import SourceFeatures


@dataclass
class Face:
    """A source face: the model's input crop, its own expression and camera, and where its renders go back."""

    image: torch.Tensor  # [3, S, S] in [-1, 1]
    expression: np.ndarray  # [E]: its own, or the neutral zeros when it cannot be read (a 64-d model, a photo)
    camera: np.ndarray  # [25]: its own EG3D camera (relative motion starts from it)
    paste: PasteBack | None = None  # into the photo, or None: the crop is the frame
    label: str = ""
    index: int = 0  # its place among the photo's faces, left to right


@dataclass
class Drive:
    """What drives every output frame: a streamed video, per-frame arrays, or (a sweep) codes from each face."""

    fps: float
    label: str
    expression: np.ndarray | None = None  # [T, E]: per-frame arrays (None for a video or a sweep)
    cameras: np.ndarray | None = None  # [T or 1, 25]: per-frame arrays or a sweep's (one row: every frame)
    video: VideoSignal | None = None  # a driving video, read as the frames are rendered
    codes_of: Callable[[Face], torch.Tensor] | None = None  # a sweep: the codes [T or 1, d] of a face
    frames: torch.Tensor | None = None  # [T, 3, h, w]: driving images for the contact sheet
    audio: Path | None = None  # the file whose sound the video carries
    length: int | None = None  # frames (a video's: its container's count; the frames read decide)

    def __post_init__(self) -> None:
        if self.length is None:
            sizes = [self.video.expected if self.video else None,
                     None if self.expression is None else len(self.expression),
                     None if self.cameras is None else len(self.cameras)]  # fmt: skip
            self.length = next((n for n in sizes if n is not None), 0)

    @property
    def held(self) -> int:
        """Driving frames without a face, which took the nearest frame's signals (so far, for a video)."""
        return self.video.held if self.video is not None else 0

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray | None, np.ndarray]]:
        """``(expression [n, E] or None for a sweep, cameras [n, 25])`` of consecutive frames, ``n <= size``."""
        if self.video is not None:
            rows: list[tuple[np.ndarray, np.ndarray]] = []
            for expression, camera, _, _ in self.video.rows():
                rows.append((expression, camera))
                if len(rows) == size:
                    yield np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
                    rows = []
            if rows:
                yield np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
            return
        for start in range(0, self.length, size):
            stop = min(start + size, self.length)
            cameras = self.cameras[start:stop] if len(self.cameras) > 1 else np.repeat(self.cameras, stop - start, 0)
            yield (None if self.expression is None else self.expression[start:stop]), cameras

    def reference(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """The driver's expression ``[E]`` and camera ``[25]`` at ``frame`` (a video is read up to it, the same way
        its chunks are: the filters' state there is the same)."""
        if self.video is None:
            if not 0 <= frame < self.length:
                raise ValueError(f"--reference-frame: the driver has {self.length} frames, got {frame}")
            return self.expression[frame], self.cameras[frame]
        for index, (expression, camera, _, _) in enumerate(self.video.rows()):
            if index == frame:
                return expression, camera
        raise ValueError(f"--reference-frame: {self.video.path} has {index + 1} frames, got {frame}")


@dataclass
class FaceJob:
    """One face to render in every frame."""

    face: Face
    features: SourceFeatures  # the generator's source-only work, done once
    motion: MotionSettings
    reference: tuple[np.ndarray, np.ndarray] | None = None  # the driver's reference frame (relative motion)
    sweep: torch.Tensor | None = None  # a sweep's codes [T or 1, d] (its cameras come from the drive)

    @property
    def source(self) -> torch.Tensor:
        return self.face.image

    @property
    def paste(self) -> PasteBack | None:
        return self.face.paste

    def chunk(self, expression: np.ndarray | None, cameras: np.ndarray, start: int,
              encode: Callable[[np.ndarray], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """The codes ``[n, d]`` (``encode``: expressions -> codes) and cameras ``[n, 25]`` of frames ``start ..
        start + n`` of this face: the driver's motion transferred to it, or a sweep's own rows."""
        n = len(cameras)
        if self.sweep is not None:
            codes = self.sweep[start:start + n] if len(self.sweep) > 1 else self.sweep.expand(n, -1)
            return codes, torch.as_tensor(cameras, dtype=torch.float32)
        if self.reference is not None:  # the reference frame first, so that relative motion is measured from it
            expression = np.concatenate([self.reference[0][None], expression])
            cameras = np.concatenate([self.reference[1][None], cameras])
        expression, cameras = transfer_motion(self.face.expression, self.face.camera, expression, cameras, self.motion)
        if self.reference is not None:
            expression, cameras = expression[1:], cameras[1:]
        return encode(expression), torch.as_tensor(cameras, dtype=torch.float32)
