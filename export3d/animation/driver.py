"""A real driving video -> one expression and one camera per frame, every frame, filtered.

The video is read by the face pipeline of ``prepare`` (:func:`export3d.data.face_pipeline.track_faces`: the face
found and tracked, landmarks and 52 blendshapes per frame), so a video drives the model with exactly the signals a
prepared clip trains it on. Per frame, the raw crop (no temporal smoothing yet), the EG3D camera by PnP in that
crop and the blendshapes. Then:

- frames without a face take the values of the nearest frame with one (counted in ``DrivingSignal.held``), so the
  output has one frame per driving frame and stays in sync with the driver's sound;
- the One Euro filters of :mod:`export3d.animation.filters` remove the landmark jitter from the expression, the
  camera and the crop (``smooth = 0``: off; ``smooth = s``: every cutoff divided by ``s``, so 2 is smoother);
- :func:`export3d.animation.motion.transfer_motion` applies the driver's motion to the source: ``relative`` (the
  change from the reference frame, added to the source's own expression and pose) or ``absolute``.

Only small per-frame arrays are kept (about 0.7 KiB a frame), never the frames themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export3d.animation.filters import (
    DrivingFilterSettings,
    OneEuroSettings,
    filter_cameras,
    filter_crops,
    filter_expression,
)
from export3d.animation.motion import MotionSettings, transfer_motion
from export3d.data.face_pipeline import clip_parameters, track_faces


@dataclass(frozen=True)
class DrivingSignal:
    """What a driving video gives, one row per frame of the video (or of its first ``max_frames``)."""

    expression: np.ndarray  # [T, 52] float64: blendshapes, held where no face, filtered
    camera: np.ndarray  # [T, 25] float64: EG3D cameras of the driver's face crops, held where no face, filtered
    crop: np.ndarray  # [T, 3] float64: the face crop (corner x, corner y, side) in video pixels
    has_face: np.ndarray  # [T] bool: a face was found in the frame itself
    fps: float  # the video's frame rate

    @property
    def frames(self) -> int:
        return len(self.has_face)

    @property
    def held(self) -> int:
        """Frames without a face, which took the signals of the nearest frame with one."""
        return int((~self.has_face).sum())

    def transferred(self, source_expression: np.ndarray, source_camera: np.ndarray,
                    motion: MotionSettings) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """The expression ``[T, E]`` and camera ``[T, 25]`` of every output frame for a source (its own expression
        ``[E]`` and camera ``[25]``): :func:`~export3d.animation.motion.transfer_motion`."""
        return transfer_motion(source_expression, source_camera, self.expression, self.camera, motion)


def nearest_filled(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Rows of ``values # [T, ...]`` where ``found # [T]`` is False take the nearest found row (the earlier one on a
    tie). At least one row must be found."""
    index = np.flatnonzero(found)
    if len(index) == 0:
        raise ValueError("nearest_filled: no row is found")
    frames = np.arange(len(found))
    after = np.clip(np.searchsorted(index, frames), 0, len(index) - 1)  # the first found row at or after each frame
    before = np.clip(after - 1, 0, len(index) - 1)
    use_before = np.abs(frames - index[before]) <= np.abs(index[after] - frames)
    return values[np.where(use_before, index[before], index[after])]


def scaled_filters(smooth: float) -> DrivingFilterSettings | None:
    """The tuned filter settings made ``smooth`` times smoother (every cutoff divided by it); None when ``smooth``
    is 0 (no filtering)."""
    if smooth < 0:
        raise ValueError(f"--smooth must be >= 0 (0: no filtering, 1: the tuned filters), got {smooth}")
    if smooth == 0:
        return None
    base = DrivingFilterSettings()

    def scale(s: OneEuroSettings) -> OneEuroSettings:
        return dataclasses.replace(s, min_cutoff=s.min_cutoff / smooth, beta=s.beta / smooth)

    return DrivingFilterSettings(*(scale(getattr(base, f.name)) for f in dataclasses.fields(base)))


def read_driver(path: Path, landmarker, mesh, size: int, smooth: float = 1.0, max_frames: int | None = None,
                progress: bool = False) -> DrivingSignal:  # fmt: skip
    """Track the face through the video at ``path`` and turn it into a :class:`DrivingSignal`.

    ``size``: the crop side the cameras are solved in (the model's image size). Raises ``ValueError`` naming the
    video when no frame has a face.
    """
    from export3d.data.frames import video_info

    track = track_faces(path, landmarker, max_frames=max_frames, progress=progress, desc=f"{Path(path).name} faces")
    if len(track.frame_index) == 0:
        raise ValueError(f"--driving: {path}: no face found in any of its {track.frames_read} frames")
    params = clip_parameters(track, mesh, size, smooth_sigma=0.0)
    found = np.zeros(track.frames_read, dtype=bool)
    found[track.frame_index] = True
    rows = np.cumsum(found) - 1  # [T]: the kept row of each found frame
    crop = np.concatenate([params.boxes.corner, params.boxes.side[:, None]], 1)  # [K, 3]
    signals = {"expression": params.expression.astype(np.float64), "camera": params.cameras, "crop": crop}
    full = {k: nearest_filled(np.where(found[:, None], v[np.maximum(rows, 0)], np.nan), found)
            for k, v in signals.items()}  # fmt: skip
    fps = video_info(Path(path)).fps
    filters = scaled_filters(smooth)
    if filters is not None:
        full = {"expression": filter_expression(full["expression"], fps, filters),
                "camera": filter_cameras(full["camera"], fps, filters),
                "crop": filter_crops(full["crop"], fps, filters)}  # fmt: skip
    return DrivingSignal(full["expression"], full["camera"], full["crop"], found, fps)
