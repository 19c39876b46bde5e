"""A video through the face pipeline in one decoding pass and bounded memory, split into clips at cuts and gaps.

What ``prepare`` runs on every video. Each frame is decoded once and goes, in order, through:

1. a colour-histogram change from the previous frame (:class:`~export3d.data.segments.Segmenter`): the tracker
   starts afresh, as on a new video;
2. :class:`~export3d.data.face_detect.FaceTracker` (landmarks and blendshapes of the followed face);
3. the split tests of the :class:`~export3d.data.segments.Segmenter`: the picture differs from the clip's last
   frame (a shot cut), the face moved or changed size too fast, or it was missing too long; the open clip then
   ends and this face starts the next;
4. :class:`~export3d.data.crop.StreamingSmoother`, which holds a frame until the ``ceil(3 sigma)`` frames with a
   face after it in the same clip are known (or the clip has ended) and then gives its smoothed crop box;
5. the frame's crop, its landmarks in crop pixels, its EG3D camera by PnP and the reprojection error, exactly as
   :func:`~export3d.data.face_pipeline.clip_parameters` and :func:`~export3d.data.face_pipeline.cut_crops`
   compute them for a whole clip, handed to a sink (:class:`ClipSink`) that writes it out.

So at most ``ceil(3 sigma) + 1`` frames (7 at the default sigma of 2: 44 MB at 1080p) are held, whatever the
video's length, and nothing is decoded twice. The alternative, two passes over the video (landmarks of every frame
first, which are small, then a second decoding to cut the crops), also runs in bounded memory but decodes every
frame twice; the look-ahead the smoothing needs is short, so one pass suffices. Within a clip the crops, cameras
and expressions are those of the two-pass functions of :mod:`~export3d.data.face_pipeline` (up to rounding), and
the smoothing never crosses a split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from export3d.data.crop import StreamingSmoother, calibration, crop_frame, face_measures
from export3d.data.face_detect import FaceTracker
from export3d.data.frames import read_frames, video_info
from export3d.data.headpose import reprojection_error, solve_camera
from export3d.data.landmarker import CanonicalMesh, FaceLandmarker
from export3d.data.segments import CutConfig, Segmenter


class PoseError(ValueError):
    """PnP found no camera for a frame's landmarks; the message names the frame."""


@dataclass(frozen=True)
class StreamConfig:
    size: int  # crop side in pixels
    every: int = 1  # read every n-th frame for the face
    max_frames: int | None = None  # stop after this many frames of the video
    smooth_sigma: float = 2.0  # Gaussian smoothing of the crop over the frames of a clip, in frames
    cuts: CutConfig = CutConfig()  # where a clip ends


@dataclass(frozen=True)
class ClipFrame:
    """Everything a clip records of one of its frames."""

    index: int  # the frame's index in the video
    crop: np.ndarray  # [size, size, 3] uint8
    box: np.ndarray  # [3] float64: the smoothed crop's corner x, y and side in frame pixels
    landmarks: np.ndarray  # [478, 2] float64: crop pixels
    camera: np.ndarray  # [25] float64: the EG3D camera of the crop
    reprojection: float  # mean reprojection error of the rigid landmarks, crop pixels
    expression: np.ndarray  # [52] float32: the blendshapes
    detections: int  # whole-frame face searches on this frame and the frames without a face just before it


class ClipSink(Protocol):
    """Receives the clips of a video: ``begin``, ``frame`` per frame in order, ``end``; then the next clip."""

    def begin(self, reason: str) -> None:
        """A clip starts, after ``reason``: "start" (of the video), "cut" or "gap"."""

    def frame(self, frame: ClipFrame) -> None: ...

    def end(self, reason: str) -> None:
        """The clip ends, because of ``reason``: "cut", "gap" or "end" (of the video)."""


@dataclass(frozen=True)
class StreamStats:
    """What one pass over a video saw."""

    frames_read: int  # frames decoded
    frames_considered: int  # of those, the every-th frames given to the tracker
    frames_with_face: int  # of those, the frames with a face
    detections: int  # frames searched whole for the face
    scene_cuts: int  # clips ended by a change of the picture
    face_jumps: int  # ... by a jump of the face
    gaps: int  # ... by too many frames without a face


