"""A real driving video -> one expression and one camera per frame, every frame, filtered, in one streaming pass.

The video is read with the face pipeline's steps (:class:`export3d.data.face_detect.FaceTracker` finds and follows
the face; :mod:`export3d.data.crop` cuts the crop ``prepare`` cuts, :func:`export3d.data.headpose.solve_camera`
solves its EG3D camera), so a video drives the model with the signals a prepared clip trains it on: per frame, the
raw crop (no temporal smoothing), the camera and the 52 blendshapes. Then, frame by frame (:class:`VideoSignal`):

- frames without a face take the values of the nearest frame with one (counted: ``VideoSignal.held``), so the
  output has one frame per driving frame and stays in sync with the driver's sound;
- the One Euro filters of :mod:`export3d.animation.filters` remove the landmark jitter from the expression, the
  camera and the crop (``smooth = 0``: off; ``smooth = s``: every cutoff divided by ``s``, so 2 is smoother).

The animator transfers the motion to the source (:mod:`export3d.animation.motion`) chunk by chunk as the rows come.
Nothing grows with the video's length: a frame is decoded, tracked and reduced to its 80 values, and a gap without
a face is only counted until the next face decides which side each of its frames takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export3d.animation.filters import DrivingFilter, DrivingFilterSettings, OneEuroSettings


@dataclass(frozen=True)
class DrivingSignal:
    """A whole driving video's signals as arrays, one row per frame (:func:`read_driver`; for plots and tests: the
    animator streams them instead, :class:`VideoSignal`)."""

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


ROW = 52 + 25 + 3  # a frame's signals: blendshapes, camera, crop


def hold_nearest(rows: Iterator[np.ndarray | None]) -> Iterator[tuple[np.ndarray, bool]]:
    """``(row, found)`` for every frame of ``rows`` (None: no face), a faceless frame taking the row of the nearest
    frame with a face (the earlier one on a tie). A gap is only counted while it lasts, so memory does not grow with
    its length; frames are yielded once the face after the gap is known. ``ValueError`` when no row has a face."""
    previous, gap = None, 0
    for row in rows:
        if row is None:
            gap += 1
            continue
        before = 0 if previous is None else (gap + 1) // 2  # frame j of a gap of g is nearest the earlier face iff
        for k in range(gap):  # j <= g + 1 - j (leading frames have no earlier face)
            yield (previous if k < before else row), False
        gap, previous = 0, row
        yield row, True
    if previous is None:
        raise ValueError(f"no face found in any of the {gap} frames")
    for _ in range(gap):
        yield previous, False


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


def track_rows(path: Path, landmarker, mesh, size: int, max_frames: int | None = None,
               progress: bool = False) -> Iterator[np.ndarray | None]:  # fmt: skip
    """Follow the face through the video, one frame at a time: its blendshapes, its camera (PnP in a ``size`` crop)
    and crop, as one row ``[52 + 25 + 3]`` float64, or None where no face is found.

    The same crop and camera as :func:`export3d.data.face_pipeline.clip_parameters` with ``smooth_sigma=0``.
    """
    from tqdm import tqdm

    from export3d.data.crop import calibration, face_measures
    from export3d.data.face_detect import FaceTracker
    from export3d.data.frames import read_frames, video_info
    from export3d.data.headpose import solve_camera

    info = video_info(Path(path))
    total = info.frames if max_frames is None or info.frames is None else min(info.frames, max_frames)
    anchor_ref, size_ref = calibration(mesh)
    tracker = FaceTracker(landmarker)
    with tqdm(total=total, desc=f"{Path(path).name}", unit="frame", leave=False, disable=not progress,
              mininterval=1.0) as bar:  # fmt: skip
        for index, frame in read_frames(Path(path)):
            if max_frames is not None and index >= max_frames:
                return
            face = tracker.track(frame, round(index * 1000 / info.fps))
            bar.update(1)
            if face is None:
                yield None
                continue
            anchor, measure = face_measures(face.landmarks)
            side = float(measure) / size_ref
            corner = anchor - anchor_ref * side  # the crop prepare cuts, unsmoothed
            in_crop = (face.landmarks - corner) * (size / side)
            yield np.concatenate([face.blendshapes.astype(np.float64), solve_camera(mesh, in_crop, size),
                                  [corner[0], corner[1], side]])  # fmt: skip


class VideoSignal:
    """A driving video read once, frame by frame, into filtered signals: memory does not grow with its length.

    :meth:`rows` yields ``(expression [52], camera [25], crop [3], found)`` per frame: the face tracked
    (:func:`track_rows`), faceless frames held from the nearest frame with a face (:func:`hold_nearest`), then the
    One Euro filters (``smooth``: :func:`scaled_filters`). ``held`` counts the faceless frames read so far; with
    ``keep`` set, :meth:`recorded` gives the last pass's expressions and cameras (for a plot of a short driver).
    """

    def __init__(self, path: Path, landmarker, mesh, size: int, smooth: float = 1.0, max_frames: int | None = None,
                 progress: bool = False):  # fmt: skip
        from export3d.data.frames import video_info

        self.path, self.landmarker, self.mesh, self.size = Path(path), landmarker, mesh, size
        self.filters, self.max_frames, self.progress = scaled_filters(smooth), max_frames, progress
        info = video_info(self.path)
        self.fps = info.fps
        self.expected = info.frames if max_frames is None or info.frames is None else min(info.frames, max_frames)
        self.held = 0
        self.keep = False
        self._kept: list[tuple[np.ndarray, np.ndarray]] = []

    def rows(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
        """Every frame's filtered signals, in order (a new pass over the video each call)."""
        self.held, self._kept = 0, []
        filters = None if self.filters is None else DrivingFilter(self.fps, self.filters)
        raw = track_rows(self.path, self.landmarker, self.mesh, self.size, self.max_frames, self.progress)
        try:
            for row, found in hold_nearest(raw):
                self.held += not found
                expression, camera, crop = row[:52], row[52:77], row[77:]
                if filters is not None:
                    expression, camera, crop = filters.update(expression, camera, crop)
                if self.keep:
                    self._kept.append((expression, camera))
                yield expression, camera, crop, found
        except ValueError as err:
            raise ValueError(f"--driving: {self.path}: {err}") from err


    def recorded(self) -> tuple[np.ndarray, np.ndarray]:
        """The expressions ``[T, 52]`` and cameras ``[T, 25]`` of the last pass (``keep`` must have been set)."""
        if not self._kept:
            raise ValueError("VideoSignal.recorded: nothing was kept (set keep = True before reading the rows)")
        return np.stack([k[0] for k in self._kept]), np.stack([k[1] for k in self._kept])


def read_driver(path: Path, landmarker, mesh, size: int, smooth: float = 1.0, max_frames: int | None = None,
                progress: bool = False) -> DrivingSignal:  # fmt: skip
    """The whole video's :class:`DrivingSignal` (arrays, for plots and tests). ``ValueError`` naming the video when
    no frame has a face."""
    video = VideoSignal(path, landmarker, mesh, size, smooth, max_frames, progress)
    expression, camera, crop, found = zip(*video.rows(), strict=True)
    return DrivingSignal(np.stack(expression), np.stack(camera), np.stack(crop), np.array(found), video.fps)
