"""The One Euro filter (Casiez, Roussel, Vogel, CHI 2012) over the driving signals of a video.

A face tracker's per-frame output jitters: a still head's camera shakes by tenths of a degree and its blendshapes
by hundredths, and the animation shakes with them. A fixed low-pass removes the jitter but makes fast motion lag;
the One Euro filter is a first-order low-pass whose cutoff grows with the speed of the signal,
``f_c = min_cutoff + beta * |dx/dt|``, with the speed itself low-passed at ``d_cutoff``: smooth at rest, quick in
a head turn. Each frame, the filtered value moves towards the new one by ``alpha = 1 / (1 + tau / T_e)``,
``tau = 1 / (2 pi f_c)``, ``T_e`` the time since the last frame fed (1 / fps). As in the authors' reference code
(``OneEuroFilter.py``), the speed is the difference of the new raw value and the previous raw value over ``T_e``.

- :class:`OneEuroFilter`: values ``[D]`` one frame at a time (:meth:`~OneEuroFilter.update`), vectorised over
  ``D``: one cutoff per component, or one for the whole vector from its speed's norm (``joint``: a point, so the
  result does not depend on the axes). :func:`one_euro` runs it over a whole sequence ``[T, D]``.
- :class:`RotationFilter`: rotations, filtered in the tangent space at the previous filtered rotation: with the
  rotation vector ``e = log(R_t R_hat^T)`` from the filtered to the new rotation, ``R_hat <- exp(alpha e) R_hat``;
  the speed is the rotation vector ``log(R_t R_{t-1}^T)`` between raw frames, in degrees, over ``T_e``. The result
  is a rotation by construction (and is re-orthonormalised against rounding).
- :class:`CameraFilter`: a 25-value camera: the head pose it sees (:func:`~export3d.animation.motion.head_pose`):
  rotation by :class:`RotationFilter`, the head's position in camera coordinates by a joint :class:`OneEuroFilter`;
  the intrinsics are passed through. Filtering the head's pose rather than the cam2world matrix keeps rotation and
  translation apart (a camera orbiting the head moves its centre with every turn).
- :class:`CropFilter`: a crop ``(corner x, corner y, side)``: its centre (joint) and side, in units of the first
  crop's side, so one setting suits every video size.
- :class:`DrivingFilter`: the three together, with :class:`DrivingFilterSettings`; :func:`filter_expression`,
  :func:`filter_cameras`, :func:`filter_crops` are the whole-sequence forms.

A frame marked missing (no face found: ``None`` in the streaming form, ``valid[t] = False`` or a non-finite row in
the whole-sequence form) is not fed: the output holds the last filtered value, and the next frame's step spans the
whole gap. Frames before the first valid one take the first filtered value in the whole-sequence form (there is
nothing to hold yet); the streaming form returns None for them.

The defaults of :class:`DrivingFilterSettings` were tuned on eight real talking-head videos (25 and 30 fps), trading
jitter (the mean absolute frame-to-frame acceleration) against lag (at each video's fastest head turn, and on
synthetic steps): they cut the jitter of the camera angles by 35-77% (mean 60%), of the blendshapes by 47-60%, of
the head's image position by 36-69% and of the crop by 42-76%, for a lag of 0.35-1.8 frames (14-60 ms) at the
fastest turns and of about one frame for the mouth (jawOpen); a 30 degree yaw step is 90% followed after 0.8 frame.
``benchmarks/bench_driving_filters.py`` re-measures them (``python -m benchmarks.bench_driving_filters VIDEO...``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from export3d.animation.motion import head_camera, head_pose, nearest_rotation


@dataclass(frozen=True)
class OneEuroSettings:
    """The One Euro filter's parameters; speeds are in the filtered signal's units per second."""

    min_cutoff: float = 1.0  # Hz: the cutoff at rest (lower: smoother at rest, more lag at low speeds)
    beta: float = 0.0  # Hz per (unit / s): how fast the cutoff rises with speed (higher: less lag in fast motion)
    d_cutoff: float = 1.0  # Hz: the cutoff of the speed's own low-pass
    joint: bool = False  # one cutoff from the norm of the speed vector (a point, a rotation), not one per component

    def __post_init__(self):
        if not (self.min_cutoff > 0 and self.d_cutoff > 0 and self.beta >= 0):
            raise ValueError(f"OneEuroSettings: min_cutoff and d_cutoff must be > 0 and beta >= 0, got {self}")


def smoothing_factor(cutoff, dt: float):
    """The exponential smoothing factor of a first-order low-pass at ``cutoff`` Hz over ``dt`` seconds.

    ``alpha = 1 / (1 + tau / dt)`` with ``tau = 1 / (2 pi cutoff)``; arrays of cutoffs give arrays.
    """
    r = 2 * math.pi * np.asarray(cutoff, dtype=np.float64) * dt
    return r / (r + 1)


def _rate(rate: float) -> float:
    rate = float(rate)
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate (the video's frames per second) must be a positive number, got {rate}")
    return rate


class _Gain:
    """The adaptive part of the One Euro filter: from the change of the raw signal, the step ``alpha``."""

    def __init__(self, settings: OneEuroSettings, rate: float, dim: int):
        self.settings, self.rate, self.dim = settings, _rate(rate), dim
        self.speed = np.zeros(dim)  # [D]: the low-passed derivative, units / s

    def __call__(self, change: np.ndarray, frames: int) -> np.ndarray:
        """The raw signal's change # [D] over ``frames`` frame periods -> alpha # [D] (or [1] when joint)."""
        s = self.settings
        dt = frames / self.rate
        self.speed = self.speed + smoothing_factor(s.d_cutoff, dt) * (change / dt - self.speed)
        speed = np.linalg.norm(self.speed, keepdims=True) if s.joint else np.abs(self.speed)
        return smoothing_factor(s.min_cutoff + s.beta * speed, dt)


