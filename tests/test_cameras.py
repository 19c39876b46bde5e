"""The camera convention (export3d/cameras.py) pinned to EG3D's published formulas (tests/eg3d_formula.py)."""

import math

import numpy as np
import pytest
import torch

from export3d.cameras import camera_rays, fov_degrees, orbit_camera, orbit_camera_deg, project_points
from tests.eg3d_formula import eg3d_look_at, eg3d_ray_sampler


def test_orbit_cameras_are_eg3ds_look_at_pose_sampler():
    yaws = [0.0, 0.3, -0.5, 0.8, 0.1]
    pitches = [0.0, 0.2, -0.25, 0.05, -0.6]
    cams = orbit_camera(torch.tensor(yaws, dtype=torch.float64), torch.tensor(pitches, dtype=torch.float64)).double()
    for cam, yaw, pitch in zip(cams, yaws, pitches, strict=True):
        expected = eg3d_look_at(math.pi / 2 + yaw, math.pi / 2 + pitch, (0.0, 0.0, 0.2), 2.7)
        np.testing.assert_allclose(cam[:16].reshape(4, 4).numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(cam[16:].numpy(), [4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1], atol=1e-6)
    up = orbit_camera_deg(0.0, -10.0)  # EG3D's pitch sign: negative pitch puts the camera above the head
    assert up[7] > 0 and up[7] == pytest.approx(2 * 2.7 * math.radians(10.0) / math.pi, abs=1e-5)


def test_frontal_camera_is_eg3d_default():
    cam = orbit_camera_deg(0.0, 0.0)
    expected = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]])
    torch.testing.assert_close(cam[:16].reshape(4, 4), expected, atol=1e-6, rtol=0)
    assert abs(fov_degrees() - 18.837) < 1e-2  # EG3D rounds sqrt(2) and pi


def test_orbit_camera_rejects_mismatched_angles():
    with pytest.raises(ValueError, match="yaw and pitch"):
        orbit_camera(torch.zeros(2), torch.zeros(3))


@pytest.mark.parametrize("res", [1, 5, 16])
def test_camera_rays_are_eg3ds_ray_sampler(res):
    cams = orbit_camera(torch.tensor([0.0, 0.4, -0.7]), torch.tensor([0.0, -0.2, 0.3])).double()
    # EG3D's sampler handles skew and any principal point; ours must agree there too, not only on FFHQ's intrinsics
    cams[1, 16 + 1] = 0.35  # sk
    cams[2, 16 + 2], cams[2, 16 + 5], cams[2, 16 + 4] = 0.42, 0.61, 3.1  # cx, cy, fy != fx
    origins, dirs = camera_rays(cams, res)
    assert origins.shape == dirs.shape == (3, res * res, 3) and dirs.dtype == torch.float64
    for b in range(3):
        o, d = eg3d_ray_sampler(cams[b, :16].reshape(4, 4).numpy(), cams[b, 16:].reshape(3, 3).numpy(), res)
        np.testing.assert_allclose(dirs[b].numpy(), d, atol=1e-12)
        np.testing.assert_allclose(origins[b].numpy(), o, atol=1e-12)


def test_a_frames_rays_do_not_depend_on_its_batch():
    cams = orbit_camera(torch.linspace(-0.6, 0.6, 7), torch.linspace(0.3, -0.3, 7))
    _, alone = camera_rays(cams[3:4], 24)
    _, batched = camera_rays(cams, 24)
    assert torch.equal(alone[0], batched[3])  # bit-identical: a synthetic frame renders the same in any batch


def _independent_pixel(camera: torch.Tensor, point: torch.Tensor, res: int) -> torch.Tensor:
    """Pinhole projection written from scratch: inv(cam2world) then K -> (column, row) in pixels."""
    c2w = camera[:16].reshape(4, 4).double()
    K = camera[16:].reshape(3, 3).double()
    p_cam = torch.linalg.inv(c2w) @ torch.cat([point.double(), torch.ones(1, dtype=torch.float64)])
    uvw = K @ p_cam[:3]
    return torch.stack([uvw[0] / uvw[2], uvw[1] / uvw[2]]) * res - 0.5


def test_point_on_a_ray_projects_to_that_rays_pixel():
    res = 16
    camera = orbit_camera(torch.tensor([0.3, -0.5]), torch.tensor([0.2, -0.1]))  # [2, 25]
    origins, dirs = camera_rays(camera, res)  # [2, R, 3]
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(2, res * res))
    for b, (row, col) in [(0, (3, 11)), (1, (15, 0)), (1, (7, 8))]:
        ray = row * res + col  # rays are row-major
        point = origins[b, ray] + 2.8 * dirs[b, ray]
        pixel = _independent_pixel(camera[b], point, res)
        torch.testing.assert_close(pixel.float(), torch.tensor([float(col), float(row)]), atol=1e-3, rtol=0)
        uv, depth = project_points(camera[b : b + 1], point[None, None])
        torch.testing.assert_close(uv[0, 0] * res - 0.5, torch.tensor([float(col), float(row)]), atol=1e-3, rtol=0)
        assert depth.item() > 0


def test_frontal_projection_conventions():
    camera = orbit_camera(torch.zeros(1), torch.zeros(1))
    pts = torch.tensor([[[0.0, 0.0, 0.2], [0.1, 0.0, 0.2], [0.0, 0.1, 0.2]]])
    uv, depth = project_points(camera, pts)
    torch.testing.assert_close(uv[0, 0], torch.tensor([0.5, 0.5]))
    assert uv[0, 1, 0] > 0.5  # world +x appears on the right
    assert uv[0, 2, 1] < 0.5  # world +y (up) appears at the top
    torch.testing.assert_close(depth[0], torch.full((3,), 2.5))  # the camera is 2.7 from the origin, 2.5 from z = 0.2
