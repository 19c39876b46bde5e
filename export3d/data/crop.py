"""Square face crops by translation and scale only, smoothed over time (EG3D's in-the-wild preprocessing).

No rotation: the head's in-plane roll stays in the image and so goes into the camera. The crop of a frame
comes from two landmark measures that do not change with roll, as in FFHQ's alignment: the point
``eye_avg + 0.1 * eye_to_mouth`` (its centre) and ``max(2.0 |eye_to_eye|, 1.8 |eye_to_mouth|)`` (its size).
Both are calibrated on the canonical mesh seen by EG3D's frontal camera, so that a frontal face is cropped
exactly as that camera sees it: centred and sized so that PnP puts the camera 2.7 from the origin.
Centre and size are then smoothed over the clip's frames with a Gaussian, so the crop does not jitter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export3d.data.headpose import FRONTAL_CAMERA, mesh_to_world, project
from export3d.data.landmarker import CanonicalMesh, require

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
