"""Square face crops by translation and scale only, smoothed over time (EG3D's in-the-wild preprocessing).

No rotation: the head's in-plane roll stays in the image and so goes into the camera. The crop of a frame
comes from two landmark measures that do not change with roll, as in FFHQ's alignment: the point
``eye_avg + 0.1 * eye_to_mouth`` (its centre) and ``max(2.0 |eye_to_eye|, 1.8 |eye_to_mouth|)`` (its size).
Both are calibrated on the canonical mesh seen by EG3D's frontal camera, so that a frontal face is cropped
exactly as that camera sees it: centred and sized so that PnP puts the camera 2.7 from the origin.
Centre and size are then smoothed over the clip's frames with a Gaussian, so the crop does not jitter: over a whole
clip at once (:func:`smooth`, :func:`crop_boxes`), or a frame at a time with a look-ahead of ``ceil(3 sigma)``
frames (:class:`StreamingSmoother`, what ``prepare`` runs), which gives the same values.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from export3d.data.headpose import FRONTAL_CAMERA, mesh_to_world, project
from export3d.data.landmarker import CanonicalMesh
from export3d.utils.extras import require

# MediaPipe face-mesh ids: eye corners (subject's right eye 33/133, left eye 362/263) and mouth corners.
RIGHT_EYE, LEFT_EYE, MOUTH = (33, 133), (362, 263), (61, 291)


def face_measures(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """landmarks # [..., >=468, 2] -> anchor point # [..., 2] and size measure # [...] (same units)."""
    eye_r = points[..., RIGHT_EYE, :].mean(-2)
    eye_l = points[..., LEFT_EYE, :].mean(-2)
    mouth = points[..., MOUTH, :].mean(-2)
    eye_avg = (eye_r + eye_l) / 2
    eye_to_eye = eye_l - eye_r
    eye_to_mouth = mouth - eye_avg
    size = np.maximum(2.0 * np.linalg.norm(eye_to_eye, axis=-1), 1.8 * np.linalg.norm(eye_to_mouth, axis=-1))
    return eye_avg + 0.1 * eye_to_mouth, size


def calibration(mesh: CanonicalMesh) -> tuple[np.ndarray, float]:
    """(anchor position in the crop, size measure / crop side) of the canonical face under the frontal camera."""
    uv = project(FRONTAL_CAMERA, mesh_to_world(mesh))  # [468, 2] in a crop of side 1
    anchor, size = face_measures(uv)
    return anchor, float(size)


@dataclass(frozen=True)
class CropBoxes:
    corner: np.ndarray  # [T, 2] float64: top-left corner (x, y) of each crop in frame pixels
    side: np.ndarray  # [T] float64: side of each crop in frame pixels

    def to_crop(self, points: np.ndarray, size: int) -> np.ndarray:
        """Frame pixels # [T, N, 2] -> pixels of the ``size`` x ``size`` crops # [T, N, 2]."""
        return (points - self.corner[:, None]) * (size / self.side)[:, None, None]


def smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0. # [T, ...] -> [T, ...] float64

    The ends are extended by point reflection (``2 x[0] - x[k]``), so a face moving steadily at the start or the
    end of a clip is followed without lag (a plain truncated kernel would pull the crop back there).
    """
    values = np.asarray(values, dtype=np.float64)
    radius = min(int(np.ceil(3 * sigma)), len(values) - 1)
    if sigma <= 0 or radius < 1:
        return values.copy()
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    flat = values.reshape(len(values), -1)
    head = 2 * flat[0] - flat[1:radius + 1][::-1]
    tail = 2 * flat[-1] - flat[-radius - 1:-1][::-1]
    padded = np.concatenate([head, flat, tail])
    out = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(flat.shape[1])], 1)
    return out.reshape(values.shape)


def crop_boxes(mesh: CanonicalMesh, landmarks: np.ndarray, sigma: float = 2.0) -> CropBoxes:
    """Smoothed crops of a clip: landmarks # [T, >=468, 2] in frame pixels (the kept frames, in order)."""
    anchor_ref, size_ref = calibration(mesh)
    anchor, size = face_measures(landmarks)
    side = smooth(size / size_ref, sigma)
    anchor = smooth(anchor, sigma)
    return CropBoxes(anchor - anchor_ref[None] * side[:, None], side)


