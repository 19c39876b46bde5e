"""EG3D-convention cameras for the synthetic data: 25-d vectors, orbit poses and per-pixel rays.

Convention (DESIGN.md section 3, must match the model):

- ``camera [B, 25]`` = the 4x4 cam2world matrix flattened row-major (16 values) followed by the
  normalised 3x3 intrinsics (9 values) ``[[4.2647, 0, 0.5], [0, 4.2647, 0.5], [0, 0, 1]]``.
- Camera axes are OpenCV's: x right, y down, z forward (the camera looks along its +z).
- World axes: the head is fixed in the world and faces +z; world +y is *up* (the top of the head
  is at +y and appears at the top of the image); world +x is the subject's *left*, which appears
  on the image's right side for a frontal camera (like a photograph). For the frontal camera the
  cam2world rotation is ``diag(1, -1, -1)``: camera x = world +x, camera y (down) = world -y,
  camera z (forward) = world -z, exactly EG3D's ``LookAtPoseSampler`` at yaw = pitch = 0.
- Orbit: EG3D's ``LookAtPoseSampler.sample(pi/2 + yaw, pi/2 + pitch, (0, 0, 0.2), radius=2.7)``: the
  camera sits 2.7 from the *origin* at ``2.7 (sin(phi) sin(yaw), cos(phi), sin(phi) cos(yaw))`` with
  ``phi = arccos(-2 pitch / pi)``, looking at the pivot (0, 0, 0.2), no roll. Positive yaw moves the camera
  toward the subject's left (world +x); positive pitch moves it *down* (EG3D's sign: it looks up at the head).
- Rays go through pixel centres: ``u = (i + 0.5) / W`` (i = column), ``v = (j + 0.5) / H``
  (j = row, row 0 at the top), camera-space direction ``((u - cx) / fx, (v - cy) / fy, 1)``.
"""

from __future__ import annotations

import math

import torch

from export3d.utils.cameras import look_at_camera

FOCAL = 4.2647
RADIUS = 2.7
PIVOT = (0.0, 0.0, 0.2)
INTRINSICS = ((FOCAL, 0.0, 0.5), (0.0, FOCAL, 0.5), (0.0, 0.0, 1.0))


def dot3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product over a last axis of size 3, summed in a fixed order. # [..., 3] x [..., 3] -> [...]

    (A reduction kernel may group the terms differently for different batch shapes; this never does.)
    """
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def intrinsics_tensor() -> torch.Tensor:
    """The normalised intrinsics as a float32 tensor. # [3, 3]"""
    return torch.tensor(INTRINSICS, dtype=torch.float32)


def orbit_camera(
    yaw: torch.Tensor, pitch: torch.Tensor, radius: float = RADIUS, pivot: tuple[float, float, float] = PIVOT
) -> torch.Tensor:
    """EG3D's ``LookAtPoseSampler`` camera of (yaw, pitch) in radians: # [B] -> [B, 25] float32.

    The model's ``look_at_camera`` (one formula for the synthetic data, the orbit helper and the model), computed
    in float64 and rounded once, so the result does not depend on the batch it is in.
    """
    if yaw.shape != pitch.shape or yaw.dim() != 1:
        raise ValueError(f"yaw and pitch must be 1-d and of equal shape, got {tuple(yaw.shape)}, {tuple(pitch.shape)}")
    return look_at_camera(yaw, pitch, radius, pivot, FOCAL)


def orbit_camera_deg(yaw_deg: float, pitch_deg: float = 0.0) -> torch.Tensor:
    """One orbit camera from angles in degrees. # [25]"""
    yaw = torch.tensor([math.radians(yaw_deg)], dtype=torch.float64)
    pitch = torch.tensor([math.radians(pitch_deg)], dtype=torch.float64)
    return orbit_camera(yaw, pitch)[0]


def split_camera(camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """camera # [B, 25] -> cam2world # [B, 4, 4], intrinsics # [B, 3, 3]."""
    if camera.dim() != 2 or camera.shape[1] != 25:
        raise ValueError(f"camera must have shape [B, 25], got {tuple(camera.shape)}")
    return camera[:, :16].reshape(-1, 4, 4), camera[:, 16:].reshape(-1, 3, 3)


def camera_rays(camera: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through the pixel centres, row-major (row 0 = top of the image).

    camera # [B, 25] -> origins # [B, 3], unit directions # [B, H*W, 3] (float32).
    The 3x3 products are written out as sums of three terms so the result is bit-identical for a
    frame whatever batch it is rendered in.
    """
    cam2world, intr = split_camera(camera.to(torch.float32))
    idx = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution  # [R]
    v, u = torch.meshgrid(idx, idx, indexing="ij")  # [R, R] each; v = row, u = column
    fx, fy = intr[:, 0, 0, None], intr[:, 1, 1, None]  # [B, 1]
    cx, cy = intr[:, 0, 2, None], intr[:, 1, 2, None]
    dx = (u.reshape(1, -1) - cx) / fx  # [B, N]
    dy = (v.reshape(1, -1) - cy) / fy
    rot = cam2world[:, :3, :3]  # [B, 3, 3]
    world = [rot[:, i, 0, None] * dx + rot[:, i, 1, None] * dy + rot[:, i, 2, None] for i in range(3)]
    dirs = torch.stack(world, dim=-1)  # [B, N, 3]
    dirs = dirs / torch.sqrt(dot3(dirs, dirs))[..., None]
    return cam2world[:, :3, 3], dirs
