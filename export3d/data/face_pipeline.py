"""The per-frame face pipeline of real footage: landmarks -> crop -> camera -> expression.

One implementation for every command that reads faces from real images, so that what the model is trained on,
driven by and scored with is measured the same way: ``prepare`` (videos -> training clips), ``animate`` (a driving
video) and the offline face metrics of ``evaluate`` (one image that already is a face crop).

A video takes three steps (:func:`read_video_faces` runs them in order):

1. :func:`track_faces`: one face followed through every ``every``-th frame by
   :class:`~export3d.data.face_detect.FaceTracker` (a whole-frame detector finds faces down to 1 % of the frame's
   area, MediaPipe's face landmarker reads each on a crop around it): 478 landmarks and 52 blendshapes of each
   frame with a face.
2. :func:`clip_parameters`: square crops by translation and scale, smoothed over the kept frames
   (:mod:`~export3d.data.crop`); the landmarks in crop pixels; the EG3D camera of each crop by PnP against the
   canonical face mesh (:mod:`~export3d.data.headpose`) and its reprojection error; the blendshapes as the
   expression vector.
3. :func:`cut_crops`: a second decoding pass that cuts the kept frames' crops.

These hold every frame's landmarks and, in :func:`cut_crops`, every crop, and smooth over all the frames with a
face: for a short video. ``prepare`` runs the same steps on each frame in one decoding pass and bounded memory,
splitting a video at shot cuts and long gaps (:mod:`~export3d.data.streaming`); within a clip it gives what steps
1-3 give.

A still photo takes :func:`photo_faces`: every face, each cut and measured exactly as steps 1-3 cut and measure a
video frame (a one-frame clip: the same crop calibration, no smoothing). An image that already is a face crop (a
model output, a prepared frame) takes :func:`read_crop`: its landmarks, blendshapes and camera, with the crop
itself as the EG3D image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export3d.data.crop import CropBoxes, crop_boxes, crop_frame
from export3d.data.face_detect import FaceTracker, find_faces
from export3d.data.frames import VideoError, read_frames, video_info
from export3d.data.headpose import reprojection_error, solve_camera
from export3d.data.landmarker import CanonicalMesh, FaceLandmarker


class TooFewFaces(Exception):
    """A readable video with fewer frames with a face than asked for; the message gives the counts."""

    def __init__(self, found: int, considered: int, min_frames: int):
        super().__init__(f"{found} of {considered} frames have a face; --min-frames is {min_frames}")
        self.found, self.considered, self.min_frames = found, considered, min_frames


@dataclass(frozen=True)
class FaceTrack:
    """What the landmarker found in a video (step 1)."""

    frame_index: np.ndarray  # [T] int64: indices in the video of the frames with a face, ascending
    landmarks: np.ndarray  # [T, 478, 2] float64: frame pixels (x = column, y = row)
    blendshapes: np.ndarray  # [T, 52] float32 in [0, 1]
    frames_read: int  # frames decoded
    frames_considered: int  # of those, the every-th frames given to the landmarker
    detections: int = 0  # of those, the frames searched whole for the face (the first one, and after a loss)

    @property
    def dropped(self) -> int:
        """Frames considered in which no face was found."""
        return self.frames_considered - len(self.frame_index)


@dataclass(frozen=True)
class ClipParameters:
    """Everything a clip records per kept frame (step 2)."""

    frame_index: np.ndarray  # [T] int64: the frames' indices in the video
    boxes: CropBoxes  # smoothed crops in frame pixels
    landmarks: np.ndarray  # [T, 478, 2] float64: crop pixels
    cameras: np.ndarray  # [T, 25] float64: EG3D cameras of the crops
    reprojection: np.ndarray  # [T] float64: mean reprojection error of the rigid landmarks, crop pixels
    expression: np.ndarray  # [T, 52] float32: the blendshapes

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of a clip's ``params.npz`` (the clip format of :mod:`~export3d.data.clips`)."""
        crop = np.concatenate([self.boxes.corner, self.boxes.side[:, None]], 1)  # [T, 3]: corner x, y, side
        return {"expression": self.expression.astype(np.float32), "camera": self.cameras.astype(np.float32),
                "frame_index": self.frame_index.astype(np.int64), "landmarks": self.landmarks.astype(np.float32),
                "crop": crop.astype(np.float32)}  # fmt: skip