class OneEuroFilter:
    """A streaming One Euro filter over values ``[D]`` sampled at ``rate`` frames per second."""

    def __init__(self, settings: OneEuroSettings, rate: float, dim: int):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.settings, self.rate, self.dim = settings, _rate(rate), int(dim)
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next valid frame passes unchanged."""
        self._gain = _Gain(self.settings, self.rate, self.dim)
        self._value: np.ndarray | None = None  # [D] the last filtered value
        self._raw: np.ndarray | None = None  # [D] the last value fed
        self._frames = 0  # frame periods since the last frame fed

    def update(self, value) -> np.ndarray | None:
        """Feed one frame # [D] (None: missing) -> the filtered value # [D] float64 (None before any frame)."""
        self._frames += 1
        if value is None:
            return None if self._value is None else self._value.copy()
        value = np.asarray(value, dtype=np.float64).reshape(-1)
        if value.shape != (self.dim,):
            raise ValueError(f"value must have {self.dim} components, got shape {np.shape(value)}")
        if self._value is None:
            self._value = value.copy()
        else:
            alpha = self._gain(value - self._raw, self._frames)
            self._value = self._value + alpha * (value - self._value)
        self._raw, self._frames = value.copy(), 0
        return self._value.copy()


def rotation_exp(vector) -> np.ndarray:
    """Rotation vectors (axis * angle, radians) # [..., 3] -> rotation matrices # [..., 3, 3] (Rodrigues)."""
    v = np.asarray(vector, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1)[..., None, None]  # [..., 1, 1]
    k = np.zeros((*v.shape[:-1], 3, 3))  # [..., 3, 3]: the cross-product matrix of v
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    k = k - np.swapaxes(k, -1, -2)
    a = np.sinc(theta / math.pi)  # sin(theta) / theta, stable at 0
    b = 0.5 * np.sinc(theta / (2 * math.pi)) ** 2  # (1 - cos(theta)) / theta^2, stable at 0
    return np.eye(3) + a * k + b * (k @ k)


def rotation_log(rotation) -> np.ndarray:
    """Rotation matrices # [..., 3, 3] -> rotation vectors # [..., 3] with angle in [0, pi] (radians).

    Through the unit quaternion (Shepperd's method: the largest of its four components is computed first), which
    stays accurate near 0 and near pi, where the axis of ``R - R^T`` vanishes.
    """
    r = np.asarray(rotation, dtype=np.float64)
    d0, d1, d2 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    candidates = np.stack([d0 + d1 + d2, d0 - d1 - d2, d1 - d0 - d2, d2 - d0 - d1], axis=-1)  # [..., 4]
    pick = np.argmax(candidates, axis=-1)  # [...]
    big = 0.5 * np.sqrt(np.maximum(1 + np.take_along_axis(candidates, pick[..., None], -1)[..., 0], 1e-300))
    f = 0.25 / big
    sx, sy, sz = r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]
    px, py, pz = r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1]
    q = np.stack([  # [..., 4] as (w, x, y, z) for each choice of the largest component
        np.stack([big, sx * f, sy * f, sz * f], -1),
        np.stack([sx * f, big, px * f, py * f], -1),
        np.stack([sy * f, px * f, big, pz * f], -1),
        np.stack([sz * f, py * f, pz * f, big], -1),
    ], axis=-2)  # fmt: skip
    q = np.take_along_axis(q, pick[..., None, None], -2)[..., 0, :]  # [..., 4]
    q = q * np.where(q[..., :1] < 0, -1.0, 1.0)  # w >= 0: the angle is in [0, pi]
    w, xyz = q[..., 0], q[..., 1:]
    n = np.linalg.norm(xyz, axis=-1)
    angle = 2 * np.arctan2(n, w)
    scale = np.where(n > 1e-12, angle / np.maximum(n, 1e-300), 2 / np.maximum(w, 1e-300))
    return xyz * scale[..., None]


