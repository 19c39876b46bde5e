"""Driving a source with another face's motion: relative (LivePortrait's default) or absolute.

Relative motion moves the source by how much the driver moved since a reference frame (its first, by default),
so the source keeps its own expression and head pose where the driver is at rest, whoever the driver is:

- expression: ``e_out[t] = e_src + (e_drv[t] - e_drv[ref])``, clipped to the blendshapes' range [0, 1];
- head rotation: ``R_out[t] = R_drv[t] R_drv[ref]^-1 R_src``, the driver's rotation since the reference applied
  on top of the source's pose, in camera axes (a +10 degree turn of the driver turns the source by +10 degrees);
- head position in camera coordinates: ``t_out[t] = t_src + (t_drv[t] - t_drv[ref])``.

The head pose is what the camera sees (docs/design.md, "Cameras"): the head is fixed in the world and a camera
``[25]`` holds the cam2world matrix ``[R_c | t_c]``, so the head's rotation in camera coordinates is
``R_h = R_c^T`` and the world origin (the head) sits at ``t_h = -R_c^T t_c`` in camera coordinates.
:func:`head_pose` and :func:`head_camera` convert between the two. Absolute motion is the driver's own values.

Arrays are numpy float64 (torch CPU tensors are accepted and converted); outputs are float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("relative", "absolute")


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation closest to ``matrix`` in the Frobenius norm (SVD, det +1). # [..., 3, 3] -> [..., 3, 3]

    Removes the rounding of cameras stored in float32 and of long products, so outputs are exactly rigid.
    """
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64))
    sign = np.sign(np.linalg.det(u @ vt))  # [...]: -1 where u vt is a reflection
    u = u.copy()
    u[..., :, 2] *= sign[..., None]
    return u @ vt


def _cameras(camera, name: str) -> np.ndarray:
    camera = np.asarray(camera, dtype=np.float64)
    if camera.shape[-1:] != (25,):
        raise ValueError(f"{name} must have shape [..., 25] (cam2world 4x4 + intrinsics 3x3), got {camera.shape}")
    return camera


def head_pose(camera) -> tuple[np.ndarray, np.ndarray]:
    """Cameras # [..., 25] -> head rotation ``R_h = R_c^T`` # [..., 3, 3] and position ``t_h = -R_c^T t_c`` # [..., 3].

    Both in the camera's coordinates (OpenCV axes): ``R_h`` maps world (head) directions into the camera and
    ``t_h`` is where the world origin appears.
    """
    camera = _cameras(camera, "camera")
    cam2world = camera[..., :16].reshape(*camera.shape[:-1], 4, 4)
    rotation = np.swapaxes(cam2world[..., :3, :3], -1, -2)  # [..., 3, 3]
    position = -np.einsum("...ij,...j->...i", rotation, cam2world[..., :3, 3])  # [..., 3]
    return rotation, position


def head_camera(rotation, position, intrinsics) -> np.ndarray:
    """Head rotation # [..., 3, 3], position # [..., 3], intrinsics # [..., 9] -> cameras # [..., 25] float64.

    The inverse of :func:`head_pose`: ``R_c = R_h^T``, ``t_c = -R_h^T t_h``. ``rotation`` must be a rotation
    (callers pass :func:`nearest_rotation` of anything that may have drifted).
    """
    rotation = np.asarray(rotation, dtype=np.float64)
    position = np.asarray(position, dtype=np.float64)
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    if rotation.shape[-2:] != (3, 3) or position.shape[-1:] != (3,) or intrinsics.shape[-1:] != (9,):
        raise ValueError(f"rotation, position, intrinsics must be [..., 3, 3], [..., 3], [..., 9]; got "
                         f"{rotation.shape}, {position.shape}, {intrinsics.shape}")  # fmt: skip
    batch = np.broadcast_shapes(rotation.shape[:-2], position.shape[:-1], intrinsics.shape[:-1])
    cam2world = np.zeros((*batch, 4, 4))
    cam2world[..., :3, :3] = np.swapaxes(rotation, -1, -2)
    cam2world[..., :3, 3] = -np.einsum("...ji,...j->...i", rotation, position)
    cam2world[..., 3, 3] = 1.0
    return np.concatenate([cam2world.reshape(*batch, 16), np.broadcast_to(intrinsics, (*batch, 9))], axis=-1)