def _kernel(sigma: float, radius: int) -> np.ndarray:
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2) if radius > 0 else np.ones(1)
    return kernel / kernel.sum()


class StreamingSmoother:
    """:func:`smooth` of one clip at a time, fed a frame at a time, with a look-ahead of ``ceil(3 sigma)`` frames.

    ``push(item, value)`` adds the next frame of the open clip (``value`` # [D]) with anything to carry along
    (``item``: the frame itself) and returns the ``(item, smoothed value)`` pairs now final; ``flush()`` ends the
    clip and returns the rest. Over a clip the smoothed values are those of :func:`smooth` over all its values
    (the same kernel and the same point reflection at both ends; equal up to rounding), but at most
    ``radius + 1`` items are held and ``2 radius + 1`` values kept, however long the clip: a frame's smoothed
    value needs only its ``radius`` neighbours on each side, and the ends it reflects about lie among them.
    """

    def __init__(self, sigma: float):
        if sigma < 0:
            raise ValueError(f"StreamingSmoother: sigma must be >= 0, got {sigma}")
        self.sigma = sigma
        self.radius = int(np.ceil(3 * sigma)) if sigma > 0 else 0
        self._reset()

    def _reset(self) -> None:
        self._values: deque[np.ndarray] = deque()  # clip positions self._first ... self._count - 1
        self._items: deque = deque()  # items of positions self._next ... self._count - 1, not yet returned
        self._first = self._next = self._count = 0

    @property
    def pending(self) -> int:
        """Items pushed and not yet returned."""
        return len(self._items)

    def push(self, item, value: np.ndarray) -> list[tuple[object, np.ndarray]]:
        self._values.append(np.asarray(value, dtype=np.float64))
        self._items.append(item)
        self._count += 1
        out = []
        while self._next + self.radius < self._count:  # all the neighbours of position _next are in
            out.append(self._emit(self.radius, None))
        return out

    def flush(self) -> list[tuple[object, np.ndarray]]:
        """End the clip: the remaining items with their smoothed values (the clip's end now known)."""
        length = self._count
        radius = min(self.radius, length - 1) if length else 0  # smooth() narrows the kernel of a short clip
        out = [self._emit(radius, length) for _ in range(len(self._items))]
        self._reset()
        return out

    def _emit(self, radius: int, length: int | None) -> tuple[object, np.ndarray]:
        """The item at position ``_next`` with its smoothed value (``length``: the clip's, once it has ended)."""
        i, last = self._next, (self._count if length is None else length) - 1
        positions = np.arange(i - radius, i + radius + 1)
        window = []
        for j in positions:  # point reflection about the clip's ends, as smooth() pads
            if j < 0:
                window.append(2 * self._value(0) - self._value(-j))
            elif length is not None and j > last:
                window.append(2 * self._value(last) - self._value(2 * last - j))
            else:
                window.append(self._value(j))
        value = _kernel(self.sigma, radius) @ np.stack(window) if radius > 0 else self._value(i).copy()
        self._next += 1
        while self._first < self._next - self.radius:  # values no later frame needs
            self._values.popleft()
            self._first += 1
        return self._items.popleft(), value

    def _value(self, position: int) -> np.ndarray:
        return self._values[position - self._first]


def crop_frame(frame: np.ndarray, corner: np.ndarray, side: float, size: int) -> np.ndarray:
    """Cut the square (corner, side) out of frame # [H, W, 3] uint8 and resize it to size x size (uint8).

    Sub-pixel translation by ``warpAffine`` at about the source scale, then an area-averaging resize (no
    aliasing when shrinking); outside the frame the image is mirrored, as in EG3D's in-the-wild crops.
    """
    cv2 = require("cv2")
    n = max(int(round(side)), 1)
    scale = n / side
    warp = np.array([[scale, 0.0, -corner[0] * scale], [0.0, scale, -corner[1] * scale]])
    patch = cv2.warpAffine(frame, warp, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if n == size:
        return patch
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if n > size else cv2.INTER_CUBIC)