def _bar(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", leave=False, disable=not enabled, mininterval=1.0)


def track_faces(path: Path, landmarker: FaceLandmarker, every: int = 1, max_frames: int | None = None,
                progress: bool = False, desc: str | None = None,
                face_index: int | None = None) -> FaceTrack:  # fmt: skip
    """Step 1 over a video file or frame folder: one face followed through frames 0, every, 2 every, ...

    A fresh :class:`~export3d.data.face_detect.FaceTracker` on ``landmarker``: detection through its IMAGE-mode
    ``detect_all``, tracking through ``detect`` (VIDEO mode for a video landmarker, as ``prepare`` and ``animate``
    make it). With several faces, the largest at the first detection, or face ``face_index`` counted left to
    right. Raises :class:`~export3d.data.frames.VideoError` (naming the file) when the video cannot be read.
    """
    info = video_info(path)
    total = info.frames if max_frames is None or info.frames is None else min(info.frames, max_frames)
    tracker = FaceTracker(landmarker, face_index)
    kept, points, shapes, read = [], [], [], 0
    with _bar(total, desc or f"{Path(path).name} faces", progress) as bar:
        for index, frame in read_frames(path):
            if max_frames is not None and index >= max_frames:
                break
            read += 1
            bar.update(1)
            if index % every:
                continue
            face = tracker.track(frame, round(index * 1000 / info.fps))
            if face is not None:
                kept.append(index)
                points.append(face.landmarks)
                shapes.append(face.blendshapes)
    n_landmarks = points[0].shape[0] if points else 0
    return FaceTrack(np.array(kept, dtype=np.int64), np.stack(points) if points else np.zeros((0, n_landmarks, 2)),
                     np.stack(shapes) if shapes else np.zeros((0, 0), np.float32), read,
                     len(range(0, read, every)), tracker.detections)  # fmt: skip


def clip_parameters(track: FaceTrack, mesh: CanonicalMesh, size: int, smooth_sigma: float = 2.0) -> ClipParameters:
    """Step 2: smoothed ``size`` x ``size`` crops of the tracked frames, their cameras and expressions."""
    if len(track.frame_index) == 0:
        raise ValueError("clip_parameters: the track holds no frame with a face")
    boxes = crop_boxes(mesh, track.landmarks, smooth_sigma)
    in_crop = boxes.to_crop(track.landmarks, size)  # [T, 478, 2]
    cameras = np.stack([solve_camera(mesh, p, size) for p in in_crop])
    errors = np.array([reprojection_error(mesh, c, p, size) for c, p in zip(cameras, in_crop, strict=True)])
    return ClipParameters(track.frame_index, boxes, in_crop, cameras, errors, track.blendshapes)


def cut_crops(path: Path, frame_index: np.ndarray, boxes: CropBoxes, size: int) -> list[np.ndarray]:
    """Step 3: decode the video again and cut the crop of each frame in ``frame_index`` -> ``[size, size, 3]`` uint8."""
    position = {int(index): k for k, index in enumerate(frame_index)}
    crops: list[np.ndarray | None] = [None] * len(position)
    last = int(frame_index[-1]) if len(frame_index) else -1
    for index, frame in read_frames(path):
        if index > last:
            break
        if index in position:
            k = position[index]
            crops[k] = crop_frame(frame, boxes.corner[k], float(boxes.side[k]), size)
    if any(c is None for c in crops):
        raise VideoError(Path(path), "the video gave fewer frames on the second read than on the first")
    return crops  # type: ignore[return-value]


def read_video_faces(path: Path, landmarker: FaceLandmarker, mesh: CanonicalMesh, size: int, every: int = 1,
                     max_frames: int | None = None, smooth_sigma: float = 2.0, min_frames: int = 1,
                     progress: bool = False) -> tuple[FaceTrack, ClipParameters, list[np.ndarray]]:  # fmt: skip
    """Steps 1-3: ``(track, parameters, crops)``; :class:`TooFewFaces` when fewer than ``min_frames`` have a face.

    Every crop is held: for short videos (``prepare`` streams, :func:`export3d.data.streaming.stream_clips`)."""
    track = track_faces(path, landmarker, every, max_frames, progress)
    if len(track.frame_index) < min_frames:
        raise TooFewFaces(len(track.frame_index), track.frames_considered, min_frames)
    params = clip_parameters(track, mesh, size, smooth_sigma)
    return track, params, cut_crops(path, params.frame_index, params.boxes, size)


@dataclass(frozen=True)
class CropFace:
    """The face of an image that already is a square face crop."""

    landmarks: np.ndarray  # [478, 2] float64: pixels of the crop
    blendshapes: np.ndarray  # [52] float32 in [0, 1]
    camera: np.ndarray  # [25] float64: the EG3D camera of the crop (PnP of the rigid landmarks)


def read_crop(crop: np.ndarray, landmarker: FaceLandmarker, mesh: CanonicalMesh) -> CropFace | None:
    """A square RGB uint8 crop ``[S, S, 3]`` -> its :class:`CropFace`, or None when the landmarker finds no face."""
    if crop.ndim != 3 or crop.shape[0] != crop.shape[1]:
        raise ValueError(f"read_crop: crop must be a square [S, S, 3] image, got {crop.shape}")
    face = landmarker.detect(crop)
    if face is None:
        return None
    return CropFace(face.landmarks, face.blendshapes, solve_camera(mesh, face.landmarks, crop.shape[0]))


@dataclass(frozen=True)
class PhotoFace:
    """One face of a still photo, cut and measured as :func:`read_video_faces` cuts and measures a video frame."""

    params: ClipParameters  # a one-frame clip (frame_index [0]): crop box, landmarks, camera, expression
    crop: np.ndarray  # [size, size, 3] uint8: the photo cut by params.boxes, as cut_crops cuts a frame

    @property
    def landmarks(self) -> np.ndarray:
        return self.params.landmarks[0]  # [478, 2] float64: crop pixels

    @property
    def camera(self) -> np.ndarray:
        return self.params.cameras[0]  # [25] float64: EG3D camera of the crop

    @property
    def blendshapes(self) -> np.ndarray:
        return self.params.expression[0]  # [52] float32 in [0, 1]


def photo_faces(image: np.ndarray, landmarker: FaceLandmarker, mesh: CanonicalMesh, size: int) -> list[PhotoFace]:
    """Every face of a photo # [H, W, 3] uint8 RGB, left to right, each as ``prepare`` would make a video frame of it.

    :func:`~export3d.data.face_detect.find_faces` (what :func:`track_faces` runs on a video's first frame), then,
    per face, :func:`clip_parameters` of a one-frame track without smoothing and the crop of :func:`cut_crops`:
    so a source photo's crop, camera and expression are those of the same picture as a frame of a prepared clip.
    An empty list when no face is found (``face_detect.search_note(image.shape)`` says what was searched).
    """
    if size < 1:
        raise ValueError(f"photo_faces: size must be >= 1, got {size}")
    photos = []
    for face in find_faces(image, landmarker):
        track = FaceTrack(np.zeros(1, np.int64), face.landmarks[None], face.blendshapes[None], 1, 1, 1)
        params = clip_parameters(track, mesh, size, smooth_sigma=0.0)
        crop = crop_frame(image, params.boxes.corner[0], float(params.boxes.side[0]), size)
        photos.append(PhotoFace(params, crop))
    return photos