class RotationFilter:
    """A streaming One Euro filter over rotations ``[3, 3]``, speeds in degrees per second (tangent space)."""

    def __init__(self, settings: OneEuroSettings, rate: float):
        self.settings, self.rate = settings, _rate(rate)
        self.reset()

    def reset(self) -> None:
        self._gain = _Gain(self.settings, self.rate, 3)
        self._value: np.ndarray | None = None  # [3, 3] the last filtered rotation
        self._raw: np.ndarray | None = None  # [3, 3] the last rotation fed
        self._frames = 0

    def update(self, rotation) -> np.ndarray | None:
        """Feed one rotation # [3, 3] (None: missing) -> the filtered rotation # [3, 3] (None before any frame)."""
        self._frames += 1
        if rotation is None:
            return None if self._value is None else self._value.copy()
        rotation = np.asarray(rotation, dtype=np.float64)
        if rotation.shape != (3, 3):
            raise ValueError(f"rotation must be [3, 3], got shape {rotation.shape}")
        rotation = nearest_rotation(rotation)
        if self._value is None:
            self._value = rotation
        else:
            alpha = self._gain(np.degrees(rotation_log(rotation @ self._raw.T)), self._frames)  # speed: raw frames
            error = rotation_log(rotation @ self._value.T)  # [3] radians: from the filtered to the new rotation
            self._value = nearest_rotation(rotation_exp(alpha * error) @ self._value)
        self._raw, self._frames = rotation, 0
        return self._value.copy()


@dataclass(frozen=True)
class DrivingFilterSettings:
    """One Euro settings of the three driving signals (defaults tuned on real talking-head videos, see module doc).

    expression: per blendshape, speed in blendshape units / s; rotation: the head's, degrees / s; translation: the
    head's position in camera coordinates, world units / s (a crop spans about 0.63 of them at the head); crop: its
    centre and side in units of the first crop's side / s. Higher ``beta`` or ``min_cutoff``: less lag, more jitter.
    """

    expression: OneEuroSettings = field(default_factory=lambda: OneEuroSettings(2.0, 1.0, 3.0))
    rotation: OneEuroSettings = field(default_factory=lambda: OneEuroSettings(0.5, 0.1, 1.0, joint=True))
    translation: OneEuroSettings = field(default_factory=lambda: OneEuroSettings(1.0, 10.0, 1.0, joint=True))
    crop: OneEuroSettings = field(default_factory=lambda: OneEuroSettings(1.0, 10.0, 1.0, joint=True))


class CameraFilter:
    """A streaming filter of 25-value cameras: the seen head's rotation and position; intrinsics unchanged."""

    def __init__(self, rate: float, settings: DrivingFilterSettings = DrivingFilterSettings()):
        self.rotation = RotationFilter(settings.rotation, rate)
        self.position = OneEuroFilter(settings.translation, rate, 3)
        self._intrinsics: np.ndarray | None = None

    def reset(self) -> None:
        self.rotation.reset()
        self.position.reset()
        self._intrinsics = None

    def update(self, camera) -> np.ndarray | None:
        """Feed one camera # [25] (None: missing) -> the filtered, rigid camera # [25] float64 (None before any)."""
        if camera is None:
            rotation, position = self.rotation.update(None), self.position.update(None)
        else:
            camera = np.asarray(camera, dtype=np.float64)
            if camera.shape != (25,):
                raise ValueError(f"camera must be [25], got shape {camera.shape}")
            rot, pos = head_pose(camera)
            rotation, position = self.rotation.update(rot), self.position.update(pos)
            self._intrinsics = camera[16:].copy()
        if rotation is None:
            return None
        return head_camera(rotation, position, self._intrinsics)


