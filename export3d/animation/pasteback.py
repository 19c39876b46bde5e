"""Paste-back: a rendered face crop put back into the source photo, blended with a feathered face mask.

The inverse of the crop (:mod:`export3d.data.crop`): the crop of a photo is the square ``(corner x, corner y, side)``
in its pixels, by translation and scale only, so a rendered crop of any size ``S`` goes back by the same two: crop
pixel edge ``u`` (0 to S) lands at photo edge coordinate ``corner + u * side / S``. (``crop_frame`` samples the
square through a whole-pixel patch first; the two agree to a quarter of a photo pixel.) A crop that reaches past
the photo's border (``prepare`` mirrors the photo there) is pasted where it overlaps the photo only.

The mask (:class:`FeatherEllipse`, the default) is an ellipse in crop units, fitted to MediaPipe's face oval (its
36 landmarks) of the canonical face under EG3D's frontal camera, the view the crop is calibrated on: centre
(0.5, 0.485), semi-axes (0.33, 0.40) of the crop side; the oval lies within 1.15 of it (the temples). The mask is 1
inside ``inner`` = 1.05 times that ellipse and falls to 0 at ``outer`` = 1.2 times it by a smoothstep of the
elliptical radius: the feather of a Gaussian-blurred edge, but with compact support, so every photo pixel outside
the outer ellipse is the photo's, bit for bit, and the ellipse stays inside the crop (no pixel is taken from
outside the render). Any other mask (e.g. drawn from the source's own landmarks and blurred) can be given as an
image in crop pixels.

:class:`PasteBack` does everything that depends on the source only once (the photo scaled to ``max_size``, the
box, the mask and the region it covers, the blend's photo term); a call then resamples one crop into that region
and blends: streaming-friendly, one frame at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatherEllipse:
    """An elliptical face mask in crop units (x right, y down, the crop spans [0, 1]) with a smoothstep edge."""

    centre: tuple[float, float] = (0.5, 0.485)
    axes: tuple[float, float] = (0.33, 0.40)  # semi-axes (x, y)
    inner: float = 1.05  # the mask is 1 inside this multiple of the ellipse ...
    outer: float = 1.2  # ... and 0 outside this one

    def __post_init__(self):
        if not (min(self.axes) > 0 and 0 <= self.inner < self.outer):
            raise ValueError(f"FeatherEllipse needs axes > 0 and 0 <= inner < outer, got {self}")

    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in crop units: where the mask can be non-zero."""
        (cx, cy), (ax, ay) = self.centre, self.axes
        return cx - ax * self.outer, cy - ay * self.outer, cx + ax * self.outer, cy + ay * self.outer

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The mask at crop coordinates u, v (any matching shapes) -> values in [0, 1], float32."""
        radius = np.hypot((u - self.centre[0]) / self.axes[0], (v - self.centre[1]) / self.axes[1])
        t = np.clip((self.outer - radius) / (self.outer - self.inner), 0.0, 1.0)
        return (t * t * (3 - 2 * t)).astype(np.float32)


def _box(box) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (3,) or not np.isfinite(box).all() or not box[2] > 0:
        raise ValueError(f"box must be (corner x, corner y, side > 0) in photo pixels, got {box}")
    return box


def _photo(photo) -> np.ndarray:
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3 or min(photo.shape[:2]) < 1:
        raise ValueError(f"photo must be an RGB uint8 image [H, W, 3], got {photo.dtype} {photo.shape}")
    return photo


class PasteBack:
    """Rendered crops of a source photo -> frames of the photo at its resolution (longer side at most ``max_size``).

    ``photo`` RGB uint8 ``[H, W, 3]``; ``box`` the crop ``(corner x, corner y, side)`` in its pixels; ``mask`` a
    :class:`FeatherEllipse` or a square crop-space image ``[s, s]`` of values in [0, 1] (resampled like the crops).
    """

    def __init__(self, photo, box, max_size: int | None = 1280, mask: FeatherEllipse | np.ndarray = FeatherEllipse()):
        import cv2

        photo, box = _photo(photo), _box(box)
        if max_size is not None and max_size < 2:
            raise ValueError(f"max_size must be >= 2 or None, got {max_size}")
        scale = 1.0 if max_size is None else min(1.0, max_size / max(photo.shape[:2]))
        if scale < 1.0:
            size = (max(1, round(photo.shape[1] * scale)), max(1, round(photo.shape[0] * scale)))  # (w, h)
            photo = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
            box = box * scale
        self.photo = np.ascontiguousarray(photo)  # [H, W, 3] uint8: the frame every output starts from
        self.box = box  # [3] float64: the crop in the (scaled) photo's pixels
        self.photo.flags.writeable = False
        corner, side = box[:2], float(box[2])
        height, width = photo.shape[:2]

        if isinstance(mask, FeatherEllipse):
            u0, v0, u1, v1 = mask.bounds()
            x0, y0 = max(0, math.floor(corner[0] + u0 * side)), max(0, math.floor(corner[1] + v0 * side))
            x1 = min(width, math.ceil(corner[0] + u1 * side))
            y1 = min(height, math.ceil(corner[1] + v1 * side))
            x1, y1 = max(x0, x1), max(y0, y1)
            u = (np.arange(x0, x1) + 0.5 - corner[0]) / side  # [w] crop units of the region's pixel centres
            v = (np.arange(y0, y1) + 0.5 - corner[1]) / side  # [h]
            weight = mask(u[None, :], v[:, None])  # [h, w]
        else:
            weight, (x0, y0, x1, y1) = self._warped_mask(np.asarray(mask, dtype=np.float32), corner, side,
                                                         (width, height))  # fmt: skip
        self.region = (x0, y0, x1, y1)  # the photo pixels a crop can change
        self.mask = weight[..., None]  # [h, w, 1] float32 in [0, 1]
        # the photo's share of the blend, computed once: out = mask * crop + (1 - mask) * photo
        self._base = (1.0 - self.mask) * self.photo[y0:y1, x0:x1].astype(np.float32)  # [h, w, 3]

    def _warp(self, size: int, x0: int, y0: int) -> np.ndarray:
        """Affine map from a ``size`` x ``size`` crop's pixel indices to the region's (cv2's centre convention)."""
        k = float(self.box[2]) / size
        return np.array([[k, 0.0, self.box[0] + 0.5 * k - 0.5 - x0], [0.0, k, self.box[1] + 0.5 * k - 0.5 - y0]])

    def _warped_mask(self, mask: np.ndarray, corner: np.ndarray, side: float, frame: tuple[int, int]):
        import cv2

        if mask.ndim != 2 or mask.shape[0] != mask.shape[1] or mask.size == 0 or not 0 <= mask.min() <= mask.max() <= 1:
            raise ValueError(f"mask must be a square crop-space image [s, s] of values in [0, 1], got {mask.shape}")
        width, height = frame
        x0, y0 = max(0, math.floor(corner[0])), max(0, math.floor(corner[1]))
        x1, y1 = min(width, math.ceil(corner[0] + side)), min(height, math.ceil(corner[1] + side))
        if x1 <= x0 or y1 <= y0:
            return np.zeros((0, 0), np.float32), (x0, y0, x0, y0)
        # replicated edges: the region is the box's own pixels, so a pixel the box covers in part keeps its value
        weight = cv2.warpAffine(mask, self._warp(mask.shape[0], x0, y0), (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        weight = np.clip(weight, 0.0, 1.0)
        rows, cols = np.flatnonzero(weight.any(1)), np.flatnonzero(weight.any(0))
        if len(rows) == 0:
            return np.zeros((0, 0), np.float32), (x0, y0, x0, y0)
        weight = weight[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        return weight, (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the frames."""
        return self.photo.shape[0], self.photo.shape[1]

    def __call__(self, crop, into: np.ndarray | None = None) -> np.ndarray:
        """A rendered crop, RGB uint8 ``[S, S, 3]`` (any S) -> the frame ``[H, W, 3]`` uint8: a new array, or ``into``
        (a frame of this size that another face was pasted into already) changed in place and returned."""
        import cv2

        crop = np.asarray(crop)
        if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1]:
            raise ValueError(f"crop must be a square RGB uint8 image [S, S, 3], got {crop.dtype} {crop.shape}")
        if into is not None and (into.shape != self.photo.shape or into.dtype != np.uint8):
            raise ValueError(f"into must be a frame {self.photo.shape} uint8, got {into.shape} {into.dtype}")
        frame = self.photo.copy() if into is None else into
        x0, y0, x1, y1 = self.region
        if x1 <= x0 or y1 <= y0:
            return frame
        side = float(self.box[2])
        if crop.shape[0] > side + 1:  # shrinking: average first (no aliasing), then place by a sub-pixel warp
            n = max(1, round(side))
            crop = cv2.resize(crop, (n, n), interpolation=cv2.INTER_AREA)
        warped = cv2.warpAffine(crop, self._warp(crop.shape[0], x0, y0), (x1 - x0, y1 - y0), flags=cv2.INTER_CUBIC,
                                borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        base = self._base if into is None else (1.0 - self.mask) * into[y0:y1, x0:x1].astype(np.float32)
        blended = base + self.mask * warped.astype(np.float32)  # [h, w, 3]; = the frame where mask is 0
        frame[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return frame
