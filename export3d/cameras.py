"""EG3D's camera convention, in one place for the model, the synthetic data and real-video preprocessing.

Camera ``p [B, 25]`` (docs/design.md, "Cameras"): the 4x4 cam2world matrix flattened row-major (16 values), then the
normalised 3x3 intrinsics (9 values) ``[[fx, sk, cx], [0, fy, cy], [0, 0, 1]]`` in units of the image side; EG3D's
FFHQ cameras have ``fx = fy = 4.2647``, ``sk = 0``, ``cx = cy = 0.5``.

- Camera axes are OpenCV's: x right, y down, z forward (the camera looks along its +z).
- World axes: the head is fixed and faces +z; +y is *up* (the top of the head appears at the top of the image);
  +x is the subject's *left*, which appears on the image's right for a frontal camera (like a photograph).
- :func:`orbit_camera` is EG3D's ``LookAtPoseSampler`` (``eg3d/camera_utils.py``): 2.7 from the *origin*, looking
  at the pivot (0, 0, 0.2), no roll; yaw = pitch = 0 is the frontal camera, cam2world rotation ``diag(1, -1, -1)``.
- Pixel ``(row i, column j)`` of a ``res x res`` image has its centre at ``u = (j + 0.5) / res``,
  ``v = (i + 0.5) / res``; rays are row-major (ray ``i * res + j``), as EG3D's ``RaySampler`` orders them.

``tests/test_cameras.py`` pins :func:`orbit_camera` and :func:`camera_rays` to EG3D's published formulas.
"""

from __future__ import annotations

import math

import torch

FOCAL = 4.2647  # normalised focal length of the FFHQ / EG3D cameras (EG3D quotes a FOV of 18.837 deg)
RADIUS = 2.7  # orbit radius, from the origin (EG3D)
PIVOT = (0.0, 0.0, 0.2)  # look-at point (EG3D's FFHQ scripts)
INTRINSICS = ((FOCAL, 0.0, 0.5), (0.0, FOCAL, 0.5), (0.0, 0.0, 1.0))


def dot3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product over a last axis of size 3, summed in a fixed order. # [..., 3] x [..., 3] -> [...]

    A reduction or matmul kernel may group the terms differently for different batch shapes; this never does, so
    a frame's rays (and the synthetic frame rendered from them) do not depend on the batch it is in.
    """
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def orbit_camera(yaw: torch.Tensor, pitch: torch.Tensor, radius: float = RADIUS,
                 pivot: tuple[float, float, float] = PIVOT, focal: float = FOCAL) -> torch.Tensor:  # fmt: skip
    """EG3D's ``LookAtPoseSampler.sample(pi/2 + yaw, pi/2 + pitch, pivot, radius)``: yaw, pitch ``[B]`` (radians)
    -> cameras ``[B, 25]`` float32.

    EG3D's formula written out: with ``theta = pi/2 + yaw``, ``v = pi/2 + pitch`` (clamped to ``[1e-5, pi - 1e-5]``)
    and ``phi = arccos(1 - 2 v / pi)``, the camera sits at ``radius * (sin(phi) cos(pi - theta), cos(phi),
    sin(phi) sin(pi - theta))`` and looks at ``pivot`` with world +y up. Positive yaw moves the camera towards world
    +x (the subject's left); positive pitch moves it *down* (EG3D's sign), to the height ``-2 radius pitch / pi``.
    Built in float64 and rounded once, so a camera does not depend on the batch it is in.
    """
    if yaw.shape != pitch.shape or yaw.dim() != 1:
        raise ValueError(f"yaw and pitch must be 1-d and of equal shape, got {tuple(yaw.shape)}, {tuple(pitch.shape)}")
    yaw, pitch = yaw.double(), pitch.double()
    theta = math.pi / 2 + yaw
    v = (math.pi / 2 + pitch).clamp(1e-5, math.pi - 1e-5)
    phi = torch.arccos(1 - 2 * v / math.pi)
    origin = radius * torch.stack([phi.sin() * (math.pi - theta).cos(), phi.cos(), phi.sin() * (math.pi - theta).sin()],
                                  dim=-1)  # fmt: skip
    forward = torch.tensor(pivot, dtype=torch.float64) - origin
    forward = forward / forward.norm(dim=-1, keepdim=True)  # camera +z
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(forward)
    right = -torch.linalg.cross(up, forward)
    right = right / right.norm(dim=-1, keepdim=True)  # camera +x
    down = torch.linalg.cross(forward, right)
    down = down / down.norm(dim=-1, keepdim=True)  # camera +y (OpenCV: down; EG3D calls it up_vector)
    cam2world = torch.zeros(yaw.shape[0], 4, 4, dtype=torch.float64)
    cam2world[:, :3, :3] = torch.stack([right, down, forward], dim=-1)
    cam2world[:, :3, 3] = origin
    cam2world[:, 3, 3] = 1.0
    K = torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return torch.cat([cam2world.reshape(-1, 16), K.reshape(1, 9).expand(yaw.shape[0], 9)], dim=1).float()


def orbit_camera_deg(yaw_deg: float, pitch_deg: float = 0.0) -> torch.Tensor:
    """One orbit camera from angles in degrees. # [25]"""
    yaw = torch.tensor([math.radians(yaw_deg)], dtype=torch.float64)
    pitch = torch.tensor([math.radians(pitch_deg)], dtype=torch.float64)
    return orbit_camera(yaw, pitch)[0]


