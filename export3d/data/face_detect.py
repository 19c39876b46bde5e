"""Faces of any size in any image: a whole-image detector, then MediaPipe's landmarker on a crop around each face.

MediaPipe's face landmarker finds a face with its own short-range detector, made for selfies: it sees the image at
128 x 128, so a face of a few percent of a large frame (a full-body video: 0 of 103 frames) is never found. Two
stages fix that (the measurements behind the choices are in ``docs/data.md``, "Finding the face"):

1. :func:`detect_faces`: dlib's HOG frontal face detector over the whole image, resized so that the smallest face
   searched (:func:`smallest_face`: 10 % of sqrt(H W), i.e. 1 % of the image area, and at least 40 px) becomes
   the detector's 80 px window; a large image is so downscaled (a 2048 px photo to about 800 px), a small one
   upscaled, and detection always costs about the same (0.05-0.1 s on one core).
2. :func:`find_faces`: for each box, and for the faces MediaPipe finds on the whole image (large faces at any roll,
   which the frontal HOG detector misses beyond about 45 degrees), a square crop around the face, resized to
   256 px so that the landmarker sees a large face, MediaPipe's landmarker on it (IMAGE mode), and the 478
   landmarks mapped back to image pixels. A box where the landmarker finds no face is dropped (HOG's weak
   false boxes end there); two results on the same face are merged.

:class:`FaceTracker` follows one face through a video: the detection stage on the first frame and whenever the
face is lost, otherwise only the landmark stage, in a window around the face. MediaPipe's VIDEO mode tracks its
regions of interest in its own input's coordinates, so the window stays put while the face stays near its centre
(the tracking is then MediaPipe's own, as on a whole frame) and is moved, with the landmarker reset, only when
the face has moved or changed size enough; a crop that moved with the face every frame would need IMAGE mode
(a fresh detection in each crop), measured to jitter more (``docs/data.md``).

``dlib``, ``cv2`` and ``mediapipe`` are imported inside the functions that use them (the ``faces`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from export3d.data.landmarker import Face, FaceLandmarker
from export3d.utils.extras import require

MIN_FACE_FRACTION = 0.1  # smallest face side searched / sqrt(H W): a face of 1 % of the image area
MIN_FACE_PX = 40  # ... and never below this side (smaller faces give no usable landmarks; bounds the upscaling)
HOG_FACE_PX = 80  # the smallest face is resized to this side: dlib's HOG window (the astronaut: 60 px found, 48 not)
BOX_TO_FACE = 1.1  # face side (of the 468 landmarks' bounding box) / HOG box side: median 1.09 on real photos
CROP_ENLARGE = 2.3  # crop side / face side: the whole head and some margin (2.5 x the HOG box)
CROP_SIZE = 256  # the crop the landmarker sees, in pixels
MAX_OFFSET = 0.5  # a face found in a crop belongs to it when its centre is this many face sides from the expected
TRACK_OFFSET = 1.0  # ... and in the tracker's window, from the previous frame's face (a fast move stays followed)
SAME_FACE_IOU = 0.5  # two results whose landmark boxes overlap this much are the same face
WINDOW_MOVE = 0.1  # the tracker's window is moved when the face centre is off its centre by this share of its side
WINDOW_SCALE = 0.15  # ... or when the face's size changed by this log ratio (16 %)


def _check(image: np.ndarray, name: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{name} must be an [H, W, 3] uint8 RGB array, got {got}")


def smallest_face(shape: tuple[int, ...]) -> float:
    """Side in pixels of the smallest face :func:`detect_faces` searches in an image of ``shape`` (H, W, ...)."""
    h, w = shape[:2]
    return max(MIN_FACE_FRACTION * float(np.sqrt(h * w)), float(MIN_FACE_PX))


def search_note(shape: tuple[int, ...]) -> str:
    """What was searched, for a "no face" message: the smallest face side in pixels and as a share of the area."""
    h, w = shape[:2]
    side = smallest_face(shape)
    return (f"faces were searched from {side:.0f} px ({100 * side * side / (h * w):.1f} % of the {w} x {h} image's "
            "area) upwards, frontal to about 45 degrees of roll for small faces")  # fmt: skip


@dataclass(frozen=True)
class FaceBox:
    """One face found by :func:`detect_faces`, in pixels of the input image (continuous: 0 = the left edge)."""

    left: float
    top: float
    right: float
    bottom: float
    score: float  # dlib's HOG detection score (0 = the detector's threshold; 0.16-2.7 measured on real faces)

    @property
    def centre(self) -> np.ndarray:
        return np.array([(self.left + self.right) / 2, (self.top + self.bottom) / 2])  # [2] x, y

    @property
    def side(self) -> float:
        return max(self.right - self.left, self.bottom - self.top)


def detect_faces(image: np.ndarray) -> list[FaceBox]:
    """Boxes of every frontal face in an RGB uint8 image # [H, W, 3], faces of ``smallest_face`` upwards, left to right.

    dlib's HOG detector (no model file) at upsample 0 on the image resized by ``HOG_FACE_PX / smallest_face``.
    The box is dlib's: about the eyebrows to the chin, a little narrower than the face.
    """
    _check(image)
    cv2 = require("cv2")
    scale = HOG_FACE_PX / smallest_face(image.shape)
    h, w = image.shape[:2]
    size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
    small = image if size == (w, h) else cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1
                                                     else cv2.INTER_LINEAR)  # fmt: skip
    sx, sy = size[0] / w, size[1] / h
    rects, scores, _ = _hog().run(np.ascontiguousarray(small), 0, 0.0)
    boxes = [FaceBox(r.left() / sx, r.top() / sy, (r.right() + 1) / sx, (r.bottom() + 1) / sy, float(s))
             for r, s in zip(rects, scores, strict=True)]  # fmt: skip
    return sorted(boxes, key=lambda b: b.centre[0])


@lru_cache(maxsize=1)
def _hog():
    """dlib's HOG frontal face detector, built once (about 0.1 s)."""
    return require("dlib").get_frontal_face_detector()