class CropFilter:
    """A streaming filter of crops ``(corner x, corner y, side)`` in frame pixels: centre (joint) and side."""

    def __init__(self, rate: float, settings: DrivingFilterSettings = DrivingFilterSettings()):
        self.centre = OneEuroFilter(settings.crop, rate, 2)
        self.side = OneEuroFilter(settings.crop, rate, 1)
        self._unit: float | None = None  # the first crop's side: the filters see sizes relative to it

    def reset(self) -> None:
        self.centre.reset()
        self.side.reset()
        self._unit = None

    def update(self, box) -> np.ndarray | None:
        """Feed one crop # [3] (None: missing) -> the filtered crop # [3] float64 (None before any)."""
        if box is None:
            centre, side = self.centre.update(None), self.side.update(None)
        else:
            box = np.asarray(box, dtype=np.float64)
            if box.shape != (3,) or not box[2] > 0:
                raise ValueError(f"crop must be (corner x, corner y, side > 0), got {box}")
            if self._unit is None:
                self._unit = float(box[2])
            centre = self.centre.update((box[:2] + box[2] / 2) / self._unit)
            side = self.side.update(box[2:] / self._unit)
        if centre is None:
            return None
        return np.concatenate([centre - side / 2, side]) * self._unit


class DrivingFilter:
    """The expression ``[E]``, camera ``[25]`` and crop ``[3]`` of a driving video, filtered frame by frame."""

    def __init__(self, rate: float, settings: DrivingFilterSettings = DrivingFilterSettings(),
                 expression_dim: int = 52):  # fmt: skip
        self.expression = OneEuroFilter(settings.expression, rate, expression_dim)
        self.camera = CameraFilter(rate, settings)
        self.crop = CropFilter(rate, settings)

    def update(self, expression, camera, crop=None):
        """One frame's (expression, camera, crop); None for all three = a frame without a face (held)."""
        return self.expression.update(expression), self.camera.update(camera), self.crop.update(crop)


# ----------------------------------------------------------------------------------------------- whole sequences
def _valid_rows(values: np.ndarray, valid, name: str) -> np.ndarray:
    rows_finite = np.isfinite(values.reshape(len(values), -1)).all(1)  # [T]
    if valid is None:
        return rows_finite
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != (len(values),):
        raise ValueError(f"valid must be [T] = [{len(values)}] booleans for {name}, got shape {valid.shape}")
    if not rows_finite[valid].all():
        raise ValueError(f"{name}: frames marked valid hold non-finite values: {np.flatnonzero(valid & ~rows_finite)}")
    return valid


def _run(update: Callable, values: np.ndarray, valid, name: str) -> np.ndarray:
    """Feed ``values`` # [T, ...] to a streaming ``update`` (None for missing rows) -> outputs # [T, ...]."""
    if len(values) == 0:
        return values.astype(np.float64)
    valid = _valid_rows(values, valid, name)
    if not valid.any():
        raise ValueError(f"{name}: no valid frame to filter")
    out = [update(row if ok else None) for row, ok in zip(values, valid, strict=True)]
    first = out[int(np.argmax(valid))]
    return np.stack([first if o is None else o for o in out])


def _sequence(values, width: int | None, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or (width is not None and values.shape[1] != width):
        raise ValueError(f"{name} must be [T, {width or 'D'}], got shape {values.shape}")
    return values


def one_euro(values, rate: float, settings: OneEuroSettings = OneEuroSettings(), valid=None) -> np.ndarray:
    """The One Euro filter over a whole sequence ``[T, D]`` -> ``[T, D]`` float64 (``valid # [T]``: see module)."""
    values = _sequence(values, None, "values")
    return _run(OneEuroFilter(settings, rate, values.shape[1]).update, values, valid, "values")


def filter_expression(expression, rate: float, settings: DrivingFilterSettings = DrivingFilterSettings(),
                      valid=None) -> np.ndarray:  # fmt: skip
    """Expressions ``[T, E]`` -> ``[T, E]`` float64: per component (blendshapes stay in [0, 1])."""
    expression = _sequence(expression, None, "expression")
    return _run(OneEuroFilter(settings.expression, rate, expression.shape[1]).update, expression, valid, "expression")


def filter_cameras(cameras, rate: float, settings: DrivingFilterSettings = DrivingFilterSettings(),
                   valid=None) -> np.ndarray:  # fmt: skip
    """Cameras ``[T, 25]`` -> rigid cameras ``[T, 25]`` float64 (:class:`CameraFilter`)."""
    cameras = _sequence(cameras, 25, "cameras")
    return _run(CameraFilter(rate, settings).update, cameras, valid, "cameras")


def filter_crops(crops, rate: float, settings: DrivingFilterSettings = DrivingFilterSettings(),
                 valid=None) -> np.ndarray:  # fmt: skip
    """Crops ``[T, 3]`` (corner x, corner y, side) -> ``[T, 3]`` float64 (:class:`CropFilter`)."""
    crops = _sequence(crops, 3, "crops")
    return _run(CropFilter(rate, settings).update, crops, valid, "crops")