def split_camera(camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """camera ``[B, 25]`` -> cam2world ``[B, 4, 4]``, intrinsics ``[B, 3, 3]``."""
    if camera.dim() != 2 or camera.shape[1] != 25:
        raise ValueError(f"camera must have shape [B, 25], got {tuple(camera.shape)}")
    return camera[:, :16].reshape(-1, 4, 4), camera[:, 16:].reshape(-1, 3, 3)


def pixel_centres(resolution: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised pixel centres, row-major: u (column) and v (row), each ``[res * res]``."""
    t = (torch.arange(resolution, device=device, dtype=dtype) + 0.5) / resolution  # [res]
    v, u = torch.meshgrid(t, t, indexing="ij")  # [res, res]: v varies along rows, u along columns
    return u.reshape(-1), v.reshape(-1)


def camera_rays(camera: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EG3D's ``RaySampler``: rays through the pixel centres, in the camera's dtype.

    camera ``[B, 25]`` -> origins ``[B, R, 3]`` (the camera centre, expanded: no copy) and unit directions
    ``[B, R, 3]``, R = res^2, row-major. Pixel (u, v) lifts to the camera-space point ``(x, y, 1)`` with
    ``y = (v - cy) / fy`` and ``x = (u - cx - sk y) / fx`` (EG3D's skew term), rotated by the cam2world rotation.
    The 3x3 products are sums of three terms in a fixed order (no matmul), so a frame's rays are bit-identical
    whatever batch it is in.
    """
    cam2world, K = split_camera(camera)
    u, v = pixel_centres(resolution, camera.device, camera.dtype)  # [R] each
    fx, fy, sk = K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 1, None]  # [B, 1]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    y = (v[None] - cy) / fy  # [B, R]
    x = (u[None] - cx - sk * y) / fx  # [B, R]
    rot = cam2world[:, :3, :3]  # [B, 3, 3]
    world = [rot[:, i, 0, None] * x + rot[:, i, 1, None] * y + rot[:, i, 2, None] for i in range(3)]
    directions = torch.stack(world, dim=-1)  # [B, R, 3]
    directions = directions / torch.sqrt(dot3(directions, directions))[..., None]
    origins = cam2world[:, None, :3, 3].expand_as(directions)  # [B, R, 3]
    return origins, directions


def project_points(camera: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``[B, N, 3]`` -> normalised image coordinates ``uv [B, N, 2]`` (u = column) and depth ``[B, N]``.

    The inverse of :func:`camera_rays`: depth is the camera-space z (distance along the optical axis); pixel column
    = ``u * res - 0.5``.
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

    That is the diagonal FOV of the unit image: 18.83 deg for f = 4.2647 (EG3D quotes 18.837, computed with 1.414 and
    3.14159 for sqrt(2) and pi); the horizontal FOV is ``2 atan(0.5 / f)`` (13.37 deg). EG3D's ``fov_to_intrinsics``
    is the inverse of this function.
    """
    return math.degrees(2 * math.atan(1.0 / (math.sqrt(2.0) * focal)))
