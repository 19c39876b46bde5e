"""EG3D cameras: the 25-d camera vector, rays through pixel centres, projection and look-at poses.

Camera ``p [B, 25]`` (DESIGN.md section 3): 16 values of the 4x4 cam2world matrix, row-major, OpenCV
camera axes (x right, y down, z forward), then the 9 values of the normalised 3x3 intrinsics
``[[fx, sk, cx], [0, fy, cy], [0, 0, 1]]`` (image coordinates in [0, 1]; default fx = fy = 4.2647,
cx = cy = 0.5). World: the head faces +z with +y up; the frontal camera sits at ``(0, 0, r)``, 2.7 from the
origin, looking at the pivot (0, 0, 0.2), cam2world rotation ``diag(1, -1, -1)`` (EG3D's LookAtPoseSampler at
yaw = pitch = 0; :func:`look_at_camera` is that sampler).

Pixel ``(row i, column j)`` of an ``res x res`` image has its centre at ``u = (j + 0.5) / res``,
``v = (i + 0.5) / res``; rays are ordered row-major, ray index ``i * res + j``.
"""

from __future__ import annotations

import math

import torch

from export3d.utils.cameras import FOCAL, PIVOT, RADIUS, look_at_camera  # noqa: F401 - re-exported (EG3D's sampler)


def split_camera(camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 25]`` -> cam2world ``[B, 4, 4]``, intrinsics ``[B, 3, 3]``."""
    if camera.dim() != 2 or camera.shape[1] != 25:
        raise ValueError(f"camera must have shape [B, 25], got {tuple(camera.shape)}")
    return camera[:, :16].reshape(-1, 4, 4), camera[:, 16:].reshape(-1, 3, 3)


def pixel_centres(resolution: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised pixel centres, row-major: u (column) and v (row), each ``[res * res]``."""
    t = (torch.arange(resolution, device=device, dtype=dtype) + 0.5) / resolution  # [res]
    v, u = torch.meshgrid(t, t, indexing="ij")  # [res, res]: v varies along rows, u along columns
    return u.reshape(-1), v.reshape(-1)


def camera_rays(camera: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through the pixel centres: origins ``[B, R, 3]`` and unit directions ``[B, R, 3]``, R = res^2.

    The camera-space direction of pixel (u, v) is ``(x, y, 1)`` with ``y = (v - cy) / fy`` and
    ``x = (u - cx - sk * y) / fx``, rotated to world space by the cam2world rotation.
    """
    cam2world, K = split_camera(camera)
    u, v = pixel_centres(resolution, camera.device, camera.dtype)  # [R] each
    fx, fy, sk = K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 1, None]  # [B, 1]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    y = (v[None] - cy) / fy  # [B, R]
    x = (u[None] - cx - sk * y) / fx  # [B, R]
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [B, R, 3]
    d_world = d_cam @ cam2world[:, :3, :3].transpose(1, 2)  # [B, R, 3]
    directions = d_world / d_world.norm(dim=-1, keepdim=True)
    origins = cam2world[:, None, :3, 3].expand_as(directions)  # [B, R, 3]
    return origins, directions


def project_points(camera: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``[B, N, 3]`` -> normalised image coordinates ``uv [B, N, 2]`` (u = column) and depth ``[B, N]``.

    Depth is the camera-space z (distance along the optical axis). Pixel column = ``u * res - 0.5``.
    """
    cam2world, K = split_camera(camera)
    R, t = cam2world[:, :3, :3], cam2world[:, :3, 3]  # [B, 3, 3], [B, 3]
    p_cam = (points - t[:, None]) @ R  # [B, N, 3]: R^T (p - t), R orthonormal
    z = p_cam[..., 2]
    x, y = p_cam[..., 0] / z, p_cam[..., 1] / z
    u = K[:, None, 0, 0] * x + K[:, None, 0, 1] * y + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * y + K[:, None, 1, 2]
    return torch.stack([u, v], dim=-1), z


def fov_degrees(focal: float = FOCAL) -> float:
    """EG3D's field of view of a normalised focal length, ``2 atan(1 / (sqrt(2) f))`` in degrees.

    That is the diagonal FOV of the unit image: 18.83 deg for f = 4.2647 (EG3D quotes 18.837, computed with
    1.414 and 3.14159 for sqrt(2) and pi); the horizontal FOV is
    ``2 atan(0.5 / f)`` (13.37 deg). EG3D's ``fov_to_intrinsics`` is the inverse of this function.
    """
    return math.degrees(2 * math.atan(1.0 / (math.sqrt(2.0) * focal)))
