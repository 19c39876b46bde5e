"""EG3D's look-at cameras, shared by the model's renderer and the synthetic data (a lower layer than both).

``look_at_camera`` is EG3D's ``LookAtPoseSampler`` (``eg3d/camera_utils.py``) written out: the one formula behind
``export3d.model.render.look_at_camera``, ``export3d.data.orbit_camera`` and so the synthetic data's cameras.
"""

from __future__ import annotations

import math

import torch

FOCAL = 4.2647  # normalised focal length of the FFHQ/EG3D cameras (FOV 18.837 deg)
RADIUS = 2.7  # orbit radius, from the origin (EG3D)
PIVOT = (0.0, 0.0, 0.2)  # look-at point (EG3D's FFHQ scripts)


def look_at_camera(
    yaw: torch.Tensor,
    pitch: torch.Tensor,
    radius: float = RADIUS,
    pivot: tuple[float, float, float] = PIVOT,
    focal: float = FOCAL,
) -> torch.Tensor:
    """EG3D's ``LookAtPoseSampler.sample(pi/2 + yaw, pi/2 + pitch, pivot, radius)``: yaw, pitch ``[B]`` -> ``[B, 25]``.

    Exactly EG3D's formula (``eg3d/camera_utils.py``): with ``theta = pi/2 + yaw``, ``v = pi/2 + pitch`` (clamped to
    ``[1e-5, pi - 1e-5]``) and ``phi = arccos(1 - 2 v / pi)``, the camera sits ``radius`` from the *origin* at
    ``(sin(phi) cos(pi - theta), cos(phi), sin(phi) sin(pi - theta)) * radius`` and looks at ``pivot``, no roll.
    So yaw = pitch = 0 is frontal (2.7 on +z), positive yaw moves the camera towards world +x (the subject's
    left), and positive pitch moves it *down* (EG3D's sign), to the height ``-2 radius pitch / pi`` (EG3D's
    elevation is not linear in pitch). Built in float64, rounded to float32 once.
    """
    yaw, pitch = yaw.double().reshape(-1), pitch.double().reshape(-1)
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