def _reference(ref: int, length: int) -> int:
    if not -length <= ref < length:
        raise ValueError(f"ref must index one of the driver's {length} frames, got {ref}")
    return ref % length


def relative_expression(source, driver, ref: int = 0,
                        value_range: tuple[float, float] | None = (0.0, 1.0)) -> np.ndarray:  # fmt: skip
    """``source + (driver[t] - driver[ref])``, clipped to ``value_range`` (None: not clipped).

    source # [E], driver # [T, E] -> [T, E] float64. The blendshapes' range is [0, 1].
    """
    source = np.asarray(source, dtype=np.float64)
    driver = np.asarray(driver, dtype=np.float64)
    if driver.ndim != 2 or source.shape != driver.shape[1:]:
        raise ValueError(f"source expression must be [E] and driver expression [T, E]; got {source.shape}, "
                         f"{driver.shape}")  # fmt: skip
    out = source + (driver - driver[_reference(ref, len(driver))])  # [T, E]
    return out if value_range is None else np.clip(out, *value_range)


def relative_cameras(source, driver, ref: int = 0) -> np.ndarray:
    """The source camera moved by the driver's head motion since frame ``ref``. source # [25], driver # [T, 25] ->
    [T, 25] float64, with the source's intrinsics.

    ``R_out = R_drv[t] R_drv[ref]^T R_src`` and ``t_out = t_src + t_drv[t] - t_drv[ref]`` on the head poses
    (:func:`head_pose`); the rotation is projected onto SO(3), so every output camera is rigid.
    """
    source = _cameras(source, "source camera")
    driver = _cameras(driver, "driver cameras")
    if source.ndim != 1 or driver.ndim != 2:
        raise ValueError(f"source camera must be [25] and driver cameras [T, 25]; got {source.shape}, {driver.shape}")
    ref = _reference(ref, len(driver))
    rot_src, pos_src = head_pose(source)  # [3, 3], [3]
    rot_drv, pos_drv = head_pose(driver)  # [T, 3, 3], [T, 3]
    delta = rot_drv @ rot_drv[ref].T  # [T, 3, 3]: the driver's rotation since ref, in camera axes
    rotation = nearest_rotation(delta @ rot_src)
    position = pos_src + (pos_drv - pos_drv[ref])  # [T, 3]
    return head_camera(rotation, position, source[16:])


@dataclass(frozen=True)
class MotionSettings:
    """How the driver moves the source: ``relative`` (from frame ``ref`` of the driver) or ``absolute``."""

    mode: str = "relative"
    ref: int = 0  # the driver's reference frame: where the driver's pose and expression count as the source's
    expression_range: tuple[float, float] | None = (0.0, 1.0)  # clip relative expressions (blendshapes: [0, 1])

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


def transfer_motion(source_expression, source_camera, driver_expression, driver_camera,
                    settings: MotionSettings = MotionSettings()) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The expressions # [T, E] and cameras # [T, 25] that animate the source, both float64.

    source_expression # [E], source_camera # [25]: the source photo's own; driver_expression # [T, E],
    driver_camera # [T, 25]: the driving video's. ``absolute`` returns the driver's values (as float64).
    """
    driver_expression = np.asarray(driver_expression, dtype=np.float64)
    driver_camera = _cameras(driver_camera, "driver cameras")
    if len(driver_expression) != len(driver_camera):
        raise ValueError(f"driver expression and cameras must have one row per frame; got {len(driver_expression)} "
                         f"and {len(driver_camera)}")  # fmt: skip
    if settings.mode == "absolute":
        return driver_expression.copy(), driver_camera.copy()
    return (relative_expression(source_expression, driver_expression, settings.ref, settings.expression_range),
            relative_cameras(source_camera, driver_camera, settings.ref))  # fmt: skip