# ----------------------------------------------------------------------------------------------- landmark stage
def face_extent(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """landmarks # [478, 2] -> centre # [2] and side (the larger side) of the 468 mesh points' bounding box."""
    lo, hi = landmarks[:468].min(0), landmarks[:468].max(0)
    return (lo + hi) / 2, float((hi - lo).max())


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of the mesh bounding boxes of two landmark sets # [478, 2]."""
    lo = np.maximum(a[:468].min(0), b[:468].min(0))
    hi = np.minimum(a[:468].max(0), b[:468].max(0))
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    area = [float(np.prod(p[:468].max(0) - p[:468].min(0))) for p in (a, b)]
    return inter / max(area[0] + area[1] - inter, 1e-9)


def _inside(point: np.ndarray, landmarks: np.ndarray) -> bool:
    """Whether ``point`` # [2] lies in the bounding box of the 468 mesh points of ``landmarks`` # [478, 2]."""
    return bool(((point >= landmarks[:468].min(0)) & (point <= landmarks[:468].max(0))).all())


def _step(side: int, size: int = CROP_SIZE) -> int:
    """Integer factor by which :func:`cut_square` shrinks the image before cutting a ``side`` px square, so that no
    patch much larger than ``size`` is allocated (a face filling a 48 Mpixel photo would need gigabytes)."""
    return max(side // (2 * size), 1)


def cut_square(image: np.ndarray, corner: np.ndarray, side: int, size: int) -> np.ndarray:
    """The square ``[corner, corner + side)`` (integer pixels; black outside the image) resized to ``size`` px.

    Pixel ``c`` (continuous) of the result is exactly ``corner + c * side / size`` of the image: nothing is
    interpolated before the final resize except block averages over ``_step(side)`` pixels, for which ``corner``
    and ``side`` must be multiples of it (:func:`_square` makes them so). Black, not mirrored, outside the image:
    a mirrored face would be a second face in the crop.
    """
    cv2 = require("cv2")
    step = _step(side, size)
    x0, y0 = int(corner[0]), int(corner[1])
    if x0 % step or y0 % step or side % step:
        raise ValueError(f"cut_square: corner {tuple(corner)} and side {side} must be multiples of {step}")
    h, w = image.shape[:2]
    n = side // step
    patch = np.zeros((n, n, 3), np.uint8)
    xs, ys = max(x0, 0), max(y0, 0)
    xe = xs + (min(x0 + side, w) - xs) // step * step  # the covered part of the image, whole blocks only
    ye = ys + (min(y0 + side, h) - ys) // step * step
    if xe > xs and ye > ys:
        region = image[ys:ye, xs:xe]
        if step > 1:
            region = cv2.resize(region, ((xe - xs) // step, (ye - ys) // step), interpolation=cv2.INTER_AREA)
        patch[(ys - y0) // step:(ye - y0) // step, (xs - x0) // step:(xe - x0) // step] = region
    if n == size:
        return patch
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if n > size else cv2.INTER_LINEAR)


def _square(centre: np.ndarray, face_side: float) -> tuple[np.ndarray, int]:
    """The crop around a face: integer top-left corner # [2] and side of the ``CROP_ENLARGE * face_side`` square
    (both rounded to multiples of :func:`_step`)."""
    side = max(int(round(CROP_ENLARGE * face_side)), 8)
    step = _step(side)
    side = step * -(-side // step)
    corner = step * np.round((np.asarray(centre, dtype=np.float64) - side / 2) / step).astype(np.int64)
    return corner, side


def landmarks_near(image: np.ndarray, centre: np.ndarray, face_side: float, landmarker: FaceLandmarker) -> Face | None:
    """The landmark stage for one face expected at ``centre`` # [2] with a face side of ``face_side`` px.

    A ``CROP_ENLARGE * face_side`` square around ``centre``, resized to ``CROP_SIZE``, MediaPipe's landmarker on
    it (IMAGE mode); of the faces found, the one nearest the centre, if within ``MAX_OFFSET * face_side`` of it,
    with its landmarks in image pixels. None when there is none.
    """
    corner, side = _square(centre, face_side)
    crop = cut_square(image, corner, side, CROP_SIZE)
    faces = [Face(f.landmarks * (side / CROP_SIZE) + corner, f.blendshapes) for f in landmarker.detect_all(crop)]
    if not faces:
        return None
    distance = [float(np.linalg.norm(face_extent(f.landmarks)[0] - centre)) for f in faces]
    best = int(np.argmin(distance))
    return faces[best] if distance[best] <= MAX_OFFSET * face_side else None


def find_faces(image: np.ndarray, landmarker: FaceLandmarker) -> list[Face]:
    """Every face of an RGB uint8 image # [H, W, 3], left to right (by the centre of its landmarks).

    Landmarks [478, 2] in image pixels and 52 blendshapes per face, as :class:`~export3d.data.landmarker.Face`.
    Candidates: the boxes of :func:`detect_faces` and the faces MediaPipe's landmarker finds on the whole image;
    each goes through the landmark stage (:func:`landmarks_near`); candidates whose crop holds no face are dropped,
    and of two results on the same face (landmark boxes overlapping by ``SAME_FACE_IOU``) the first is kept.
    """
    _check(image)
    seeds = [(box.centre, BOX_TO_FACE * box.side) for box in detect_faces(image)]
    seeds += [face_extent(face.landmarks) for face in landmarker.detect_all(image)]
    found: list[Face] = []
    for centre, side in seeds:
        if any(_inside(centre, f.landmarks) for f in found):  # a face already found (HOG's and MediaPipe's seeds)
            continue
        face = landmarks_near(image, centre, side, landmarker)
        if face is not None and all(_overlap(face.landmarks, f.landmarks) < SAME_FACE_IOU for f in found):
            found.append(face)
    return sorted(found, key=lambda f: face_extent(f.landmarks)[0][0])


# ----------------------------------------------------------------------------------------------- tracking
class FaceTracker:
    """One face followed through a video: ``track(frame) -> Face | None``, frames in order. Not thread-safe.

    The first frame, and every frame after one where the face was lost, goes through :func:`find_faces`; at the
    first detection the tracker picks face ``index`` (left to right) or, by default, the largest, after a loss the
    face nearest to where it was last seen. The frames in between only go through the landmark stage, on a window
    around the face: a ``CROP_ENLARGE`` square cut to ``CROP_SIZE`` px, where the landmarker's VIDEO mode (when
    ``landmarker.video``) tracks the face as it tracks it in a whole frame. The window stays put while the face
    stays near its centre and keeps its size, so MediaPipe's regions of interest stay in fixed coordinates; when
    the face has moved by ``WINDOW_MOVE`` of the window's side or changed size by ``WINDOW_SCALE`` (log ratio), the
    window is centred on it again and the landmarker reset, as after a cut. ``detections`` counts the frames that
    ran :func:`find_faces`, ``moves`` the windows placed (detections included).
    """

    def __init__(self, landmarker: FaceLandmarker, index: int | None = None):
        if index is not None and index < 0:
            raise ValueError(f"FaceTracker: index must be >= 0 (faces are numbered left to right), got {index}")
        self.landmarker = landmarker
        self.index = index
        self.reset()

    def reset(self) -> None:
        """Forget the face: the next frame starts a new video."""
        self.detections = self.moves = 0
        self._window: tuple[np.ndarray, float] | None = None  # (centre [2], face side) while the face is followed
        self._previous: tuple[np.ndarray, float] | None = None  # the previous frame's face: centre [2], side
        self._seen: Face | None = None  # the last face found, for picking it again after a loss
        self._time = -1  # ms: the landmarker's VIDEO mode needs increasing timestamps

    def track(self, frame: np.ndarray, time_ms: int | None = None) -> Face | None:
        """The followed face in ``frame`` # [H, W, 3] uint8 RGB, or None when it is not found in this frame.

        ``time_ms``: the frame's time, increasing through the video (default: 40 ms after the previous frame).
        """
        _check(frame, "frame")
        self._time = self._time + 40 if time_ms is None else int(time_ms)
        face = self._follow(frame) if self._window is not None else None
        if face is None:
            self._window = None
            self.detections += 1
            face = self._pick(find_faces(frame, self.landmarker))
        if face is None:
            self._previous = None
            return None
        self._seen = face
        self._previous = face_extent(face.landmarks)
        self._place(*self._previous)
        return face

    def _follow(self, frame: np.ndarray) -> Face | None:
        """The landmark stage in the current window; None when the face is not there (lost)."""
        centre, side = self._window
        corner, n = _square(centre, side)
        found = self.landmarker.detect(cut_square(frame, corner, n, CROP_SIZE), self._time)
        if found is None:
            return None
        face = Face(found.landmarks * (n / CROP_SIZE) + corner, found.blendshapes)
        last, last_side = self._previous
        return face if np.linalg.norm(face_extent(face.landmarks)[0] - last) <= TRACK_OFFSET * last_side else None

    def _place(self, centre: np.ndarray, side: float) -> None:
        """Keep the window, or centre a new one on the face (and reset the landmarker's tracking)."""
        if self._window is not None:
            window_centre, window_side = self._window
            off = float(np.linalg.norm(centre - window_centre)) / (CROP_ENLARGE * window_side)
            if off <= WINDOW_MOVE and abs(np.log(side / window_side)) <= WINDOW_SCALE:
                return
        self._window = (centre, side)
        self.moves += 1
        self.landmarker.reset()

    def _pick(self, faces: list[Face]) -> Face | None:
        if not faces:
            return None
        if self._seen is not None:  # found before: the face nearest to where it was
            last = face_extent(self._seen.landmarks)[0]
            return min(faces, key=lambda f: float(np.linalg.norm(face_extent(f.landmarks)[0] - last)))
        if self.index is None:
            return max(faces, key=lambda f: face_extent(f.landmarks)[1])
        if self.index >= len(faces):
            raise ValueError(f"FaceTracker: face index {self.index} asked, but the first frame with a face has "
                             f"{len(faces)} face(s) (numbered left to right from 0)")  # fmt: skip
        return faces[self.index]