class _Pass:
    """The state of one pass over one video (:func:`stream_clips`)."""

    def __init__(self, landmarker: FaceLandmarker, mesh: CanonicalMesh, cfg: StreamConfig, sink: ClipSink):
        self.mesh, self.cfg, self.sink = mesh, cfg, sink
        self.tracker = FaceTracker(landmarker)
        self.segmenter = Segmenter(cfg.cuts)
        self.smoother = StreamingSmoother(cfg.smooth_sigma)
        self.anchor_ref, self.size_ref = calibration(mesh)
        self.open, self.next_reason = False, "start"
        self.detections = 0  # of trackers reset at a cut
        self.searched = 0  # whole-frame searches since the last frame kept
        self.with_face = 0

    def frame(self, index: int, frame: np.ndarray, time_ms: int) -> None:
        if self.segmenter.picture_changed(frame):  # a cut or a flash: the face is found afresh, as in a new video
            self.detections += self.tracker.detections
            self.tracker.reset()
        before = self.tracker.detections
        face = self.tracker.track(frame, time_ms)
        self.searched += self.tracker.detections - before
        if face is None:
            if self.open and self.segmenter.gap_exceeded(index):
                self._end("gap")
            return
        self.with_face += 1
        anchor, size = face_measures(face.landmarks)
        if self.open and (reason := self.segmenter.face_cut(index, self.cfg.every, anchor, size)):
            self._end(reason)
        if not self.open:
            self.sink.begin(self.next_reason)
            self.open, self.searched = True, self.tracker.detections - before
        self.segmenter.keep(index, anchor, size)
        item = (index, frame, face, self.searched)
        self.searched = 0
        for done, value in self.smoother.push(item, [anchor[0], anchor[1], size / self.size_ref]):
            self._emit(done, value)

    def _end(self, reason: str) -> None:
        """The open clip (if any) ends because of ``reason``; the next one starts after it."""
        self.next_reason = reason
        if not self.open:
            return
        for done, value in self.smoother.flush():
            self._emit(done, value)
        self.sink.end(reason)
        self.segmenter.close()
        self.open = False

    def _emit(self, item: tuple, value: np.ndarray) -> None:
        """A frame whose smoothed box is known: its crop, landmarks, camera and expression to the sink."""
        index, frame, face, searched = item
        size, side = self.cfg.size, float(value[2])
        corner = value[:2] - self.anchor_ref * side
        in_crop = (face.landmarks - corner) * (size / side)  # CropBoxes.to_crop of one frame
        try:
            camera = solve_camera(self.mesh, in_crop, size)
        except ValueError as err:
            raise PoseError(f"frame {index}: {err}") from err
        error = reprojection_error(self.mesh, camera, in_crop, size)
        crop = crop_frame(frame, corner, side, size)
        box = np.array([corner[0], corner[1], side])
        self.sink.frame(ClipFrame(index, crop, box, in_crop, camera, error, face.blendshapes, searched))


def stream_clips(path: Path, landmarker: FaceLandmarker, mesh: CanonicalMesh, cfg: StreamConfig, sink: ClipSink,
                 progress: bool = False, desc: str | None = None) -> StreamStats:  # fmt: skip
    """One pass over the video file or frame folder at ``path``: its clips to ``sink``; returns what it saw.

    Raises :class:`~export3d.data.frames.VideoError` (naming the file) when the video cannot be read and
    :class:`PoseError` when PnP finds no camera for a frame; the sink may then hold part of a clip.
    """
    from tqdm import tqdm

    path = Path(path)
    info = video_info(path)
    total = info.frames if cfg.max_frames is None or info.frames is None else min(info.frames, cfg.max_frames)
    run = _Pass(landmarker, mesh, cfg, sink)
    read = considered = 0
    with tqdm(total=total, desc=desc or f"{path.name} faces", unit="frame", leave=False, disable=not progress,
              mininterval=1.0) as bar:  # fmt: skip
        for index, frame in read_frames(path):
            if cfg.max_frames is not None and index >= cfg.max_frames:
                break
            read += 1
            bar.update(1)
            if index % cfg.every:
                continue
            considered += 1
            run.frame(index, frame, round(index * 1000 / info.fps))
    run._end("end")
    seg = run.segmenter
    return StreamStats(read, considered, run.with_face, run.detections + run.tracker.detections, seg.scene_cuts,
                       seg.face_jumps, seg.gaps)  # fmt: skip
